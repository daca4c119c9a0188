"""The S2D/S3D loop: costs, resizing a grown model, selection wiring, resume and errors."""
import copy
import pandas as pd
import pytest
import torch
from torch import nn
from s3d.controls import Net2Net
from s3d.grow import GrowConfig, grow, load_grown_state, split_round
from s3d.select import neuron_costs
from s3d.graph import split_groups
from s3d.cost import count_params_flops
from s3d.paper.models import mobilenet_digits


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = (X[:, 0] * X[:, 1] > 0).long() + (X[:, 2] > 0.5).long()
    return X, y


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 3), nn.Softplus(), nn.Linear(3, 3))


def _train_fn(X, y, steps=40):
    def train(model, r):
        torch.manual_seed(r)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(steps):
            opt.zero_grad(); loss = nn.functional.cross_entropy(model(X), y); loss.backward(); opt.step()
        return {'loss': loss.item()}
    return train


def test_neuron_costs_match_hand_count():
    """One more pointwise channel in a MobileNet block costs its row, BN, the next depthwise filter + BN, and a consumer column."""
    model = mobilenet_digits(widths=(4, 6, 8), strides=(1, 1, 2))
    x = torch.zeros(1, 1, 8, 8)
    costs = neuron_costs(model, x, 'params')
    groups = {g.name: g for g in split_groups(model, x)}
    g = groups[model.producer_names[1]]
    pw, nxt = g.producer, g.consumers[0].module
    dw = [m for _, m in g.followers if isinstance(m, nn.Conv2d)][0]
    expected = pw.weight[0].numel() + 2 + dw.weight[0].numel() + 2 + nxt.weight.shape[0]
    assert costs[g.name] == expected
    # FLOP costs are positive and consistent with counting a grown twin
    fc = neuron_costs(model, x, 'flops')
    assert all(v > 0 for v in fc.values())


def test_load_grown_state_roundtrip():
    X, y = _data()
    model = _mlp()
    cfg = GrowConfig(rounds=1, m=2, c=2.0, ratio=1.0, eigen='exact')
    res = grow(model, _train_fn(X, y, 5), nn.functional.cross_entropy, [(X, y)], X[:1], cfg, progress=False)
    fresh = _mlp()
    load_grown_state(fresh, res.model.state_dict())
    torch.testing.assert_close(fresh(X), res.model(X))
    assert fresh[0].out_features == res.model[0].out_features > 3


def test_s3d_splits_more_than_s2d():
    """S3D (signed) can split every neuron with S != 0; S2D only those with lam_min < 0, using positive splits."""
    X, y = _data()
    model = _mlp()
    _train_fn(X, y, 200)(model, 0)
    cfg2 = GrowConfig(rounds=1, m=2, c=1.0, threshold=0.0, ratio=1.0, eigen='exact')
    cfg3 = GrowConfig(rounds=1, m=2, c=3.0, threshold=0.0, ratio=1.0, eigen='exact')
    m2, m3 = copy.deepcopy(model), copy.deepcopy(model)
    s2 = split_round(m2, nn.functional.cross_entropy, [(X, y)], X[:1], cfg2)
    s3 = split_round(m3, nn.functional.cross_entropy, [(X, y)], X[:1], cfg3)
    # S3D can split every neuron whose S is nonzero; S2D only those with lam_min < 0
    assert s3['split'] >= s2['split']
    assert s3['split'] == sum(g.n_neurons for g in split_groups(model, X[:1]))
    assert all(k.startswith('positive binary') for k in s2['kinds'].split(';') if k)   # S2D: positive splits only
    assert 'negative binary' in s3['kinds']
    assert s3['predicted_dloss'] <= s2['predicted_dloss'] <= 0


def test_energy_budget_respected():
    model = mobilenet_digits(widths=(4, 6, 8), strides=(1, 1, 2))
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    before = count_params_flops(model, x[:1])[1]
    costs = neuron_costs(model, x[:1], 'flops')
    budget = 3 * min(costs.values()) + 1
    cfg = GrowConfig(rounds=1, m=2, c=2.0, budget=float(budget), cost='flops', eigen='exact')
    info = split_round(model, nn.functional.cross_entropy, [(x, y)], x[:1], cfg)
    after = count_params_flops(model, x[:1])[1]
    assert 0 < after - before <= budget
    assert info['added'] >= 1


def test_resume_matches_uninterrupted(tmp_path):
    X, y = _data()
    cfg = GrowConfig(rounds=2, m=3, c=2.0, ratio=0.5, eigen='fast')
    full = grow(_mlp(), _train_fn(X, y), nn.functional.cross_entropy, [(X, y)], X[:1], cfg, out_dir=tmp_path / 'a', progress=False)

    class Stop(Exception):
        pass

    def flaky(model, r):
        if r == 2:
            raise Stop
        return _train_fn(X, y)(model, r)

    with pytest.raises(Stop):
        grow(_mlp(), flaky, nn.functional.cross_entropy, [(X, y)], X[:1], cfg, out_dir=tmp_path / 'b', progress=False)
    assert len(pd.read_csv(tmp_path / 'b' / 'history.csv')) == 2
    res = grow(_mlp(), _train_fn(X, y), nn.functional.cross_entropy, [(X, y)], X[:1], cfg, out_dir=tmp_path / 'b', progress=False)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(res.model.state_dict()[k], v, rtol=0, atol=0)
    assert full.history['neurons'].tolist() == res.history['neurons'].tolist()
    # a different configuration in the same folder is refused
    with pytest.raises(ValueError, match='different configuration'):
        grow(_mlp(), _train_fn(X, y), nn.functional.cross_entropy, [(X, y)], X[:1], GrowConfig(rounds=2, c=3.0),
             out_dir=tmp_path / 'b', progress=False)


@pytest.mark.parametrize('kw,msg', [(dict(m=1), 'm must'), (dict(c=0.5), 'c must'), (dict(eps=0), 'eps'),
                                    (dict(eigen='magic'), 'eigen'), (dict(cost='watts'), 'cost'),
                                    (dict(ratio=None), 'growth ratio')])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GrowConfig(**kw).validate()


# --- controls and the finite step (issue 12) ---
from s3d.grow import control_round, held_loss, pick_step, scratch_model


def _mlp2_f64(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _cnn_f64(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2),
                         nn.Tanh(), nn.Flatten(), nn.Linear(4 * 9, 3)).double().eval()


def _zero_noise(growth):
    "Net2Net without its symmetry-breaking noise, which keeps the function exactly."
    return Net2Net(noise=0.) if growth == 'net2net' else growth


@pytest.mark.parametrize('growth', ['random', 'net2net'])
@pytest.mark.parametrize('make,x', [(_mlp2_f64, lambda: torch.randn(20, 6, dtype=torch.float64)),
                                    (_cnn_f64, lambda: torch.randn(5, 1, 8, 8, dtype=torch.float64))])
def test_controls_preserve_function_at_zero_step(growth, make, x):
    """Random growth (zero outgoing weights) and Net2Net at zero noise keep the function; counts follow `widths` or `ratio`."""
    x = x()
    net = make()
    with torch.no_grad(): ref = net(x)
    m = copy.deepcopy(net)
    info = control_round(m, x[:1], GrowConfig(growth=_zero_noise(growth), widths=((7, 9),)), rnd=1)
    widths = [g.n_neurons for g in split_groups(m, x[:1])]
    assert widths == [7, 9] and info['added'] == (7 - 3) + (9 - 4)
    with torch.no_grad(): torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-12)
    # the new neurons really are new: random growth's incoming rows differ from every old row
    if growth == 'random':
        w = m[0].weight.detach().flatten(1)
        assert torch.cdist(w[3:], w[:3]).min() > 1e-6
    # by ratio: round(ratio * n) per group
    m2 = copy.deepcopy(net)
    control_round(m2, x[:1], GrowConfig(growth=_zero_noise(growth), ratio=0.5), rnd=1)
    assert [g.n_neurons for g in split_groups(m2, x[:1])] == [3 + round(1.5), 4 + 2]


def test_net2net_step_changes_function_slightly():
    x = torch.randn(20, 6, dtype=torch.float64)
    net = _mlp2_f64()
    m = copy.deepcopy(net)
    info = control_round(m, x[:1], GrowConfig(growth=Net2Net(noise=1e-3), widths=((6, 4),)), rnd=1)
    d = (m(x) - net(x)).abs().max().item()
    assert 0 < d < 1e-4                       # second order in the noise: O(1e-6)
    # equal halves: each parent's outgoing columns are split into two equal halves that sum to the original
    parent = info['parents']['0'].cpu()
    assert sorted(parent.tolist()) == [0, 0, 1, 1, 2, 2]
    for j in range(3):
        cols = m[2].weight[:, parent == j]
        torch.testing.assert_close(cols, net[2].weight[:, [j, j]] / 2)
    # the copies are displaced symmetrically by eps along one direction
    w0 = net[0].weight
    for j in range(3):
        rows = m[0].weight[parent == j]
        torch.testing.assert_close(rows.mean(0), w0[j])
        assert 0 < (rows[0] - rows[1]).norm() <= 2e-3 + 1e-12


def test_line_search_never_accepts_a_loss_increase():
    """Over models, seeds and budgets c, the held loss after a line-searched split is never above the loss before."""
    X, y = _data(128, seed=3)
    X = X.double()
    held = [(X, y)]
    for seed, c, m in [(0, 3.0, 2), (1, 1.0, 2), (2, 6.0, 3), (3, 3.0, 4)]:
        net = _mlp2_f64(seed)
        _train_fn(X, y, 60)(net, 0)
        before = held_loss(net, nn.functional.cross_entropy, held)
        cfg = GrowConfig(m=m, c=c, ratio=1.0, eigen='exact', step='line_search', eps=1e-2, eps_max=30.0, eps_grid=8, held=None)
        info = split_round(net, nn.functional.cross_entropy, held, X[:1], cfg)
        after = held_loss(net, nn.functional.cross_entropy, held)
        assert after <= before + 1e-12, (seed, c, m, before, after, info['eps'])
        assert abs((after - before) - info['measured_dloss']) < 1e-10
    # the picking rule itself: a grid that only raises the loss gives a smaller step or none
    grid = [0.1, 1.0]
    assert pick_step(lambda e: 1.0 + e, grid, 1.0) == (0.0, 1.0)
    e, f = pick_step(lambda e: 1.0 + e * (e - 0.03), grid, 1.0)
    assert 0 < e < 0.1 and f <= 1.0


def test_fixed_step_is_default_and_measured():
    X, y = _data()
    X = X.double()
    net = _mlp2_f64()
    _train_fn(X, y, 60)(net, 0)
    info = split_round(net, nn.functional.cross_entropy, [(X, y)], X[:1], GrowConfig(m=2, c=2.0, ratio=0.5, eigen='exact'))
    assert info['eps'] == GrowConfig().eps == 1e-2
    assert 'measured_dloss' in info and abs(info['measured_dloss'] - info['predicted_dloss']) < 0.5 * abs(info['predicted_dloss']) + 1e-7


@pytest.mark.parametrize('growth', ['random', 'net2net', 'scratch', 'split'])
def test_controls_run_through_grow(growth, tmp_path):
    X, y = _data()
    widths = (5, 7)
    cfg = GrowConfig(rounds=2, growth=growth, widths=widths, ratio=None, eigen='exact',
                     c=2.0, step='line_search' if growth == 'split' else 'fixed')
    seed = _mlp()
    model = scratch_model(seed, X[:1], [7, 7], seed=1) if growth == 'scratch' else seed
    res = grow(model, _train_fn(X, y, 5), nn.functional.cross_entropy, [(X, y)], X[:1], cfg, progress=False, out_dir=tmp_path)
    h = res.history
    assert h['method'].iloc[0] == cfg.method and len(h) == 3
    final = [7, 7]
    assert [g.n_neurons for g in split_groups(res.model, X[:1])] == final
    if growth in ('random', 'net2net'):
        assert h['added'].tolist() == [0, 4, 4]
    assert (pd.read_csv(tmp_path / 'history.csv')['method'] == cfg.method).all()


def test_scratch_model_and_errors():
    X, _ = _data()
    s = scratch_model(_mlp(), X[:1], '[5, 2]', seed=0)
    assert (s[0].out_features, s[2].in_features, s[2].out_features, s[4].in_features) == (5, 5, 2, 2)
    s2 = scratch_model(_mlp(), X[:1], [5, 2], seed=0)
    torch.testing.assert_close(s(X), s2(X))            # same seed, same weights
    with pytest.raises(ValueError, match='widths has'):
        scratch_model(_mlp(), X[:1], [5], seed=0)
    with pytest.raises(ValueError, match='round number'):
        control_round(_mlp(), X[:1], GrowConfig(growth='random', widths=(4,)), rnd=None)
    for kw, msg in [(dict(growth='magic'), 'growth must'), (dict(step='huge'), 'step must'),
                    (dict(step='line_search', eps_max=1e-3), 'eps_max'), (dict(widths=(4,), rounds=3), 'widths gives'),
                    (dict(growth='random', ratio=None), 'adds neurons')]:
        with pytest.raises(ValueError, match=msg):
            GrowConfig(**kw).validate()


def test_progress_false_never_imports_tqdm_auto(monkeypatch):
    """progress=False must stay silent: tqdm.auto warns in a Jupyter kernel without ipywidgets even for a disabled bar."""
    import sys
    monkeypatch.setitem(sys.modules, 'tqdm.auto', None)   # any `import tqdm.auto` now raises ImportError
    X, y = _data()
    cfg = GrowConfig(rounds=1, m=2, c=2.0, ratio=1.0, eigen='exact')
    res = grow(_mlp(), _train_fn(X, y, 5), nn.functional.cross_entropy, [(X, y)], X[:1], cfg, progress=False)
    assert len(res.history) == 2
    with pytest.raises(ImportError):
        grow(_mlp(), _train_fn(X, y, 5), nn.functional.cross_entropy, [(X, y)], X[:1], cfg, progress=True)


def test_line_search_trials_reuse_one_copy_exactly():
    """`_Trials` (one copy, restored between steps) measures exactly what a fresh deep copy + surgery per step measures,
    in any order of steps, on a net with BatchNorm and two split groups; the model itself is never touched."""
    from s3d.eigen import extreme_eigenpairs
    from s3d.select import score_neurons
    from s3d.surgery import apply_splits
    from s3d.grow import _Trials
    from s3d.select import select_round
    x = torch.randn(24, 1, 8, 8, dtype=torch.float64); y = torch.randint(0, 3, (24,))
    net = _cnn_f64(); lf = nn.functional.cross_entropy
    groups = split_groups(net, x[:1]); assert len(groups) == 2
    sch = score_neurons(extreme_eigenpairs(net, groups, lf, [(x, y)], 'exact'), 2, 3.0)
    sel = select_round(sch, GrowConfig(ratio=1.0), None, groups, None)
    ref = copy.deepcopy(net.state_dict())
    def fresh(e):
        m2, g2 = copy.deepcopy((net, groups))
        apply_splits(m2, [(g, sel[g.name], sch[g.name][sel[g.name]]) for g in g2 if len(sel[g.name])], e)
        return held_loss(m2, lf, [(x, y)])
    trial = _Trials(net, groups, sel, sch, lf, [(x, y)])
    for e in (0.5, 0.01, 0.0, 0.5, 2.0):
        assert trial(e) == fresh(e)
    assert trial(0.0) == pytest.approx(held_loss(net, lf, [(x, y)]), abs=1e-12)   # eps = 0: function preserved
    for k, v in net.state_dict().items(): assert torch.equal(v, ref[k])
