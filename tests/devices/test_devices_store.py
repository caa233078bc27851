"""The SQLite measurement store: upserts, resume queries, accuracies and clear errors on bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hwnas.devices import Store, host_info, make_fingerprint
from hwnas.devices.protocol import Measurement
from hwnas.devices.store import SCHEMA_VERSION
from hwnas.errors import StoreError


def meas(median: float = 1.0, n: int = 50) -> Measurement:
    return Measurement(
        median_ms=median, p90_ms=median * 1.1, iqr_ms=0.05, mean_ms=median, std_ms=0.02, min_ms=median * 0.9,
        max_ms=median * 2, cv=0.02, ci_low_ms=median * 0.99, ci_high_ms=median * 1.01, n=n, converged=True,
        stop_reason="converged", warmup_runs=10, timed_s=0.05, wall_s=0.3, batch=1, input_shapes={"input": [1, 3, 8, 8]},
    )  # fmt: skip


KEY = dict(batch=1, precision="fp32")


def test_upsert_no_duplicates_and_resume_queries(tmp_path: Path) -> None:
    fp = make_fingerprint({"backend": "ort"}, host_info())
    with Store(tmp_path / "m.sqlite") as st:
        st.add_fingerprint(fp)
        st.add_measurement(fp.fp_hash, "ort:t1", "a1", meas(1.0), arch={"r": 28}, supernet="s", device="d", **KEY)
        st.add_measurement(fp.fp_hash, "ort:t1", "a2", meas(2.0), arch={"r": 24}, supernet="s", device="d", **KEY)
        st.add_measurement(fp.fp_hash, "ort:t1", "a1", meas(1.5), arch={"r": 28}, supernet="s", device="d", **KEY)
        st.add_measurement(fp.fp_hash, "ort:t4", "a1", meas(0.5), supernet="s", **KEY)
        st.add_measurement(fp.fp_hash, "ort:t1", "a1", meas(3.0), supernet="s", batch=8, precision="fp32")
        assert st.count_measurements() == 4
        assert st.has_measurement(fp.fp_hash, "ort:t1", "a1", 1, "fp32")
        assert not st.has_measurement(fp.fp_hash, "ort:t1", "a3", 1, "fp32")
        assert st.measured_arch_ids(fp.fp_hash, "ort:t1", 1, "fp32") == {"a1", "a2"}
        assert st.measured_arch_ids("other", "ort:t1", 1, "fp32") == set()
        m = st.measurement(fp.fp_hash, "ort:t1", "a1", 1, "fp32")
        assert m is not None and m.median_ms == 1.5  # replaced, not duplicated
        assert st.fingerprint(fp.fp_hash) == fp
    with Store(tmp_path / "m.sqlite") as st:  # reopened: everything persisted
        rows = st.measurements(fp_hash=fp.fp_hash, supernet="s")
        assert len(rows) == 4
        r = next(r for r in rows if r["arch_id"] == "a1" and r["runtime_config"] == "ort:t1" and r["batch"] == 1)
        assert r["median_ms"] == 1.5 and r["arch"] == {"r": 28} and r["converged"] is True and r["n"] == 50
        assert r["device"] == "d" and r["created_at"]
        assert st.measurements(supernet="other") == []


def test_accuracies_upsert(tmp_path: Path) -> None:
    with Store(tmp_path / "m.sqlite") as st:
        st.add_accuracy("h1", "a1", "val", 0.8, 1000, arch={"r": 28}, supernet="s")
        st.add_accuracy("h1", "a1", "val", 0.85, 1000, arch={"r": 28}, supernet="s")
        st.add_accuracy("h1", "a1", "test", 0.7, 500)
        st.add_accuracy("h2", "a1", "val", 0.1, 10)
        val = st.accuracies("h1", "val")
        assert len(val) == 1 and val[0]["accuracy"] == 0.85 and val[0]["arch"] == {"r": 28}
        assert len(st.accuracies("h1")) == 2


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    Store(tmp_path / "m.sqlite").close()
    con = sqlite3.connect(tmp_path / "m.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(con.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == str(SCHEMA_VERSION)
    con.close()


def test_creates_parent_dirs(tmp_path: Path) -> None:
    with Store(tmp_path / "a" / "b" / "m.sqlite") as st:
        assert st.count_measurements() == 0


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.write_bytes(b"\x00\x01garbage not sqlite" * 100), "not an SQLite database"),
        (lambda p: p.write_text("hello"), "not an SQLite database"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_store_files(tmp_path: Path, make, needle: str) -> None:
    p = tmp_path / "store.sqlite"
    make(p)
    with pytest.raises(StoreError) as ei:
        Store(p)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_other_sqlite_db_and_wrong_version(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="something else"):
        Store(other)
    mine = tmp_path / "mine.sqlite"
    Store(mine).close()
    con = sqlite3.connect(mine)
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(mine)


def test_corrupted_after_header(tmp_path: Path) -> None:
    """A file with the SQLite magic but garbage pages is reported as a StoreError too."""
    p = tmp_path / "c.sqlite"
    p.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(StoreError, match="not a usable measurement store"):
        Store(p)
