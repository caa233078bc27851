"""to_tensor, augmentation and batching."""

import numpy as np
import pytest
import torch

from hwnas.data import fashion_mnist as fm
from hwnas.errors import DataError


def _images(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("r", [28, 16, 32, 40])
def test_to_tensor_shape_dtype(r):
    x, _ = _images(4)
    t = fm.to_tensor(x, r)
    assert t.shape == (4, 1, r, r) and t.dtype == torch.float32 and t.is_contiguous()
    assert torch.equal(fm.to_tensor(torch.from_numpy(x), r), t)


def test_to_tensor_normalization():
    x = np.zeros((2, 28, 28), np.uint8)
    x[1] = 255
    t = fm.to_tensor(x, 28)
    assert torch.allclose(t[0], torch.full_like(t[0], -fm.MEAN / fm.STD))
    assert torch.allclose(t[1], torch.full_like(t[1], (1 - fm.MEAN) / fm.STD))
    # a constant image stays constant through the antialiased resize
    for r in (14, 56):
        tr = fm.to_tensor(x, r)
        assert torch.allclose(tr[1], torch.full_like(tr[1], (1 - fm.MEAN) / fm.STD), atol=1e-5)
    # exact values at 28: (p/255 - MEAN) / STD
    y, _ = _images(2)
    expect = (torch.from_numpy(y).float() / 255 - fm.MEAN) / fm.STD
    assert torch.allclose(fm.to_tensor(y, 28)[:, 0], expect, atol=1e-6)


def test_to_tensor_resize_matches_interpolate():
    x, _ = _images(3)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).float().div(255).unsqueeze(1), size=(20, 20), mode="bilinear",
        align_corners=False, antialias=True,
    )
    assert torch.allclose(fm.to_tensor(x, 20), (ref - fm.MEAN) / fm.STD, atol=1e-5)


def test_shipped_val_roughly_standardized(monkeypatch):
    monkeypatch.delenv("HWNAS_CALIB_DIR", raising=False)
    t = fm.to_tensor(fm.load_split("val")[0], 28)
    assert abs(t.mean().item()) < 0.02 and abs(t.std().item() - 1) < 0.02


@pytest.mark.parametrize("bad", [np.zeros((2, 28, 28), np.float32), np.zeros((28, 28), np.uint8)])
def test_to_tensor_rejects_bad_input(bad):
    with pytest.raises(DataError, match="expected uint8 images"):
        fm.to_tensor(bad, 28)
    with pytest.raises(DataError, match="resolution"):
        fm.to_tensor(np.zeros((1, 28, 28), np.uint8), 0)


def test_batches_cover_all_once():
    x, y = _images(23)
    out = list(fm.batches(x, y, 5, 28, shuffle=True, seed=3))
    assert [len(b[1]) for b in out] == [5, 5, 5, 5, 3]
    xs = torch.cat([b[0] for b in out])
    ys = torch.cat([b[1] for b in out])
    assert xs.shape == (23, 1, 28, 28) and ys.dtype == torch.int64
    full = fm.to_tensor(x, 28)
    # each yielded image is one of the inputs, with its own label, each exactly once
    match = [int(torch.nonzero((full == xi).flatten(1).all(1))[0]) for xi in xs]
    assert sorted(match) == list(range(23))
    assert np.array_equal(ys.numpy(), y[match])
    # unshuffled keeps order
    xs0 = torch.cat([b[0] for b in fm.batches(x, y, 5, 28, shuffle=False, seed=0)])
    assert torch.equal(xs0, full)


def test_batches_deterministic_under_seed():
    x, y = _images(40)

    def run(seed, augment=True):
        return [(a.clone(), b.clone()) for a, b in fm.batches(x, y, 16, 32, True, seed, augment=augment)]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    assert a[0][0].shape == (16, 1, 32, 32)


def test_augment_is_shift_and_flip():
    x, _ = _images(64)
    g = torch.Generator().manual_seed(0)
    out = fm.augment_batch(x, g)
    assert out.dtype == torch.uint8 and out.shape == (64, 28, 28)
    padded = torch.nn.functional.pad(torch.from_numpy(x), (2, 2, 2, 2))
    seen_flip, seen_shift = set(), set()
    for i in range(64):
        found = False
        for dy in range(5):
            for dx in range(5):
                crop = padded[i, dy: dy + 28, dx: dx + 28]
                for flip in (False, True):
                    if torch.equal(out[i], crop.flip(-1) if flip else crop):
                        found = True
                        seen_flip.add(flip)
                        seen_shift.add((dy, dx))
        assert found, i
    assert seen_flip == {False, True} and len(seen_shift) > 5
    # same seed, same result
    assert torch.equal(out, fm.augment_batch(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, fm.augment_batch(x, torch.Generator().manual_seed(1)))


def test_batches_label_mismatch():
    x, y = _images(5)
    with pytest.raises(DataError, match="5 images but labels"):
        next(fm.batches(x, y[:4], 2, 28, False, 0))
