"""One-command device check (issue 8): the paper's experiments end to end on synthetic data, throughput, eigenpairs, CPU/GPU agreement.

    PYTHONPATH=. python benchmarks/gpu_check.py                        # on a GPU: paper shapes, about 3-5 minutes
    PYTHONPATH=. python benchmarks/gpu_check.py --compile reduce-overhead   # the same with train(compile=...) everywhere
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/gpu_check.py --tiny --device cpu   # CI: tiny shapes, seconds

Sections (each row records its error instead of stopping the check):
1. Table 1 at the paper config (`SCALES['paper']`: MobileNetV1, 32x32x3, 100 classes, batch 128, 4,096 scoring images,
   fast eigenpairs) on synthetic CIFAR-shaped data, shortened to 1 epoch per stage and `--rounds` splits: every run of
   `table1_runs` (S2D, S3D and its c sweep, energy-aware, width multipliers, L1 / BN pruning, MorphNet) through the
   real pipeline (`Trainer`, `run_one`), with wall time and peak device memory. Figure 2 (RBF toy): one paper-config job,
   shortened.
2. Training throughput (img/s) of `train` + `BatchLoader` against a minimal plain loop (benchmarks/train_bench.py),
   full and seed MobileNetV1, and the projected paper-scale Table 1 time (training + one fast eigenpair pass per split;
   every stage of every run counted, the three controls included: `table1_stages`).
Everything runs under `pinned_numerics`, the settings of `s3d reproduce` (cudnn.benchmark off, deterministic algorithms).
3. Fast eigenpairs at 4,096 images for the seed, x1.3^5 and full MobileNetV1: time, ratio to one forward+backward over
   the same images, peak device memory.
4. Agreement of splitting matrices and eigenpairs between a float64 CPU reference and float32 on the device (small net).

Writes `<out>/gpu_check.md` and `<out>/gpu_check.json` (device name, torch version, command, every figure).
"""
from __future__ import annotations
import argparse, copy, datetime, json, math, platform, sys, time, traceback
from dataclasses import replace, asdict
from functools import partial
from pathlib import Path
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench as TB
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


def check_table1(a, dev, out):
    cfg = table1_config(a)
    data = synthetic_cifar(*((32, 16) if a.tiny else (a.train_images, 1000)))
    if a.compile: T1.train = partial(T1.train.func if isinstance(T1.train, partial) else T1.train, compile=a.compile)
    T, t_setup, err, _ = timed(dev, lambda: T1.Trainer(cfg, data, dev))
    if err: return [dict(run='Trainer', error=err)], cfg
    rows, keep = [], set(a.runs.split(',')) - {''}
    if a.tiny and not keep: keep = {'S2D-c1-s0', 'S3D-c3-s0', 'width1-s0', 'l1-s0', 'bn-s0', 'morphnet-s0', 'E-S3D-c3-s0'}
    for run in T1.table1_runs(cfg):
        if keep and run['key'] not in keep: continue
        df, s, err, mem = timed(dev, lambda: T1.run_one(run, cfg, T, out / 'table1_runs', force=True))
        last = df.iloc[-1] if df is not None else {}
        rows.append(dict(run=run['key'], method=run['method'], seconds=round(s, 2), peak_MiB=mem and round(mem),
                         params=int(last['params']) if df is not None else None, flops=int(last['flops']) if df is not None else None,
                         widths=last['widths'] if df is not None else None, error=err))
        print(f"  table1 {run['key']:16s} {s:7.1f} s  {'ok' if err is None else err}", flush=True)
    cfg2 = replace(F2.SCALES['smoke' if a.tiny else 'paper'], steps=20 if a.tiny else 200, rounds=2)
    def fig2_job():
        x = torch.linspace(-cfg2.x_range, cfg2.x_range, cfg2.n_points, dtype=torch.float64, device=dev)
        th, u = (v.to(dev) for v in F2.make_target(0, cfg2.target_neurons))
        return F2.grow_rbf(x, F2.rbf_predict(th, u, x), 2, cfg2.c, cfg2, train_out=False)
    r, s, err, mem = timed(dev, fig2_job)
    rows.append(dict(run='fig2 S3D m=2 (1 job)', method='S3D', seconds=round(s, 2), peak_MiB=mem and round(mem),
                     params=None, flops=None, widths=None if r is None else str(int(r[1].neurons.iloc[-1])) + ' neurons', error=err))
    return rows, cfg


def _every_run(tag, mod, runs, cfg, data, dev, out):
    "Rows (run, seconds, peak memory, error) of every run of experiment module `mod`, through its own Trainer and run_one."
    T, _, err, _ = timed(dev, lambda: mod.Trainer(cfg, *data, dev))
    if err: return [dict(run=f'{tag} Trainer', error=err)]
    rows = []
    for run in runs:
        df, s, err, mem = timed(dev, lambda: mod.run_one(run, cfg, T, out / f'{tag}_runs', force=True))
        rows.append(dict(run=f"{tag} {run['key']}", seconds=round(s, 2), peak_MiB=mem and round(mem), error=err))
        print(f"  {tag} {run['key']:22s} {s:7.1f} s  {'ok' if err is None else err}", flush=True)
    return rows


def check_tables23(a, dev, out):
    "Tables 2 and 3: every run of the paper config (tiny: smoke) on synthetic data in the real formats, 1 epoch per stage."
    import numpy as np
    from s3d.paper.imagenet import make_fake_imagefolder, scan_imagefolder
    from s3d.paper.pointcloud import write_modelnet_h5, load_modelnet
    rows = []
    # Table 2: a generated JPEG ImageFolder at ImageNet-like sizes (256 px; 224 crops at paper shapes)
    c2 = T2.SCALES['smoke' if a.tiny else 'paper']
    c2 = replace(c2, epochs=1, rounds=a.rounds, seeds=(0,), score_images=min(c2.score_images, 64 if a.tiny else 512))
    root = out / 'imagefolder'
    if is_writer(): make_fake_imagefolder(root, n_classes=3 if a.tiny else 10, per_class=4 if a.tiny else 64,
                                          val_per_class=2 if a.tiny else 16, size=40 if a.tiny else 256)
    barrier()   # under torchrun: rank 0 writes the generated data, the others read it
    tr = scan_imagefolder(root, 'train'); va = scan_imagefolder(root, 'val', tr.classes)
    c2 = replace(c2, num_classes=len(tr.classes))
    rows += _every_run('table2', T2, T2.table2_runs(c2), c2, (tr, va), dev, out)
    # Table 3: synthetic point clouds written as the standard HDF5 release, 1,024 points at paper shapes
    c3 = T3.SCALES['smoke' if a.tiny else 'paper']
    c3 = replace(c3, epochs=1, finetune_epochs=1, baseline_epochs=1, rounds=a.rounds, seeds=(0,),
                 score_clouds=min(c3.score_clouds, 12 if a.tiny else 256))
    g = np.random.default_rng(0); n_cls = 3 if a.tiny else 40; P = 2 * c3.num_points
    def write():
        for split, n in (('train', 8 * n_cls), ('test', 2 * n_cls)):
            write_modelnet_h5(out / 'modelnet', split, g.standard_normal((n, P, 3)), np.arange(n) % n_cls)
    if is_writer(): write()
    barrier()
    tr3, te3 = load_modelnet(out / 'modelnet', 'train', c3.num_points), load_modelnet(out / 'modelnet', 'test', c3.num_points)
    c3 = replace(c3, num_classes=len(tr3.classes))
    rows += _every_run('table3', T3, T3.table3_runs(c3), c3, (tr3, te3), dev, out)
    return rows


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


def report(a, dev, res, out):
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or platform.machine()
    head = dict(date=datetime.date.today().isoformat(), device=str(dev), device_name=name, torch=torch.__version__,
                command='python ' + ' '.join(sys.argv), tiny=a.tiny, compile=a.compile or None)
    (out / 'gpu_check.json').write_text(json.dumps(dict(head, **res), indent=1, default=str))
    import pandas as pd
    md = [f"# gpu_check ({head['date']}, {name}, torch {head['torch']})", '', f"Command: `{head['command']}`", '']
    for key, title in (('table1', 'Table 1 runs (1 epoch per stage) and Figure 2 job'), ('tables23', 'Tables 2 and 3 runs (1 epoch per stage, synthetic data in the real formats)'), ('throughput', 'Training throughput'),
                       ('eigen', 'Fast eigenpairs'), ('agreement', 'float64 CPU vs float32 device'), ('projection', 'Projection')):
        if res.get(key): md += [f'## {title}', '', markdown_table(pd.DataFrame(res[key]).astype(object).where(lambda d: d.notna(), '–'), digits=4), '']
    md += [run_info_line(res['numerics']) + f" cudnn.benchmark {'on' if res['numerics']['cudnn_benchmark'] else 'off'} (as `s3d reproduce`).", '']
    md += [f"Peak memory: `torch.cuda.max_memory_allocated` per row ('–' on the CPU: not measured). Eigenvector |cos| only over "
           f"ends separated from the next eigenvalue by >= 5% of the radius. Whole check: {res['seconds']} s.", '']
    text = '\n'.join(md)
    (out / 'gpu_check.md').write_text(text)
    print(text)


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
    p.add_argument('--skip', default='', help='comma-separated sections to skip: table1,tables23,throughput,eigen,agreement')
    a = p.parse_args(argv)
    if a.compile == 'default': a.compile = True
    dist, dev = start_distributed(a.device)   # under torchrun: this process's GPU (gloo on CPU); else a.device
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    skip, res, t0 = set(a.skip.split(',')) - {''}, {}, time.perf_counter()
    if not is_writer(): skip |= {'throughput', 'eigen', 'agreement'}   # one-process measurements: rank 0 alone
    cfg = table1_config(a)
    if 'table1' not in skip: res['table1'], cfg = check_table1(a, dev, out)
    if 'tables23' not in skip: res['tables23'] = check_tables23(a, dev, out)
    if 'throughput' not in skip: res['throughput'], meas = check_throughput(a, dev, cfg)
    if 'eigen' not in skip: res['eigen'] = check_eigen(a, dev, cfg)
    if 'agreement' not in skip: res['agreement'] = check_agreement(a, dev)
    if 'throughput' not in skip:   # at --tiny from tiny measurements: checks the arithmetic, not the hours
        (f1, i1), (f0, i0) = meas['full'], meas['seed']
        b = (1 / i1 - 1 / i0) / max(f1 - f0, 1); a0 = 1 / i0 - b * f0
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
    res['seconds'] = round(time.perf_counter() - t0, 1)
    res['numerics'] = dict(run_info(dev), cudnn_benchmark=torch.backends.cudnn.benchmark)
    if dist is not None: res['world_size'] = dist.world_size
    if is_writer(): report(a, dev, res, out)
    barrier(); stop_distributed()
    return res


if __name__ == '__main__': main()
