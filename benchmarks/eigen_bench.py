"""Exact vs fast extreme eigenpairs of all splitting matrices of a small MobileNetV1-style net (32x32 inputs).

Prints wall time, peak memory, accuracy against exact `eigh`, the ratio to one forward+backward pass over the same
data, and the same for the RMSprop Rayleigh-quotient baseline of Wang et al. (2019). Each measurement runs in a fresh
subprocess so peak memory (max RSS on CPU, `torch.cuda.max_memory_allocated` on GPU) is per method.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eigen_bench.py --device auto
"""
from __future__ import annotations
import argparse, copy, json, os, platform, resource, subprocess, sys, tempfile, time
import torch
from torch import nn

from s3d.graph import SplitGroup
from s3d.eigen import EigenPairs, extreme_eigenpairs, lanczos_extremes
from s3d.splitmat import split_operators, dense_matrices

WIDTHS = [16, 32, 64, 64, 128, 128, 128]   # stem, then six pointwise layers
STRIDES = [1, 2, 1, 2, 1, 1]               # of the depthwise conv before each pointwise layer


class MobileNetish(nn.Module):
    "3x3 stem, then (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU) blocks, pooling, classifier."
    def __init__(self, widths=WIDTHS, strides=STRIDES, n_classes=10):
        super().__init__()
        layers = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for cin, cout, s in zip(widths[:-1], widths[1:], strides):
            layers += [nn.Conv2d(cin, cin, 3, stride=s, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                       nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(widths[-1], n_classes)

    def forward(self, x): return self.fc(self.pool(self.features(x)).flatten(1))

    def groups(self):
        "Split groups by hand: the stem and every pointwise conv (their BN and ReLU)."
        f, out = self.features, []
        for i, m in enumerate(f):
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                out.append(SplitGroup(f'features.{i}', m, f[i + 1], f[i + 2]))
        return out


def setup(device, n_images, batch):
    torch.manual_seed(0)
    net = MobileNetish().to(device)
    with torch.no_grad():  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d): m.running_var.uniform_(0.5, 2.); m.running_mean.normal_(0, 0.1); m.weight.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n_images, 3, 32, 32, generator=g); Y = torch.randint(0, 10, (n_images,), generator=g)
    batches = [(X[i:i + batch].to(device), Y[i:i + batch].to(device)) for i in range(0, n_images, batch)]
    return net, net.groups(), batches


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def fwd_bwd(net, batches, loss_fn):
    net.eval()
    for x, y in batches:
        net.zero_grad(set_to_none=True); loss_fn(net(x), y).backward()


def rmsprop_rayleigh(ops, exact, batch_ops, lr, max_epochs, device):
    "Wang et al. 2019: minimise / maximise the Rayleigh quotient with RMSprop over mini-batches (cached products)."
    state = {}
    for name, op in ops.items():
        v = torch.randn(op.n, op.d, 2, device=device, dtype=torch.float64)
        v = (v / v.norm(dim=1, keepdim=True)).requires_grad_(False)
        state[name] = (v, torch.optim.RMSprop([v], lr=lr))
    t_train, history = 0., []
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        for b in range(len(next(iter(batch_ops.values())))):
            for name, (v, opt) in state.items():
                Sv = batch_ops[name][b](v)                      # mini-batch S_b v for both columns
                R = (v * Sv).sum(1, keepdim=True) / (v * v).sum(1, keepdim=True)
                grad = 2 * (Sv - R * v) / (v * v).sum(1, keepdim=True)
                grad[..., 1] *= -1                              # column 1 maximises
                v.grad = grad; opt.step()
                with torch.no_grad(): v /= v.norm(dim=1, keepdim=True)
        sync(device); t_train += time.perf_counter() - t0
        acc = {}
        for name, (v, _) in state.items():                      # evaluation on the full operator (not timed)
            Sv = ops[name](v); R = (v * Sv).sum(1) / (v * v).sum(1)
            vn = v / v.norm(dim=1, keepdim=True)
            acc[name] = EigenPairs(R[:, 0], vn[..., 0], R[:, 1], vn[..., 1])
        frac = within(acc, exact)
        history.append((epoch, t_train, frac))
        if frac >= 0.95: break
    return acc, t_train, history


def within(pairs, exact, rel=0.02):
    "Fraction of neurons whose lam_min and lam_max are both within rel * spectral radius of the exact ones."
    ok = tot = 0
    for k, e in exact.items():
        p = pairs[k]; rad = torch.maximum(e.lam_min.abs(), e.lam_max.abs()).clamp_min(1e-30)
        good = ((p.lam_min.cpu() - e.lam_min).abs() <= rel * rad) & ((p.lam_max.cpu() - e.lam_max).abs() <= rel * rad)
        ok += int(good.sum()); tot += good.numel()
    return ok / tot


def accuracy(pairs, exact):
    "Eigenvalue error / spectral radius; eigenvector |cos| where the eigenvalue is separated by >= 5% of the radius."
    errs, coss, = [], []
    for k, e in exact.items():
        p, S = pairs[k], exact_S[k]
        lam = torch.linalg.eigvalsh(S); rad = lam.abs().amax(-1).clamp_min(1e-30)
        errs.append(torch.maximum((p.lam_min.cpu() - e.lam_min).abs(), (p.lam_max.cpu() - e.lam_max).abs()) / rad)
        for v, ve, gap in [(p.v_min, e.v_min, lam[:, 1] - lam[:, 0]), (p.v_max, e.v_max, lam[:, -1] - lam[:, -2])]:
            sep = gap >= 0.05 * rad
            coss.append((v.cpu().double() * ve).sum(-1).abs()[sep])
    err, cos = torch.cat(errs), torch.cat(coss)
    return dict(err_max=err.max().item(), err_median=err.median().item(), within_2pct=within(pairs, exact),
                cos_median=cos.median().item(), cos_p05=cos.quantile(0.05).item(), n_sep=cos.numel())


def part(args):
    "One measurement in this (fresh) process; prints a JSON line."
    device = torch.device(args.device)
    net, groups, batches = setup(device, args.images, args.batch)
    loss_fn = nn.CrossEntropyLoss()
    fwd_bwd(net, batches[:1], loss_fn)  # warm-up, also of the method measured (first calls of kernels are slow)
    if args.part == 'exact': extreme_eigenpairs(net, groups, loss_fn, batches[:1], 'exact')
    elif args.part.startswith('fast'): extreme_eigenpairs(net, groups, loss_fn, batches[:1], 'fast')
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res, out = {}, None
    if args.part == 'fb':
        ts = []
        for _ in range(3):
            sync(device); t0 = time.perf_counter(); fwd_bwd(net, batches, loss_fn); sync(device); ts.append(time.perf_counter() - t0)
        res['time'] = min(ts)
    elif args.part == 'exact':
        sync(device); t0 = time.perf_counter()
        out = extreme_eigenpairs(net, groups, loss_fn, batches, 'exact')
        sync(device); res['time'] = time.perf_counter() - t0
    elif args.part.startswith('fast'):
        mode = args.part.split('-')[1]
        sync(device); t0 = time.perf_counter()
        ops = split_operators(net, groups, loss_fn, batches, mode=mode)
        sync(device); res['collect'] = time.perf_counter() - t0
        gen, out, res['products'] = torch.Generator().manual_seed(0), {}, {}
        for g in groups:
            op = ops[g.name]
            out[g.name], res['products'][g.name] = lanczos_extremes(op, op.n, op.d, tol=args.tol, generator=gen, device=device)
        sync(device); res['time'] = time.perf_counter() - t0
    elif args.part == 'rmsprop':
        exact = {k: EigenPairs(**v) for k, v in torch.load(args.exact_file).items()}
        small = [(x[i:i + 32], y[i:i + 32]) for x, y in batches for i in range(0, x.shape[0], 32)]
        sync(device); t0 = time.perf_counter()
        ops = split_operators(net, groups, loss_fn, small)
        sync(device); res['collect'] = time.perf_counter() - t0
        batch_ops = {}
        for k, op in ops.items():
            batch_ops[k] = []
            for x, c in zip(op.xs, op.cs):
                o = copy.copy(op); o.xs, o.cs, o.count = [x], [c], c.shape[0]; batch_ops[k].append(o)
        out, t_train, hist = rmsprop_rayleigh(ops, exact, batch_ops, args.lr, args.max_epochs, device)
        res.update(time=res['collect'] + t_train, epochs=len(hist), history=hist)
    res['peak_mb'] = (torch.cuda.max_memory_allocated() if device.type == 'cuda' else
                      (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024) / 2**20
    if out is not None:
        torch.save({k: {f: getattr(v, f).detach().cpu().double() for f in ('lam_min', 'v_min', 'lam_max', 'v_max')} for k, v in out.items()},
                   args.save)
    print('RESULT ' + json.dumps(res))


def run_part(args, name, save, extra=()):
    cmd = [sys.executable, __file__, '--part', name, '--device', args.device, '--images', str(args.images),
           '--batch', str(args.batch), '--tol', str(args.tol), '--save', save, '--lr', str(args.lr),
           '--max-epochs', str(args.max_epochs), *extra]
    outp = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if outp.returncode: raise RuntimeError(outp.stderr)
    return json.loads(outp.stdout.split('RESULT ', 1)[1])


exact_S = {}
def load(path): return {k: EigenPairs(**v) for k, v in torch.load(path).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='auto', help='auto | cpu | cuda')
    ap.add_argument('--images', type=int, default=512); ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--tol', type=float, default=1e-2, help='Lanczos residual tolerance (relative)')
    ap.add_argument('--lr', type=float, default=0.01, help='RMSprop learning rate of the baseline')
    ap.add_argument('--max-epochs', type=int, default=30); ap.add_argument('--skip-rmsprop', action='store_true')
    ap.add_argument('--part', default=None); ap.add_argument('--save', default=None); ap.add_argument('--exact-file', default=None)
    args = ap.parse_args()
    if args.device == 'auto': args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.part: return part(args)
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor()) \
        if os.path.exists('/proc/cpuinfo') else platform.processor()
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else cpu}), torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, threads={torch.get_num_threads()}, {args.images} images, batch {args.batch}")
    net, groups, _ = setup('cpu', 1, 1)
    print('groups (n, d):', ', '.join(f'{g.name} ({g.n_neurons}, {g.dim})' for g in groups))
    tmp = tempfile.mkdtemp()
    fb = run_part(args, 'fb', os.path.join(tmp, 'fb'))
    print(f"T_fb (one forward+backward over the images): {fb['time']:.3f} s")
    ex = run_part(args, 'exact', os.path.join(tmp, 'exact.pt'))
    exact = load(os.path.join(tmp, 'exact.pt'))
    net, groups, batches = setup(torch.device('cpu'), args.images, args.batch)
    exact_S.update(dense_matrices(net, groups, nn.CrossEntropyLoss(), batches))
    print(f"exact  (dense S + eigh):   {ex['time']:.3f} s = {ex['time'] / fb['time']:.2f} T_fb, peak {ex['peak_mb']:.0f} MiB")
    for mode, tol in [('auto', args.tol), ('flat', args.tol), ('conv', args.tol), ('auto', 5 * args.tol)]:
        args.tol, tol0 = tol, args.tol
        fa = run_part(args, f'fast-{mode}', os.path.join(tmp, f'fast-{mode}.pt'))
        args.tol = tol0
        acc = accuracy(load(os.path.join(tmp, f'fast-{mode}.pt')), exact)
        print(f"fast-{mode:<4} (Lanczos tol={tol:g}): {fa['time']:.3f} s = {fa['time'] / fb['time']:.2f} T_fb "
              f"(collect {fa['collect']:.3f} s = {fa['collect'] / fb['time']:.2f} T_fb), peak {fa['peak_mb']:.0f} MiB, "
              f"products {fa['products']}")
        print(f"           accuracy: rel. eigenvalue error max {acc['err_max']:.1e} median {acc['err_median']:.1e}, "
              f"within 2%: {100 * acc['within_2pct']:.1f}% of neurons, eigenvector |cos| median {acc['cos_median']:.4f} p05 {acc['cos_p05']:.4f} (over {acc['n_sep']} separated ends)")
    if not args.skip_rmsprop:
        rm = run_part(args, 'rmsprop', os.path.join(tmp, 'rms.pt'), ['--exact-file', os.path.join(tmp, 'exact.pt')])
        acc = accuracy(load(os.path.join(tmp, 'rms.pt')), exact)
        print(f"RMSprop Rayleigh (Wang et al. 2019, lr={args.lr:g}, batch 32, cached products): {rm['epochs']} epochs, "
              f"{rm['time']:.3f} s = {rm['time'] / fb['time']:.2f} T_fb, peak {rm['peak_mb']:.0f} MiB, "
              f"within 2%: {100 * acc['within_2pct']:.1f}% (goal 95%), eigenvector |cos| median {acc['cos_median']:.4f}")
        print('           epochs / time / within-2%:', ', '.join(f'{e}/{t:.2f}s/{100 * f:.0f}%' for e, t, f in rm['history']))


if __name__ == '__main__':
    main()
