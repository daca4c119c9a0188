"Table 2 (ImageNet): the JPEG ImageFolder loader on real JPEG files, its errors, and `run('smoke')` end to end."
import os, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
import torch
from s3d.paper.runs import DataError
from s3d.paper.imagenet import JpegLoader, make_fake_imagefolder, scan_imagefolder, mobilenet_imagenet, write_imagefolder
from s3d.paper.experiments.table2 import SCALES, run, table2_data, table2_runs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision are deprecated")

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "3 classes x 4 training (2 validation) real JPEGs of about 40x40."
    return make_fake_imagefolder(tmp_path_factory.mktemp('imgs') / 'tiny', n_classes=3, per_class=4, val_per_class=2, size=40)

def _epoch(dl, epoch):
    dl.epoch = epoch
    xs, ys = zip(*dl)
    return torch.cat(xs), torch.cat(ys)

def test_loader_shapes_labels_and_seeded_augmentation(tiny):
    tr = scan_imagefolder(tiny)
    assert tr.classes == ['class00', 'class01', 'class02'] and len(tr) == 12
    dl = JpegLoader(tr, 5, size=24, seed=3, workers=0)
    x, y = _epoch(dl, 0)
    assert x.shape == (12, 3, 24, 24) and x.dtype == torch.float32 and sorted(y.tolist()) == tr.labels.tolist()
    x2, y2 = _epoch(JpegLoader(tr, 5, size=24, seed=3, workers=0), 0)
    assert torch.equal(x, x2) and torch.equal(y, y2)            # same seed and epoch: same batches
    x3, _ = _epoch(JpegLoader(tr, 5, size=24, seed=4, workers=0), 0)
    assert not torch.equal(x, x3)                                # another seed: other crops/order
    # labels follow the files: a class's images are the ones under its folder
    files = [tr.files[i] for i in range(len(tr))]
    assert all(Path(f).parent.name == tr.classes[l] for f, l in zip(files, tr.labels.tolist()))

def test_eval_loader_is_centre_crop_in_file_order(tiny):
    tr = scan_imagefolder(tiny); va = scan_imagefolder(tiny, 'val', tr.classes)
    x, y = _epoch(JpegLoader(va, 4, size=16, train=False, workers=0), 0)
    assert torch.equal(y, va.labels) and x.shape == (6, 3, 16, 16)
    xd, _ = _epoch(JpegLoader(va, 4, size=16, train=False, workers=0, decode='device'), 0)
    assert torch.allclose(x, xd)

def test_grey_jpegs_come_out_rgb(tmp_path):
    ims = [torch.full((1, 20, 30), 100 + 40 * i, dtype=torch.uint8) for i in range(2)]
    write_imagefolder(tmp_path, 'train', ims, [0, 1], ['a', 'b'])
    x, y = _epoch(JpegLoader(scan_imagefolder(tmp_path), 2, size=8, train=False, workers=0, mean=(0, 0, 0), std=(1, 1, 1)), 0)
    assert x.shape == (2, 3, 8, 8) and (x[1] > x[0]).all() and torch.allclose(x[:, 0], x[:, 2], atol=2 / 255)

@pytest.mark.parametrize('workers', [0, 1])
def test_corrupt_jpeg_is_one_line_data_error(tiny, tmp_path, workers):
    import shutil
    root = tmp_path / 'bad'; shutil.copytree(tiny, root)
    victim = scan_imagefolder(root).files[7]
    Path(victim).write_bytes(b'\xff\xd8\xff\xe0 truncated')
    with pytest.raises(DataError) as e: list(JpegLoader(scan_imagefolder(root), 4, size=16, workers=workers))
    assert victim in str(e.value) and '\n' not in str(e.value)

def test_missing_and_empty_folders_name_the_path(tmp_path):
    with pytest.raises(DataError, match='nowhere/train'): scan_imagefolder(tmp_path / 'nowhere')
    (tmp_path / 'd' / 'train' / 'cat').mkdir(parents=True)
    with pytest.raises(DataError, match='train/cat'): scan_imagefolder(tmp_path / 'd')
    (tmp_path / 'e' / 'train').mkdir(parents=True)
    with pytest.raises(DataError, match='no class folders'): scan_imagefolder(tmp_path / 'e')
    with pytest.raises(DataError, match='train'): table2_data(SCALES['paper'], tmp_path / 'nowhere')

def test_paper_config_matches_the_paper():
    from s3d.cost import count_params_flops
    p = SCALES['paper']
    macs = lambda w: count_params_flops(p.model(w), p.example(), macs=True)[1] / 1e9
    assert abs(macs(p.seed_widths) - 0.059) < 5e-4 and abs(macs(p.full_widths) - 0.569) < 5e-4
    assert p.rounds == 4 and p.m == 2 and p.image == 224
    assert {r['method'] for r in table2_runs(p)} == {'S2D', 'S3D', '0.5x', '0.75x', '1.0x', 'random growth', 'Net2Net', 'scratch'}
    assert mobilenet_imagenet(1000).strides[0] == 2

def test_smoke_run_end_to_end_on_real_jpegs(tiny, tmp_path):
    t0 = time.time()
    paths = run('smoke', 'cpu', data=tiny, out=tmp_path / 'res', progress=False)
    assert time.time() - t0 < 60
    df = pd.read_csv(paths[0])
    assert {'S2D', 'S3D', '0.5x', '0.75x', '1.0x', 'random growth', 'Net2Net', 'scratch'} == set(df.method)
    s3w = df[df.method == 'S3D'].sort_values('round').widths.tolist()
    for ctl in ('random growth', 'Net2Net'):   # the controls grow to S3D's widths at every round
        assert df[df.method == ctl].sort_values('round').widths.tolist() == s3w
    assert {'method', 'round', 'params', 'macs', 'flops', 'top1', 'top5'} <= set(df.columns)
    grown = df[df.method.isin(['S2D', 'S3D'])]
    assert sorted(set(grown['round'])) == list(range(SCALES['smoke'].rounds + 1))
    assert grown.groupby('key').macs.agg(lambda s: s.is_monotonic_increasing and s.iloc[-1] > s.iloc[0]).all()
    assert (df.top5 >= df.top1).all() and (df.flops > 2 * df.macs - 1).all()
    b = df[df.setting == 'baseline'].set_index('method').macs
    assert b['0.5x'] < b['0.75x'] < b['1.0x']
    md = Path(paths[1]).read_text()
    assert 'AMC' in md and 'He et al. (2018)' in md and 'S3D-2' in md
    assert all(Path(p).stat().st_size > 0 for p in paths)
    # a rerun reuses every finished run
    rows = tmp_path / 'res' / 'table2_smoke_runs' / 'E-S3D-c3-s0' / 'rows.csv'
    mt = rows.stat().st_mtime_ns
    run('smoke', 'cpu', data=tiny, out=tmp_path / 'res', progress=False)
    assert rows.stat().st_mtime_ns == mt

def test_cli_corrupt_data_is_one_line_exit_4(tiny, tmp_path):
    "Through the command line: one line naming the file, the data-error exit code 4, no traceback."
    import shutil
    root = tmp_path / 'bad'; shutil.copytree(tiny, root)
    victim = scan_imagefolder(root, 'val').files[0]; Path(victim).write_bytes(b'')
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 's3d', 'reproduce', 'table2', '--scale', 'smoke', '--device', 'cpu', '--data', str(root),
                        '--out', str(tmp_path / 'res')], env=env, capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()   # the progress bar (cleared on exit) may precede the message
    assert r.returncode == 4 and 'Traceback' not in r.stderr and victim in err[-1] and 'data error' in err[-1], r.stderr


def _realised_flops(model, x, sel, schemes):
    "FLOPs per sample of a copy of `model` after splitting the neurons `sel` (group name -> indices), counted by `s3d.cost`."
    import copy
    from s3d.cost import count_params_flops
    from s3d.graph import split_groups
    from s3d.surgery import apply_splits
    twin = copy.deepcopy(model)
    plan = [(g, sel[g.name], schemes[g.name][sel[g.name]]) for g in split_groups(twin, x) if len(sel[g.name])]
    apply_splits(twin, plan, 0.0)
    return count_params_flops(twin, x)[1]


def test_energy_budget_holds_for_the_grown_network_at_paper_widths():
    "Paper Table 2 config (seed MobileNetV1 widths, budget 2.1x the seed's FLOPs), small input: the linear sum of per-neuron"
    " costs admits a selection whose grown network overshoots; the selection `grow` makes keeps the realised cost within budget."
    from s3d.cost import count_params_flops
    from s3d.graph import split_groups
    from s3d.grow import GrowConfig, neuron_costs, select_round
    from s3d.schemes import SplitSchemes
    from s3d.select import select_neurons
    cfg = SCALES['paper']
    torch.manual_seed(0)
    model, x = cfg.model(cfg.seed_widths), torch.zeros(1, 3, 64, 64)
    groups = split_groups(model, x)
    schemes = {}
    for g in groups:   # every neuron a binary split with a random negative gain
        n = g.n_neurons
        schemes[g.name] = SplitSchemes(torch.tensor([[0.5, 0.5]]).repeat(n, 1), torch.zeros(n, 2, g.dim), torch.full((n,), 2),
                                       -torch.rand(n, dtype=torch.float64), ['binary'] * n)
    base = count_params_flops(model, x)[1]
    budget = cfg.growth * base
    costs = neuron_costs(model, x, 'flops')
    linear = select_neurons(schemes, budget=budget, costs=dict(costs))   # what the knapsack alone picks
    over = _realised_flops(model, x, linear, schemes) - base
    assert over > 1.1 * budget, f"the linear sum should under-count here: realised {over:.4g} vs budget {budget:.4g}"
    sel = select_round(schemes, GrowConfig(rounds=1, ratio=None, budget=budget, c=3.0), costs, groups, 1)
    added = _realised_flops(model, x, sel, schemes) - base
    assert added <= budget, f"grown network adds {added} FLOPs, over the budget {budget:.6g}"
    assert added == costs.added({k: len(v) for k, v in sel.items()})   # the count on a copy is the real one
    assert added > 0.9 * budget   # trimming stops near the budget, not far below it


def test_worker_decoded_crops_are_pinned_as_one_batch(tiny):
    "The DataLoader pins what the collate returns: it must be the stacked batch, which goes to the device as is (issue 18)."
    dl = JpegLoader(scan_imagefolder(tiny), 5, size=24, workers=0, decode='worker', seed=1)
    items, idx = next(iter(dl._dl))
    assert torch.is_tensor(items) and items.shape == (5, 3, 24, 24) and items.dtype == torch.uint8
    x, y = next(iter(JpegLoader(scan_imagefolder(tiny), 5, size=24, workers=0, decode='worker', seed=1)))
    assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32 and y.shape == (5,)


# --- prose rendered from the committed results (issue 23) ---------------------------------------------------------
import numpy as np
from s3d.paper.report import render
from conftest import copy_root, edit_paper_value, edit_recipe

RENDERERS = ['table2.paper', 'table2.verdict', 'table2.baselines', 'table2.controls', 'table2.ours', 'table2.setup',
             'table2.row']
_FILES = ('data/results/table2_cpu.csv', 'data/results/table2_cpu.md', 'data/paper/table2.csv')


def _copy_root(tmp_path):
    "A stand-in repository root holding copies of the files the renderers read."
    return copy_root(tmp_path, _FILES, ROOT)


def _top1(df, method, rnd):
    return df[(df.method == method) & (df['round'] == rnd)].top1.mean()


def test_verdict_and_row_match_the_committed_csv_recomputed_here():
    df = pd.read_csv(ROOT / _FILES[0])
    k = df[df.method == 'S3D']['round'].max()
    d = {r: _top1(df, 'S3D', r) - _top1(df, 'S2D', r) for r in range(1, k + 1)}
    txt = render('table2.verdict', ROOT)
    for r, v in d.items():
        assert f'{r} ({v:+.2f})' in txt, (r, v, txt)
    assert f"{_top1(df, 'S3D', k):.2f} %" in txt and 'not resolved (one seed: no interval)' in txt
    row = render('table2.row', ROOT)
    behind = sum(v < 0 for v in d.values())
    assert row.count(' | ') == 6 and f'behind S2D after {behind} of {k} splits' in row and 'paper scale: not run' in row


def test_multipliers_and_controls_match_the_csv():
    df = pd.read_csv(ROOT / _FILES[0])
    b = df[df.method == '0.75x'].iloc[0]
    g = df[df.method == 'S3D']
    near = g.iloc[int(np.argmin(np.abs(np.log(g.macs / b.macs))))]   # the S3D split nearest in MACs
    txt = render('table2.baselines', ROOT)
    assert f"0.75x: {b.top1:.2f} % at {b.macs / 1e6:.3g} M MACs" in txt
    assert f"S3D-{int(near['round'])} ({near.top1:.2f} % at {near.macs / 1e6:.3g} M)" in txt, txt
    sc = df[(df.method == 'scratch') & (df['round'] == df['round'].max())].top1.mean()
    assert f'scratch reaches {sc:.2f} %' in render('table2.controls', ROOT)


def test_paper_numbers_come_from_the_paper_csv_and_match_the_package():
    from s3d.paper.experiments.table2 import PAPER_TABLE2
    p = pd.read_csv(ROOT / _FILES[2]).pivot(index='model', columns='metric', values='value')
    for r in PAPER_TABLE2.itertuples():
        assert p.loc[r.model, 'top1'] == r.top1 and p.loc[r.model, 'macs'] == r.macs_G
    d = [p.loc[f'S3D-{k}', 'top1'] - p.loc[f'S2D-{k}', 'top1'] for k in range(1, 5)]
    assert f'by {min(d):.2f} to {max(d):.2f} points' in render('table2.paper', ROOT)


@pytest.mark.parametrize('name', RENDERERS)
def test_editing_a_result_file_changes_the_text(tmp_path, name):
    root = _copy_root(tmp_path)
    before = render(name, root)
    if name == 'table2.paper':
        edit_paper_value(root, _FILES[2], 'S3D-4', 'top1', 75.01)
    elif name == 'table2.setup':
        edit_recipe(root, _FILES[1])
    else:
        df = pd.read_csv(root / _FILES[0])
        for meth in ('S3D', '0.75x'):   # the multipliers' renderer reads the baseline, the others S3D
            k = (df.method == meth) & (df['round'] == df[df.method == meth]['round'].max())
            assert k.sum() == 1
            df.loc[k, 'top1'] -= 1.5
        df.to_csv(root / _FILES[0], index=False)
    assert render(name, root) != before


def test_table2_figure_has_readable_log_ticks_and_says_the_data():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from s3d.paper.experiments.table2 import plot_table2
    fig = plot_table2(pd.read_csv(ROOT / _FILES[0]), 'cpu')
    try:
        a, b = fig.axes
        assert 'digits' in a.get_title() and 'ImageNet' in b.get_title()
        for ax in fig.axes:
            labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
            assert ax.get_xscale() == 'log' and len(labels) >= 4, labels
            assert ax.get_xlabel() and ax.get_ylabel()
    finally:
        plt.close(fig)


def test_experiment_notebook_shows_what_the_results_say_now():
    "Every rendered cell of table2_imagenet stores what its renderer makes from the committed files."
    from test_prose import SHOWS  # one reader of stored renders, shared with the prose test

    cells = [(names, mds + [None] * len(names)) for p, _, names, mds in SHOWS if p.endswith('table2_imagenet.ipynb')]
    shown = [(n, md) for names, mds in cells for n, md in zip(names, mds)]
    assert {n for n, _ in shown} >= {'table2.paper', 'table2.verdict', 'table2.baselines', 'table2.controls'}
    for name, md in shown:
        assert md == render(name, ROOT), f'{name}: the stored output differs from the results; re-execute the notebook'
