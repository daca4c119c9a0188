import warnings
import pytest, torch
from torch import nn
from s3d.graph import SplitGroup
from s3d.eigen import EigenPairs, BlockKrylov, eigh_extremes, lanczos_extremes, extreme_eigenpairs
from s3d.splitmat import splitting_matrices, split_operators

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

@pytest.mark.parametrize("block,max_dim", [(1, 6), (2, 6), (3, 9), (4, 40)])
def test_block_krylov_with_restarts_matches_eigh(block, max_dim):
    g = torch.Generator().manual_seed(block)
    A = torch.randn(7, 25, 25, dtype=torch.float64, generator=g); S = A + A.transpose(1, 2)
    bk = BlockKrylov(7, 25, block=block, max_dim=max_dim, tol=1e-9, max_iter=2000, generator=g)
    while not bk.done: bk.update(S[bk.idx] @ bk.P)
    f, e = bk.result(), eigh_extremes(S)
    assert bk.converged.all() and (bk.restarts > 0) == (max_dim < 25)
    torch.testing.assert_close(f.lam_min, e.lam_min, atol=1e-7, rtol=0); torch.testing.assert_close(f.lam_max, e.lam_max, atol=1e-7, rtol=0)
    assert bk.peak_bytes <= 8 * 7 * 25 * (2 * min(25, max_dim) + block)
    with pytest.raises(ValueError, match="start must be"): BlockKrylov(7, 25, max_dim=4, start=torch.randn(7, 25, 5))

def test_lanczos_large_d_bounded_workspace():
    "d = 4000: the Krylov workspace stays O(n d max_dim), far below the n d^2 a full-dimension basis would take."
    g = torch.Generator().manual_seed(0)
    n, d = 2, 4000
    lam = torch.randn(n, d, dtype=torch.float64, generator=g)
    st = {}
    f, used = lanczos_extremes(lambda V: lam * V, n, d, stats=st, generator=g)
    rad = lam.abs().amax(-1)
    assert ((f.lam_min - lam.min(-1).values).abs() <= 2e-2 * rad).all() and ((f.lam_max - lam.max(-1).values).abs() <= 2e-2 * rad).all()
    assert st['max_dim'] == 32 and st['peak_bytes'] <= 8 * n * d * (2 * 32 + 1) < n * d * d * 8 / 50
    f, used = lanczos_extremes(lambda V: lam * V, n, d, stats=st, generator=g, max_bytes=2**20, max_iter=400)  # 1 MiB
    assert st['max_dim'] == 7 and st['peak_bytes'] <= 2**20 and st['restarts'] > 0
    assert ((f.lam_max - lam.max(-1).values).abs() <= 2e-2 * rad).all()
    with pytest.raises(ValueError, match="too small"): lanczos_extremes(lambda V: lam * V, n, d, max_bytes=2**16)

def _net(dtype=torch.float32):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 5), nn.SiLU(), nn.Linear(5, 3)).to(dtype)
    with torch.no_grad(): net[1].running_var.uniform_(0.5, 2.); net[1].weight.uniform_(0.5, 1.5)
    groups = [SplitGroup('0', net[0], net[1], net[2]), SplitGroup('4', net[4], None, net[5])]
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(B, 2, 5, 5, generator=g, dtype=dtype), torch.randint(0, 3, (B,), generator=g)) for B in (16, 16, 16, 9)]
    return net, groups, data

def _within(fast, exact, rel=0.02):
    rad = torch.maximum(exact.lam_min.abs(), exact.lam_max.abs())
    return (((fast.lam_min - exact.lam_min).abs() <= rel * rad) & ((fast.lam_max - exact.lam_max).abs() <= rel * rad)).double().mean().item()

def test_extreme_eigenpairs_exact_and_fast_agree():
    net, groups, data = _net(); loss = nn.CrossEntropyLoss()
    ex = extreme_eigenpairs(net, groups, loss, data, 'exact')
    fa = extreme_eigenpairs(net, groups, loss, data, 'fast', tol=1e-8, max_dim=128)
    for g in groups:
        S = splitting_matrices(net, g, loss, data)
        torch.testing.assert_close(ex[g.name].lam_min, torch.linalg.eigvalsh(S)[:, 0])
        assert isinstance(ex[g.name], EigenPairs) and ex[g.name].v_min.shape == (g.n_neurons, g.dim)
        rad = torch.maximum(ex[g.name].lam_min.abs(), ex[g.name].lam_max.abs())
        assert ((fa[g.name].lam_min - ex[g.name].lam_min).abs() <= 1e-6 * rad).all()
        assert ((fa[g.name].lam_max - ex[g.name].lam_max).abs() <= 1e-6 * rad).all()
        assert ((fa[g.name].v_max * ex[g.name].v_max).sum(-1).abs() > 0.999).all()

@pytest.mark.parametrize("method", ['cached', 'stream'])
def test_krylov_conv_and_linear_groups_both_ends(method):
    "dense_dim=0 sends the conv and the Linear group through block Krylov; both ends match exact at the default tol."
    net, groups, data = _net(); loss = nn.CrossEntropyLoss()
    ex = extreme_eigenpairs(net, groups, loss, data, 'exact')
    st = {}
    fa = extreme_eigenpairs(net, groups, loss, data, method, dense_dim=0, stats=st)
    assert st['method'] == method and all(v['solver'] == 'krylov' and v['unconverged'] == 0 for v in st['groups'].values())
    assert (st['passes'] == 1) == (method == 'cached') and (st['cache_bytes'] > 0) == (method == 'cached')
    for g in groups:
        assert _within(fa[g.name], ex[g.name]) >= 0.95
        e, f = ex[g.name], fa[g.name]
        rad = torch.maximum(e.lam_min.abs(), e.lam_max.abs())
        assert ((f.lam_min - e.lam_min) >= -1e-6 * rad).all() and ((e.lam_max - f.lam_max) >= -1e-6 * rad).all()  # Ritz values lie inside
    tight = extreme_eigenpairs(net, groups, loss, data, method, dense_dim=0, tol=1e-7, max_passes=60, max_dim=128)
    for g in groups:
        torch.testing.assert_close(tight[g.name].lam_min, ex[g.name].lam_min, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(tight[g.name].lam_max, ex[g.name].lam_max, atol=1e-5, rtol=1e-4)

def test_dense_groups_are_exact():
    net, groups, data = _net(); loss = nn.CrossEntropyLoss()
    ex, st = extreme_eigenpairs(net, groups, loss, data, 'exact'), {}
    fa = extreme_eigenpairs(net, groups, loss, data, 'stream', dense_dim=1000, stats=st)
    assert st['passes'] == 1 and all(v['solver'] == 'dense' for v in st['groups'].values())
    for g in groups: torch.testing.assert_close(fa[g.name].lam_max, ex[g.name].lam_max, atol=1e-6, rtol=1e-5)

def test_stream_memory_does_not_grow_with_batches():
    net, groups, _ = _net(); loss = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(16, 2, 5, 5, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(8)]
    rec = {}
    for nb in (1, 8):
        for method in ('cached', 'stream'):
            st = {}; extreme_eigenpairs(net, groups, loss, data[:nb], method, dense_dim=0, stats=st); rec[method, nb] = st
    assert rec['cached', 8]['cache_bytes'] == 8 * rec['cached', 1]['cache_bytes'] > 0   # the cache grows with the data
    for nb in (1, 8):
        assert rec['stream', nb]['cache_bytes'] == 0
        assert rec['stream', nb]['workspace_bytes'] <= rec['stream', nb]['reserved_bytes'] == rec['stream', 1]['reserved_bytes']

def _tanh_mlp(d_in, n, batch, batches):
    "A seeded d_in-n-2 tanh MLP, its hidden layer's group, random two-class batches and the loss."
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(d_in, n), nn.Tanh(), nn.Linear(n, 2))
    data = [(torch.randn(batch, d_in), torch.randint(0, 2, (batch,))) for _ in range(batches)]
    return net, SplitGroup('0', net[0], None, net[1]), data, nn.CrossEntropyLoss()


def test_large_d_layer_bounded_workspace():
    "A Linear group with d = 4001: cached and streamed workspaces stay far below n d^2 float64, and the pairs are right."
    net, grp, data, loss = _tanh_mlp(4000, 6, batch=8, batches=3)
    op = split_operators(net, [grp], loss, data)['0']
    for method in ('cached', 'stream'):
        st = {}
        f = extreme_eigenpairs(net, grp, loss, data, method, stats=st)['0']
        assert st['workspace_bytes'] <= st['reserved_bytes'] < 6 * 4001 ** 2 * 8 / 20
        for lam, v in [(f.lam_min, f.v_min), (f.lam_max, f.v_max)]:  # a small residual against the operator
            r = (op(v.double()) - lam[:, None] * v).norm(dim=-1)
            assert (r <= 1.01e-2 * torch.maximum(f.lam_min.abs(), f.lam_max.abs())).all()

def test_float64_model_stays_float64():
    "Everything is created in the model's dtype/device: a float64 model gives float64 pairs as accurate as float64 allows."
    net, groups, data = _net(torch.float64); loss = nn.CrossEntropyLoss()
    ex = extreme_eigenpairs(net, groups, loss, data, 'exact')
    for method in ('cached', 'stream'):
        fa = extreme_eigenpairs(net, groups, loss, data, method, dense_dim=0, tol=1e-10, max_passes=100, max_dim=128)
        for g in groups:
            f = fa[g.name]
            assert f.lam_min.dtype == f.v_min.dtype == torch.float64 and f.v_min.device == g.producer.weight.device
            torch.testing.assert_close(f.lam_min, ex[g.name].lam_min, atol=1e-10, rtol=1e-9)
            torch.testing.assert_close(f.lam_max, ex[g.name].lam_max, atol=1e-10, rtol=1e-9)

def test_fast_picks_cached_or_stream_by_budget_and_iterators():
    net, groups, data = _net(); loss = nn.CrossEntropyLoss()
    st = {}; extreme_eigenpairs(net, groups, loss, data, 'fast', dense_dim=0, stats=st); assert st['method'] == 'cached'
    need = st['cache_bytes'] + st['reserved_bytes']
    st = {}; extreme_eigenpairs(net, groups, loss, data, 'fast', dense_dim=0, max_bytes=need - 1, stats=st)
    assert st['method'] == 'stream' and st['cache_bytes'] == 0 and 'cache_overflow' not in st
    class NoLen:  # a re-iterable without len(): cache, overflow, start again streaming
        def __iter__(self): return iter(data)
    st = {}; extreme_eigenpairs(net, groups, loss, NoLen(), 'fast', dense_dim=0, max_bytes=need - 1, stats=st)
    assert st['method'] == 'stream' and st['cache_overflow']
    st = {}; extreme_eigenpairs(net, groups, loss, iter(data), 'fast', dense_dim=0, stats=st); assert st['method'] == 'cached'
    with pytest.raises(ValueError, match="one-shot"): extreme_eigenpairs(net, groups, loss, iter(data), 'fast', dense_dim=0, max_bytes=need - 1)
    with pytest.raises(TypeError, match="one-shot iterator"): extreme_eigenpairs(net, groups, loss, (b for b in data), 'stream', dense_dim=0)
    with pytest.raises(ValueError, match="method='stream'"): extreme_eigenpairs(net, groups, loss, data, 'cached', dense_dim=0, max_bytes=need - 1)

def test_stream_needs_the_same_samples_each_pass():
    net, groups, data = _net(); loss = nn.CrossEntropyLoss()
    class Shrinking:
        def __init__(self): self.calls = 0
        def __iter__(self): self.calls += 1; return iter(data if self.calls == 1 else data[:2])
    with pytest.raises(ValueError, match="same samples"): extreme_eigenpairs(net, groups, loss, Shrinking(), 'stream', dense_dim=0)

def test_extreme_eigenpairs_errors():
    net, groups, data = _net(); loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="empty"): extreme_eigenpairs(net, groups, loss, [], 'exact')
    with pytest.raises(ValueError, match="empty"): extreme_eigenpairs(net, groups, loss, [], 'stream')
    with pytest.raises(ValueError, match="method"): extreme_eigenpairs(net, groups, loss, data, 'lobpcg')
    with pytest.raises(ValueError, match="max_bytes"): extreme_eigenpairs(net, groups, loss, data, 'fast', max_bytes=100)
    with pytest.raises(ValueError, match="unique"): extreme_eigenpairs(net, [groups[0], groups[0]], loss, data, 'fast')
    with pytest.raises(ValueError, match="not a module"):
        extreme_eigenpairs(net, SplitGroup('x', nn.Linear(3, 3), None, nn.Tanh()), loss, data)
    with pytest.raises(ValueError, match="not a module"):
        extreme_eigenpairs(net, SplitGroup('x', nn.Linear(300, 3), None, nn.Tanh()), loss, data, 'stream')


@pytest.mark.parametrize("max_dim", [32, 5])
def test_lanczos_method_matches_update_loop(max_dim):
    "BlockKrylov.lanczos (k = 1) spans the same Krylov space as the update loop: same products with every=1, same pairs."
    g = torch.Generator().manual_seed(5)
    A = torch.randn(11, 20, 20, dtype=torch.float64, generator=g); S = A + A.transpose(1, 2)
    runs = {}
    for how in ('update', 'lanczos1', 'lanczos2'):
        bk = BlockKrylov(11, 20, block=1, max_dim=max_dim, tol=1e-3, max_iter=400, generator=torch.Generator().manual_seed(0))
        prod = lambda P: S[bk.idx] @ P
        if how == 'update':
            while not bk.done: bk.update(prod(bk.P))
        else: bk.lanczos(prod, every=int(how[-1]))
        runs[how] = bk
        assert bk.converged.all() and (bk.restarts > 0) == (max_dim < 20)
    e = eigh_extremes(S)
    assert runs['lanczos1'].products == runs['update'].products <= runs['lanczos2'].products <= runs['update'].products + 1
    for bk in runs.values():
        f, rad = bk.result(), torch.maximum(e.lam_min.abs(), e.lam_max.abs())
        assert ((f.lam_min - e.lam_min).abs() <= 1e-3 * rad).all() and ((f.lam_max - e.lam_max).abs() <= 1e-3 * rad).all()
    with pytest.raises(ValueError, match="fresh BlockKrylov"): runs['update'].lanczos(lambda P: P)

def test_stacked_rows_match_operator_products():
    "Stacking a Linear group's cached batches into row chunks (as the cached Lanczos loop does) keeps its products over many batches (chunked or not); conv groups keep their batches."
    from s3d.eigen import _restrict
    net, grp, data, loss = _tanh_mlp(6, 5, batch=7, batches=5)
    ref = split_operators(net, [grp], loss, data)['0']
    V, rows = torch.randn(5, 7, 1), torch.tensor([0, 2, 3])
    for chunk in (None, 7 * 5 * 4 * 2):  # one chunk; two batches a chunk
        op = split_operators(net, [grp], loss, data)['0']
        assert op.stack_rows(chunk)
        assert len(op.xs) == len(op.cs) == (1 if chunk is None else 3) and op.count == ref.count
        torch.testing.assert_close(op.products(V), ref.products(V), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_restrict(op, rows).products(V[rows]), ref.products(V[rows], rows), rtol=1e-5, atol=1e-6)
    cnet, groups, cdata = _net()
    assert not split_operators(cnet, groups[:1], nn.CrossEntropyLoss(), cdata)['0'].stack_rows()

def test_lanczos_residuals_are_the_exact_ones(monkeypatch):
    "The residuals lanczos retires by (beta_m |s_m|, from the tridiagonal alone) are ||S y - theta y|| of its Ritz pairs."
    g = torch.Generator().manual_seed(7)
    A = torch.randn(6, 30, 30, dtype=torch.float64, generator=g); S = A + A.transpose(1, 2)
    seen, retire = [], BlockKrylov._retire
    def spy(self, te, Y, res, m):
        Yall = Y(torch.arange(len(te))) if callable(Y) else Y
        seen.append((self.idx.clone(), te.clone(), Yall.clone(), res.clone()))
        return retire(self, te, Y, res, m)
    monkeypatch.setattr(BlockKrylov, '_retire', spy)
    bk = BlockKrylov(6, 30, block=1, tol=1e-8, generator=g)
    bk.lanczos(lambda P: S[bk.idx] @ P)
    assert len(seen) > 3 and bk.converged.all()
    for idx, te, Y, res in seen:
        exact = (S[idx] @ Y - Y * te[:, None]).norm(dim=1) / te.abs().amax(-1, keepdim=True)
        torch.testing.assert_close(res, exact, atol=1e-10, rtol=0)

def test_lanczos_result_when_interrupted():
    "Stopped between checks, result() gives the latest Ritz pairs: unit vectors, values inside the spectrum."
    g = torch.Generator().manual_seed(8)
    A = torch.randn(5, 30, 30, dtype=torch.float64, generator=g); S = A + A.transpose(1, 2)
    bk, calls = BlockKrylov(5, 30, block=1, tol=1e-12, generator=g), [0]
    def prod(P):
        calls[0] += 1
        if calls[0] > 9: raise RuntimeError("stop")
        return S[bk.idx] @ P
    with pytest.raises(RuntimeError, match="stop"): bk.lanczos(prod)
    f, e = bk.result(), eigh_extremes(S)
    assert not bk.done and (f.lam_min >= e.lam_min - 1e-9).all() and (f.lam_max <= e.lam_max + 1e-9).all()
    torch.testing.assert_close(f.v_min.norm(dim=1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(f.v_max.norm(dim=1), torch.ones(5, dtype=torch.float64))
    rq = lambda v: (v[:, None] @ S @ v[..., None])[:, 0, 0]  # the Ritz value is the vector's Rayleigh quotient
    torch.testing.assert_close(rq(f.v_min), f.lam_min); torch.testing.assert_close(rq(f.v_max), f.lam_max)
