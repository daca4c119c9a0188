"""Cost of capturing functional activations in `collect_batches` (the TorchFunctionMode path) vs module activations.

Same GPT-style stack twice: once with `F.gelu` in forward (statistics captured by a TorchFunctionMode), once with an
`nn.GELU` module (forward hooks). Prints the time of one statistics pass over the batches for each, and their ratio,
measured side by side in one run (CPU, 1 thread). Also checks the two give the same splitting matrices.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/functional_acts.py
"""
import time
import torch
import torch.nn.functional as F
from torch import nn
from s3d.graph import split_groups
from s3d.splitmat import collect_batches, dense_matrices

class Block(nn.Module):
    def __init__(self, d, h, functional):
        super().__init__(); self.ln, self.fc, self.out, self.functional = nn.LayerNorm(d), nn.Linear(d, h), nn.Linear(h, d), functional
        self.act = nn.GELU()
    def forward(self, x):
        z = self.fc(self.ln(x))
        return x + self.out(F.gelu(z) if self.functional else self.act(z))

def net(functional, d=128, h=512, depth=4):
    torch.manual_seed(0)
    return nn.Sequential(*[Block(d, h, functional) for _ in range(depth)]).eval()

def timed(model, groups, batches, reps=3):
    best = float('inf')
    for _ in range(reps):
        t = time.perf_counter(); collect_batches(model, groups, lambda o, t: (o - t).pow(2).mean(), batches, lambda *a: None)
        best = min(best, time.perf_counter() - t)
    return best

if __name__ == '__main__':
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 64, 128, generator=g), torch.randn(16, 64, 128, generator=g)) for _ in range(4)]
    fn, mod = net(True), net(False)
    mod.load_state_dict(fn.state_dict())
    gf, gm = split_groups(fn, batches[0][0]), split_groups(mod, batches[0][0])
    assert all(h.act_fn is F.gelu for h in gf) and all(h.act_fn is None for h in gm)
    small = [(x[:2, :8], y[:2, :8]) for x, y in batches]
    Sf, Sm = dense_matrices(fn, gf[:1], lambda o, t: (o - t).pow(2).mean(), small), dense_matrices(mod, gm[:1], lambda o, t: (o - t).pow(2).mean(), small)
    assert torch.allclose(Sf['0.fc'], Sm['0.fc'], rtol=1e-5, atol=1e-8)
    timed(fn, gf, batches, 1); timed(mod, gm, batches, 1)   # warm-up
    tf, tm = timed(fn, gf, batches), timed(mod, gm, batches)
    print(f"collect_batches over 4 batches of (16, 64, 128), 4 blocks (d=128, h=512):")
    print(f"  module nn.GELU (hooks)          {tm:.3f} s")
    print(f"  functional F.gelu (torch mode)  {tf:.3f} s")
    print(f"  ratio functional / module       {tf / tm:.2f}")
