"benchmarks/gpu_check.py at tiny shapes on the CPU: every section runs through the real pipeline and writes its report."
import argparse, json, math, sys
from dataclasses import replace
from pathlib import Path
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "One --tiny --device cpu check shared by the tests of this file: (result, its output folder)."
    import gpu_check
    out = tmp_path_factory.mktemp('gpu_check')
    return gpu_check.main(['--tiny', '--device', 'cpu', '--out', str(out)]), out


def test_gpu_check_tiny_cpu(tiny):
    res, tmp_path = tiny
    js = json.loads((tmp_path / 'gpu_check.json').read_text())
    md = (tmp_path / 'gpu_check.md').read_text()
    assert js['device'] == 'cpu' and js['tiny'] is True and '## Table 1 runs' in md
    runs = {r['run']: r for r in res['table1']}
    assert not [r for r in res['table1'] if r['error']], [r['error'] for r in res['table1'] if r['error']]
    assert {'S2D-c1-s0', 'S3D-c3-s0', 'l1-s0', 'bn-s0', 'morphnet-s0', 'E-S3D-c3-s0'} <= set(runs)
    assert runs['l1-s0']['flops'] < runs['width1-s0']['flops']
    t23 = {f"{r['experiment']} {r['run']}": r for r in res['tables23']}
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


def test_verdict_one_row_per_experiment(tiny):
    "The verdict: a row per experiment, every run ok, positive projections, CPU memory labelled, agreement bounded."
    res, out = tiny
    v = {r['experiment']: r for r in res['verdict']}
    assert list(v) == ['table1', 'table2', 'table3', 'fig2']
    csv = pd.read_csv(out / 'verdict.csv')
    assert list(csv.experiment) == list(v) and '## Verdict' in (out / 'verdict.md').read_text()
    assert (out / 'gpu_check.md').read_text().rstrip().endswith((out / 'verdict.md').read_text().rstrip())  # printed last
    for tag, r in v.items():
        ok, total = map(int, r['runs_ok'].split('/'))
        assert ok == total > 0, (tag, r)
        assert r['projected_h'] > 0 and math.isfinite(r['projected_h']) and r['projection_inputs'], (tag, r)
        assert 'peak_GPU_MiB' not in r and r['CPU_max_RSS_growth_MiB'] >= 0   # no GPU figure on the CPU
    for tag in ('table1', 'table2', 'table3'):
        assert v[tag]['train_img_s'] > 0 and v[tag]['eigen_over_T_train'] > 0
        assert set(v[tag]['eigen_path'].split(',')) <= {'cached', 'stream', 'dense', 'exact'}, v[tag]
    assert v['table3']['eigen_path'] == 'exact'          # smoke Table 3 asks for exact eigenpairs
    for tag in ('table1', 'table2'):  # fast eigenpairs (Krylov to tol 1e-2 on private-path groups) vs exact float64
        assert v[tag]['gain_agreement'] < 1e-2, v[tag]
    assert v['table1']['bench_ours_plain_img_s'].count('/') == 1
    assert (out / 'table2_gpucheck.csv').exists() and (out / 'table3_gpucheck.md').exists()   # the reproduce entry point


def test_probe_counts_the_parts_of_every_run(tiny):
    "Each run's timed parts match its schedule: grown runs train rounds + 1 stages, score once per split, test per stage."
    res, _ = tiny
    a = argparse.Namespace(tiny=True, rounds=1)
    c2, c3 = __import__('gpu_check').tables23_configs(a)
    rows = {r['experiment'] + ' ' + r['run'].split(' ', 1)[-1]: r for r in res['table1'] + res['tables23']}
    for key in ('table1 S3D-c3-s0', 'table2 E-S3D-c3-s0', 'table3 S3D-c3-s0'):
        r = rows[key]
        assert r['eigens'] == a.rounds and r['tests'] == a.rounds + 1 and r['eigen_s'] > 0, r
    assert rows['table3 S3D-c3-s0']['epochs'] == c3.epochs + c3.rounds * c3.finetune_epochs
    assert rows['table2 E-S3D-c3-s0']['epochs'] == (c2.rounds + 1) * c2.epochs
    for key in ('table3 pointnet-s0', 'table3 width1-s0'): assert rows[key]['epochs'] == c3.baseline_budget
    for key in ('table2 random-E-S3D-c3-s0', 'table3 net2net-S3D-c3-s0'):
        assert rows[key]['eigens'] == 0   # the controls do not score


def test_projections_grow_with_the_schedule(tiny):
    "More seeds, rounds or Figure 2 targets project more hours (seeds: exactly in proportion)."
    import gpu_check
    import s3d.paper.experiments.table2 as T2, s3d.paper.experiments.table3 as T3, s3d.paper.experiments.fig2 as F2
    res, _ = tiny
    a = argparse.Namespace(tiny=True, rounds=1)
    c2, c3 = gpu_check.tables23_configs(a)
    rows = res['tables23']
    for tag, M, P, runs in (('table2', c2, T2.SCALES['paper'], T2.table2_runs),
                            ('table3', c3, T3.SCALES['paper'], T3.table3_runs)):
        pr = lambda P: gpu_check.project_runs(tag, rows, M, P, res['sizes'][tag], runs(P))
        h = lambda P: pr(P)['hours']
        one, three = h(replace(P, seeds=(0,))), h(replace(P, seeds=(0, 1, 2)))
        assert one > 0 and math.isclose(three, 3 * one, rel_tol=1e-9), (tag, one, three)
        base, more = pr(replace(P, seeds=(0,))), pr(replace(P, seeds=(0,), rounds=P.rounds + 2))
        for part in ('train_h', 'eigen_h', 'test_h'):   # the later stages, splits and evaluations counted
            assert more[part] > base[part] > 0, (tag, part)
        assert h(replace(P, seeds=(0,), epochs=2 * P.epochs)) > one, tag
    f2 = [r for r in res['fig2'] if not r.get('error')][0]
    M, P = gpu_check.fig2_config(a), F2.SCALES['paper']
    twice = gpu_check.project_fig2(f2, M, replace(P, targets=2 * P.targets))
    assert math.isclose(twice, 2 * gpu_check.project_fig2(f2, M, P))
