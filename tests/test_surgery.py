import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make, NETS
from s3d.graph import split_groups, SplitGroup, Consumer, is_depthwise
from s3d.surgery import (remap_channels, split_neurons, remap_optimizer, register_follower_edit,
                         register_consumer_edit, FOLLOWER_EDITS, CONSUMER_EDITS, set_param)


def random_schemes(n, d, m=4, seed=0):
    "Feasible signed schemes: weights sum to 1 over k copies, sum_r w_r delta_r = 0, zero padded to m."
    g = torch.Generator().manual_seed(seed)
    W, D = torch.zeros(n, m, dtype=torch.float64), torch.zeros(n, m, d, dtype=torch.float64)
    K = torch.randint(1, m + 1, (n,), generator=g)
    K[0] = m                                                  # at least one full split
    for i, k in enumerate(K.tolist()):
        while True:
            w = torch.randn(k, generator=g, dtype=torch.float64)
            w[0] = 1 - w[1:].sum()
            if w[0].abs() > 0.3: break
        dl = torch.randn(k, d, generator=g, dtype=torch.float64)
        dl[0] = -(w[1:, None] * dl[1:]).sum(0) / w[0]
        W[i, :k], D[i, :k] = w, dl
    return SimpleNamespace(weights=W, deltas=D, k=K)


def pick(n, seed):
    g = torch.Generator().manual_seed(seed)
    s = int(torch.randint(1, n + 1, (1,), generator=g))
    return torch.randperm(n, generator=g)[:s]


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [id(p) for p in model.parameters()],
            [(type(m), {k: v for k, v in vars(m).items() if isinstance(v, (int, tuple))}) for m in model.modules()])


def assert_unchanged(model, snap):
    sd, ids, attrs = snap
    now = snapshot(model)
    assert now[1] == ids and now[2] == attrs
    assert sd.keys() == now[0].keys() and all(torch.equal(sd[k], now[0][k]) for k in sd)


# ---------------------------------------------------------------- (a) function preservation at eps = 0

@pytest.mark.parametrize('act', [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize('name', NETS)
def test_split_preserves_function(name, act):
    model, x = make(name, act)
    y = model(x)
    groups = split_groups(model, x)
    for gi, group in enumerate(groups):                        # split every group in turn, on the same model
        n, d = group.n_neurons, group.dim
        neurons = pick(n, seed=gi)
        sch = random_schemes(len(neurons), d, seed=gi)
        parent = split_neurons(model, group, neurons, sch, eps=0.0)
        extra = torch.cat([neurons[i].repeat(int(k) - 1) for i, k in enumerate(sch.k)])
        assert torch.equal(parent, torch.cat([torch.arange(n), extra]))
        assert group.n_neurons == len(parent) == n + int((sch.k - 1).sum())
        torch.testing.assert_close(model(x), y, atol=1e-10, rtol=0)
    for g in split_groups(model, x):                           # the grown model is still a valid, consistent model
        assert g.producer.weight.shape[0] == g.n_neurons


@pytest.mark.parametrize('name', ['mlp', 'mobilenet'])
def test_split_copies_everything(name):
    model, x = make(name)
    group = split_groups(model, x)[0]
    old = copy.deepcopy(model)
    og = split_groups(old, x)[0]
    sch = random_schemes(2, group.dim, seed=3)
    sch.k[:] = 3
    sch.weights[:, 2] = 0.5; sch.weights[:, 1] = 0.25; sch.weights[:, 0] = 0.25
    parent = split_neurons(model, group, [2, 0], sch, eps=0.1)
    assert parent.tolist()[-4:] == [2, 2, 0, 0]
    p, op = group.producer, og.producer
    theta = torch.cat([op.weight.detach().flatten(1), op.bias.detach()[:, None]], 1)
    new = torch.cat([p.weight.detach().flatten(1), p.bias.detach()[:, None]], 1)
    exp = theta[parent].clone()
    exp[2] += 0.1 * sch.deltas[0, 0]; exp[0] += 0.1 * sch.deltas[1, 0]
    exp[-4] += 0.1 * sch.deltas[0, 1]; exp[-3] += 0.1 * sch.deltas[0, 2]
    exp[-2] += 0.1 * sch.deltas[1, 1]; exp[-1] += 0.1 * sch.deltas[1, 2]
    torch.testing.assert_close(new, exp, atol=1e-12, rtol=0)
    for (nm, m) in [(group.bn_name, group.bn)] + group.followers:
        if m is None: continue
        om = dict(old.named_modules())[nm]
        for k, v in list(m.named_parameters()) + list(m.named_buffers()):
            if k == 'num_batches_tracked': continue
            torch.testing.assert_close(v.detach(), getattr(om, k).detach()[parent], atol=0, rtol=0)
    c, oc = group.consumers[0].module, og.consumers[0].module
    scale = torch.ones(len(parent), dtype=torch.float64)
    scale[2], scale[0], scale[-4:] = 0.25, 0.25, torch.tensor([0.25, 0.5, 0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(c.weight.detach(), oc.weight.detach()[:, parent] * scale.reshape(1, -1, *[1] * (c.weight.dim() - 2)))


def test_identity_dtype_attributes_kept():
    model, x = make('mobilenet')
    model = model.float()
    groups = split_groups(model, x.float())
    mods = list(model.modules())
    sch = random_schemes(2, groups[0].dim)
    split_neurons(model, groups[0], [1, 3], sch, eps=1e-2)
    assert list(model.modules()) == mods
    k = 4 + int(sch.k.sum()) - 2
    assert (model[0].out_channels, model[1].num_features, model[3].in_channels, model[3].out_channels, model[3].groups,
            model[4].num_features, model[6].in_channels) == (k, k, k, k, k, k, k)
    assert all(p.dtype == torch.float32 for p in model.parameters()) and all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert model(x.float()).shape == (6, 2)


def test_schemes_over_all_neurons_accepted():
    model, x = make('mlp')
    m2 = copy.deepcopy(model)
    g, g2 = split_groups(model, x)[0], split_groups(m2, x)[0]
    full = random_schemes(6, g.dim, seed=5)
    idx = torch.tensor([4, 1])
    p1 = split_neurons(model, g, idx, full, eps=0.01)
    sub = SimpleNamespace(weights=full.weights[idx], deltas=full.deltas[idx], k=full.k[idx])
    p2 = split_neurons(m2, g2, idx, sub, eps=0.01)
    assert torch.equal(p1, p2)
    torch.testing.assert_close(model(x), m2(x), atol=0, rtol=0)


# ---------------------------------------------------------------- (b) second-order loss change

def loss_fn(out, y): return ((out - y) ** 2).mean()


def channel_forward(group, j, theta, x_in):
    "Neuron j's per-channel path, re-evaluated from its parameters theta and the producer input (independent of surgery)."
    p = group.producer
    k = p.weight[0].numel()
    w = theta[:k].reshape(p.weight[0].shape)[None]
    b = theta[k:k + 1] if p.bias is not None else None
    z = F.linear(x_in, w, b) if isinstance(p, nn.Linear) else F.conv2d(x_in, w, b, p.stride, p.padding, p.dilation)
    for m in [group.bn, group.act] + [m for _, m in group.followers]:
        if m is None: continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            z = (z - m.running_mean[j]) / torch.sqrt(m.running_var[j] + m.eps) * m.weight[j] + m.bias[j]
        elif isinstance(m, nn.Conv2d):
            assert is_depthwise(m)
            z = F.conv2d(z, m.weight[j:j + 1], None if m.bias is None else m.bias[j:j + 1], m.stride, m.padding, m.dilation)
        else:
            z = m(z)
    return z.reshape(z.shape[0], -1) if isinstance(group.consumers[0].module, nn.Linear) else z


def autograd_gains(model, group, x, y, neurons, sch):
    "gain_i = sum_r w_r d^2/dt^2 sum(g_j * h_j(theta_j + t delta_r)) at t = 0, with g_j = dL/dh_j detached."
    store = {}
    cons = group.consumers[0]
    h1 = group.producer.register_forward_pre_hook(lambda m, a: store.__setitem__('x', a[0].detach()))
    h2 = cons.module.register_forward_pre_hook(lambda m, a: store.__setitem__('h', a[0]) or a[0].retain_grad())
    try:
        loss_fn(model(x), y).backward()
    finally:
        h1.remove(); h2.remove()
    G = store['h'].grad.detach()
    p = group.producer
    gains = []
    for i, j in enumerate(neurons.tolist()):
        theta = torch.cat([p.weight.detach()[j].flatten(), p.bias.detach()[j:j + 1] if p.bias is not None else p.weight.new_zeros(0)])
        gj = G[:, j * cons.repeat:(j + 1) * cons.repeat] if isinstance(cons.module, nn.Linear) else G[:, j:j + 1]
        tot = 0.0
        for r in range(int(sch.k[i])):
            t = torch.zeros((), dtype=torch.float64, requires_grad=True)
            q = (gj * channel_forward(group, j, theta + t * sch.deltas[i, r], store['x'])).sum()
            d1, = torch.autograd.grad(q, t, create_graph=True)
            d2, = torch.autograd.grad(d1, t)
            tot += float(sch.weights[i, r]) * float(d2)
        gains.append(tot)
    model.zero_grad()
    return torch.tensor(gains, dtype=torch.float64)


@pytest.mark.parametrize('name', ['mlp', 'nested', 'conv', 'flatten_avg', 'flatten', 'mobilenet', 'traced'])
def test_loss_change_matches_second_order(name):
    "Loss change = (eps^2/2) * sum of gains + O(eps^3); a max-pool kink needs a smaller eps before the expansion holds."
    epss = [1e-4, 1e-5] if name == 'flatten' else [1e-2, 1e-3, 1e-4]
    model, x = make(name, nn.Tanh)
    y = torch.randn_like(model(x))
    for gi, group in enumerate(split_groups(model, x)):
        neurons = pick(group.n_neurons, seed=10 + gi)
        sch = random_schemes(len(neurons), group.dim, seed=10 + gi)
        gain = float(autograd_gains(model, group, x, y, neurons, sch).sum())
        assert abs(gain) > 1e-7
        l0 = float(loss_fn(model(x), y).detach())
        errs = []
        for eps in epss:
            m = copy.deepcopy(model)
            g = split_groups(m, x)[gi]
            split_neurons(m, g, neurons, sch, eps=eps)
            ratio = (float(loss_fn(m(x), y).detach()) - l0) / (eps ** 2 / 2 * gain)
            errs.append(abs(ratio - 1))
        assert errs[-1] < 1e-2, (name, group.name, errs)
        assert errs[-1] < errs[0], (name, group.name, errs)


# ---------------------------------------------------------------- errors leave the model untouched

@pytest.mark.parametrize('bad, err, msg', [
    ([0, 6], ValueError, 'out of range'),
    ([-1], ValueError, 'out of range'),
    ([], ValueError, 'non-empty'),
    (torch.zeros(2, 2, dtype=torch.long), ValueError, '1-d'),
    (torch.tensor([0.0, 1.0]), TypeError, 'integers'),
    (torch.tensor([True, False]), TypeError, 'integers'),
    ('01', TypeError, 'LongTensor'),
])
def test_remap_bad_index(bad, err, msg):
    model, x = make('mlp')
    g = split_groups(model, x)[0]
    snap = snapshot(model)
    with pytest.raises(err, match=msg) as e:
        remap_channels(model, g, bad)
    assert "'0'" in str(e.value)
    assert_unchanged(model, snap)


def test_remap_bad_shapes_and_bad_group():
    model, x = make('mobilenet')
    g = split_groups(model, x)[0]
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r'producer_delta must have shape \(3, 19\)'):
        remap_channels(model, g, [0, 1, 1], producer_delta=torch.zeros(3, 18))
    with pytest.raises(ValueError, match=r'consumer_scale must have shape \(3,\)'):
        remap_channels(model, g, [0, 1, 1], consumer_scale=torch.ones(2))
    with pytest.raises(ValueError, match='non-finite'):
        remap_channels(model, g, [0, 1, 1], consumer_scale=torch.tensor([1.0, float('nan'), 1.0]))
    stale = SplitGroup('0', model[0], model[1], model[2], [], [Consumer('12', model[12])])
    with pytest.raises(ValueError, match="consumer '12'"):
        remap_channels(model, stale, [0, 1])
    assert_unchanged(model, snap)


def test_split_bad_schemes():
    model, x = make('conv')
    g = split_groups(model, x)[0]
    snap = snapshot(model)
    good = random_schemes(2, g.dim)
    with pytest.raises(ValueError, match='repeated'):
        split_neurons(model, g, [1, 1], good, 0.1)
    with pytest.raises(ValueError, match='out of range'):
        split_neurons(model, g, [1, 4], good, 0.1)
    bad = copy.deepcopy(good); bad.weights[1, 0] += 0.1
    with pytest.raises(ValueError, match=r'neuron\(s\) \[3\] do not sum to 1'):
        split_neurons(model, g, [0, 3], bad, 0.1)
    bad = SimpleNamespace(weights=good.weights, deltas=good.deltas[:, :, :-1], k=good.k)
    with pytest.raises(ValueError, match='d = 18'):
        split_neurons(model, g, [0, 3], bad, 0.1)
    bad = SimpleNamespace(weights=good.weights, deltas=good.deltas, k=good.k + 4)
    with pytest.raises(ValueError, match='k must lie'):
        split_neurons(model, g, [0, 3], bad, 0.1)
    with pytest.raises(ValueError, match='3 rows'):
        split_neurons(model, g, [0, 3], random_schemes(3, g.dim), 0.1)
    with pytest.raises(TypeError, match='needs .weights'):
        split_neurons(model, g, [0, 3], SimpleNamespace(weights=good.weights), 0.1)
    assert_unchanged(model, snap)


class Scaled(nn.Linear):
    "A Linear subclass whose consumer edit fails midway (to test that a failed edit is undone)."


def test_failed_edit_restores_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), Scaled(4, 2)).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    g, = split_groups(model, x)
    snap = snapshot(model)
    def broken(m, index, scale, repeat):
        set_param(m, 'weight', m.weight.detach()[:, index], 1, index)
        raise RuntimeError('boom')
    register_consumer_edit(Scaled, broken)
    try:
        with pytest.raises(RuntimeError, match='boom'):
            remap_channels(model, g, [0, 1, 1, 2, 3])
    finally:
        del CONSUMER_EDITS[Scaled]
    assert_unchanged(model, snap)
    remap_channels(model, g, [0, 1, 1, 2, 3])                  # the default Linear edit applies to the subclass
    assert model[3].in_features == 5


def test_follower_with_state_needs_registered_edit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 2)).double()
    nn.init.uniform_(model[1].weight, -1, 1)
    x = torch.randn(5, 3, dtype=torch.float64)
    g = SplitGroup('0', model[0], act=model[1], act_name='1', consumers=[Consumer('2', model[2])])
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"follower '1' \(PReLU\) has state but no follower edit"):
        remap_channels(model, g, [0, 0, 1])
    assert_unchanged(model, snap)
    @register_follower_edit(nn.PReLU)
    def prelu_edit(m, index):
        set_param(m, 'weight', m.weight.detach()[index], 0, index); m.num_parameters = len(index)
    try:
        y = model(x)
        split_neurons(model, g, [2], SimpleNamespace(weights=torch.tensor([[0.7, 0.3]]), deltas=torch.zeros(1, 2, 4), k=torch.tensor([2])), 0.0)
        torch.testing.assert_close(model(x), y, atol=1e-12, rtol=0)
    finally:
        del FOLLOWER_EDITS[nn.PReLU]


# ---------------------------------------------------------------- optimizer state

def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()


@pytest.mark.parametrize('make_opt', [lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
                                      lambda ps: torch.optim.Adam(ps, lr=1e-2)])
def test_optimizer_state_follows_permutation(make_opt):
    "Permuting neurons preserves the function and permutes gradients, so remapped training must match exactly."
    model, x = make('mobilenet')
    model.train()
    y = torch.randn(6, 2, dtype=torch.float64)
    other = copy.deepcopy(model)
    oa, ob = make_opt(model.parameters()), make_opt(other.parameters())
    _train(model, oa, x, y, 2); _train(other, ob, x, y, 2)
    for i, g in enumerate(split_groups(other, x)):
        remap_channels(other, g, torch.randperm(g.n_neurons, generator=torch.Generator().manual_seed(i)))
    assert remap_optimizer(ob, other) is ob
    assert [id(p) for grp in ob.param_groups for p in grp['params']] == [id(p) for p in other.parameters()]
    _train(model, oa, x, y, 3); _train(other, ob, x, y, 3)
    model.eval(); other.eval()
    torch.testing.assert_close(other(x), model(x), atol=1e-10, rtol=0)


def test_stale_optimizer_until_remapped():
    "Without remap_optimizer the optimizer would update parameters that left the model."
    model, x = make('mlp')
    y = torch.randn(16, 2, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, x, y, 1)
    g = split_groups(model, x)[0]
    remap_channels(model, g, torch.arange(6).flip(0))
    w = g.producer.weight.detach().clone()
    _train(model, opt, x, y, 1)
    assert torch.equal(g.producer.weight, w)                    # stale: the model's new weight did not move
    remap_optimizer(opt, model)
    _train(model, opt, x, y, 1)
    assert not torch.equal(g.producer.weight, w)


@pytest.mark.parametrize('kind', ['sgd', 'adam'])
def test_optimizer_state_copied_to_children(kind):
    model, x = make('flatten')
    y = torch.randn(6, 1, dtype=torch.float64)
    extra = nn.Parameter(torch.ones(3, dtype=torch.float64))  # a parameter outside the model stays as it is
    ps = [{'params': list(model.parameters())}, {'params': [extra], 'lr': 0.0}]
    opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9) if kind == 'sgd' else torch.optim.Adam(ps, lr=0.01)
    _train(model, opt, x, y, 2)
    keys = ['momentum_buffer'] if kind == 'sgd' else ['exp_avg', 'exp_avg_sq']
    g0, g1 = split_groups(model, x)
    W, B, C = g0.producer.weight, g0.bn.weight, g0.consumers[0].module.weight
    old = {n: {k: opt.state[p][k].clone() for k in keys} for n, p in [('W', W), ('B', B), ('C', C)]}
    step = opt.state[W]['step'].clone() if kind == 'adam' else None
    parent = split_neurons(model, g0, [1, 3], random_schemes(2, g0.dim), eps=0.05)
    p2 = split_neurons(model, g1, [0], random_schemes(1, g1.dim, seed=4), eps=0.05)  # C is edited twice (columns, then rows)
    remap_optimizer(opt, model)
    assert opt.param_groups[1]['params'][0] is extra and opt.param_groups[1]['lr'] == 0.0
    assert {id(p) for p in opt.param_groups[0]['params']} == {id(p) for p in model.parameters()}
    cols = (parent[:, None] * 4 + torch.arange(4)).flatten()
    for k in keys:
        torch.testing.assert_close(opt.state[g0.producer.weight][k], old['W'][k][parent], atol=0, rtol=0)
        torch.testing.assert_close(opt.state[g0.bn.weight][k], old['B'][k][parent], atol=0, rtol=0)
        torch.testing.assert_close(opt.state[g1.producer.weight][k], old['C'][k][p2][:, cols], atol=0, rtol=0)
    if kind == 'adam':
        assert torch.equal(opt.state[g0.producer.weight]['step'], step)
    _train(model, opt, x, y, 2)                                   # and training goes on
    assert torch.isfinite(loss_fn(model(x), y))


@pytest.mark.parametrize('act2, same', [(nn.ReLU, True), (nn.Tanh, False)])
def test_curvature_at_act_equals_whole_path_only_for_piecewise_linear_followers(act2, same):
    "Documents a fact for the curvature code: hooks at `act` see the whole curvature iff the followers are piecewise linear."
    import conftest
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.BatchNorm2d(4), act2(), nn.Conv2d(4, 3, 1), nn.Flatten(), nn.Linear(48, 1))
    model = conftest._randomize_bn(model.double()).eval()
    x, y = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    g = split_groups(model, x)[0]
    sch = random_schemes(4, g.dim, seed=1)
    sch.k[:] = 2
    full = autograd_gains(model, g, x, y, torch.arange(4), sch)
    at_act = SplitGroup(g.name, g.producer, g.bn, g.act, [], [Consumer('3', model[3])])   # g_j read at the act output
    part = autograd_gains(model, at_act, x, y, torch.arange(4), sch)
    assert torch.allclose(full, part, atol=1e-12) == same


@pytest.mark.parametrize('name', ['mlp', 'mobilenet'])
def test_with_optimal_schemes_from_s3d_schemes(name):
    "End to end with s3d.schemes: exact S_j by autograd, its extreme eigenpairs, optimal signed schemes, split."
    from s3d.schemes import split_schemes
    model, x = make(name, nn.Tanh)
    y = torch.randn_like(model(x))
    group = split_groups(model, x)[0]
    store = {}
    cons = group.consumers[0]
    h1 = group.producer.register_forward_pre_hook(lambda m, a: store.__setitem__('x', a[0].detach()))
    h2 = cons.module.register_forward_pre_hook(lambda m, a: store.__setitem__('h', a[0]) or a[0].retain_grad())
    loss_fn(model(x), y).backward()
    h1.remove(); h2.remove(); model.zero_grad()
    G, p = store['h'].grad.detach(), group.producer
    S = []
    for j in range(group.n_neurons):
        gj = G[:, j * cons.repeat:(j + 1) * cons.repeat] if isinstance(cons.module, nn.Linear) else G[:, j:j + 1]
        theta = torch.cat([p.weight.detach()[j].flatten(), p.bias.detach()[j:j + 1]])
        S.append(torch.autograd.functional.hessian(lambda th: (gj * channel_forward(group, j, th, store['x'])).sum(), theta))
    lam, vec = torch.linalg.eigh(torch.stack(S))
    sch = split_schemes(lam[:, 0], vec[:, :, 0], lam[:, -1], vec[:, :, -1], m=4, c=3.0)
    neurons = torch.arange(group.n_neurons)
    torch.testing.assert_close(autograd_gains(model, group, x, y, neurons, sch), sch.gain.to(torch.float64), atol=1e-8, rtol=1e-6)
    assert (sch.gain < 0).all()
    l0, eps = float(loss_fn(model(x), y).detach()), 1e-3
    split_neurons(model, group, neurons, sch, eps=eps)
    ratio = (float(loss_fn(model(x), y).detach()) - l0) / (eps ** 2 / 2 * float(sch.gain.sum()))
    assert abs(ratio - 1) < 1e-2
