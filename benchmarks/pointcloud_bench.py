"""Forward time of the Table 3 models at batch 16 (the paper's measure), with the device named.

DGCNN at width multipliers 1.0 / 0.75 / 0.5 on the EdgeConvs, PointNet (no T-nets), and the grown S2D / S3D networks
of a finished Table 3 run when its CSV is given (their EdgeConv widths at the last round). Eval mode, random inputs
of `--points` points, median of `--repeats` passes after `--warmup`, CUDA synchronised; also the FLOPs per cloud
(kNN distance matrices included) and the parameters. The ratios to DGCNN 1.0x are measured side by side in one run.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/pointcloud_bench.py --device cpu
    PYTHONPATH=. python benchmarks/pointcloud_bench.py --device cuda --csv data/results/table3_paper.csv

`--update-results` writes the rows to the committed `benchmarks/results/pointcloud_bench.csv` and its block of
`benchmarks/RESULTS.md`; without it the CSV goes to the ignored `benchmarks/out/`.
"""
from __future__ import annotations
import argparse, json, platform
import torch
from s3d.cost import count_params_flops
from s3d.paper.runs import resolve_device
from s3d.paper.pointcloud import DGCNN, DGCNN_WIDTHS, PointNet, forward_ms
from pathlib import Path
from _results import md_table, out_dir, read_csv, update_results_md, write_csv

CSV = 'pointcloud_bench.csv'

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
    ap.add_argument('--update-results', action='store_true', help='write benchmarks/results/ and RESULTS.md')
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
    print(f"device: {device_name(dev)}; batch {a.batch}, {a.points} points, k = {a.k}, median of {a.repeats} after {a.warmup} warm-up")
    rows = []
    for name, net in models:
        p, f = count_params_flops(net, torch.zeros(1, 3, a.points))
        ms = forward_ms(net, a.batch, a.points, dev, a.repeats, a.warmup)
        rows.append(dict(model=name, params_M=round(p / 1e6, 3), gflops=round(f / 1e9, 2), forward_ms=round(ms, 1),
                         device=device_name(dev), batch=a.batch, points=a.points, k=a.k, repeats=a.repeats))
        print(rows[-1])
    write_csv(out_dir(a.update_results) / CSV, rows)
    print(results_sections(None, rows)['pointcloud-forward'])
    if a.update_results:
        update_results_md(results_sections(Path(__file__).resolve().parent.parent))


def results_sections(root: Path, rows=None) -> dict:
    "The RESULTS.md block from the committed CSV: size, FLOPs and forward time of each model, against DGCNN 1.0x."
    rows = rows or read_csv(root, CSV)
    base_ms, base_fl = float(rows[0]['forward_ms']), float(rows[0]['gflops'])
    table = md_table(['model', 'params (M)', 'GFLOPs per cloud', 'forward ms', 'time / DGCNN 1.0x', 'FLOPs / DGCNN 1.0x'],
                     [[r['model'], r['params_M'], r['gflops'], f"{float(r['forward_ms']):.0f}",
                       f"{float(r['forward_ms']) / base_ms:.2f}", f"{float(r['gflops']) / base_fl:.2f}"] for r in rows])
    r = rows[0]
    return {'pointcloud-forward': f"{table}\n\nDevice: {r['device']}; batch {r['batch']}, {r['points']} points, "
                                  f"k = {r['k']}, median of {r['repeats']} passes."}


if __name__ == '__main__': main()
