"""A tiny digits growth (tanh MLP, 2 rounds x 2 epochs) run on one process or as one rank of a gloo group; used by
tests/test_distributed.py."""
import os, warnings
from pathlib import Path
import torch
from torch import nn
from s3d.grow import GrowConfig, grow
from s3d.splitmat import dense_matrices
from s3d.graph import split_groups
from s3d.paper.data import BatchLoader
from s3d.paper.train import train


def seed_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))


def loaders(data, dist=None):
    "Global batches of 64 (training, shuffled) and 128 (scoring); this rank's shards when `dist` is given."
    x, y, mean, std = (data[k] for k in ('x', 'y', 'mean', 'std'))
    tr = BatchLoader(x, y, 64, shuffle=True, mean=mean, std=std, seed=3)
    sc = BatchLoader(x, y, 128, mean=mean, std=std)
    return (tr, sc) if dist is None else (dist.shard(tr), dist.shard(sc))


def run(data, out, dist=None, eigen='fast'):
    tr, sc = loaders(data, dist)
    def train_fn(model, r, state):
        return train(model, tr, 2, lr=0.1, weight_decay=1e-4, progress=False, state=state)[-1]
    cfg = GrowConfig(rounds=2, m=3, c=2.0, ratio=0.5, eigen=eigen)
    return grow(seed_model(), train_fn, nn.functional.cross_entropy, lambda: list(sc), data['x'][:1].float(), cfg,
                out_dir=out, progress=False, dist=dist)


def dense(data, dist=None):
    "Exact splitting matrices of the seed model over the scoring batches (summed over ranks with `dist`)."
    m = seed_model()
    _, sc = loaders(data, dist)
    return dense_matrices(m, split_groups(m, data['x'][:1].float()), nn.functional.cross_entropy, list(sc),
                          reduce=dist.reduce if dist is not None else None)


def eig_stream(data, dist=None):
    "Streamed fast eigenpairs of the seed model (several passes; products summed over ranks with `dist`)."
    from s3d.eigen import extreme_eigenpairs
    m = seed_model()
    _, sc = loaders(data, dist)
    with warnings.catch_warnings():  # 4 passes leave some neurons short of tol: the same Ritz estimates are compared
        warnings.simplefilter('ignore', UserWarning)
        return extreme_eigenpairs(m, split_groups(m, data['x'][:1].float()), nn.functional.cross_entropy, list(sc), 'stream',
                                  sample_steps=0, max_passes=4, reduce=dist.reduce if dist is not None else None)


def worker(rank, world, port, data_path, out):
    "One rank: join the group the torchrun way (environment variables), grow, save what the test compares."
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from s3d.distributed import init_distributed
    import torch.distributed as tdist
    dist = init_distributed('gloo', timeout_s=120)
    data = torch.load(data_path, weights_only=True)
    res = run(data, Path(out) / 'run', dist)
    S = dense(data, dist)
    E = {k: (e.lam_min, e.lam_max) for k, e in eig_stream(data, dist).items()}
    bad = nn.Sequential(nn.Linear(3, 4 + rank))  # ranks disagree: the check must stop every rank
    try: dist.check(bad, 7); err = ''
    except RuntimeError as e: err = str(e)
    torch.save(dict(model=res.model.state_dict(), widths=res.history.widths.tolist(), S=S, E=E, err=err,
                    world_size=dist.world_size), Path(out) / f'rank{rank}.pt')
    tdist.destroy_process_group()
