"""The measurement protocol, identical for every backend (see PROTOCOL.md).

1. Inputs are generated once per (shape, dtype), seeded, and staged on the device before timing.
2. Warm-up: at least ``warmup_runs`` inferences *and* at least ``warmup_s`` seconds (bounded by the
   time cap, so a very slow model still finishes).
3. Timed runs, one inference each, timed by the backend (``time.perf_counter_ns`` on CPU, CUDA events on
   GPU), until the distribution-free 95% confidence interval of the median lies within ``rel_ci``
   (1%) of the median, with at least ``min_runs`` and at most ``max_runs`` runs and at most
   ``time_cap_s`` seconds of timed phase.
4. Robust statistics: median, p90, IQR, plus mean/std/CV for reference. Garbage collection is off
   while timing.
"""

from __future__ import annotations

import gc
import math
import time
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from statistics import NormalDist
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from hwnas.errors import HwnasError


class ProtocolError(HwnasError, ValueError):
    """Invalid measurement-protocol settings."""


@dataclass(frozen=True)
class ProtocolSettings:
    """Knobs of the measurement protocol; defaults are the documented protocol."""

    warmup_runs: int = 10
    warmup_s: float = 0.2
    min_runs: int = 30
    max_runs: int = 100_000
    time_cap_s: float = 3.0
    rel_ci: float = 0.01
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("warmup_runs", self.warmup_runs >= 0),
            ("warmup_s", self.warmup_s >= 0),
            ("min_runs", self.min_runs >= 3),
            ("max_runs", self.max_runs >= self.min_runs),
            ("time_cap_s", self.time_cap_s > 0),
            ("rel_ci", self.rel_ci >= 0),
            ("confidence", 0 < self.confidence < 1),
        ]
        for name, ok in checks:
            if not ok:
                raise ProtocolError(
                    f"protocol setting {name} = {getattr(self, name)!r} is invalid "
                    "(need warmup_runs>=0, warmup_s>=0, min_runs>=3, max_runs>=min_runs, time_cap_s>0, "
                    "rel_ci>=0, 0<confidence<1)"
                )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None = None, **overrides: Any) -> ProtocolSettings:
        """Settings from a spec's ``[protocol]`` table plus overrides (``None`` values are ignored)."""
        merged = {**(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(merged) - set(names))
        if unknown:
            raise ProtocolError(f"unknown protocol setting(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        typed: dict[str, Any] = {}
        for k, v in merged.items():
            is_int = names[k] in ("int", int)
            try:
                if isinstance(v, bool):
                    raise ValueError
                fv = float(v)
            except (TypeError, ValueError):
                raise ProtocolError(f"protocol setting {k} = {v!r} is not a number") from None
            if is_int and not fv.is_integer():
                raise ProtocolError(f"protocol setting {k} = {v!r} must be a whole number")
            typed[k] = int(fv) if is_int else fv
        return cls(**typed)

    def replace(self, **changes: Any) -> ProtocolSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, concrete shape and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class Measurement:
    """Latency statistics of one model on one device (milliseconds per inference call)."""

    median_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float
    ci_low_ms: float
    ci_high_ms: float
    n: int
    converged: bool
    stop_reason: str  # "converged" | "max_runs" | "time_cap"
    warmup_runs: int
    timed_s: float  # sum of the timed inferences
    wall_s: float  # warm-up + timed phase, as seen by the caller
    batch: int = 1
    input_shapes: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class TimedRunner(Protocol):
    """What the protocol needs from a backend (an activated local runner)."""

    def input_specs(self) -> list[InputSpec]: ...

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None: ...

    def time_once(self) -> int: ...


_INPUT_CACHE: dict[tuple[tuple[int, ...], str, int], np.ndarray] = {}


def make_input(shape: Sequence[int], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """A deterministic random input: the same (shape, dtype, seed) always gives the same array."""
    key = (tuple(int(s) for s in shape), str(np.dtype(dtype)), int(seed))
    if key not in _INPUT_CACHE:
        rng = np.random.default_rng([seed, zlib.crc32(repr(key[:2]).encode())])
        dt = np.dtype(dtype)
        if dt.kind == "f":
            arr = rng.standard_normal(key[0], dtype=np.float32).astype(dt)
        elif dt.kind in "iu":
            arr = rng.integers(0, 10, size=key[0]).astype(dt)
        elif dt.kind == "b":
            arr = rng.random(key[0]) < 0.5
        else:
            raise ProtocolError(f"cannot generate inputs of dtype {dt}")
        arr.setflags(write=False)
        if len(_INPUT_CACHE) > 64:
            _INPUT_CACHE.clear()
        _INPUT_CACHE[key] = arr
    return _INPUT_CACHE[key]


def make_inputs(specs: Sequence[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    return {s.name: make_input(s.shape, s.dtype, seed) for s in specs}


def median_ci(sorted_ns: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics (normal approximation to the binomial).

    The ranks ``n/2 -/+ z*sqrt(n)/2`` bracket the population median with probability ``confidence``
    whatever the latency distribution; for very few samples the CI is the whole range.
    """
    n = len(sorted_ns)
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    lo = max(int(math.floor(n / 2 - z * math.sqrt(n) / 2)), 1)
    hi = min(int(math.ceil(n / 2 + 1 + z * math.sqrt(n) / 2)), n)
    return float(sorted_ns[lo - 1]), float(sorted_ns[hi - 1])


def ci_converged(sorted_ns: np.ndarray, rel_ci: float, confidence: float) -> bool:
    med = float(np.median(sorted_ns))
    lo, hi = median_ci(sorted_ns, confidence)
    return med > 0 and max(med - lo, hi - med) <= rel_ci * med


def summarize(
    samples_ns: Sequence[int],
    settings: ProtocolSettings,
    *,
    stop_reason: str,
    warmup_runs: int,
    wall_s: float,
    batch: int = 1,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Measurement:
    """Statistics of per-inference times (nanoseconds) as a ``Measurement`` in milliseconds."""
    x = np.sort(np.asarray(samples_ns, dtype=np.float64))
    if len(x) == 0:
        raise ProtocolError("no timed runs to summarize")
    ms = 1e-6
    med = float(np.median(x))
    p25, p75, p90 = (float(v) for v in np.percentile(x, [25, 75, 90]))
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    lo, hi = median_ci(x, settings.confidence)
    return Measurement(
        median_ms=med * ms,
        p90_ms=p90 * ms,
        iqr_ms=(p75 - p25) * ms,
        mean_ms=mean * ms,
        std_ms=std * ms,
        min_ms=float(x[0]) * ms,
        max_ms=float(x[-1]) * ms,
        cv=std / mean if mean > 0 else 0.0,
        ci_low_ms=lo * ms,
        ci_high_ms=hi * ms,
        n=len(x),
        converged=ci_converged(x, settings.rel_ci, settings.confidence),
        stop_reason=stop_reason,
        warmup_runs=warmup_runs,
        timed_s=float(x.sum()) * 1e-9,
        wall_s=wall_s,
        batch=batch,
        input_shapes={k: [int(d) for d in v] for k, v in (input_shapes or {}).items()},
    )


def run_protocol(runner: TimedRunner, settings: ProtocolSettings | None = None, batch: int = 1) -> Measurement:
    """Measure an activated runner with the protocol above."""
    s = settings or ProtocolSettings()
    specs = runner.input_specs()
    runner.prepare(make_inputs(specs, s.seed))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    t_start = time.perf_counter()
    try:
        warm = 0
        while True:
            runner.time_once()
            warm += 1
            elapsed = time.perf_counter() - t_start
            if (warm >= s.warmup_runs and elapsed >= s.warmup_s) or elapsed >= s.time_cap_s:
                break
        samples: list[int] = []
        t_timed = time.perf_counter()
        next_check = s.min_runs
        stop_reason = "max_runs"
        while len(samples) < s.max_runs:
            samples.append(int(runner.time_once()))
            n = len(samples)
            if n >= next_check:
                # checks get sparser as n grows, so the sorting stays O(n log n) overall
                next_check = n + max(10, n // 10)
                if ci_converged(np.sort(np.asarray(samples, dtype=np.float64)), s.rel_ci, s.confidence):
                    stop_reason = "converged"
                    break
            if n >= 3 and time.perf_counter() - t_timed >= s.time_cap_s:
                stop_reason = "time_cap"
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    wall = time.perf_counter() - t_start
    return summarize(
        samples,
        s,
        stop_reason=stop_reason,
        warmup_runs=warm,
        wall_s=wall,
        batch=batch,
        input_shapes={sp.name: sp.shape for sp in specs},
    )


__all__ = [
    "InputSpec",
    "Measurement",
    "ProtocolError",
    "ProtocolSettings",
    "TimedRunner",
    "ci_converged",
    "make_input",
    "make_inputs",
    "median_ci",
    "run_protocol",
    "summarize",
]
