"""kill -9 a growth run at several points (mid-epoch, between epochs, right after a split); the rerun ends bit for bit equal."""
import os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from s3d.grow import CheckpointError, load_checkpoint
from s3d.paper.data import load_digits_data

sys.path.insert(0, str(Path(__file__).parent))
from grow_kill_run import run  # noqa: E402

SCRIPT = Path(__file__).with_name('grow_kill_run.py')


def _kill_at(data, out, hang_after, hang_step, timeout=60):
    "Run the script in a subprocess and SIGKILL it once it reports its hang point."
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parent.parent), OMP_NUM_THREADS='1')
    p = subprocess.Popen([sys.executable, str(SCRIPT), str(data), str(out), str(hang_after), str(hang_step)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while not (out / 'hanging').exists():
            if p.poll() is not None: raise RuntimeError(f'exited early ({p.returncode}): ' + p.stderr.read().decode()[-2000:])
            if time.time() - t0 > timeout: raise TimeoutError('grow_kill_run.py did not reach its hang point')
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL); p.wait()
        assert p.returncode == -signal.SIGKILL
        (out / 'hanging').unlink()
    finally:
        if p.poll() is None: p.kill(); p.wait()
        p.stderr.close()


def test_kill9_and_rerun_is_bit_identical(tmp_path):
    dd = load_digits_data()
    data = dict(x=dd.x_train[:384], y=dd.y_train[:384], mean=list(dd.mean), std=list(dd.std))
    torch.save(data, tmp_path / 'data.pt')
    ref, out = tmp_path / 'ref', tmp_path / 'run'
    out.mkdir()
    nthreads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        full = run(data, ref)
        # killed mid-epoch 3 of round 0; at the start of an epoch of round 1; right after the split of round 2
        for hang in [(2, 3), (2, 0), (2, 0)]: _kill_at(tmp_path / 'data.pt', out, *hang)
        st = load_checkpoint(out / 'checkpoint.pt')
        assert (st['phase'], st['round']) == ('done', 1)  # 6 epoch saves: killed after round 2's split, before its 1st epoch
        res = run(data, out)
    finally: torch.set_num_threads(nthreads)
    a, b = full.model.state_dict(), res.model.state_dict()
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k
    cols = [c for c in full.history.columns if c != 'seconds']
    assert full.history[cols].equals(res.history[cols])
    assert full.history.neurons.is_monotonic_increasing and full.history.neurons.iloc[-1] > 6
    # a truncated checkpoint is refused with its name, and left untouched
    good = (out / 'checkpoint.pt').read_bytes()
    (out / 'checkpoint.pt').write_bytes(good[:len(good) // 2])
    with pytest.raises(CheckpointError, match='checkpoint.pt'): run(data, out)
    assert len((out / 'checkpoint.pt').read_bytes()) == len(good) // 2
