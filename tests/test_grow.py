"""The S2D/S3D loop: costs, resizing a grown model, selection wiring, resume and errors."""
import copy
import pandas as pd
import pytest
import torch
from torch import nn
from s3d.grow import GrowConfig, grow, load_grown_state, neuron_costs, split_round
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
    cfg2 = GrowConfig(rounds=1, m=2, c=1.0, threshold=0.0, ratio=10.0, eigen='exact')
    cfg3 = GrowConfig(rounds=1, m=2, c=3.0, threshold=0.0, ratio=10.0, eigen='exact')
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
