"""Growth quality: where to grow (allocation) crossed with how to initialise new neurons, against the controls and
GroMo's TINY (the maintained peer), and the cost of one growth step.

Tasks (real data shipped with scikit-learn, no download; fixed train/test splits, inputs standardised on the
training set):
  mlp1: digits, tanh MLP 64 -> h -> 10;   mlp2: 64 -> h -> h -> 10;   mlp4: 64 -> h -> h -> h -> h -> 10;
  cnn: digits, conv3x3/2(1->h) tanh conv3x3/2(h->h) tanh linear(4h->10);
  diabetes: scikit-learn's diabetes regression (442 patients, 10 features), tanh MLP 10 -> h -> h -> 1, MSE loss,
  score = test R^2;   cancer: breast cancer Wisconsin (569, 30 features, 2 classes), 30 -> h -> h -> 2;
  wine: (178, 13 features, 3 classes), 13 -> h -> h -> 3 (cancer and wine: 20 % test, a fixed permutation).
mlp1, mlp2 and cnn grow every hidden width 2 -> 4 -> 8 -> 16 -> 24 -> 32 (a binary split adds one neuron per split
neuron, so allocation can only differ from uniform once a round adds fewer neurons than exist: rounds 4 and 5); mlp4,
diabetes, cancer and wine grow 8 -> 12 -> 16 -> 20 -> 26 -> 32, where allocation is free in every round.
Methods (every method of a seed starts from the same weights and sees the same data order and per-round totals):
  allocation: 'targets' (every layer to the same width), '@gain' (the same total placed on the best S3D gains
  over all layers, m = 2, c = 3), '@random' (the same total, layers drawn in proportion to their width);
  initialisation: S3D = signed split with the line-searched step; random = fresh incoming, zero outgoing weights;
  gradmax = zero incoming, outgoing along the top singular directions of the incoming gradient (one pass, one SVD);
  Net2Net = random splits; TINY = GroMo's TINY on its GrowingMLP (MLP tasks; `pip install gromo`, the `bench`
  extra); scratch = the final architecture freshly initialised, trained for the same rounds (scratch@gain:
  S3D@gain's final architecture, i.e. S3D as an architecture search).
Each round trains with a fresh Adam: digits MLPs lr 1e-3, batch 64, 20 epochs (diabetes, cancer, wine lr 2e-3,
batch 32); CNN lr 2e-3, batch 128, 8 epochs. Splitting matrices exact (dense + eigh) for the MLPs, fast (Lanczos) for
the CNN. Reported per task/method/round: test score (accuracy or R^2), train loss, near-duplicate pairs (incoming
cosine > 0.99), the effective rank of the first layer's normalised incoming weights, forward FLOPs, cumulative
training FLOPs (3 x forward FLOPs x samples x epochs, summed over rounds; the growth steps themselves are not
counted), the growth step in training epochs; paired differences against random growth, S3D and TINY with 95%
t-intervals.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/growth_quality.py --seeds 10 --jobs 2 --update-results
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/growth_quality.py --cost-only --cost-reps 7   # the cost table alone
    PYTHONPATH=. python benchmarks/growth_quality.py --from-csv benchmarks/results/growth_quality.csv  # tables, figure
    ... --merge --tasks cancer,wine     # only these tasks (x methods), merged into the output folder's CSV

Without --update-results (or --out) everything is written to benchmarks/out/, which git ignores; with it, also the
generated growth blocks of benchmarks/RESULTS.md (`results_sections`).
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

FAST = (4, 8, 16, 24, 32)          # targets after rounds 1..5 from width 2
SLOW = (12, 16, 20, 26, 32)        # targets after rounds 1..5 from width 8
TASKS = {'mlp1': dict(data='digits', seed_width=2, widths=FAST, lr=1e-3, batch=64, epochs=20),
         'mlp2': dict(data='digits', seed_width=2, widths=FAST, lr=1e-3, batch=64, epochs=20),
         'cnn': dict(data='digits', seed_width=2, widths=FAST, lr=2e-3, batch=128, epochs=8),
         'mlp4': dict(data='digits', seed_width=8, widths=SLOW, lr=1e-3, batch=64, epochs=20),
         'diabetes': dict(data='diabetes', seed_width=8, widths=SLOW, lr=2e-3, batch=32, epochs=20),
         'cancer': dict(data='cancer', seed_width=8, widths=SLOW, lr=2e-3, batch=32, epochs=20),
         'wine': dict(data='wine', seed_width=8, widths=SLOW, lr=2e-3, batch=32, epochs=20)}
HIDDEN = {'mlp1': 1, 'mlp2': 2, 'mlp4': 4, 'diabetes': 2, 'cancer': 2, 'wine': 2}   # hidden layers of the MLP tasks
DIMS = {'digits': (64, 10), 'diabetes': (10, 1), 'cancer': (30, 2), 'wine': (13, 3)}  # inputs, outputs
SPLIT = dict(m=2, c=3., step='line_search')
METHODS = {'S3D': dict(SPLIT), 'S3D@gain': dict(SPLIT, allocation='gain'),
           'random': dict(growth='random'), 'random@gain': dict(SPLIT, growth='random', allocation='gain'),
           'random@random': dict(growth='random', allocation='random'),
           'gradmax': dict(growth='gradmax'), 'gradmax@gain': dict(SPLIT, growth='gradmax', allocation='gain'),
           'Net2Net': dict(growth='net2net'), 'scratch': dict(growth='scratch'),
           'scratch@gain': dict(growth='scratch'), 'TINY': None}
ONE_GROUP = ('S3D', 'random', 'gradmax', 'Net2Net', 'scratch', 'TINY')   # mlp1 has one layer: allocation cannot differ
PEER = ('TINY',)        # methods run by GroMo (pip install gromo): MLP tasks only


def make_data(which='digits'):
    "(Xtr, ytr, Xte, yte): standardised inputs; labels, or the standardised target of diabetes."
    if which == 'digits':
        from s3d.paper.data import load_digits_data
        d = load_digits_data(test_size=360, seed=0)
        xtr, xte, ytr, yte = d.x_train.double().flatten(1), d.x_test.double().flatten(1), d.y_train, d.y_test
    else:
        from sklearn import datasets
        load = dict(diabetes=datasets.load_diabetes, cancer=datasets.load_breast_cancer, wine=datasets.load_wine)
        X, y = load[which](return_X_y=True)
        X = torch.tensor(X, dtype=torch.float64)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        n_test = 88 if which == 'diabetes' else round(0.2 * len(y))
        te, tr = perm[:n_test], perm[n_test:]
        xtr, xte = X[tr], X[te]
        if which == 'diabetes':
            y = torch.tensor(y, dtype=torch.float64)
            mu_y, sd_y = y[tr].mean(), y[tr].std()
            ytr, yte = ((y[tr] - mu_y) / sd_y).float()[:, None], ((y[te] - mu_y) / sd_y).float()[:, None]
        else:
            y = torch.tensor(y, dtype=torch.long)
            ytr, yte = y[tr], y[te]
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd == 0] = 1
    return ((xtr - mu) / sd).float(), ytr, ((xte - mu) / sd).float(), yte


def make_model(task, h=2):
    "The task's seed network at hidden width `h`."
    if task == 'cnn':
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, h, 3, stride=2, padding=1), nn.Tanh(),
                             nn.Conv2d(h, h, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * h, 10))
    if task not in HIDDEN: raise ValueError(f"unknown task {task!r}")
    d, out = DIMS[TASKS[task]['data']]
    layers = []
    for _ in range(HIDDEN[task]):
        layers += [nn.Linear(d, h), nn.Tanh()]
        d = h
    return nn.Sequential(*layers, nn.Linear(h, out))


def n_groups(task): return HIDDEN.get(task, 2)
def loss_of(task): return F.mse_loss if TASKS[task]['data'] == 'diabetes' else F.cross_entropy


def config(task, method, seed, rounds):
    "The `GrowConfig` of `method` on `task`."
    from s3d.grow import GrowConfig
    eigen = 'fast' if task == 'cnn' else 'exact'
    kw = dict(rounds=rounds, widths=TASKS[task]['widths'][:rounds], seed=seed, eigen=eigen, ratio=None)
    return GrowConfig(**{**kw, **METHODS[method]})


def duplicate_pairs(model, x, thr=0.99):
    "Pairs of neurons in the same split group whose incoming weights have cosine > thr."
    from s3d.graph import split_groups
    n = 0
    for g in split_groups(model, x):
        w = F.normalize(g.producer.weight.detach().flatten(1), dim=1)
        n += int((torch.triu(w @ w.T, 1) > thr).sum())
    return n


def effective_rank(model, x):
    "exp(entropy) of the normalised singular values of the first split group's unit incoming rows."
    from s3d.graph import split_groups
    w = F.normalize(split_groups(model, x)[0].producer.weight.detach().flatten(1).double(), dim=1)
    s = torch.linalg.svdvals(w)
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


def score(task, out, y):
    "Test accuracy, or R^2 for the regression task."
    if TASKS[task]['data'] == 'diabetes': return float(1 - ((out - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    return float((out.argmax(1) == y).float().mean())


def run_one(task, method, seed, rounds=5, epoch_scale=1.0, widths=None):
    "One growth run; returns its history (one row per round). `widths`: scratch@gain's final widths."
    torch.set_num_threads(1)
    t = TASKS[task]
    lr, batch, epochs = t['lr'], t['batch'], max(1, round(t['epochs'] * epoch_scale))
    from s3d.grow import grow, scratch_model
    Xtr, ytr, Xte, yte = make_data(t['data'])
    loss_fn = loss_of(task)
    torch.manual_seed(seed)
    model = make_model(task, t['seed_width'])
    cfg = None if method in PEER else config(task, method, seed, rounds)
    if method.startswith('scratch'):
        final = widths if widths is not None else [t['widths'][rounds - 1]] * n_groups(task)
        model = scratch_model(model, Xtr[:1], final, seed=seed)
    timing, grow_t, t_score = {}, {}, [None]

    def score_batches():        # `grow` calls this right before the growth step and `train_fn` right after it
        t_score[0] = time.perf_counter()
        return [(Xtr, ytr)]

    def train_fn(m, r):
        t0 = time.perf_counter()
        if t_score[0] is not None: grow_t[r] = t0 - t_score[0]
        g = torch.Generator().manual_seed(1000 * seed + r)
        opt = torch.optim.Adam(m.parameters(), lr=lr)
        m.train()
        for _ in range(epochs):
            perm = torch.randperm(len(ytr), generator=g)
            for i in range(0, len(perm), batch):
                b = perm[i:i + batch]
                opt.zero_grad()
                loss_fn(m(Xtr[b]), ytr[b]).backward()
                opt.step()
        timing[r] = (time.perf_counter() - t0) / epochs
        with torch.no_grad():
            m.eval()
            loss = loss_fn(m(Xtr), ytr).item()
        return {'loss': loss}

    def evaluate(m):
        with torch.no_grad():
            m.eval()
            out = m(Xte)
        return {'score': score(task, out, yte), 'dup_pairs': duplicate_pairs(m, Xtr[:1]),
                'eff_rank': effective_rank(m, Xtr[:1])}

    if method in PEER:
        h = tiny_grow(task, seed, model, train_fn, loss_fn, score_batches, evaluate, rounds)
    else:
        res = grow(model, train_fn, loss_fn, score_batches, Xtr[:1], cfg, evaluate=evaluate, progress=False,
                   label=dict(task=task, seed=seed))
        h = res.history.copy()
    h['method'] = method
    h = h.rename(columns={'test_dup_pairs': 'dup_pairs', 'test_eff_rank': 'eff_rank'})
    h['epoch_s'] = h['round'].map(timing)
    h['growth_s'] = h['round'].map(grow_t)
    h['growth_epochs'] = h['growth_s'] / h['epoch_s']      # growth step in epochs of training at the grown width
    h['train_flops'] = (3 * h['flops'] * len(ytr) * epochs).cumsum()
    return h


# ---- TINY (Verbockhaven et al., 2024) by GroMo, the maintained peer: `pip install gromo` (the `bench` extra)
def to_growing(seq):
    "A GroMo `GrowingMLP` with the weights of the tanh MLP `seq` (Linear, Tanh, ..., Linear)."
    from gromo.containers.growing_mlp import GrowingMLP
    lin = [m for m in seq if isinstance(m, nn.Linear)]
    gm = GrowingMLP(lin[0].in_features, lin[-1].out_features, lin[0].out_features, len(lin) - 1,
                    activation=nn.Tanh())
    with torch.no_grad():
        for g, m in zip(gm.layers, lin):
            g.layer.weight.copy_(m.weight)
            g.layer.bias.copy_(m.bias)
    return gm


def to_sequential(gm):
    "The plain `nn.Sequential` with `gm`'s weights (for the metrics every method shares)."
    layers = []
    for g in gm.layers:
        layers += [nn.Linear(g.layer.in_features, g.layer.out_features), nn.Tanh()]
        with torch.no_grad():
            layers[-2].weight.copy_(g.layer.weight)
            layers[-2].bias.copy_(g.layer.bias)
    return nn.Sequential(*layers[:-1])


TINY_GAMMAS = tuple(2.0 ** e for e in range(-8, 7))     # the amplitude line search of the new neurons


def tiny_step(gm, li, k, X, y, loss_fn):
    "One TINY step on hidden layer `li` of `gm`: up to `k` neurons (at most the bottleneck's rank); how many."
    layer = gm._growable_layers[li]
    gm.set_growing_layers(index=li)
    gm.init_computation()
    gm.zero_grad(set_to_none=True)
    loss_fn(gm(X), y).backward()
    gm.update_computation()
    layer.compute_optimal_updates(maximum_added_neurons=k, statistical_threshold=0.0, compute_delta=False,
                                  use_projection=True, use_covariance=True, dtype=torch.float64)
    gm.reset_computation()
    best = (float('inf'), None)
    with torch.no_grad():
        for gamma in TINY_GAMMAS:
            layer.scaling_factor = gamma
            best = min(best, (loss_fn(gm.extended_forward(X), y).item(), gamma))
    added = layer.eigenvalues_extension.shape[0]
    layer.apply_change(scaling_factor=best[1])
    layer.delete_update(include_previous=True)
    gm.zero_grad(set_to_none=True)
    return added


def tiny_grow(task, seed, model, train_fn, loss_fn, score_batches, evaluate, rounds):
    "The `grow` loop with TINY steps: every hidden layer to the round's target width; the history's columns."
    from s3d.cost import count_params_flops
    t = TASKS[task]
    gm = to_growing(model)
    rows = []
    for r in range(rounds + 1):
        t0, added = time.time(), 0
        if r > 0:
            (X, y), = score_batches()
            for li in range(HIDDEN[task]):
                while (k := t['widths'][r - 1] - gm.layers[li].layer.out_features) > 0:
                    added += tiny_step(gm, li, k, X, y, loss_fn)
        tr = train_fn(gm, r)
        seq = to_sequential(gm)
        params, flops = count_params_flops(seq, torch.zeros(1, gm.layers[0].layer.in_features))
        widths = [g.layer.out_features for g in gm.layers[:-1]]
        rows.append(dict(method='TINY', task=task, seed=seed, round=r, neurons=sum(widths), widths=json.dumps(widths),
                         params=params, flops=flops, added=added, train_loss=tr['loss'],
                         **{f'test_{k}': v for k, v in evaluate(seq).items()}, seconds=time.time() - t0))
    return pd.DataFrame(rows)


def cost_steps():
    "(label, GrowConfig keywords or a TINY marker) of every growth step in the cost table."
    from s3d.controls import GradMax
    fast = dict(eigen='fast')
    return [('S2D', dict(m=2, c=1.0, **fast)), ('S3D', dict(m=2, c=3.0, **fast)),
            ('S3D line search', dict(m=2, c=3.0, step='line_search', **fast)),
            ('gradmax', dict(growth=GradMax())), ('gradmax, iterative (8 subspace steps)',
                                                  dict(growth=GradMax(solver='iterative'))),
            ('random growth', dict(growth='random')), ('Net2Net', dict(growth='net2net')),
            ('TINY (GroMo), one step', 'tiny1'), ('TINY (GroMo), repeated steps to the same count', 'tiny')]


def time_step(base, label, kw, X, y, ratio, reps):
    "Seconds (minimum of `reps`) of one growth step by `label` on a copy of `base`; neurons added."
    from s3d.grow import GrowConfig, split_round
    ts, added = [], 0
    for _ in range(reps):
        if isinstance(kw, str):                 # TINY, on GroMo's model with the same weights
            gm = to_growing(base)
            s = time.perf_counter()
            want = round(ratio * gm.layers[0].layer.out_features)
            added = tiny_step(gm, 0, want, X, y, F.cross_entropy)
            while kw == 'tiny' and added < want:
                added += tiny_step(gm, 0, want - added, X, y, F.cross_entropy)
        else:
            m = copy.deepcopy(base)
            s = time.perf_counter()
            info = split_round(m, F.cross_entropy, [(X, y)], X[:1], GrowConfig(ratio=ratio, **kw))
            added = m[0].out_features - base[0].out_features
        ts.append(time.perf_counter() - s)
    return min(ts), added


def growth_cost(widths=(64, 256), seed=0, reps=3, ratio=0.5):
    "One growth step (+`ratio` of the width) of a trained 1-hidden-layer tanh MLP on digits, in epochs of it."
    torch.set_num_threads(1)
    Xtr, ytr, _, _ = make_data()
    rows = []
    for width in widths:
        torch.manual_seed(seed)
        base = make_model('mlp1', width)
        opt = torch.optim.Adam(base.parameters(), lr=1e-3)

        def epoch():
            perm = torch.randperm(len(ytr))
            for i in range(0, len(perm), 64):
                b = perm[i:i + 64]
                opt.zero_grad()
                F.cross_entropy(base(Xtr[b]), ytr[b]).backward()
                opt.step()
        for _ in range(3): epoch()
        t = []
        for _ in range(reps):
            s = time.perf_counter()
            epoch()
            t.append(time.perf_counter() - s)
        t_epoch = min(t)
        for label, kw in cost_steps():
            g_s, added = time_step(base, label, kw, Xtr, ytr, ratio, reps)
            rows.append(dict(width=width, step=label, added=added, growth_s=g_s, epoch_s=t_epoch,
                             growth_epochs=g_s / t_epoch))
    return pd.DataFrame(rows)


def paired(df, ref='random', col='test_score', methods=None):
    "Per task, method, round: mean paired difference vs `ref` (x100), 95% t-interval, wins/ties/losses."
    from scipy import stats
    out = []
    piv = df.pivot_table(index=['task', 'round', 'seed'], columns='method', values=col)
    if ref not in piv.columns:
        return pd.DataFrame(out)
    for (task, rnd), g in piv.groupby(level=[0, 1]):
        for m in [m for m in (methods or METHODS) if m in g.columns and m != ref]:
            d = (g[m] - g[ref]).dropna().to_numpy() * 100
            if len(d) == 0: continue
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
            lo, hi = d.mean() - half, d.mean() + half
            verdict = ('one seed' if len(d) < 2 else 'not resolved' if lo <= 0 <= hi or np.isnan(half)
                       else 'better' if lo > 0 else 'worse')
            out.append(dict(task=task, round=rnd, method=m, ref=ref, n=len(d), diff=d.mean(), lo=lo, hi=hi,
                            wins=int((d > 1e-9).sum()), ties=int((abs(d) <= 1e-9).sum()),
                            losses=int((d < -1e-9).sum()), verdict=verdict))
    return pd.DataFrame(out)


def equal_compute(df):
    "Per task and growth method: scratch's score at the round whose cumulative training FLOPs first reach the method's."
    rows = []
    for task, d in df.groupby('task'):
        sc = d[d.method == 'scratch'].pivot_table(index='seed', columns='round', values=['test_score', 'train_flops'])
        if sc.empty: continue
        last = d[d['round'] == d['round'].max()]
        for m, g in last.groupby('method'):
            if m.startswith('scratch'): continue
            g = g.set_index('seed')
            flops = sc['train_flops'].iloc[0]
            r = int(flops.index[np.searchsorted(flops.values, g.train_flops.mean())].item()
                    if g.train_flops.mean() <= flops.values[-1] else flops.index[-1])
            d_ = (g.test_score - sc['test_score'][r].reindex(g.index)).dropna().to_numpy() * 100
            from scipy import stats
            half = stats.t.ppf(0.975, len(d_) - 1) * d_.std(ddof=1) / np.sqrt(len(d_)) if len(d_) > 1 else np.nan
            below = r - 1 if r > flops.index[0] else r      # the last scratch round with fewer FLOPs
            rows.append(dict(task=task, method=m, train_gflops=g.train_flops.mean() / 1e9, scratch_round=r,
                             scratch_gflops=flops[r] / 1e9, method_score=100 * g.test_score.mean(),
                             scratch_score=100 * sc['test_score'][r].mean(), diff=d_.mean(), lo=d_.mean() - half,
                             hi=d_.mean() + half, scratch_gflops_below=flops[below] / 1e9,
                             scratch_score_below=100 * sc['test_score'][below].mean()))
    return pd.DataFrame(rows)


def md_table(df, floatfmt='{:.3g}'):
    cols = list(df.columns)
    fmt = lambda v: floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)] +
                     ['| ' + ' | '.join(fmt(v) for v in r) + ' |' for r in df.itertuples(index=False)])


def jobs_for(tasks, methods, seeds):
    "The (task, method, seed) runs of phase 1 (everything but scratch@gain, which needs S3D@gain's widths)."
    return [(t, m, s) for t in tasks for s in range(seeds) for m in methods
            if m != 'scratch@gain' and (t != 'mlp1' or m in ONE_GROUP) and (t in HIDDEN or m not in PEER)]


def canonical(df):
    "Rows in the order of a full run: phase 1 by task, seed, method; then scratch@gain by task, seed; rounds."
    key = pd.DataFrame({'phase': (df.method == 'scratch@gain').astype(int), 'task': df.task.map(list(TASKS).index),
                        'seed': df.seed, 'method': df.method.map(list(METHODS).index), 'round': df['round']})
    return df.loc[key.sort_values(list(key.columns), kind='stable').index].reset_index(drop=True)


def run_all(jobs, a, widths=None):
    "Histories of `jobs`, in worker processes when `a.jobs > 1`."
    n = len(jobs)
    args = [*zip(*jobs), [a.rounds] * n, [a.epoch_scale] * n, widths or [None] * n]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex: return list(ex.map(run_one, *args))
    return [run_one(*z) for z in zip(*args)]


# ---- the generated blocks of benchmarks/RESULTS.md (s3d.paper.report.sync_blocks), from the committed results
LABEL = {'diabetes': 'diabetes (100 R²)'}


def _pm(v): return f'{v.mean() * 100:.2f} ± {v.std() * 100:.2f}'
def _ci(r): return f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}] {r['wins']}/{r['ties']}/{r['losses']}"


def _grid(cells, rows, cols, corner='method'):
    "A Markdown table of `cells[(row, col)]`, '–' where missing."
    head = ['| ' + ' | '.join([corner] + [LABEL.get(c, c) for c in cols]) + ' |', '|' + '---|' * (len(cols) + 1)]
    return '\n'.join(head + ['| ' + ' | '.join([r] + [cells.get((r, c), '–') for c in cols]) + ' |' for r in rows])


def _order(df):
    "Tasks and methods in the benchmark's order, as far as `df` holds them."
    return [t for t in TASKS if t in set(df.task)], [m for m in METHODS if m in set(df.method)]


def render_final(df):
    "Final-round test score, mean ± sd over seeds, one column per task."
    last = df[df['round'] == df['round'].max()]
    tasks, methods = _order(last)
    cells = {(m, t): _pm(g.test_score) for (t, m), g in last.groupby(['task', 'method'])}
    return _grid(cells, methods, tasks)


def render_paired(pr, ref):
    "Final-round paired differences against `ref` (points, 95% t-interval, wins/ties/losses)."
    fin = pr[(pr['round'] == pr['round'].max()) & (pr.ref == ref)]
    tasks, methods = _order(fin)
    cells = {(r.method, r.task): _ci(r._asdict()) for r in fin.itertuples()}
    return _grid(cells, methods, tasks)


def render_arch(df):
    "Final architecture: forward FLOPs per sample / effective rank of the first layer's unit incoming weights."
    last = df[df['round'] == df['round'].max()]
    tasks, methods = _order(last)
    cells = {(m, t): f'{g.flops.mean() / 1e3:.1f}k / {g.eff_rank.mean():.1f}'
             for (t, m), g in last.groupby(['task', 'method'])}
    return _grid(cells, methods, tasks)


def render_equal(eq):
    "Each growth run's final score against scratch below / above its training FLOPs."
    cols = ['task', 'method', 'train_gflops', 'method_score', 'scratch_gflops_below', 'scratch_score_below',
            'scratch_gflops', 'scratch_score']
    return md_table(eq[cols], '{:.3g}')


def cost_table(cost):
    "The cost table: one growth step, in epochs of the same model, per width (neurons added in brackets)."
    widths = sorted(set(cost.width))
    head = ['| step | ' + ' | '.join(f'width {w}: epochs (added)' for w in widths) + ' |', '|' + '---|' * (len(widths) + 1)]
    steps = list(dict.fromkeys(cost.step))
    c = cost.set_index(['step', 'width'])
    rows = ['| ' + s + ' | ' + ' | '.join(f"{c.loc[(s, w), 'growth_epochs']:.2f} ({c.loc[(s, w), 'added']})"
                                          for w in widths) + ' |' for s in steps]
    ep = ' | '.join(f"{c.xs(w, level='width').epoch_s.iloc[0] * 1e3:.1f} ms" for w in widths)
    return '\n'.join(head + rows + [f'| one epoch | {ep} |'])


def cost_ratio(cost):
    "The one-pass GradMax against the iterative one, per width, from the same run."
    c = cost.set_index(['step', 'width']).growth_s
    parts = [f"width {w}: {c[('gradmax, iterative (8 subspace steps)', w)] / c[('gradmax', w)]:.1f}×"
             for w in sorted(set(cost.width))]
    return 'GradMax one pass against the iterative solver, same run: ' + ', '.join(parts) + ' faster.'


def render_seed_size(df, tasks=('diabetes', 'cancer', 'wine')):
    "Per small tabular task: the seed network's score after round 0 against the final scores, and scratch's."
    lines = []
    for task in tasks:
        d = df[df.task == task]
        seed_score = 100 * d[(d.method == 'random') & (d['round'] == 0)].test_score.mean()
        last = d[d['round'] == d['round'].max()].groupby('method').test_score.mean() * 100
        growth = [m for m in METHODS if m in last.index and not m.startswith('scratch')]
        over = [m for m in growth if last[m] > seed_score]
        below = [m for m in growth if last[m] < last['scratch']]
        lines.append(f"- {LABEL.get(task, task)}: the seed network (width 8) scores {seed_score:.1f} after round 0; "
                     f"final scores above it: {', '.join(over) or 'none'} (best {last.max():.1f}, {last.idxmax()}). "
                     f"Scratch training of the final architecture for the same epochs ends at {last['scratch']:.1f}; "
                     f"growth methods ending below it: {', '.join(below) or 'none'}.")
    return '\n'.join(lines)


PRESETS_BENCH = {'random': "random growth (preset('recommended'))", 'gradmax': "preset('gradmax')",
                 'S3D': "preset('S3D line search')"}


def preset_choice(pr):
    "Per preset: final-round tasks better / not resolved / worse than random growth; the preset that wins most."
    fin = pr[(pr['round'] == pr['round'].max()) & (pr.ref == 'random')]
    score = {'random': (0, len(set(fin.task)), 0)}
    for m in ('gradmax', 'S3D'):
        v = fin[fin.method == m].verdict.value_counts()
        score[m] = (int(v.get('better', 0)), int(v.get('not resolved', 0)), int(v.get('worse', 0)))
    best = max(score, key=lambda m: (score[m][0] - score[m][2], m == 'random'))   # ties: the cheaper random
    return score, best


def render_preset(pr):
    "The paired final-round differences that decide `preset('recommended')`, and the decision they give."
    fin = pr[pr['round'] == pr['round'].max()]
    pairs = [('gradmax', 'random'), ('S3D', 'random'), ('TINY', 'random'), ('gradmax', 'TINY'),
             ('random', 'TINY'), ('S3D', 'TINY')]
    tasks = [t for t in TASKS if t in set(fin.task)]
    cells = {}
    for m, ref in pairs:
        for r in fin[(fin.method == m) & (fin.ref == ref)].itertuples():
            cells[(f'{m} − {ref}', r.task)] = _ci(r._asdict())
    table = _grid(cells, [f'{m} − {ref}' for m, ref in pairs], tasks, corner='difference')
    verdicts = []
    for m, ref in pairs + [('scratch', 'random'), ('random@gain', 'random')]:
        v = fin[(fin.method == m) & (fin.ref == ref)].set_index('task').verdict
        part = [f"{w} on {', '.join(t for t in tasks if v.get(t) == key)}"
                for w, key in (('better', 'better'), ('level', 'not resolved'), ('worse', 'worse'))
                if (v == key).any()]
        verdicts.append(f"- {m} − {ref}: " + '; '.join(part))
    table += '\n\n' + '\n'.join(verdicts)
    score, best = preset_choice(pr)
    lines = [f"- {PRESETS_BENCH[m]}: better than random growth on {b}, not resolved on {n}, worse on {w} of "
             f"{b + n + w} tasks" for m, (b, n, w) in score.items() if m != 'random']
    return (table + '\n\n' + '\n'.join(lines) + f"\n\nRule: the preset with the most tasks better minus worse "
            f"than random growth (ties go to random growth, the cheapest step): **{PRESETS_BENCH[best]}**.")


def results_sections(root):
    "name -> Markdown of every growth block in benchmarks/RESULTS.md, from the files under `root`."
    res = Path(root) / 'benchmarks' / 'results'
    df = pd.read_csv(res / 'growth_quality.csv')
    pr = pd.read_csv(res / 'growth_quality_paired.csv')
    cost = pd.read_csv(res / 'growth_cost.csv')
    out = {'growth.final': render_final(df), 'growth.vs_random': render_paired(pr, 'random'),
           'growth.vs_tiny': render_paired(pr, 'TINY'), 'growth.arch': render_arch(df),
           'growth.equal_compute': render_equal(pd.read_csv(res / 'growth_quality_equal_compute.csv')),
           'growth.cost': cost_table(cost) + '\n\n' + cost_ratio(cost), 'growth.preset': render_preset(pr),
           'growth.seed_size': render_seed_size(df)}
    return out


def sync_results(root=Path('.')):
    "Rewrite the growth blocks of benchmarks/RESULTS.md from the committed results (`--update-results`)."
    from s3d.paper.report import sync_blocks
    md = Path(root) / 'benchmarks' / 'RESULTS.md'
    text = md.read_text()
    missing = [n for n in sync_blocks(text, results_sections(root), check=True) if n.endswith('(no block)')]
    if missing:
        raise ValueError(f'benchmarks/RESULTS.md has no block for {missing}')
    md.write_text(sync_blocks(text, results_sections(root)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seeds', type=int, default=10)
    ap.add_argument('--jobs', type=int, default=1, help='worker processes (1 thread each)')
    ap.add_argument('--epoch-scale', type=float, default=1.0, help="multiplies every recipe's epochs (quick trials)")
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--tasks', default=','.join(TASKS))
    ap.add_argument('--methods', default=','.join(METHODS))
    ap.add_argument('--out', default=None, help='output folder (default benchmarks/out, which git ignores)')
    ap.add_argument('--update-results', action='store_true', help='write to the committed benchmarks/results')
    ap.add_argument('--cost-widths', default='64,256')
    ap.add_argument('--cost-reps', type=int, default=3, help='growth steps and epochs timed per row (minimum kept)')
    ap.add_argument('--cost-only', action='store_true', help='only the cost of one growth step (growth_cost.csv)')
    ap.add_argument('--from-csv', default=None, help="only the tables and figure, from a growth_quality.csv")
    ap.add_argument('--merge', action='store_true',
                    help="replace only the run tasks x methods in the output folder's growth_quality.csv")
    a = ap.parse_args(argv)
    out = Path(a.out or ('benchmarks/results' if a.update_results else 'benchmarks/out'))
    out.mkdir(parents=True, exist_ok=True)
    if a.from_csv:
        df = pd.read_csv(a.from_csv)
        a.seeds, a.rounds = df.seed.nunique(), int(df['round'].max())
        report(df, out, a, float('nan'), float('nan'))
        if a.update_results: sync_results()
        return
    if a.cost_only:
        cost = growth_cost(tuple(int(w) for w in a.cost_widths.split(',')), reps=a.cost_reps)
        cost.to_csv(out / 'growth_cost.csv', index=False)
        print(cost_table(cost) + '\n\n' + cost_ratio(cost))
        if a.update_results: sync_results()
        return
    t0 = time.time()
    tasks, methods = a.tasks.split(','), a.methods.split(',')
    hs = run_all(jobs_for(tasks, methods, a.seeds), a)
    df = pd.concat(hs, ignore_index=True)
    if 'scratch@gain' in methods and 'S3D@gain' in methods:      # S3D as an architecture search
        fin = df[(df.method == 'S3D@gain') & (df['round'] == a.rounds)]
        jobs2 = [(t, 'scratch@gain', s) for t in tasks if t != 'mlp1' for s in range(a.seeds)]
        ws = [json.loads(fin[(fin.task == t) & (fin.seed == s)].widths.iloc[0]) for t, _, s in jobs2]
        df = pd.concat([df, *run_all(jobs2, a, ws)], ignore_index=True)
    if a.merge:         # the other tasks' and methods' rows from the CSV already there (runs are independent)
        old = pd.read_csv(out / 'growth_quality.csv')
        keep = ~pd.MultiIndex.from_frame(old[['task', 'method']]).isin(
            pd.MultiIndex.from_frame(df[['task', 'method']].drop_duplicates()))
        df = pd.concat([old[keep], df], ignore_index=True)[list(old.columns)]
    df = canonical(df)
    df.to_csv(out / 'growth_quality.csv', index=False)
    import resource
    cpu = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ('ru_utime', 'ru_stime'))
    report(df, out, a, time.time() - t0, cpu)
    if a.update_results: sync_results()


def report(df, out, a, wall, cpu):
    last = df[df['round'] == df['round'].max()]
    summ = (last.groupby(['task', 'method'], sort=False)
                .agg(score=('test_score', lambda v: 100 * v.mean()), score_std=('test_score', lambda v: 100 * v.std()),
                     train_loss=('train_loss', 'mean'), dup_pairs=('dup_pairs', 'mean'),
                     eff_rank=('eff_rank', 'mean'), mflops=('flops', lambda v: v.mean() / 1e6),
                     train_gflops=('train_flops', lambda v: v.mean() / 1e9),
                     widths=('widths', lambda v: json.dumps(np.mean([json.loads(w) for w in v], 0).round(1).tolist())))
                .reset_index())
    grown = df[df['round'] > 0]
    step = grown.groupby(['task', 'method'], sort=False).agg(growth_epochs=('growth_epochs', 'median')).reset_index()
    summ = summ.merge(step, on=['task', 'method'], how='left')
    pr = pd.concat([paired(df, 'random'), paired(df, 'S3D'), paired(df, 'TINY')], ignore_index=True)
    pr.to_csv(out / 'growth_quality_paired.csv', index=False)
    eq = equal_compute(df)
    eq.to_csv(out / 'growth_quality_equal_compute.csv', index=False)
    fin = pr[pr['round'] == pr['round'].max()]
    cols = ['task', 'method', 'diff', 'lo', 'hi', 'wins', 'ties', 'losses', 'verdict']
    print(f"# growth quality: {a.seeds} seeds, epochs x{a.epoch_scale:g}, {a.rounds} rounds; "
          f"wall {wall:.0f} s, cpu {cpu:.0f} s\n")
    print('## final round (score = test accuracy %, or 100 R^2 for diabetes; mean over seeds)\n')
    print(md_table(summ.round(4), '{:.4g}'))
    print('\n## final round: paired difference vs random growth (score points, 95% t-interval)\n')
    print(md_table(fin[fin.ref == 'random'][cols], '{:+.2f}'))
    print('\n## final round: paired difference vs S3D (signed split, line search, uniform targets)\n')
    print(md_table(fin[fin.ref == 'S3D'][cols], '{:+.2f}'))
    print('\n## every round: S3D minus random growth (score points), paired\n')
    print(md_table(pr[(pr.ref == 'random') & (pr.method == 'S3D')][['task', 'round'] + cols[2:]], '{:+.2f}'))
    print('\n## equal compute: each method at its final round vs scratch at the first round where scratch has spent '
          'at least as many training FLOPs (paired, score points; `_below`: scratch one round earlier, fewer FLOPs)\n')
    print(md_table(eq, '{:.3g}'))
    plot(df, out)


def plot(df, out):
    "Test score per round and against cumulative training FLOPs: one row per task, one colour per method."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from s3d.paper.report import style
    tasks = list(dict.fromkeys(df.task))
    fig, axs = plt.subplots(len(tasks), 2, figsize=(8.5, 2.6 * len(tasks) + 1.0), squeeze=False)
    for i, t in enumerate(tasks):
        for m in METHODS:
            d = df[(df.task == t) & (df.method == m)]
            if d.empty: continue
            g = d.groupby('round')
            mu = g.test_score.mean() * 100
            st = dict(style(m), ms=2.5, lw=1.1, label=m)
            if '@' in m:        # an allocation variant: its initialisation's colour, open markers, dotted
                st.update(ls=':', mfc='none')
            axs[i, 0].plot(mu.index, mu.values, **st)
            axs[i, 1].plot(g.train_flops.mean().values / 1e9, mu.values, **st)
        what = 'test R² × 100' if TASKS[t]['data'] == 'diabetes' else 'test accuracy (%)'
        axs[i, 0].set_ylabel(f'{t}\n{what}')
        axs[i, 0].set_xlabel('round')
        axs[i, 1].set(xlabel='cumulative training GFLOPs', xscale='log')
        axs[i, 1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    seen = {}
    for ax in axs[:, 0]:
        for h, l in zip(*ax.get_legend_handles_labels()): seen.setdefault(l, h)
    labels = [m for m in METHODS if m in seen]
    handles = [seen[m] for m in labels]
    fig.legend(handles, labels, loc='upper center', ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    fig.savefig(out / 'growth_quality.png', dpi=100)


if __name__ == '__main__':
    main()
