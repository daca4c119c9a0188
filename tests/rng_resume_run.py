"""One rank of a 2-process gloo group that interrupts a `train_stage` after its first checkpoint and resumes it; used by
tests/test_distributed.py (issue 18: every rank resumes with its own RNG streams)."""
import os
from pathlib import Path
import torch
import torch.distributed as tdist
from torch import nn
import s3d.paper.runs as runs
from s3d.distributed import DistContext


class Stop(Exception): pass


def worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    tdist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        runs._DIST = DistContext()
        torch.manual_seed(100 + rank)   # as dropout or augmentation would: every rank draws its own numbers
        model, seen = nn.Linear(2, 2), {}
        def interrupted(m, state):
            torch.rand(1); state.data['epoch'] = 1; state.save()   # the checkpoint after epoch 1
            seen['expected'] = torch.rand(3)                         # what epoch 2 draws in an uninterrupted run
            raise Stop()
        def resumed(m, state):
            seen['got'] = torch.rand(3)
            return {'loss': 0.0}
        try: runs.train_stage(out, 'fit', model, interrupted)
        except Stop: pass
        tdist.barrier()   # rank 0 has written the checkpoint
        torch.manual_seed(12345)   # a fresh process would start from other states
        runs.train_stage(out, 'fit', model, resumed)
        torch.save(seen, Path(out) / f'rng{rank}.pt')
    finally:
        runs._DIST = None
        tdist.destroy_process_group()
