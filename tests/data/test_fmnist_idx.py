"""IDX parsing on tiny files written here; error messages for bad input."""

import gzip

import numpy as np
import pytest

from hwnas.data import fashion_mnist as fm
from hwnas.errors import DataError, HwnasError


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_images_and_labels(write_idx, tmp_path, gz):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    lbls = np.array([0, 9, 4], dtype=np.uint8)
    pi = write_idx(tmp_path / "imgs", imgs, fm.IDX_IMAGES_MAGIC, gz)
    pl = write_idx(tmp_path / "lbls", lbls, fm.IDX_LABELS_MAGIC, gz)
    got = fm.read_idx(pi, fm.IDX_IMAGES_MAGIC)
    assert got.dtype == np.uint8 and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, imgs)
    np.testing.assert_array_equal(fm.read_idx(pl, fm.IDX_LABELS_MAGIC), lbls)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_truncated_file_names_the_file(write_idx, tmp_path, gz):
    imgs = np.zeros((3, 4, 5), dtype=np.uint8)
    p = write_idx(tmp_path / "full", imgs, fm.IDX_IMAGES_MAGIC, gz=False)
    raw = p.read_bytes()[:-7]
    bad = tmp_path / "truncated-images"
    bad.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="truncated-images.*truncated"):
        fm.read_idx(bad, fm.IDX_IMAGES_MAGIC)


def test_truncated_gzip_stream(write_idx, tmp_path):
    p = write_idx(tmp_path / "x.gz", np.arange(200, dtype=np.uint8).reshape(2, 10, 10), 2051, gz=True)
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"x\.gz"):
        fm.read_idx(p, 2051)


def test_wrong_magic(write_idx, tmp_path):
    p = write_idx(tmp_path / "labels-as-images", np.zeros(5, dtype=np.uint8), fm.IDX_LABELS_MAGIC, gz=True)
    with pytest.raises(DataError, match="labels-as-images.*magic number 2049, expected 2051"):
        fm.read_idx(p, fm.IDX_IMAGES_MAGIC)


@pytest.mark.parametrize("content", [b"", b"ab", b"hello world, not idx at all", b"\x1f\x8bgarbage"])
def test_garbage(tmp_path, content):
    p = tmp_path / "garbage.bin"
    p.write_bytes(content)
    with pytest.raises(DataError, match="garbage.bin"):
        fm.read_idx(p)
    with pytest.raises(DataError, match="garbage.bin"):
        fm.read_idx(p, fm.IDX_IMAGES_MAGIC)


def test_trailing_bytes_rejected(write_idx, tmp_path):
    p = write_idx(tmp_path / "long", np.zeros(4, dtype=np.uint8), fm.IDX_LABELS_MAGIC, gz=False)
    p.write_bytes(p.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="longer than its header"):
        fm.read_idx(p, fm.IDX_LABELS_MAGIC)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        fm.read_idx(tmp_path / "nope")


def test_missing_dataset_dir_message(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir"
    monkeypatch.setenv("HWNAS_FMNIST_DIR", str(missing))
    with pytest.raises(DataError) as ei:
        fm.load_split("train")
    msg = str(ei.value)
    assert f"Fashion-MNIST not found at {missing}" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data DIR" in msg
    assert "\n" not in msg
    assert isinstance(ei.value, (HwnasError, ValueError))
    # an explicit path wins over the env var
    with pytest.raises(DataError, match="explicit"):
        fm.load_split("test", data_dir=tmp_path / "explicit")


def test_dir_with_wrong_shapes(write_idx, tmp_path):
    """A directory of well-formed IDX files that are not Fashion-MNIST is rejected clearly."""
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8), 2051, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), 2049, gz=False)
    with pytest.raises(DataError, match=r"expected uint8 \(10000, 28, 28\)"):
        fm.load_split("test", data_dir=tmp_path)


def test_unknown_split():
    with pytest.raises(DataError, match="unknown split 'valid'; choose one of train, val, test, calib"):
        fm.load_split("valid")
