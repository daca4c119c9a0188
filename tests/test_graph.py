import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make, NETS
from s3d.graph import (split_groups, validate_group, SplitGroup, Consumer, register_activation, ACTIVATIONS,
                       UnsupportedStructure)
from s3d.kinds import unregister_activation


def desc(g):
    return (g.name, g.bn_name, g.act_name, [n for n, _ in g.followers], [(c.name, c.repeat) for c in g.consumers])


EXPECTED = {
    'mlp': [('0', None, '1', [], [('2', 1)]), ('2', '3', '4', ['5'], [('6', 1)])],
    'nested': [('0.0', None, '0.1', [], [('1.0', 1)]), ('1.0', None, '1.1.0', [], [('1.1.1', 1)])],
    'conv': [('0', '1', '2', [], [('3', 1)]), ('3', '4', '5', ['6', '7'], [('8', 1)])],
    'flatten': [('0', '1', '2', ['3', '4'], [('5', 4)]), ('5', None, '6', [], [('7', 1)])],
    'flatten_avg': [('0', '1', '2', ['3', '4'], [('5', 4)]), ('5', None, '6', [], [('7', 1)])],
    'mobilenet': [('0', '1', '2', ['3', '4', '5'], [('6', 1)]), ('6', '7', '8', ['9', '10', '11'], [('12', 1)]),
                  ('12', '13', '14', ['15', '16'], [('17', 4)])],
    'traced': [('features.conv', 'features.bn', 'features.act', ['pool'], [('fc', 4)]), ('fc', None, 'fc_act', [], [('head', 1)])],
    'functional': [('conv', None, 'act', [], [('conv2', 1)]), ('conv2', None, 'act2', [], [('fc', 1)])],
}


@pytest.mark.parametrize('name', NETS)
def test_groups_found(name):
    model, x = make(name)
    gs = split_groups(model, x)
    assert [desc(g) for g in gs] == EXPECTED[name]
    mods = dict(model.named_modules())
    for g in gs:
        assert g.producer is mods[g.name] and validate_group(model, g) is g


def test_modes_and_stats_untouched():
    model, x = make('conv')
    model.train()
    model[4].training = False
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split_groups(model, x)
    assert model.training and not model[4].training and model[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_output_layer_only_is_excluded():
    model = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
    assert split_groups(model, torch.randn(2, 3)) == []


def test_custom_activation_leaf():
    class Swish2(nn.Module):
        def forward(self, x): return x * torch.sigmoid(x)
    model = nn.Sequential(nn.Linear(3, 4), Swish2(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="producer '0'"):
        split_groups(model, torch.randn(2, 3), strict=True)
    assert split_groups(model, torch.randn(2, 3)) == [] and [s.name for s in split_groups(model, torch.randn(2, 3)).skipped] == ['0']
    register_activation(Swish2)
    try:
        g, = split_groups(model, torch.randn(2, 3))
        assert g.act is model[1]
    finally:
        unregister_activation(Swish2)
    assert Swish2 not in ACTIVATIONS


class _Add(nn.Module):
    def __init__(self):
        super().__init__(); self.a, self.act, self.b = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)
    def forward(self, x): return self.b(x + self.act(self.a(x)))

class _Cat(nn.Module):
    def __init__(self):
        super().__init__(); self.a, self.act, self.b = nn.Linear(4, 4), nn.Tanh(), nn.Linear(8, 2)
    def forward(self, x): return self.b(torch.cat([x, self.act(self.a(x))], 1))

class _FRelu(nn.Module):
    def __init__(self):
        super().__init__(); self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
    def forward(self, x): return self.b(F.relu(self.a(x)))

class _Twice(nn.Module):
    def __init__(self):
        super().__init__(); self.a, self.act, self.b = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)
    def forward(self, x): return self.b(self.act(self.a(self.act(x))))

class _ProducerTwice(nn.Module):
    def __init__(self):
        super().__init__(); self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
    def forward(self, x): return self.b(self.a(self.a(x)))

class _OutAndConsumed(nn.Module):
    def __init__(self):
        super().__init__(); self.a, self.act, self.b = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)
    def forward(self, x):
        h = self.act(self.a(x)); return self.b(h), h

class _Scale(nn.Module):
    def __init__(self):
        super().__init__(); self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
    def forward(self, x): return self.b(2 * self.a(x))

class _Control(nn.Module):
    def __init__(self):
        super().__init__(); self.a = nn.Linear(4, 4)
    def forward(self, x):
        return self.a(x) if x.sum() > 0 else x


@pytest.mark.parametrize('model, x, culprit', [
    (_Add(), torch.randn(2, 4), "'add'"),
    (_Cat(), torch.randn(2, 4), "'cat'"),
    (_ProducerTwice(), torch.randn(2, 4), "called 2 times"),
    (_OutAndConsumed(), torch.randn(2, 4), 'both returned'),
    (_Scale(), torch.randn(2, 4), "'mul'"),
    (nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2)), torch.randn(2, 2, 3, 3), "'2' (Conv2d): a grouped Conv2d"),
    (nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 8, 3, groups=4), nn.Conv2d(8, 2, 1)), torch.randn(2, 2, 3, 3), "'1' (Conv2d)"),
    (nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1)), torch.randn(2, 3), "'1' (LayerNorm)"),
    (nn.Sequential(nn.Conv2d(2, 4, 1), nn.Softmax(1), nn.Conv2d(4, 4, 1)), torch.randn(2, 2, 3, 3), "'1' (Softmax)"),
    (nn.Sequential(nn.Conv2d(2, 3, 1), nn.Linear(3, 2)), torch.randn(2, 2, 3, 3), "'1' (Linear)"),
    (nn.Sequential(nn.Conv2d(2, 3, 1), nn.Flatten(0), nn.Linear(27, 2)), torch.randn(1, 2, 3, 3), "'1' (Flatten)"),
    (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(2), nn.Linear(4, 1)), torch.randn(2, 2, 3), "'0'"),
])
def test_unsupported_raise(model, x, culprit):
    with pytest.raises(ValueError) as e:
        split_groups(model.double(), x.double(), strict=True)
    assert culprit in str(e.value)
    assert isinstance(e.value, UnsupportedStructure)
    gs = split_groups(model.double(), x.double())                # the default skips, with the same reason in the report
    assert gs == [] and any(culprit in f"'{s.name}' {s.reason}" for s in gs.skipped)


def test_functional_activation_and_shared_stateless_module():
    g, = split_groups(_FRelu().double(), torch.randn(2, 4).double())
    assert (g.name, g.act_name, type(g.act), g.act_fn) == ('a', 'relu', nn.ReLU, F.relu)
    m = _Twice().double()
    g, = split_groups(m, torch.randn(2, 4).double())
    assert (g.name, g.act, g.act_fn) == ('a', m.act, None)
    class Methods(nn.Module):
        def __init__(self):
            super().__init__(); self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 3), nn.Linear(3, 2)
        def forward(self, x): return self.c(torch.tanh(self.b(F.leaky_relu(self.a(x), 0.2).sigmoid())))
    ga, gb = split_groups(Methods(), torch.randn(2, 4))
    assert (type(ga.act), ga.act.negative_slope, [n for n, _ in ga.followers], type(gb.act)) == (nn.LeakyReLU, 0.2, [], nn.Tanh)


def test_not_strict_skips_only_bad_producers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a0, self.act0 = nn.Linear(3, 3), nn.Tanh()
            self.a, self.act, self.b, self.act2, self.c = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)
        def forward(self, x):
            h = self.act(self.a(self.act0(self.a0(x)))); return self.c(h + self.act2(self.b(h)))
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="producer 'a'"):
        split_groups(M(), x, strict=True)
    gs = split_groups(M(), x)
    assert [g.name for g in gs] == ['a0']   # 'a' and 'b' feed the residual add
    assert [s.name for s in gs.skipped] == ['a', 'b'] and all('residual add' in s.reason for s in gs.skipped)


def test_untraceable_raises():
    with pytest.raises(ValueError, match='could not trace'):
        split_groups(_Control(), torch.randn(2, 4))


def test_validate_group_errors():
    model, x = make('mobilenet')
    g0, g1, g2 = split_groups(model, x)
    validate_group(model, SplitGroup('0', model[0], model[1], model[2], [('3', model[3])], [Consumer('6', model[6])]))
    with pytest.raises(ValueError, match="no module '1'"):
        validate_group(model, SplitGroup('1', model[0], consumers=[Consumer('6', model[6])]))
    with pytest.raises(ValueError, match="consumer '6' has 4 input channels, not 6"):
        validate_group(model, SplitGroup('6', model[6], consumers=[Consumer('6', model[6])]))
    with pytest.raises(ValueError, match="depthwise Conv2d with 6 channels"):
        validate_group(model, SplitGroup('6', model[6], followers=[('3', model[3])], consumers=[Consumer('12', model[12])]))
    with pytest.raises(ValueError, match="has 4 features, not 6"):
        validate_group(model, SplitGroup('6', model[6], bn=model[1], bn_name='1', consumers=[Consumer('12', model[12])]))
    with pytest.raises(ValueError, match="has 20 inputs, not 5\\*1"):
        validate_group(model, SplitGroup('12', model[12], consumers=[Consumer('17', model[17])]))
    with pytest.raises(ValueError, match='no consumers'):
        validate_group(model, SplitGroup('12', model[12]))
    with pytest.raises(ValueError, match='must be nn.Linear or nn.Conv2d'):
        validate_group(model, SplitGroup('0', model[0], consumers=[Consumer('3', model[3])]))


def test_a_new_functional_op_is_one_registry_entry():
    "An op unknown to the tracer is skipped with its reason; one `register_op` entry in s3d.kinds makes it a follower."
    from functools import partial
    from s3d.kinds import OpKind, register_op, FUNCTIONAL_OPS, Refusal
    from s3d.surgery import split_neurons
    from types import SimpleNamespace

    class Cum(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv1d(2, 3, 1), nn.Linear(3, 2)
        def forward(self, x): return self.fc(torch.tanh(self.conv(x)).cumsum(dim=2).mean(2))

    class CumsumOp(OpKind):
        def flow(self, name, target, args, kwargs, n, cdim, repeat, shp, out):
            d = (args[0] if args else kwargs['dim']) % len(shp)
            if d in (0, cdim): raise Refusal("a cumsum over the channel or batch dim")
            return partial(torch.cumsum, dim=d), cdim, repeat

    model, x = Cum().double().eval(), torch.randn(4, 2, 5, dtype=torch.float64)
    gs = split_groups(model, x)
    assert not gs and 'cumsum' in gs.skipped[0].reason
    register_op('cumsum', CumsumOp())
    try:
        g, = split_groups(model, x)
        y = model(x)
        sch = SimpleNamespace(weights=torch.tensor([[0.7, 0.3]], dtype=torch.float64), deltas=torch.zeros(1, 2, 3, dtype=torch.float64),
                              k=torch.tensor([2]))
        split_neurons(model, g, [1], sch, eps=0.0)
        torch.testing.assert_close(model(x), y, rtol=1e-12, atol=1e-12)
    finally:
        del FUNCTIONAL_OPS['cumsum']
