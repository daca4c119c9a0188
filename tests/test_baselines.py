from types import SimpleNamespace as NS
import pytest, torch
from torch import nn
from s3d.paper.models import mobilenet_digits, mlp
from s3d.cost import count_params_flops, count_flops_by_layer
from s3d.paper.baselines import (l1_filter_scores, bn_scale_scores, keep_by_ratio, keep_global, keep_for_budget,
                           pruned_cost, bn_l1_penalty, morphnet_penalty, expand_widths, kept_widths)
from s3d.paper.data import load_digits_data, loaders
from s3d.paper.train import train, evaluate
from s3d.graph import split_groups

X8 = torch.zeros(1, 1, 8, 8)


def test_l1_scores_rank_filters():
    m = mobilenet_digits(widths=[3, 4, 4, 4])
    with torch.no_grad():
        m.block2.pw.weight.zero_()
        m.block2.pw.weight[2] = 1.0   # 4 inputs x 1x1: L1 = 4
        m.block2.pw.weight[0] = -0.5  # L1 = 2
    s = l1_filter_scores(split_groups(m, X8))['block2.pw']
    assert s.tolist() == [2.0, 0.0, 4.0, 0.0]
    assert keep_by_ratio({'g': s}, 0.5)['g'].tolist() == [0, 2]


def test_bn_scores_and_global_threshold():
    m = mobilenet_digits(widths=[3, 4, 4, 4])
    g = split_groups(m, X8)
    with torch.no_grad():
        m.block1.pw_bn.weight.copy_(torch.tensor([0.5, -0.001, 0.2, 0.0]))
    s = bn_scale_scores(g)
    assert s['block1.pw'].tolist() == pytest.approx([0.5, 0.001, 0.2, 0.0])
    keep = keep_global(s, threshold=0.01)
    assert keep['block1.pw'].tolist() == [0, 2]
    assert keep['stem.conv'].tolist() == [0, 1, 2]
    assert kept_widths(m, keep) == [3, 2, 4, 4]


def test_keep_global_min_keep_and_errors():
    s = {'a': torch.tensor([0.1, 0.2, 0.3]), 'b': torch.tensor([5., 6.])}
    k = keep_global(s, prune_fraction=0.6, min_keep=2)
    assert k['a'].tolist() == [1, 2] and k['b'].tolist() == [0, 1]
    assert all(v.dtype == torch.int64 for v in k.values())
    with pytest.raises(ValueError, match='prune_fraction'):
        keep_global(s, prune_fraction=1.0)
    with pytest.raises(ValueError, match='ratio'):
        keep_by_ratio(s, 1.5)


def test_budget_reached_with_least_pruning():
    torch.manual_seed(0)
    m = mobilenet_digits(widths=[8, 8, 8, 8])
    g = split_groups(m, X8)
    cost = pruned_cost(m, X8, "params")
    full = cost({})
    target = 0.5 * full
    for scope in ('global', 'layer'):
        keep = keep_for_budget(l1_filter_scores(g), cost, target, scope=scope)
        c = cost({n: len(v) for n, v in keep.items()})
        assert c <= target
        # keeping one more channel in the widest layer would exceed or stay near the budget: not grossly over-pruned
        assert c > 0.3 * full
    assert keep_for_budget(l1_filter_scores(g), cost, full)['block1.pw'].tolist() == list(range(8))
    with pytest.raises(ValueError, match='target'):
        keep_for_budget(l1_filter_scores(g), cost, 1.0)


def test_slimming_penalty_gradient_is_sign():
    m = mobilenet_digits(widths=[3, 4, 4, 4])
    with torch.no_grad():
        m.block3.pw_bn.weight.copy_(torch.tensor([1., -2., 3., -4.]))
    pen = bn_l1_penalty(split_groups(m, X8), 0.5)
    v = pen(m)
    assert v.item() == pytest.approx(0.5 * (3 + 4 + 4 + 10))
    v.backward()
    assert m.block3.pw_bn.weight.grad.tolist() == [0.5, -0.5, 0.5, -0.5]
    with pytest.raises(ValueError, match='fc0'):
        bn_l1_penalty([NS(name='fc0', producer=nn.Linear(2, 2), bn=None)], 1.0)


def test_morphnet_weights_by_flops():
    # a channel of a layer at 8x8 resolution costs more than one at 2x2: its gradient is larger
    m = mobilenet_digits(widths=[4, 4, 4, 4])
    g = split_groups(m, X8)
    pen = morphnet_penalty(m, g, X8, strength=1.0)
    pen(m).backward()
    g_hi = m.block1.pw_bn.weight.grad[0].item()   # block1 runs at 8x8
    g_lo = m.block3.pw_bn.weight.grad[0].item()   # block3 runs at 2x2
    assert g_hi > 4 * g_lo > 0
    # hand-computed coefficient of a block3.pw channel: conv 2*4*4 MACs/pos at 2x2, BN, ReLU, pool, classifier share
    fl = count_flops_by_layer(m, X8)
    total = sum(fl.values())
    c = (fl['block3.pw'] + fl['block3.pw_bn'] + fl['block3.pw_act'] + fl['pool']) / 4 + fl['classifier'] / 4
    assert g_lo == pytest.approx(c / total, rel=1e-5)


def test_morphnet_dead_inputs_lower_cost():
    m = mobilenet_digits(widths=[4, 4, 4, 4])
    g = split_groups(m, X8)
    pen = morphnet_penalty(m, g, X8, strength=1.0)
    before = pen(m).item()
    with torch.no_grad():
        m.block1.pw_bn.weight[:2] = 0.0   # half of block2.pw's inputs die: block2's channels get cheaper too
    after = pen(m).item()
    fl = count_flops_by_layer(m, X8)
    direct = fl['block1.pw'] + fl['block1.pw_bn'] + fl['block1.pw_act'] + fl['block2.dw'] + fl['block2.dw_bn'] + fl['block2.dw_act']
    dead = 2 * (direct / 4 + fl['block2.pw'] / 4)        # the two zeroed channels' own terms
    fewer_in = 4 * fl['block2.pw'] / 4 * 0.5                # block2.pw channels: half their inputs are dead
    fewer_out = 4 * fl['block1.pw'] / 4 * 0.5               # stem channels: half of block1.pw's outputs are dead
    assert after == pytest.approx(before - (dead + fewer_in + fewer_out) / sum(fl.values()), rel=1e-6)


def test_expand_widths_fits_budget():
    f = lambda ws: count_params_flops(mobilenet_digits(widths=ws), X8)[1]
    target = f([8, 16, 16, 32])
    ws, mult = expand_widths([1, 2, 2, 4], f, target)
    assert f(ws) <= target and 6 < mult < 10
    with pytest.raises(ValueError, match='target'):
        expand_widths([1, 1, 1, 1], f, 10)


def test_train_and_evaluate_digits():
    torch.manual_seed(0)
    dg = load_digits_data().subset(600, 200)
    tr, te = loaders(dg, 50, seed=0)
    net = mlp([64, 32, 10])
    before = evaluate(net, te)['acc']
    hist = train(net, tr, 2, lr=0.05, test_loader=te, progress=False)
    assert hist[-1]['test_acc'] > max(before, 70)
    assert [h['epoch'] for h in hist] == [1, 2]
    with pytest.raises(ValueError, match='epochs'):
        train(net, tr, -1, progress=False)


def _prune_in_process(rank, world, port, out):
    "One process of a 2-process gloo group: its own (deliberately different) BN scales, then the global keep-lists."
    import os
    import torch.distributed as dist
    from s3d.paper.baselines import bn_scale_scores, keep_global, l1_filter_scores
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = mobilenet_digits(widths=[4, 6, 6, 8])
        groups = split_groups(net, torch.zeros(1, 1, 8, 8))
        g = torch.Generator().manual_seed(100 + rank)   # each process drifts in its own way
        with torch.no_grad():
            for grp in groups:
                grp.bn.weight.copy_(torch.rand(grp.bn.weight.shape, generator=g) + 0.1)
        keep = keep_global(bn_scale_scores(groups), prune_fraction=0.4)
        l1 = l1_filter_scores(groups)
        torch.save(dict(keep={k: v.tolist() for k, v in keep.items()},
                        own={grp.name: grp.bn.weight.detach().abs().tolist() for grp in groups},
                        l1={k: v.tolist() for k, v in l1.items()}), out / f'rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_bn_pruning_picks_rank0_channels_in_every_process(tmp_path):
    "Two processes whose BN scales differ still prune the same channels: rank 0's choice."
    import socket
    import torch.multiprocessing as mp
    from s3d.paper.baselines import keep_global
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_prune_in_process, args=(2, port, tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1))
    assert r0['own'] != r1['own']                       # the processes really disagree on their own scales
    assert r0['keep'] == r1['keep']                     # ... yet keep the same channels
    own0 = {k: torch.tensor(v) for k, v in r0['own'].items()}
    own1 = {k: torch.tensor(v) for k, v in r1['own'].items()}
    expect = {k: v.tolist() for k, v in keep_global(own0, prune_fraction=0.4).items()}
    assert r1['keep'] == expect                         # rank 0's scores decided
    assert {k: v.tolist() for k, v in keep_global(own1, prune_fraction=0.4).items()} != expect   # not rank 1's
    assert r0['l1'] == r1['l1']                         # same weights: the L1 scores agree too
