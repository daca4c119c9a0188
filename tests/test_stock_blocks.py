"Stock torch.nn blocks: transformer layers grow their feed-forward width, a small torchvision ViT its MLPs; modules kept whole are reported."
import copy
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import s3d
from s3d.graph import split_groups
from s3d.eigen import extreme_eigenpairs
from s3d.select import score_neurons
from s3d.surgery import apply_splits
from s3d.kinds import STRUCTURAL


class EncoderClassifier(nn.Module):
    "Tokens (batch, seq, features) -> nn.TransformerEncoderLayer blocks -> mean over tokens -> classes."
    def __init__(self, batch_first=True, activation='relu', d=8, ff=12, n_out=3, stack=False, norm_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(4, d)
        layer = lambda: nn.TransformerEncoderLayer(d, 2, ff, dropout=0.1, activation=activation, batch_first=batch_first,
                                                   norm_first=norm_first)
        self.blocks = (nn.TransformerEncoder(layer(), 2, enable_nested_tensor=False) if stack
                       else nn.Sequential(layer(), layer()))
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        h = self.embed(x)
        h = self.blocks(h if self.batch_first else h.transpose(0, 1))
        return self.head(h.mean(1 if self.batch_first else 0))


class DecoderClassifier(nn.Module):
    "A decoder layer (or a stack of two) reading the embedded tokens as target and memory."
    def __init__(self, d=8, ff=10, stack=False):
        super().__init__()
        layer = nn.TransformerDecoderLayer(d, 2, ff, batch_first=True)
        self.embed, self.head = nn.Linear(4, d), nn.Linear(d, 3)
        self.dec = nn.TransformerDecoder(layer, 2) if stack else layer

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.dec(h, h).mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self, rnn=nn.LSTM):
        super().__init__()
        self.emb, self.rnn, self.fc = nn.Embedding(20, 8), rnn(8, 12, batch_first=True), nn.Linear(12, 3)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return self.fc(out[:, -1])


def small_vit():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                             mlp_dim=32, num_classes=10)
    nn.init.normal_(m.heads.head.weight, std=0.3)   # torchvision starts the head at zero: no gradient reaches the MLPs
    return m.double().eval(), torch.randn(2, 3, 32, 32, dtype=torch.float64)


def tokens(n=3, seq=5):
    return torch.randn(n, seq, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def loss(out, t): return F.mse_loss(out, t)


def optimal_plan(model, x, tgt, every=2):
    "Every `every`-th neuron of every group with its optimal (exact) binary scheme."
    gs = split_groups(model, x)
    sch = score_neurons(extreme_eigenpairs(model, gs, loss, [(x, tgt)], method='exact'), m=2, c=1.0)
    return gs, [(g, torch.arange(0, g.n_neurons, every), sch[g.name][torch.arange(0, g.n_neurons, every)]) for g in gs]


def assert_preserved(model, x, every=2):
    "Split with the optimal schemes at eps = 0 (float64): the output is unchanged and every width follows."
    model = model.double().eval()
    y = model(x)
    tgt = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    gs, plan = optimal_plan(model, x, tgt, every)
    widths = [g.n_neurons + int((sc.k - 1).sum()) for g, _, sc in plan]   # a neuron becomes k copies
    assert all(w > g.n_neurons for w, (g, *_) in zip(widths, plan))
    apply_splits(model, plan, eps=0.0)
    torch.testing.assert_close(model(x), y, atol=1e-12, rtol=1e-10)
    with torch.no_grad():                               # the fused fast path (eval, no grad) reads the grown weights too
        torch.testing.assert_close(model(x), y, atol=1e-12, rtol=1e-10)
    assert [g.n_neurons for g in split_groups(model, x)] == widths
    assert all(g.consumers[0].module.in_features == w for g, w in zip(gs, widths))
    return gs


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('activation', ['relu', 'gelu'])
def test_encoder_layers_grow_their_feed_forward(batch_first, activation):
    torch.manual_seed(0)
    model, x = EncoderClassifier(batch_first, activation), tokens()
    gs = split_groups(model.double(), x)
    assert [(g.name, [c.name for c in g.consumers], [n for n, _ in g.followers]) for g in gs] == [
        (f'blocks.{i}.linear1', [f'blocks.{i}.linear2'], [f'blocks.{i}.dropout']) for i in range(2)]
    assert all(type(g.act) is {'relu': nn.ReLU, 'gelu': nn.GELU}[activation] and g.act_fn is not None for g in gs)
    assert {f'blocks.{i}.self_attn' for i in range(2)} <= {s.name for s in gs.skipped}
    assert_preserved(model, x)


def test_encoder_stack_and_decoder_layer():
    torch.manual_seed(0)
    gs = assert_preserved(EncoderClassifier(norm_first=True), tokens())
    assert [g.name for g in gs] == ['blocks.0.linear1', 'blocks.1.linear1']
    gs = assert_preserved(EncoderClassifier(stack=True), tokens())
    assert [g.name for g in gs] == ['blocks.layers.0.linear1', 'blocks.layers.1.linear1']
    gs = assert_preserved(DecoderClassifier(), tokens())
    assert [g.name for g in gs] == ['dec.linear1']
    assert {'dec.self_attn', 'dec.multihead_attn'} <= {s.name for s in gs.skipped}
    gs = assert_preserved(DecoderClassifier(stack=True), tokens())
    assert [g.name for g in gs] == ['dec.layers.0.linear1', 'dec.layers.1.linear1']


def test_fast_path_is_restored_after_tracing():
    fast = torch.backends.mha.get_fastpath_enabled()
    split_groups(EncoderClassifier(), tokens().float())
    assert torch.backends.mha.get_fastpath_enabled() == fast
    assert torch.nn.modules.transformer._get_seq_len(torch.ones(2, 3, 4), True) == 3


def test_encoder_gelu_eps_squared_law():
    "Smooth GELU through the stock layer (seq-first): the loss change of the optimal splits is (eps^2/2) * gain."
    torch.manual_seed(0)
    model, x = EncoderClassifier(False, 'gelu').double().eval(), tokens()
    tgt = torch.randn(model(x).shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gs = split_groups(model, x)
    sch = score_neurons(extreme_eigenpairs(model, gs, loss, [(x, tgt)], method='exact'), m=2, c=1.0)
    L0 = loss(model(x), tgt).item()
    g = gs[1]
    idx = torch.argsort(sch[g.name].gain)[:3]
    assert (sch[g.name].gain[idx] < 0).all()
    ratios = []
    for eps in (2e-3, 1e-3):
        twin = copy.deepcopy(model)
        tg = {h.name: h for h in split_groups(twin, x)}[g.name]
        apply_splits(twin, [(tg, idx, sch[g.name][idx])], eps)
        with torch.no_grad():
            ratios.append((loss(twin(x), tgt).item() - L0) / (0.5 * eps ** 2 * sch[g.name].gain[idx].sum().item()))
    assert abs(ratios[1] - 1) < 0.02 and abs(ratios[1] - 1) < abs(ratios[0] - 1) + 1e-3, ratios


def test_vit_grows_its_mlp_blocks():
    model, x = small_vit()
    gs = assert_preserved(model, x)
    assert [g.name for g in gs] == [f'encoder.layers.encoder_layer_{i}.mlp.0' for i in range(2)]
    attn = [s for s in gs.skipped if s.name.endswith('self_attention')]
    assert len(attn) == 2 and all('attention multiplies' in s.reason for s in attn)


def test_one_growth_step_on_the_transformer_classifier():
    torch.manual_seed(0)
    model = EncoderClassifier(True, 'gelu')
    x = torch.randn(16, 5, 4)
    y = torch.randint(0, 3, (16,))
    before = [g.n_neurons for g in split_groups(model, x)]
    trained = []

    def train_fn(m, r):
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        m.train()
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        trained.append(r)
        return {'train_loss': F.cross_entropy(m(x), y).item()}

    cfg = s3d.GrowConfig(rounds=1, m=2, ratio=0.5, eigen='exact')
    res = s3d.grow(model, train_fn, F.cross_entropy, [(x, y)], x, cfg, progress=False)
    after = [g.n_neurons for g in split_groups(model, x)]
    assert trained == [0, 1] and len(res.history) == 2
    assert sum(after) > sum(before) and all(a >= b for a, b in zip(after, before))
    assert [b.linear1.out_features for b in model.blocks] == after
    assert [b.linear2.in_features for b in model.blocks] == after
    assert torch.isfinite(model(x)).all()
    fresh = EncoderClassifier(True, 'gelu')                    # the grown checkpoint reloads into a fresh instance
    s3d.load_grown_state(fresh, model.state_dict())
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
    assert [b.linear1.out_features for b in fresh.blocks] == after


@pytest.mark.parametrize('rnn', [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_classifier_is_refused_naming_the_layer(rnn):
    model, x = LSTMClassifier(rnn), torch.randint(0, 20, (2, 5))
    gs = split_groups(model, x)
    assert len(gs) == 0 and [s.name for s in gs.skipped] == ['emb', 'rnn']
    msg = str(gs.skipped)
    assert f"'rnn' ({rnn.__name__}) itself: a recurrent layer" in msg and 'no producer skipped' not in msg
    assert f's3d.register_layer(nn.{rnn.__name__}, kind)' in msg
    with pytest.raises(ValueError, match=rf"'rnn' \({rnn.__name__}\)"):
        s3d.split_round(model, F.cross_entropy, [(x, torch.zeros(2, dtype=torch.long))], x, s3d.GrowConfig())


def test_attention_is_skipped_with_its_reason():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__(); self.inp, self.attn, self.out = nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 2)
        def forward(self, x):
            h = torch.tanh(self.inp(x))
            return self.out(self.attn(h, h, h, need_weights=False)[0])
    gs = split_groups(Attn(), torch.randn(2, 5, 4))
    assert len(gs) == 0
    by = {s.name: s.reason for s in gs.skipped}
    assert "'attn' (MultiheadAttention): attention multiplies" in 'reaches ' + by['inp'] or 'attention multiplies' in by['inp']
    assert by['attn'].startswith("'attn' (MultiheadAttention) itself: attention multiplies")
    assert 's3d.register_layer(nn.MultiheadAttention, kind)' in by['attn']


def test_a_module_kept_whole_without_a_kind_is_reported():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.ConvTranspose2d(4, 3, 2), nn.ReLU(), nn.Conv2d(3, 1, 1))
    gs = split_groups(model, torch.randn(1, 2, 3, 3))
    s = {s.name: s.reason for s in gs.skipped}
    assert len(gs) == 0 and set(s) == {'0', '2'}
    n = sum(p.numel() for p in model[2].parameters())
    assert f"its {n} parameters sit in no split group" in s['2'] and 's3d.register_layer(nn.ConvTranspose2d, kind)' in s['2']


def test_no_group_message_accounts_for_every_parameter():
    gs = split_groups(nn.Sequential(nn.Linear(3, 2), nn.Sigmoid()), torch.randn(2, 3))
    assert len(gs) == 0 and len(gs.skipped) == 0
    assert str(gs.skipped) == 'nothing skipped; parameters outside every split group: 0 (Linear, an output layer)'
    gs = split_groups(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.LayerNorm(2)), torch.randn(2, 3))
    assert len(gs) == 1 and gs.skipped.outside == ['3 (LayerNorm)']   # '2' is the group's consumer


ZOO = {
    'resnet18': lambda: (torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32)),
    'mobilenet_v2': lambda: (torchvision.models.mobilenet_v2(num_classes=10), torch.randn(1, 3, 32, 32)),
    'vit': small_vit,
    'transformer': lambda: (EncoderClassifier(), tokens().float()),
    'transformer_seq_first': lambda: (EncoderClassifier(False, 'gelu'), tokens().float()),
    'lstm': lambda: (LSTMClassifier(), torch.randint(0, 20, (2, 5))),
}
EXTENSION = re.compile(r"s3d\.(kinds\.)?register_(layer|op|edit|activation)\(")


@pytest.mark.parametrize('name', list(ZOO))
def test_every_skip_reason_names_an_extension_point(name):
    "Each reason gives the registry call that would teach s3d the module or op, or says no registry entry can (a residual add)."
    model, x = ZOO[name]()
    gs = split_groups(model, x)
    assert gs.skipped
    missing = [f"{s.name}: {s.reason}" for s in gs.skipped if not (EXTENSION.search(s.reason) or STRUCTURAL in s.reason)]
    assert not missing, missing
    structural = [s for s in gs.skipped if STRUCTURAL in s.reason]
    assert all(re.search('residual add|concatenated', s.reason) for s in structural)
    assert 'register_layer' in STRUCTURAL and 'register_op' in STRUCTURAL
