"""Latency strings from the command line: ``5ms``, ``0.8ms``, ``500us``, ``0.005s``, ``5`` (ms)."""

from __future__ import annotations

import math
import re

from hwnas.errors import SearchError

_UNITS = {"": 1.0, "ms": 1.0, "msec": 1.0, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "usec": 1e-3, "s": 1e3, "sec": 1e3}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµμ]*)\s*$")


def parse_latency(s: str | float | int) -> float:
    """A latency budget in milliseconds.

    Accepts a number (taken as ms) or a string with an optional unit: ``ms`` (default), ``us``/``µs``
    or ``s``; case-insensitive, spaces allowed (``"5 ms"``).  Raises ``SearchError`` (a
    ``ValueError``) with one line for anything else, zero, negative or non-finite values.
    """
    if isinstance(s, bool):
        raise SearchError(f"latency budget {s!r} is not a number; write it like 5ms, 0.8ms or 500us")
    if isinstance(s, (int, float)):
        value, unit = float(s), ""
    else:
        m = _RE.match(str(s))
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _UNITS:
            raise SearchError(f"latency budget {s!r} is not understood; write it like 5ms, 0.8ms, 500us or 0.005s")
        value = float(m.group(1))
    ms = value * _UNITS[unit]
    if not math.isfinite(ms) or ms <= 0:
        raise SearchError(f"latency budget {s!r} must be a positive time; write it like 5ms or 0.8ms")
    return ms


__all__ = ["parse_latency"]
