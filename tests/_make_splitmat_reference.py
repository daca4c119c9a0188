"Writes tests/data/splitmat_reference.pt: S and S.v of models whose private paths hold no second curved nonlinearity."
import sys, torch
from torch import nn
sys.path.insert(0, 'tests')
from conftest import make
from s3d.graph import split_groups
from s3d.splitmat import dense_matrices, split_operators

MODELS = ['mlp', 'nested', 'conv', 'flatten', 'flatten_avg', 'traced', 'functional']

def reference(name):
    model, x = make(name)
    y = torch.randn_like(model(x))
    groups = split_groups(model, x)
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    S = dense_matrices(model, groups, nn.functional.mse_loss, data)
    ops = split_operators(model, groups, nn.functional.mse_loss, data)
    g = torch.Generator().manual_seed(0)
    V = {k: torch.randn(op.n, op.d, 3, generator=g, dtype=torch.float64) for k, op in ops.items()}
    return dict(S=S, V=V, SV={k: ops[k](V[k]) for k in ops})

if __name__ == '__main__':
    torch.save({n: reference(n) for n in MODELS}, 'tests/data/splitmat_reference.pt')
