"""A small digits growth (tanh MLP, 3 rounds x 3 epochs) resumable at every epoch; used by tests/test_grow_resume.py.

usage: python tests/grow_kill_run.py DATA.pt OUT_DIR [HANG_AFTER_SAVES HANG_AT_STEP]
With HANG_*, the process writes OUT_DIR/hanging and sleeps at training step HANG_AT_STEP after its HANG_AFTER_SAVES-th
epoch checkpoint, so that the test can `kill -9` it at a known point."""
import sys, time
from pathlib import Path
import torch
from torch import nn
from s3d.grow import GrowConfig, grow
from s3d.paper.data import BatchLoader
from s3d.paper.train import train


def run(data, out, hang_after=None, hang_step=None):
    "Grow the MLP in `out` (resuming from its checkpoint); optionally hang at a given point."
    out, count = Path(out), dict(saves=0, steps=0)
    x, y, mean, std = (data[k] for k in ('x', 'y', 'mean', 'std'))

    def regularizer(model):  # adds exactly zero; counts steps and hangs at the requested one
        if hang_after is not None and count['saves'] >= hang_after:
            if count['steps'] == hang_step:
                (out / 'hanging').write_text('1'); time.sleep(600)
            count['steps'] += 1
        return torch.zeros(())

    loader = BatchLoader(x, y, 64, shuffle=True, pad=1, mean=mean, std=std, seed=3)
    score = BatchLoader(x, y, 192, mean=mean, std=std)

    def train_fn(model, r, state):
        loader.seed, loader.epoch = 3 + r, 0  # the round's data order (as table1's Trainer.fit does)
        save0 = state.save
        def save(): save0(); count['saves'] += 1
        state.save = save
        return train(model, loader, 3, lr=0.1, weight_decay=1e-4, progress=False, regularizer=regularizer, state=state)[-1]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))
    cfg = GrowConfig(rounds=2, m=3, c=2.0, ratio=0.5, eigen='exact')
    return grow(model, train_fn, nn.functional.cross_entropy, lambda: list(score), x[:1].float(), cfg,
                out_dir=out, progress=False)


if __name__ == '__main__':
    torch.set_num_threads(1)
    run(torch.load(sys.argv[1], weights_only=True), sys.argv[2], *map(int, sys.argv[3:5]))
