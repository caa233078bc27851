"""The measurement protocol, identical for every backend (see PROTOCOL.md).

1. Inputs are generated once per (shape, dtype), seeded, and staged on the device before timing.
2. Warm-up: at least ``warmup_runs`` inferences *and* at least ``warmup_s`` seconds (bounded by the
   time cap, so a very slow model still finishes).
3. Timed runs, one inference each, timed by the backend (``time.perf_counter_ns`` on CPU, CUDA events on
   GPU), in windows of ``min_runs`` runs until there are ``windows`` of them and ``min_timed_s`` of
   timed phase (or ``time_cap_s``); the latency is the ``window_quantile`` (lower quartile) of the
   window medians, so bursts of interference lasting tens of milliseconds do not move it.  With
   ``windows == 1`` and ``min_timed_s == 0``: the classic rule, runs until the distribution-free 95%
   confidence interval of the median lies within ``rel_ci`` (1%) of the median.
4. Anchored timing (``anchor`` given, as profiling jobs do): the model and a fixed reference model
   (the anchor) take turns in short blocks (``anchor_block_ms`` of runs each, the first run of a block
   not counted), and the latency is the anchor's calibrated latency times the median of the
   model/anchor ratios of adjacent blocks, which cancels slowdowns that hit both.  Blocks, rather
   than one anchor inference after every model inference, keep each model's caches its own: per
   inference, the anchor's cache misses depended on the model before it (up to +-13% by model size).
5. Robust statistics: median, p90, IQR, plus mean/std/CV for reference. Garbage collection is off
   while timing.  ``rounds`` is for profiling jobs (``hwnas.devices.profile``), which interleave
   several visits per model and keep the fastest.
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

ANCHOR_MIN_PAIRS = 8  # block pairs an anchored measurement takes at least (time cap permitting)
SCALES = {
    "anchored": "anchored: the calibrated anchor latency x the median model/anchor ratio of adjacent 10-ms blocks",
    "isolated": "isolated: the model alone, lower quartile of its 30-run window medians",
}


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
    # Windowed timing: the timed phase is cut into windows of ``min_runs`` runs spread over at least
    # ``min_timed_s`` seconds, and (without an anchor) the reported latency is the ``window_quantile``
    # quantile of the window medians, so short bursts of interference do not move it.  windows == 1
    # and min_timed_s == 0 give the classic rule: runs until the median's CI is within ``rel_ci``.
    windows: int = 3
    min_timed_s: float = 0.1
    window_quantile: float = 0.25
    # Profiling jobs (``profile_archs``) measure each model in ``rounds`` visits, interleaved with the
    # other models of its chunk, and keep the fastest visit; a single ``run_protocol`` call ignores it.
    rounds: int = 1
    # Anchored timing: profiling jobs that have a reference model (the anchor) time it right after every
    # inference of the model being measured and report the median model/anchor ratio times the
    # anchor's calibrated latency, which cancels slowdowns that hit both (see PROTOCOL.md).  0 = off.
    anchored: int = 1
    # Anchored timing in blocks: each block of the model (or of the anchor) lasts about this long (at
    # least 3 runs), and the timed phase has at least ``windows`` (3) and ``ANCHOR_MIN_PAIRS`` block pairs.
    anchor_block_ms: float = 10.0

    def __post_init__(self) -> None:
        checks = [
            ("warmup_runs", self.warmup_runs >= 0),
            ("warmup_s", self.warmup_s >= 0),
            ("min_runs", self.min_runs >= 3),
            ("max_runs", self.max_runs >= self.min_runs),
            ("time_cap_s", self.time_cap_s > 0),
            ("rel_ci", self.rel_ci >= 0),
            ("confidence", 0 < self.confidence < 1),
            ("windows", self.windows >= 1),
            ("min_timed_s", self.min_timed_s >= 0),  # the time cap wins over it
            ("window_quantile", 0 <= self.window_quantile <= 1),
            ("rounds", self.rounds >= 1),
            ("anchored", self.anchored in (0, 1)),
            ("anchor_block_ms", self.anchor_block_ms > 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ProtocolError(
                    f"protocol setting {name} = {getattr(self, name)!r} is invalid "
                    "(need warmup_runs>=0, warmup_s>=0, min_runs>=3, max_runs>=min_runs, time_cap_s>0, "
                    "rel_ci>=0, 0<confidence<1, windows>=1, min_timed_s>=0, 0<=window_quantile<=1, rounds>=1, "
                    "anchored 0 or 1, anchor_block_ms>0)"
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
                if math.isnan(fv):
                    raise ValueError
            except (TypeError, ValueError):
                raise ProtocolError(f"protocol setting {k} = {v!r} is not a number") from None
            if is_int and not fv.is_integer():
                raise ProtocolError(f"protocol setting {k} = {v!r} must be a whole number")
            typed[k] = int(fv) if is_int else fv
        return cls(**typed)

    @property
    def windowed(self) -> bool:
        return self.windows > 1 or self.min_timed_s > 0

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
    # windowed timing only: the median of each window, and the quantile reported as ``median_ms``
    window_medians_ms: list[float] = field(default_factory=list)
    window_quantile: float | None = None
    # profiling in interleaved rounds only: each visit's latency; the fastest visit is this measurement
    round_medians_ms: list[float] = field(default_factory=list)
    # anchored timing only: median of the model/anchor ratios of adjacent blocks, the anchor's calibrated
    # latency (median_ms = anchor_ratio * anchor_ms), the anchor's raw median during this measurement,
    # and the medians of the anchor's blocks (``window_medians_ms`` holds the model's block medians)
    anchor_ratio: float | None = None
    anchor_ms: float | None = None
    anchor_median_ms: float | None = None
    anchor_block_medians_ms: list[float] = field(default_factory=list)
    # how ``median_ms`` was obtained: "anchored" (calibrated anchor x ratio) or "isolated" (this model
    # alone: the window_quantile of its window medians, or the CI rule's median)
    scale: str = ""

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


def block_medians(x: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """The median of each consecutive block of ``x`` (blocks of ``sizes``), leaving out a block's first
    run when it has 3 or more: that run pays for the caches the other model took over."""
    bounds = np.cumsum([0, *sizes])
    return np.array([np.median(x[a + 1:b] if b - a >= 3 else x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


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
    window_sizes: Sequence[int] | None = None,
    anchor_ns: Sequence[int] | None = None,
    anchor_ms: float | None = None,
    anchor_window_sizes: Sequence[int] | None = None,
) -> Measurement:
    """Statistics of per-inference times (nanoseconds) as a ``Measurement`` in milliseconds.

    With ``window_sizes`` (windowed timing: ``samples_ns`` is the concatenation of consecutive windows
    of these sizes) ``median_ms`` is the ``settings.window_quantile`` quantile of the window medians and
    the CI is that of the quantile over windows; the other statistics are over all samples.
    With ``anchor_ns`` (the anchor's runs, in blocks of ``anchor_window_sizes``, block ``i`` right after
    the model's block ``i`` of ``window_sizes``) and ``anchor_ms``, ``median_ms`` is ``anchor_ms`` times
    the median of the block-pair ratios (each block's median without its first run), and the CI is
    that of the ratio's median.
    """
    raw = np.asarray(samples_ns, dtype=np.float64)
    x = np.sort(raw)
    if len(x) == 0:
        raise ProtocolError("no timed runs to summarize")
    ms = 1e-6
    med = float(np.median(x))
    p25, p75, p90 = (float(v) for v in np.percentile(x, [25, 75, 90]))
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    lo, hi = median_ci(x, settings.confidence)
    converged = ci_converged(x, settings.rel_ci, settings.confidence)
    wmeds: list[float] = []
    wq: float | None = None
    if window_sizes:
        if sum(window_sizes) != len(raw):
            raise ProtocolError(f"window sizes sum to {sum(window_sizes)} but there are {len(raw)} samples")
        bounds = np.cumsum([0, *window_sizes])
        w = np.array([np.median(raw[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        wq = settings.window_quantile
        med = float(np.quantile(w, wq))
        # order-statistic CI of the quantile over windows (normal approximation to the binomial)
        ws = np.sort(w)
        z = NormalDist().inv_cdf(0.5 + settings.confidence / 2)
        k = len(ws)
        half = z * math.sqrt(k * wq * (1 - wq))
        lo = float(ws[max(int(math.floor(k * wq - half)), 0)])
        hi = float(ws[min(int(math.ceil(k * wq + half)), k - 1)])
        converged = k >= settings.windows and max(med - lo, hi - med) <= max(settings.rel_ci, 0.02) * med
        wmeds = [float(v) * ms for v in w]
    ratio: float | None = None
    a_med: float | None = None
    a_blocks: list[float] = []
    if anchor_ns is not None:
        a = np.asarray(anchor_ns, dtype=np.float64)
        if anchor_ms is None or not anchor_ms > 0:
            raise ProtocolError("anchored timing needs a positive anchor_ms (the anchor's calibrated latency)")
        if (not window_sizes or not anchor_window_sizes or len(window_sizes) != len(anchor_window_sizes)
                or sum(anchor_window_sizes) != len(a)):
            raise ProtocolError("anchored timing needs the model's and the anchor's runs in pairs of blocks")
        mb = block_medians(raw, window_sizes)
        ab = block_medians(a, anchor_window_sizes)
        r = np.sort(mb / np.maximum(ab, 1.0))
        ratio = float(np.median(r))
        rlo, rhi = median_ci(r, settings.confidence)
        med, lo, hi = ratio * anchor_ms / ms, rlo * anchor_ms / ms, rhi * anchor_ms / ms
        converged = max(med - lo, hi - med) <= max(settings.rel_ci, 0.02) * med
        a_med = float(np.median(ab)) * ms
        a_blocks = [float(v) * ms for v in ab]
        wmeds = [float(v) * ms for v in mb]
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
        converged=converged,
        stop_reason=stop_reason,
        warmup_runs=warmup_runs,
        timed_s=float(x.sum()) * 1e-9,
        wall_s=wall_s,
        batch=batch,
        input_shapes={k: [int(d) for d in v] for k, v in (input_shapes or {}).items()},
        window_medians_ms=wmeds,
        window_quantile=wq if ratio is None else None,
        anchor_ratio=ratio,
        anchor_ms=float(anchor_ms) if ratio is not None and anchor_ms is not None else None,
        anchor_median_ms=a_med,
        anchor_block_medians_ms=a_blocks,
        scale="anchored" if ratio is not None else "isolated",
    )


def run_protocol(runner: TimedRunner, settings: ProtocolSettings | None = None, batch: int = 1,
                 anchor: TimedRunner | None = None, anchor_ms: float | None = None) -> Measurement:
    """Measure an activated runner with the protocol above.

    With ``anchor`` (another activated runner) and ``anchor_ms`` (its calibrated latency) the two take
    turns in blocks of about ``anchor_block_ms`` each, warm-up included, and the latency is
    ``anchor_ms`` times the median ratio of adjacent blocks (anchored timing).
    """
    s = settings or ProtocolSettings()
    specs = runner.input_specs()
    if anchor is not None:
        if anchor_ms is None or not anchor_ms > 0:
            raise ProtocolError("anchored timing needs the anchor's calibrated latency (anchor_ms > 0)")
        anchor.prepare(make_inputs(anchor.input_specs(), s.seed))
        runner.prepare(make_inputs(specs, s.seed))
        return _run_anchored(runner, anchor, s, batch, float(anchor_ms), specs)
    runner.prepare(make_inputs(specs, s.seed))

    def once() -> int:
        return int(runner.time_once())

    gc_was_enabled = gc.isenabled()
    gc.disable()
    t_start = time.perf_counter()
    try:
        warm = 0
        while True:
            once()
            warm += 1
            elapsed = time.perf_counter() - t_start
            if (warm >= s.warmup_runs and elapsed >= s.warmup_s) or elapsed >= s.time_cap_s:
                break
        samples: list[int] = []
        window_sizes: list[int] | None = None
        t_timed = time.perf_counter()
        if s.windowed:
            window_sizes = []
            stop_reason = "windows"
            while True:
                k = 0
                while k < s.min_runs:
                    samples.append(once())
                    k += 1
                    if k >= 3 and time.perf_counter() - t_timed >= s.time_cap_s:
                        break  # a slow model: a shorter last window rather than a blown time cap
                window_sizes.append(k)
                elapsed = time.perf_counter() - t_timed
                if len(window_sizes) >= s.windows and elapsed >= s.min_timed_s:
                    break
                if elapsed >= s.time_cap_s:
                    stop_reason = "time_cap"
                    break
                if len(samples) + s.min_runs > s.max_runs:
                    stop_reason = "max_runs"
                    break
        else:
            next_check = s.min_runs
            stop_reason = "max_runs"
            while len(samples) < s.max_runs:
                samples.append(once())
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
        window_sizes=window_sizes,
    )


def _run_anchored(runner: TimedRunner, anchor: TimedRunner, s: ProtocolSettings, batch: int, anchor_ms: float,
                  specs: Sequence[InputSpec]) -> Measurement:
    """Anchored timing in blocks: warm-up alternating one run each (so both are warm and their run
    times known), then pairs of blocks, the model's ``n_m`` runs then the anchor's ``n_a``, each block
    about ``anchor_block_ms`` long, until ``max(windows, ANCHOR_MIN_PAIRS)`` pairs and ``min_timed_s``
    of timed phase (or the time cap)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    t_start = time.perf_counter()
    try:
        warm_m: list[int] = []
        warm_a: list[int] = []
        while True:
            warm_m.append(int(runner.time_once()))
            warm_a.append(int(anchor.time_once()))
            elapsed = time.perf_counter() - t_start
            if (len(warm_m) >= s.warmup_runs and elapsed >= s.warmup_s) or elapsed >= s.time_cap_s:
                break
        block_ns = s.anchor_block_ms * 1e6

        def block_size(times: list[int]) -> int:
            t = float(np.median(times[-10:]))
            return int(min(max(3, math.ceil(block_ns / max(t, 1.0))), s.max_runs))

        n_m, n_a = block_size(warm_m), block_size(warm_a)
        samples: list[int] = []
        a_samples: list[int] = []
        sizes: list[int] = []
        a_sizes: list[int] = []
        min_pairs = max(s.windows, ANCHOR_MIN_PAIRS)
        stop_reason = "windows"
        t_timed = time.perf_counter()
        while True:
            for _ in range(n_m):
                samples.append(int(runner.time_once()))
            for _ in range(n_a):
                a_samples.append(int(anchor.time_once()))
            sizes.append(n_m)
            a_sizes.append(n_a)
            elapsed = time.perf_counter() - t_timed
            if len(sizes) >= min_pairs and elapsed >= s.min_timed_s:
                break
            if elapsed >= s.time_cap_s:
                stop_reason = "time_cap"
                break
            if len(samples) + n_m > s.max_runs:
                stop_reason = "max_runs"
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return summarize(
        samples, s, stop_reason=stop_reason, warmup_runs=len(warm_m), wall_s=time.perf_counter() - t_start,
        batch=batch, input_shapes={sp.name: sp.shape for sp in specs}, window_sizes=sizes,
        anchor_ns=a_samples, anchor_ms=anchor_ms, anchor_window_sizes=a_sizes,
    )


__all__ = [
    "InputSpec",
    "Measurement",
    "ProtocolError",
    "ProtocolSettings",
    "SCALES",
    "TimedRunner",
    "block_medians",
    "ci_converged",
    "make_input",
    "make_inputs",
    "median_ci",
    "run_protocol",
    "summarize",
]
