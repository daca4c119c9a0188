"""`s3d reproduce` under torchrun: two gloo processes on CPU run Table 1's smoke schedule, every process grows the same
architecture (checked after every split inside `s3d.grow`), only rank 0 writes, and each run records its `world_size`."""
import json, os, subprocess, sys
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', MPLBACKEND='Agg')


def _s3d(out, *args, nproc=None):
    pre = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc-per-node={nproc}'] if nproc else [sys.executable]
    cmd = [*pre, '-m', 's3d', 'reproduce', *args, '--device', 'cpu', '--out', str(out)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes(tmp_path):
    one, two = tmp_path / 'one', tmp_path / 'two'
    r1 = _s3d(one, 'table1', '--scale', 'smoke', '--fake-data', '--jobs', '1')
    r2 = _s3d(two, 'table1', '--scale', 'smoke', '--fake-data', nproc=2)
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count('table1: done in') == 1 and '(2 processes)' in r2.stdout   # rank 0 alone reports
    a, b = pd.read_csv(one / 'table1_smoke.csv'), pd.read_csv(two / 'table1_smoke.csv')
    assert a[['key', 'round']].equals(b[['key', 'round']])
    r0 = lambda d: d[d['round'] == 0].set_index('key')
    assert r0(a).params.equals(r0(b).params)                 # the same seed networks
    assert a.widths.equals(b.widths)                          # the same grown architectures (issue 18)
    assert (a.train_loss - b.train_loss).abs().max() < 1e-4   # same global batches, BatchNorm synchronised over processes
    for key in b.key.unique():
        cfg = json.loads((two / 'table1_smoke_runs' / key / 'config.json').read_text())
        assert cfg['world_size'] == 2
        assert json.loads((one / 'table1_smoke_runs' / key / 'config.json').read_text())['world_size'] == 1
    assert not list(two.rglob('*.tmp*')) and not list(two.glob('.s3d-*'))   # no leftovers of the shared-folder check


def test_torchrun_refuses_jobs_and_toy_figures(tmp_path):
    r = _s3d(tmp_path, 'fig2', '--scale', 'smoke', '--jobs', '1', nproc=2)
    assert r.returncode != 0 and 'does not run data-parallel' in r.stderr, r.stderr[-2000:]


def test_gpu_check_under_torchrun(tmp_path):
    "benchmarks/gpu_check.py under torchrun (2 gloo processes, tiny shapes): every Table 1-3 run passes, rank 0 reports."
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node=2', str(ROOT / 'benchmarks' / 'gpu_check.py'),
           '--tiny', '--device', 'cpu', '--skip', 'throughput,eigen,agreement', '--out', str(tmp_path)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    js = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert js['world_size'] == 2 and js['table1'] and js['tables23']
    assert not [x['error'] for x in js['table1'] + js['tables23'] if x.get('error')]
