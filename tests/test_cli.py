"""Tests of the `s3d` command line: fail fast with one line, Ctrl-C / SIGTERM that keep finished work and resume,
no silent fake data, results independent of threads and worker processes, byte-identical reruns, a clean git status."""
import os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
import torch
from s3d.paper.cli import main
from s3d.paper.runs import DataError, Experiment, atomic_write_text, is_done

ROOT = Path(__file__).resolve().parents[1]

def _env(threads='1'):
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS=threads)

def _s3d(*args, cwd, threads='1'):
    return subprocess.run([sys.executable, '-m', 's3d', *args], cwd=cwd, env=_env(threads), capture_output=True, text=True, timeout=600)

def _popen(*args, cwd):
    return subprocess.Popen([sys.executable, '-m', 's3d', *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

def _results(out):
    "Every result file directly under `out` (not the run folders), by name."
    return {p.name: p.read_bytes() for p in Path(out).iterdir() if p.is_file()}

@pytest.fixture(scope='module')
def smoke_all(tmp_path_factory):
    "`s3d reproduce all --scale smoke --fake-data` with the default output folder, in a fresh git repository."
    repo = tmp_path_factory.mktemp('repo')
    shutil.copy(ROOT / '.gitignore', repo / '.gitignore')
    git = lambda *a: subprocess.run(['git', *a], cwd=repo, capture_output=True, text=True, check=True).stdout
    git('init', '-q'); git('add', '.gitignore')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'init')
    r = _s3d('reproduce', 'all', '--scale', 'smoke', '--fake-data', '--jobs', '1', cwd=repo)
    return repo, r, git

def test_all_runs_every_experiment(smoke_all):
    repo, r, git = smoke_all
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'not implemented yet' not in r.stderr
    out = repo / 'data' / 'reproduced'
    for name in ['fig1.png', 'fig2_smoke.csv', 'fig2_smoke_rounds.csv', 'fig2_smoke.png', 'fig2_smoke.pdf', 'fig2_smoke.md',
                 'table1_smoke.csv', 'table1_smoke.md', 'fig3_smoke.png', 'fig3_smoke.pdf',
                 'table2_smoke.csv', 'table2_smoke.md', 'table2_smoke.png', 'table3_smoke.csv', 'table3_smoke.md', 'table3_smoke.png']:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.rglob('*.tmp'))

def test_main_command_leaves_git_status_clean(smoke_all):
    repo, r, git = smoke_all
    assert git('status', '--porcelain') == ''

def test_fake_data_says_so_and_table1_contents(smoke_all, capsys):
    repo, r, git = smoke_all
    out = repo / 'data' / 'reproduced'
    md = (out / 'table1_smoke.md').read_text()
    assert md.startswith('# FAKE DATA') and '--fake-data' in md and 'Config fingerprint' in md
    assert 'thread(s) per run' in md and torch.__version__ in md
    df = pd.read_csv(out / 'table1_smoke.csv')
    assert {'S2D', 'S3D', 'full', 'L1 pruning', 'BN pruning', 'MorphNet'} <= set(df.method)
    assert set(df.setting) == {'params', 'energy', 'baseline'} and 'seconds' not in df.columns
    capsys.readouterr()
    assert main(['reproduce', 'list', '--out', str(out)]) == 0   # in this process: no second torch import
    lst = capsys.readouterr().out
    assert 'fig2    smoke  current' in lst and 'table1  smoke  stale' in lst and '(FAKE DATA)' in lst

def test_same_bytes_whatever_threads_and_jobs(smoke_all, tmp_path):
    "The writer run again with other OMP_NUM_THREADS and --jobs: every result file is byte-identical."
    repo, r, git = smoke_all
    r2 = _s3d('reproduce', 'all', '--scale', 'smoke', '--fake-data', '--jobs', '2', '--out', str(tmp_path), cwd=repo, threads='2')
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _results(repo / 'data' / 'reproduced'), _results(tmp_path)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []

def test_rerun_reuses_and_redraws(smoke_all, capsys, monkeypatch):
    repo, r, git = smoke_all
    out = repo / 'data' / 'reproduced'
    (out / 'fig2_smoke.png').unlink()
    monkeypatch.chdir(repo)   # the default --out, data/reproduced, is relative to the working folder
    capsys.readouterr()
    assert main(['reproduce', 'fig2', '--scale', 'smoke', '--jobs', '1']) == 0   # in this process: no second torch import
    stdout = capsys.readouterr().out
    assert 'reusing' in stdout and 'jobs finished' not in stdout
    assert (out / 'fig2_smoke.png').exists() and git('status', '--porcelain') == ''

def _wait_for(cond, proc, timeout=300):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)

def test_fig2_sigint_keeps_jobs_and_sigterm_after_resume(tmp_path):
    runs = tmp_path / 'fig2_cpu_runs'
    p = _popen('reproduce', 'fig2', '--scale', 'cpu', '--jobs', '1', '--out', str(tmp_path), cwd=tmp_path)
    _wait_for(lambda: len(list(runs.glob('*.job.json'))) >= 2, p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith('fig2: interrupted (Ctrl-C); kept: ') and 'rerun the same command to resume' in last
    assert 'Traceback' not in err and 'Warning' not in err
    kept = len(list(runs.glob('*.job.json')))
    assert f'kept: {kept} of 163 jobs' in last
    # the rerun resumes at the first unfinished job and says so; SIGTERM then stops it with 143
    p = _popen('reproduce', 'fig2', '--scale', 'cpu', '--jobs', '1', '--out', str(tmp_path), cwd=tmp_path)
    line = p.stdout.readline()
    assert line.startswith(f'fig2: resuming: reused {kept} of 163 finished jobs'), line
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert 'terminated (SIGTERM)' in err.strip().splitlines()[-1] and 'Traceback' not in err
    assert not list(tmp_path.rglob('*.tmp')) and not (tmp_path / 'fig2_cpu.csv').exists()

def test_table1_sigint_in_workers_then_resume_gives_the_same_csv(smoke_all, tmp_path):
    repo, r, git = smoke_all
    runs = tmp_path / 'table1_smoke_runs'
    args = ('reproduce', 'table1', '--scale', 'smoke', '--fake-data', '--out', str(tmp_path))
    p = _popen(*args, '--jobs', '2', cwd=tmp_path)
    _wait_for(lambda: len(list(runs.glob('*/config.json'))) >= 1, p)   # config.json: written last, when a run is finished
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    kept = len(list(runs.glob('*/config.json')))
    assert 'Traceback' not in err and 'Warning' not in err
    from s3d.paper.experiments.table1 import SCALES, table1_runs
    n = len(table1_runs(SCALES['smoke']))   # 13: S2D, S3D, baselines, c sweep, energy-aware, 3 controls
    assert err.strip().splitlines()[-1].startswith(f'table1: interrupted (Ctrl-C); kept: {kept} of {n} runs finished')
    assert not list(tmp_path.rglob('*.tmp'))
    r2 = _s3d(*args, '--jobs', '1', cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f'reused {kept} of' in r2.stdout
    assert (tmp_path / 'table1_smoke.csv').read_bytes() == (repo / 'data' / 'reproduced' / 'table1_smoke.csv').read_bytes()

@pytest.mark.parametrize('where', ['file', 'under_file', 'proc'])
def test_bad_out_fails_at_once_with_one_line(tmp_path, capsys, where):
    f = tmp_path / 'a_file'; f.write_text('x')
    out = {'file': f, 'under_file': f / 'sub', 'proc': Path('/proc/s3d-cannot-be-here')}[where]
    t0 = time.time()
    code = main(['reproduce', 'fig2', '--scale', 'cpu', '--out', str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and time.time() - t0 < 5
    assert len(err) == 1 and err[0].startswith(f'fig2: output error: output folder {out}')

def test_missing_data_without_fake_data_is_an_error(tmp_path, capsys):
    code = main(['reproduce', 'table1', '--scale', 'smoke', '--data', str(tmp_path / 'nothing'), '--out', str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1
    assert err[0].startswith('table1: data error: missing CIFAR-100 file') and '--download' in err[0]
    assert not (tmp_path / 'table1_smoke_runs').exists()   # nothing computed, nothing faked

def test_ignored_options_warn_in_one_line(capsys):
    from s3d.paper.experiments import fig2, table1
    assert table1.check('cpu', data='data') == ["scale cpu uses scikit-learn's digits (installed with it): --data ignored"]
    assert fig2.check('smoke', fake_data=True, download=True) == ['fig2 fits synthetic RBF targets and needs no dataset: --fake-data, --download ignored']
    assert table1.check('cpu') == [] and fig2.check('cpu') == []

@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_unavailable_device_is_exit_5(capsys, tmp_path):
    assert main(['reproduce', 'fig2', '--device', 'cuda', '--out', str(tmp_path)]) == 5
    assert capsys.readouterr().err.strip().splitlines() == ["fig2: device error: device 'cuda' was asked for but CUDA is not available here; use --device cpu or auto"]

def test_not_implemented_and_bad_args(capsys, monkeypatch):
    import s3d.paper.cli as cli
    monkeypatch.setitem(cli.EXPERIMENTS, 'table2', Experiment('table2', 'no run yet'))
    assert main(['reproduce', 'table2']) == 6
    assert 'not implemented yet' in capsys.readouterr().err
    assert main(['reproduce', 'fig9']) == 2 and 'invalid choice' in capsys.readouterr().err
    assert main(['reproduce', 'fig2', '--scale', 'huge']) == 2 and 'invalid choice' in capsys.readouterr().err
    assert main(['reproduce', 'fig2', '--device', 'tpu']) == 2 and 'device' in capsys.readouterr().err
    assert main(['reproduce', 'fig2', '--jobs', '0']) == 2 and '--jobs' in capsys.readouterr().err
    assert main([]) != 0

def test_help_lists_experiments_times_and_exit_codes(capsys):
    assert main(['reproduce', '--help']) == 0
    out = capsys.readouterr().out
    for s in ['fig2', 'table1', 'time: smoke', 'exit codes:', '130', '143', '--download', '--fake-data', '--jobs']:
        assert s in out, s

def test_unexpected_error_is_one_line_unless_debug(monkeypatch, capsys, tmp_path):
    import s3d.paper.cli as cli
    def broken(**kw): raise RuntimeError('boom\nsecond line')
    monkeypatch.setitem(cli.EXPERIMENTS, 'table2', Experiment('table2', 'broken', run=broken))
    assert main(['reproduce', 'table2', '--out', str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == 'table2: failed: RuntimeError: boom (rerun with --debug for the traceback)'
    assert main(['reproduce', 'table2', '--out', str(tmp_path), '--debug']) == 1
    assert 'Traceback' in capsys.readouterr().err

def test_is_done_needs_matching_config(tmp_path):
    p = atomic_write_text(tmp_path / 'a.csv', 'x\n1\n')
    atomic_write_text(tmp_path / 'cfg.json', '{"scale": "smoke"}')
    assert is_done([p], tmp_path / 'cfg.json', {'scale': 'smoke'})
    assert not is_done([p], tmp_path / 'cfg.json', {'scale': 'cpu'})
    assert not is_done([p], tmp_path / 'cfg.json', {'scale': 'smoke'}, force=True)

def test_failed_write_keeps_the_old_file(tmp_path):
    from s3d.paper.runs import atomic_save_figure
    p = atomic_write_text(tmp_path / 'fig.png', 'old')
    class Broken:
        def savefig(self, buf, **kw): buf.write(b'half'); raise RuntimeError('interrupted')
    with pytest.raises(RuntimeError): atomic_save_figure(p, Broken())
    assert p.read_text() == 'old' and [q.name for q in tmp_path.iterdir()] == ['fig.png']

def test_interrupted_write_leaves_no_temp_file(tmp_path, monkeypatch):
    p = atomic_write_text(tmp_path / 'r.csv', 'old\n')
    def boom(fd): raise KeyboardInterrupt
    monkeypatch.setattr(os, 'fsync', boom)
    with pytest.raises(KeyboardInterrupt): atomic_write_text(p, 'new\n')
    assert p.read_text() == 'old\n' and [q.name for q in tmp_path.iterdir()] == ['r.csv']

def test_experiment_with_fewer_options_runs_with_a_warning(monkeypatch, capsys, tmp_path):
    "An experiment whose run() predates --jobs/--fake-data/--download still runs; a set option it cannot take is a warning."
    import s3d.paper.cli as cli
    def old_style(scale='cpu', device='auto', data=None, out='x', force=False): return []
    monkeypatch.setitem(cli.EXPERIMENTS, 'table2', Experiment('table2', 'old style', run=old_style))
    assert main(['reproduce', 'table2', '--out', str(tmp_path), '--jobs', '2']) == 0
    assert capsys.readouterr().err.strip() == 'table2: warning: --jobs is not supported by this experiment yet: ignored'

def test_error_leaves_no_new_output_folder_and_fake_data_with_data_is_refused(tmp_path, capsys):
    out = tmp_path / 'new' / 'out'
    assert main(['reproduce', 'table1', '--scale', 'smoke', '--data', str(tmp_path / 'nothing'), '--out', str(out)]) == 4
    assert not (tmp_path / 'new').exists()   # the folders the command created are gone again
    assert main(['reproduce', 'table1', '--scale', 'smoke', '--fake-data', '--data', str(tmp_path), '--out', str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('table1: error: --fake-data') and 'cannot be combined with --data' in err[-1]
    assert not (tmp_path / 'new').exists()
    assert main(['reproduce', 'table1', '--scale', 'smoke', '--data', str(tmp_path / 'nothing'), '--out', str(tmp_path)]) == 4
    assert tmp_path.exists()   # a folder that existed before is left alone

def test_interrupt_without_a_count_reports_the_finished_runs_on_disk(tmp_path, capsys, monkeypatch):
    "Ctrl-C after the last run finished (while the results are written) raises a plain KeyboardInterrupt."
    import s3d.paper.cli as cli
    runs = tmp_path / 'table1_smoke_runs'
    for k in 'abc': (runs / k).mkdir(parents=True); (runs / k / 'rows.csv').write_text('x')
    for k in 'ab': (runs / k / 'config.json').write_text('{}')   # written last: c is not finished
    def stopped(**kw): raise KeyboardInterrupt
    monkeypatch.setitem(cli.EXPERIMENTS, 'table1', Experiment('table1', 'stopped', run=stopped, check=lambda **kw: []))
    assert main(['reproduce', 'table1', '--scale', 'smoke', '--out', str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f'table1: interrupted (Ctrl-C); kept: 2 finished run(s) in {runs}; rerun the same command to resume'

def test_one_registration_is_a_whole_experiment(monkeypatch, capsys, tmp_path):
    "A new experiment is one `register_experiment(Experiment(...))` line: it is in --help, in list, and it runs."
    import s3d.paper.cli as cli
    calls = []
    def run(scale='cpu', device='auto', data=None, out='x', force=False):
        calls.append(scale)
        return [Path(out) / f'toy_{scale}.md']
    def files(scale, out): return [Path(out) / f'toy_{scale}.md']
    monkeypatch.setitem(cli.EXPERIMENTS, 'toy', Experiment('toy', 'placeholder'))   # removed after the test
    cli.register_experiment(Experiment('toy', 'A toy experiment for the tests', 'instant', run=run, files=files,
                                       check=lambda **kw: ['toy warns once']))
    assert main(['reproduce', '--help']) == 0
    out = capsys.readouterr().out
    assert any(l.split()[:3] == ['toy', 'A', 'toy'] for l in out.splitlines()) and 'time: instant' in out
    (tmp_path / 'toy_smoke.md').write_text('# toy')
    assert main(['reproduce', 'list', '--out', str(tmp_path)]) == 0
    lst = capsys.readouterr().out.splitlines()
    assert '  toy     smoke  present (its summary records no config fingerprint' in '\n'.join(lst)
    assert '  toy     cpu    missing' in lst
    assert main(['reproduce', 'toy', '--scale', 'smoke', '--out', str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert calls == ['smoke'] and 'toy: done in' in captured.out and 'toy: warning: toy warns once' in captured.err
    assert main(['reproduce', 'fig7']) == 2   # an unregistered name is still refused
