"""Growth quality: S2D / S3D (fixed and line-searched step) against random growth, Net2Net and training from scratch.

Tasks on scikit-learn digits (fixed 80/20 split: 1437 train, 360 test; 64 features standardised on the training set):
  mlp1: tanh MLP 64 -> h -> 10;  mlp2: 64 -> h -> h -> 10;  cnn: conv3x3/2(1->h) tanh conv3x3/2(h->h) tanh linear(4h->10) (8x8 -> 4x4 -> 2x2).
Every hidden width h grows 2 -> 4 -> 8 -> 16 -> 24 -> 32 over five rounds (`GrowConfig.widths`). For each seed every
method starts from the same weights and sees the same data order; each round trains with a fresh Adam (lr 1e-3),
batch 64, 20 epochs (MLPs; the CNN, whose tiny convolutions cost ~7 ms a step on this CPU, uses lr 2e-3, batch 128,
8 epochs to fit the time limit). Splitting matrices: exact (dense + eigh) for the MLPs, fast (Lanczos) for the CNN.
Scratch trains the final architecture (width 32, freshly initialised) for the same six rounds.
Reported per task/method/round: test accuracy, train loss, near-duplicate neuron pairs (incoming-weight cosine > 0.99),
the growth step's wall time in training epochs (at the same width), the chosen step and measured vs predicted loss change;
paired differences against random growth with 95% t-intervals and wins/ties/losses; and, separately, the cost of one
growth step of a 1-hidden-layer MLP at width 256 in epochs.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/growth_quality.py --seeds 10 --jobs 1
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/growth_quality.py --cost-only --cost-reps 7   # the cost table alone
"""
from __future__ import annotations
import argparse, copy, json, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
import pandas as pd
import torch
from torch import nn
import torch.nn.functional as F

WIDTHS = (4, 8, 16, 24, 32)
METHODS = ('S2D', 'S3D', 'S3D line search', 'random growth', 'Net2Net', 'scratch')
TASKS = ('mlp1', 'mlp2', 'cnn')


def make_data():
    "Standardised digits: (Xtr, ytr, Xte, yte) float32 with 64 features."
    from s3d.paper.data import load_digits_data
    d = load_digits_data(test_size=360, seed=0)
    xtr, xte = d.x_train.double().flatten(1), d.x_test.double().flatten(1)
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd == 0] = 1
    return ((xtr - mu) / sd).float(), d.y_train, ((xte - mu) / sd).float(), d.y_test


def make_model(task, h=2):
    if task == 'mlp1': return nn.Sequential(nn.Linear(64, h), nn.Tanh(), nn.Linear(h, 10))
    if task == 'mlp2': return nn.Sequential(nn.Linear(64, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 10))
    if task == 'cnn':
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, h, 3, stride=2, padding=1), nn.Tanh(),
                             nn.Conv2d(h, h, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * h, 10))
    raise ValueError(f"unknown task {task!r}")


RECIPE = dict(mlp1=dict(lr=1e-3, batch=64, epochs=20), mlp2=dict(lr=1e-3, batch=64, epochs=20), cnn=dict(lr=2e-3, batch=128, epochs=8))


def config(method, seed, rounds, eigen='exact'):
    from s3d.grow import GrowConfig
    kw = dict(rounds=rounds, widths=WIDTHS[:rounds], seed=seed, eigen=eigen, ratio=None)
    return {'S2D': GrowConfig(m=2, c=1., **kw), 'S3D': GrowConfig(m=2, c=3., **kw),
            'S3D line search': GrowConfig(m=2, c=3., step='line_search', **kw),
            'random growth': GrowConfig(growth='random', **kw), 'Net2Net': GrowConfig(growth='net2net', **kw),
            'scratch': GrowConfig(growth='scratch', **kw)}[method]


def duplicate_pairs(model, x, thr=0.99):
    "Pairs of neurons in the same split group whose incoming weights have cosine > thr."
    from s3d.graph import split_groups
    n = 0
    for g in split_groups(model, x):
        w = F.normalize(g.producer.weight.detach().flatten(1), dim=1)
        c = w @ w.T
        n += int((torch.triu(c, 1) > thr).sum())
    return n


def run_one(task, method, seed, rounds=5, epoch_scale=1.0):
    "One growth run; returns its history."
    torch.set_num_threads(1)
    lr, batch, epochs = RECIPE[task]['lr'], RECIPE[task]['batch'], max(1, round(RECIPE[task]['epochs'] * epoch_scale))
    from s3d.grow import grow, scratch_model, split_round
    Xtr, ytr, Xte, yte = make_data()
    torch.manual_seed(seed)
    model = make_model(task)
    cfg = config(method, seed, rounds, 'fast' if task == 'cnn' else 'exact')
    if method == 'scratch': model = scratch_model(model, Xtr[:1], [WIDTHS[rounds - 1]] * (2 if task != 'mlp1' else 1), seed=seed)
    timing, grow_t, t_score = {}, {}, [None]

    def score_batches():        # `grow` calls this right before the growth step and `train_fn` right after it
        t_score[0] = time.perf_counter()
        return [(Xtr, ytr)]

    def train_fn(m, r):
        t = time.perf_counter()
        if t_score[0] is not None: grow_t[r] = t - t_score[0]
        g = torch.Generator().manual_seed(1000 * seed + r)
        opt = torch.optim.Adam(m.parameters(), lr=lr)
        m.train()
        for _ in range(epochs):
            perm = torch.randperm(len(ytr), generator=g)
            for i in range(0, len(perm), batch):
                b = perm[i:i + batch]
                opt.zero_grad(); F.cross_entropy(m(Xtr[b]), ytr[b]).backward(); opt.step()
        timing[r] = (time.perf_counter() - t) / epochs
        with torch.no_grad(): m.eval(); loss = F.cross_entropy(m(Xtr), ytr).item()
        return {'loss': loss}

    def evaluate(m):
        with torch.no_grad(): m.eval(); out = m(Xte)
        return {'acc': (out.argmax(1) == yte).float().mean().item(), 'dup_pairs': duplicate_pairs(m, Xtr[:1])}

    res = grow(model, train_fn, F.cross_entropy, score_batches, Xtr[:1], cfg, evaluate=evaluate, progress=False,
               label=dict(task=task, seed=seed))
    h = res.history.copy()
    h['method'] = method
    h = h.rename(columns={'test_dup_pairs': 'dup_pairs'})
    h['epoch_s'] = h['round'].map(timing)
    h['growth_s'] = h['round'].map(grow_t)
    h['growth_epochs'] = h['growth_s'] / h['epoch_s']      # growth step in epochs of training at the grown width
    return h


def growth_cost(width=256, seed=0, reps=3):
    "Wall time of one growth step of a 1-hidden-layer tanh MLP at `width`, in epochs of training at that width."
    from s3d.grow import GrowConfig, split_round
    torch.set_num_threads(1)
    Xtr, ytr, _, _ = make_data()
    torch.manual_seed(seed)
    base = make_model('mlp1', width)
    opt = torch.optim.Adam(base.parameters(), lr=1e-3)
    def epoch(m, opt):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]; opt.zero_grad(); F.cross_entropy(m(Xtr[b]), ytr[b]).backward(); opt.step()
    for _ in range(3): epoch(base, opt)
    t = []
    for _ in range(reps):
        s = time.perf_counter(); epoch(base, opt); t.append(time.perf_counter() - s)
    t_epoch = min(t)
    rows = []
    for name, kw in (('S3D fixed, exact eigh', dict(eigen='exact')), ('S3D fixed, fast', dict(eigen='fast')),
                     ('S3D line search, exact eigh', dict(eigen='exact', step='line_search')),
                     ('S3D line search, fast', dict(eigen='fast', step='line_search')),
                     ('S3D line search, fast, 512 scoring samples', dict(eigen='fast', step='line_search', n=512))):
        n = kw.pop('n', None)
        cfg = GrowConfig(m=2, c=3., ratio=0.5, **kw)
        ts = []
        for _ in range(reps):
            m = copy.deepcopy(base)
            s = time.perf_counter(); split_round(m, F.cross_entropy, [(Xtr[:n], ytr[:n])], Xtr[:1], cfg); ts.append(time.perf_counter() - s)
        rows.append(dict(width=width, step=name, growth_s=min(ts), epoch_s=t_epoch, growth_epochs=min(ts) / t_epoch))
    return pd.DataFrame(rows)


def paired(df, ref='random growth', col='test_acc'):
    "Per task, method, round: mean paired difference vs `ref` (x100 for accuracy), 95% t-interval, wins/ties/losses."
    from scipy import stats
    out = []
    piv = df.pivot_table(index=['task', 'round', 'seed'], columns='method', values=col)
    for (task, rnd), g in piv.groupby(level=[0, 1]):
        for m in [m for m in METHODS if m in g.columns and m != ref]:
            d = (g[m] - g[ref]).dropna().to_numpy() * 100
            if len(d) == 0: continue
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
            out.append(dict(task=task, round=rnd, method=m, n=len(d), diff=d.mean(), lo=d.mean() - half, hi=d.mean() + half,
                            wins=int((d > 1e-9).sum()), ties=int((abs(d) <= 1e-9).sum()), losses=int((d < -1e-9).sum())))
    return pd.DataFrame(out)


def md_table(df, floatfmt='{:.3g}'):
    cols = list(df.columns)
    fmt = lambda v: floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)] +
                     ['| ' + ' | '.join(fmt(v) for v in r) + ' |' for r in df.itertuples(index=False)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seeds', type=int, default=10)
    ap.add_argument('--jobs', type=int, default=1, help='worker processes (1 thread each)')
    ap.add_argument('--epoch-scale', type=float, default=1.0, help='multiplies every recipe\'s epochs (quick trials)')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--tasks', default=','.join(TASKS))
    ap.add_argument('--methods', default=','.join(METHODS))
    ap.add_argument('--out', default='benchmarks/results')
    ap.add_argument('--cost-width', type=int, default=256)
    ap.add_argument('--cost-reps', type=int, default=3, help='growth steps and epochs timed per row (the minimum is kept)')
    ap.add_argument('--cost-only', action='store_true', help='only the cost of one growth step (writes growth_cost.csv)')
    a = ap.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.cost_only:
        cost = growth_cost(a.cost_width, reps=a.cost_reps)
        cost.to_csv(out / 'growth_cost.csv', index=False)
        print(f'## cost of one growth step at width {a.cost_width} (1-hidden-layer MLP, 1437 scoring samples unless noted), in epochs\n')
        print(md_table(cost, '{:.3g}'))
        return
    t0 = time.time()
    jobs = [(t, m, s) for t in a.tasks.split(',') for s in range(a.seeds) for m in a.methods.split(',')]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            hs = list(ex.map(run_one, *zip(*jobs), [a.rounds] * len(jobs), [a.epoch_scale] * len(jobs)))
    else: hs = [run_one(t, m, s, a.rounds, a.epoch_scale) for t, m, s in jobs]
    df = pd.concat(hs, ignore_index=True)
    df.to_csv(out / 'growth_quality.csv', index=False)
    cost = growth_cost(a.cost_width, reps=a.cost_reps)
    cost.to_csv(out / 'growth_cost.csv', index=False)
    import resource
    cpu = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ('ru_utime', 'ru_stime'))
    report(df, cost, out, a, time.time() - t0, cpu)


def report(df, cost, out, a, wall, cpu):
    last = df[df['round'] == df['round'].max()]
    summ = (last.groupby(['task', 'method'], sort=False)
                .agg(acc_mean=('test_acc', lambda v: 100 * v.mean()), acc_std=('test_acc', lambda v: 100 * v.std()),
                     train_loss=('train_loss', 'mean'), dup_pairs=('dup_pairs', 'mean'), dup_max=('dup_pairs', 'max'),
                     width=('widths', lambda v: v.iloc[0]))
                .reset_index())
    grown = df[df['round'] > 0]
    step = (grown.groupby(['task', 'method'], sort=False)
                 .agg(growth_epochs=('growth_epochs', 'median'), eps=('eps', 'median'),
                      measured=('measured_dloss', 'median'), predicted=('predicted_dloss', 'median')).reset_index())
    summ = summ.merge(step, on=['task', 'method'], how='left')
    pr = paired(df)
    pr.to_csv(out / 'growth_quality_paired.csv', index=False)
    fin = pr[pr['round'] == pr['round'].max()]
    goal = (pr[pr.method == 'S3D line search'].groupby('task')
              .agg(rounds_at_or_above=('diff', lambda v: int((v >= 0).sum())), rounds=('diff', 'size'),
                   worst_round_diff=('diff', 'min')).reset_index())
    print(f"# growth quality: {a.seeds} seeds, epochs x{a.epoch_scale:g}, widths 2 -> {' -> '.join(map(str, WIDTHS[:a.rounds]))}; wall {wall:.0f} s, cpu {cpu:.0f} s\n")
    print('## final round (test accuracy %, train loss, near-duplicate pairs, growth step in epochs, median step and loss change)\n')
    print(md_table(summ.round(4), '{:.4g}'))
    print('\n## final round: paired difference vs random growth (test accuracy, percentage points, 95% t-interval)\n')
    print(md_table(fin[['task', 'method', 'diff', 'lo', 'hi', 'wins', 'ties', 'losses']], '{:+.2f}'))
    print('\n## every round: S3D line search minus random growth (pp), paired\n')
    print(md_table(pr[pr.method == 'S3D line search'][['task', 'round', 'diff', 'lo', 'hi', 'wins', 'ties', 'losses']], '{:+.2f}'))
    print('\n## goal: S3D line search at or above random growth (mean paired difference >= 0) at every round\n')
    print(md_table(goal, '{:+.2f}'))
    print(f'\n## cost of one growth step at width {a.cost_width} (1-hidden-layer MLP, 1437 scoring samples unless noted), in epochs\n')
    print(md_table(cost, '{:.3g}'))
    plot(df, out)


def plot(df, out):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = list(dict.fromkeys(df.task))
    fig, axs = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.5), squeeze=False)
    for j, t in enumerate(tasks):
        for m in METHODS:
            d = df[(df.task == t) & (df.method == m)]
            if d.empty: continue
            g = d.groupby('round')
            for i, (col, sc) in enumerate((('test_acc', 100), ('train_loss', 1))):
                mu, se = g[col].mean() * sc, g[col].sem() * sc
                axs[i, j].errorbar(mu.index, mu.values, yerr=1.96 * se.values, label=m, capsize=2, marker='o', ms=3)
        axs[0, j].set(title=t, ylabel='test accuracy (%)'); axs[1, j].set(xlabel='round', ylabel='train loss', yscale='log')
    axs[0, 0].legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out / 'growth_quality.png', dpi=110)


if __name__ == '__main__':
    main()
