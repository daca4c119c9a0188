"End-to-end test of `s3d reproduce table1 --scale smoke` (fake CIFAR-100), its reuse, and data errors."
import os, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
from s3d.paper.data import make_fake_cifar100, DataError
from s3d.paper.experiments.table1 import SCALES, table1_data, table1_runs, s3d_vs_s2d
from s3d.paper.baselines import prune_channels

ROOT = Path(__file__).resolve().parents[1]

def _s3d(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 's3d', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

def test_table1_smoke_writes_and_reuses(tmp_path):
    data = tmp_path / 'data'  # empty: smoke writes a fake CIFAR-100 into the run folder
    r = _s3d('reproduce', 'table1', '--scale', 'smoke', '--device', 'cpu', '--data', str(data), '--out', 'res', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / 'res'
    for name in ['table1_smoke.csv', 'table1_smoke.md', 'fig3_smoke.png', 'fig3_smoke.pdf']:
        assert (out / name).stat().st_size > 0, name
    df = pd.read_csv(out / 'table1_smoke.csv')
    assert {'method', 'c', 'm', 'round', 'params', 'flops', 'acc', 'setting', 'seed'} <= set(df.columns)
    assert {'S2D', 'S3D', 'full', 'L1 pruning', 'BN pruning', 'MorphNet'} <= set(df.method)
    assert set(df.setting) == {'params', 'energy', 'baseline'}
    grown = df[df.method.isin(['S2D', 'S3D'])]
    assert set(grown['round']) == {0, 1} and (grown.groupby('key').params.agg(lambda p: p.iloc[-1] > p.iloc[0])).all()
    full = df[df.method == 'full'].flops.iloc[0]
    for meth in ['L1 pruning', 'BN pruning', 'MorphNet']:  # pruned to at most prune_flops x full
        assert df[df.method == meth].flops.iloc[0] <= SCALES['smoke'].prune_flops * full + 1, meth
    md = (out / 'table1_smoke.md').read_text()
    assert 'S3D-1 c=3' in md and 'Command:' in md and 'wall time' in r.stdout
    assert not list(out.rglob('*.tmp'))
    # rerun: every run is reused (rows.csv untouched)
    rows = out / 'table1_smoke_runs' / 'S3D-c3-s0' / 'rows.csv'
    mt = rows.stat().st_mtime_ns
    r2 = _s3d('reproduce', 'table1', '--scale', 'smoke', '--device', 'cpu', '--data', str(data), '--out', 'res', cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert rows.stat().st_mtime_ns == mt
    assert pd.read_csv(out / 'table1_smoke.csv').equals(df)

def test_table1_corrupt_cifar_is_one_line_error(tmp_path):
    folder = make_fake_cifar100(tmp_path / 'data', 8, 4)
    (folder / 'train').write_bytes(b'not a pickle')
    r = _s3d('reproduce', 'table1', '--scale', 'smoke', '--device', 'cpu', '--data', str(tmp_path / 'data'), '--out', 'res', cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and 'data error' in err[0] and 'train' in err[0], r.stderr

def test_paper_scale_missing_data_names_the_file(tmp_path):
    with pytest.raises(DataError, match='cifar-100-python'):
        table1_data(SCALES['paper'], data=tmp_path)

def test_paper_runs_cover_every_method():
    runs = table1_runs(SCALES['paper'])
    meths = {r['method'] for r in runs}
    assert {'S2D', 'S3D', 'full', '0.25x', '0.5x', '0.75x', 'L1 pruning', 'BN pruning', 'MorphNet'} <= meths
    assert {r['c'] for r in runs if r['method'] == 'S3D'} >= {1.5, 2.0, 3.0, 5.0}
    assert {r['setting'] for r in runs} == {'params', 'energy', 'baseline'}
    cfg = SCALES['paper']
    assert cfg.rounds == 5 and cfg.m == 2 and cfg.epochs == 160 and cfg.seed_widths == (32,) * 14

def test_prune_channels_keeps_function_of_kept_channels():
    import torch
    cfg = SCALES['smoke']
    net = cfg.model(cfg.full_widths).eval()
    with torch.no_grad():  # channels 4.. of the stem output nothing: removing them keeps the function
        net.stem.bn.weight[4:] = 0; net.stem.bn.bias[4:] = 0
    x = torch.randn(3, 3, 32, 32)
    y0 = net(x)
    prune_channels(net, cfg.example(), {'stem.conv': torch.arange(4)})
    assert net.widths[0] == 4
    torch.testing.assert_close(net(x), y0, atol=1e-5, rtol=1e-5)

def test_s3d_vs_s2d_pairs_by_seed():
    df = pd.DataFrame(dict(setting='params', round=[2] * 4, c=[1., 1., 3., 3.], seed=[0, 1, 0, 1], acc=[50., 60., 52., 61.]))
    v = s3d_vs_s2d(df, 3.)
    assert v['n'] == 2 and v['wins'] == 2 and abs(v['mean'] - 1.5) < 1e-9
