"Table 3 (ModelNet40, DGCNN): HDF5 reader and its errors, function preservation and the eps^2 law on a DGCNN, `run('smoke')` and the CLI end to end."
import copy
from pathlib import Path
from types import SimpleNamespace
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from s3d.graph import split_groups
from s3d.eigen import extreme_eigenpairs
from s3d.select import score_neurons
from s3d.surgery import apply_splits
from s3d.paper.runs import DataError
from s3d.paper.pointcloud import DGCNN, MODELNET_DIR, PointLoader, knn, load_modelnet, write_modelnet_h5
from s3d.paper.experiments.table3 import SCALES, run, write_shapes_h5


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "The smoke scale's tiny ModelNet-format HDF5 files (3 classes, 8 train / 4 test clouds each, 96 points)."
    return write_shapes_h5(tmp_path_factory.mktemp('h5') / 'modelnet', 3, 8, 4, 96)


def test_reader_resolves_list_prefixes_and_keeps_first_points(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 20, 3)).astype(np.float32)
    write_modelnet_h5(tmp_path, 'train', x, [1, 0, 1, 0, 1], ['a', 'b'], shards=2, prefix='/somewhere/else/')
    ps = load_modelnet(tmp_path, 'train', num_points=8)
    assert ps.points.shape == (5, 8, 3) and np.array_equal(ps.points, x[:, :8]) and ps.labels.tolist() == [1, 0, 1, 0, 1]
    assert ps.classes == ['a', 'b'] and all(Path(f).parent.name == MODELNET_DIR for f in ps.files)


@pytest.mark.parametrize('damage, words', [('missing', 'missing HDF5 file'), ('empty', 'empty HDF5 file'),
                                           ('corrupt', 'corrupt HDF5 file'), ('nokeys', "no dataset 'label'")])
def test_bad_file_is_one_line_data_error_naming_it(tmp_path, damage, words):
    import h5py
    write_modelnet_h5(tmp_path, 'test', np.zeros((4, 10, 3)), [0, 1, 0, 1], shards=2)
    victim = tmp_path / MODELNET_DIR / 'ply_data_test1.h5'
    if damage == 'missing': victim.unlink()
    elif damage == 'empty': victim.write_bytes(b'')
    elif damage == 'corrupt': victim.write_bytes(b'\x89HDF\r\n garbage' * 10)
    else:
        victim.unlink()
        with h5py.File(victim, 'w') as f: f.create_dataset('data', data=np.zeros((2, 10, 3), np.float32))
    with pytest.raises(DataError) as e: load_modelnet(tmp_path, 'test', num_points=10)
    msg = str(e.value)
    assert words in msg and str(victim) in msg and '\n' not in msg


def test_training_loader_augments_and_drops_partial_batch(tiny):
    ps = load_modelnet(tiny, 'train', 48)
    dl = PointLoader(ps, 5, train=True, seed=1)
    xs = [x for x, _ in dl]
    assert len(xs) == len(dl) == 4 and all(x.shape == (5, 3, 48) for x in xs)
    x, y = next(iter(PointLoader(ps, 24, train=True, seed=2)))       # augmented: no training cloud comes out unchanged
    src = ps.points[(ps.labels == int(y[0]))]
    assert not any(np.allclose(x[0].numpy().T, s) for s in src)
    e, _ = next(iter(PointLoader(ps, 24, train=False)))                # evaluation: the clouds as stored, in order
    assert np.array_equal(e.numpy().transpose(0, 2, 1), ps.points)


def _net(act, seed):
    torch.manual_seed(seed)
    net = DGCNN(5, (6, 6, 8, 8), k=5, emb=16, head=(12,), act=act).double()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, .1); m.running_var.uniform_(.5, 2); m.weight.data.uniform_(.5, 1.5); m.bias.data.normal_(0, .1)
    return net.eval()


def test_split_preserves_function_at_eps0_and_needs_shared_distance_weights():
    net, x = _net('leaky', 0), torch.randn(4, 3, 32, dtype=torch.float64)
    gs = split_groups(net, x)
    assert [g.name for g in gs] == ['conv.0', 'conv.1', 'conv.2', 'conv.3']
    g = torch.Generator().manual_seed(0); plan = []
    for grp in gs:   # every EdgeConv: 3 neurons, negative (S3D) binary splits, random directions
        nr = torch.randperm(grp.n_neurons, generator=g)[:3]
        v = torch.randn(len(nr), grp.dim, generator=g, dtype=torch.float64)
        plan.append((grp, nr, SimpleNamespace(weights=torch.tensor([[2., -1.]] * 3, dtype=torch.float64),
                                              deltas=torch.stack([v / 2, v], 1), k=torch.full((3,), 2))))
    with torch.no_grad():
        y0 = net(x); apply_splits(net, plan, eps=0.0); y1 = net(x)
        assert net.widths == [9, 9, 11, 11]
        assert torch.allclose(y1, y0, atol=1e-12, rtol=0)
        w = net.edge[1].dist_weight
        assert torch.isclose(w.sum(), torch.tensor(6.0, dtype=w.dtype)) and (w > 0).all()
        for e in net.edge[1:]: e.dist_weight.fill_(1.0)     # copies counted twice in the kNN distance: the graph changes
        assert not torch.allclose(net(x), y0, atol=1e-6)


def test_loss_change_follows_eps_squared_law_on_dgcnn():
    "Smooth activation (tanh): LeakyReLU's exact curvature is 0 a.e., so its surrogate S predicts nothing measurable."
    net, x = _net('tanh', 1), torch.randn(6, 3, 32, dtype=torch.float64)
    y, loss = torch.arange(6) % 5, nn.CrossEntropyLoss()
    sch = score_neurons(extreme_eigenpairs(net, split_groups(net, x), loss, [(x, y)], method='exact'), 2, 3.0)
    gain = sum(float(s.gain.sum()) for s in sch.values())
    assert gain < 0
    with torch.no_grad(): l0 = float(loss(net(x), y))
    for eps in (1e-5, 1e-6):
        m = copy.deepcopy(net)
        apply_splits(m, [(g, torch.arange(g.n_neurons), sch[g.name]) for g in split_groups(m, x)], eps)
        with torch.no_grad(): r = (float(loss(m(x), y)) - l0) / (eps ** 2 / 2 * gain)
        assert abs(r - 1) < 1e-2, (eps, r)


def test_engine_s_is_the_argmax_edge_formula():
    "S_j from the engine equals sum_i dL/dh_ji a_j^2 act''(z at the argmax edge) x x^T computed by hand."
    from s3d.splitmat import splitting_matrices
    net, x = _net('tanh', 2), torch.randn(3, 3, 24, dtype=torch.float64)
    y, loss = torch.arange(3), nn.CrossEntropyLoss()
    grp = split_groups(net, x)[1]
    S = splitting_matrices(net, grp, loss, [(x, y)])
    # autograd: dL/dh for h = max over neighbours, by a hook on the amax output
    store = {}
    def fwd():
        z = None; xx = x
        for l, (e, c, b, a, f) in enumerate(zip(net.edge, net.conv, net.bn, net.act, net.fuse)):
            pre = b(c(e(xx)))
            if l == 1: store['z'], store['xt'] = pre.detach(), e(xx).detach()
            xx = a(pre).amax(-1)
            if l == 1: xx.retain_grad(); store['h'] = xx
            yy = f(xx); z = yy if z is None else z + yy
        z = net.fuse_act(net.fuse_bn(z))
        return net.head(torch.cat([z.amax(-1), z.mean(-1)], 1))
    loss(fwd(), y).backward()
    g, z, xt = store['h'].grad, store['z'], store['xt']                 # (B, C, P), (B, C, P, k), (B, 2Cin, P, k)
    star = torch.tanh(z).argmax(-1)                                       # the maximising edge per neuron and point
    zs = z.gather(-1, star[..., None])[..., 0]
    a = (net.bn[1].weight / torch.sqrt(net.bn[1].running_var + net.bn[1].eps)).detach()
    dd = -2 * torch.tanh(zs) * (1 - torch.tanh(zs) ** 2)                  # tanh''
    coef = g * dd * a.view(1, -1, 1) ** 2                                  # (B, C, P)
    X = xt.permute(0, 2, 3, 1)                                            # (B, P, k, 2Cin)
    Xs = torch.stack([X.gather(2, star[:, j, :, None, None].expand(-1, -1, 1, X.shape[-1]))[:, :, 0] for j in range(z.shape[1])], 1)
    S_hand = torch.einsum('bjp,bjpd,bjpe->jde', coef, Xs, Xs)   # g is of the mean loss: this is the mean over samples of the per-sample sums
    torch.testing.assert_close(S, S_hand, rtol=1e-8, atol=1e-12)


def test_smoke_run_end_to_end_on_hdf5_files(tiny, tmp_path):
    out = tmp_path / 'out'
    paths = run('smoke', 'cpu', data=tiny, out=out, progress=False)
    assert [p.name for p in paths] == ['table3_smoke.csv', 'table3_smoke.md', 'table3_smoke.png', 'table3_smoke.pdf']
    df = pd.read_csv(paths[0])
    assert set(df.method) == {'S2D', 'S3D', '1.0x', '0.75x', '0.5x', 'PointNet', 'random growth', 'Net2Net', 'scratch'}
    s3w = df[df.method == 'S3D'].sort_values('round').widths.tolist()
    for ctl in ('random growth', 'Net2Net'):   # the controls grow to S3D's widths at every round
        assert df[df.method == ctl].sort_values('round').widths.tolist() == s3w
    assert set(df[df.method == 'scratch'].widths) == {s3w[-1]}
    assert 'S3D - random growth' in paths[1].read_text()
    assert df.acc.between(0, 100).all() and df.mean_class_acc.between(0, 100).all()
    s3d = df[df.method == 'S3D'].sort_values('round')
    assert list(s3d['round']) == list(range(SCALES['smoke'].rounds + 1)) and s3d.params.is_monotonic_increasing
    assert 'Table 3, scale `smoke`' in paths[1].read_text()
    # a corrupt file in --data: one-line DataError, nothing written
    bad = tmp_path / 'bad'; import shutil; shutil.copytree(tiny, bad)
    (bad / MODELNET_DIR / 'ply_data_test0.h5').write_bytes(b'broken')
    with pytest.raises(DataError, match='corrupt HDF5 file .*ply_data_test0.h5'): run('smoke', 'cpu', data=bad, out=tmp_path / 'o2', progress=False)
    assert not (tmp_path / 'o2' / 'table3_smoke.csv').exists()


def test_cli_reproduce_table3_smoke(tiny, tmp_path, capsys):
    from s3d.paper import cli
    old = cli.EXPERIMENTS.get('table3')
    cli.register_experiment('table3', 's3d.paper.experiments.table3:run')   # the lead adds this line to the CLI registry
    try:
        (tmp_path / 'bad' / MODELNET_DIR).mkdir(parents=True)
        (tmp_path / 'bad' / MODELNET_DIR / 'train_files.txt').write_text('data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n')
        assert cli.main(['reproduce', 'table3', '--scale', 'smoke', '--data', str(tmp_path / 'bad'), '--out', str(tmp_path / 'o')]) == 4
        err = capsys.readouterr().err.strip()
        assert err.count('\n') == 0 and 'missing HDF5 file' in err and 'ply_data_train0.h5' in err
        # finished runs are reused: a second invocation over the same folder only rewrites the summary
        assert cli.main(['reproduce', 'table3', '--scale', 'smoke', '--data', str(tiny), '--out', str(tmp_path / 'o')]) == 0
    finally: cli.register_experiment('table3', old)


def _neighbour_sets(model, x, amp: bool) -> list:
    "The sorted kNN index sets every EdgeConv of `model` used on `x`, with or without CPU bf16 autocast."
    import s3d.paper.pointcloud as pc
    seen, knn0 = [], pc.knn
    def record(*a, **kw):
        seen.append(knn0(*a, **kw).sort(-1).values)
        return seen[-1]
    pc.knn = record
    try:
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp): model(x)
    finally: pc.knn = knn0
    return seen


def test_knn_graph_under_bf16_autocast_is_the_fp32_graph():
    "Training runs under bf16 autocast, scoring and evaluation in fp32: all must use one neighbour graph (issue 18)."
    torch.manual_seed(0)
    x = torch.randn(2, 64, 512)
    with torch.autocast('cpu', dtype=torch.bfloat16): got = knn(x, 20)
    assert torch.equal(got, knn(x, 20))
    net, pts = DGCNN(40), torch.randn(2, 3, 512)   # paper widths and k = 20, half the paper's 1,024 points
    amp, fp32 = _neighbour_sets(net, pts, True), _neighbour_sets(net, pts, False)
    assert len(amp) == len(fp32) == 4
    for layer, (a, b) in enumerate(zip(amp, fp32)):
        assert torch.equal(a, b), f"EdgeConv {layer + 1}: {float((a != b).any(-1).float().mean()):.0%} of points changed neighbours"


def _root():
    return Path(__file__).resolve().parent.parent


def test_paper_numbers_file_matches_the_module():
    "data/paper/table3.csv holds the paper's numbers the module uses, with their source."
    from s3d.paper.experiments.table3 import PAPER_TABLE3
    f = pd.read_csv(_root() / 'data' / 'paper' / 'table3.csv')
    for r in PAPER_TABLE3.itertuples():
        assert f.set_index('claim').loc[f'{r.model} overall accuracy', 'value'] == r.acc
        assert f.set_index('claim').loc[f'{r.model} parameters', 'value'] == r.params_M
    assert f.source.str.contains('paper').all()


def test_prose_matches_the_committed_results():
    "S3D - S2D at the last round, recomputed with pandas, is the number the verdict renders."
    from s3d.paper.report import render
    df = pd.read_csv(_root() / 'data' / 'results' / 'table3_cpu.csv')
    last = df[df['round'] == df[df.method == 'S3D']['round'].max()]
    d = last[last.method == 'S3D'].set_index('seed').acc - last[last.method == 'S2D'].set_index('seed').acc
    text = render('table3.verdict', _root())
    assert f'S3D - S2D = {d.mean():+.1f} points' in text and f'S3D ahead in {int((d > 0).sum())}/{len(d)}' in text
    assert f"0.5x {df[df.method == '0.5x'].acc.mean():.1f} %" in text
    row = render('table3.row', _root()).strip()
    assert row.startswith('| Table 3') and row.count(' | ') == 6 and '\n' not in row


def test_prose_follows_an_edited_result(tmp_path):
    "A changed accuracy in a copy of the results changes the verdict and the outcome."
    from s3d.paper.report import render
    (tmp_path / 'data' / 'results').mkdir(parents=True)
    df = pd.read_csv(_root() / 'data' / 'results' / 'table3_cpu.csv')
    df.to_csv(tmp_path / 'data' / 'results' / 'table3_cpu.csv', index=False)
    before = {n: render(n, tmp_path) for n in ('table3.verdict', 'table3.outcome', 'table3.controls')}
    df.loc[df.method == 'S3D', 'acc'] += 3.0
    df.to_csv(tmp_path / 'data' / 'results' / 'table3_cpu.csv', index=False)
    assert all(render(n, tmp_path) != t for n, t in before.items())


def test_paper_cost_covers_every_run_of_the_paper_scale():
    "The projected GPU-hours count every run `s3d reproduce table3 --scale paper` makes, the three controls included."
    from s3d.paper.report import render
    from s3d.paper.experiments.table3 import SCALES, paper_cost, table3_runs
    c = paper_cost()
    assert c.run.tolist() == [r['key'] for r in table3_runs(SCALES['paper'])]
    assert {'random growth', 'Net2Net', 'scratch'} <= set(c.method)
    assert f'about {c.gpu_hours.sum():.0f} GPU-hours for the {len(c)} runs' in render('table3.cost', _root())
