"Real architectures through the layer-kind registry: torchvision resnet18, mobilenet_v2, a small ViT, a GPT-style block."
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import s3d
from s3d.graph import split_groups
from s3d.kinds import layer_kind, LayerKind, Refusal, ACTIVATIONS, FUNCTIONAL, unregister_activation
from s3d.eigen import extreme_eigenpairs
from s3d.select import score_neurons
from s3d.surgery import apply_splits, remap_optimizer
from s3d.grow import load_grown_state
from s3d.cost import count_params_flops


class GPTBlock(nn.Module):
    "Pre-norm transformer block, written the usual way: functional GELU and softmax, residual adds."
    def __init__(self, d=16, h=32, heads=2):
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc, self.out, self.drop = nn.LayerNorm(d), nn.Linear(d, h), nn.Linear(h, d), nn.Dropout(0.1)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / (D // self.heads) ** 0.5, -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)), approximate='tanh')))


class GPT(nn.Module):
    def __init__(self, d=16, n_out=5):
        super().__init__(); self.blocks = nn.Sequential(GPTBlock(d), GPTBlock(d)); self.head = nn.Linear(d, n_out)
    def forward(self, x): return self.head(self.blocks(x).mean(1))


def _randomize_bn(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):   # test set-up only: non-trivial eval statistics
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=m.bias.dtype) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.running_mean.dtype) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)
    return model


def build(name):
    torch.manual_seed(0)
    if name == 'resnet18': m, x = torchvision.models.resnet18(num_classes=5), torch.randn(2, 3, 32, 32)
    elif name == 'mobilenet_v2': m, x = torchvision.models.mobilenet_v2(num_classes=5), torch.randn(2, 3, 32, 32)
    elif name == 'vit':
        m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                 mlp_dim=64, num_classes=5)
        nn.init.normal_(m.heads.head.weight, std=0.3)          # torchvision starts the head at zero: no gradient reaches the MLPs
        x = torch.randn(2, 3, 32, 32)
    elif name == 'gpt': m, x = GPT(), torch.randn(3, 6, 16)
    return _randomize_bn(m.double()).eval(), x.double()


EXPECTED = {
    'resnet18': [f'layer{i}.{j}.conv1' for i in range(1, 5) for j in range(2)],
    'mobilenet_v2': ['features.0.0', 'features.1.conv.1'] + [f'features.{i}.conv.0.0' for i in range(2, 18)] + ['features.17.conv.2', 'features.18.0'],
    'vit': [f'encoder.layers.encoder_layer_{i}.mlp.0' for i in range(2)],
    'gpt': ['blocks.0.fc', 'blocks.1.fc'],
}
SKIPPED_BECAUSE = {'resnet18': ('residual add',), 'mobilenet_v2': ('residual add',), 'vit': ('residual add', 'concatenated', 'attention multiplies'),
                   'gpt': ('residual add', 'does not merge neighbouring dims')}   # gpt: qkv's view into heads


def random_schemes(n, d, seed):
    "Feasible binary/triplet schemes: weights sum to 1, sum_r w_r delta_r = 0."
    g = torch.Generator().manual_seed(seed)
    W = torch.tensor([[0.7, 0.5, -0.2]], dtype=torch.float64).repeat(n, 1)
    D = torch.randn(n, 3, d, generator=g, dtype=torch.float64)
    D[:, 0] = -(W[:, 1:, None] * D[:, 1:]).sum(1) / W[:, :1]
    return SimpleNamespace(weights=W, deltas=D, k=torch.full((n,), 3))


@pytest.mark.parametrize('name', ['resnet18', 'mobilenet_v2', 'vit', 'gpt'])
def test_real_architecture(name, tmp_path):
    model, x = build(name)
    gs = split_groups(model, x)
    assert [g.name for g in gs] == EXPECTED[name]
    assert gs.skipped and all(any(why in s.reason for why in SKIPPED_BECAUSE[name]) for s in gs.skipped)
    if name == 'gpt': assert all(g.act_fn is F.gelu and g.act.approximate == 'tanh' for g in gs)
    # every group at once, at eps = 0, in forward order: the function is kept
    y = model(x)
    tgt = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    plan = [(g, torch.arange(0, g.n_neurons, 3), random_schemes(len(range(0, g.n_neurons, 3)), g.dim, i)) for i, g in enumerate(gs)]
    apply_splits(model, plan, eps=0.0)
    torch.testing.assert_close(model(x), y, atol=1e-10, rtol=1e-10)
    assert [g.n_neurons for g in split_groups(model, x)] == [g.n_neurons for g, *_ in plan]
    # a training step on the grown model, with the optimizer state carried through a second (eps > 0) split
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    model.train(); F.mse_loss(model(x), tgt).backward(); opt.step(); opt.zero_grad()
    g0 = split_groups(model, x)[0]
    apply_splits(model, [(g0, [0], random_schemes(1, g0.dim, 9))], eps=1e-2)
    remap_optimizer(opt, model)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.mse_loss(model(x), tgt); loss.backward(); opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # a grown checkpoint reloads into a fresh instance
    model.eval()
    torch.save(model.state_dict(), tmp_path / 'grown.pt')
    fresh, _ = build(name)
    load_grown_state(fresh, torch.load(tmp_path / 'grown.pt'))
    torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
    assert count_params_flops(fresh, x) == count_params_flops(model, x)


@pytest.mark.parametrize('name', ['vit', 'gpt'])
def test_eps_squared_law_smooth_gelu(name):
    "Smooth GELU, float64: the loss change of the optimal split is (eps^2 / 2) * gain to first order."
    model, x = build(name)
    tgt = torch.randn(model(x).shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = lambda out, t: F.mse_loss(out, t)
    gs = split_groups(model, x)
    schemes = score_neurons(extreme_eigenpairs(model, gs, loss, [(x, tgt)], method='exact'), m=2, c=1.0)
    L0 = loss(model(x), tgt).item()
    for g in gs:
        s = schemes[g.name]
        idx = torch.argsort(s.gain)[:3]
        assert (s.gain[idx] < 0).all()
        ratios = []
        for eps in (2e-3, 1e-3):
            twin = copy.deepcopy(model)
            tg = {h.name: h for h in split_groups(twin, x)}[g.name]
            apply_splits(twin, [(tg, idx, s[idx])], eps)
            with torch.no_grad(): ratios.append((loss(twin(x), tgt).item() - L0) / (0.5 * eps ** 2 * s.gain[idx].sum().item()))
        assert abs(ratios[1] - 1) < 0.02 and abs(ratios[1] - 1) < abs(ratios[0] - 1) + 1e-3, ratios


def test_register_layer_and_activation_public():
    class Cube(nn.Module):
        def forward(self, z): return z ** 3
    s3d.register_activation(Cube, curvature=lambda act, z, beta: 6 * z, smooth=True)
    try:
        net = nn.Sequential(nn.Linear(3, 4), Cube(), nn.Linear(4, 1)).double()
        g, = s3d.split_groups(net, torch.randn(2, 3, dtype=torch.float64))
        assert g.act is net[1]
    finally:
        unregister_activation(Cube)
    assert Cube not in ACTIVATIONS
    with pytest.raises(TypeError, match='LayerKind'): s3d.register_layer(nn.Linear, object())
    assert all(FUNCTIONAL[f] is ACTIVATIONS[nn.ReLU] for f in (F.relu, torch.relu, torch.Tensor.relu))


def test_refusals_named():
    cases = [(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.GELU(), nn.Linear(4, 1)), torch.randn(2, 3), 'not function-preserving'),
             (nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 1, 1)), torch.randn(2, 3, 4, 4), 'enlarge its group'),
             (nn.Sequential(nn.Conv2d(3, 4, 1, groups=1, padding_mode='circular', padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1)), torch.randn(2, 3, 4, 4), 'zero padding')]
    for model, x, why in cases:
        gs = split_groups(model.double(), x.double())
        assert gs == [] and why in gs.skipped[0].reason
    ok = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(4, 4), nn.ReLU(), nn.Conv2d(4, 1, 1)).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    g, = split_groups(ok, x); y = ok(x)
    apply_splits(ok, [(g, [1], random_schemes(1, g.dim, 0))], eps=0.0)
    assert ok[1].num_groups == ok[1].num_channels == 6
    torch.testing.assert_close(ok(x), y, atol=1e-12, rtol=0)


def test_conv1d_group_and_splitting_matrix():
    from s3d.splitmat import splitting_matrices, quadratic_form_autograd, split_operators
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.Tanh(), nn.Conv1d(4, 3, 3, stride=2),
                        nn.SiLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 2))
    net = _randomize_bn(net.double()).eval()
    x = torch.randn(5, 2, 9, dtype=torch.float64); data = [(x, torch.randint(0, 2, (5,)))]
    gs = split_groups(net, x)
    assert [(g.name, g.bn_name, g.act_name) for g in gs] == [('0', '1', '2'), ('3', None, '4')]
    lossf = nn.CrossEntropyLoss()
    for g in gs:
        S = splitting_matrices(net, g, lossf, data)
        D = torch.randn(g.n_neurons, g.dim, dtype=torch.float64)
        torch.testing.assert_close(torch.einsum('jd,jde,je->j', D, S, D), quadratic_form_autograd(net, g, lossf, data, D))
        torch.testing.assert_close(split_operators(net, [g], lossf, data)[g.name](D), (S @ D[..., None])[..., 0])


def test_kinds_imports_nothing_from_s3d():
    "The layer-kind registry is the bottom of the engine: no import cycle through it (issue 20, item 2)."
    import ast, pathlib, s3d.kinds
    tree = ast.parse(pathlib.Path(s3d.kinds.__file__).read_text())
    imported = [n.module or '' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.level > 0 or (n.module or '').startswith('s3d'))]
    assert imported == [], imported


def test_builtin_curvatures_live_with_their_activation():
    "Each built-in activation's curvature is on its kinds entry, the same function s3d.curvature applies."
    import torch
    from torch import nn
    from s3d.kinds import ACTIVATIONS, RBF
    from s3d.curvature import act_curvature, CURVATURES
    z = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for cls in (nn.ReLU, nn.SiLU, nn.Tanh, nn.GELU, RBF):
        assert ACTIVATIONS[cls].curvature is CURVATURES[cls]
        torch.testing.assert_close(act_curvature(cls(), z), ACTIVATIONS[cls].curvature(cls(), z, 3.0))


def test_edit_overrides_live_on_the_kind():
    "Surgery's edit tables are views of overrides stored on the layer kinds: one place per module type."
    import torch
    from torch import nn
    import s3d.surgery as surgery
    from s3d.kinds import FOLLOWER_EDITS, register_edit, layer_kind, ActivationKind
    assert surgery.FOLLOWER_EDITS is FOLLOWER_EDITS and surgery.register_follower_edit.__module__ == 's3d.kinds'
    def prelu_edit(m, index): pass
    before = layer_kind(nn.PReLU)
    assert before.edit_follower(nn.PReLU()) is None               # PReLU holds a slope: no edit by default
    register_edit(nn.PReLU, follower=prelu_edit)
    try:
        assert layer_kind(nn.PReLU) is before and isinstance(before, ActivationKind)
        assert before.edit_follower(nn.PReLU()) is prelu_edit and FOLLOWER_EDITS[nn.PReLU] is prelu_edit
        assert surgery._follower_edit(nn.PReLU()) is prelu_edit
    finally:
        del FOLLOWER_EDITS[nn.PReLU]
    assert nn.PReLU not in FOLLOWER_EDITS and before.edit_follower(nn.PReLU()) is None
