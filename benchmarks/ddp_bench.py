"""Data-parallel scaling of growth (issue 11): training throughput and fast-eigenpair time at world size N.

Run once per world size on the same machine, then compare (each run prints one JSON line, rank 0 only):

    PYTHONPATH=. torchrun --nproc-per-node 1 benchmarks/ddp_bench.py              # 1 GPU (NCCL) or 1 CPU process (gloo)
    PYTHONPATH=. torchrun --nproc-per-node 4 benchmarks/ddp_bench.py              # 4 GPUs of this machine
    OMP_NUM_THREADS=1 PYTHONPATH=. torchrun --nproc-per-node 2 benchmarks/ddp_bench.py --tiny   # CPU smoke

Measures, at a fixed global batch (so the schedule is the same at every world size): `s3d.paper.train.train` images/s
with DistributedDataParallel and `ShardedLoader` over synthetic CIFAR-shaped data (MobileNetV1, paper seed widths
unless --tiny), and the wall time of `extreme_eigenpairs(method='fast')` over `--score` images with the S·v products
all-reduced. The speed-up of N processes over 1 is `ips_N / ips_1` for training and `eig_1 / eig_N` for scoring.

Each run's row replaces the row of its world size in `benchmarks/out/ddp_bench.csv`, or with `--update-results` in the
committed `benchmarks/results/ddp_bench.csv` (and its block of `benchmarks/RESULTS.md`).
"""
import argparse, csv, json, time
from pathlib import Path
import torch
from torch import nn
from s3d.distributed import init_distributed, world_size, rank
from s3d.graph import split_groups
from s3d.eigen import extreme_eigenpairs
from s3d.paper.data import BatchLoader
from s3d.paper.models import MobileNetV1
from s3d.paper.train import train
from s3d.paper.experiments.table1 import SCALES
from _results import md_table, out_dir, read_csv, update_results_md, write_csv

CSV = 'ddp_bench.csv'


def save_row(row: dict, update: bool):
    "Replace the row of this world size in the CSV (the runs at each world size are separate commands)."
    path = out_dir(update) / CSV
    rows = [r for r in (list(csv.DictReader(path.open())) if path.exists() else []) if int(r['world_size']) != row['world_size']]
    write_csv(path, sorted(rows + [row], key=lambda r: int(r['world_size'])))
    if update:
        update_results_md(results_sections(Path(__file__).resolve().parent.parent))


def results_sections(root: Path) -> dict:
    "The RESULTS.md block from the committed CSV: training images/s and fast-eigenpair seconds per world size."
    rows = read_csv(root, CSV)
    table = md_table(['world size', 'device', 'train img/s', 'fast eigenpairs (s)'],
                     [[r['world_size'], r['device'], r['train_img_per_s'], r['eigen_s']] for r in rows])
    r = rows[0]
    return {'ddp-bench': f"{table}\n\nWidths {r['widths']}, global batch {r['global_batch']}, {r['score_images']} scoring images."}


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--tiny', action='store_true', help='small widths and images (CPU smoke)')
    p.add_argument('--batch', type=int, default=128, help='global batch size')
    p.add_argument('--steps', type=int, default=50, help='training steps timed (after one warm-up epoch of 5 steps)')
    p.add_argument('--score', type=int, default=4096, help='scoring images for the eigenpairs (global)')
    p.add_argument('--update-results', action='store_true', help='write benchmarks/results/ and RESULTS.md')
    a = p.parse_args()
    dist = init_distributed()
    dev = dist.device if dist is not None else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    ws, W = world_size(), (8, 8, 16, 16) if a.tiny else SCALES['paper'].seed_widths
    H = 16 if a.tiny else 32
    if a.tiny: a.batch, a.steps, a.score = 32, 6, 128
    g = torch.Generator().manual_seed(0)
    n = a.batch * max(a.steps, 5)
    x = torch.randint(0, 256, (n, 3, H, H), dtype=torch.uint8, generator=g); y = torch.randint(0, 100, (n,), generator=g)
    shard = (lambda l: dist.shard(l)) if dist is not None else (lambda l: l)
    torch.manual_seed(0)
    model = MobileNetV1(100, widths=W, strides=(1,) * len(W) if a.tiny else None).to(dev)
    net = dist.wrap(lambda m, r: m)(model, 0) if dist is not None else model
    warm = shard(BatchLoader(x[:5 * a.batch], y[:5 * a.batch], a.batch, device=dev, shuffle=True))
    train(net, warm, 1, progress=False)
    loader = shard(BatchLoader(x[:a.steps * a.batch], y[:a.steps * a.batch], a.batch, device=dev, shuffle=True))
    if dev.type == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter(); train(net, loader, 1, progress=False)
    if dev.type == 'cuda': torch.cuda.synchronize()
    ips = a.steps * a.batch / (time.perf_counter() - t)
    score = shard(BatchLoader(x[:a.score], y[:a.score], min(a.score, 512), device=dev))
    model.eval()
    t = time.perf_counter()
    extreme_eigenpairs(model, split_groups(model, x[:1].float().to(dev)), nn.functional.cross_entropy, list(score), 'fast',
                       reduce=dist.reduce if dist is not None else None)
    if dev.type == 'cuda': torch.cuda.synchronize()
    eig = time.perf_counter() - t
    if rank() == 0:
        name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'
        row = dict(world_size=ws, device=name, widths=list(W), global_batch=a.batch, train_img_per_s=round(ips, 1),
                   eigen_s=round(eig, 2), score_images=a.score)
        print(json.dumps(row))
        save_row(row, a.update_results)
    if dist is not None: torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
