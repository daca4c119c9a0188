"""Cost of capturing functional activations in `collect_batches` (the TorchFunctionMode path) vs module activations.

Same GPT-style stack twice: once with `F.gelu` in forward (statistics captured by a TorchFunctionMode), once with an
`nn.GELU` module (forward hooks). Times one statistics pass over the batches for each (best of 3, side by side in one
run, CPU, 1 thread) and checks that the two give the same splitting matrices.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/functional_acts.py                    # writes benchmarks/out/
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/functional_acts.py --update-results   # the committed CSV + RESULTS.md
"""
import argparse, time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _results import md_table, out_dir, read_csv, update_results_md, write_csv

CSV = 'functional_acts.csv'


class Block(nn.Module):
    def __init__(self, d, h, functional):
        super().__init__()
        self.ln, self.fc, self.out, self.functional = nn.LayerNorm(d), nn.Linear(d, h), nn.Linear(h, d), functional
        self.act = nn.GELU()

    def forward(self, x):
        z = self.fc(self.ln(x))
        return x + self.out(F.gelu(z) if self.functional else self.act(z))


def net(functional, d=128, h=512, depth=4):
    torch.manual_seed(0)
    return nn.Sequential(*[Block(d, h, functional) for _ in range(depth)]).eval()


def timed(model, groups, batches, reps=3):
    from s3d.splitmat import collect_batches

    best = float('inf')
    for _ in range(reps):
        t = time.perf_counter()
        collect_batches(model, groups, lambda o, t: (o - t).pow(2).mean(), batches, lambda *a: None)
        best = min(best, time.perf_counter() - t)
    return best


def measure() -> list[dict]:
    "One row per capture path: the best-of-3 seconds of one statistics pass."
    from s3d.graph import split_groups
    from s3d.splitmat import dense_matrices

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 64, 128, generator=g), torch.randn(16, 64, 128, generator=g)) for _ in range(4)]
    fn, mod = net(True), net(False)
    mod.load_state_dict(fn.state_dict())
    gf, gm = split_groups(fn, batches[0][0]), split_groups(mod, batches[0][0])
    assert all(h.act_fn is F.gelu for h in gf) and all(h.act_fn is None for h in gm)
    small = [(x[:2, :8], y[:2, :8]) for x, y in batches]
    mse = lambda o, t: (o - t).pow(2).mean()
    Sf, Sm = dense_matrices(fn, gf[:1], mse, small), dense_matrices(mod, gm[:1], mse, small)
    assert torch.allclose(Sf['0.fc'], Sm['0.fc'], rtol=1e-5, atol=1e-8)
    timed(fn, gf, batches, 1)
    timed(mod, gm, batches, 1)  # warm-up
    tf, tm = timed(fn, gf, batches), timed(mod, gm, batches)
    return [dict(activation='nn.GELU', capture='module, forward hooks', seconds=round(tm, 4)),
            dict(activation='F.gelu', capture='functional, TorchFunctionMode', seconds=round(tf, 4))]


def results_sections(root: Path) -> dict:
    "The RESULTS.md block rendered from the committed CSV."
    rows = read_csv(root, CSV)
    table = md_table(['activation', 'capture', 'one statistics pass (s)'],
                     [[f"`{r['activation']}`", r['capture'], f"{float(r['seconds']):.3f}"] for r in rows])
    ratio = float(rows[1]['seconds']) / float(rows[0]['seconds'])
    return {'functional-acts': f'{table}\n\nRatio functional / module: {ratio:.2f}.'}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--update-results', action='store_true', help='write benchmarks/results/ and RESULTS.md')
    a = p.parse_args()
    rows = measure()
    write_csv(out_dir(a.update_results) / CSV, rows)
    for r in rows:
        print(f"{r['activation']:<8} {r['capture']:<32} {r['seconds']:.3f} s")
    if a.update_results:
        update_results_md(results_sections(out_dir(True).parent.parent))


if __name__ == '__main__':
    main()
