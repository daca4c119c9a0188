import pytest, torch
from torch import nn
from s3d.graph import SplitGroup
from s3d.eigen import EigenPairs, eigh_extremes, lanczos_extremes, extreme_eigenpairs
from s3d.splitmat import splitting_matrices

def _mv(S): return lambda V: (S @ V[..., None])[..., 0]

def test_eigh_extremes_sorted_unit_and_symmetrised():
    A = torch.randn(6, 5, 5, dtype=torch.float64)
    ep = eigh_extremes(A)  # non-symmetric input is symmetrised
    lam = torch.linalg.eigvalsh(0.5 * (A + A.transpose(1, 2)))
    torch.testing.assert_close(ep.lam_min, lam[:, 0]); torch.testing.assert_close(ep.lam_max, lam[:, -1])
    torch.testing.assert_close(ep.v_max.norm(dim=-1), torch.ones(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="n, d, d"): eigh_extremes(torch.zeros(3, 2))

@pytest.mark.parametrize("d", [1, 2, 7, 30])
def test_lanczos_matches_eigh(d):
    g = torch.Generator().manual_seed(d)
    A = torch.randn(9, d, d, dtype=torch.float64, generator=g); S = A @ A.transpose(1, 2) - 2 * torch.eye(d)
    f, used = lanczos_extremes(_mv(S), 9, d, tol=1e-10, generator=g)
    e = eigh_extremes(S)
    assert used <= d
    torch.testing.assert_close(f.lam_min, e.lam_min, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(f.lam_max, e.lam_max, atol=1e-8, rtol=1e-8)

def test_lanczos_repeated_eigenvalues_and_zero():
    S = torch.stack([torch.diag(torch.tensor([1., 1., 1., 5., 5.])), torch.zeros(5, 5), 2 * torch.eye(5)]).double()
    f, _ = lanczos_extremes(_mv(S), 3, 5, tol=1e-12)
    torch.testing.assert_close(f.lam_min, torch.tensor([1., 0., 2.], dtype=torch.float64))
    torch.testing.assert_close(f.lam_max, torch.tensor([5., 0., 2.], dtype=torch.float64))
    torch.testing.assert_close(_mv(S)(f.v_max), f.lam_max[:, None] * f.v_max)
    assert torch.isfinite(f.v_min).all()

def test_lanczos_bad_size():
    with pytest.raises(ValueError, match="d >= 1"): lanczos_extremes(lambda v: v, 2, 0)

def _net():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 5), nn.SiLU(), nn.Linear(5, 3))
    groups = [SplitGroup('0', net[0], net[1], net[2]), SplitGroup('4', net[4], None, net[5])]
    data = [(torch.randn(6, 2, 5, 5), torch.randint(0, 3, (6,))), (torch.randn(3, 2, 5, 5), torch.randint(0, 3, (3,)))]
    return net, groups, data

def test_extreme_eigenpairs_exact_and_fast_agree():
    net, groups, data = _net(); loss = nn.CrossEntropyLoss()
    ex = extreme_eigenpairs(net, groups, loss, data, 'exact')
    fa = extreme_eigenpairs(net, groups, loss, data, 'fast', tol=1e-8)
    for g in groups:
        S = splitting_matrices(net, g, loss, data)
        torch.testing.assert_close(ex[g.name].lam_min, torch.linalg.eigvalsh(S)[:, 0])
        assert isinstance(ex[g.name], EigenPairs) and ex[g.name].v_min.shape == (g.n_neurons, g.dim)
        rad = torch.maximum(ex[g.name].lam_min.abs(), ex[g.name].lam_max.abs())
        assert ((fa[g.name].lam_min - ex[g.name].lam_min).abs() <= 1e-6 * rad).all()
        assert ((fa[g.name].lam_max - ex[g.name].lam_max).abs() <= 1e-6 * rad).all()
        assert ((fa[g.name].v_max * ex[g.name].v_max).sum(-1).abs() > 0.999).all()

def test_extreme_eigenpairs_errors():
    net, groups, data = _net(); loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="empty"): extreme_eigenpairs(net, groups, loss, [], 'exact')
    with pytest.raises(ValueError, match="method"): extreme_eigenpairs(net, groups, loss, data, 'lobpcg')
    with pytest.raises(ValueError, match="max_bytes"): extreme_eigenpairs(net, groups, loss, data, 'fast', max_bytes=100)
    with pytest.raises(ValueError, match="not a module"):
        extreme_eigenpairs(net, SplitGroup('x', nn.Linear(3, 3), None, nn.Tanh()), loss, data)
