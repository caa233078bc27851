"""The fixed splits and the shipped subsets."""

import numpy as np
import pytest

from hwnas.data import fashion_mnist as fm
from hwnas.data import make_subsets
from hwnas.errors import DataError



def _dataset_present() -> bool:
    d = fm.resolve_data_dir()
    return all(fm._find_file(d, stem) is not None for pair in fm._FILES.values() for stem in pair)


needs_dataset = pytest.mark.skipif(
    not _dataset_present(),
    reason="full Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or set HWNAS_FMNIST_DIR)",
)


@pytest.fixture
def shipped_env(monkeypatch):
    monkeypatch.delenv("HWNAS_CALIB_DIR", raising=False)


def test_split_indices_fixed():
    val, train, calib = fm.split_indices("val"), fm.split_indices("train"), fm.split_indices("calib")
    assert len(train) == 55_000 and len(val) == 5_000 and len(calib) == 2_000
    assert len(fm.split_indices("test")) == 10_000
    assert not np.intersect1d(train, val).size
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(60_000))
    assert np.isin(calib, train).all() and len(np.unique(calib)) == 2_000
    # pinned: changing the split definition must be deliberate
    assert val[:5].tolist() == np.random.default_rng(0).permutation(60_000)[:5].tolist()


def test_shipped_subsets_load_without_dataset(tmp_path, monkeypatch, shipped_env):
    monkeypatch.setenv("HWNAS_FMNIST_DIR", str(tmp_path / "absent"))
    for split, n in (("calib", 2_000), ("val", 5_000)):
        x, y = fm.load_split(split)
        assert x.dtype == np.uint8 and x.shape == (n, 28, 28)
        assert y.dtype == np.int64 and y.shape == (n,)
        assert y.min() >= 0 and y.max() <= 9 and len(np.unique(y)) == 10
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        fm.load_split("train")


def test_missing_shipped_and_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_FMNIST_DIR", str(tmp_path / "absent"))
    monkeypatch.setenv("HWNAS_CALIB_DIR", str(tmp_path))
    with pytest.raises(DataError, match="calib.npz is missing and Fashion-MNIST not found"):
        fm.load_split("calib")


def test_corrupt_shipped_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_CALIB_DIR", str(tmp_path))
    (tmp_path / "val.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="val.npz.*make_subsets"):
        fm.load_split("val")
    (tmp_path / "calib.npz").write_bytes(make_subsets.npz_bytes(np.zeros((3, 28, 28), np.uint8), np.zeros(3)))
    with pytest.raises(DataError, match="calib.npz holds"):
        fm.load_split("calib")


@needs_dataset
def test_split_sizes_and_disjointness():
    x_tr, y_tr = fm.load_split("train")
    x_te, y_te = fm.load_split("test")
    assert x_tr.shape == (55_000, 28, 28) and y_tr.shape == (55_000,)
    assert x_te.shape == (10_000, 28, 28) and y_te.dtype == np.int64
    x_val, _ = fm.split_from_raw("val")
    assert x_val.shape == (5_000, 28, 28)
    # disjoint as pixel content too, not only as indices
    h = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}  # noqa: E731
    assert not (h(x_tr) & h(x_val))
    assert h(fm.split_from_raw("calib")[0]) <= h(x_tr)


@needs_dataset
def test_shipped_equal_regenerated(shipped_env):
    for split in ("calib", "val"):
        x_s, y_s = fm.load_split(split)  # shipped file
        x_r, y_r = fm.split_from_raw(split)
        np.testing.assert_array_equal(x_s, x_r)
        np.testing.assert_array_equal(y_s, y_r)
    assert make_subsets.check(fm.calib_dir()) == []


@needs_dataset
def test_regeneration_is_byte_identical(tmp_path, shipped_env):
    files, _ = make_subsets.build()
    for name, data in files.items():
        assert (fm.calib_dir() / f"{name}.npz").read_bytes() == data, name


@needs_dataset
def test_mean_std_constants_match_train_split():
    x = fm.load_split("train")[0]
    n = x.size
    s1 = x.sum(dtype=np.float64) / 255.0
    s2 = np.square(x, dtype=np.float64).sum() / 255.0**2
    mean = s1 / n
    std = np.sqrt(s2 / n - mean**2)
    assert fm.MEAN == pytest.approx(mean, abs=1e-7)
    assert fm.STD == pytest.approx(std, abs=1e-7)
