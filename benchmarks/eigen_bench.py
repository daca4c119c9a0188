"""Extreme eigenpairs of all splitting matrices of a network: exact vs fast (cached / streamed), time, accuracy, memory.

Every measurement runs in a fresh subprocess so that peak memory is per method: on CPU the growth of the process's
max RSS (`ru_maxrss`) over a baseline taken after setup and one plain forward+backward of one batch (so one batch's
activations are in the baseline), with glibc's mmap threshold fixed at 128 KiB (`MALLOC_MMAP_THRESHOLD_`; otherwise
the threshold adapts upwards, freed blocks stay in the heap and max RSS creeps up with the number of batches although
live memory does not); on CUDA `torch.cuda.max_memory_allocated` over the memory allocated at that point. The solver's
own bytes (cache, Krylov workspaces, dense accumulators) are printed next to it, from `extreme_eigenpairs(stats=...)`.
Times are given as ratios to T_fb, one forward+backward (parameter gradients, eval mode) over the same images, measured
in its own subprocess; on CPU they use process CPU time (single thread), which is less disturbed by other jobs than
wall time (both are printed). Timed subprocesses fix glibc's mmap and trim thresholds high (4 GiB, 64 GiB; both
overridable through the environment) so that freed blocks are reused instead of being returned to the kernel and
faulted in again: otherwise T_fb itself varies by about 15% between fresh processes on the development CPU, as the
adaptive threshold happens to settle, against about 3% with them fixed. The fastest of `--repeat` calls counts; the
first full-size call in the process is reported beside it (its CPU time, its system time and page faults), as it
faults in the memory the solver keeps, which a program's calls can pay every time under glibc's defaults.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eigen_bench.py                       # CPU benchmark net, 512 images
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eigen_bench.py --memory 256,512,1024,2048
    PYTHONPATH=. python benchmarks/eigen_bench.py --device cuda --net seed,x1.3^5,full --images 4096 --batch 256 --memory 4096
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eigen_bench.py --net seed --images 256 --path-methods jvp,linear \
        --variants exact,cached,stream --repeat 2 --update-results   # the private-path term: both implementations
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eigen_bench.py --net seed --images 256 --path-methods linear \
        --variants exact,cached-dense,cached,stream,stream-products --repeat 2 --update-results  # dense term vs products
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eigen_bench.py --net seed --images 1024 --path-methods linear \
        --variants exact,cached-dense,cached,stream --repeat 2 --update-results   # the same at 1,024 images

`cached-dense` and `stream-dense` build the dense S of groups with a private-path term too (`dense_path_dim=32`, what
`extreme_eigenpairs` did before issue 25); the default solves them by products when cached (`cached`) and still
densely when streamed (`stream`), where every block of products costs a pass.
`--path-methods` runs every variant with each implementation of the private-path term (`s3d.splitmat.PATH_METHOD`:
`linear`, from the path's derivative gathered in the scoring pass, and `jvp`, the reference with forward-mode JVPs
through the path on every batch); `--update-results` writes `benchmarks/results/eigen_bench_path.csv` and the
`eigen_bench.path` block of `benchmarks/RESULTS.md` (rendered by `results_sections`).

`--net bench` is a small MobileNetV1-style net (below); `seed`, `x1.3^5` and `full` are `s3d`'s MobileNetV1 at the
paper's shapes (CIFAR-100: 100 classes, 3x32x32 synthetic images): widths 32 everywhere, 32 * 1.3^5 (119) everywhere,
and the full widths.
"""
from __future__ import annotations
import argparse, copy, csv, dataclasses, json, os, platform, resource, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from s3d.graph import SplitGroup, split_groups
from s3d.eigen import EigenPairs, extreme_eigenpairs
from s3d.splitmat import split_operators, dense_matrices, collect_batches
try: from s3d.paper.models import MobileNetV1, MOBILENET_WIDTHS, MOBILENET_STRIDES
except ImportError: from s3d.models import MobileNetV1, MOBILENET_WIDTHS, MOBILENET_STRIDES

WIDTHS = [16, 32, 64, 64, 128, 128, 128]   # bench net: stem, then six pointwise layers
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


def make_net(name):
    "(model, n_classes) for a net name."
    if name == 'bench': return MobileNetish(), 10
    widths = {'seed': [32] * 14, 'x1.3^5': [round(32 * 1.3 ** 5)] * 14, 'full': list(MOBILENET_WIDTHS)}[name]
    return MobileNetV1(100, widths=widths, strides=MOBILENET_STRIDES), 100


def setup(device, n_images, batch, net_name='bench'):
    torch.manual_seed(0)
    net, n_classes = make_net(net_name)
    net = net.to(device)
    with torch.no_grad():  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d): m.running_var.uniform_(0.5, 2.); m.running_mean.normal_(0, 0.1); m.weight.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n_images, 3, 32, 32, generator=g); Y = torch.randint(0, n_classes, (n_images,), generator=g)
    batches = [(X[i:i + batch].to(device), Y[i:i + batch].to(device)) for i in range(0, n_images, batch)]
    groups = net.groups() if net_name == 'bench' else split_groups(net, batches[0][0][:2])
    return net, groups, batches


class Flops(TorchDispatchMode):
    "Matrix-product and convolution FLOPs of what runs inside, by torch.utils.flop_counter's formulas."

    def __init__(self):  # FlopCounterMode's module tracker rejects the autograd.grad calls of the scoring pass
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket is torch.ops.aten.convolution_backward:
            return self._conv_backward(func, args, kwargs)
        pk = func._overloadpacket  # an in-place product (addmm_, baddbmm_) counts as its out-of-place form
        count = flop_registry.get(pk) or flop_registry.get(getattr(torch.ops.aten, pk.__name__.rstrip('_'), None))
        if count is None:  # a composite op: count the ops it is made of
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out

    def _conv_backward(self, func, args, kwargs):
        "The input and the weight gradient each cost the forward conv's FLOPs (torch's formula counts a grouped"
        " conv's weight gradient as if ungrouped: 33x the forward for a 32-channel depthwise conv)."
        out = func(*args, **kwargs)
        grad_out, x, w, _, stride, padding, dilation, transposed, out_pad, groups, mask = args[:11]
        fwd = flop_registry[torch.ops.aten.convolution](x, w, None, stride, padding, dilation, transposed, out_pad,
                                                        groups, out_val=grad_out)
        self.total += fwd * (int(mask[0]) + int(mask[1]))
        return out


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def fwd_bwd(net, batches, loss_fn):
    net.eval()
    for x, y in batches:
        net.zero_grad(set_to_none=True); loss_fn(net(x), y).backward()


VARIANTS = {  # name: (method, keyword arguments of extreme_eigenpairs)
    'exact': ('exact', dict(max_bytes=2**34)),
    'cached': ('cached', {}),
    'stream': ('stream', {}),
    'cached-dense': ('cached', dict(dense_path_dim=32)),  # before issue 25: dense S for private-path groups too
    'stream-dense': ('stream', dict(dense_path_dim=32)),
    'stream-products': ('stream', dict(dense_path_dim=0)),  # streamed, private-path groups by products (not the default)
    'stream-1pass': ('stream', dict(max_passes=1)),
    'stream-random': ('stream', dict(sample_steps=0)),
    'fast': ('fast', {}),
    'stats': (None, {}),  # the statistics pass alone: every group's statistics gathered, nothing cached or solved
    'cached-tol0.1': ('cached', dict(tol=0.1)),  # the loosest residual tolerance tried: fewer products
    'exact-nopath': ('exact', dict(max_bytes=2**34)),  # first-activation term only (groups' paths dropped)
    'cached-nopath': ('cached', {}),  # the same, fast: what these groups cost before issue 25's path term
}


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
        frac = within({k: dict(lam_min=e.lam_min.cpu(), lam_max=e.lam_max.cpu()) for k, e in acc.items()}, exact)
        history.append((epoch, t_train, frac))
        if frac >= 0.95: break
    return acc, t_train, history


def within(pairs, exact, rel=0.02):
    "Fraction of neurons whose lam_min and lam_max are both within rel * spectral radius of the exact ones."
    ok = tot = 0
    for k, e in exact.items():
        p = pairs[k]; rad = torch.maximum(e['lam_min'].abs(), e['lam_max'].abs()).clamp_min(1e-30)
        good = ((p['lam_min'] - e['lam_min']).abs() <= rel * rad) & ((p['lam_max'] - e['lam_max']).abs() <= rel * rad)
        ok += int(good.sum()); tot += good.numel()
    return ok / tot


def accuracy(pairs, exact):
    "Eigenvalue error / spectral radius; eigenvector |cos| where the eigenvalue is separated by >= 5% of the radius."
    errs, coss = [], []
    for k, e in exact.items():
        p = pairs[k]; rad = torch.maximum(e['lam_min'].abs(), e['lam_max'].abs()).clamp_min(1e-30)
        errs.append(torch.maximum((p['lam_min'] - e['lam_min']).abs(), (p['lam_max'] - e['lam_max']).abs()) / rad)
        for end, gap in [('min', e['lam2_min'] - e['lam_min']), ('max', e['lam_max'] - e['lam2_max'])]:
            coss.append((p[f'v_{end}'] * e[f'v_{end}']).sum(-1).abs()[gap >= 0.05 * rad])
    err, cos = torch.cat(errs), torch.cat(coss)
    return dict(err_max=err.max().item(), err_median=err.median().item(), within_2pct=within(pairs, exact),
                cos_median=cos.median().item() if cos.numel() else float('nan'),
                cos_p05=cos.quantile(0.05).item() if cos.numel() else float('nan'), n_sep=cos.numel())


def _save(out, path, extra=None):
    d = {k: {f: getattr(v, f).detach().cpu().double() for f in ('lam_min', 'v_min', 'lam_max', 'v_max')} for k, v in out.items()}
    for k, v in (extra or {}).items(): d[k].update(v)
    torch.save(d, path)


def part(args):
    "One measurement in this (fresh) process; prints a JSON line."
    device = torch.device(args.device)
    import s3d.splitmat
    s3d.splitmat.PATH_METHOD = args.path_method
    net, groups, batches = setup(device, args.images, args.batch, args.net)
    if args.part.endswith('-nopath'):  # untraced paths: the further activations' term is left out of S
        groups = [dataclasses.replace(g, path=None) for g in groups]
    loss_fn = nn.CrossEntropyLoss()
    fwd_bwd(net, batches[:1], loss_fn)  # warm-up; also puts one batch's activations into the memory baseline
    method, kw = VARIANTS.get(args.part, (None, {}))
    if args.timing and method is not None:  # warm up the method's kernels too (first calls are slow)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); extreme_eigenpairs(net, groups, loss_fn, batches[:1], method, **kw)
    sync(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(); mem0 = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res, out, extra = {}, None, None
    c0, t0 = time.process_time(), time.perf_counter()
    if args.part == 'fb':
        ts, cs = [], []
        for _ in range(max(3, args.repeat)):
            sync(device); c0, t0 = time.process_time(), time.perf_counter()
            fwd_bwd(net, batches, loss_fn); sync(device)
            ts.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
        res.update(wall=min(ts), cpu=min(cs))
        with Flops() as fc:  # matrix products and convolutions, not timed
            fwd_bwd(net, batches, loss_fn)
        res['flops'] = fc.total
    elif args.part == 'stats':
        collect_batches(net, groups, loss_fn, batches[:1], lambda *a: None)  # warm-up
        cs, ts = [], []
        for _ in range(args.repeat):
            sync(device); c0, t0 = time.process_time(), time.perf_counter()
            collect_batches(net, groups, loss_fn, batches, lambda *a: None); sync(device)
            ts.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
        with Flops() as fc:
            collect_batches(net, groups, loss_fn, batches, lambda *a: None)
        res.update(wall=min(ts), cpu=min(cs), flops=fc.total, products={}, warnings=[],
                   stats=dict(method='statistics', passes=1, cache_bytes=0, workspace_bytes=0))
    elif args.part == 'rmsprop':
        exact = torch.load(args.exact_file, weights_only=True)
        small = [(x[i:i + 32], y[i:i + 32]) for x, y in batches for i in range(0, x.shape[0], 32)]
        ops = split_operators(net, groups, loss_fn, small)
        batch_ops = {}
        for k, op in ops.items():
            batch_ops[k] = []
            for x, c in zip(op.xs, op.cs):
                o = copy.copy(op); o.xs, o.cs, o.count = [x], [c], c.shape[0]; batch_ops[k].append(o)
        ex = {k: EigenPairs(v['lam_min'].to(device), v['v_min'].to(device), v['lam_max'].to(device), v['v_max'].to(device)) for k, v in exact.items()}
        out, t_train, hist = rmsprop_rayleigh(ops, {k: {f: getattr(e, f).cpu() for f in ('lam_min', 'lam_max')} for k, e in ex.items()},
                                              batch_ops, args.lr, args.max_epochs, device)
        res.update(epochs=len(hist), history=hist)
    else:
        walls, cpus = [], []
        for rep in range(args.repeat if args.timing else 1):  # the fastest of a few runs
            st = {}
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            sync(device); c0, t0 = time.process_time(), time.perf_counter()
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter('always')
                out = extreme_eigenpairs(net, groups, loss_fn, batches, method, stats=st, **kw)
            sync(device); walls.append(time.perf_counter() - t0); cpus.append(time.process_time() - c0)
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            if rep == 0:  # the first full-size call: the memory it keeps is new to the process, faulted in
                res.update(first_cpu=cpus[0], first_sys=ru1.ru_stime - ru0.ru_stime,
                           first_faults=ru1.ru_minflt - ru0.ru_minflt)
        res.update(wall=min(walls), cpu=min(cpus))
        with warnings.catch_warnings(), Flops() as fc:  # one more run, counted, not timed
            warnings.simplefilter('ignore')
            extreme_eigenpairs(net, groups, loss_fn, batches, method, **kw)
        res['flops'] = fc.total
        res.update(stats={k: v for k, v in st.items() if k != 'groups'}, warnings=[str(x.message) for x in w],
                   products={k: v.get('products', 0) for k, v in st.get('groups', {}).items()})
        if method == 'exact':  # the second eigenvalues at both ends, for the eigenvector check
            S = dense_matrices(net, groups, loss_fn, batches, max_bytes=2**34)
            extra = {}
            for k, s in S.items():
                lam = torch.linalg.eigvalsh(s).cpu()
                extra[k] = dict(lam2_min=lam[:, min(1, lam.shape[1] - 1)], lam2_max=lam[:, max(-2, -lam.shape[1])])
    res.setdefault('wall', time.perf_counter() - t0); res.setdefault('cpu', time.process_time() - c0)  # rmsprop: all of it
    res['peak_mb'] = ((torch.cuda.max_memory_allocated() - mem0) if device.type == 'cuda' else
                      (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024) / 2**20
    if out is not None and args.save: _save(out, args.save, extra)
    print('RESULT ' + json.dumps(res))


def run_part(args, name, images=None, save=None, extra=(), timing=True, path_method='linear'):
    cmd = [sys.executable, __file__, '--part', name, '--path-method', path_method, '--device', args.device, '--net', args.net, '--images', str(images or args.images),
           '--batch', str(args.batch), '--lr', str(args.lr), '--max-epochs', str(args.max_epochs), '--repeat', str(args.repeat), *extra]
    if save: cmd += ['--save', save]
    if timing: cmd += ['--timing']
    env = dict(os.environ)
    if not timing:  # a fixed mmap threshold: glibc then returns freed large blocks, so max RSS follows live memory
        env.setdefault('MALLOC_MMAP_THRESHOLD_', str(128 * 1024))
    else:  # freed blocks reused, not returned and faulted in again: steadier times (T_fb included)
        env.setdefault('MALLOC_MMAP_THRESHOLD_', str(2**32))
        env.setdefault('MALLOC_TRIM_THRESHOLD_', str(2**36))
    outp = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if outp.returncode: raise RuntimeError(outp.stderr[-4000:])
    return json.loads(outp.stdout.split('RESULT ', 1)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='auto', help='auto | cpu | cuda')
    ap.add_argument('--net', default='bench', help='comma-separated: bench | seed | x1.3^5 | full')
    ap.add_argument('--images', type=int, default=512); ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--variants', default='exact,cached,stream,stream-1pass,stream-random,fast', help='comma-separated, from: ' + ', '.join(VARIANTS))
    ap.add_argument('--memory', default='', help='comma-separated image counts for the memory sweep (cached vs stream), e.g. 256,512,1024,2048')
    ap.add_argument('--rmsprop', action='store_true', help='also run the RMSprop Rayleigh-quotient baseline (Wang et al. 2019)')
    ap.add_argument('--lr', type=float, default=0.01, help='RMSprop learning rate of the baseline')
    ap.add_argument('--max-epochs', type=int, default=30)
    ap.add_argument('--repeat', type=int, default=3, help='timed runs per variant (the fastest counts; the first is reported too)')
    ap.add_argument('--part', default=None); ap.add_argument('--save', default=None); ap.add_argument('--exact-file', default=None)
    ap.add_argument('--timing', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--path-method', default='linear', help=argparse.SUPPRESS)
    ap.add_argument('--path-methods', default='linear', help="comma-separated: linear | jvp (the private-path term's implementations)")
    ap.add_argument('--update-results', action='store_true', help='write benchmarks/results/eigen_bench_path.csv and its RESULTS.md block')
    args = ap.parse_args()
    if args.device == 'auto': args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.part: return part(args)
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor()) \
        if os.path.exists('/proc/cpuinfo') else platform.processor()
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else cpu}), torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, threads={torch.get_num_threads()}, batch {args.batch}")
    tkey = 'wall' if args.device == 'cuda' else 'cpu'
    rows = []
    for net_name in args.net.split(','):
        args.net = net_name
        _, groups, _ = setup('cpu', 2, 2, net_name)
        print(f"\n## net {net_name}: {len(groups)} groups (n, d):", ', '.join(f'({g.n_neurons}, {g.dim})' for g in groups))
        tmp = tempfile.mkdtemp()
        if args.variants:
            fb = run_part(args, 'fb')
            print(f"{args.images} images. T_fb (one forward+backward over them): {fb['cpu']:.3f} s CPU, {fb['wall']:.3f} s wall")
            peak = args.device == 'cuda'  # on CPU max RSS cannot be reset after the method's warm-up: see the memory sweep
            print(f"| variant | passes | time / T_fb ({tkey}) | wall / T_fb | first call (system) | FLOPs / T_fb's | "
                  + ("peak extra memory | " if peak else "") +
                  "cache + workspace (stats) | within 2% | max err | median err | eigvec cos p05 | products per neuron (Krylov groups) |")
            print('|---' * (13 if peak else 12) + '|')
            refs = {}
            variants = args.variants.split(',')
            first = [v for v in ('exact', 'exact-nopath') if v in variants]  # references before their fast runs
            variants = first + [v for v in variants if v not in first]
            for v, pm in [(v, pm) for v in variants for pm in (['linear'] if v.startswith('exact') else args.path_methods.split(','))]:
                path = os.path.join(tmp, f'{v}-{pm}.pt')
                r = run_part(args, v, save=path, path_method=pm)
                if v in ('exact', 'exact-nopath'): refs[v] = torch.load(path, weights_only=True)
                ref = refs.get('exact-nopath' if v.endswith('-nopath') else 'exact')  # the same S's exact pairs
                acc = accuracy(torch.load(path, weights_only=True), ref) if ref is not None and v != 'stats' else None
                st = r['stats']
                rows.append(dict(net=net_name, images=args.images, batch=args.batch, variant=v, path_method=pm, method=st['method'],
                                 passes=st['passes'], t_fb_cpu_s=fb['cpu'], cpu_over_t_fb=r['cpu'] / fb['cpu'], wall_over_t_fb=r['wall'] / fb['wall'],
                                 first_over_t_fb=r['first_cpu'] / fb['cpu'] if 'first_cpu' in r else '',
                                 first_sys_over_t_fb=r['first_sys'] / fb['cpu'] if 'first_sys' in r else '',
                                 first_faults=r.get('first_faults', ''),
                                 flops_over_t_fb=r['flops'] / fb['flops'],
                                 solver_mib=(st['cache_bytes'] + st['workspace_bytes']) / 2**20,
                                 within_2pct=acc['within_2pct'] if acc else '', err_max=acc['err_max'] if acc else '', cpu=cpu))
                v = f"{v} [{pm}]"
                print(f"| {v} | {st['passes']} | {r[tkey] / fb[tkey]:.2f} | {r['wall'] / fb['wall']:.2f} | {_first_cell(rows[-1])} | "
                      f"{r['flops'] / fb['flops']:.2f} | " + (f"{r['peak_mb']:.0f} MiB | " if peak else "") +
                      f"{(st['cache_bytes'] + st['workspace_bytes']) / 2**20:.1f} MiB | "
                      + (f"{100 * acc['within_2pct']:.1f}% | {acc['err_max']:.1e} | {acc['err_median']:.1e} | {acc['cos_p05']:.4f} | " if acc else '- | - | - | - | ')
                      + ' '.join(str(p) for p in r['products'].values() if p) + ' |')
                if v.startswith("fast"): print(f"|   (fast chose {st['method']}) |")
                if r['warnings']: print(f"|   ({v}: {'; '.join(r['warnings'])}) |")
            exact = refs.get('exact')
            if args.rmsprop and exact is not None:
                r = run_part(args, 'rmsprop', save=os.path.join(tmp, 'rms.pt'), extra=['--exact-file', os.path.join(tmp, 'exact-linear.pt')])
                acc = accuracy(torch.load(os.path.join(tmp, "rms.pt"), weights_only=True), exact)
                print(f"| RMSprop Rayleigh (Wang et al. 2019, lr={args.lr:g}, batch 32, cached products) | {r['epochs']} epochs | "
                      f"{r[tkey] / fb[tkey]:.2f} | {r['wall'] / fb['wall']:.2f} | " + (f"{r['peak_mb']:.0f} MiB | " if peak else "") +
                      f"- | {100 * acc['within_2pct']:.1f}% | "
                      f"{acc['err_max']:.1e} | {acc['err_median']:.1e} | {acc['cos_p05']:.4f} | - |")
        if args.memory:
            print(f"\nPeak extra memory vs scoring images ({'torch.cuda.max_memory_allocated' if args.device == 'cuda' else 'max RSS growth, MALLOC_MMAP_THRESHOLD_=128 KiB'}"
                  " over the baseline after one forward+backward of one batch; in brackets: the solver's own cache + workspace bytes)")
            print('| images | cached | stream | stream passes |'); print('|---|---|---|---|')
            for n in [int(s) for s in args.memory.split(',')]:
                rc, rs = (run_part(args, m, images=n, timing=False) for m in ('cached', 'stream'))
                fmt = lambda r: f"{r['peak_mb']:.0f} MiB ({(r['stats']['cache_bytes'] + r['stats']['workspace_bytes']) / 2**20:.1f} MiB)"
                print(f"| {n} | {fmt(rc)} | {fmt(rs)} | {rs['stats']['passes']} |")

    if args.update_results:
        write_results(rows, ' '.join(['OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eigen_bench.py'] + sys.argv[1:]))


RESULTS_CSV = 'benchmarks/results/eigen_bench_path_{images}.csv'  # one file per number of scoring images


def write_results(rows, command, root=Path(__file__).resolve().parent.parent):
    "Write the rows to RESULTS_CSV (the command in its first line) and re-render the RESULTS.md block."
    with open(root / RESULTS_CSV.format(images=rows[0]['images']), 'w', newline='') as f:
        f.write(f'# {command}\n')
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader(); w.writerows(rows)
    from s3d.paper.report import sync_blocks
    md = root / 'benchmarks' / 'RESULTS.md'
    md.write_text(sync_blocks(md.read_text(), results_sections(root)))


def results_sections(root: Path) -> dict:
    "{block name: Markdown} rendered from the committed result files (importable without side effects)."
    files = sorted(Path(root).glob(RESULTS_CSV.format(images='*')), key=lambda p: int(p.stem.rsplit('_', 1)[1]))
    if not files:
        return {}
    return {'eigen_bench.path': '\n\n'.join(_render(p) for p in files)}


def _at_rate(v: str, flops: float, time: float, goal: float) -> str:
    "One sentence: what variant v's FLOPs alone would take at T_fb's FLOP rate, against its goal, and its own rate."
    side = 'over' if flops > goal else 'under'
    return (f"At T_fb's FLOP rate `{v}`'s FLOPs alone would take {flops:.1f} T_fb, {side} its goal ({goal:g}); "
            f"it runs them at {flops / time:.2f} of that rate.")


def _first_cell(row: dict) -> str:
    "A row's first call / T_fb with its system time in brackets ('-' where not timed); fresh floats or CSV strings."
    if row.get('first_over_t_fb') in (None, ''):
        return '-'
    return f"{float(row['first_over_t_fb']):.2f} ({float(row['first_sys_over_t_fb']):.2f})"


def _render(p: Path) -> str:
    "One result file as Markdown: its command, machine, table and ratios."
    lines = p.read_text().splitlines()
    command, rows = lines[0].lstrip('# '), list(csv.DictReader(lines[1:]))
    r0 = rows[0]
    out = [f"Command: `{command}`", '',
           f"CPU `{r0['cpu']}`, 1 thread, net `{r0['net']}`, {r0['images']} images in batches of {r0['batch']}; "
           f"T_fb = {float(r0['t_fb_cpu_s']):.3f} s CPU time (one forward+backward over the same images).", '',
           '| variant | private-path term | solver | passes | time / T_fb (CPU) | wall / T_fb | first call / T_fb '
           '(system) | FLOPs / T_fb\'s | FLOP rate / T_fb\'s | solver bytes | within 2% | max err |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
    fl = {(r['variant'], r['path_method']): float(r['flops_over_t_fb']) for r in rows if r.get('flops_over_t_fb')}
    for r in rows:
        acc = f"{100 * float(r['within_2pct']):.1f}% | {float(r['err_max']):.1e}" if r['within_2pct'] else '- (no exact) | -'
        f = fl.get((r['variant'], r['path_method']))
        fc = f"{f:.2f} | {f / float(r['cpu_over_t_fb']):.2f}" if f is not None else '- | -'
        out.append(f"| `{r['variant']}` | `{r['path_method']}` | {r['method']} | {r['passes']} | {float(r['cpu_over_t_fb']):.2f} | "
                   f"{float(r['wall_over_t_fb']):.2f} | {_first_cell(r)} | {fc} | {float(r['solver_mib']):.1f} MiB | {acc} |")
    by = {(r['variant'], r['path_method']): float(r['cpu_over_t_fb']) for r in rows}
    ratios = [f"`{v}` {by[(v, 'jvp')] / by[(v, 'linear')]:.1f}x" for v, m in by if m == 'jvp' and (v, 'linear') in by]
    if ratios:
        out += ['', 'Speed-up of `linear` over `jvp` (CPU time, same run): ' + ', '.join(ratios) + '.']
    pairs = [(v, f'{v}-dense') for v in ('cached', 'stream')]
    fused = [f"`{v}` over `{d}` {by[(d, 'linear')] / by[(v, 'linear')]:.1f}x" for v, d in pairs
             if (v, 'linear') in by and (d, 'linear') in by]
    if fused:
        out += ['', 'Speed-up of products over the dense private-path term (CPU time, same run): ' + ', '.join(fused) + '.']
    goal = [f"`{v}` {by[(v, 'linear')]:.1f} T_fb (goal {g})" for v, g in (('cached', 3), ('stream', 3.5)) if (v, 'linear') in by]
    if goal:
        met = all(by[(v, 'linear')] <= g for v, g in (('cached', 3), ('stream', 3.5)) if (v, 'linear') in by)
        out += ['', 'Against the goal of issue 25: ' + ', '.join(goal) + ('; met.' if met else '; not met.')]
    ks = [v for v in ('exact', 'stream', 'cached', 'cached-tol0.1') if (v, 'linear') in fl]
    if ks:
        out += ['', 'Matrix-product and convolution FLOPs (`torch.utils.flop_counter`) over those of T_fb: '
                + ', '.join(f"`{v}` {fl[(v, 'linear')]:.1f}x" for v in ks) + '. '
                + ' '.join(_at_rate(v, fl[(v, 'linear')], by[(v, 'linear')], g) for v, g in (('stream', 3.5), ('cached', 3))
                           if (v, 'linear') in fl)]
    if ('stats', 'linear') in by:
        out += ['', f"The statistics pass alone (`stats`: the scoring forward and backward gathering every group's "
                f"coefficients and path factors, nothing cached or solved): {by[('stats', 'linear')]:.2f} T_fb."]
    first = {r['variant']: r for r in rows if r.get('first_over_t_fb') and r['path_method'] == 'linear'}
    if 'cached' in first and 'exact' in first:
        c, e = first['cached'], first['exact']
        out += ['', f"First call in its process (the memory a solver keeps is new to the process and faulted in): "
                f"`cached` {float(c['first_over_t_fb']):.2f} T_fb, {float(c['first_sys_over_t_fb']):.2f} of it system "
                f"time ({int(c['first_faults']):,} page faults), against {float(c['cpu_over_t_fb']):.2f} once its memory "
                f"is reused; `exact` {float(e['first_over_t_fb']):.2f} ({int(e['first_faults']):,} page faults)."]
    if ('cached-nopath', 'linear') in by:
        out += ['', f"Without the private-path term (`cached-nopath`, the same groups' first-activation term only): "
                f"{by[('cached-nopath', 'linear')]:.2f} T_fb."]
    return '\n'.join(out)


if __name__ == '__main__':
    main()
