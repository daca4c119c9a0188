"""Images/s of the Table 2 input pipeline alone (JPEG read + decode + RandomResizedCrop + flip + normalise) and of
training MobileNetV1 at 224x224, side by side in one run.

Writes `--images` synthetic JPEGs of ImageNet-like size (about 500x375, random sizes and aspect ratios) into a temporary
ImageFolder, then measures with `s3d.paper.imagenet.JpegLoader`:
  - input, CPU decode: readers decode and crop on the CPU (`decode='worker'`), batches copied to the device;
  - input, GPU decode: readers ship bytes, nvJPEG decodes the batch and crops on the GPU (`decode='device'`; CUDA only);
  - training step alone on pre-made device batches (the ceiling the input must reach), for the 1.0x model and the seed;
  - training end to end (`s3d.paper.train.train` fed by the loader), with the fastest decode path for the device.
Reports input images/s / training images/s: a ratio >= 1 means the input keeps up.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/imagenet_input_bench.py --device cpu --images 64 --batch 16
    PYTHONPATH=. python benchmarks/imagenet_input_bench.py --device cuda --images 2048 --batch 256   # the GPU check

`--update-results` writes the rates to the committed `benchmarks/results/imagenet_input_bench.csv` and its block of
`benchmarks/RESULTS.md`; without it the CSV goes to the ignored `benchmarks/out/`.
"""
from __future__ import annotations
import argparse, tempfile, time
from pathlib import Path
import torch
import torch.nn.functional as F
from s3d.paper.imagenet import JpegLoader, scan_imagefolder, write_imagefolder, mobilenet_imagenet, default_workers
from s3d.paper.experiments.table2 import SCALES
from s3d.paper.train import train
from s3d.paper.runs import resolve_device
from _results import md_table, out_dir, read_csv, update_results_md, write_csv

CSV = 'imagenet_input_bench.csv'

def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()

def make_jpegs(root, n, classes=10, seed=0):
    "n smooth random RGB images of about 500x375 (sizes 300..600), written as JPEGs (quality 90)."
    g = torch.Generator().manual_seed(seed); ims, ys = [], []
    for i in range(n):
        h, w = torch.randint(300, 601, (2,), generator=g).tolist()
        low = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g) * 255
        ims.append(F.interpolate(low, (h, w), mode='bilinear').squeeze(0).to(torch.uint8)); ys.append(i % classes)
    write_imagefolder(root, 'train', ims, ys, [f'c{c}' for c in range(classes)])
    return scan_imagefolder(root)

def input_rate(files, dev, batch, decode, workers, epochs):
    dl = JpegLoader(files, batch, 224, dev, train=True, workers=workers, decode=decode)
    for _ in dl: pass                                    # warm-up epoch (starts the readers, nvJPEG handles)
    _sync(dev); t = time.perf_counter(); n = 0
    for _ in range(epochs):
        for x, y in dl: n += len(y)
    _sync(dev); return n / (time.perf_counter() - t)

def step_rate(model, dev, batch, steps):
    "Training images/s on one pre-made device batch (forward, backward, SGD step), bf16 + channels_last on CUDA."
    cuda = dev.type == 'cuda'; model.to(dev).train()
    if cuda: model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=dev); y = torch.randint(0, 1000, (batch,), device=dev)
    if cuda: x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda): loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    step(); _sync(dev); t = time.perf_counter()
    for _ in range(steps): step()
    _sync(dev); return steps * batch / (time.perf_counter() - t)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='auto'); ap.add_argument('--images', type=int, default=256)
    ap.add_argument('--batch', type=int, default=64); ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--steps', type=int, default=5); ap.add_argument('--workers', type=int, default=None)
    ap.add_argument('--update-results', action='store_true', help='write benchmarks/results/ and RESULTS.md')
    a = ap.parse_args()
    dev = resolve_device(a.device); workers = default_workers() if a.workers is None else a.workers
    print(f'device {dev} ({torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"}), torch threads {torch.get_num_threads()}, '
          f'reader processes {workers}, {a.images} JPEGs, batch {a.batch}, 224x224 crops')
    with tempfile.TemporaryDirectory() as d:
        files = make_jpegs(Path(d), a.images)
        rates = {'input, CPU decode in readers': input_rate(files, dev, a.batch, 'worker', workers, a.epochs)}
        if dev.type == 'cuda': rates['input, GPU decode (nvJPEG)'] = input_rate(files, dev, a.batch, 'device', workers, a.epochs)
        p = SCALES['paper']
        rates['train step alone, MobileNetV1 1.0x'] = step_rate(mobilenet_imagenet(1000), dev, a.batch, a.steps)
        rates['train step alone, seed (0.059 GMACs)'] = step_rate(mobilenet_imagenet(1000, widths=p.seed_widths), dev, a.batch, a.steps)
        decode = 'device' if dev.type == 'cuda' else 'worker'
        dl = JpegLoader(files, a.batch, 224, dev, train=True, workers=workers, decode=decode)
        model = mobilenet_imagenet(1000)
        train(model, dl, 1, device=dev, progress=False)                       # warm-up
        _sync(dev); t = time.perf_counter()
        train(model, dl, a.epochs, device=dev, progress=False); _sync(dev)
        rates[f'train end to end, 1.0x, {decode} decode'] = a.epochs * len(files) / (time.perf_counter() - t)
    rows = [dict(measurement=k, img_s=round(v, 1), device=str(dev), images=a.images, batch=a.batch, epochs=a.epochs,
                 steps=a.steps, readers=workers) for k, v in rates.items()]
    write_csv(out_dir(a.update_results) / CSV, rows)
    print(results_sections(out_dir(a.update_results).parent.parent, rows)['imagenet-input'])
    if a.update_results:
        update_results_md(results_sections(Path(__file__).resolve().parent.parent))


def results_sections(root: Path, rows=None) -> dict:
    "The RESULTS.md block from the committed CSV: images/s of each part, and how far the best input is above it."
    rows = rows or read_csv(root, CSV)
    best_in = max(float(r['img_s']) for r in rows if r['measurement'].startswith('input'))
    table = md_table(['measurement', 'images/s', 'best input / this'],
                     [[r['measurement'], f"{float(r['img_s']):.1f}", f"{best_in / float(r['img_s']):.2f}"] for r in rows])
    r = rows[0]
    return {'imagenet-input': f"{table}\n\nDevice `{r['device']}`, {r['images']} synthetic JPEGs, batch {r['batch']}, "
                              f"{r['epochs']} measured epoch(s), {r['steps']} timed training steps, {r['readers']} reader process(es)."}


if __name__ == '__main__':
    main()
