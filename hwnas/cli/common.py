"""Shared CLI plumbing: JSON output, one-line errors, progress bars."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np


def _default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def emit(result: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print ``result`` as JSON on stdout (``--json``) or through ``human``."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=_default) + "\n")
    elif human is not None:
        human(result)
    else:
        sys.stdout.write(json.dumps(result, indent=2, default=_default) + "\n")


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``update(completed, total=None, description=None)``; draws on stderr, never on stdout."""
    if not enabled or not sys.stderr.isatty():
        # no terminal (CI, pipes): print a line every ~10% instead of redrawing a bar
        state = {"last": -1}

        def update(completed: int, total_: int | None = None, description_: str | None = None) -> None:
            t = total_ or total
            if not enabled or not t:
                return
            tenth = int(10 * completed / t)
            if tenth != state["last"]:
                state["last"] = tenth
                sys.stderr.write(f"{description_ or description}: {completed}/{t}\n")
                sys.stderr.flush()

        yield update
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(description, total=total)

        def update(completed: int, total_: int | None = None, description_: str | None = None) -> None:
            kw: dict = {"completed": completed}
            if total_ is not None:
                kw["total"] = total_
            if description_ is not None:
                kw["description"] = description_
            prog.update(task, **kw)

        yield update


# ---------------------------------------------------------------------------------- option values
def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool, integer: bool) -> str:
    kind = "a whole number" if integer else "a finite number"
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {_fmt(lo)}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {_fmt(hi)}"
    return kind


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, integer: bool = False) -> Any:
    """``value`` if it is finite (and whole, with ``integer``) and inside the range, else ``OptionValueError``
    naming ``name`` and the range.  ``None`` passes (an option left unset)."""
    import math

    from hwnas.errors import OptionValueError

    if value is None:
        return value
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and not integer:
        ok = math.isfinite(value)
    if ok and integer:
        ok = isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        raise OptionValueError(f"{name} {value!r} is out of range: give {_range_text(lo, hi, lo_open, hi_open, integer)}")
    return value


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callable[..., Any]:
    """A Typer option callback: the value must be a finite number inside the range (``nan``, ``inf`` and
    out-of-range values are one ``OptionValueError`` line naming the option); ``None`` passes."""

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        name = max(getattr(param, "opts", None) or [f"--{param.name}"], key=len)
        integer = isinstance(value, int) and not isinstance(value, bool)  # Typer has parsed an int option
        return check_number(name, value, lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer)

    return callback


SEED = number(0, 2**32 - 1)  # numpy's seed range
COUNT = number(1)  # a positive count (batch, epochs, rounds)
SECONDS = number(0, lo_open=True)  # a positive duration


# ---------------------------------------------------------------------------------- environment errors
def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError`` that reached the CLI: what went wrong with which path, and what to do."""
    import errno

    path = exc.filename if exc.filename is not None else None
    why = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    if path is None:
        return f"{why} ({type(exc).__name__})"
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    hint = {
        errno.ENOENT: "check the path exists",
        errno.EEXIST: "a file is in the way where a directory must be made; remove it or choose another path",
        errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
        errno.EISDIR: "it is a directory; pass a file path",
        errno.EACCES: "choose a location you may write or fix its permissions",
        errno.EPERM: "choose a location you may write or fix its permissions",
        errno.EROFS: "the file system is read-only; choose another location",
        errno.ENOSPC: "the disk is full; free space or choose another location",
    }.get(exc.errno or -1)
    return f"{path}: {why}" + (f"; {hint}" if hint else "")


def parse_input_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]] | tuple[int, ...] | None:
    """``--input-shape`` values (trtexec's ``--shapes``): ``NAME:1x3x224x224``, repeated or comma-separated;
    a bare ``1x3x224x224`` stands for a model's only input.  Bad text is one ``OptionValueError`` line."""
    from hwnas.errors import OptionValueError

    items = [part.strip() for v in (values or []) for part in v.split(",") if part.strip()]
    if not items:
        return None
    named: dict[str, tuple[int, ...]] = {}
    bare: list[tuple[int, ...]] = []
    for item in items:
        name, sep, dims = item.rpartition(":")  # the last colon: names such as "input:0" keep theirs
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise OptionValueError(f"--input-shape {item!r} is not NAME:DIMS with DIMS positive integers joined "
                                   "by x, e.g. input:1x3x224x224")
        if sep and not name:
            raise OptionValueError(f"--input-shape {item!r} has an empty input name; write NAME:{dims}")
        if not sep:
            bare.append(shape)
        elif name in named and named[name] != shape:
            raise OptionValueError(f"--input-shape gives input {name!r} two shapes")
        else:
            named[name] = shape
    if bare:
        if len(bare) > 1 or named:
            raise OptionValueError("--input-shape without a name stands for a model's only input; name each input "
                                   "(NAME:1x3x224x224) when there are several")
        return bare[0]
    return named


def engine_table(rows, scale_ms: float | None = None, echo: Callable[[str], Any] | None = None) -> None:
    """The candidates of ``--format best`` as a table: runtime, precision, speed-up over ORT FP32 (timed
    paired), latency (``scale_ms`` / speed-up when given: on the caller's scale), top-1, agreement, gate."""
    if echo is None:
        import typer

        echo = typer.echo
    echo(f"  {'candidate':<18}{'speed-up':>9}{'latency ms':>12}{'top-1':>8}{'agree':>8}{'size MB':>9}  gate")
    for c in rows:
        sp = c.get("speedup_vs_ort_fp32")
        ms = (scale_ms / sp if scale_ms and sp else c.get("latency_ms") if scale_ms is None else None)
        top = c.get("top1")
        echo(f"  {c['name']:<18}{(f'{sp:.2f}x' if sp else '-'):>9}{(f'{ms:.4f}' if ms else '-'):>12}"
             f"{(f'{100 * top:.2f}' if top is not None else '-'):>8}{100 * c['agreement_with_fp32']:>7.2f}%"
             f"{c['size_bytes'] / 1e6:>9.2f}  {c['gate']}")
