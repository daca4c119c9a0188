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
    assert all(r['ours_img_s'] > 0 and r['plain_img_s'] > 0 for r in res['throughput'])
    assert all(r['error'] is None and r['eigen_s'] > 0 for r in res['eigen'])
    for r in res['agreement']:  # float32 vs float64 on the CPU: S to ~1e-6, eigenvalues within 2% of the radius
        assert r['S_rel_err'] < 1e-4 and r['within_2pct'] == 100, r
        assert r['cos_median'] is None or r['cos_median'] > 0.99, r
