"""`s3d reproduce table1 --scale smoke --fake-data` with 3 epochs per stage (so that a stage has epochs to resume), optionally
hanging at a chosen point so that tests/test_reproduce_resume.py can `kill -9` it there.

usage: python tests/reproduce_kill_run.py OUT [KEY SAVES STEP]
With KEY, the process writes OUT/hanging and sleeps at the STEP-th optimizer step after the SAVES-th epoch checkpoint of run KEY."""
import sys, time
from dataclasses import replace
from pathlib import Path
import torch
from s3d.grow import TrainState
import s3d.paper.runs as runs
from s3d.paper.experiments import table1

SMALL = dict(epochs=3, width_mults=(), cs=(3.0,), sweep_seeds=())   # 9 runs: S2D, S3D, full, L1, BN, MorphNet, 3 controls


def install_hang(out:Path, key:str, saves:int, step:int):
    "Hang (after writing out/hanging) at optimizer step `step` after the `saves`-th epoch checkpoint of run `key`."
    count, current = dict(saves=0, steps=0), dict(key=None)
    run_once = runs.run_once
    def tracked(folder, *a, **kw):
        current['key'] = Path(folder).name; return run_once(folder, *a, **kw)
    table1.run_once = tracked
    save = TrainState.save
    def counted(self):
        save(self)
        if current['key'] == key: count['saves'] += 1
    TrainState.save = counted
    sgd_step = torch.optim.SGD.step
    def stepped(self, *a, **kw):
        if current['key'] == key and count['saves'] >= saves:
            if count['steps'] == step: (out / 'hanging').write_text('1'); time.sleep(600)
            count['steps'] += 1
        return sgd_step(self, *a, **kw)
    torch.optim.SGD.step = stepped


if __name__ == '__main__':
    out = Path(sys.argv[1])
    table1.SCALES['smoke'] = replace(table1.SCALES['smoke'], **SMALL)
    if len(sys.argv) > 2: install_hang(out, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    from s3d.paper.cli import main
    sys.exit(main(['reproduce', 'table1', '--scale', 'smoke', '--fake-data', '--device', 'cpu', '--jobs', '1', '--out', str(out)]))
