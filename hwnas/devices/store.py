"""The measurement store: one SQLite file (WAL mode) holding fingerprints, latencies and accuracies.

Every write is committed before it returns, so a profiling run killed with ``kill -9`` loses at most
the measurement in flight and a restart skips what is already there (with interleaved rounds each
visit is kept in ``visits`` until the subnet's row is written, and a restart resumes from them).  Measurements are keyed by
(fingerprint hash, runtime config, arch id, batch, precision); accuracies by (supernet hash, arch id,
split).  Writing a key again replaces the row (upsert), so there are never duplicates.

``Store(path, readonly=True)`` opens an existing store only to read it: no schema is created, writes
are refused, and nothing is left beside it.  The reference store shipped inside the package and a WAL
store in a directory nobody may write are opened immutable, so not even SQLite's ``-wal``/``-shm`` side
files are created; other stores are read like any SQLite database and still see the rows a concurrent
writer commits.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import urllib.parse
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from hwnas.devices.fingerprint import Fingerprint
from hwnas.devices.protocol import Measurement
from hwnas.errors import StoreError

SCHEMA_VERSION = 1
STORE_KIND = "hwnas-measurement-store"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_STATS = ("median_ms", "p90_ms", "iqr_ms", "mean_ms", "std_ms", "min_ms", "cv", "ci_low_ms", "ci_high_ms", "n")

# Visits of a subnet measured in interleaved rounds, kept until its row is written: a run killed between
# rounds resumes from them.  Added after schema version 1 shipped, so it is created in a store lacking it.
_VISITS = """CREATE TABLE IF NOT EXISTS visits (
    id INTEGER PRIMARY KEY,
    fp_hash TEXT NOT NULL,
    runtime_config TEXT NOT NULL,
    arch_id TEXT NOT NULL,
    batch INTEGER NOT NULL,
    precision TEXT NOT NULL,
    round INTEGER NOT NULL,
    measurement_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (fp_hash, runtime_config, arch_id, batch, precision, round)
)"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fingerprints (fp_hash TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    fp_hash TEXT NOT NULL,
    runtime_config TEXT NOT NULL,
    arch_id TEXT NOT NULL,
    batch INTEGER NOT NULL,
    precision TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    supernet TEXT NOT NULL DEFAULT '',
    arch_json TEXT,
    {", ".join(f"{c} {'INTEGER' if c == 'n' else 'REAL'} NOT NULL" for c in _STATS)},
    converged INTEGER NOT NULL,
    measurement_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (fp_hash, runtime_config, arch_id, batch, precision)
);
CREATE INDEX IF NOT EXISTS measurements_supernet ON measurements (supernet);
CREATE TABLE IF NOT EXISTS accuracies (
    id INTEGER PRIMARY KEY,
    supernet_hash TEXT NOT NULL,
    arch_id TEXT NOT NULL,
    split TEXT NOT NULL,
    supernet TEXT NOT NULL DEFAULT '',
    arch_json TEXT,
    accuracy REAL NOT NULL,
    n_images INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (supernet_hash, arch_id, split)
);
{_VISITS};
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _dir_writable(d: Path) -> bool:
    try:
        mode = d.stat().st_mode
    except OSError:
        return False
    return os.access(d, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _is_shipped(p: Path) -> bool:
    from hwnas.resources import resource_dir

    try:
        return p.resolve().is_relative_to(resource_dir("predictors").resolve())
    except OSError:
        return False


def _readonly_uri(p: Path, header: bytes) -> str:
    """An SQLite URI that reads ``p`` and leaves nothing beside it.

    A database in WAL mode (header byte 18 is 2) is read through ``-wal``/``-shm`` side files that the
    reader creates; a read-write connection removes them when it closes, a ``mode=ro`` one cannot, and
    in a directory it may not write ``mode=ro`` cannot open the database at all unless they exist.  So:
    immutable (no locks, no side files) for the shipped store, which nothing writes, and for a WAL store
    in a directory nobody may write (no writer can be active there unless both side files exist);
    ``mode=ro`` in other unwritable directories; else ``mode=rw`` (never creating the file) with
    ``PRAGMA query_only`` set by the caller.
    """
    wal = len(header) > 18 and header[18] == 2
    side_files = p.with_name(p.name + "-wal").exists() and p.with_name(p.name + "-shm").exists()
    writable = _dir_writable(p.parent)
    if _is_shipped(p) or (wal and not side_files and not writable):
        query = "mode=ro&immutable=1"
    else:
        query = "mode=rw" if writable else "mode=ro"
    return f"file:{urllib.parse.quote(str(p.resolve()))}?{query}"


def _store_error(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    hint = ("; the file is corrupt: restore it from a copy or pass another --store path"
            if "malformed" in str(exc) or "not a database" in str(exc) else "")
    return StoreError(f"store {path}: {exc}{hint}")


class _Rows:
    """The cursor ``Store._exec`` returns: rows are read lazily, and a corrupt page met while reading them
    raises ``StoreError`` like one met by the statement itself."""

    __slots__ = ("_cur", "_path")

    def __init__(self, cur: sqlite3.Cursor, path: Path) -> None:
        self._cur, self._path = cur, path

    def fetchone(self) -> Any:
        try:
            return self._cur.fetchone()
        except sqlite3.DatabaseError as exc:
            raise _store_error(self._path, exc) from None

    def fetchall(self) -> list[Any]:
        try:
            return self._cur.fetchall()
        except sqlite3.DatabaseError as exc:
            raise _store_error(self._path, exc) from None

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


class Store:
    """``Store(path)``: open (creating if needed) a measurement store; use as a context manager.

    ``readonly=True``: open an existing store only to read it; nothing is created or written (see above).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.readonly = bool(readonly)
        p = self.path
        if p.is_dir():
            raise StoreError(f"store path {p} is a directory; pass a file path such as runs/measurements.sqlite")
        header = b""
        if p.is_file() and p.stat().st_size > 0:
            with p.open("rb") as fh:
                header = fh.read(100)
                if header[: len(_SQLITE_MAGIC)] != _SQLITE_MAGIC:
                    raise StoreError(f"{p} is not a measurement store (not an SQLite database); pass another --store path")
        if self.readonly:
            if not header:
                raise StoreError(f"store {p} does not exist or is empty; profile a device into it first (hwnas profile)")
        else:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory of store {p} ({exc.strerror})") from None
        self._con: sqlite3.Connection | None = None
        try:
            if self.readonly:
                self._con = sqlite3.connect(_readonly_uri(p, header), uri=True, timeout=30.0, isolation_level=None)
            else:
                self._con = sqlite3.connect(str(p), timeout=30.0, isolation_level=None)
            self._con.row_factory = sqlite3.Row
            self._init_schema_retrying()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"{p} is not a usable measurement store ({exc}); pass another --store path") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup
    def _init_schema_retrying(self, wait_s: float = 30.0) -> None:
        """``_init_schema``, retried while another process holds the file: switching a new file to WAL and
        creating its tables can return SQLITE_BUSY at once, without SQLite's busy handler waiting."""
        import time

        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._init_schema()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _init_schema(self) -> None:
        con = self._conn
        if self.readonly:
            con.execute("PRAGMA query_only=ON")  # writes fail, whichever way the file was opened
        else:
            if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")  # persistent in the file: set once, by its first writer
            con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite database of something else (tables: {', '.join(sorted(tables))}); "
                "pass another --store path"
            )
        if "meta" in tables:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("kind") != STORE_KIND:
                raise StoreError(f"{self.path} is an SQLite database of something else; pass another --store path")
            if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has store schema version {meta.get('schema_version')}; this hwnas reads version "
                    f"{SCHEMA_VERSION}"
                )
            if not self.readonly and "visits" not in tables:
                con.execute(_VISITS)
            return
        if self.readonly:
            raise StoreError(f"{self.path} is not a measurement store (it has no tables); pass another --store path")
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?)", (STORE_KIND,))
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"store {self.path} is closed")
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return _Rows(self._conn.execute(sql, params), self.path)  # type: ignore[return-value]
        except sqlite3.DatabaseError as exc:
            raise _store_error(self.path, exc) from None

    # ------------------------------------------------------------------ fingerprints
    def add_fingerprint(self, fp: Fingerprint) -> None:
        self._exec(
            "INSERT INTO fingerprints (fp_hash, json) VALUES (?, ?) ON CONFLICT(fp_hash) DO UPDATE SET json=excluded.json",
            (fp.fp_hash, fp.to_json()),
        )

    def fingerprint(self, fp_hash: str) -> Fingerprint | None:
        row = self._exec("SELECT json FROM fingerprints WHERE fp_hash=?", (fp_hash,)).fetchone()
        return Fingerprint.from_dict(json.loads(row[0])) if row else None

    def fingerprints(self) -> list[Fingerprint]:
        return [Fingerprint.from_dict(json.loads(r[0])) for r in self._exec("SELECT json FROM fingerprints ORDER BY fp_hash")]

    # ------------------------------------------------------------------ measurements
    def add_measurement(
        self,
        fp_hash: str,
        runtime_config: str,
        arch_id: str,
        measurement: Measurement,
        *,
        batch: int,
        precision: str,
        arch: Mapping[str, Any] | None = None,
        supernet: str = "",
        device: str = "",
    ) -> None:
        """Insert or replace the row for this key; committed before returning."""
        m = measurement
        cols = ["fp_hash", "runtime_config", "arch_id", "batch", "precision", "device", "supernet", "arch_json",
                *_STATS, "converged", "measurement_json", "created_at"]
        vals = (
            fp_hash, runtime_config, arch_id, int(batch), precision, device, supernet,
            json.dumps(dict(arch), sort_keys=True) if arch is not None else None,
            *(getattr(m, c) for c in _STATS), int(m.converged), json.dumps(m.to_dict(), sort_keys=True), _now(),
        )  # fmt: skip
        keys = ("fp_hash", "runtime_config", "arch_id", "batch", "precision")
        updates = ", ".join(f"{c}=excluded.{c}" for c in cols if c not in keys)
        with self._transaction():  # the row and the end of its visits, together
            self._exec(
                f"INSERT INTO measurements ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT({', '.join(keys)}) DO UPDATE SET {updates}",
                vals,
            )
            self._exec(
                "DELETE FROM visits WHERE fp_hash=? AND runtime_config=? AND arch_id=? AND batch=? AND precision=?",
                (fp_hash, runtime_config, arch_id, int(batch), precision),
            )

    def add_visit(self, fp_hash: str, runtime_config: str, arch_id: str, round_: int, measurement: Measurement, *,
                  batch: int, precision: str) -> None:
        """Keep visit ``round_`` of a subnet measured in interleaved rounds until its row is written
        (``add_measurement`` removes its visits); committed before returning."""
        self._exec(
            "INSERT INTO visits (fp_hash, runtime_config, arch_id, batch, precision, round, measurement_json, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(fp_hash, runtime_config, arch_id, batch, precision, round) "
            "DO UPDATE SET measurement_json=excluded.measurement_json, created_at=excluded.created_at",
            (fp_hash, runtime_config, arch_id, int(batch), precision, int(round_),
             json.dumps(measurement.to_dict(), sort_keys=True), _now()),
        )  # fmt: skip

    def visits(self, fp_hash: str, runtime_config: str, batch: int, precision: str) -> dict[str, dict[int, Measurement]]:
        """The kept visits of subnets whose row is not written yet: ``{arch_id: {round: Measurement}}``."""
        out: dict[str, dict[int, Measurement]] = {}
        for r in self._exec(
            "SELECT arch_id, round, measurement_json FROM visits WHERE fp_hash=? AND runtime_config=? AND batch=? "
            "AND precision=? ORDER BY id", (fp_hash, runtime_config, int(batch), precision),
        ):  # fmt: skip
            out.setdefault(r[0], {})[int(r[1])] = Measurement.from_dict(json.loads(r[2]))
        return out

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error); the store is in autocommit otherwise."""
        self._exec("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        self._exec("COMMIT")

    def rescale_anchored(self, fp_hash: str, runtime_config: str, batch: int, precision: str, anchor_ms: float) -> int:
        """Put every anchored row (and kept visit) of this device key on the calibration ``anchor_ms``:
        the latency and its CI become ``anchor_ratio`` x the new calibration, in one transaction.  Rows
        already on it are left as they are; returns how many rows changed."""
        new = float(anchor_ms)
        if not new > 0:
            raise StoreError(f"an anchor calibration must be a positive latency, not {anchor_ms!r}")
        key = (fp_hash, runtime_config, int(batch), precision)

        def rescaled(js: str) -> Measurement | None:
            m = Measurement.from_dict(json.loads(js))
            if m.anchor_ratio is None or m.anchor_ms is None or m.anchor_ms == new:
                return None
            f = new / m.anchor_ms
            return replace(m, median_ms=m.anchor_ratio * new, ci_low_ms=m.ci_low_ms * f, ci_high_ms=m.ci_high_ms * f,
                           round_medians_ms=[v * f for v in m.round_medians_ms], anchor_ms=new)

        changed = 0
        with self._transaction():
            where = "WHERE fp_hash=? AND runtime_config=? AND batch=? AND precision=?"
            for rid, js in self._exec(f"SELECT id, measurement_json FROM measurements {where}", key).fetchall():
                m = rescaled(js)
                if m is not None:
                    self._exec("UPDATE measurements SET median_ms=?, ci_low_ms=?, ci_high_ms=?, measurement_json=? "
                               "WHERE id=?", (m.median_ms, m.ci_low_ms, m.ci_high_ms,
                                              json.dumps(m.to_dict(), sort_keys=True), rid))
                    changed += 1
            for rid, js in self._exec(f"SELECT id, measurement_json FROM visits {where}", key).fetchall():
                m = rescaled(js)
                if m is not None:
                    self._exec("UPDATE visits SET measurement_json=? WHERE id=?",
                               (json.dumps(m.to_dict(), sort_keys=True), rid))
        return changed

    def has_measurement(self, fp_hash: str, runtime_config: str, arch_id: str, batch: int, precision: str) -> bool:
        row = self._exec(
            "SELECT 1 FROM measurements WHERE fp_hash=? AND runtime_config=? AND arch_id=? AND batch=? AND precision=?",
            (fp_hash, runtime_config, arch_id, int(batch), precision),
        ).fetchone()
        return row is not None

    def measured_arch_ids(self, fp_hash: str, runtime_config: str, batch: int, precision: str) -> set[str]:
        rows = self._exec(
            "SELECT arch_id FROM measurements WHERE fp_hash=? AND runtime_config=? AND batch=? AND precision=?",
            (fp_hash, runtime_config, int(batch), precision),
        )
        return {r[0] for r in rows}

    def measurements(
        self, fp_hash: str | None = None, supernet: str | None = None, device: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows as dicts (``arch`` decoded, ``converged`` a bool), oldest first, optionally filtered."""
        where, params = [], []
        for col, val in (("fp_hash", fp_hash), ("supernet", supernet), ("device", device)):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        sql = "SELECT * FROM measurements" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        out = []
        for r in self._exec(sql, tuple(params)):
            d = dict(r)
            d["arch"] = json.loads(d.pop("arch_json")) if d["arch_json"] is not None else None
            d["converged"] = bool(d["converged"])
            d.pop("measurement_json")
            out.append(d)
        return out

    def measurement(self, fp_hash: str, runtime_config: str, arch_id: str, batch: int, precision: str) -> Measurement | None:
        row = self._exec(
            "SELECT measurement_json FROM measurements WHERE fp_hash=? AND runtime_config=? AND arch_id=? "
            "AND batch=? AND precision=?",
            (fp_hash, runtime_config, arch_id, int(batch), precision),
        ).fetchone()
        return Measurement.from_dict(json.loads(row[0])) if row else None

    def get_meta(self, key: str) -> str | None:
        """A value of the store's key/value table (``None`` if absent)."""
        row = self._exec("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def claim_meta(self, key: str, value: str) -> str:
        """Set ``key`` to ``value`` unless it is set already; return the value stored, which is the first
        writer's: two processes that both found ``key`` unset agree on one value."""
        if key in ("kind", "schema_version"):
            raise StoreError(f"meta key {key!r} belongs to the store itself")
        with self._transaction():
            self._exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", (key, str(value)))
            row = self._exec("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a key of the store's key/value table; committed before returning."""
        if key in ("kind", "schema_version"):
            raise StoreError(f"meta key {key!r} belongs to the store itself")
        self._exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                   (key, str(value)))

    def count_measurements(self) -> int:
        return int(self._exec("SELECT COUNT(*) FROM measurements").fetchone()[0])

    # ------------------------------------------------------------------ accuracies
    def add_accuracy(
        self,
        supernet_hash: str,
        arch_id: str,
        split: str,
        accuracy: float,
        n_images: int,
        *,
        arch: Mapping[str, Any] | None = None,
        supernet: str = "",
    ) -> None:
        self._exec(
            "INSERT INTO accuracies (supernet_hash, arch_id, split, supernet, arch_json, accuracy, n_images, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(supernet_hash, arch_id, split) DO UPDATE SET "
            "supernet=excluded.supernet, arch_json=excluded.arch_json, accuracy=excluded.accuracy, "
            "n_images=excluded.n_images, created_at=excluded.created_at",
            (
                supernet_hash, arch_id, split, supernet,
                json.dumps(dict(arch), sort_keys=True) if arch is not None else None,
                float(accuracy), int(n_images), _now(),
            ),
        )  # fmt: skip

    def accuracies(self, supernet_hash: str, split: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM accuracies WHERE supernet_hash=?" + (" AND split=?" if split is not None else "")
        params: tuple[Any, ...] = (supernet_hash,) if split is None else (supernet_hash, split)
        out = []
        for r in self._exec(sql + " ORDER BY id", params):
            d = dict(r)
            d["arch"] = json.loads(d.pop("arch_json")) if d["arch_json"] is not None else None
            out.append(d)
        return out


__all__ = ["SCHEMA_VERSION", "Store"]
