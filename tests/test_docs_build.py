"""The documentation site builds: `nbdev-proc-nbs` (the first step of `nbdev-docs`: everything but Quarto) passes
on every notebook without a warning.

How nbdev decides what to run (nbdev 3, `nbdev.processors.exec_show_docs` and `_do_eval`): in each notebook that
has exported or `show_doc` cells it starts a fresh IPython shell and executes, in order, only

- exported cells (`#| export`, `exports`, `exporti`, `exec_doc`),
- `show_doc(...)` cells (its own, added after each exported definition, and any written by hand),
- every other code cell that holds an `import` statement *anywhere* (also inside a `def`, `with` or `if`),

skipping cells flagged `#| eval: false`. It warns "Found cells containing imports and other code" when such a
cell also has top-level expressions or assignments, and the build stops when a cell it runs uses a name from a
cell it does not run. Hence the rule every notebook follows: **a cell that imports holds nothing but imports**
(exported cells excepted: they run in full, as the module does). `test_imports_alone` checks the rule in
milliseconds and names the offending cells; `test_proc_nbs` runs the real `nbdev-proc-nbs` in a copy of the
checkout (it writes `_proc/`, `nbs/_quarto.yml`, `nbs/nbdev.yml` and `nbs/sidebar.yml`) and fails on any
warning, error or executed cell that prints to stderr.
"""
import ast, json, os, shutil, subprocess, sys, tempfile
from pathlib import Path

import pytest
from fastcore.nbio import read_nb
from nbdev.process import NBProcessor

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
_RUN_IN_FULL = {'export', 'exports', 'exporti', 'exec_doc'}   # nbdev executes these cells whole
_IMPORT = (ast.Import, ast.ImportFrom)


def notebooks() -> list[Path]:
    return sorted(p for p in NBS.rglob('*.ipynb') if not any(part.startswith(('.', '_')) for part in p.parts))


def mixed_import_cells(path: Path) -> list[tuple[int, str]]:
    "(index, first line) of the cells in `path` that nbdev's doc build executes for an import but hold other code."
    nb = read_nb(path)
    NBProcessor(nb=nb, procs=[], rm_directives=False)   # sets `cell.directives_` as the doc build reads them
    bad = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != 'code' or not cell.source: continue
        d = cell.directives_
        if d.keys() & _RUN_IN_FULL or str(d.get('eval', '')).lower() == 'false': continue
        trees = cell.parsed_() or []
        if not any(isinstance(n, _IMPORT) for t in trees for n in ast.walk(t)): continue
        if all(isinstance(t, _IMPORT) for t in trees): continue
        first = next(l for l in cell.source.splitlines() if l.strip() and not l.startswith('#|'))
        bad.append((i, first[:80]))
    return bad


def test_imports_alone():
    "Every cell that imports (and is not exported) holds only imports: put the imports in a cell of their own."
    bad = [f'{p.relative_to(ROOT)} cell {i}: {line}' for p in notebooks() for i, line in mixed_import_cells(p)]
    assert not bad, 'cells mixing imports with other code (nbdev-proc-nbs runs them alone):\n' + '\n'.join(bad)


def test_rule_catches_mixed_cells(tmp_path):
    "The check flags a top-level mix, an import nested in a block, and passes import-only and exported cells."
    def cell(src): return dict(cell_type='code', execution_count=None, metadata={}, outputs=[], source=src)
    nb = dict(nbformat=4, nbformat_minor=5, metadata={}, cells=[
        cell('import math\nfrom pathlib import Path'), cell('#| export\nimport math\nx = math.pi'),
        cell('import math\nx = math.pi'), cell('def f():\n    import math\n    return math.pi'),
        cell('#| eval: false\nimport math\nx = 1'), cell('for i in range(2): pass')])
    p = tmp_path / 'nb.ipynb'
    p.write_text(json.dumps(nb))
    assert [i for i, _ in mixed_import_cells(p)] == [2, 3]


def _copy_checkout(dst: Path):
    "The files of this checkout that git would commit (tracked plus untracked, not ignored), copied to `dst`."
    if (ROOT / '.git').exists():
        out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                             check=True, capture_output=True).stdout.decode()
        files = [f for f in out.split('\0') if f and (ROOT / f).is_file()]
    else:
        skip = {'.venv', 'venv', '_proc', '_docs', '__pycache__', '.pytest_cache'}
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob('*') if p.is_file() and not skip & set(p.parts)]
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)


def _executed(cell) -> bool:
    "In `_proc`, the cells the doc build ran and kept: import-only cells and `show_doc` cells."
    src = '\n'.join(l for l in ''.join(cell['source']).splitlines() if not l.startswith('#|'))
    try: trees = ast.parse(src).body
    except SyntaxError: return False
    return bool(trees) and (all(isinstance(t, _IMPORT) for t in trees) or src.lstrip().startswith('show_doc('))


def test_proc_nbs(tmp_path):
    "`nbdev-proc-nbs` processes every notebook: exit status 0, no warning, no executed cell writing to stderr."
    exe = Path(sys.executable).parent / 'nbdev-proc-nbs'
    if not exe.exists(): exe = shutil.which('nbdev-proc-nbs')
    assert exe, 'nbdev-proc-nbs not found (pip install -e ".[dev]")'
    work = tmp_path / 's3d'
    _copy_checkout(work)
    env = {**os.environ, 'PYTHONPATH': str(work), 'MPLBACKEND': 'Agg'}
    if not shutil.which('quarto'):   # it only checks that Quarto exists (else downloads it): a stand-in will do
        (tmp_path / 'bin').mkdir()
        (tmp_path / 'bin' / 'quarto').write_text('#!/bin/sh\necho "quarto is not needed by nbdev-proc-nbs" >&2\nexit 1\n')
        (tmp_path / 'bin' / 'quarto').chmod(0o755)
        env['PATH'] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    r = subprocess.run([str(exe)], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    log = (r.stdout + r.stderr).strip()
    assert r.returncode == 0, f'nbdev-proc-nbs failed:\n{log[-5000:]}'
    assert not any(w in log.lower() for w in ('warn', 'error', 'traceback')), f'nbdev-proc-nbs warned:\n{log[-5000:]}'
    procd = {p.relative_to(work / '_proc') for p in (work / '_proc').rglob('*.ipynb')}
    assert procd == {p.relative_to(NBS) for p in notebooks()}, 'not every notebook was processed'
    noisy = [f'{p}: {"".join(c["source"])[:80]!r}' for p in sorted(procd)
             for c in json.loads((work / '_proc' / p).read_text())['cells']
             if c['cell_type'] == 'code' and _executed(c)
             and any(o.get('name') == 'stderr' or o['output_type'] == 'error' for o in c.get('outputs', []))]
    assert not noisy, 'cells the doc build executes write to stderr:\n' + '\n'.join(noisy)
