"""One rank of a 2-process gloo group running `s3d.distributed.SyncBatchNorm2d` on its half of a batch; used by
tests/test_distributed.py (issue 18: N processes normalise as one)."""
import os
from pathlib import Path
import torch
import torch.distributed as tdist
from torch import nn
from s3d.distributed import sync_batchnorm


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 4, 4, generator=g) * 3 + 1, torch.randn(8, 3, 4, 4, generator=g)


def model():
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad(): bn.weight.uniform_(0.5, 1.5); bn.bias.normal_()
    return bn


def step(bn, x, gy):
    "Forward in training mode and backward of sum(y * gy): output, input gradient, weight and bias gradients, running stats."
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * gy).sum().backward()
    return dict(y=y.detach(), gx=x.grad, gw=bn.weight.grad, gb=bn.bias.grad, rm=bn.running_mean.clone(), rv=bn.running_var.clone())


def worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    tdist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        x, gy = batch()
        torch.save(step(sync_batchnorm(model()), x[rank::world], gy[rank::world]), Path(out) / f'bn{rank}.pt')
    finally: tdist.destroy_process_group()
