"""Device and dtype guards that run on a CPU-only machine.

A CUDA model given CPU example inputs used to crash (`baselines.pruned_cost` -> `split_groups`,
issue 8). No CPU test could see it, so these tests put the model on PyTorch's `meta` device
(shapes only, no data) or on a *fake* CUDA device (`FakeTensorMode`), give the inputs on the CPU,
and run every public entry point that only needs shapes. Where values are needed, the model is
float64 and the inputs float32 (conversion expected) or the reverse.

Surgery on `meta` skips the range check of an index (its values are unknown there); floating example
inputs and score batches take the model's dtype.
"""
import copy, math
import pytest
import torch
from torch import nn
from s3d.graph import split_groups, model_device, to_model_device
from s3d.cost import count_params_flops, count_flops_by_layer
from s3d.splitmat import dense_matrices, split_operators
from s3d.eigen import extreme_eigenpairs, EigenPairs
from s3d.select import score_neurons
from s3d.surgery import split_neurons
from s3d.grow import GrowConfig, grow, neuron_costs
from s3d.paper.models import MobileNetV1
from s3d.paper.baselines import (l1_filter_scores, bn_scale_scores, keep_by_ratio, keep_global, keep_for_budget,
                                 prune_channels, pruned_cost, bn_l1_penalty, morphnet_penalty)
from s3d.paper.data import BatchLoader
from s3d.paper.train import train, evaluate

X = torch.zeros(2, 3, 8, 8)                   # example input, always on the CPU, float32
Y = torch.tensor([1, 7])
CE = nn.CrossEntropyLoss()


def _net(device='cpu', dtype=torch.float32, widths=(4, 8, 8)):
    torch.manual_seed(0)
    return MobileNetV1(10, widths=list(widths), strides=[1, 2, 2]).to(dtype).to(device)


def _devices(*tensors): return {t.device.type for t in tensors}


# --- meta model, CPU inputs: everything that only needs shapes ------------------------------------------------

def test_groups_and_costs_meta_model_cpu_input():
    m, ref = _net('meta'), _net()
    assert [g.name for g in split_groups(m, X)] == [g.name for g in split_groups(ref, X)]
    assert count_params_flops(m, X) == count_params_flops(ref, X)
    assert count_flops_by_layer(m, X) == count_flops_by_layer(ref, X)
    assert model_device(m).type == 'meta' and to_model_device(m, (X, {'y': Y}))[1]['y'].device.type == 'meta'


def test_splitting_matrices_meta_model_cpu_batches():
    m = _net('meta'); gs = split_groups(m, X)
    S = dense_matrices(m, gs, CE, [(X, Y)])
    assert {k: tuple(v.shape) for k, v in S.items()} == {g.name: (g.n_neurons, g.dim, g.dim) for g in gs}
    assert _devices(*S.values()) == {'meta'}
    ops = split_operators(m, gs, CE, [(X, Y)])
    assert set(ops) == {g.name for g in gs}
    e = extreme_eigenpairs(m, gs, CE, [(X, Y)], 'exact')
    assert _devices(*[t for v in e.values() for t in (v.lam_min, v.v_max)]) == {'meta'}
    assert e['block1.pw'].v_min.shape == (8, 4)


def test_pruning_baselines_meta_model_cpu_input():
    m, ref = _net('meta'), _net()
    gs, rg = split_groups(m, X), split_groups(ref, X)
    for scores in (l1_filter_scores(gs), bn_scale_scores(gs)):
        assert _devices(*scores.values()) == {'meta'}
    keep = keep_by_ratio(l1_filter_scores(gs), 0.5)
    assert _devices(*keep.values()) == {'meta'} and {n: len(v) for n, v in keep.items()} == {'stem.conv': 2, 'block1.pw': 4, 'block2.pw': 4}
    counts = {n: len(v) for n, v in keep.items()}
    assert pruned_cost(m, X)(counts) == pruned_cost(ref, X)(counts) < pruned_cost(ref, X)({})
    assert pruned_cost(m, X, 'params')(counts) == pruned_cost(ref, X, 'params')(counts)
    prune_channels(m, X, {n: torch.arange(c) for n, c in counts.items()})
    assert m.widths == [2, 4, 4] and m.stem.conv.weight.device.type == 'meta'
    assert bn_l1_penalty(gs, 0.1)(m).device.type == 'meta'
    assert morphnet_penalty(_net('meta'), split_groups(_net('meta'), X), X, 0.5)().device.type == 'meta'


def test_neuron_costs_meta_model_cpu_input():
    assert neuron_costs(_net('meta'), X) == neuron_costs(_net(), X)
    assert neuron_costs(_net('meta'), X, 'params') == neuron_costs(_net(), X, 'params')


def test_train_and_evaluate_meta_model_cpu_batches():
    m = _net('meta')
    dl = BatchLoader(torch.zeros(6, 3, 8, 8, dtype=torch.uint8), torch.arange(6), 4, pad=1, flip=True, shuffle=True)
    h = train(m, dl, 1, progress=False, regularizer=morphnet_penalty(m, split_groups(m, X), X, 0.5))
    assert m.stem.conv.weight.device.type == 'meta' and len(h) == 1 and math.isnan(h[0]['loss'])
    assert math.isnan(evaluate(m, dl)['acc'])


def test_batch_loader_on_meta_device():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    for padded in (True, False):
        bl = BatchLoader(x, torch.arange(5), 2, device='meta', pad=2, flip=True, shuffle=True, padded=padded, channels_last=True)
        xs, ys = zip(*bl)
        assert _devices(*xs, *ys) == {'meta'} and [tuple(v.shape) for v in xs] == [(2, 3, 8, 8)] * 2 + [(1, 3, 8, 8)]
        assert xs[0].dtype == torch.float32 and xs[0].is_contiguous(memory_format=torch.channels_last)


# --- a fake CUDA device (FakeTensorMode: CUDA tensors without a GPU, shapes only) --------------------------------

def test_fake_cuda_model_cpu_input():
    "The exact crash of issue 8: a CUDA model traced with a CPU example input."
    fake = pytest.importorskip('torch._subclasses.fake_tensor')
    mode = fake.FakeTensorMode(allow_non_fake_inputs=True)
    with mode, torch.device('cuda'):
        m = MobileNetV1(10, widths=[4, 8, 8], strides=[1, 2, 2])
    assert m.stem.conv.weight.device.type == 'cuda'
    ref = count_params_flops(_net(), X)
    with mode:
        assert [g.name for g in split_groups(m, X)] == ['stem.conv', 'block1.pw', 'block2.pw']
        assert count_params_flops(m, X) == ref


# --- the table 1 pipeline on the meta device ----------------------------------------------------------------------

def test_table1_baselines_meta_device(tmp_path):
    "Full model, width multiplier and L1 pruning runs of Table 1 with every tensor on `meta` (example inputs made on the CPU)."
    from dataclasses import replace
    from s3d.paper.data import make_fake_cifar100, load_cifar100
    from s3d.paper.experiments.table1 import SCALES, Trainer, table1_runs, run_one
    make_fake_cifar100(tmp_path, 8, 4)
    cfg = replace(SCALES['smoke'], score_images=8, score_batch=8, batch_size=4)
    T = Trainer(cfg, load_cifar100(tmp_path), torch.device('meta'))
    runs = {r['key']: r for r in table1_runs(cfg)}
    rows = {k: run_one(runs[k], cfg, T, tmp_path / 'runs') for k in ('width0.5-s0', 'width1-s0', 'l1-s0')}
    full = count_params_flops(cfg.model(cfg.full_widths), cfg.example())[1]
    assert rows['width1-s0'].flops.iloc[0] == full
    assert 0 < rows['l1-s0'].flops.iloc[0] <= cfg.prune_flops * full
    assert rows['l1-s0'].acc.isna().all()          # no data on meta: metrics are NaN


def test_split_neurons_meta_model_unpatched():
    _split_on_meta()


def _eigs(g):
    "Eigenpairs (float32, CPU) with lam_min < 0 < lam_max for every neuron of `g`."
    n, d = g.n_neurons, g.dim
    gen = torch.Generator().manual_seed(0)
    v = lambda: nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)
    return EigenPairs(-torch.rand(n, generator=gen) - 1, v(), torch.rand(n, generator=gen) + 1, v())


def _split_on_meta():
    m = _net('meta'); g = split_groups(m, X)[1]
    s = score_neurons({g.name: _eigs(g)}, 2, 3.0)[g.name]
    parents = split_neurons(m, g, [0, 3], s[[0, 3]], 1e-2)
    assert parents.device.type == 'meta' and m.widths == [4, 10, 8]
    assert m(X.to('meta')).shape == (2, 10)


# --- values: model dtype differs from the inputs' ---------------------------------------------------------------

def test_split_neurons_float32_schemes_float64_model():
    m = _net(dtype=torch.float64); g = split_groups(m, X.double())[1]
    s = score_neurons({g.name: _eigs(g)}, 2, 3.0)[g.name]   # float32 schemes
    split_neurons(m, g, [1], s[[1]], 1e-2)
    assert m.block1.pw.weight.dtype == torch.float64 and m.widths == [4, 9, 8]


def test_train_float64_model_float32_batches():
    m = _net(dtype=torch.float64)
    dl = BatchLoader(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), torch.arange(8), 4)
    h = train(m, dl, 1, lr=0.01, progress=False)
    assert math.isfinite(h[0]['loss']) and m.stem.conv.weight.dtype == torch.float64
    assert math.isfinite(evaluate(m, dl)['loss'])


def test_train_keeps_model_where_it_is():
    m = _net().to(torch.float64)
    dl = BatchLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), 4)
    train(m, dl, 1, progress=False)
    assert model_device(m).type == 'cpu'


_DTYPE = ("engine: example inputs and score batches keep their dtype (graph.to_model_device and splitmat.collect_batches "
          "move them to the model's device only); float inputs should take the model's floating dtype")

def test_shapes_float64_model_float32_example():
    m = _net(dtype=torch.float64)
    assert count_params_flops(m, X) == count_params_flops(_net(), X)
    assert len(split_groups(m, X)) == 3


def test_grow_one_round_float64_model_float32_inputs():
    m = _net(dtype=torch.float64)
    xs = torch.randn(8, 3, 8, 8)
    ys = torch.arange(8)
    res = grow(m, lambda model, r: {}, CE, [(xs, ys)], X, GrowConfig(rounds=1, ratio=0.5, eigen='exact'), progress=False)
    assert res.history.neurons.iloc[-1] > res.history.neurons.iloc[0]
