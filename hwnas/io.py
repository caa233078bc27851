"""The one atomic writer for every file hwnas outputs.

Each output is written to a temporary file beside its target (same directory, so the final rename is
atomic), named ``.NAME.<random>.part``.  Only when the block that writes it succeeds is the file given
the mode a plain ``open(path, "w")`` would have (``0o666`` less the umask; ``mkstemp`` makes ``0600``)
and renamed into place.  On any exception, ``KeyboardInterrupt`` included, the temporary file is removed
and the target is left as it was.  :func:`atomic_outputs` does the same for several files that belong
together (a model and its manifest): all are written first, then renamed in the order given.

:func:`job_tempdir` is the scratch directory of a job (models exported to be measured): it is
removed when the job ends, and a job killed with ``kill -9`` leaves one that the next job of the same
kind removes.

A location that cannot be written (a missing parent that cannot be created, no permission, a full
disk) raises :class:`hwnas.errors.OutputError` naming the path, which the CLI prints as one line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hwnas.errors import HwnasError, OutputError

__all__ = ["atomic_output", "atomic_outputs", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "current_umask", "job_tempdir", "loads_json", "output_mode"]


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells (Linux ``/proc``), else set back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """The mode of a new output file: ``0o666`` less the umask, as ``open(path, "w")`` would give."""
    return 0o666 & ~current_umask()


def _output_error(path: Path, exc: OSError) -> OutputError:
    why = exc.strerror or str(exc) or type(exc).__name__
    for parent in path.parents:  # "File exists" from mkdir means a file stands where a directory must
        if parent.exists():
            if not parent.is_dir():
                why = f"{parent} is not a directory"
            break
    return OutputError(f"cannot write {path} ({why}); choose a writable location or fix the directory's permissions")


def _temp_beside(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise _output_error(path, exc) from exc
    os.close(fd)
    return Path(tmp)


def _remove(tmps: list[Path]) -> None:
    for tmp in tmps:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on success all are moved into place, in the order given.

    Put manifests last, so a manifest never describes a file that is not there yet.  On any error
    every temporary file is removed and no target is touched.
    """
    targets = [Path(p).expanduser() for p in paths]
    tmps: list[Path] = []
    try:
        for path in targets:
            tmps.append(_temp_beside(path))
        yield list(tmps)
        mode = output_mode()
        for tmp, path in zip(tmps, targets):  # every file is complete and has its mode before any rename
            try:
                os.chmod(tmp, mode)
            except OSError as exc:
                raise _output_error(path, exc) from exc
        for tmp, path in zip(tmps, targets):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _output_error(path, exc) from exc
    except BaseException:
        _remove(tmps)
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` if the block succeeds, else is removed."""
    with atomic_outputs(path) as (tmp,):
        yield tmp


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path written."""
    p = Path(path).expanduser()
    with atomic_output(p) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise _output_error(p, exc) from exc
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path written."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **json_kwargs: Any) -> Path:
    """``json.dumps(obj, **json_kwargs)`` plus a newline, written to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, **json_kwargs) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _sweep_stale(parent: Path, prefix: str) -> None:
    """Remove ``PREFIX<pid>-*`` directories of ours in ``parent`` whose process is gone (a ``kill -9``)."""
    import shutil

    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for d in entries:
        rest = d.name[len(prefix):] if d.name.startswith(prefix) else ""
        pid = rest.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            if d.is_dir() and not d.is_symlink() and d.stat().st_uid == os.getuid():
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


@contextlib.contextmanager
def job_tempdir(prefix: str) -> Iterator[Path]:
    """A scratch directory ``PREFIX<pid>-XXXX`` in the system temp directory, removed on exit; the
    directories earlier jobs of this ``prefix`` left when killed (their process gone) are removed first."""
    import shutil

    parent = Path(tempfile.gettempdir())
    _sweep_stale(parent, prefix)
    d = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def loads_json(text: str | bytes, what: str, error: type[HwnasError] = HwnasError, *, max_depth: int = 64) -> object:
    """``json.loads`` of user-supplied text, every way it can fail turned into one ``error`` line.

    ``what`` names the source ("predictor file p.json").  Besides malformed JSON this refuses what the
    parser accepts but nothing downstream should see: nesting deeper than ``max_depth`` (deep nesting
    otherwise surfaces as ``RecursionError`` wherever the value is walked), numbers too long for Python
    (3.11 caps int conversion at 4300 digits), and NaN, Infinity or a float literal that overflows to inf.
    """
    def bad_constant(name: str) -> float:
        raise ValueError(f"{name} is not a JSON number")

    def parse_float(s: str) -> float:
        v = float(s)
        if not math.isfinite(v):
            raise ValueError(f"number {s[:20]}{'...' if len(s) > 20 else ''} is out of range")
        return v

    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, parse_constant=bad_constant, parse_float=parse_float)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8 text, so not JSON") from None
    except RecursionError:
        raise error(f"{what} nests JSON arrays/objects too deeply (more than {max_depth} levels)") from None
    except ValueError as exc:  # int digit limit, NaN/Infinity, float overflow
        msg = (str(exc).splitlines() or ["a number is out of range"])[0].split(";")[0]
        raise error(f"{what} holds an unusable number ({msg})") from None
    # depth check without recursion
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > max_depth:
                raise error(f"{what} nests JSON arrays/objects too deeply (more than {max_depth} levels)")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return value
