"""(arch, accuracy) rows from a file: accuracies measured elsewhere, to fit an accuracy predictor on.

Two formats (by suffix; otherwise by the first character: ``[`` / ``{`` is JSON):

* **CSV** (``.csv``; ``.tsv`` is tab-separated) with a header: an ``arch`` column holding each arch as
  JSON (quoted: it holds commas), or one column per arch field (``ks``, ``e``, ``d``, ``r`` for the
  MobileNetV3 families, each cell JSON), and an ``accuracy`` column (also ``top1`` or ``acc``).  Other
  columns are ignored.
* **JSON**: a list of ``{"arch": {...}, "accuracy": x}`` (or with the arch's fields at the top level),
  or ``{"rows": [...]}`` of those.

Every arch is validated with the family's ``space.normalize``.  Accuracies are fractions in [0, 1];
if every one is in (1, 100] they are read as percentages and divided by 100 (``info["percent"]``).
Rows of the same network (equal canonical genes) with equal accuracy are merged; with different
accuracies they are an error.  Every problem is one ``DataError`` line naming the file and the row.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hwnas.errors import ArchError, DataError

ACCURACY_COLUMNS = ("accuracy", "top1", "acc")
CSV_SUFFIXES = (".csv", ".tsv")


def _fail(p: Path, where: str, msg: str) -> DataError:
    return DataError(f"rows file {p}{', ' + where if where else ''}: {msg}")


def _read_text(p: Path) -> str:
    if not p.is_file():
        raise DataError(f"rows file {p} does not exist; pass a CSV (arch and accuracy columns) or JSON file "
                        f"of (arch, accuracy) rows")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"rows file {p} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                        f"UTF-8 CSV or JSON") from None


def _accuracy_key(keys: Any) -> str | None:
    low = {str(k).strip().lower(): k for k in keys if k is not None}
    for name in ACCURACY_COLUMNS:
        if name in low:
            return low[name]
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------------------------- CSV
def _csv_rows(p: Path, text: str, fields: list[str]) -> tuple[list[tuple[str, Any, Any]], str]:
    """``[(where, arch, raw accuracy)]`` and the accuracy column's name."""
    delim = "\t" if p.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delim)
    header = [h.strip() if isinstance(h, str) else h for h in (reader.fieldnames or [])]
    if not header or all(not h for h in header):
        raise _fail(p, "", "is empty; it needs a header line with an arch column and an accuracy column")
    acc_col = _accuracy_key(header)
    if acc_col is None:
        raise _fail(p, "line 1", f"the header {header[:8]} has no accuracy column; name it one of "
                                 f"{', '.join(ACCURACY_COLUMNS)}")
    low = {h.lower(): h for h in header if h}
    if "arch" in low:
        arch_cols = None
    elif all(f in low for f in fields):
        arch_cols = [low[f] for f in fields]
    else:
        raise _fail(p, "line 1", f"the header {header[:8]} has no 'arch' column (arch JSON) nor the columns "
                                 f"{', '.join(fields)}")
    reader.fieldnames = header
    out = []
    for i, row in enumerate(reader, start=1):
        where = f"row {i} (line {reader.line_num})"
        if None in row:
            raise _fail(p, where, f"has more fields than the header ({len(header)}); quote the arch JSON "
                                  f"(\"{{\"\"ks\"\": [...], ...}}\"): it holds commas")
        if all(v is None or not str(v).strip() for v in row.values()):
            continue  # a blank line
        cells = [row[low["arch"]]] if arch_cols is None else [row[c] for c in arch_cols]
        if any(c is None or not c.strip() for c in cells):
            raise _fail(p, where, "the arch is missing (an empty cell)")
        try:
            parsed = [json.loads(c) for c in cells]
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:  # ValueError: 4300-digit int limit
            raise _fail(p, where, f"the arch is not valid JSON ({str(exc).split(';')[0][:100]}); write it as a JSON object "
                                  f"in a quoted cell") from None
        arch = parsed[0] if arch_cols is None else dict(zip(fields, parsed))
        out.append((where, arch, row[acc_col]))
    return out, acc_col


# ---------------------------------------------------------------------------------- JSON
def _json_rows(p: Path, text: str, fields: list[str]) -> tuple[list[tuple[str, Any, Any]], str]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:  # ValueError: 4300-digit int limit
        where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        msg = (exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply" if isinstance(exc, RecursionError)
               else str(exc).split(";")[0][:100])
        raise _fail(p, where, f"is not valid JSON ({msg}); write a list of {{\"arch\": {{...}}, \"accuracy\": x}}") \
            from None
    if isinstance(data, Mapping) and "rows" in data:
        data = data["rows"]
    if not isinstance(data, list):
        raise _fail(p, "", f"holds a JSON {type(data).__name__}; write a list of {{\"arch\": {{...}}, "
                           f"\"accuracy\": x}} (or {{\"rows\": [...]}})")
    out = []
    acc_names = set()
    for i, row in enumerate(data, start=1):
        where = f"row {i}"
        if not isinstance(row, Mapping):
            raise _fail(p, where, f"is a JSON {type(row).__name__}, not an object {{\"arch\": {{...}}, "
                                  f"\"accuracy\": x}}")
        key = _accuracy_key(row)
        if key is None:
            raise _fail(p, where, f"has no accuracy (keys {sorted(map(str, row))[:8]}); give it as one of "
                                  f"{', '.join(ACCURACY_COLUMNS)}")
        acc_names.add(str(key))
        if "arch" in row:
            arch = row["arch"]
        elif all(f in row for f in fields):
            arch = {f: row[f] for f in fields}
        else:
            raise _fail(p, where, f"has no 'arch' object (nor the arch fields {', '.join(fields)})")
        out.append((where, arch, row[key]))
    return out, "/".join(sorted(acc_names)) or "accuracy"


# ---------------------------------------------------------------------------------- the rows
def read_accuracy_rows(path: str | Path, family: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(V, y, info)``: the canonical gene matrix of the file's distinct archs, their accuracies as
    fractions, and ``info`` (``path``, ``format``, ``n_rows`` read, ``n_archs``, ``accuracy_column``,
    ``percent``, ``n_merged`` duplicates, ``arch_ids``, ``note``).  See the module docstring."""
    from hwnas.predictors.features import resolve_config

    fam = resolve_config(family)
    sp = fam.space
    p = Path(path).expanduser()
    text = _read_text(p)
    if not text.strip():
        raise _fail(p, "", "is empty; write (arch, accuracy) rows as CSV or JSON")
    fields = list(sp.min_arch().keys())
    is_json = p.suffix.lower() == ".json" or (p.suffix.lower() not in CSV_SUFFIXES and text.lstrip()[:1] in "[{")
    rows, acc_col = (_json_rows if is_json else _csv_rows)(p, text, fields)
    if not rows:
        raise _fail(p, "", "has no rows; write at least one (arch, accuracy) row")
    archs, accs, wheres = [], [], []
    for where, arch, raw in rows:
        try:
            archs.append(sp.normalize(arch))
        except ArchError as exc:
            raise _fail(p, where, f"{exc}") from None
        v = _number(raw)
        if v is None:
            shown = "missing" if raw is None or (isinstance(raw, str) and not raw.strip()) else f"{raw!r} is not a number"
            raise _fail(p, where, f"accuracy {shown}; give top-1 as a fraction in [0, 1] (or a percentage)")
        if not math.isfinite(v):
            raise _fail(p, where, f"accuracy is {v}; give a finite top-1 as a fraction in [0, 1]")
        accs.append(v)
        wheres.append(where)
    y = np.asarray(accs, dtype=np.float64)
    percent = bool(np.all((y > 1.0) & (y <= 100.0)))
    if percent:
        y = y / 100.0
    else:
        bad = np.flatnonzero((y < 0.0) | (y > 1.0))
        if len(bad):
            i = int(bad[0])
            frac = np.flatnonzero((y >= 0.0) & (y <= 1.0))
            hint = (f" while {wheres[int(frac[0])]} has {accs[int(frac[0])]:g}; give all as fractions in [0, 1] or "
                    f"all as percentages in (1, 100]") if len(frac) and accs[i] <= 100 else (
                "; give top-1 as a fraction in [0, 1] or a percentage in (1, 100]")
            raise _fail(p, wheres[i], f"accuracy {accs[i]:g} is outside [0, 1]{hint}")
    V = sp.canonicalize(sp.encode_many(archs))
    seen: dict[bytes, int] = {}
    keep: list[int] = []
    for i, row in enumerate(V):
        k = row.tobytes()
        j = seen.get(k)
        if j is None:
            seen[k] = i
            keep.append(i)
        elif y[j] != y[i]:
            raise _fail(p, wheres[i], f"repeats the arch of {wheres[j]} ({sp.arch_id(archs[i])}) with another "
                                      f"accuracy ({accs[i]:g} vs {accs[j]:g}); keep one row per arch (average them)")
    n_merged = len(V) - len(keep)
    V, y = V[keep], y[keep]
    notes = []
    if percent:
        notes.append("accuracies given as percentages (all in (1, 100]); converted to fractions")
    if n_merged:
        notes.append(f"{n_merged} repeated row(s) of the same arch and accuracy merged")
    info = {
        "path": str(p), "format": "json" if is_json else "csv", "n_rows": len(rows), "n_archs": len(y),
        "accuracy_column": str(acc_col), "percent": percent, "n_merged": n_merged,
        "arch_ids": [sp.arch_id(archs[i]) for i in keep], "note": "; ".join(notes) or None,
    }
    return V, y, info


__all__ = ["ACCURACY_COLUMNS", "read_accuracy_rows"]
