"""Two gloo processes grow the same architecture, with parameters equal within tolerance, as one process on the same global batches."""
import socket, sys
import pytest
from pathlib import Path
import torch
import torch.multiprocessing as mp
from s3d.grow import load_checkpoint
from s3d.paper.data import load_digits_data

sys.path.insert(0, str(Path(__file__).parent))
import ddp_grow_run  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_two_process_growth_matches_one(tmp_path):
    dd = load_digits_data()
    data = dict(x=dd.x_train[:256], y=dd.y_train[:256], mean=list(dd.mean), std=list(dd.std))
    torch.save(data, tmp_path / 'data.pt')
    mp.spawn(ddp_grow_run.worker, args=(2, _free_port(), str(tmp_path / 'data.pt'), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2))
    nthreads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        one = ddp_grow_run.run(data, tmp_path / 'one')
        S1 = ddp_grow_run.dense(data)
        E1 = ddp_grow_run.eig_stream(data)
    finally: torch.set_num_threads(nthreads)
    # every rank ends with the same architecture and bit-identical weights; both match the single process
    assert r0['widths'] == r1['widths'] == one.history.widths.tolist()
    assert one.history.neurons.iloc[-1] > one.history.neurons.iloc[0]
    for k, v in one.model.state_dict().items():
        assert torch.equal(r0['model'][k], r1['model'][k]), k
        torch.testing.assert_close(r0['model'][k], v, rtol=1e-4, atol=1e-5)
    # the reduced statistics are those of all samples (float32 forward/backward: equal to float32 rounding)
    for k in S1:
        torch.testing.assert_close(r0['S'][k], S1[k], rtol=1e-5, atol=1e-6 * float(S1[k].abs().max()))
        torch.testing.assert_close(r0['S'][k], r1['S'][k], rtol=0, atol=0)
    # streamed eigenpairs (one S·v block per pass, summed over ranks) agree with one process, identically on both ranks
    for k, e in E1.items():
        for a, b, c in zip(r0['E'][k], r1['E'][k], (e.lam_min, e.lam_max)):
            assert torch.equal(a, b)
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6 * float(c.abs().max()))
    # a rank with another architecture stops every rank with an error naming it
    assert 'ranks [1]' in r0['err'] and 'ranks [1]' in r1['err']
    # only rank 0 wrote, and its checkpoint is the finished run
    st = load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')
    assert (st['phase'], st['round']) == ('done', 2) and (tmp_path / 'run' / 'history.csv').exists()


def test_ddp_is_built_after_the_channels_last_conversion(tmp_path):
    "DDP lays out its gradient buckets with the parameters' strides at construction: channels_last must come first (issue 18)."
    import warnings
    import torch.distributed as tdist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    import s3d.paper.runs as runs
    from s3d.distributed import DistContext
    from s3d.paper.train import train
    conv = lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
    batches = [(torch.randn(4, 3, 10, 10), torch.randint(0, 4, (4,))) for _ in range(2)]
    def messages(fn):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            fn()
        return [str(x.message) for x in w if 'strides' in str(x.message)]
    tdist.init_process_group('gloo', store=tdist.FileStore(str(tmp_path / 'store'), 1), rank=0, world_size=1)
    try:
        runs._DIST = ctx = DistContext()
        ctx.channels_last = True   # the per-round wrapper `grow(dist=)` uses (True is CUDA's default for conv models)
        assert messages(lambda: ctx.wrap(lambda m, r: train(m, batches, 1, channels_last=True, progress=False))(conv(), 1)) == []
        ddp = runs.data_parallel(conv(), channels_last=True)   # what the tables' trainers call
        assert messages(lambda: train(ddp, batches, 1, channels_last=True, progress=False)) == []
        with pytest.raises(ValueError, match='channels_last'):   # wrapped in the old order: refused, not silently slow
            train(DistributedDataParallel(conv()), batches, 1, channels_last=True, progress=False)
    finally:
        runs._DIST = None
        tdist.destroy_process_group()


def test_resume_restores_every_ranks_own_rng_streams(tmp_path):
    "A stage interrupted after a checkpoint resumes on each of 2 gloo ranks with that rank's RNG streams, not rank 0's."
    import rng_resume_run
    mp.spawn(rng_resume_run.worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'rng{r}.pt', weights_only=True) for r in range(2))
    assert not torch.equal(r0['expected'], r1['expected'])   # the ranks' streams differ
    assert torch.equal(r0['got'], r0['expected']) and torch.equal(r1['got'], r1['expected'])
    st = torch.load(tmp_path / 'stage-fit.pt', weights_only=True)
    assert isinstance(st['rng'], list) and len(st['rng']) == 2   # rank 0 wrote both ranks' states


def test_cuda_states_of_a_bigger_machine_restore_without_index_error(monkeypatch):
    "A checkpoint written with more GPUs than this machine has: the existing devices' states are set, the rest named."
    import s3d.distributed as sd
    set_calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda s, i: set_calls.append(i))
    from s3d.checkpoint import rng_state as _rng_state
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: [torch.zeros(16, dtype=torch.uint8)] * 4)
    saved = _rng_state()   # as written on a 4-GPU machine
    with pytest.warns(UserWarning, match='4 device'):
        notes = sd.restore_rng_states([saved])
    assert set_calls == [0] and len(notes) == 1


def test_sync_batchnorm_over_two_gloo_processes_is_one_process_batchnorm(tmp_path):
    "Each rank holds half the batch: outputs, input gradients, summed parameter gradients and running stats are one process's."
    import sync_bn_run
    mp.spawn(sync_bn_run.worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f'bn{k}.pt', weights_only=True) for k in range(2)]
    x, gy = sync_bn_run.batch()
    one = sync_bn_run.step(sync_bn_run.model(), x, gy)
    for k in range(2):
        torch.testing.assert_close(r[k]['y'], one['y'][k::2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r[k]['gx'], one['gx'][k::2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r[k]['rm'], one['rm'], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r[k]['rv'], one['rv'], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r[0]['gw'] + r[1]['gw'], one['gw'], rtol=1e-5, atol=1e-5)   # DDP adds (averages) these
    torch.testing.assert_close(r[0]['gb'] + r[1]['gb'], one['gb'], rtol=1e-5, atol=1e-5)
