import pickle
import numpy as np
import pytest, torch
from s3d.paper.data import (DataError, BatchLoader, augment_batch, load_cifar100, make_fake_cifar100,
                      load_digits_data, loaders, load_dataset, CIFAR100_FOLDER)


@pytest.fixture
def fake(tmp_path):
    make_fake_cifar100(tmp_path, n_train=10, n_test=5, seed=1)
    return tmp_path


def test_fake_cifar_roundtrip(fake):
    d = load_cifar100(fake)
    raw = pickle.load(open(fake / CIFAR100_FOLDER / 'train', 'rb'), encoding='latin1')
    # channel-major layout: the first 1024 bytes are the red plane of image 0
    assert torch.equal(d.x_train[0, 0].flatten(), torch.from_numpy(raw['data'][0, :1024]))
    assert torch.equal(d.x_train[3, 2].flatten(), torch.from_numpy(raw['data'][3, 2048:]))
    assert d.y_train.tolist() == raw['fine_labels']
    assert d.classes[7] == 'class7' and d.x_test.shape == (5, 3, 32, 32)


def test_bytes_keys_accepted(fake):
    # the original CIFAR pickles come from Python 2; with bytes keys they must still load
    p = fake / CIFAR100_FOLDER / 'test'
    d = pickle.load(open(p, 'rb'), encoding='latin1')
    pickle.dump({k.encode(): v for k, v in d.items()}, open(p, 'wb'), protocol=2)
    assert load_cifar100(fake).y_test.tolist() == list(range(5))


@pytest.mark.parametrize('fname', ['train', 'test', 'meta'])
def test_missing_file_named(fake, fname):
    (fake / CIFAR100_FOLDER / fname).unlink()
    with pytest.raises(DataError, match=f'missing CIFAR-100 file .*{fname}') as e:
        load_cifar100(fake)
    assert '\n' not in str(e.value)


def test_truncated_file_named(fake):
    p = fake / CIFAR100_FOLDER / 'train'
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match='corrupt CIFAR-100 file .*train'):
        load_cifar100(fake)


def test_bad_fields_named(fake):
    p = fake / CIFAR100_FOLDER / 'test'
    pickle.dump({'data': np.zeros((3, 100), np.uint8), 'fine_labels': [0, 1, 2]}, open(p, 'wb'))
    with pytest.raises(DataError, match=r'test.*\(N, 3072\)'):
        load_cifar100(fake)
    pickle.dump({'data': np.zeros((2, 3072), np.uint8), 'fine_labels': [0, 100]}, open(p, 'wb'))
    with pytest.raises(DataError, match='fine_labels'):
        load_cifar100(fake)
    pickle.dump([1, 2], open(p, 'wb'))
    with pytest.raises(DataError, match='expected a dict'):
        load_cifar100(fake)


def test_augment_is_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8)
    out = augment_batch(x, 2, True, g)
    padded = torch.nn.functional.pad(x, (2,) * 4)
    for o, p in zip(out, padded):
        cands = [p[:, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(o, c) or torch.equal(o, c.flip(-1)) for c in cands)
    assert not torch.equal(out, x)


def test_loader_determinism_and_errors():
    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(10)
    l1 = BatchLoader(x, y, 3, shuffle=True, pad=1, flip=True, seed=5)
    l2 = BatchLoader(x, y, 3, shuffle=True, pad=1, flip=True, seed=5)
    l3 = BatchLoader(x, y, 3, shuffle=True, pad=1, flip=True, seed=6)
    b1, b2, b3 = list(l1), list(l2), list(l3)
    assert all(torch.equal(u[0], v[0]) for u, v in zip(b1, b2))
    assert not all(torch.equal(u[1], v[1]) for u, v in zip(b1, b3))
    assert len(BatchLoader(x, y, 3, drop_last=True)) == 3
    with pytest.raises(TypeError, match='uint8'):
        BatchLoader(x.float(), y, 3)
    with pytest.raises(ValueError, match='labels'):
        BatchLoader(x, y[:5], 3)
    with pytest.raises(ValueError, match='mean/std'):
        BatchLoader(x, y, 3, mean=(0.5,), std=(0.2,))


def test_channels_last_and_normalisation():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    l = BatchLoader(x, torch.zeros(2, dtype=torch.long), 2, mean=(0.5,) * 3, std=(0.25,) * 3, channels_last=True)
    xb, _ = next(iter(l))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(xb, torch.full_like(xb, 2.0))


def test_digits_split_fixed():
    a, b = load_digits_data(), load_digits_data()
    assert torch.equal(a.x_test, b.x_test) and a.flip is False
    assert set(a.y_train.tolist()) == set(range(10))
    tr, te = loaders(a, 256)
    xb, yb = next(iter(tr))
    assert xb.shape == (256, 1, 8, 8) and yb.dtype == torch.int64


def test_load_dataset_cifar_through_name(fake):
    assert load_dataset('cifar100', fake).name == 'cifar100'
    with pytest.raises(ValueError, match='unknown dataset'):
        load_dataset('imagenet')


def test_check_cifar100_is_fast_and_names_the_file(fake):
    from s3d.paper.data import check_cifar100
    assert check_cifar100(fake) == fake / CIFAR100_FOLDER
    (fake / CIFAR100_FOLDER / 'test').write_bytes(b'')
    with pytest.raises(DataError, match='corrupt CIFAR-100 file .*test: not a pickle'):
        check_cifar100(fake)
    (fake / CIFAR100_FOLDER / 'meta').unlink()
    with pytest.raises(DataError, match='missing CIFAR-100 file .*meta.*--download'):
        check_cifar100(fake)
