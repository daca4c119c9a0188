"Reductions over non-channel dims (max, amax, mean, sum) are followers (issue 20, item 6b), on PointNet-style models."
import copy
import pytest, torch
from torch import nn
from conftest import _randomize_bn
from s3d.graph import split_groups, UnsupportedStructure
from s3d.splitmat import splitting_matrices
from s3d.schemes import split_schemes
from s3d.surgery import split_neurons

LOSS = nn.functional.mse_loss
POOLS = {'max': lambda x: x.max(dim=2).values, 'max_getitem': lambda x: torch.max(x, 2)[0],
         'amax': lambda x: x.amax(dim=-1), 'mean': lambda x: x.mean(dim=2), 'sum': lambda x: x.sum(2),
         'max_keepdim': lambda x: x.max(dim=2, keepdim=True).values.flatten(1)}


class PointNetish(nn.Module):
    "Shared per-point MLP (1x1 convs, BN, act), a global pool over the points, an MLP head."
    def __init__(self, pool='max', act=nn.Tanh):
        super().__init__()
        self.pool = pool
        self.feat = nn.Sequential(nn.Conv1d(3, 6, 1), nn.BatchNorm1d(6), act(), nn.Conv1d(6, 8, 1), nn.BatchNorm1d(8), act())
        self.head = nn.Sequential(nn.Linear(8, 5), act(), nn.Linear(5, 2))
    def forward(self, x): return self.head(POOLS[self.pool](self.feat(x)))


def make(pool, act=nn.Tanh):
    torch.manual_seed(0)
    m = _randomize_bn(PointNetish(pool, act).double()).eval()
    return m, torch.randn(10, 3, 7, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)


@pytest.mark.parametrize('pool', list(POOLS))
def test_pooled_producer_is_a_group(pool):
    model, x, _ = make(pool)
    gs = split_groups(model, x)
    assert [g.name for g in gs] == ['feat.0', 'feat.3', 'head.0'] and not gs.skipped, gs.skipped
    assert [c.name for c in gs[1].consumers] == ['head.0']


def schemes(S, m, c):
    lam, vec = torch.linalg.eigh(S)
    return split_schemes(lam[:, 0], vec[:, :, 0], lam[:, -1], vec[:, :, -1], m=m, c=c)


@pytest.mark.parametrize('pool', list(POOLS))
def test_split_through_the_pool_preserves_function(pool):
    model, x, y = make(pool)
    out = model(x)
    for name in ['feat.3', 'feat.0']:
        g = next(g for g in split_groups(model, x) if g.name == name)
        sch = schemes(splitting_matrices(model, g, LOSS, [(x, y)]), 4, 2.0)
        split_neurons(model, g, torch.arange(g.n_neurons), sch, eps=0.0)
    torch.testing.assert_close(model(x), out, rtol=1e-12, atol=1e-12)
    assert model.feat[3].out_channels > 8 and model.head[0].in_features == model.feat[3].out_channels


@pytest.mark.parametrize('pool', ['mean', 'sum'])
@pytest.mark.parametrize('m,c', [(2, 1.0), (2, 3.0), (3, 2.0), (4, 3.0)])
def test_eps2_law_through_a_smooth_reduction(pool, m, c):
    model, x, y = make(pool)
    g = split_groups(model, x)[1]                    # the layer feeding the reduction
    sch = schemes(splitting_matrices(model, g, LOSS, [(x, y)]), m, c)
    gain = float(sch.gain.sum())
    assert gain < 0
    def ratio(eps):
        net = copy.deepcopy(model)
        l0 = float(LOSS(net(x), y).detach())
        split_neurons(net, split_groups(net, x)[1], torch.arange(g.n_neurons), sch, eps=eps)
        return (float(LOSS(net(x), y).detach()) - l0) / (eps ** 2 / 2 * gain)
    r1, r2 = ratio(5e-3), ratio(1e-3)
    assert abs(r1 - 1) < 0.05 and abs(r2 - 1) < 0.02, (r1, r2)


def test_max_pool_split_then_trains():
    "After splitting through x.max(dim=2).values, the grown model trains: finite loss, gradients reach the copies."
    model, x, y = make('max', nn.ReLU)
    g = split_groups(model, x)[1]
    sch = schemes(splitting_matrices(model, g, LOSS, [(x, y)]), 4, 3.0)
    split_neurons(model, g, torch.arange(g.n_neurons), sch, eps=1e-2)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = model.feat[3].weight.detach().clone()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = LOSS(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert model.feat[3].weight.grad.abs().sum(1).gt(0).sum() > 8        # more than the original 8 channels learn
    assert not torch.equal(before, model.feat[3].weight.detach())


class Bad(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how, self.conv, self.fc, self.fc5 = how, nn.Conv1d(3, 4, 1), nn.Linear(4, 2), nn.Linear(5, 2)
    def forward(self, x):
        h = self.conv(x)
        if self.how == 'indices':
            v, i = h.max(dim=2)
            return self.fc(v + i.to(v.dtype))
        if self.how == 'channels': return self.fc5(h.max(dim=1).values)
        return self.fc(h.amax(dim=0).expand(x.shape[0], -1, -1).mean(2))


@pytest.mark.parametrize('how, why', [('indices', 'indices|summed'), ('channels', 'channel'), ('batch', 'batch')])
def test_reductions_that_cannot_be_followed_are_refused(how, why):
    with pytest.raises(UnsupportedStructure, match=why):
        split_groups(Bad(how), torch.randn(2, 3, 5), strict=True)
