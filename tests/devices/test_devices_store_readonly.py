"""``Store(path, readonly=True)``: reading a store writes nothing beside it (the shipped one included)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from hwnas.devices.store import Store
from hwnas.errors import StoreError
from hwnas.resources import shipped_predictors_dir

REFERENCE = shipped_predictors_dir("mbv3_fmnist") / "reference_store.sqlite"


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_reference_store_is_wal():  # the case that needs care: WAL readers create -wal/-shm files
    assert REFERENCE.read_bytes()[18] == 2


def test_read_copy_in_readonly_directory(tmp_path):
    d = tmp_path / "site-packages"
    d.mkdir()
    copy = d / "reference_store.sqlite"
    shutil.copyfile(REFERENCE, copy)
    d.chmod(0o555)
    try:
        with Store(copy, readonly=True) as st:
            n = st.count_measurements()
            rows = st.measurements(device="ort-cpu-1t")
            assert n >= 500 and len(rows) >= 500 and rows[0]["median_ms"] > 0
            assert st.fingerprint(rows[0]["fp_hash"]) is not None
            assert listing(d) == ["reference_store.sqlite"]  # no -wal / -shm, not even while open
        assert listing(d) == ["reference_store.sqlite"]
    finally:
        d.chmod(0o755)


def test_shipped_store_read_in_place_leaves_nothing():
    before = listing(REFERENCE.parent)
    with Store(REFERENCE, readonly=True) as st:
        assert st.count_measurements() > 0
        assert listing(REFERENCE.parent) == before
    assert listing(REFERENCE.parent) == before


def test_readonly_refuses_writes_and_never_creates(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing.sqlite", readonly=True)
    assert listing(tmp_path) == []
    Store(tmp_path / "m.sqlite").close()
    with Store(tmp_path / "m.sqlite", readonly=True) as st:
        with pytest.raises(StoreError, match="readonly|read-only"):
            st.set_meta("note", "x")
        assert st.get_meta("note") is None
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).close()  # an empty database: nothing to read, and no schema may be made
    with pytest.raises(StoreError):
        Store(other, readonly=True)


def test_readonly_sees_concurrent_writes_and_cleans_up(tmp_path):
    p = tmp_path / "live.sqlite"
    with Store(p) as writer:
        writer.set_meta("n", "1")
        with Store(p, readonly=True) as reader:
            assert reader.get_meta("n") == "1"
            writer.set_meta("n", "2")
            assert reader.get_meta("n") == "2"
    assert listing(tmp_path) == ["live.sqlite"]  # the side files went with the last connection
