"Tests of the Figure 2 toy RBF experiment: exact splitting matrices, function-preserving splits, S2D stalling."
import math
import pytest
import torch
from s3d.paper.experiments.fig2 import (SCALES, apply_split, choose_split, extreme_eigs, grow_rbf, make_target, rbf_hidden,
                                  rbf_predict, splitting_matrices)

DT = torch.float64

def _setup():
    x = torch.linspace(-4, 4, 80, dtype=DT)
    tth, tu = make_target(1)
    th = torch.tensor([[1.3, 0.4], [0.8, -1.2], [2.0, 2.5]], dtype=DT)
    u = torch.tensor([0.6, 0.9, -0.5], dtype=DT)
    return x, rbf_predict(tth, tu, x), th, u

def _loss(th, u, x, y): return (rbf_predict(th, u, x) - y).pow(2).mean().item()

@pytest.mark.parametrize('j', [0, 1, 2])
def test_splitting_matrix_matches_finite_difference_of_split_loss(j):
    # splitting neuron j into halves at theta_j +- eps*v changes the loss by eps^2/2 v^T S_j v + O(eps^3)
    x, y, th, u = _setup()
    S = splitting_matrices(th, u, x, y)
    v = torch.tensor([0.6, -0.8], dtype=DT)
    eps, L0 = 1e-3, _loss(th, u, x, y)
    th2 = torch.cat([th, (th[j] - eps * v)[None]]); th2[j] = th[j] + eps * v
    u2 = torch.cat([u, u[j:j + 1] / 2]); u2[j] = u[j] / 2
    fd = (_loss(th2, u2, x, y) - L0) / (eps ** 2 / 2)
    assert fd == pytest.approx((v @ S[j] @ v).item(), rel=1e-3, abs=1e-7)

def test_splitting_matrix_matches_closed_form_hessian():
    x, y, th, u = _setup()
    S = splitting_matrices(th, u, x, y)
    r = rbf_predict(th, u, x) - y
    for j in range(len(u)):
        z = th[j, 0] * x + th[j, 1]
        g = 2 / len(x) * r * u[j]
        xt = torch.stack([x, torch.ones_like(x)], 1)
        Sj = torch.einsum('i,ip,iq->pq', g * (z ** 2 - 1) * torch.exp(-z ** 2 / 2), xt, xt)
        torch.testing.assert_close(S[j], Sj)

@pytest.mark.parametrize('m,c', [(2, 1.), (2, 3.), (3, 2.), (4, 3.)])
def test_split_at_eps_zero_preserves_function(m, c):
    x, y, th, u = _setup()
    j, sc = choose_split(splitting_matrices(th, u, x, y), m, c)
    th2, u2 = apply_split(th, u, j, sc, eps=0.)
    assert len(u2) == len(u) + len(sc.weights) - 1
    torch.testing.assert_close(rbf_predict(th2, u2, x), rbf_predict(th, u, x))
    # and at eps > 0 the copies really move (unless no split was chosen)
    th3, _ = apply_split(th, u, j, sc, eps=0.1)
    assert (len(sc.weights) == 1) or not torch.allclose(th3[j], th[j])

def test_s2d_picks_no_split_when_all_psd_but_s3d_does():
    S = torch.tensor([[[2., 0.3], [0.3, 1.]], [[0.5, 0.], [0., 0.2]]], dtype=DT)
    assert (extreme_eigs(S)[0] >= 0).all()
    j, sc = choose_split(S, 2, 1.)
    assert sc.kind == 'none' and sc.gain == pytest.approx(0.)
    j, sc = choose_split(S, 2, 3.)
    assert sc.kind == 'negative binary' and sc.gain < 0 and j == 0

def test_grow_stops_when_no_split_helps():
    # target = the initial neuron itself: the residual is 0, every S_j = 0, so neither S2D nor S3D splits
    from s3d.paper.experiments.fig2 import _init_neuron
    x = torch.linspace(-4, 4, 60, dtype=DT)
    th0, u0 = _init_neuron(0, DT, 'cpu')
    y = rbf_predict(th0, u0, x)
    for c in (1., 3.):
        _, rounds, _ = grow_rbf(x, y, 2, c, SCALES['smoke'], train_out=False, seed=0)
        assert len(rounds) == 1 and rounds.stuck.iloc[0] and not rounds.split.iloc[0]
        assert rounds.best_kind.iloc[0] == 'none'

def test_bad_inputs():
    x, y, th, u = _setup()
    with pytest.raises(ValueError, match='theta must have shape'): rbf_hidden(th[:, :1], x)
    j, sc = choose_split(splitting_matrices(th, u, x, y), 2, 2.)
    with pytest.raises(ValueError, match='out of range'): apply_split(th, u, 7, sc, 0.1)
    with pytest.raises(ValueError, match='k >= 2'): make_target(0, k=1)


def test_toy_splitting_matrices_agree_with_the_engine():
    """The toy's torch.func Hessians and the library's hook-based S (s3d.splitting_matrices) are two independent
    computations of the same matrices: the RBF net is Linear(1, n) -> RBF -> Linear(n, 1) with theta = (a, b)."""
    from torch import nn
    from s3d import split_groups, splitting_matrices as engine_S
    from s3d.curvature import RBF
    x, y, th, u = _setup()
    net = nn.Sequential(nn.Linear(1, 3), RBF(), nn.Linear(3, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(th[:, :1]); net[0].bias.copy_(th[:, 1]); net[2].weight.copy_(u[None])
    torch.testing.assert_close(net(x[:, None])[:, 0], rbf_predict(th, u, x))
    [g] = split_groups(net, x[:, None])
    S = engine_S(net, g, lambda out, t: (out[:, 0] - t).pow(2).mean(), [(x[:, None], y)])
    torch.testing.assert_close(S, splitting_matrices(th, u, x, y), rtol=1e-9, atol=1e-12)


# --- controls matched to S3D (random growth, Net2Net, scratch) and the job cache --------------------------------------

def test_random_growth_preserves_the_function_exactly():
    from s3d.paper.experiments.fig2 import random_growth
    x, y, th, u = _setup()
    th2, u2 = random_growth(th, u, 2, torch.Generator().manual_seed(3))
    assert len(u2) == 5 and torch.equal(th2[:3], th) and torch.equal(u2[3:], torch.zeros(2, dtype=DT))
    assert (th2[3:, 0] >= 1).all() and (th2[3:, 0] <= 2).all()   # drawn like the first neuron: a in [1, 2]
    assert torch.equal(rbf_predict(th2, u2, x), rbf_predict(th, u, x))
    th3, _ = random_growth(th, u, 2, torch.Generator().manual_seed(3))
    assert torch.equal(th2, th3)   # seeded


def test_net2net_halves_preserve_the_function_at_zero_displacement():
    from s3d.paper.experiments.fig2 import net2net_split
    x, y, th, u = _setup()
    th2, u2 = net2net_split(th, u, 2, 0., torch.Generator().manual_seed(1))
    assert len(u2) == 5 and u2.sum().item() == pytest.approx(u.sum().item(), abs=1e-15)
    torch.testing.assert_close(rbf_predict(th2, u2, x), rbf_predict(th, u, x), rtol=0, atol=1e-15)
    # at displacement eps the halves sit at theta_j +- eps * (unit vector): the parent is their midpoint
    th3, u3 = net2net_split(th, u, 1, 0.1, torch.Generator().manual_seed(1))
    j = int(torch.nonzero(u3[:3] != u)[0, 0])
    assert u3[j] == u3[3] == u[j] / 2
    torch.testing.assert_close((th3[j] + th3[3]) / 2, th[j]); assert (th3[j] - th3[3]).norm().item() == pytest.approx(0.2)


def test_controls_follow_the_s3d_counts_and_scratch_gets_the_same_steps():
    from s3d.paper.experiments.fig2 import grow_control
    cfg = SCALES['smoke']
    x = torch.linspace(-4, 4, 40, dtype=DT); tth, tu = make_target(2); y = rbf_predict(tth, tu, x)
    counts = [1, 2, 2, 4]
    for g in ('random', 'net2net', 'scratch'):
        cu, ro, ne = grow_control(x, y, counts, g, cfg, train_out=True, seed=1)
        assert ro.neurons.tolist() == (counts if g != 'scratch' else [4] * 4)
        assert ro.iteration.iloc[-1] == cu.iteration.max() == len(counts) * cfg.steps
        assert ro.split.tolist() == ([True, False, True, False] if g != 'scratch' else [False] * 4)
        assert (ne.groupby('round').size().tolist() == ro.neurons.tolist())
    with pytest.raises(ValueError, match='never decrease'): grow_control(x, y, [1, 3, 2], 'random', cfg, True)


def test_smoke_run_has_controls_json_cache_and_byte_identical_reruns(tmp_path, capsys):
    import json
    import pandas as pd
    from s3d.paper.experiments.fig2 import run, fig2_jobs, job_key
    paths = run('smoke', 'cpu', out=tmp_path, progress=False)
    ro = pd.read_csv(tmp_path / 'fig2_smoke_rounds.csv')
    assert {'random growth', 'Net2Net', 'scratch'} <= set(ro.method)
    s3d = ro[(ro.method == 'S3D') & (ro.c == 3) & (ro.m == 2)]
    for meth in ('random growth', 'Net2Net'): assert ro[ro.method == meth].neurons.tolist() == s3d.neurons.tolist()
    assert ro[ro.method == 'scratch'].iteration.max() == s3d.iteration.max()
    paired = pd.read_csv(tmp_path / 'fig2_smoke_paired.csv')
    assert len(paired) == 6 and 'S3D - Net2Net' in set(paired.comparison)
    assert 'S2D - scratch' in (tmp_path / 'fig2_smoke.md').read_text()
    # the job cache: one JSON text file per job, no pickle anywhere
    runs = tmp_path / 'fig2_smoke_runs'
    jobs = sorted(runs.glob('*.job.json'))
    assert len(jobs) == len(fig2_jobs(SCALES['smoke'])) and not list(runs.glob('*.pkl'))
    for p in jobs:
        assert not p.read_bytes().startswith(b'\x80') and json.loads(p.read_text())['key'] == p.name[:-len('.job.json')]
    before = {p.name: p.read_bytes() for p in paths}
    # rerun on the cached jobs: the same bytes
    for p in paths: p.unlink()
    capsys.readouterr()
    run('smoke', 'cpu', out=tmp_path, progress=False)
    assert f'reused {len(jobs)} of {len(jobs)}' in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in paths} == before
    # a truncated job file is named, recomputed (with the controls matched to it) and the bytes do not change
    s3d_file = runs / f"{job_key(('mixture', 0, 0, 2, 3., None, 'split'))}.job.json"
    s3d_file.write_bytes(s3d_file.read_bytes()[:500])
    for p in paths: p.unlink()
    run('smoke', 'cpu', out=tmp_path, progress=False)
    out = capsys.readouterr()
    assert str(s3d_file) in out.err and 'recomputing' in out.err
    assert f'reused {len(jobs) - 4} of {len(jobs)}' in out.out
    assert {p.name: p.read_bytes() for p in paths} == before


def _root():
    from pathlib import Path
    return Path(__file__).resolve().parent.parent


def test_prose_matches_the_committed_results():
    "The rendered sentences carry the numbers pandas gets from the committed files, recomputed here independently."
    import numpy as np
    import pandas as pd
    from s3d.paper.report import render
    r = pd.read_csv(_root() / 'data' / 'results' / 'fig2_cpu_rounds.csv')
    last = r.groupby(['formulation', 'target', 'seed', 'method', 'c', 'm']).tail(1)
    mix = last[last.formulation == 'mixture']
    s2 = mix[mix.method == 'S2D'].set_index(['target', 'seed'])
    s3 = mix[(mix.method == 'S3D') & (mix.c == 3) & (mix.m == 2)].set_index(['target', 'seed'])
    d = np.log10(s3.loss) - np.log10(s2.loss)
    verdict = render('fig2.verdict', _root())
    assert f'in {int((s2.stuck & s2.psd).sum())}/{len(s2)} replicates' in verdict
    assert f'S3D - S2D = {d.mean():+.2f} decades' in verdict and f'S3D lower in {int((d < 0).sum())}/{len(d)}' in verdict
    m3 = r[(r.method == 'S3D') & (r.m == 3)]
    assert f'in {int((m3.best_kind == "mixed triplet").sum())} of the {len(m3)} rounds' in render('fig2.mixed', _root())
    pa = pd.read_csv(_root() / 'data' / 'results' / 'fig2_cpu_paired.csv').iloc[0]
    assert f'{pa.comparison} {pa.diff_log10:+.2f} [{pa.lo:+.2f}, {pa.hi:+.2f}]' in render('fig2.controls', _root())
    row = render('fig2.row', _root()).strip()
    assert row.startswith('| Figure 2') and row.endswith(' |') and row.count(' | ') == 6 and '\n' not in row


def test_prose_follows_an_edited_result(tmp_path):
    "Editing a copy of a result file changes the rendered text: nothing in it is typed by hand."
    import shutil
    import pandas as pd
    from s3d.paper.report import render
    res = tmp_path / 'data' / 'results'
    res.mkdir(parents=True)
    for name in ('fig2_cpu_rounds.csv', 'fig2_cpu_paired.csv'):
        shutil.copy(_root() / 'data' / 'results' / name, res / name)
    before = {n: render(n, tmp_path) for n in ('fig2.mixed', 'fig2.controls', 'fig2.verdict')}
    assert before == {n: render(n, _root()) for n in before}
    r = pd.read_csv(res / 'fig2_cpu_rounds.csv')
    r.loc[r.index[(r.best_kind == 'mixed triplet')][:1], 'best_kind'] = 'positive triplet'
    r.loc[(r.formulation == 'mixture') & (r.method == 'S3D') & (r.m == 2) & (r.c == 3), 'loss'] *= 10
    r.to_csv(res / 'fig2_cpu_rounds.csv', index=False)
    pa = pd.read_csv(res / 'fig2_cpu_paired.csv')
    pa.loc[0, 'diff_log10'] += 1
    pa.to_csv(res / 'fig2_cpu_paired.csv', index=False)
    assert all(render(n, tmp_path) != t for n, t in before.items())
