"""Where the time of one S3D growth step goes, at width 256 (the 1-hidden-layer tanh MLP of growth_quality.py).

Side by side in one process, on the same cached statistics (n = 256 neurons, d = 65, 1437 scoring samples):
the general block-Krylov loop (`BlockKrylov.update` at every product) against `BlockKrylov.lanczos` (what
`lanczos_extremes` and the cached fast path run), each split into operator products and the rest; and the line
search's nine trials with a deep copy + surgery per trial against one copy restored between trials (what `split_round`
runs); and the rest of `split_round`: its checks, one held-loss evaluation and the surgery.
Every number is the minimum over `--reps` repetitions; epochs are one training epoch at that width (Adam, batch 64).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/growth_step_profile.py --update-results

`--update-results` writes `benchmarks/results/growth_step_profile.csv` and re-renders the `growth_step_profile` block
of `benchmarks/RESULTS.md` from it (`results_sections`).
"""
from __future__ import annotations
import argparse, copy, csv, sys, time
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from growth_quality import make_data, make_model  # noqa: E402


def best(f, reps):
    "Minimum wall time of f() over reps calls, and its last result."
    ts, out = [], None
    for _ in range(reps):
        s = time.perf_counter(); out = f(); ts.append(time.perf_counter() - s)
    return min(ts), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--width', type=int, default=256)
    ap.add_argument('--reps', type=int, default=7)
    ap.add_argument('--update-results', action='store_true', help='write the CSV under benchmarks/results and the RESULTS.md block')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from s3d.graph import split_groups
    from s3d.splitmat import split_operators
    from s3d.eigen import BlockKrylov, extreme_eigenpairs
    from s3d.select import score_neurons
    from s3d.surgery import apply_splits
    from s3d.grow import GrowConfig, split_round, select_round, held_batches, held_loss, _Trials
    from s3d.grow import _preflight
    Xtr, ytr, _, _ = make_data()
    torch.manual_seed(0)
    base = make_model('mlp1', a.width)
    opt = torch.optim.Adam(base.parameters(), lr=1e-3)
    def epoch():
        perm = torch.randperm(len(ytr))
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]; opt.zero_grad(); F.cross_entropy(base(Xtr[b]), ytr[b]).backward(); opt.step()
    for _ in range(3): epoch()
    t_ep, _ = best(epoch, a.reps)
    data, rows = [(Xtr, ytr)], []
    add = lambda what, t: rows.append((what, t))

    t, gs = best(lambda: split_groups(base, Xtr[:1]), a.reps); add('split_groups (trace)', t)
    t, ops = best(lambda: split_operators(base, gs, F.cross_entropy, data), a.reps); add('statistics pass (forward+backward, cache)', t)
    op, g = ops[gs[0].name], gs[0]

    import s3d.eigen as E
    def timed(name, f, acc):  # f, adding its wall time to acc[name]
        def w(*a, **k):
            s = time.perf_counter(); out = f(*a, **k); acc[name] += time.perf_counter() - s; return out
        return w

    def solve(use_lanczos):
        bk = BlockKrylov(g.n_neurons, g.dim, block=1, generator=torch.Generator().manual_seed(0))
        acc = dict(prod=0., ritz=0., orth=0.)
        if use_lanczos:  # the operator as `_lanczos_cached` applies it: rows stacked, re-sliced as neurons retire
            o = copy.copy(op); o.xs, o.cs, o.paths = list(op.xs), list(op.cs), list(op.paths)
            o.stack_rows()
            sub = [bk.idx, o]
        def prod(P):
            if not use_lanczos:
                return op.products(P, None if len(bk.idx) == bk.n else bk.idx).double() / op.count
            if len(sub[0]) != len(bk.idx):
                sub[:] = [bk.idx, E._restrict(sub[1], torch.searchsorted(sub[0], bk.idx))]
            return sub[1].products(P).double() / op.count
        prod = timed('prod', prod, acc)
        saved = E._tridiagonal_ritz, E._next_lanczos_vector
        E._tridiagonal_ritz, E._next_lanczos_vector = timed('ritz', saved[0], acc), timed('orth', saved[1], acc)
        try:
            s = time.perf_counter()
            if use_lanczos: bk.lanczos(prod)
            else:
                while not bk.done: bk.update(prod(bk.P))
            return time.perf_counter() - s, acc, bk.products
        finally:
            E._tridiagonal_ritz, E._next_lanczos_vector = saved
    for name, use in (('BlockKrylov.update at every product', False), ('BlockKrylov.lanczos (run by split_round)', True)):
        res = sorted((r for r in (solve(use) for _ in range(a.reps))), key=lambda r: r[0])[0]
        add(f'eigen solver, {name} ({res[2]} products)', res[0]); add(f'  of which operator products', res[1]['prod'])
        if use:
            add("  of which Rayleigh-Ritz (tridiagonal eigh, residuals from the eigenvectors' last entries)", res[1]['ritz'])
            add('  of which reorthogonalisation', res[1]['orth'])
            add('  of which the rest of the loop', res[0] - sum(res[1].values()))
        else:
            add('  of which the rest', res[0] - res[1]['prod'])
    t, _ = best(lambda: extreme_eigenpairs(base, gs, F.cross_entropy, data, method='fast'), a.reps); add("extreme_eigenpairs(method='fast'), all of it", t)

    cfg = GrowConfig(m=2, c=3., ratio=0.5, step='line_search')
    eigs = extreme_eigenpairs(base, gs, F.cross_entropy, data, method='fast')
    t, sch = best(lambda: score_neurons(eigs, cfg.m, cfg.c), a.reps); add('score_neurons', t)
    t, sel = best(lambda: select_round(sch, cfg, None, gs, None), a.reps); add('select_round', t)
    held, grid = held_batches(data, cfg.held), np.geomspace(cfg.eps, cfg.eps_max, cfg.eps_grid)
    checks = lambda: _preflight(base, F.cross_entropy, data, Xtr[:1], cfg, 1, 1, lazy_loss=True)
    t, _ = best(checks, a.reps); add("split_round's checks (a forward of example_input, the trace)", t)
    t, _ = best(lambda: held_loss(base, F.cross_entropy, held), a.reps)
    add(f'held loss on {cfg.held} samples (a fixed step measures it before and after)', t)
    plan = lambda g2: [(h, sel[h.name], sch[h.name][sel[h.name]]) for h in g2 if len(sel[h.name])]
    def surgery():  # on a fresh copy each time; the copy is not timed
        m2, g2 = copy.deepcopy((base, gs))
        s = time.perf_counter(); apply_splits(m2, plan(g2), cfg.eps); return time.perf_counter() - s
    add('apply_splits (the split itself)', min(surgery() for _ in range(a.reps)))
    def old_trials():
        out = []
        for e in grid:
            m2, g2 = copy.deepcopy((base, gs))
            apply_splits(m2, [(h, sel[h.name], sch[h.name][sel[h.name]]) for h in g2 if len(sel[h.name])], e)
            out.append(held_loss(m2, F.cross_entropy, held))
        return out
    def new_trials():
        tr = _Trials(base, gs, sel, sch, F.cross_entropy, held)
        return [tr(e) for e in grid]
    t_old, l_old = best(old_trials, a.reps); t_new, l_new = best(new_trials, a.reps)
    assert l_old == l_new, "the two line-search paths must measure the same losses"
    add(f'line search, {len(grid)} trials, deep copy + surgery each', t_old); add(f'line search, {len(grid)} trials, one copy restored (run by split_round)', t_new)
    for name, kw in (('split_round, fixed step, fast', {}), ('split_round, line search, fast', dict(step='line_search'))):
        c = GrowConfig(m=2, c=3., ratio=0.5, eigen='fast', **kw)
        def step():
            m = copy.deepcopy(base); s = time.perf_counter(); split_round(m, F.cross_entropy, data, Xtr[:1], c); return time.perf_counter() - s
        add(name, min(step() for _ in range(a.reps)))
    print(f"width {a.width}, 1437 scoring samples, one epoch = {t_ep * 1e3:.1f} ms (min of {a.reps})\n")
    print('| part | ms | epochs |\n|---|---|---|')
    for what, t in rows: print(f'| {what} | {t * 1e3:.1f} | {t / t_ep:.2f} |')
    if a.update_results:
        root = Path(__file__).resolve().parent.parent
        cmd = ' '.join(['OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/growth_step_profile.py'] + list(argv if argv is not None else sys.argv[1:]))
        with open(root / RESULTS_CSV, 'w', newline='') as f:
            f.write(f'# {cmd}\n')
            w = csv.writer(f)
            w.writerow(['part', 'ms', 'epochs', 'width', 'epoch_ms', 'reps'])
            w.writerows([(what, f'{t * 1e3:.2f}', f'{t / t_ep:.3f}', a.width, f'{t_ep * 1e3:.2f}', a.reps) for what, t in rows])
        from s3d.paper.report import sync_blocks
        md = root / 'benchmarks' / 'RESULTS.md'
        md.write_text(sync_blocks(md.read_text(), results_sections(root)))


RESULTS_CSV = 'benchmarks/results/growth_step_profile.csv'


def results_sections(root: Path) -> dict:
    "{block name: Markdown} rendered from the committed CSV (importable without side effects)."
    p = Path(root) / RESULTS_CSV
    if not p.exists():
        return {}
    lines = p.read_text().splitlines()
    rows = list(csv.DictReader(lines[1:]))
    r0 = rows[0]
    out = [f"Command: `{lines[0].lstrip('# ')}`", '',
           f"| part (width {r0['width']}, 1437 scoring samples; one epoch = {float(r0['epoch_ms']):.1f} ms, min of {r0['reps']}) | ms | epochs |",
           '|---|---|---|'] + [f"| {r['part']} | {float(r['ms']):.1f} | {float(r['epochs']):.2f} |" for r in rows]
    return {'growth_step_profile': '\n'.join(out)}


if __name__ == '__main__':
    main()
