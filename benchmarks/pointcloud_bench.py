"""Forward time of the Table 3 models at batch 16 (the paper's measure), with the device named.

DGCNN at width multipliers 1.0 / 0.75 / 0.5 on the EdgeConvs, PointNet (no T-nets), and the grown S2D / S3D networks
of a finished Table 3 run when its CSV is given (their EdgeConv widths at the last round). Eval mode, random inputs
of `--points` points, median of `--repeats` passes after `--warmup`, CUDA synchronised; also the FLOPs per cloud
(kNN distance matrices included) and the parameters. The ratios to DGCNN 1.0x are measured side by side in one run.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/pointcloud_bench.py --device cpu
    PYTHONPATH=. python benchmarks/pointcloud_bench.py --device cuda --csv data/results/table3_paper.csv
"""
from __future__ import annotations
import argparse, json, platform
import torch
from s3d.cost import count_params_flops
from s3d.paper.runs import resolve_device
from s3d.paper.pointcloud import DGCNN, DGCNN_WIDTHS, PointNet, forward_ms

def device_name(dev) -> str:
    if dev.type == 'cuda': return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s))"

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='auto'); ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--points', type=int, default=1024); ap.add_argument('--k', type=int, default=20)
    ap.add_argument('--classes', type=int, default=40); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--csv', default=None, help='a table3_<scale>.csv whose grown S2D/S3D widths are timed too (paper scale: same sizes)')
    a = ap.parse_args(argv)
    dev = resolve_device(a.device)
    models = [(f'DGCNN ({m}x)', DGCNN(a.classes, [int(w * m) for w in DGCNN_WIDTHS], a.k)) for m in (1.0, 0.75, 0.5)]
    models.append(('PointNet (no T-nets)', PointNet(a.classes)))
    if a.csv:
        import pandas as pd
        df = pd.read_csv(a.csv)
        for meth, d in df[df.method.isin(['S2D', 'S3D'])].groupby('method'):
            last = d[d['round'] == d['round'].max()].iloc[0]
            models.append((f"DGCNN-{meth}-{int(last['round'])}", DGCNN(a.classes, json.loads(last['widths']), a.k)))
    print(f"device: {device_name(dev)}; batch {a.batch}, {a.points} points, k = {a.k}, median of {a.repeats} after {a.warmup} warm-up\n")
    print('| model | params (M) | GFLOPs per cloud | forward ms (batch 16) | time / DGCNN 1.0x |\n|---|---|---|---|---|')
    base = None
    for name, net in models:
        p, f = count_params_flops(net, torch.zeros(1, 3, a.points))
        ms = forward_ms(net, a.batch, a.points, dev, a.repeats, a.warmup)
        base = base or ms
        print(f'| {name} | {p / 1e6:.3f} | {f / 1e9:.2f} | {ms:.0f} | {ms / base:.2f} |')

if __name__ == '__main__': main()
