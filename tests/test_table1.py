"End-to-end test of `s3d reproduce table1 --scale smoke` (fake CIFAR-100), its reuse, and data errors."
import os, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from s3d.paper.data import make_fake_cifar100, DataError
from s3d.paper.experiments.table1 import SCALES, data_root, table1_runs, s3d_vs_s2d, verdict
from s3d.paper.baselines import prune_channels
from conftest import copy_root, edit_paper_value, edit_recipe

ROOT = Path(__file__).resolve().parents[1]

def _s3d(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 's3d', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

@pytest.mark.parametrize('content', [b'not a pickle', b'\x80\x02 truncated'])
def test_table1_corrupt_cifar_is_one_line_error(tmp_path, capsys, content):
    from s3d.paper.cli import main
    folder = make_fake_cifar100(tmp_path / 'data', 8, 4)
    (folder / 'train').write_bytes(content)
    code = main(['reproduce', 'table1', '--scale', 'smoke', '--device', 'cpu', '--data', str(tmp_path / 'data'), '--out', str(tmp_path / 'res')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and err[0].startswith('table1: data error: corrupt CIFAR-100 file') and 'train' in err[0], err

def test_paper_scale_missing_data_names_the_file(tmp_path):
    with pytest.raises(DataError, match='cifar-100-python'):
        data_root(SCALES['paper'], data=tmp_path)
    with pytest.raises(DataError, match='cifar-100-python'):   # smoke too: fake data only when asked for
        data_root(SCALES['smoke'], data=tmp_path)

def test_paper_runs_cover_every_method():
    runs = table1_runs(SCALES['paper'])
    meths = {r['method'] for r in runs}
    assert {'S2D', 'S3D', 'full', '0.25x', '0.5x', '0.75x', 'L1 pruning', 'BN pruning', 'MorphNet'} <= meths
    assert {r['c'] for r in runs if r['method'] == 'S3D'} >= {1.5, 2.0, 3.0, 5.0}
    assert {r['setting'] for r in runs} == {'params', 'energy', 'baseline'}
    cfg = SCALES['paper']
    assert cfg.rounds == 5 and cfg.m == 2 and cfg.epochs == 160 and cfg.seed_widths == (32,) * 14

def test_prune_channels_keeps_function_of_kept_channels():
    import torch
    cfg = SCALES['smoke']
    net = cfg.model(cfg.full_widths).eval()
    with torch.no_grad():  # channels 4.. of the stem output nothing: removing them keeps the function
        net.stem.bn.weight[4:] = 0; net.stem.bn.bias[4:] = 0
    x = torch.randn(3, 3, 32, 32)
    y0 = net(x)
    prune_channels(net, cfg.example(), {'stem.conv': torch.arange(4)})
    assert net.widths[0] == 4
    torch.testing.assert_close(net(x), y0, atol=1e-5, rtol=1e-5)

def test_s3d_vs_s2d_pairs_by_seed():
    df = pd.DataFrame(dict(setting='params', round=[2] * 4, c=[1., 1., 3., 3.], seed=[0, 1, 0, 1], acc=[50., 60., 52., 61.]))
    v = s3d_vs_s2d(df, 3.)
    assert v['n'] == 2 and v['wins'] == 2 and abs(v['mean'] - 1.5) < 1e-9
    # diffs 2 and 1: mean 1.5, sd 0.707, t(0.975, 1) = 12.706 -> half width 6.35: the interval includes 0
    assert abs(v['hi'] - v['mean'] - 12.7062 * 0.70711 / 2 ** 0.5) < 1e-3 and verdict(v).startswith('not resolved')

def test_verdict_needs_the_interval_to_exclude_zero():
    df = pd.DataFrame(dict(setting='params', round=1, c=[1.] * 4 + [3.] * 4, seed=[0, 1, 2, 3] * 2,
                           acc=[50., 60., 55., 52., 51., 61.2, 56., 52.9]))
    v = s3d_vs_s2d(df, 3.)   # diffs 1.0, 1.2, 1.0, 0.9: all positive, small spread
    assert v['lo'] > 0 and verdict(v).startswith('S3D higher')
    v1 = s3d_vs_s2d(df[df.seed == 0], 3.)
    assert v1['n'] == 1 and verdict(v1) == 'not resolved (one seed: no interval)'


def test_download_uses_torchvision_then_checks_the_files(tmp_path, monkeypatch):
    "--download hands a missing CIFAR-100 to torchvision's downloader (offline here: a stand-in writes the files)."
    import torchvision.datasets
    calls = []
    class FakeCIFAR100:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download)); make_fake_cifar100(root, 4, 2)
    monkeypatch.setattr(torchvision.datasets, 'CIFAR100', FakeCIFAR100)
    assert data_root(SCALES['paper'], data=tmp_path, download=True) == tmp_path
    assert calls == [(str(tmp_path), True)]
    assert data_root(SCALES['paper'], data=tmp_path, download=True) == tmp_path and len(calls) == 1   # there: no second download
    def offline(*a, **kw): raise OSError('<urlopen error [Errno -3] Temporary failure in name resolution>')
    monkeypatch.setattr(torchvision.datasets, 'CIFAR100', offline)
    with pytest.raises(DataError, match='could not download CIFAR-100 into .*name resolution'):
        data_root(SCALES['paper'], data=tmp_path / 'elsewhere', download=True)

def test_controls_follow_s3d_and_go_stale_with_its_widths(tmp_path):
    from s3d.paper.experiments.table1 import run_is_done, _run_config
    from s3d.paper.runs import atomic_write_json
    cfg = SCALES['cpu']
    runs = table1_runs(cfg); keys = [r['key'] for r in runs]
    ctl = [r for r in runs if 'growth' in r]
    assert len(ctl) == 3 * len(cfg.seeds) and {r['method'] for r in ctl} == {'random growth', 'Net2Net', 'scratch'}
    assert all(r['after'] == f"S3D-c{cfg.c:g}-s{r['seed']}" and keys.index(r['after']) < keys.index(r['key']) for r in ctl)
    r = ctl[0]; s3d = tmp_path / r['after']; s3d.mkdir()
    pd.DataFrame(dict(round=[0, 1], widths=['[4, 8, 8, 16]', '[5, 9, 10, 20]'])).to_csv(s3d / 'rows.csv', index=False)
    (tmp_path / r['key']).mkdir(); (tmp_path / r['key'] / 'rows.csv').write_text('x\n')
    atomic_write_json(tmp_path / r['key'] / 'config.json', _run_config(r, cfg, 'digits', tmp_path))
    assert run_is_done(r, cfg, tmp_path, 'digits')
    pd.DataFrame(dict(round=[0, 1], widths=['[4, 8, 8, 16]', '[6, 9, 10, 20]'])).to_csv(s3d / 'rows.csv', index=False)
    assert not run_is_done(r, cfg, tmp_path, 'digits')   # S3D grew differently: the control is redone

def test_vs_controls_pairs_each_control_by_seed():
    from s3d.paper.experiments.table1 import vs_controls
    df = pd.DataFrame(dict(method=['S2D', 'S3D', 'random growth', 'Net2Net', 'scratch'] * 2, round=1, seed=[0] * 5 + [1] * 5,
                           c=[1., 3., np.nan, np.nan, np.nan] * 2, acc=[90., 91, 93, 90.5, 95, 92, 92.5, 94, 92, 96]))
    v = vs_controls(df, 3.).set_index('comparison')
    assert abs(v.loc['S3D - random growth', 'diff'] - (-1.75)) < 1e-9 and v.loc['S3D - random growth', 'wins'] == '0/2'
    assert abs(v.loc['S2D - scratch', 'diff'] - (-4.5)) < 1e-9 and len(v) == 6

def test_readme_and_help_state_the_cpu_run_count():
    "The README and `--help` give the cpu scale's number of runs; it must be what `table1_runs` lists (135, not 105)."
    from s3d.paper.cli import ABOUT
    n = len(table1_runs(SCALES['cpu']))
    assert f'`--scale cpu` ({n} runs,' in (ROOT / 'README.md').read_text()
    assert f'cpu (digits) {n} runs,' in ABOUT['table1'][1]


# --- prose rendered from the committed results (issue 23) ---------------------------------------------------------
from scipy import stats
from s3d.paper.report import render

RENDERERS = ['table1.paper', 'table1.verdict', 'table1.controls', 'table1.baselines', 'table1.ours', 'table1.setup',
             'fig3.caption', 'table1.row', 'fig3.row']
_FILES = ('data/results/table1_cpu.csv', 'data/results/table1_cpu.md', 'data/paper/table1.csv')


def _copy_root(tmp_path):
    "A stand-in repository root holding copies of the files the renderers read."
    return copy_root(tmp_path, _FILES, ROOT)


def _last_params(df):
    p = df[df.setting == 'params']
    return p[p['round'] == p['round'].max()]


def _paired(a, b):
    d = (a - b).dropna()
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_verdict_matches_the_committed_csv_recomputed_here():
    df = pd.read_csv(ROOT / _FILES[0])
    last = _last_params(df)
    s3, s2 = last[last.c == 3].set_index('seed').acc, last[last.c == 1].set_index('seed').acc
    m, lo, hi = _paired(s3, s2)
    txt = render('table1.verdict', ROOT)
    assert f'{s3.mean():.2f} %' in txt and f'{s2.mean():.2f} %' in txt and f'[{lo:+.2f}, {hi:+.2f}]' in txt, txt
    assert ('not resolved' in txt) == (lo < 0 < hi)
    row = render('table1.row', ROOT)
    assert row.count(' | ') == 6 and f'[{lo:+.2f}, {hi:+.2f}]' in row and 'paper scale: not run' in row


def test_baselines_controls_and_c_sweep_match_the_csv():
    df = pd.read_csv(ROOT / _FILES[0])
    last = _last_params(df)
    s3 = last[last.c == 3].set_index('seed').acc
    half = df[df.method == '0.5x'].set_index('seed').acc
    m, lo, hi = _paired(s3, half)
    assert f'{m:+.2f} [{lo:+.2f}, {hi:+.2f}]' in render('table1.baselines', ROOT)
    rnd = last[last.method == 'random growth'].set_index('seed').acc
    m, lo, hi = _paired(s3, rnd)
    assert f'{m:+.2f} points, 95 % interval [{lo:+.2f}, {hi:+.2f}]' in render('table1.controls', ROOT)
    c5 = last[last.c == 5].acc
    assert f'{c5.mean():.2f} % at c = 5 (n = {len(c5)})' in render('fig3.caption', ROOT)


def test_paper_numbers_come_from_the_paper_csv():
    p = pd.read_csv(ROOT / _FILES[2])
    s3 = p[(p.model == 'S3D-5') & (p.metric == 'accuracy')].value.item()
    assert f'{s3:.2f} %' in render('table1.paper', ROOT) and set(p.source.str.contains('S3D paper'))


@pytest.mark.parametrize('name', RENDERERS)
def test_editing_a_result_file_changes_the_text(tmp_path, name):
    root = _copy_root(tmp_path)
    before = render(name, root)
    if name == 'table1.paper':
        edit_paper_value(root, _FILES[2], 'S3D-5', 'accuracy', 71.23)
    elif name == 'table1.setup':
        edit_recipe(root, _FILES[1])
    else:
        df = pd.read_csv(root / _FILES[0])
        k = (df.method == 'S3D') & (df.setting == 'params') & (df.c == 3) & (df['round'] == 5) & (df.seed == 0)
        assert k.sum() == 1
        df.loc[k, 'acc'] -= 2.5
        df.to_csv(root / _FILES[0], index=False)
    assert render(name, root) != before


def test_report_refactor_keeps_the_committed_report():
    "The report written from the committed CSV keeps the committed verdict lines and table."
    from s3d.paper.experiments.table1 import table1_report
    md = (ROOT / _FILES[1]).read_text()
    new = table1_report(pd.read_csv(ROOT / _FILES[0]), SCALES['cpu'], 'x')
    keep = lambda t: [l for l in t.splitlines() if l.startswith(('- ', '| ', 'Recipe:'))]
    assert keep(new) == keep(md)


def test_fig3_says_what_it_shows():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from s3d.paper.experiments.table1 import plot_fig3, fig3_where
    fig = plot_fig3(pd.read_csv(ROOT / _FILES[0]), 3.0, fig3_where(SCALES['cpu']))
    try:
        assert 'digits' in fig._suptitle.get_text() and '±1 sd' in fig._suptitle.get_text()
        assert all(a.get_xlabel() and a.get_ylabel() and a.get_title() for a in fig.axes)
        labels = [l for a in fig.axes for l in a.get_legend_handles_labels()[1]]
        assert all('(n ' in l for l in labels), labels
        assert {t.get_text() for t in fig.axes[2].texts} == {'n=10', 'n=3'}
    finally:
        plt.close(fig)


def test_experiment_notebook_shows_what_the_results_say_now():
    "Every rendered cell of table1_cifar stores what its renderer makes from the committed files (re-execute if not)."
    from test_prose import SHOWS  # one reader of stored renders, shared with the prose test

    cells = [(names, mds + [None] * len(names)) for p, _, names, mds in SHOWS if p.endswith('table1_cifar.ipynb')]
    shown = [(n, md) for names, mds in cells for n, md in zip(names, mds)]
    assert {n for n, _ in shown} >= {'table1.paper', 'table1.verdict', 'fig3.caption', 'table1.controls', 'table1.baselines'}
    for name, md in shown:
        assert md == render(name, ROOT), f'{name}: the stored output differs from the results; re-execute the notebook'
