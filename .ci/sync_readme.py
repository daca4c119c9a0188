"""Render README.md from nbs/index.ipynb (what `nbdev-readme` does with Quarto, which CI does not have).

    python .ci/sync_readme.py          # write README.md
    python .ci/sync_readme.py --check  # exit 1 if README.md is out of date
Markdown cells are copied, code cells become ```python blocks; cells flagged `#| hide` are left out.
Links are written relative to the notebook's folder (`../data/...` from nbs/), so they resolve where the notebook is
rendered; README.md sits one folder up, so a leading `../` is dropped there.
"""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip('\n')
        if not src: continue
        if cell['cell_type'] == 'markdown': parts.append(re.sub(r'\]\(\.\./', '](', src))   # nbs/-relative to root-relative
        elif cell['cell_type'] == 'code':
            lines = src.splitlines()
            if any(l.strip().replace(' ', '') in ('#|hide', '#|exporti') for l in lines if l.startswith('#|')): continue
            body = '\n'.join(l for l in lines if not l.startswith('#|')).strip('\n')
            if body: parts.append(f'```python\n{body}\n```')
    return '<!-- generated from nbs/index.ipynb by .ci/sync_readme.py: edit the notebook, not this file -->\n\n' + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text, readme = render(root / 'nbs' / 'index.ipynb'), root / 'README.md'
    if '--check' in sys.argv:
        if readme.read_text() != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: run `python .ci/sync_readme.py`')
        print('README.md is in sync with nbs/index.ipynb')
    else:
        readme.write_text(text); print('wrote', readme)
