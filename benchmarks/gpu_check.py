"""One-command device check (issues 8, 18): the paper's experiments end to end on synthetic data, one verdict table.

    PYTHONPATH=. python benchmarks/gpu_check.py                        # on a GPU: paper shapes
    PYTHONPATH=. python benchmarks/gpu_check.py --compile reduce-overhead   # the same with train(compile=...) everywhere
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/gpu_check.py --tiny --device cpu   # CI: tiny shapes, seconds
    torchrun --nproc-per-node 2 benchmarks/gpu_check.py --skip throughput,eigen,agreement   # the runs under DDP

Everything runs under `pinned_numerics`, the settings of `s3d reproduce` (cudnn.benchmark off, deterministic algorithms).
Sections (each row records its error instead of stopping the check):
1. Table 1 at the paper config (`SCALES['paper']`: MobileNetV1, 32x32x3, 100 classes, batch 128, 4,096 scoring images,
   fast eigenpairs) on synthetic CIFAR-shaped data, 1 epoch per stage and `--rounds` splits: every run of `table1_runs`
   through the experiment's own `Trainer` and `run_one`. Not through `table1.run`: that entry point takes only a scale
   name of `SCALES` (no shortened paper config) and adds its job runner (`--jobs`) and report, which this skips.
2. Figure 2: one S3D job of the paper grid through `fig2_job` (the per-job code of `s3d reproduce fig2`), fewer steps.
3. Tables 2 and 3 at the paper config (tiny: smoke), 1 epoch per stage, on synthetic data written in the real formats
   (JPEG ImageFolder, ModelNet40 HDF5), through `reproduce_table`, the entry point `s3d reproduce table2|table3` calls:
   data loading, Trainer, every run, report, figure and result files (as `<out>/table{2,3}_gpucheck.*`).
4. Training throughput (img/s) of `train` + `BatchLoader` against a minimal plain loop on the same MobileNetV1
   (benchmarks/train_bench.py; Table 1's model only), and the throughput-model projection of Table 1 (`table1_stages`).
5. Fast eigenpairs at 4,096 images for the seed, x1.3^5 and full MobileNetV1: time, ratio to one forward+backward.
6. Agreement of splitting matrices and eigenpairs between a float64 CPU reference and float32 on the device (small
   MobileNetV1; DGCNN and the RBF net are not checked).

In every run of 1-3, `Probe` times the parts: `Trainer.fit` (seconds, epochs), `Trainer.test` and every eigenpair call
(seconds, cached / stream / dense / exact). From them, the verdict (printed last, and written as `<out>/verdict.md`
and `<out>/verdict.csv`) gives per experiment: training img/s, eigen time over the training time of as many images,
the eigen path, peak GPU memory (on the CPU: max RSS growth, labelled so), the gain agreement and the projected wall
time of the whole paper schedule (`project_runs`, `project_fig2`: every run of the paper's run list, every stage,
control, eigen pass and evaluation), with the inputs it used in a column.

Writes `<out>/gpu_check.md`, `<out>/gpu_check.json` (device name, torch version, command, every figure) and the verdict.
"""
from __future__ import annotations
import argparse, copy, datetime, importlib, json, math, platform, sys, time, traceback
from dataclasses import replace, asdict
from functools import partial
from pathlib import Path
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench as TB
from _results import out_dir, update_results_md
from s3d.cost import count_params_flops
from s3d.graph import split_groups
from s3d.splitmat import dense_matrices
from s3d.eigen import extreme_eigenpairs, eigh_extremes
from s3d.paper.models import MobileNetV1
from s3d.paper.data import ImageData, CIFAR100_MEAN, CIFAR100_STD
from s3d.paper.runs import (resolve_device, markdown_table, start_distributed, stop_distributed, is_writer, barrier,
                            pinned_numerics, run_info, run_info_line)
import s3d.paper.experiments.table1 as T1
import s3d.paper.experiments.fig2 as F2
import s3d.paper.experiments.table2 as T2
import s3d.paper.experiments.table3 as T3


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()

def reset_peak(dev):
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()

def peak_mib(dev):
    "Peak device memory since the last reset (MiB); None on the CPU (not measured there)."
    return torch.cuda.max_memory_allocated() / 2**20 if dev.type == 'cuda' else None

def timed(dev, f):
    "(result or None, seconds, error message or None, peak MiB)."
    reset_peak(dev); sync(dev); t = time.perf_counter()
    try: r, err = f(), None
    except Exception as e:  # record and go on: one failing run must not hide the others
        r, err = None, f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'
        traceback.print_exc()
    sync(dev)
    return r, time.perf_counter() - t, err, peak_mib(dev)


class Probe:
    """Times the parts of the real runs (issue 18): every `Trainer.fit` (seconds, epochs), `Trainer.test` and every
    eigenpair computation of `s3d.grow` (seconds and the path taken: cached, stream, dense or exact), per run key.
    Wraps the Trainer instance's methods and `s3d.grow.extreme_eigenpairs`; nothing in the library changes."""
    def __init__(self, T, epochs_of):
        G = importlib.import_module('s3d.grow')   # the module (s3d.grow the attribute is the function)
        self.G, self.orig, self.key, self.runs = G, G.extreme_eigenpairs, None, {}
        fit, test = T.fit, T.test
        def timed_fit(*args, **kw):
            t = time.perf_counter(); r = fit(*args, **kw); self._add('fit_s', time.perf_counter() - t, T.device)
            self._add('epochs', epochs_of(args, kw)); return r
        def timed_test(*args, **kw):
            t = time.perf_counter(); r = test(*args, **kw); self._add('test_s', time.perf_counter() - t, T.device)
            self._add('tests', 1); return r
        def timed_eigen(*args, stats=None, **kw):
            st = {} if stats is None else stats
            t = time.perf_counter(); r = self.orig(*args, stats=st, **kw)
            self._add('eigen_s', time.perf_counter() - t, T.device); self._add('eigens', 1)
            self.runs[self.key].setdefault('eigen_paths', set()).add(st.get('method', '?')); return r
        T.fit, T.test, self.eigen = timed_fit, timed_test, timed_eigen

    def _add(self, what, v, dev=None):
        if dev is not None: sync(dev)
        d = self.runs.setdefault(self.key, {}); d[what] = d.get(what, 0) + v

    def run(self, key, f):
        "f() with every part timed under `key`."
        self.key, self.G.extreme_eigenpairs = key, self.eigen
        self.runs.setdefault(key, {})
        try: return f()
        finally: self.G.extreme_eigenpairs = self.orig


def max_rss_mib():
    "The process's peak resident memory so far (MiB; Linux reports KiB)."
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_cifar(n_train, n_test, seed=0) -> ImageData:
    "Random CIFAR-100-shaped uint8 images with random labels (shapes and augmentation of the real data)."
    g = torch.Generator().manual_seed(seed)
    x = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = lambda n: torch.randint(0, 100, (n,), generator=g)
    return ImageData('synthetic-cifar100', x(n_train), y(n_train), x(n_test), y(n_test), [f'c{i}' for i in range(100)],
                     CIFAR100_MEAN, CIFAR100_STD, pad=4, flip=True)


def table1_config(a):
    "The paper config (tiny: the smoke shapes), shortened to 1 epoch per stage and `a.rounds` splits."
    if a.tiny: return replace(T1.SCALES['smoke'], epochs=1, rounds=a.rounds, score_images=16, score_batch=16, batch_size=16)
    return replace(T1.SCALES['paper'], epochs=1, rounds=a.rounds, seeds=(0,), sweep_seeds=(0,))


def _probe_fields(d) -> dict:
    "The timed parts of one run (see `Probe`)."
    return dict(fit_s=round(d.get('fit_s', 0.0), 3), epochs=d.get('epochs', 0), test_s=round(d.get('test_s', 0.0), 3),
                tests=d.get('tests', 0), eigen_s=round(d.get('eigen_s', 0.0), 3), eigens=d.get('eigens', 0),
                eigen_paths=','.join(sorted(d.get('eigen_paths', ()))) or None)


def _run_row(tag, run, df, s, err, mem, probe, rss0) -> dict:
    print(f"  {tag} {run['key']:22s} {s:7.1f} s  {'ok' if err is None else err}", flush=True)
    return dict(experiment=tag, run=run['key'], method=run['method'], seconds=round(s, 2), peak_MiB=mem and round(mem),
                **_probe_fields(probe.runs.get(run['key'], {})), rss_growth_MiB=round(max_rss_mib() - rss0), error=err)


def check_table1(a, dev, out):
    cfg = table1_config(a)
    data = synthetic_cifar(*((32, 16) if a.tiny else (a.train_images, 1000)))
    if a.compile: T1.train = partial(T1.train.func if isinstance(T1.train, partial) else T1.train, compile=a.compile)
    T, t_setup, err, _ = timed(dev, lambda: T1.Trainer(cfg, data, dev))
    if err: return [dict(experiment='table1', run='Trainer', error=err)], cfg, {}
    probe, rss0 = Probe(T, lambda args, kw: cfg.epochs), max_rss_mib()
    rows, keep = [], set(a.runs.split(',')) - {''}
    if a.tiny and not keep: keep = {'S2D-c1-s0', 'S3D-c3-s0', 'width1-s0', 'l1-s0', 'bn-s0', 'morphnet-s0', 'E-S3D-c3-s0'}
    for run in T1.table1_runs(cfg):
        if keep and run['key'] not in keep: continue
        job = lambda: T1.run_one(run, cfg, T, out / 'table1_runs', force=True)
        df, s, err, mem = timed(dev, lambda: probe.run(run['key'], job))
        last = df.iloc[-1] if df is not None else {}
        rows.append(dict(_run_row('table1', run, df, s, err, mem, probe, rss0),
                         params=int(last['params']) if df is not None else None, flops=int(last['flops']) if df is not None else None,
                         widths=last['widths'] if df is not None else None))
    return rows, cfg, dict(n_train=len(data.y_train), n_test=len(data.y_test))


def fig2_config(a):
    "Figure 2's paper config (tiny: smoke), shortened: fewer Adam steps and 2 split rounds."
    return replace(F2.SCALES['smoke' if a.tiny else 'paper'], steps=20 if a.tiny else 200, rounds=2)


def check_fig2(a, dev):
    "One S3D job of Figure 2's grid through `fig2_job` (the code path of `s3d reproduce fig2`), shortened."
    cfg = fig2_config(a)
    job = next(j for j in F2.fig2_jobs(cfg) if j[-1] == 'split' and j[4] == float(cfg.c) and j[5] is None)
    rss0 = max_rss_mib()
    r, s, err, mem = timed(dev, lambda: F2.fig2_job(job, cfg, dev))
    return [dict(experiment='fig2', run=F2.job_key(job), method='S3D', seconds=round(s, 2), peak_MiB=mem and round(mem),
                 rss_growth_MiB=round(max_rss_mib() - rss0),
                 widths=None if r is None else f'{int(r[1].neurons.iloc[-1])} neurons', error=err)]


def _reproduce(tag, mod, cfg, data_root, dev, out, epochs_of, parts):
    """Every run of Table 2 or 3 at config `cfg` through `s3d.paper.runs.reproduce_table`, the entry point of
    `s3d reproduce table2|table3` (pinned numerics, output checks, data loading from `data_root`, the Trainer, every
    run, the report, the figure and the result files), with each run's parts timed (`Probe`). `parts`: the module's
    (load, runs, report, plot). Returns (rows, the config the runs used, train/test sizes)."""
    from s3d.paper.runs import reproduce_table
    import pandas as pd
    load, runs, report, plot = parts
    state, rows = {}, []
    def trainer(c, tr, te, device):
        T = mod.Trainer(c, tr, te, device)
        state.update(probe=Probe(T, epochs_of), cfg=c, sizes=dict(n_train=len(tr), n_test=len(te)), rss0=max_rss_mib())
        return T
    def one(run, c, T, root, force):
        job = lambda: mod.run_one(run, c, T, root, force)
        df, s, err, mem = timed(dev, lambda: state['probe'].run(run['key'], job))
        rows.append(_run_row(tag, run, df, s, err, mem, state['probe'], state['rss0']))
        return df if df is not None else pd.DataFrame()
    entry = lambda: reproduce_table(tag, 'gpucheck', {'gpucheck': cfg}, load, trainer, runs, one, report, plot,
                                    lambda c, d: 'synthetic data', device=dev, data=data_root, out=out,
                                    force=True, progress=False)
    _, s, err, _ = timed(dev, entry)
    if err:
        rows.append(dict(experiment=tag, run='reproduce_table (data, report, files)', seconds=round(s, 2), error=err))
    return rows, state.get('cfg', cfg), state.get('sizes', {})


def tables23_configs(a) -> tuple:
    "Tables 2 and 3 at the paper config (tiny: smoke), 1 epoch per stage, `a.rounds` splits, one seed, smaller scoring sets."
    c2 = T2.SCALES['smoke' if a.tiny else 'paper']
    c2 = replace(c2, epochs=1, rounds=a.rounds, seeds=(0,), score_images=min(c2.score_images, 64 if a.tiny else 512))
    c3 = T3.SCALES['smoke' if a.tiny else 'paper']
    c3 = replace(c3, epochs=1, finetune_epochs=1, baseline_epochs=1, rounds=a.rounds, seeds=(0,),
                 score_clouds=min(c3.score_clouds, 12 if a.tiny else 256))
    return c2, c3


def check_tables23(a, dev, out):
    """Tables 2 and 3: every run of the paper config (tiny: smoke), 1 epoch per stage, on synthetic data written in the
    real formats, through the `s3d reproduce` entry point (`_reproduce`)."""
    import numpy as np
    from s3d.paper.imagenet import make_fake_imagefolder
    from s3d.paper.pointcloud import write_modelnet_h5
    c2, c3 = tables23_configs(a)
    # Table 2: a generated JPEG ImageFolder at ImageNet-like sizes (256 px; 224 crops at paper shapes)
    root = out / 'imagefolder'
    if is_writer(): make_fake_imagefolder(root, n_classes=3 if a.tiny else 10, per_class=4 if a.tiny else 64,
                                          val_per_class=2 if a.tiny else 16, size=40 if a.tiny else 256)
    barrier()   # under torchrun: rank 0 writes the generated data, the others read it
    rows, c2, s2 = _reproduce('table2', T2, c2, root, dev, out, lambda args, kw: c2.epochs,
                              (T2.table2_data, T2.table2_runs, T2.table2_report, T2.plot_table2))
    # Table 3: synthetic point clouds written as the standard HDF5 release, 1,024 points at paper shapes
    g = np.random.default_rng(0); n_cls = 3 if a.tiny else 40; P = 2 * c3.num_points
    def write():
        for split, n in (('train', 8 * n_cls), ('test', 2 * n_cls)):
            write_modelnet_h5(out / 'modelnet', split, g.standard_normal((n, P, 3)), np.arange(n) % n_cls)
    if is_writer(): write()
    barrier()
    r3, c3, s3 = _reproduce('table3', T3, c3, out / 'modelnet', dev, out,
                            lambda args, kw: kw['epochs'] if 'epochs' in kw else args[2],
                            (T3.table3_data, T3.table3_runs, T3.table3_report, T3.plot_table3))
    return rows + r3, dict(table2=c2, table3=c3), dict(table2=s2, table3=s3)


def check_throughput(a, dev, cfg):
    steps, batch = (2, 16) if a.tiny else (a.steps, 128)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (steps * batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, cfg.num_classes, (steps * batch,), generator=g)
    rows, meas = [], {}
    for name, widths in (('full', cfg.full_widths), ('seed', cfg.seed_widths)):
        mk = lambda: (torch.manual_seed(0), cfg.model(widths))[1]
        fl = count_params_flops(mk(), cfg.example())[1]
        wu = []
        ours = TB.bench_ours(mk(), x, y, dev, batch, steps, warmup=wu)
        plain = TB.bench_plain(mk(), x, y, dev, batch, steps)
        row = dict(model=name, MFLOPs=round(fl / 1e6, 2), batch=batch, steps=steps, ours_img_s=round(ours, 1),
                   plain_img_s=round(plain, 1), ratio=round(ours / plain, 3), first_epoch_s=round(wu[0], 2))
        if a.compile:
            wc = []
            row.update(compiled_img_s=round(TB.bench_ours(mk(), x, y, dev, batch, steps, compile=a.compile, warmup=wc), 1),
                       compiled_first_epoch_s=round(wc[0], 2))
        rows.append(row); meas[name] = (fl, row.get('compiled_img_s', ours) if a.compile else ours)
        print(f'  throughput {row}', flush=True)
    return rows, meas


def grown_widths(cfg, r): return [max(1, round(w * (1 + cfg.ratio) ** r)) for w in cfg.seed_widths]


def table1_stages(cfg) -> list:
    "(method, widths, weight) per training stage of every run of the Table 1 schedule `cfg` (weight: its cost in stages)."
    grown = lambda seed, r: [max(1, round(w * (1 + cfg.ratio) ** r)) for w in seed]
    prune = {'L1 pruning': 1, 'BN pruning': 2, 'MorphNet': 2}   # stages at the full width (pruned ones ~0.9x)
    out = []
    for run in T1.table1_runs(cfg):
        m, r = run['method'], cfg.rounds
        if m in ('S2D', 'S3D', 'random growth', 'Net2Net'):   # seed + one stage after every split (controls: S3D's widths)
            out += [(m, grown(run['widths'], k), 1.0) for k in range(r + 1)]
        elif m == 'scratch': out += [(m, grown(run['widths'], r), 1.0)] * (r + 1)   # S3D's final net, the same stages
        elif m in prune: out += [(m, list(cfg.full_widths), 0.9)] * prune[m]
        else: out.append((m, run['widths'], 1.0))
    return out


def project_table1(ips_of_widths, cfg) -> dict:
    "Hours per method of the Table 1 schedule `cfg` (controls and pruning stages counted), from a throughput model."
    n, hours = 50_000 * cfg.epochs, {}
    for m, w, k in table1_stages(cfg): hours[m] = hours.get(m, 0.0) + k * n / ips_of_widths(w) / 3600
    return hours


def check_eigen(a, dev, cfg):
    n = 32 if a.tiny else 4096
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, 32, 32, generator=g); Y = torch.randint(0, cfg.num_classes, (n,), generator=g)
    bs = cfg.score_batch
    batches = [(X[i:i + bs].to(dev), Y[i:i + bs].to(dev)) for i in range(0, n, bs)]
    loss = nn.CrossEntropyLoss()
    rows = []
    for name, widths in (('seed', cfg.seed_widths), (f'x{1 + cfg.ratio:g}^{cfg.rounds if a.tiny else 5}', grown_widths(cfg, 1 if a.tiny else 5)),
                         ('full', cfg.full_widths)):
        torch.manual_seed(0); m = cfg.model(widths).to(dev)
        gs = split_groups(m, cfg.example())
        def fb():
            for xb, yb in batches: m.zero_grad(); loss(m(xb), yb).backward()
        fb(); _, t_fb, _, mem_fb = timed(dev, fb)
        eig, t_e, err, mem = timed(dev, lambda: extreme_eigenpairs(m, gs, loss, batches, 'fast'))
        rows.append(dict(model=name, neurons=sum(g.n_neurons for g in gs), images=n, fwd_bwd_s=round(t_fb, 3),
                         eigen_s=round(t_e, 3), ratio=round(t_e / t_fb, 2), peak_MiB=mem and round(mem),
                         fwd_bwd_peak_MiB=mem_fb and round(mem_fb), error=err))
        print(f'  eigen {rows[-1]}', flush=True)
        del m, eig
        if dev.type == 'cuda': torch.cuda.empty_cache()
    return rows


def check_agreement(a, dev):
    "float64 CPU reference against float32 on `dev`: splitting matrices and eigenpairs (exact and fast), small net."
    torch.manual_seed(0)
    ref = MobileNetV1(10, widths=[8, 16, 16], strides=[1, 2, 2])
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, nn.BatchNorm2d): mod.running_var.uniform_(0.5, 2.); mod.running_mean.normal_(0, 0.1); mod.weight.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(64, 3, 16, 16, generator=g); Y = torch.randint(0, 10, (64,), generator=g)
    loss = nn.CrossEntropyLoss()
    r64 = copy.deepcopy(ref).double()
    gs64 = split_groups(r64, X.double())
    S64 = dense_matrices(r64, gs64, loss, [(X.double(), Y)])
    E64 = {k: eigh_extremes(v) for k, v in S64.items()}
    def separated(S):  # ends whose eigenvalue is at least 5% of the radius from the next one (else the vector is ill-defined)
        lam = torch.linalg.eigvalsh(0.5 * (S + S.transpose(1, 2))); rad = lam.abs().amax(1).clamp_min(1e-30)
        return torch.cat([(lam[:, 1] - lam[:, 0]) >= 0.05 * rad, (lam[:, -1] - lam[:, -2]) >= 0.05 * rad])
    d32 = copy.deepcopy(ref).to(dev)
    gs32 = split_groups(d32, X)
    S32 = dense_matrices(d32, gs32, loss, [(X.to(dev), Y.to(dev))])
    rows = []
    for method in ('exact', 'fast'):
        E = extreme_eigenpairs(d32, gs32, loss, [(X.to(dev), Y.to(dev))], method)
        for k in S64:
            e, r = E[k], E64[k]
            rad = torch.maximum(r.lam_min.abs(), r.lam_max.abs()).clamp_min(1e-30)
            err = torch.cat([(e.lam_min.cpu().double() - r.lam_min).abs() / rad, (e.lam_max.cpu().double() - r.lam_max).abs() / rad])
            cos = torch.cat([(e.v_min.cpu().double() * r.v_min).sum(1).abs(), (e.v_max.cpu().double() * r.v_max).sum(1).abs()])
            cos = cos[separated(S64[k])] if S64[k].shape[1] > 1 else cos
            s_err = ((S32[k].cpu().double() - S64[k]).abs().max() / S64[k].abs().max()).item()
            rows.append(dict(method=method, group=k, S_rel_err=float(f'{s_err:.3g}'), lam_err_max=float(f'{err.max().item():.3g}'),
                             within_2pct=round(100 * (err <= 0.02).double().mean().item(), 1),
                             separated_ends=len(cos), cos_median=round(cos.median().item(), 4) if len(cos) else None,
                             cos_min=round(cos.min().item(), 4) if len(cos) else None))
    return rows


PAPER_SIZES = {'table1': (50_000, 10_000), 'table2': (1_281_167, 50_000), 'table3': (9_843, 2_468)}   # train, test


def _score_size(c): return getattr(c, 'score_images', None) or c.score_clouds


def _grown(run): return run['method'] in ('S2D', 'S3D') or 'growth' in run


def _stage_epochs(tag, c, grown):
    "(epochs of the first stage, of each later stage) of a grown run; baselines: (epochs of one stage, 0)."
    if tag == 'table3': return (c.epochs, c.finetune_epochs) if grown else (c.baseline_budget, 0)
    return (c.epochs, c.epochs) if grown else (c.epochs, 0)


def project_runs(tag, rows, M, P, n_meas, paper_runs) -> dict:
    """Projected hours of every run of `paper_runs` (config `P`) from the timed parts of the runs measured at config `M`:
    training = epochs x images x measured seconds per image-epoch, eigen = splits x measured seconds per call x
    scoring-set ratio, evaluation = evaluations x measured seconds per call x test-set ratio. A paper run without a
    measured run of its key (seed 0) is costed from a measured run of its method."""
    import re
    n_tr, n_te = n_meas['n_train'], n_meas['n_test']
    N_tr, N_te = PAPER_SIZES[tag]
    ok = {r['run']: r for r in rows if r.get('experiment') == tag and not r.get('error') and r.get('epochs')}
    if not ok:
        nan = float('nan')
        return dict(hours=nan, borrowed=0, train_h=nan, eigen_h=nan, test_h=nan)
    by_method = {}
    for r in ok.values(): by_method.setdefault(r['method'], r)
    parts, borrowed = dict(train_h=0.0, eigen_h=0.0, test_h=0.0), 0
    for run in paper_runs:
        m = ok.get(re.sub(r'-s\d+$', '-s0', run['key']))
        if m is None: m, borrowed = by_method.get(run['method'], next(iter(ok.values()))), borrowed + 1
        g = _grown(run)
        e0, e1 = _stage_epochs(tag, P, g)
        if g: epochs = e0 + P.rounds * e1
        else: epochs = m['epochs'] / max(_stage_epochs(tag, M, False)[0], 1) * e0   # measured stages x paper epochs
        parts['train_h'] += epochs * N_tr * m['fit_s'] / (m['epochs'] * n_tr) / 3600
        if m['eigens']:
            calls = m['eigens'] * (P.rounds / max(M.rounds, 1) if g else 1)
            parts['eigen_h'] += calls * m['eigen_s'] / m['eigens'] * _score_size(P) / _score_size(M) / 3600
        if m['tests']:
            calls = m['tests'] * ((P.rounds + 1) / (M.rounds + 1) if g else 1)
            parts['test_h'] += calls * m['test_s'] / m['tests'] * N_te / n_te / 3600
    return dict(hours=sum(parts.values()), borrowed=borrowed, **parts)


def project_fig2(row, M, P) -> float:
    "Hours of Figure 2's whole paper grid: jobs x the measured job x (steps x rounds) ratio."
    if row.get('error'): return float('nan')
    return len(F2.fig2_jobs(P)) * row['seconds'] * (P.steps * (P.rounds + 1)) / (M.steps * (M.rounds + 1)) / 3600


def verdict(a, res, cfgs, sizes) -> list:
    "One row per experiment: throughput, eigen cost, memory, agreement and the projected paper-scale wall time."
    rows = res.get('table1', []) + res.get('tables23', []) + res.get('fig2', [])
    thr = {r['model']: r for r in res.get('throughput', [])}
    agree = [r['lam_err_max'] for r in res.get('agreement', [])]
    cuda = a.device_type == 'cuda'
    mem_col, mem_key = ('peak_GPU_MiB', 'peak_MiB') if cuda else ('CPU_max_RSS_growth_MiB', 'rss_growth_MiB')
    out = []
    for tag in ('table1', 'table2', 'table3', 'fig2'):
        rs = [r for r in rows if r.get('experiment') == tag]
        if not rs: continue
        good = [r for r in rs if not r.get('error')]
        fit_s, img = sum(r.get('fit_s', 0) for r in good), sum(r.get('epochs', 0) for r in good)
        eig_s, eigs = sum(r.get('eigen_s', 0) for r in good), sum(r.get('eigens', 0) for r in good)
        n = sizes.get(tag, {}).get('n_train')
        ips = img * n / fit_s if n and fit_s else None
        t_fb = _score_size(cfgs[tag]) / ips if ips and tag in cfgs and tag != 'fig2' else None
        paths = sorted({p for r in good for p in (r.get('eigen_paths') or '').split(',') if p})
        row = dict(experiment=tag, runs_ok=f'{len(good)}/{len(rs)}', train_img_s=ips and round(ips, 1),
                   bench_ours_plain_img_s=(f"{thr['full']['ours_img_s']} / {thr['full']['plain_img_s']}"
                                           if tag == 'table1' and 'full' in thr else None),
                   eigen_over_T_train=round(eig_s / eigs / t_fb, 2) if eigs and t_fb else None,
                   eigen_path=','.join(paths) or None, **{mem_col: max((r.get(mem_key) or 0 for r in rs), default=None)},
                   gain_agreement=max(agree) if agree and tag in ('table1', 'table2') else None)
        if tag == 'fig2':
            P = F2.SCALES['paper']
            row.update(projected_h=round(project_fig2(rs[0], cfgs['fig2'], P), 3),
                       projection_inputs=f'{len(F2.fig2_jobs(P))} jobs x the measured S3D job x steps x rounds ratio')
        elif tag in cfgs and n:
            P = dict(table1=T1.SCALES['paper'], table2=T2.SCALES['paper'], table3=T3.SCALES['paper'])[tag]
            runs = dict(table1=T1.table1_runs, table2=T2.table2_runs, table3=T3.table3_runs)[tag](P)
            pr = project_runs(tag, rs, cfgs[tag], P, sizes[tag], runs)
            row.update(projected_h=round(pr['hours'], 3),
                       projection_inputs=(f"{len(runs)} runs: train {pr['train_h']:.3g} h (measured s/image-epoch x paper "
                                          f"epochs x {PAPER_SIZES[tag][0]:,} images) + eigen {pr['eigen_h']:.3g} h + "
                                          f"eval {pr['test_h']:.3g} h; {pr['borrowed']} runs costed from their method"))
        out.append(row)
    return out


def report(a, dev, res, out):
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or platform.machine()
    head = dict(date=datetime.date.today().isoformat(), device=str(dev), device_name=name, torch=torch.__version__,
                command='python ' + ' '.join(sys.argv), tiny=a.tiny, compile=a.compile or None)
    (out / 'gpu_check.json').write_text(json.dumps(dict(head, **res), indent=1, default=str))
    import pandas as pd
    md = [f"# gpu_check ({head['date']}, {name}, torch {head['torch']})", '', f"Command: `{head['command']}`", '']
    sections = (('table1', 'Table 1 runs (1 epoch per stage)'), ('fig2', 'Figure 2 job (shortened)'),
                ('tables23', 'Tables 2 and 3 runs (1 epoch per stage, synthetic data in the real formats)'),
                ('throughput', 'Training throughput'), ('eigen', 'Fast eigenpairs'),
                ('agreement', 'float64 CPU vs float32 device'), ('projection', 'Projection (Table 1, throughput model)'))
    for key, title in sections:
        if res.get(key): md += [f'## {title}', '', markdown_table(pd.DataFrame(res[key]).astype(object).where(lambda d: d.notna(), '–'), digits=4), '']
    md += [run_info_line(res['numerics']) + f" cudnn.benchmark {'on' if res['numerics']['cudnn_benchmark'] else 'off'} (as `s3d reproduce`).", '']
    md += [f"Peak memory: `torch.cuda.max_memory_allocated` per row ('–' on the CPU: not measured). Eigenvector |cos| only over "
           f"ends separated from the next eigenvalue by >= 5% of the radius. Whole check: {res['seconds']} s.", '']
    v = pd.DataFrame(res['verdict'])
    v.to_csv(out / 'verdict.csv', index=False)
    vmd = ['## Verdict', '', verdict_table(v), '', VERDICT_NOTE, '']
    (out / 'verdict.md').write_text('\n'.join(vmd))
    text = '\n'.join(md + vmd)
    (out / 'gpu_check.md').write_text(text)
    print(text)


VERDICT_NOTE = ("train_img_s: images (clouds) per second of the experiment's own `Trainer.fit` inside its runs; "
                "bench_ours_plain_img_s: `train` vs a plain loop on the same full model (train_bench, Table 1 only). "
                "eigen_over_T_train: seconds per eigenpair call over the seconds `fit` takes for as many images; "
                "eigen_path: the path `extreme_eigenpairs` took (cached, stream, dense or exact). "
                "Memory: peak_GPU_MiB is torch.cuda.max_memory_allocated over the runs; CPU_max_RSS_growth_MiB is the "
                "growth of the process's max RSS during the experiment (a CPU stand-in, not GPU memory). "
                "gain_agreement: largest |eigenvalue error| / spectral radius, float32 on the device vs a float64 CPU "
                "reference, on a small MobileNetV1 (the network family of Tables 1 and 2; DGCNN and the RBF net "
                "not checked). "
                "projected_h: the whole paper schedule (every run, stage, control, eigen pass and evaluation) from the "
                "parts timed here; grown networks are costed at the widths measured here (1 round), so later, "
                "wider stages are under-counted. At --tiny the figures check the arithmetic, not the hours.")


def verdict_table(v) -> str:
    return markdown_table(v.astype(object).where(v.notna(), '–'), digits=4)


VERDICT_CSV = 'gpu_check_verdict.csv'


def save_verdict(a, dev, res):
    "The verdict table as the committed CSV, with the device and scale it was measured at; then its RESULTS.md block."
    import pandas as pd
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'
    v = pd.DataFrame(res['verdict']).assign(device=name, tiny=bool(a.tiny))
    v.to_csv(out_dir(True) / VERDICT_CSV, index=False)
    update_results_md(results_sections(Path(__file__).resolve().parent.parent))


def results_sections(root: Path) -> dict:
    "The RESULTS.md block from the committed verdict CSV."
    import pandas as pd
    v = pd.read_csv(Path(root) / 'benchmarks' / 'results' / VERDICT_CSV)
    where = f"Device: {v['device'].iloc[0]}, {'`--tiny` shapes' if v['tiny'].iloc[0] else 'paper shapes'}."
    return {'gpu-check-verdict': verdict_table(v.drop(columns=['device', 'tiny'])) + '\n\n' + where}


def main(argv=None):
    with pinned_numerics(1):   # the numerics `s3d reproduce` runs under: cudnn.benchmark off, deterministic algorithms
        return _main(argv)


def _main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='auto'); p.add_argument('--tiny', action='store_true', help='tiny shapes (CI on a CPU)')
    p.add_argument('--rounds', type=int, default=1, help='splits per S2D/S3D run'); p.add_argument('--steps', type=int, default=40)
    p.add_argument('--train-images', type=int, default=5120); p.add_argument('--out', default='gpu_check_out')
    p.add_argument('--compile', default='', help="train(compile=...) for all training: 'default' or 'reduce-overhead'")
    p.add_argument('--runs', default='', help='comma-separated Table 1 run keys to do (default: all; --tiny: one of each kind)')
    p.add_argument('--skip', default='',
                   help='comma-separated sections to skip: table1,fig2,tables23,throughput,eigen,agreement')
    p.add_argument('--update-results', action='store_true',
                   help='also write the verdict to benchmarks/results/gpu_check_verdict.csv and its RESULTS.md block')
    a = p.parse_args(argv)
    if a.compile == 'default': a.compile = True
    dist, dev = start_distributed(a.device)   # under torchrun: this process's GPU (gloo on CPU); else a.device
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    skip, res, t0 = set(a.skip.split(',')) - {''}, {}, time.perf_counter()
    if not is_writer(): skip |= {'throughput', 'eigen', 'agreement'}   # one-process measurements: rank 0 alone
    cfg, cfgs, sizes = table1_config(a), {}, {}
    a.device_type = dev.type
    if 'table1' not in skip:
        res['table1'], cfg, sizes['table1'] = check_table1(a, dev, out)
        cfgs['table1'] = cfg
    if 'fig2' not in skip: res['fig2'], cfgs['fig2'] = check_fig2(a, dev), fig2_config(a)
    if 'tables23' not in skip:
        res['tables23'], c23, s23 = check_tables23(a, dev, out)
        cfgs.update(c23); sizes.update(s23)
    if 'throughput' not in skip: res['throughput'], meas = check_throughput(a, dev, cfg)
    if 'eigen' not in skip: res['eigen'] = check_eigen(a, dev, cfg)
    if 'agreement' not in skip: res['agreement'] = check_agreement(a, dev)
    if 'throughput' not in skip:   # at --tiny from tiny measurements: checks the arithmetic, not the hours
        (f1, i1), (f0, i0) = meas['full'], meas['seed']
        # seconds per image = a0 + b * FLOPs, through the two measured models; on a noisy machine the bigger model
        # can measure faster (b < 0), which would make large networks free: never let time fall with FLOPs
        b = max((1 / i1 - 1 / i0) / max(f1 - f0, 1), 0.0)
        a0 = max(1 / i0 - b * f0, 0.0) or 1 / i0
        ips = lambda w: 1 / max(a0 + b * count_params_flops(MobileNetV1(100, widths=w), torch.zeros(1, 3, 32, 32))[1], 1e-9)
        paper = T1.SCALES['paper']
        parts = project_table1(ips, paper); hours = sum(parts.values())
        n_splits = sum(paper.rounds for r in T1.table1_runs(paper) if r['method'] in ('S2D', 'S3D'))
        eig = [r['eigen_s'] for r in res.get('eigen', []) if r.get('error') is None]
        eig_h = n_splits * max(eig) / 3600 if eig else float('nan')
        ctl = sum(parts.get(m, 0.0) for m in ('random growth', 'Net2Net', 'scratch'))
        res['projection'] = [dict(what='paper-scale Table 1 training', hours=round(hours, 2)),
                             dict(what='of which the controls (random growth, Net2Net, scratch)', hours=round(ctl, 2)),
                             dict(what=f'{n_splits} splits x slowest measured fast eigenpairs', hours=round(eig_h, 3)),
                             dict(what='total', hours=round(hours + eig_h, 2))]
    res['verdict'], res['sizes'] = verdict(a, res, cfgs, sizes), sizes
    res['seconds'] = round(time.perf_counter() - t0, 1)
    res['numerics'] = dict(run_info(dev), cudnn_benchmark=torch.backends.cudnn.benchmark)
    if dist is not None: res['world_size'] = dist.world_size
    if is_writer(): report(a, dev, res, out)
    if is_writer() and a.update_results: save_verdict(a, dev, res)
    barrier(); stop_distributed()
    return res


if __name__ == '__main__': main()
