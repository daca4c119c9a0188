"""Training throughput of `s3d.paper.train.train` (with its `BatchLoader`) against a minimal plain PyTorch loop.

MobileNetV1 for 32x32 inputs and 100 classes on CIFAR-shaped synthetic uint8 tensors. Both loops use the same model,
device, SGD settings, bf16 autocast and channels_last (on CUDA; neither on CPU); ours also does the random crop + flip
and normalisation on the device, the plain loop feeds pre-normalised float batches already on the device.
`--compile MODE` also times `train(compile=MODE)` (steady state and the first epoch, which includes compilation).
Then projects the wall time of the whole paper-scale Table 1 schedule (`s3d.paper.experiments.table1.SCALES['paper']`)
from the measured images/s (eigenpair computation and evaluation not counted).

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/train_bench.py --device auto --steps 30 --batch 128
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/train_bench.py --device cpu --steps 4 --batch 32 --update-results

`--update-results` writes the throughput rows to the committed `benchmarks/results/train_bench.csv` and its block of
`benchmarks/RESULTS.md`; without it the CSV goes to the ignored `benchmarks/out/`.
"""
from __future__ import annotations
import argparse, time
import torch
import torch.nn.functional as F
from s3d.paper.models import MobileNetV1
from s3d.cost import count_params_flops
from s3d.paper.data import BatchLoader
from s3d.paper.train import train
from s3d.paper.runs import resolve_device
from s3d.paper.experiments.table1 import SCALES, table1_runs
from pathlib import Path
from _results import md_table, out_dir, read_csv, update_results_md, write_csv

CSV = 'train_bench.csv'

def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()

class _Timed:
    "A loader that records the (synchronised) time at the start of every pass."
    def __init__(self, dl, dev): self.dl, self.dev, self.starts = dl, dev, []
    def __len__(self): return len(self.dl)
    def __iter__(self):
        _sync(self.dev); self.starts.append(time.perf_counter()); return iter(self.dl)

def bench_ours(model, x, y, dev, batch, steps, compile=False, warmup=None):
    """Images/s of `train` over `steps` batches: the second of two epochs in one `train` call (so a compiled model is
    compiled once, as after each split). `warmup`, a list, receives the seconds of the first epoch (compilation, autotuning)."""
    dl = _Timed(BatchLoader(x, y, batch, device=dev, shuffle=True, pad=4, flip=True, mean=(0.5,) * 3, std=(0.25,) * 3,
                            drop_last=True, channels_last=dev.type == 'cuda'), dev)
    train(model, dl, 2, device=dev, progress=False, compile=compile)
    _sync(dev); end = time.perf_counter()
    if warmup is not None: warmup.append(dl.starts[1] - dl.starts[0])
    return steps * batch / (end - dl.starts[1])

def bench_plain(model, x, y, dev, batch, steps):
    "Images/s of a minimal loop: pre-made normalised batches on the device, SGD, cross-entropy."
    cuda = dev.type == 'cuda'
    model.to(dev)
    if cuda: model.to(memory_format=torch.channels_last)
    xs = ((x.to(dev).float() / 255 - 0.5) / 0.25)
    if cuda: xs = xs.contiguous(memory_format=torch.channels_last)
    ys = y.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    def epoch():
        for i in range(steps):
            xb, yb = xs[i * batch:(i + 1) * batch], ys[i * batch:(i + 1) * batch]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda): out = model(xb)
            loss = F.cross_entropy(out.float(), yb)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    epoch(); _sync(dev); t = time.perf_counter()
    epoch(); _sync(dev); return steps * batch / (time.perf_counter() - t)

def project(ips_of_widths, cfg):
    "Hours of training for every run of the paper-scale Table 1 schedule, from a throughput model."
    n = 50_000 * cfg.epochs
    grown = lambda seed, r: [max(1, round(w * (1 + cfg.ratio) ** r)) for w in seed]
    total, parts = 0.0, {}
    for run in table1_runs(cfg):
        if run['method'] in ('S2D', 'S3D'):
            s = sum(n / ips_of_widths(grown(run['widths'], r)) for r in range(cfg.rounds + 1))
        elif 'widths' in run: s = n / ips_of_widths(run['widths'])
        else:
            full = n / ips_of_widths(list(cfg.full_widths))
            s = {'L1 pruning': 1, 'BN pruning': 2, 'MorphNet': 2}[run['method']] * full * 0.9  # pruned stage ~ 0.8x FLOPs
        parts[run['method']] = parts.get(run['method'], 0) + s; total += s
    return total / 3600, {k: v / 3600 for k, v in parts.items()}

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='auto'); p.add_argument('--steps', type=int, default=30)
    p.add_argument('--batch', type=int, default=128); p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--compile', default='', help="also time train(compile=MODE): 'default' or 'reduce-overhead' (CUDA graphs)")
    p.add_argument('--update-results', action='store_true', help='write benchmarks/results/ and RESULTS.md')
    a = p.parse_args()
    dev = resolve_device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (a.steps * a.batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 100, (a.steps * a.batch,), generator=g)
    cfg = SCALES['paper']
    meas, rows = {}, []
    for name, widths in (('full', list(cfg.full_widths)), ('seed', list(cfg.seed_widths))):
        mk = lambda: (torch.manual_seed(0), MobileNetV1(100, widths=widths))[1]
        ours = max(bench_ours(mk(), x, y, dev, a.batch, a.steps) for _ in range(a.repeats))
        if a.compile:
            wu = []
            comp = max(bench_ours(mk(), x, y, dev, a.batch, a.steps, compile=True if a.compile == 'default' else a.compile, warmup=wu)
                       for _ in range(a.repeats))
            print(f'{name:5s} compiled ({a.compile}): {comp:8.1f} img/s, first epoch (compile + warm-up) {min(wu):.1f} s')
        plain = max(bench_plain(mk(), x, y, dev, a.batch, a.steps) for _ in range(a.repeats))
        fl = count_params_flops(mk(), torch.zeros(1, 3, 32, 32))[1]
        meas[name] = (fl, ours)
        rows.append(dict(model=name, mflops=round(fl / 1e6, 1), ours_img_s=round(ours, 1), plain_img_s=round(plain, 1),
                         device=str(dev), batch=a.batch, steps=a.steps, repeats=a.repeats))
        print(f'{name:5s} MobileNetV1 ({fl / 1e6:.1f} MFLOPs): ours {ours:8.1f} img/s, plain {plain:8.1f} img/s, ratio {ours / plain:.3f} '
              f'(device {dev}, batch {a.batch}, {a.steps} steps, best of {a.repeats})')
    (f1, i1), (f0, i0) = meas['full'], meas['seed']
    b = (1 / i1 - 1 / i0) / max(f1 - f0, 1); a0 = 1 / i0 - b * f0   # seconds per image = a0 + b * FLOPs
    ips = lambda w: 1 / max(a0 + b * count_params_flops(MobileNetV1(100, widths=w), torch.zeros(1, 3, 32, 32))[1], 1e-9)
    hours, parts = project(ips, cfg)
    print(f'projected paper-scale Table 1 training time on this device: {hours:.1f} h ({hours / 24:.1f} days); by method: '
          + ', '.join(f'{k} {v:.1f} h' for k, v in parts.items()))
    write_csv(out_dir(a.update_results) / CSV, rows)
    if a.update_results:
        update_results_md(results_sections(Path(__file__).resolve().parent.parent))


def results_sections(root: Path) -> dict:
    "The RESULTS.md block rendered from the committed CSV: images/s of our loop and of a plain one, and their ratio."
    rows = read_csv(root, CSV)
    label = {'full': 'full MobileNetV1', 'seed': 'seed (width 32 everywhere)'}
    table = md_table(['model (32x32, 100 classes)', 'MFLOPs', '`train` + `BatchLoader` (img/s)', 'plain loop (img/s)', 'ratio'],
                     [[label.get(r['model'], r['model']), r['mflops'], r['ours_img_s'], r['plain_img_s'],
                       f"{float(r['ours_img_s']) / float(r['plain_img_s']):.3f}"] for r in rows])
    r = rows[0]
    return {'train-bench': f"{table}\n\nDevice `{r['device']}`, batch {r['batch']}, {r['steps']} timed steps, best of {r['repeats']}."}

if __name__ == '__main__': main()
