"""The companion's prose says what its results say (issue 23).

1. Rendered prose is current: every notebook cell that calls `show('NAME')` stores exactly `render('NAME')`; every
   generated block of benchmarks/RESULTS.md equals what its benchmark script's `results_sections(root)` makes from
   the committed CSVs; README.md is what .ci/sync_readme.py makes of nbs/index.ipynb.
2. Typed numbers are backed: every number, range and count in the hand-written Markdown of the experiment notebooks,
   nbs/index.ipynb and benchmarks/RESULTS.md is backed, at the precision it is written with, by that document's
   summary files (`s3d.paper.report.backing_for` says which), or by data/paper/ in a sentence that names the paper.
"""
import csv, importlib.util, json, re, shutil, sys
from pathlib import Path

import pytest

from s3d.paper.report import PROSE, backing_for, check_document, load_renderers, render, sync_blocks, unbacked

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / 'benchmarks' / 'RESULTS.md'
_SHOW = re.compile(r"\bshow\(\s*['\"]([\w.-]+)['\"]")


def _load(path: Path, name: str):
    "Import a script by path (its folder first on sys.path, for sibling imports); scripts guard their main."
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(path.parent))


def _shows():
    "(notebook, cell index, names shown, stored Markdown outputs) for every code cell that calls show('NAME')."
    for p in sorted(ROOT.glob('nbs/**/*.ipynb')):
        for i, c in enumerate(json.loads(p.read_text())['cells']):
            names = _SHOW.findall(''.join(c['source'])) if c['cell_type'] == 'code' else []
            if names:
                outs = [o.get('data', {}) for o in c.get('outputs', [])]
                yield p.relative_to(ROOT).as_posix(), i, names, [''.join(d['text/markdown']) for d in outs if 'text/markdown' in d]


SHOWS = list(_shows())


@pytest.mark.parametrize('nb,i,names,stored', SHOWS, ids=[f'{nb}:cell{i}' for nb, i, *_ in SHOWS])
def test_stored_render_is_current(nb, i, names, stored):
    want = [render(n, ROOT) for n in names]
    assert stored == want, (f'{nb}, cell {i}: the stored output of show({names}) is not what the committed results '
                            f'render; re-execute it: python .ci/execute_nb.py {nb}')


def results_sections(root: Path) -> dict:
    "Every generated block of RESULTS.md that a benchmark script owns: {name: (script, markdown)}."
    out = {}
    for p in sorted((ROOT / 'benchmarks').glob('*.py')):
        if not re.search(r'^def results_sections\(', p.read_text(), re.M):
            continue
        for name, md in _load(p, f'_bench_{p.stem}').results_sections(Path(root)).items():
            assert name not in out, f'block {name!r} is owned by both {out[name][0]} and {p.name}'
            out[name] = (p.name, md)
    return out


def test_results_blocks_are_current():
    owned, text = results_sections(ROOT), RESULTS_MD.read_text()
    stale = sync_blocks(text, {n: md for n, (_, md) in owned.items()}, check=True)
    assert not stale, ('benchmarks/RESULTS.md blocks differ from their results: '
                       + ', '.join(f'{n} (python benchmarks/{owned[n.split()[0]][0]} --update-results)' for n in stale)
                       + '; to re-render from the committed CSVs only: python benchmarks/_results.py')
    blocks = set(re.findall(r'<!-- begin: ([\w.-]+) -->', text))
    assert blocks <= set(owned), f'blocks no script renders (stale copies): {sorted(blocks - set(owned))}'


def test_readme_is_generated_from_index():
    sync = _load(ROOT / '.ci' / 'sync_readme.py', '_sync_readme')
    assert (ROOT / 'README.md').read_text() == sync.render(ROOT / 'nbs' / 'index.ipynb'), \
        'README.md is out of date: python .ci/sync_readme.py'


def _md_sections(text: str) -> list[tuple[str, str]]:
    "(heading, text) of every `#` or `##` section of a Markdown file (text before the first heading under '')."
    cuts = [m.start() for m in re.finditer(r'^#{1,2} ', text, re.M)]
    bounds = zip([0] + cuts, cuts + [len(text)])
    return [(text[a:b].split('\n', 1)[0].lstrip('# ').strip() if a in cuts else '', text[a:b]) for a, b in bounds]


# One case per document, and per section of RESULTS.md (its sections have different owners and backing scripts).
DOCS = [(p.relative_to(ROOT).as_posix(), None) for p in sorted(ROOT.glob('nbs/experiments/*.ipynb'))]
DOCS += [('nbs/index.ipynb', None)]
DOCS += [('benchmarks/RESULTS.md', h) for h, t in _md_sections(RESULTS_MD.read_text()) if t.strip()]


@pytest.mark.parametrize('doc,section', DOCS, ids=[f'{d}#{s[:40]}' if s else d for d, s in DOCS])
def test_typed_numbers_are_backed(doc, section):
    own, cited = backing_for(doc, ROOT)
    if section is None:
        bad = check_document(doc, ROOT)
    else:
        bad = unbacked(dict(_md_sections((ROOT / doc).read_text()))[section], own, cited)
    lines = '\n'.join(f'  {tok!r} in: {sentence[:200]}' for tok, sentence in bad)
    where = f'{doc}, section {section!r}' if section else doc
    assert not bad, (
        f'{where}: {len(bad)} typed numbers have no backing in {[p.name for p in own]} (paper sentences: '
        f'{[p.name for p in cited]}). Render them from the results (@prose + show, or a generated block), '
        f'correct them, or cite the paper with its numbers in data/paper/:\n{lines}')


# The misstatements issue 23 found, each flagged against the committed summaries; beside each, true statements pass.
MISSTATEMENTS = [
    ('table2_imagenet', 'The 0.75x model is above S3D-2 (72.8 % at 0.66 M).', ['72.8', '0.66']),
    ('table1_cifar', 'The accuracy at the last split is flat in c (96.1-96.5 %, with standard deviations of '
                     '0.5-1.3 points).', ['96.1-96.5', '0.5-1.3']),
    ('table1_cifar', 'The width-multiplier and pruning baselines (97.6–98.1 %) stay above every grown network.',
     ['97.6–98.1']),
    ('fig2_rbf', 'In the mixture view S2D ends with a median 3.9 neurons.', ['3.9']),
]
TRUE = [
    ('fig2_rbf', 'In the mixture view S2D ends with a mean of 3.9 neurons and a median final loss of 0.0337; '
                 'it stopped in 6/10 runs.'),
]


@pytest.mark.parametrize('exp,text,flagged', MISSTATEMENTS)
def test_issue_misstatements_are_flagged(exp, text, flagged):
    own, cited = backing_for(f'nbs/experiments/{exp}.ipynb', ROOT)
    assert [tok for tok, _ in unbacked(text, own, cited)] == flagged


def _table1_true() -> list:
    "True sentences about Table 1, written from its committed summary (so they follow a regeneration)."
    md = (ROOT / 'data' / 'results' / 'table1_cpu.md').read_text()
    m = re.search(r'params setting, last split, \d+ seeds: S3D \(c=3\) ([\d.]+)% vs S2D ([\d.]+)%;.*?'
                  r'95% interval (\[[^\]]+\])', md)
    sds = [float(x) for x in re.findall(r'^\| [^|]+ \| [\d.]+ \| ([\d.]+) \|', md, re.M)]
    return [('table1_cifar', f'S3D (c = 3) reaches {m[1]} % against {m[2]} % for S2D; the paired interval is {m[3]}.'),
            ('table1_cifar', f'Across all models the standard deviations are {min(sds):.2f}–{max(sds):.2f} points.')]


def _table2_true() -> list:
    "A true sentence about Table 2, written from its committed summary's S3D-2 row (so it follows a regeneration)."
    md = (ROOT / 'data' / 'results' / 'table2_cpu.md').read_text()
    m = re.search(r'^\| S3D-2 \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \|', md, re.M)
    return [('table2_imagenet', f'S3D-2 reaches {m[2]} % at {m[1]} M MACs.')]


@pytest.mark.parametrize('exp,text', TRUE + _table1_true() + _table2_true())
def test_true_statements_pass(exp, text):
    assert unbacked(text, *backing_for(f'nbs/experiments/{exp}.ipynb', ROOT)) == []


def test_editing_a_result_makes_its_stored_copy_stale(tmp_path):
    "A committed result edited without regenerating: its renderer's output changes, so the stored copy is flagged."
    shutil.copytree(ROOT / 'benchmarks' / 'results', tmp_path / 'benchmarks' / 'results')
    f = tmp_path / 'benchmarks' / 'results' / 'functional_acts.csv'
    rows = list(csv.DictReader(f.open()))
    rows[0]['seconds'] = f"{float(rows[0]['seconds']) * 2:.6g}"  # one value edited, nothing regenerated
    with f.open('w', newline='') as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    now = {n: md for n, (_, md) in results_sections(tmp_path).items()}
    assert sync_blocks(RESULTS_MD.read_text(), now, check=True) == ['functional-acts']


def test_every_row_renderer_is_in_the_reproduces_table():
    load_renderers()
    table = render('index.reproduces', ROOT)
    for name in (n for n in PROSE if n.endswith('.row')):
        assert render(name, ROOT).strip() in table, name


def test_readme_is_one_page_with_the_generated_table():
    text = (ROOT / 'README.md').read_text()
    tokens = re.sub(r'<!--.*?-->', ' ', text, flags=re.S).split()
    words = sum(bool(re.search(r'[^\W_]', t)) for t in tokens)  # table rules and pipes are not words
    assert words <= 1200, f'README.md has {words} words; 1,200 at most (the long discussions live in the notebooks)'
    assert render('index.reproduces', ROOT).strip() in text, 'README.md lacks the generated What-reproduces table'
    assert '<!-- main-command -->' in text and '<!-- test-command -->' in text
