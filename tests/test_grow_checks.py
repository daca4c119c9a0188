"""Issue 24: every bad argument of `grow` / `split_round` refused before the first epoch with a message naming it;
no silent no-op; relative and per-name width targets; help() text; a changed config named field by field."""
import copy, json, pydoc, warnings
import pytest
import torch
from torch import nn
import s3d
from s3d.grow import GrowConfig, grow, split_round, preflight, arg_comments
from s3d.checkpoint import CheckpointError


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    return X, (X[:, 0] * X[:, 1] > 0).long() + (X[:, 2] > 0.5).long()


def _mlp(h1=4, h2=64):
    "Two split groups of very different sizes (4 and 64 neurons)."
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(), nn.Linear(h2, 3))


class Recorder:
    "A train_fn that records its calls (and trains a few steps)."
    def __init__(self, ret=None, steps=3):
        self.calls, self.ret, self.steps = [], ret, steps

    def __call__(self, model, r):
        self.calls.append(r)
        X, y = _data()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(self.steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            opt.step()
        return loss.item() if self.ret is None else self.ret


def _args(**kw):
    X, y = _data()
    a = dict(model=_mlp(), train_fn=Recorder(), loss_fn=nn.functional.cross_entropy, score_batches=[(X, y)],
             example_input=X[:1], cfg=GrowConfig(rounds=2, eigen='exact', ratio=0.5), progress=False)
    return {**a, **kw}


def _refused(match, **kw):
    "grow with `kw` raises ValueError matching `match`, and train_fn never ran."
    a = _args(**kw)
    with pytest.raises(ValueError, match=match) as e:
        grow(**a)
    assert a['train_fn'].calls == [], 'train_fn ran before the refusal'
    return str(e.value)


X_, Y_ = _data()


def test_wrong_example_input_shape():
    msg = _refused(r'example_input: model\(example_input\) raised RuntimeError', example_input=torch.zeros(1, 5))
    assert 'e.g. X[:1]' in msg


def test_wrong_example_input_channels():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4, 3))
    x = torch.randn(8, 1, 6)
    _refused(r'example_input: .*to have 1 channels', model=cnn, example_input=torch.zeros(2, 3, 6),
             score_batches=[(x, Y_[:8])])


def test_loss_fn_with_another_signature():
    _refused(r'loss_fn\(output, target\) raised TypeError', loss_fn=lambda out: out.sum())


def test_loss_fn_not_callable():
    _refused(r'loss_fn must be a function, got a tensor of shape \(2,\)', loss_fn=torch.zeros(2))


def test_loss_fn_class_not_instance():
    _refused(r'loss_fn is the class CrossEntropyLoss, not an instance; pass CrossEntropyLoss\(\)',
             loss_fn=nn.CrossEntropyLoss)


def test_loss_fn_not_scalar():
    _refused(r'loss_fn returned a tensor of shape \(64,\)', loss_fn=nn.CrossEntropyLoss(reduction='none'))


def test_score_batches_one_pair():
    _refused(r'score_batches is one \(input, target\) pair .* not an iterable of pairs; pass \[\(x, y\)\]',
             score_batches=(X_, Y_))


def test_score_batches_yield_tensors():
    _refused(r'score_batches must yield \(input, target\) pairs; its first item is a tensor', score_batches=[X_, Y_, X_])


def test_score_batches_one_shot_iterator_over_rounds():
    _refused(r'score_batches is a one-shot iterator \(generator\)', score_batches=((x, y) for x, y in [(X_, Y_)]))


def test_score_batches_input_the_model_does_not_take():
    _refused(r"score_batches: model\(input\) raised", score_batches=[(torch.zeros(4, 9), Y_[:4])])


def test_score_batches_empty():
    _refused(r'score_batches is empty', score_batches=[])


def test_train_fn_signature():
    a = _args(train_fn=lambda model: None)
    with pytest.raises(ValueError, match=r'cannot be called as train_fn\(model, round\)'):
        grow(**a)


def test_train_fn_return_type_named_after_round_0():
    a = _args(train_fn=Recorder(ret='done'))
    with pytest.raises(TypeError, match=r"train_fn\(model, 0\) returned a str \('done'\); return None, a number"):
        grow(**a)
    assert a['train_fn'].calls == [0]  # what train_fn returns is only known once it ran


def test_train_fn_may_return_a_number():
    res = grow(**_args(cfg=GrowConfig(rounds=1, growth='random', ratio=0.5)))
    assert res.history['train_loss'].notna().all()


@pytest.mark.parametrize('kw,match', [
    (dict(ratio=-1), r'GrowConfig.ratio must be > 0 or None, got ratio=-1'),
    (dict(ratio=3), r'GrowConfig.ratio must be <= m - 1 = 1 with splits, got ratio=3'),
    (dict(m=5), r'GrowConfig.m must be 2, 3 or 4, got m=5'),
    (dict(m=1), r'GrowConfig.m must be 2, 3 or 4, got m=1'),
    (dict(eps=0), r'GrowConfig.eps must be > 0, got eps=0'),
    (dict(threshold=-0.1), r'GrowConfig.threshold must be >= 0'),
    (dict(growth='random', threshold=0.1), r"growth='random' adds neurons without scoring them"),
    (dict(widths=(0, 0)), r'GrowConfig.widths\[0\] must be an int'),
    (dict(widths=(16, 8)), r'shrinks a group'),
    (dict(widths=(8, 32)), r'give at most 16'),
    (dict(growth_factor=1.0), r'GrowConfig.growth_factor must be > 1'),
    (dict(growth_factor=3.0), r'GrowConfig.growth_factor must be <= m = 2 with splits'),
    (dict(max_count=0), r'GrowConfig.max_count must be an int >= 1'),
    (dict(budget=-5.), r'GrowConfig.budget must be > 0'),
])
def test_config_refused_before_training(kw, match):
    with pytest.raises(ValueError, match=match):
        GrowConfig(**{'rounds': 2, **kw}).validate()  # validate() alone, without a model
    _refused(match, cfg=GrowConfig(**{'rounds': 2, 'eigen': 'exact', **kw}))


def test_settings_a_method_does_not_use_are_allowed():
    GrowConfig(growth='random', ratio=3.).validate()  # a control adds any number: ratio 3 quadruples
    GrowConfig(growth='random', eps=0.).validate()    # eps is the split step: random growth does not use it
    GrowConfig(m=4, ratio=3.).validate()              # a quartet adds 3 neurons per neuron


def test_targets_at_or_below_the_current_widths():
    _refused(r"widths\[0\]: round 1's targets \[4, 64\] add no neuron", cfg=GrowConfig(rounds=1, widths=((4, 64),)))
    _refused(r"round 1's targets \[4, 64\] add no neuron to the current widths \[4, 64\], nor does any later round",
             cfg=GrowConfig(rounds=2, growth='random', widths=((4, 64), (4, 64))))
    _refused(r"asks group '2' for 32 neurons in round 1, but it has 64", cfg=GrowConfig(rounds=1, widths=(32,)))
    _refused(r"asks group '0' to grow from 4 to 9 neurons", cfg=GrowConfig(rounds=1, widths=((9, 64),)))
    _refused(r"names \['fc9'\], which are not split groups of this model; its groups are \['0', '2'\]",
             cfg=GrowConfig(rounds=1, widths=({'fc9': 8},)))
    _refused(r'GrowConfig.ratio must be large enough to add a neuron', cfg=GrowConfig(rounds=1, ratio=0.001))


def test_model_with_nothing_to_split():
    msg = _refused(r'model: Sequential has no split group', model=nn.Sequential(nn.Linear(6, 3)))
    assert 'skipped' in msg and 'register_layer' in msg


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(10, 8), nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0][:, -1])


def test_lstm_classifier_refused_before_training():
    tok = torch.randint(0, 10, (16, 5))
    msg = _refused(r'model: LSTMClassifier has no split group', model=LSTMClassifier(), example_input=tok[:1],
                   score_batches=[(tok, Y_[:16])])
    assert f"skipped: {s3d.split_groups(LSTMClassifier(), tok[:1]).skipped}" in msg  # the graph's report, verbatim


def test_lstm_named_in_refusal():
    tok = torch.randint(0, 10, (16, 5))
    msg = _refused(r'has no split group', model=LSTMClassifier(), example_input=tok[:1], score_batches=[(tok, Y_[:16])])
    assert "'rnn'" in msg or 'LSTM)' in msg.split('skipped:', 1)[1]


def test_split_round_checks_too():
    with pytest.raises(ValueError, match=r'score_batches is one \(input, target\) pair'):
        split_round(_mlp(), nn.functional.cross_entropy, (X_, Y_), X_[:1], GrowConfig(eigen='exact'))
    with pytest.raises(ValueError, match=r'split_round needs rnd'):
        split_round(_mlp(), nn.functional.cross_entropy, [(X_, Y_)], X_[:1], GrowConfig(widths=(8,)))


def test_split_round_reads_a_one_shot_iterator_once():
    a, b = _mlp(), _mlp()
    cfg = GrowConfig(c=3., ratio=0.2, eigen='exact')
    ia = split_round(a, nn.functional.cross_entropy, [(X_, Y_)], X_[:1], cfg)
    ib = split_round(b, nn.functional.cross_entropy, iter([(X_, Y_)]), X_[:1], cfg)
    assert ia['added'] == ib['added'] > 0
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def test_preflight_changes_nothing():
    """The probing forwards leave weights, BatchNorm statistics, modes and every random stream as they were, also for a
    shuffled DataLoader (whose iterator draws a seed)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 3))
    net[1].eval()  # a mixed state: the BatchNorm frozen in a training model
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X_, Y_), batch_size=16, shuffle=True)
    sd, rng = copy.deepcopy(net.state_dict()), torch.get_rng_state()
    preflight(net, nn.functional.cross_entropy, loader, X_[:2], GrowConfig(rounds=2, c=3.))
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in net.modules()] == [True, True, False, True, True, True]
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_round_adding_nothing_warns():
    a = _args(cfg=GrowConfig(rounds=1, c=3., threshold=1e6, ratio=0.5, eigen='exact'))
    with pytest.warns(UserWarning, match=r'round 1: no neuron added; no neuron has a splitting gain below -threshold'):
        res = grow(**a)
    assert res.history['added'].tolist() == [0, 0]


def test_repeated_target_warns_when_reached():
    a = _args(cfg=GrowConfig(rounds=2, growth='random', widths=((6, 64), (6, 64))))
    with pytest.warns(UserWarning, match=r'round 2: no neuron added; every group is at or above its target'):
        grow(**a)


def test_eval_mode_warns():
    a = _args(model=_mlp().eval(), cfg=GrowConfig(rounds=1, growth='random', ratio=0.5))
    with pytest.warns(UserWarning, match=r'model is in eval mode'):
        grow(**a)


@pytest.mark.parametrize('growth', ['split', 'random'])
def test_relative_targets_fit_groups_of_any_size(growth):
    """growth_factor grows a 4-neuron and a 64-neuron group by the same factor each round."""
    cfg = GrowConfig(rounds=2, growth=growth, c=3., growth_factor=1.5, eigen='exact')
    res = grow(**_args(cfg=cfg))
    assert [json.loads(w) for w in res.history['widths']] == [[4, 64], [6, 96], [9, 144]]
    assert res.history['added'].tolist() == [0, 2 + 32, 3 + 48]


def test_targets_by_group_name():
    cfg = GrowConfig(rounds=2, growth='random', widths=({'0': 8}, {'0': 12, '2': 80}))
    res = grow(**_args(cfg=cfg))
    assert [json.loads(w) for w in res.history['widths']] == [[4, 64], [8, 64], [12, 80]]


def test_help_lists_every_argument():
    objs = [s3d.grow, s3d.split_round, s3d.split_groups, s3d.extreme_eigenpairs, s3d.split_schemes, s3d.split_neurons,
            s3d.GrowConfig]
    for obj in objs:
        text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
        docs = arg_comments(obj)
        for name, note in docs.items():
            note = note or s3d._SPLIT_SCHEMES_ARGS.get(name) if obj is s3d.split_schemes else note
            assert note, f'{obj.__name__}: argument {name} has no description'
            assert f'{name}: {note}' in text, (obj.__name__, name)
    assert 'History columns' in pydoc.render_doc(s3d.GrowResult, renderer=pydoc.plaintext)


def test_changed_config_names_the_fields(tmp_path):
    grow(**_args(cfg=GrowConfig(rounds=1, growth='random', ratio=0.5), out_dir=tmp_path))
    a = _args(cfg=GrowConfig(rounds=1, growth='random', ratio=0.25, seed=1), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r'different configuration \(ratio: 0.5 -> 0.25; seed: 0 -> 1; '
                                              r'checkpoint -> this run\)'):
        grow(**a)
    assert a['train_fn'].calls == []


def test_readme_snippet():
    """The README's example: a model whose groups differ in size, grown with relative targets."""
    X, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
    model = nn.Sequential(nn.Linear(10, 4), nn.Tanh(), nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 3))

    def train_fn(model, rnd):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(50):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            opt.step()
        return loss.item()

    cfg = s3d.GrowConfig.preset('recommended', rounds=2, growth_factor=1.5)
    res = s3d.grow(model, train_fn, nn.functional.cross_entropy, [(X, y)], X[:1], cfg, progress=False)
    assert res.history['widths'].tolist() == ['[4, 64]', '[6, 96]', '[9, 144]']


def test_score_batches_any_iterable():
    """Anything `for x, y in score_batches` reads is accepted: a sequence with only __getitem__, a callable."""
    class Batches:
        def __getitem__(self, i):
            if i > 0:
                raise IndexError
            return X_, Y_
    preflight(_mlp(), nn.functional.cross_entropy, Batches(), X_[:1], GrowConfig(rounds=2))
    preflight(_mlp(), nn.functional.cross_entropy, lambda: iter([(X_, Y_)]), X_[:1], GrowConfig(rounds=2))
