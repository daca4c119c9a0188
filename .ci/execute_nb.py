"""Execute notebooks in place so their stored outputs are current (notebooks are committed executed).

    python .ci/execute_nb.py nbs/experiments/table1_cifar.ipynb [more.ipynb ...]

Runs every code cell in the notebook's folder with execnb, as `nbdev-test` does, except cells flagged
`slow`, `gpu` or `notest` (paper-scale work): those keep the outputs they have. Stops at the first error
and leaves the file untouched then. Run `nbdev-clean` afterwards (it drops execution counts and metadata).
"""
import os, re, sys
from pathlib import Path
from fastcore.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

SKIP = {'slow', 'gpu', 'notest'}
_FLAG = re.compile(r'^\s*#\|\s*(\w+)\s*$')


def skipped(cell) -> bool:
    "True for cells that are not code or carry a flag in `SKIP` (their stored outputs are kept)."
    if cell.cell_type != 'code':
        return True
    flags = {m.group(1) for m in map(_FLAG.match, cell.source.splitlines()) if m}
    return bool(flags & SKIP)


def execute(path: Path):
    path = path.resolve()
    nb = read_nb(path)
    os.chdir(path.resolve().parent)  # cells read paths relative to their notebook, as under nbdev-test
    shell = CaptureShell()
    shell.set_path(path.parent.resolve())
    shell.run_all(nb, exc_stop=True, preproc=skipped)
    write_nb(nb, path)
    print('executed', path)


if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if len(sys.argv) == 2:
        execute(Path(sys.argv[1]))
    else:  # one process per notebook, as nbdev-test does: no state leaks from one into the next
        import subprocess
        for p in sys.argv[1:]:
            subprocess.run([sys.executable, __file__, p], check=True)
