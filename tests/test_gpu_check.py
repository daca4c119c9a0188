"benchmarks/gpu_check.py at tiny shapes on the CPU: every section runs through the real pipeline and writes its report."
import json, math, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))


def test_gpu_check_tiny_cpu(tmp_path):
    import gpu_check
    res = gpu_check.main(['--tiny', '--device', 'cpu', '--out', str(tmp_path)])
    js = json.loads((tmp_path / 'gpu_check.json').read_text())
    md = (tmp_path / 'gpu_check.md').read_text()
    assert js['device'] == 'cpu' and js['tiny'] is True and '## Table 1 runs' in md
    runs = {r['run']: r for r in res['table1']}
    assert not [r for r in res['table1'] if r['error']], [r['error'] for r in res['table1'] if r['error']]
    assert {'S2D-c1-s0', 'S3D-c3-s0', 'l1-s0', 'bn-s0', 'morphnet-s0', 'E-S3D-c3-s0'} <= set(runs)
    assert runs['l1-s0']['flops'] < runs['width1-s0']['flops']
    t23 = {r['run']: r for r in res['tables23']}
    assert not [r for r in res['tables23'] if r.get('error')], [r['error'] for r in res['tables23'] if r.get('error')]
    assert {'table2 E-S3D-c3-s0', 'table3 S3D-c3-s0', 'table3 pointnet-s0'} <= set(t23), sorted(t23)
    assert '## Tables 2 and 3 runs' in md
    thr = {r['model']: r for r in res['throughput']}
    assert thr['full']['MFLOPs'] > thr['seed']['MFLOPs'] and all(r['ours_img_s'] > 0 and r['plain_img_s'] > 0 for r in thr.values())
    assert js['numerics']['cudnn_benchmark'] is False and 'deterministic' in js['numerics']   # the numerics of `s3d reproduce`
    assert 'cudnn.benchmark off' in md
    proj = {r['what']: r['hours'] for r in res['projection']}
    assert 0 < proj['of which the controls (random growth, Net2Net, scratch)'] < proj['paper-scale Table 1 training']
    assert all(r['error'] is None and r['eigen_s'] > 0 for r in res['eigen'])
    for r in res['agreement']:  # float32 vs float64 on the CPU: S to ~1e-6, eigenvalues within 2% of the radius
        assert r['S_rel_err'] < 1e-4 and r['within_2pct'] == 100, r
        assert r['cos_median'] is None or r['cos_median'] > 0.99, r


def test_table1_projection_counts_every_stage_of_the_controls():
    "Random growth and Net2Net train the seed and after every split, scratch as many stages of S3D's final net (issue 18)."
    import gpu_check
    import s3d.paper.experiments.table1 as T1
    cfg = T1.SCALES['paper']
    stages = gpu_check.table1_stages(cfg)
    count = lambda m: sum(k for meth, _, k in stages if meth == m)
    per_run = cfg.rounds + 1
    n_ctl = {m: sum(r['method'] == m for r in T1.table1_runs(cfg)) for m in ('random growth', 'Net2Net', 'scratch', 'S3D')}
    for m in ('random growth', 'Net2Net', 'scratch', 'S3D'): assert count(m) == per_run * n_ctl[m], m
    hours = gpu_check.project_table1(lambda w: 1000.0, cfg)   # 1,000 img/s everywhere: hours = stages x epoch time
    assert math.isclose(sum(hours.values()), sum(k for _, _, k in stages) * 50_000 * cfg.epochs / 1000 / 3600)
