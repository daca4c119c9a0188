"""Render README.md from nbs/index.ipynb (what `nbdev-readme` does with Quarto, which CI does not have).

    python .ci/sync_readme.py          # write README.md
    python .ci/sync_readme.py --check  # exit 1 if README.md is out of date
Markdown cells are copied, code cells become ```python blocks; cells flagged `#| hide` are left out. A code cell
flagged `#| echo: false` contributes its stored Markdown output (text/markdown, for example a table that
`s3d.paper.report.show` rendered from the committed results) instead of its code.
Links are written relative to the notebook's folder (`../data/...` from nbs/), so they resolve where the notebook is
rendered; README.md sits one folder up, so a leading `../` is dropped there.
"""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent


def _flags(lines):
    "The `#|` directives of a cell, without spaces: {'hide', 'echo:false', ...}."
    return {l[2:].replace(' ', '') for l in lines if l.startswith('#|')}


def _code(cell, src):
    "What a code cell contributes: nothing, its stored Markdown output, or its code."
    lines = src.splitlines()
    flags = _flags(lines)
    if flags & {'hide', 'exporti'}:
        return ''
    if 'echo:false' in flags:
        md = [''.join(o['data']['text/markdown']) for o in cell.get('outputs', []) if 'text/markdown' in o.get('data', {})]
        return '\n\n'.join(m.strip('\n') for m in md)
    body = '\n'.join(l for l in lines if not l.startswith('#|')).strip('\n')
    return f'```python\n{body}\n```' if body else ''


def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip('\n')
        if not src:
            continue
        if cell['cell_type'] == 'markdown':
            parts.append(re.sub(r'\]\(\.\./', '](', src))  # nbs/-relative to root-relative
        elif cell['cell_type'] == 'code':
            parts.append(_code(cell, src))
    head = '<!-- generated from nbs/index.ipynb by .ci/sync_readme.py: edit the notebook, not this file -->\n\n'
    return head + '\n\n'.join(p for p in parts if p) + '\n'


if __name__ == '__main__':
    text, readme = render(root / 'nbs' / 'index.ipynb'), root / 'README.md'
    if '--check' in sys.argv:
        if readme.read_text() != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: run `python .ci/sync_readme.py`')
        print('README.md is in sync with nbs/index.ipynb')
    else:
        readme.write_text(text)
        print('wrote', readme)
