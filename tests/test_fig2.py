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
