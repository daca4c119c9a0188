"""Growth controls (`s3d.controls`) and allocation (`s3d.grow.allocate`): function kept, counts, errors, keys."""
import copy, json
from dataclasses import dataclass
from typing import ClassVar
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from s3d.controls import CONTROLS, Control, GradMax, Net2Net, RandomGrowth, get_control, register_control
from s3d.graph import split_groups
from s3d.grow import GrowConfig, allocate, grow, split_round


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _cnn():
    "conv -> tanh -> conv -> tanh -> flatten -> linear: a conv consumer and a linear one reading 9 columns each."
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                         nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4, 3)).double()


def _data(make):
    torch.manual_seed(1)
    x = torch.randn(64, 6, dtype=torch.float64) if make is _mlp else torch.randn(64, 1, 8, 8, dtype=torch.float64)
    return x, torch.randint(0, 3, (64,))


@pytest.mark.parametrize('make', [_mlp, _cnn])
def test_gradmax_keeps_function_and_beats_random_directions(make):
    "Zero incoming weights keep the output; the chosen outgoing weights give a larger incoming gradient."
    net = make()
    x, y = _data(make)
    with torch.no_grad(): ref = net(x)
    m = copy.deepcopy(net)
    for g in reversed(split_groups(m, x[:1])):
        GradMax().add(m, g, 2, torch.Generator().manual_seed(0), (F.cross_entropy, [(x, y)]))
    with torch.no_grad(): torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-12)
    groups = split_groups(m, x[:1])
    assert [g.n_neurons for g in groups] == [5, 6]
    w = groups[0].producer.weight
    assert w[3:].abs().max() == 0 and w[:3].abs().min() > 0
    # the first new neuron takes the top singular direction: its incoming gradient is at least that of any other
    # outgoing direction of the same norm (here: random ones)
    def new_grads(model):
        g = split_groups(model, x[:1])[0]
        loss = F.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, g.producer.weight)[0][3:].flatten(1).norm(dim=1)
    best = new_grads(m)[0]
    for seed in range(5):
        rnd = copy.deepcopy(m)
        with torch.no_grad():
            for j in (3, 4):
                col = rnd[2].weight[:, j]
                noise = torch.randn(col.shape, generator=torch.Generator().manual_seed(seed * 7 + j), dtype=col.dtype)
                rnd[2].weight[:, j] = noise * col.norm() / noise.norm()
        assert best >= new_grads(rnd).max() * (1 - 1e-6)


def test_gradmax_refuses_paths_that_do_not_map_zero_to_zero():
    x, y = _data(_mlp)
    for act in (nn.Sigmoid(), nn.Tanh()):
        layers = [nn.Linear(6, 3)] + ([nn.BatchNorm1d(3)] if isinstance(act, nn.Tanh) else []) + [act, nn.Linear(3, 3)]
        net = nn.Sequential(*layers).double().eval()
        if isinstance(act, nn.Tanh):
            with torch.no_grad(): net[1].bias.fill_(0.3)
        with torch.no_grad(): ref = net(x)
        g = split_groups(net, x[:1])[0]
        with pytest.raises(ValueError, match='zero incoming'):
            GradMax().add(net, g, 2, torch.Generator().manual_seed(0), (F.cross_entropy, [(x, y)]))
        with torch.no_grad(): assert torch.equal(net(x), ref)      # nothing changed
    with pytest.raises(ValueError, match='needs'):
        GradMax().add(_mlp(), split_groups(_mlp(), x[:1])[0], 1, torch.Generator())


def test_allocations_share_the_total():
    net = _mlp()
    x, y = _data(_mlp)
    groups = split_groups(net, x[:1])
    cfg = GrowConfig(growth='random', widths=((5, 7),))
    targets = allocate(cfg, groups, 1)
    assert targets == {'0': 2, '2': 3}
    for seed in range(5):
        r = allocate(GrowConfig(growth='random', widths=((5, 7),), allocation='random'), groups, 1,
                     gen=torch.Generator().manual_seed(seed))
        assert sum(r.values()) == 5 and min(r.values()) >= 0
    # gain: the 5 best gains over both groups (m=2: one new neuron per split neuron)
    from s3d.eigen import extreme_eigenpairs
    from s3d.select import score_neurons
    sch = score_neurons(extreme_eigenpairs(net, groups, F.cross_entropy, [(x, y)], method='exact'), 2, 3.)
    gcfg = GrowConfig(growth='random', widths=((5, 7),), allocation='gain', c=3.)
    got = allocate(gcfg, groups, 1, sch)
    gains = sorted([(float(v), n) for n, s in sch.items() for v in s.gain])[:5]
    assert got == {n: sum(1 for _, k in gains if k == n) for n in ('0', '2')}
    with pytest.raises(ValueError, match='needs'): allocate(gcfg, groups, 1)


@pytest.mark.parametrize('growth,allocation', [('split', 'gain'), ('split', 'random'), ('random', 'gain'),
                                               ('gradmax', None), ('gradmax', 'gain'), ('net2net', 'random')])
def test_split_round_grows_the_round_total(growth, allocation):
    net = _mlp()
    x, y = _data(_mlp)
    cfg = GrowConfig(growth=growth, allocation=allocation, widths=((5, 7),), ratio=None, m=2, c=3., eigen='exact')
    info = split_round(net, F.cross_entropy, [(x, y)], x[:1], cfg, rnd=1)
    widths = [g.n_neurons for g in split_groups(net, x[:1])]
    assert sum(widths) == 12 and info['added'] == 5
    if allocation is None: assert widths == [5, 7]


def test_config_keys_and_labels():
    old = GrowConfig(growth='random', widths=(4,))
    d = json.loads(old.key({'run': 1}))
    assert 'allocation' not in d and 'eigen_max_bytes' not in d and d['growth'] == 'random'   # older keys unchanged
    new = GrowConfig(growth=Net2Net(noise=0.5), widths=(4,), allocation='gain')
    d = json.loads(new.key())
    assert d['growth'] == {'name': 'net2net', 'noise': 0.5} and d['allocation'] == 'gain'
    assert new.method == 'Net2Net [gain]' and GrowConfig(c=3.).method == 'S3D'
    with pytest.raises(ValueError, match='growth must'): GrowConfig(growth='magic').validate()
    with pytest.raises(ValueError, match='allocation must'): GrowConfig(allocation='everywhere').validate()
    assert get_control(RandomGrowth(scale=2.)).scale == 2.


def test_a_registered_control_runs_through_grow():
    @register_control
    @dataclass
    class FirstCopies(Control):
        "Exact copies of neuron 0 with zero outgoing weight."
        name: ClassVar[str] = 'first'
        method: ClassVar[str] = 'first copies'
        def add(self, model, group, new, gen, data=None):
            from s3d.surgery import remap_channels
            n = group.n_neurons
            scale = torch.cat([torch.ones(n), torch.zeros(new)]).double()
            return remap_channels(model, group, torch.cat([torch.arange(n), torch.zeros(new, dtype=torch.long)]),
                                  consumer_scale=scale)
    try:
        x, y = _data(_mlp)
        res = grow(_mlp(), lambda m, r: {}, F.cross_entropy, [(x, y)], x[:1],
                   GrowConfig(rounds=2, growth='first', widths=(4, 6), ratio=None), progress=False)
        assert res.history.method.unique().tolist() == ['first copies']
        assert json.loads(res.history.widths.iloc[-1]) == [6, 6]
    finally: del CONTROLS['first']


def test_uneven_allocations_keep_the_round_total():
    "A layer already above its own target does not change the round's total (sum of targets - current neurons)."
    from s3d.grow import round_total
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    x, y = _data(_mlp)
    groups = split_groups(net, x[:1])
    cfg = GrowConfig(growth='random', widths=(8,), allocation='random')
    assert round_total(cfg, groups, 1) == 16 - 12
    for seed in range(5):
        counts = allocate(cfg, groups, 1, gen=torch.Generator().manual_seed(seed))
        assert sum(counts.values()) == 4
    m = copy.deepcopy(net)
    split_round(m, F.cross_entropy, [(x, y)], x[:1], GrowConfig(growth='random', widths=(8,), allocation='gain',
                                                                  c=3., eigen='exact'), rnd=1)
    assert sum(g.n_neurons for g in split_groups(m, x[:1])) == 16


@pytest.mark.parametrize('make', [_mlp, _cnn])
def test_gradmax_one_pass_matches_subspace_iteration(make):
    "The one-pass SVD gives the directions of (well converged) subspace iteration; chunked probes change nothing."
    x, y = _data(make)
    rows = {}
    for key, ctl in (('svd', GradMax()), ('chunked', GradMax(probes=5)), ('iterative', GradMax(solver='iterative', iters=300))):
        m = make()
        g = split_groups(m, x[:1])[0]
        ctl.add(m, g, 2, torch.Generator().manual_seed(0), (F.cross_entropy, [(x[:40], y[:40]), (x[40:], y[40:])]))
        u = m[2].weight[:, 3:5].detach().transpose(0, 1).reshape(2, -1)     # the first group's only consumer
        rows[key] = F.normalize(u, dim=1)
    torch.testing.assert_close(rows['chunked'], rows['svd'], rtol=0, atol=1e-12)
    cos = (rows['svd'] * rows['iterative']).sum(1).abs()
    assert cos.min() >= 0.999, cos
    with pytest.raises(ValueError, match='solver'):
        GradMax(solver='power').add(make(), split_groups(make(), x[:1])[0], 1, torch.Generator(), (F.cross_entropy, [(x, y)]))


def _benchmarks():
    import importlib, sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / 'benchmarks'))
    return root, importlib.import_module('growth_quality'), importlib.import_module('growth_ablation')


def test_growth_blocks_of_results_md_are_rendered_from_the_committed_results():
    "Every growth number in benchmarks/RESULTS.md's generated blocks is what the committed CSVs give."
    from s3d.paper.report import sync_blocks
    root, gq, ga = _benchmarks()
    text = (root / 'benchmarks' / 'RESULTS.md').read_text()
    for mod in (gq, ga):
        assert sync_blocks(text, mod.results_sections(root), check=True) == []


def test_growth_benchmark_rows_keep_the_order_of_a_full_run():
    "Parts merged in any order give the rows of one full run (phase 1 by task, seed, method; scratch@gain last)."
    import pandas as pd
    _, gq, _ = _benchmarks()
    rows = [dict(task=t, method=m, seed=s, round=r) for t in ('wine', 'mlp1') for m in ('scratch@gain', 'TINY', 'S3D')
            for s in (1, 0) for r in (1, 0)]
    df = gq.canonical(pd.DataFrame(rows).sample(frac=1, random_state=0))
    assert list(df.method.iloc[:4]) == ['S3D', 'S3D', 'TINY', 'TINY'] and list(df.task.iloc[:4]) == ['mlp1'] * 4
    assert (df.method == 'scratch@gain').iloc[-8:].all() and list(df['round'].iloc[:2]) == [0, 1]
    pd.testing.assert_frame_equal(gq.canonical(df.iloc[::-1]), df)


def test_tiny_grows_every_hidden_layer_to_the_round_width():
    "TINY (GroMo) reaches each round's width with the same training as the other methods."
    pytest.importorskip('gromo')
    _, gq, _ = _benchmarks()
    h = gq.run_one('wine', 'TINY', 0, rounds=2, epoch_scale=0.05)
    assert [json.loads(w) for w in h.widths] == [[8, 8], [12, 12], [16, 16]]
    assert h.added.tolist() == [0, 8, 8] and h.test_score.between(0, 1).all() and h.growth_epochs.iloc[1:].gt(0).all()


def test_growth_ablation_runs_its_variants_through_grow(monkeypatch):
    "The ablation's methods exist in growth_quality, and its polish variant reaches the step grow runs each round."
    _, gq, ga = _benchmarks()
    calls = []
    monkeypatch.setattr(ga, 'polish', lambda *a, **k: calls.append(1))
    try:
        h = ga.run('mlp1', 'S3D line search + polish', 0)
    finally:  # the ablation patches s3d.grow: put it back for the other tests
        ga.G._split_round, ga.G.pick_step = ga._orig_split, ga._orig_pick
    assert len(calls) == h['round'].max() and h['method'].eq('S3D line search + polish').all()
    assert {'S3D', 'random'} <= set(gq.METHODS)
