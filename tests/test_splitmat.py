import pytest, torch
from torch import nn
import torch.nn.functional as F
from s3d.graph import SplitGroup
from s3d.splitmat import (splitting_matrices, split_operators, quadratic_form_autograd, RunningSum,
                          producer_patches, bn_scale)

torch.manual_seed(0)
LOSS = nn.CrossEntropyLoss()

def _conv_net(bias, padding):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=padding, bias=bias), nn.BatchNorm2d(4), nn.GELU(),
                        nn.Conv2d(4, 2, 1), nn.Flatten(), nn.LazyLinear(3)).double()
    net(torch.randn(1, 3, 6, 6, dtype=torch.float64))
    with torch.no_grad(): net[1].running_var.uniform_(0.5, 2.); net[1].weight.uniform_(-2, 2)
    return net, SplitGroup('0', net[0], net[1], net[2])

def _data(shape=(3, 6, 6), sizes=(4, 2)):
    return [(torch.randn(b, *shape, dtype=torch.float64), torch.randint(0, 3, (b,))) for b in sizes]

@pytest.mark.parametrize("bias,padding", [(True, 1), (False, 0), (True, 'same')])
def test_conv_matches_autograd(bias, padding):
    net, g = _conv_net(bias, padding); data = _data()
    S = splitting_matrices(net, g, LOSS, data)
    D = torch.randn(g.n_neurons, g.dim, dtype=torch.float64)
    torch.testing.assert_close(torch.einsum('jd,jde,je->j', D, S, D), quadratic_form_autograd(net, g, LOSS, data, D))
    ops = split_operators(net, [g], LOSS, data)
    torch.testing.assert_close(ops['0'](D), (S @ D[..., None])[..., 0])

def test_linear_sequence_input_and_inplace_act():
    net = nn.Sequential(nn.Linear(5, 4), nn.ELU(inplace=True), nn.Linear(4, 3)).double()
    g = SplitGroup('0', net[0], None, net[1])
    data = [(torch.randn(3, 5, dtype=torch.float64), torch.randint(0, 3, (3,)))]
    S = splitting_matrices(net, g, LOSS, data)
    D = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(torch.einsum('jd,jde,je->j', D, S, D), quadratic_form_autograd(net, g, LOSS, data, D))
    assert S.abs().sum() > 0

def test_batch_weighting_equals_one_big_batch():
    net, g = _conv_net(True, 1); data = _data(sizes=(5, 1))
    big = [(torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data]))]
    torch.testing.assert_close(splitting_matrices(net, g, LOSS, data), splitting_matrices(net, g, LOSS, big))

def test_no_activation_is_zero_and_modes_restored():
    net = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3)); net.train()
    S = splitting_matrices(net, SplitGroup('0', net[0]), LOSS, [(torch.randn(2, 5), torch.tensor([0, 1]))])
    assert S.shape == (4, 6, 6) and S.abs().max() == 0 and net.training and net[0].training

def test_errors():
    net, g = _conv_net(True, 1); data = _data()
    with pytest.raises(ValueError, match="empty"): splitting_matrices(net, g, LOSS, [])
    with pytest.raises(ValueError, match="max_bytes"): splitting_matrices(net, g, LOSS, data, max_bytes=10)
    with pytest.raises(ValueError, match="max_bytes"): split_operators(net, [g], LOSS, data, max_bytes=10)
    other = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="not a module"): splitting_matrices(net, SplitGroup('x', other), LOSS, data)
    with pytest.raises(TypeError, match="producer"):
        splitting_matrices(net, SplitGroup('bn', net[1]), LOSS, data)
    with pytest.raises(ValueError, match="scalar"):
        splitting_matrices(net, g, nn.CrossEntropyLoss(reduction='none'), data)
    ops = split_operators(net, [g], LOSS, data)
    with pytest.raises(ValueError, match="V must be"): ops['0'](torch.randn(3, 3))

def test_functional_activation_error():
    class M(nn.Module):
        def __init__(self): super().__init__(); self.a, self.act, self.b = nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)
        def forward(self, x): return self.b(F.relu(self.a(x)))
    m = M()
    with pytest.raises(ValueError, match="functional"):
        splitting_matrices(m, SplitGroup('a', m.a, None, m.act), LOSS, [(torch.randn(2, 3), torch.tensor([0, 1]))])

def test_running_sum_guard():
    r = RunningSum(); r.add(torch.ones(2), 2, 'a')
    with pytest.raises(ValueError, match="already"): r.add(torch.ones(2), 2, 'a')

def test_bn_scale_and_patches():
    net, g = _conv_net(False, 0)
    a = bn_scale(g)
    torch.testing.assert_close(a, net[1].weight.detach() / torch.sqrt(net[1].running_var + net[1].eps))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    X = producer_patches(net[0], x)
    torch.testing.assert_close(X @ net[0].weight.flatten(1).T, net[0](x).flatten(2).transpose(1, 2))


def test_smooth_follower_activation_in_S_or_warned():
    """A traced group differentiates a smooth activation after a depthwise conv (no warning); a hand-built group,
    whose private path is unknown, leaves it out and says so."""
    import warnings
    from torch import nn
    from s3d.graph import split_groups
    from s3d.splitmat import splitting_matrices
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1, groups=3),
                          nn.BatchNorm2d(3), nn.SiLU(), nn.Conv2d(3, 2, 1)).eval()
    x, y = torch.randn(4, 2, 5, 5), torch.randn(4, 2, 5, 5)
    [g] = split_groups(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        S = splitting_matrices(model, g, nn.functional.mse_loss, [(x, y)])
    by_hand = SplitGroup(g.name, g.producer, g.bn, g.act, g.followers, g.consumers, g.act_name, g.bn_name)
    with pytest.warns(UserWarning, match='SiLU|smooth'):
        S0 = splitting_matrices(model, by_hand, nn.functional.mse_loss, [(x, y)])
    assert not torch.allclose(S, S0)
