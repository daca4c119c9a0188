"Tests of the `s3d` command line (`s3d reproduce ...`) and the run utilities."
import os, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
from s3d.paper.cli import main
from s3d.paper.runs import DataError, atomic_write_text, is_done

ROOT = Path(__file__).resolve().parents[1]

def _s3d(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 's3d', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

def test_reproduce_fig2_smoke_writes_skips_and_forces(tmp_path):
    r = _s3d('reproduce', 'fig2', '--scale', 'smoke', '--device', 'cpu', '--out', 'tmp', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / 'tmp'
    for name in ['fig2.csv', 'fig2_rounds.csv', 'fig2_neurons.csv', 'fig2.png', 'fig2.pdf', 'fig2.md', 'fig2_config.json']:
        assert (out / name).stat().st_size > 0, name
    df = pd.read_csv(out / 'fig2.csv')
    assert {'method', 'c', 'm', 'round', 'neurons', 'iteration', 'loss'} <= set(df.columns)
    assert set(df.method) == {'S2D', 'S3D', 'S2D+S3D'} and len(df) > 10
    assert 'wall time' in r.stdout
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]  # no temp files left
    mtime = (out / 'fig2.csv').stat().st_mtime_ns
    # rerun: reuses the CSV files
    r2 = _s3d('reproduce', 'fig2', '--scale', 'smoke', '--out', 'tmp', cwd=tmp_path)
    assert r2.returncode == 0 and 'reusing' in r2.stdout and 'trained' not in r2.stdout
    assert (out / 'fig2.csv').stat().st_mtime_ns == mtime
    # a missing figure is redrawn from the CSV without training
    (out / 'fig2.png').unlink()
    r3 = _s3d('reproduce', 'fig2', '--scale', 'smoke', '--out', 'tmp', cwd=tmp_path)
    assert r3.returncode == 0 and 'trained' not in r3.stdout and (out / 'fig2.png').exists()
    # --force recomputes
    r4 = _s3d('reproduce', 'fig2', '--scale', 'smoke', '--out', 'tmp', '--force', cwd=tmp_path)
    assert r4.returncode == 0 and 'trained' in r4.stdout
    assert (out / 'fig2.csv').stat().st_mtime_ns != mtime

def test_not_implemented_experiment_exits_nonzero(capsys):
    assert main(['reproduce', 'table2']) != 0
    assert 'not implemented yet' in capsys.readouterr().err

def test_unknown_experiment_and_bad_args(capsys):
    assert main(['reproduce', 'fig9']) != 0
    assert 'invalid choice' in capsys.readouterr().err
    assert main(['reproduce', 'fig2', '--scale', 'huge']) != 0
    assert 'invalid choice' in capsys.readouterr().err
    assert main(['reproduce', 'fig2', '--device', 'tpu']) == 2
    assert 'device' in capsys.readouterr().err
    assert main([]) != 0

def test_data_error_is_one_line(monkeypatch, capsys):
    import s3d.paper.cli as cli
    def broken(**kw): raise DataError('dataset missing under data/x')
    monkeypatch.setattr(cli, '_broken_for_test', broken, raising=False)
    monkeypatch.setitem(cli.EXPERIMENTS, 'table2', 's3d.paper.cli:_broken_for_test')
    assert main(['reproduce', 'table2']) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'table2: data error: dataset missing under data/x'

def test_is_done_needs_matching_config(tmp_path):
    p = atomic_write_text(tmp_path / 'a.csv', 'x\n1\n')
    atomic_write_text(tmp_path / 'cfg.json', '{"scale": "smoke"}')
    assert is_done([p], tmp_path / 'cfg.json', {'scale': 'smoke'})
    assert not is_done([p], tmp_path / 'cfg.json', {'scale': 'cpu'})
    assert not is_done([p], tmp_path / 'cfg.json', {'scale': 'smoke'}, force=True)

def test_all_runs_implemented_and_reports_the_rest(tmp_path, capsys):
    code = main(['reproduce', 'all', '--scale', 'smoke', '--device', 'cpu', '--out', str(tmp_path)])
    cap = capsys.readouterr()
    assert code != 0
    assert 'not implemented yet: table2, table3' in cap.err
    assert (tmp_path / 'table1_smoke.csv').exists()
    assert (tmp_path / 'fig2.csv').exists() and (tmp_path / 'fig2.md').exists()
    assert (tmp_path / 'fig1.png').exists() or 'fig1: not implemented yet' in cap.err

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
