"""What the benchmark scripts share for their committed results: one CSV per measurement under `benchmarks/results/`
(written only with `--update-results`; otherwise under the ignored `benchmarks/out/`), and the generated blocks of
`benchmarks/RESULTS.md` rewritten from those CSVs (`s3d.paper.report.sync_blocks`).

    PYTHONPATH=. python benchmarks/_results.py   # re-render every block from the committed CSVs, measuring nothing
"""
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def out_dir(update: bool) -> Path:
    "benchmarks/results/ with --update-results, else benchmarks/out/ (ignored by git)."
    d = ROOT / 'benchmarks' / ('results' if update else 'out')
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_csv(path: Path, rows: list[dict]):
    "Rows (dicts with the same keys) as a CSV."
    with Path(path).open('w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print('wrote', path)


def read_csv(root: Path, name: str) -> list[dict]:
    "The committed rows of benchmarks/results/<name> under `root`."
    return list(csv.DictReader((Path(root) / 'benchmarks' / 'results' / name).open()))


def md_table(header: list[str], rows: list[list]) -> str:
    return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
                     + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows])


def update_results_md(sections: dict):
    "Rewrite the blocks `sections` names in benchmarks/RESULTS.md."
    from s3d.paper.report import sync_blocks

    md = ROOT / 'benchmarks' / 'RESULTS.md'
    md.write_text(sync_blocks(md.read_text(), sections))
    print('updated', md, 'blocks', sorted(sections))


def all_sections(root: Path = ROOT) -> dict:
    "Every block that a benchmark script's `results_sections(root)` renders from the committed CSVs."
    import importlib.util, re, sys

    sys.path.insert(0, str(ROOT / 'benchmarks'))
    out = {}
    for p in sorted((ROOT / 'benchmarks').glob('*.py')):
        if re.search(r'^def results_sections\(', p.read_text(), re.M):
            spec = importlib.util.spec_from_file_location(f'_bench_{p.stem}', p)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            out.update(mod.results_sections(Path(root)))
    return out


if __name__ == '__main__':  # re-render every block of RESULTS.md from the committed CSVs (measures nothing)
    update_results_md(all_sections())
