"The splitting matrix is the exact second-order term of a neuron's whole private path (issue 20, item 6a)."
import copy
import pytest, torch
from torch import nn
from conftest import _randomize_bn, make
from s3d.graph import split_groups
from s3d.splitmat import splitting_matrices, split_operators, dense_matrices
from s3d.schemes import split_schemes
from s3d.surgery import split_neurons

LOSS = nn.functional.mse_loss


def block(act2=nn.SiLU):
    "conv -> BN -> SiLU -> depthwise conv -> BN -> act2 -> pointwise: the MobileNet/EfficientNet pattern, float64."
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.SiLU(),
                      nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False), nn.BatchNorm2d(5), act2(),
                      nn.Conv2d(5, 4, 1), nn.Flatten(), nn.Linear(4 * 16, 3))
    m = _randomize_bn(m.double()).eval()
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    return m, x, torch.randn(8, 3, dtype=torch.float64)


def schemes(S, m, c):
    lam, vec = torch.linalg.eigh(S)
    return split_schemes(lam[:, 0], vec[:, :, 0], lam[:, -1], vec[:, :, -1], m=m, c=c)


def ratio(model, x, y, m, c, eps):
    "Measured loss change over (eps^2/2) * predicted gain for splitting every neuron of the first group."
    g = split_groups(model, x)[0]
    sch = schemes(splitting_matrices(model, g, LOSS, [(x, y)]), m, c)
    net = copy.deepcopy(model)
    gn = split_groups(net, x)[0]
    l0 = float(LOSS(net(x), y).detach())
    split_neurons(net, gn, torch.arange(g.n_neurons), sch, eps=eps)
    return (float(LOSS(net(x), y).detach()) - l0) / (eps ** 2 / 2 * float(sch.gain.sum()))


@pytest.mark.parametrize('m', [2, 3, 4])
@pytest.mark.parametrize('c', [1.0, 2.0, 3.0])
def test_eps2_law_through_a_second_activation(m, c):
    model, x, y = block()
    r1, r2 = ratio(model, x, y, m, c, 5e-3), ratio(model, x, y, m, c, 1e-3)
    assert abs(r1 - 1) < 0.05, r1
    assert abs(r2 - 1) < 0.02 and abs(r2 - 1) <= abs(r1 - 1) + 1e-6, (r1, r2)


def test_split_preserves_function_at_eps_zero():
    model, x, y = block()
    g = split_groups(model, x)[0]
    sch = schemes(splitting_matrices(model, g, LOSS, [(x, y)]), 4, 3.0)
    out = model(x)
    split_neurons(model, g, torch.arange(g.n_neurons), sch, eps=0.0)
    torch.testing.assert_close(model(x), out, rtol=1e-12, atol=1e-12)


def test_quadratic_form_matches_autograd_hessian():
    "delta^T S delta against the second derivative of the loss along a split, by autograd through the real model."
    model, x, y = block()
    g = split_groups(model, x)[0]
    S = splitting_matrices(model, g, LOSS, [(x, y)])
    # a two-copy split with weights 1/2 and displacements +-t*delta: the loss is even in t and its second derivative
    # at 0 is sum_i w_i delta_i^T S delta_i = delta^T S delta (summed over neurons)
    D = torch.randn(g.n_neurons, g.dim, dtype=torch.float64)
    net = copy.deepcopy(model)
    gn = split_groups(net, x)[0]
    from types import SimpleNamespace
    W = torch.full((g.n_neurons, 2), 0.5, dtype=torch.float64)
    sch = SimpleNamespace(weights=W, deltas=torch.stack([D, -D], 1), k=torch.full((g.n_neurons,), 2))
    split_neurons(net, gn, torch.arange(g.n_neurons), sch, eps=0.0)
    p = gn.producer
    w0, b0 = p.weight.detach().clone(), p.bias.detach().clone()
    n = g.n_neurons
    sign = torch.cat([torch.ones(n), -torch.ones(n)]).double()   # copies: the originals, then the new ones
    dW = (sign[:, None] * torch.cat([D, D]))
    def loss_at(t):
        w = w0 + t * dW[:, :-1].reshape(w0.shape)
        b = b0 + t * dW[:, -1]
        return LOSS(torch.func.functional_call(net, {gn.name + '.weight': w, gn.name + '.bias': b}, (x,)), y)
    t = torch.zeros((), dtype=torch.float64)
    h = torch.func.hessian(loss_at)(t)
    torch.testing.assert_close(h, torch.einsum('jd,jde,je->', D, S, D), rtol=1e-8, atol=1e-12)


def test_matrix_free_products_match_dense():
    model, x, y = block()
    g = split_groups(model, x)[0]
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    S = splitting_matrices(model, g, LOSS, data)
    for mode in ['auto', 'flat', 'conv']:
        op = split_operators(model, [g], LOSS, data, mode=mode)[g.name]
        V = torch.randn(g.n_neurons, g.dim, 3, dtype=torch.float64)
        torch.testing.assert_close(op(V), S @ V)
        torch.testing.assert_close(op.dense(), S)
        torch.testing.assert_close(op.dense_sum() / op.count, S)
        sel = torch.tensor([3, 1])
        torch.testing.assert_close(op.products(V[sel], sel) / op.count, (S @ V)[sel])


def test_relu_second_activation_uses_the_surrogate():
    "A ReLU on the private path contributes its surrogate curvature, as the neuron's own ReLU does."
    from s3d.graph import SplitGroup
    model, x, y = block(nn.ReLU)
    g = split_groups(model, x)[0]
    S = splitting_matrices(model, g, LOSS, [(x, y)])
    by_hand = SplitGroup(g.name, g.producer, g.bn, g.act, g.followers, g.consumers)   # no traced path: own act only
    S_own = splitting_matrices(model, by_hand, LOSS, [(x, y)])
    assert not torch.allclose(S, S_own)
    S_sharp = splitting_matrices(model, g, LOSS, [(x, y)], beta=1e4)   # the surrogate's weight moves to the kinks
    assert not torch.allclose(S, S_sharp) and torch.allclose(S_own, splitting_matrices(model, by_hand, LOSS, [(x, y)], beta=1e4))


def test_unchanged_where_no_second_nonlinearity():
    "Private paths without a second curved nonlinearity give the same S and S.v as before the change."
    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from _make_splitmat_reference import reference, MODELS
    ref = torch.load(pathlib.Path(__file__).parent / 'data' / 'splitmat_reference.pt')
    for name in MODELS:
        now = reference(name)
        for k in ref[name]['S']:  # to rounding: entries within 1e-12 of each tensor's largest magnitude
            for what in ('S', 'SV'):
                r = ref[name][what][k]
                torch.testing.assert_close(now[what][k], r, rtol=0, atol=1e-12 * float(r.abs().max()))


@pytest.mark.parametrize('method', ['cached', 'stream'])
def test_fast_eigenpairs_see_the_path(method):
    "The matrix-free solvers (cached and streamed, with neurons retiring) reach the extremes of the whole-path S."
    from s3d.eigen import extreme_eigenpairs, eigh_extremes
    model, x, y = block()
    g = split_groups(model, x)[0]
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    ref = eigh_extremes(splitting_matrices(model, g, LOSS, data))
    got = extreme_eigenpairs(model, [g], LOSS, data, method, tol=1e-8, dense_dim=0, max_passes=60)[g.name]
    torch.testing.assert_close(got.lam_min, ref.lam_min, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(got.lam_max, ref.lam_max, rtol=1e-5, atol=1e-8)


def test_forward_products_fall_back_to_double_backward():
    "An op without a forward-mode formula (a custom autograd.Function) still gets its forward and transposed products."
    from s3d.splitmat import _linearised
    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x): ctx.save_for_backward(x); return x ** 3
        @staticmethod
        def backward(ctx, g): x, = ctx.saved_tensors; return 3 * x ** 2 * g
    z, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    jvp, vjp = _linearised(Cube.apply, z)
    torch.testing.assert_close(jvp(t), 3 * z ** 2 * t)
    torch.testing.assert_close(vjp(t), 3 * z ** 2 * t)


def _path_variants():
    "Private paths of every kind of step: ReLU and SiLU blocks, a bias conv, a max pool (a JVP step), a Linear group,\n    in-place ReLUs."
    torch.manual_seed(1)
    relu = block(nn.ReLU)
    conv_bias = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 5, 3, padding=1, groups=5),
                              nn.BatchNorm2d(5), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(5, 4, 1), nn.Flatten(),
                              nn.Linear(16, 3))
    conv_bias = _randomize_bn(conv_bias.double()).eval()
    lin = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.BatchNorm1d(7), nn.SiLU(), nn.Linear(7, 3))
    lin = _randomize_bn(lin.double()).eval()
    x4, x2 = torch.randn(8, 3, 4, 4, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    y = torch.randn(8, 3, dtype=torch.float64)
    inplace = block(lambda: nn.ReLU(inplace=True))
    inplace[0][2] = nn.ReLU(inplace=True)
    return [block(), relu, (conv_bias, x4, y), (lin, x2, y), inplace]


@pytest.mark.parametrize('i', range(5))
def test_linearised_path_equals_the_jvp_reference(i):
    "S, S.v, block products and the dense path term from the statistics gathered in the scoring pass equal the"
    " reference (forward-mode JVPs through the path on every batch) to 1e-10, float64, and do not depend on the"
    " model's mode when the products run."
    import s3d.splitmat as sm
    model, x, y = _path_variants()[i]
    groups = split_groups(model, x)
    assert any(s.role == 'act' for g in groups for s in (g.path or []))
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    out = {}
    try:
        for method in ('jvp', 'linear'):
            sm.PATH_METHOD = method
            torch.manual_seed(2)
            S = dense_matrices(model, groups, LOSS, data)
            ops = split_operators(model, groups, LOSS, data)
            for mode in (['eval', 'train'] if method == 'linear' else ['eval']):
                model.train(mode == 'train')  # products run after the pass: the path still acts as in eval mode
                res, gen = [], torch.Generator().manual_seed(2)
                for g in groups:
                    op, V = ops[g.name], torch.randn(g.n_neurons, g.dim, 3, dtype=torch.float64, generator=gen)
                    sel = torch.tensor([2, 0])
                    res += [S[g.name], op(V), op.products(V[sel], sel), op.dense()]
                out[method + mode] = res
                model.eval()
    finally:
        sm.PATH_METHOD = 'linear'
        model.eval()
    for a, b, c in zip(out['jvpeval'], out['lineareval'], out['lineartrain']):
        assert float((a - b).norm() / a.norm().clamp_min(1e-300)) < 1e-10
        assert float((c - b).norm() / b.norm().clamp_min(1e-300)) < 1e-10


@pytest.mark.parametrize('conv,shape', [
    (nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False), (4, 7, 6)),   # odd and even sizes: output padding
    (nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), (4, 8, 8)),
    (nn.Conv2d(4, 2, (3, 1), stride=(1, 2), padding=(2, 0), dilation=2), (4, 5, 9)),
    (nn.Conv1d(3, 3, 5, stride=3, padding=2, groups=3), (3, 11)),
    (nn.Conv3d(2, 2, 3, stride=2, padding=1, groups=2), (2, 5, 4, 5)),
    (nn.Conv2d(4, 4, 3, padding='same', groups=4), (4, 6, 6)),                     # string padding: autograd
    (nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode='circular', groups=4), (4, 6, 6)),
])
def test_linear_step_transpose_is_the_vjp(conv, shape):
    "The transposed convolution `_backward` uses for a path's conv equals autograd's VJP of its linear part."
    from s3d.splitmat import _lin_transpose
    conv = conv.double()
    t = torch.randn(3, *shape, dtype=torch.float64)
    lin = lambda v: conv(v) - conv(torch.zeros_like(v))
    out, vjp = torch.func.vjp(lin, t)
    w = torch.randn_like(out)
    torch.testing.assert_close(_lin_transpose(conv, shape, w), vjp(w)[0], rtol=1e-12, atol=1e-12)


def test_strided_path_products_match_dense():
    "A stride-2 depthwise conv on the private path (MobileNet's downsampling blocks): products, block products of"
    " some neurons and the fast solvers agree with the dense whole-path S."
    from s3d.eigen import extreme_eigenpairs, eigh_extremes
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(4 * 9, 3))
    m = _randomize_bn(m.double()).eval()
    x, y = torch.randn(8, 3, 5, 5, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    g = split_groups(m, x)[0]
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    S = splitting_matrices(m, g, LOSS, data)
    op = split_operators(m, [g], LOSS, data)[g.name]
    V = torch.randn(g.n_neurons, g.dim, 2, dtype=torch.float64)
    torch.testing.assert_close(op(V), S @ V, rtol=1e-10, atol=1e-12)
    sel = torch.tensor([4, 0, 5])
    torch.testing.assert_close(op.products(V[sel], sel) / op.count, (S @ V)[sel], rtol=1e-10, atol=1e-12)
    ref = eigh_extremes(S)
    for method in ('cached', 'stream'):
        got = extreme_eigenpairs(m, [g], LOSS, data, method, tol=1e-8, max_passes=60)[g.name]  # by products
        torch.testing.assert_close(got.lam_min, ref.lam_min, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(got.lam_max, ref.lam_max, rtol=1e-5, atol=1e-8)


def test_private_path_groups_products_when_cached_dense_when_streamed():
    "The fast solver's default: a group with a private-path term is solved by products on a cache and takes its dense"
    " S in the first pass when streamed ('fast' falling back to streaming included); dense_path_dim overrides both."
    from s3d.eigen import extreme_eigenpairs
    model, x, y = block()
    g = split_groups(model, x)[0]
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    solver = lambda method, **kw: (lambda st: (extreme_eigenpairs(model, [g], LOSS, data, method, stats=st, **kw),
                                               st['groups'][g.name]['solver'])[1])({})
    assert solver('cached') == 'krylov'
    assert solver('stream') == 'dense'
    st = {}
    extreme_eigenpairs(model, [g], LOSS, data, 'cached', stats=st)
    tight = st['reserved_bytes'] + st['cache_bytes'] // 4       # room for the workspace, not for the cache
    assert solver('fast', max_bytes=tight) == 'dense'             # 'fast' streams, so the path group goes dense
    assert solver('cached', dense_path_dim=64) == 'dense'
    assert solver('stream', dense_path_dim=0, max_passes=60) == 'krylov'


def test_exact_matrices_keep_no_graph():
    "The scoring pass runs with gradients on; the private-path term built inside it must not record a graph through"
    " the path's weights (it did: every batch's graph stayed alive in the running sum, memory grew with the images)."
    import s3d.splitmat as sm
    model, x, y = block()
    g = split_groups(model, x)[0]
    S = splitting_matrices(model, g, LOSS, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert not S.requires_grad and S.grad_fn is None
    seen = []
    sm.collect_batches(model, [g], LOSS, [(x, y)], lambda i, B, st: seen.append(
        (sm._path_dense(st[g.name].path, sm.producer_patches(g.producer, st[g.name].x)),
         sm._path_dense.__wrapped__(st[g.name].path, sm.producer_patches(g.producer, st[g.name].x)))))
    fixed, unguarded = seen[0]
    assert fixed.grad_fn is None and unguarded.grad_fn is not None   # the guard is what keeps it graph-free


def _variant_data(i):
    "A model of `_path_variants`, its groups, and its data in two batches."
    model, x, y = _path_variants()[i]
    return model, split_groups(model, x), [(x[:5], y[:5]), (x[5:], y[5:])]


def _assert_same(A, B, tol=1e-12):
    "Two {group: S} agree to `tol` relative (an all-zero S must be zero in both)."
    for k in A:
        assert float((A[k] - B[k]).norm() / B[k].norm().clamp_min(1e-300)) < tol


@pytest.mark.parametrize('i', range(5))
def test_direct_activation_gradients_equal_autograd(i, monkeypatch):
    "Where only consumers read a further activation's output, the scoring pass takes the gradient at that output"
    " from the consumers' input gradients (no replay through autograd); S is the same as with the replay."
    import s3d.splitmat as sm
    model, groups, data = _variant_data(i)
    direct = dense_matrices(model, groups, LOSS, data)
    used = []
    monkeypatch.setattr(sm, '_direct_grads', lambda *a: used.append(1))  # always the autograd replay
    replay = dense_matrices(model, groups, LOSS, data)
    assert used
    _assert_same(direct, replay)


def test_direct_gradients_only_when_consumers_read_the_activation():
    "A step between the activation and its consumer (a max pool) needs autograd: no direct gradients."
    from s3d.splitmat import _curved, _direct_grads
    model, x, y = _path_variants()[2]
    g = [g for g in split_groups(model, x) if any(s.role == 'act' for s in g.path or [])][0]
    assert any(s.role == 'op' and s.src in _curved(g) for s in g.path)
    assert _direct_grads(g.path, _curved(g), {}) is None
    model, x, y = _path_variants()[1]
    g = [g for g in split_groups(model, x) if any(s.role == 'act' for s in g.path or [])][0]
    grads = {c.name: torch.ones(2) for c in g.consumers}
    assert all(t is not None for t in _direct_grads(g.path, _curved(g), grads))


def test_dense_path_term_by_pairs_equals_the_general_form(monkeypatch):
    "The dense term of a depthwise path, from tangents whose channels are (neuron, direction) pairs, equals the"
    " general form (d tangents per sample carried through the path), with a strided depthwise conv with a bias, a"
    " BatchNorm and an average pool between the activations."
    import s3d.splitmat as sm
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                      nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5), nn.BatchNorm2d(5),
                      nn.AvgPool2d(2, ceil_mode=True), nn.SiLU(), nn.Conv2d(5, 4, 1), nn.Flatten(), nn.Linear(4 * 4, 3))
    m = _randomize_bn(m.double()).eval()
    x, y = torch.randn(6, 3, 7, 7, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    groups = split_groups(m, x)
    calls = []
    pairs = sm._path_dense_pairs
    monkeypatch.setattr(sm, '_path_dense_pairs', lambda *a: calls.append(1) or pairs(*a))
    S = dense_matrices(m, groups, LOSS, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert calls
    monkeypatch.setattr(sm, '_pairwise', lambda ops, n: False)
    R = dense_matrices(m, groups, LOSS, [(x[:4], y[:4]), (x[4:], y[4:])])
    _assert_same(S, R)


@pytest.mark.parametrize('i', [0, 1, 4])
def test_path_values_are_read_off_the_forward_pass(i, monkeypatch):
    "The scoring pass takes the path's values (the depthwise conv's and BatchNorm's outputs) from forward hooks, with"
    " no replay of the path, in-place activations included; S equals the one from a replay."
    import s3d.splitmat as sm
    model, groups, data = _variant_data(i)
    replays = []
    values = sm._path_values
    monkeypatch.setattr(sm, '_path_values', lambda *a: replays.append(1) or values(*a))
    seen = dense_matrices(model, groups, LOSS, data)
    assert not replays
    monkeypatch.setattr(sm._GroupHooks, 'path_values', lambda self: None)
    replay = dense_matrices(model, groups, LOSS, data)
    assert replays
    _assert_same(seen, replay)


@pytest.mark.parametrize('i', range(5))
def test_products_in_chunks_of_samples_equal_one_pass(i, monkeypatch):
    "On CPU a path's products run in chunks of samples (`_PATH_CHUNK`): one sample at a time gives the same S.V, for"
    " all neurons, for some of them, and after the solver restricted the operator to some (`_restrict`)."
    import s3d.splitmat as sm
    from s3d.eigen import _restrict
    model, groups, data = _variant_data(i)
    ops = split_operators(model, groups, LOSS, data)
    torch.manual_seed(0)
    for name, op in ops.items():
        V = torch.randn(op.n, op.d, 2, dtype=torch.float64)
        sel = torch.tensor([op.n - 1, 0])
        sub = _restrict(op, sel)
        got = {}
        for chunk in (2**40, 1):  # one pass over each batch, then one sample per chunk
            monkeypatch.setattr(sm, '_PATH_CHUNK', chunk)
            got[chunk] = (op.products(V), op.products(V[sel], sel), sub.products(V[sel]))
        for a, b in zip(*got.values()):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
