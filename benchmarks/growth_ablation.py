"""What keeps split siblings apart, and does it pay? Variants of S3D's finite step on the growth_quality MLP tasks.

Same tasks, recipe, seeds and widths as `growth_quality.py`; methods:
  S3D line search          the library's rule: the grid step with the lowest held loss (never above the loss before)
  S3D largest safe step    the largest grid step (eps .. 10) whose held loss is not above the loss before the split
  S3D line search + polish after the split, 20 Adam steps (lr 1e-2) on the split copies' incoming weights only
                           (Firefly-style optimisation of the displacements), kept only if the held loss fell
  random growth            the control
(Optimizer state of the new copies is not a variant here: the recipe builds a fresh Adam every round.)

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/growth_ablation.py --seeds 5

The CSV goes to benchmarks/out/ (ignored by git), so rerunning leaves the checkout clean; `--update-results` writes
the committed benchmarks/results/growth_ablation.csv instead, and `--out DIR` any other folder.
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).parent))
import growth_quality as gq
import s3d.grow
G = sys.modules["s3d.grow"]       # the module (s3d re-exports a function of the same name)

_orig_pick, _orig_split = G.pick_step, G._split_round   # what `grow` calls each round


def largest_safe(trial, grid, f0, shrink=8):
    "The largest step of an extended grid whose held loss is not above f0 (then the usual fallbacks)."
    grid = np.geomspace(min(grid), 10.0, len(grid) + 4)
    for e in grid[::-1]:
        f = trial(e)
        if f <= f0: return float(e), f
    return _orig_pick(trial, grid[:1], f0, shrink)


def polish(model, info, X, y, steps=20, lr=1e-2):
    "Adam on the split copies' incoming rows only; reverted unless the loss fell."
    rows = []
    for name, parent in info['parents'].items():
        p = dict(model.named_modules())[name]
        split = torch.bincount(parent, minlength=len(parent)) > 1
        rows.append((p, split[parent]))
    params = [t for p, _ in rows for t in (p.weight, p.bias) if t is not None]
    saved = [t.detach().clone() for t in params]
    f0 = G.held_loss(model, F.cross_entropy, [(X, y)])
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad(); F.cross_entropy(model(X), y).backward()
        for p, mask in rows:
            for t in (p.weight, p.bias):
                if t is not None: t.grad[~mask] = 0
        opt.step()
    opt.zero_grad(set_to_none=True)
    if G.held_loss(model, F.cross_entropy, [(X, y)]) > f0:
        with torch.no_grad():
            for t, s in zip(params, saved): t.copy_(s)


def run(task, variant, seed):
    G.pick_step = largest_safe if variant == 'S3D largest safe step' else _orig_pick
    Xtr, ytr, _, _ = gq.make_data()
    if variant == 'S3D line search + polish':
        def split_round(model, loss_fn, batches, example_input, cfg, rnd, *rest):
            info = _orig_split(model, loss_fn, batches, example_input, cfg, rnd, *rest)
            polish(model, info, Xtr[:512], ytr[:512])
            return info
        G._split_round = split_round
    else: G._split_round = _orig_split
    method = 'random' if variant == 'random growth' else 'S3D'   # growth_quality's names (S3D: the line search)
    h = gq.run_one(task, method, seed).rename(columns={'test_score': 'test_acc'})  # digits: accuracy
    h['method'] = variant
    return h


VARIANTS = ['S3D line search', 'S3D largest safe step', 'S3D line search + polish', 'random growth']


def ablation_table(df):
    "Mean test accuracy (%) per round, final duplicate pairs, median step and growth step in epochs."
    mean = df.groupby(['task', 'method', 'round'], sort=False).agg(acc=('test_acc', lambda v: 100 * v.mean())).reset_index()
    tab = mean.pivot_table(index=['task', 'method'], columns='round', values='acc', sort=False).round(1).reset_index()
    tab.columns = [str(c) for c in tab.columns]
    fin = df[df['round'] == df['round'].max()].groupby(['task', 'method'], sort=False).agg(
        dup_final=('dup_pairs', 'mean'), eps_median=('eps', 'median'), growth_epochs=('growth_epochs', 'median')).reset_index()
    return gq.md_table(tab.merge(fin, on=['task', 'method']), '{:.3g}')


def final_paired(df):
    "Final-round paired differences (points) of each variant against the line search and against random growth."
    pr = pd.concat([gq.paired(df.rename(columns={'test_acc': 'test_score'}), ref, methods=VARIANTS)
                    for ref in ('S3D line search', 'random growth')], ignore_index=True)
    fin = pr[pr['round'] == pr['round'].max()]
    return gq.md_table(fin[['task', 'method', 'ref', 'diff', 'lo', 'hi', 'wins', 'ties', 'losses']], '{:+.2f}')


def results_sections(root):
    "name -> Markdown of the ablation's blocks in benchmarks/RESULTS.md, from the committed CSV under `root`."
    df = pd.read_csv(Path(root) / 'benchmarks' / 'results' / 'growth_ablation.csv')
    return {'growth.ablation': ablation_table(df), 'growth.ablation_paired': final_paired(df)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--seeds', type=int, default=5)
    ap.add_argument('--tasks', default='mlp1,mlp2')
    ap.add_argument('--out', default=None, help='folder for the CSV (default benchmarks/out/, ignored by git)')
    ap.add_argument('--update-results', action='store_true', help='write the committed benchmarks/results/ instead')
    a = ap.parse_args(argv)
    if a.update_results and a.out is not None: ap.error('--update-results writes benchmarks/results/: give it or --out, not both')
    a.out = 'benchmarks/results' if a.update_results else a.out or 'benchmarks/out'
    t0 = time.time()
    df = pd.concat([run(t, v, s) for t in a.tasks.split(',') for s in range(a.seeds) for v in VARIANTS], ignore_index=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(a.out) / 'growth_ablation.csv', index=False)
    print(f"# growth ablation: {a.seeds} seeds; wall {time.time() - t0:.0f} s\n\n## mean test accuracy (%) per round\n")
    print(ablation_table(df))
    print('\n## final round: paired differences (points, 95% t-interval)\n')
    print(final_paired(df))
    if a.update_results:
        from s3d.paper.report import sync_blocks
        md = Path('benchmarks/RESULTS.md')
        md.write_text(sync_blocks(md.read_text(), results_sections(Path('.'))))


if __name__ == '__main__':
    main()
