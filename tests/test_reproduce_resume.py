"""`kill -9` a `s3d reproduce` run at several points (mid-epoch in a grown run after a split, in a baseline's fine-tuning
stage, at the start of a control); rerunning the same command resumes at the last finished epoch and ends with
byte-identical results. A truncated checkpoint is refused with its name, never silently restarted or overwritten."""
import os, signal, subprocess, sys, time
from pathlib import Path
import torch

SCRIPT = Path(__file__).with_name('reproduce_kill_run.py')
ENV = dict(os.environ, PYTHONPATH=str(SCRIPT.parent.parent), OMP_NUM_THREADS='1', MPLBACKEND='Agg')


def _run(out, *hang, timeout=240):
    "Run the script; with `hang` = (key, saves, step), SIGKILL it once it reports its hang point; returns (code, stderr)."
    p = subprocess.Popen([sys.executable, str(SCRIPT), str(out), *map(str, hang)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        if hang:
            while not (out / 'hanging').exists():
                if p.poll() is not None: raise RuntimeError(f'exited before its hang point ({p.returncode}): ' + p.stderr.read().decode()[-2000:])
                if time.time() - t0 > timeout: raise TimeoutError('reproduce_kill_run.py did not reach its hang point')
                time.sleep(0.02)
            os.kill(p.pid, signal.SIGKILL); p.wait()
            (out / 'hanging').unlink()
            return p.returncode, ''
        p.wait(timeout)
        return p.returncode, p.stderr.read().decode()
    finally:
        if p.poll() is None: p.kill(); p.wait()
        p.stderr.close()


def test_kill9_reproduce_resumes_at_the_epoch(tmp_path):
    ref, out = tmp_path / 'ref', tmp_path / 'run'
    out.mkdir()
    assert _run(ref)[0] == 0
    runs = out / 'table1_smoke_runs'
    # 1. S3D, round 1 (after its split), in epoch 2 (of 2 steps), after its first step: its checkpoint holds round 1's first epoch
    assert _run(out, 'S3D-c3-s0', 4, 1)[0] == -signal.SIGKILL
    st = torch.load(runs / 'S3D-c3-s0' / 'checkpoint.pt', weights_only=True)
    assert (st['phase'], st['round'], st['train']['epoch']) == ('train', 1, 1)
    # 2. BN pruning, fine-tuning stage, epoch 2: sparse stage finished, fine-tuning at epoch 1
    assert _run(out, 'bn-s0', 4, 0)[0] == -signal.SIGKILL
    assert torch.load(runs / 'bn-s0' / 'stage-sparse.pt', weights_only=True)['done']
    st = torch.load(runs / 'bn-s0' / 'stage-finetune.pt', weights_only=True)
    assert (st['done'], st['train']['epoch']) == (False, 1)
    # a truncated checkpoint: a clear error naming it (exit 7), nothing overwritten
    bad = runs / 'bn-s0' / 'stage-finetune.pt'
    good = bad.read_bytes(); bad.write_bytes(good[:len(good) // 2])
    code, err = _run(out)
    assert code == 7 and str(bad) in err and 'truncated or corrupt' in err, err
    assert bad.read_bytes() == good[:len(good) // 2] and (runs / 'S2D-c1-s0' / 'rows.csv').exists()
    bad.write_bytes(good)
    # 3. a control, before its first checkpoint
    assert _run(out, 'net2net-S3D-c3-s0', 0, 0)[0] == -signal.SIGKILL
    code, err = _run(out)
    assert code == 0, err
    for f in ('table1_smoke.csv', 'table1_smoke.md'):
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
