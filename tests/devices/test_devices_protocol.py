"""The measurement protocol: statistics, stopping rules, and a real ORT session."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np
import pytest

from hwnas.devices import create_backend, load_device
from hwnas.devices.protocol import (
    InputSpec,
    Measurement,
    ProtocolError,
    ProtocolSettings,
    make_input,
    median_ci,
    run_protocol,
    summarize,
)


CLASSIC = {"windows": 1, "min_timed_s": 0.0}  # the CI stopping rule instead of windowed timing


class SyntheticRunner:
    """A runner whose 'inference' takes a scripted time: exercises the stopping rules exactly."""

    def __init__(self, times_ns, sleep: bool = False) -> None:
        self.times = list(times_ns)
        self.calls = 0
        self.sleep = sleep
        self.prepared: Mapping[str, np.ndarray] | None = None

    def input_specs(self) -> list[InputSpec]:
        return [InputSpec("x", (1, 4), "float32")]

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None:
        self.prepared = inputs

    def time_once(self) -> int:
        t = self.times[self.calls % len(self.times)]
        self.calls += 1
        if self.sleep:
            time.sleep(t * 1e-9)
        return t


def test_median_ci_brackets_median() -> None:
    x = np.arange(1, 101, dtype=float)
    lo, hi = median_ci(x, 0.95)
    assert lo < np.median(x) < hi
    assert (lo, hi) == (40.0, 61.0)  # the textbook order statistics for n=100 at 95%
    assert median_ci(np.array([5.0]), 0.95) == (5.0, 5.0)


def test_summarize_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    ns = (1e6 + rng.exponential(1e5, 500)).astype(np.int64)
    m = summarize(ns, ProtocolSettings(), stop_reason="max_runs", warmup_runs=10, wall_s=1.0)
    ms = ns / 1e6
    assert m.median_ms == pytest.approx(np.median(ms))
    assert m.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert m.iqr_ms == pytest.approx(np.percentile(ms, 75) - np.percentile(ms, 25))
    assert m.mean_ms == pytest.approx(ms.mean()) and m.std_ms == pytest.approx(ms.std(ddof=1))
    assert m.cv == pytest.approx(ms.std(ddof=1) / ms.mean())
    assert m.ci_low_ms <= m.median_ms <= m.ci_high_ms and m.n == 500
    assert m.timed_s == pytest.approx(ns.sum() / 1e9)
    assert Measurement.from_dict(m.to_dict()) == m


def test_constant_latency_converges_at_min_runs() -> None:
    runner = SyntheticRunner([1_000_000])
    s = ProtocolSettings(warmup_runs=10, warmup_s=0.0, min_runs=30, **CLASSIC)
    m = run_protocol(runner, s)
    assert m.converged and m.stop_reason == "converged" and m.n == 30
    assert m.warmup_runs == 10 and m.median_ms == pytest.approx(1.0) and m.iqr_ms == 0
    assert runner.prepared is not None and runner.prepared["x"].shape == (1, 4)


def test_noisy_latency_needs_more_runs_and_max_runs_caps() -> None:
    rng = np.random.default_rng(3)
    noisy = (1e6 * (1 + rng.uniform(-0.5, 0.5, 2000))).astype(np.int64)
    m = run_protocol(SyntheticRunner(noisy), ProtocolSettings(warmup_runs=0, warmup_s=0, min_runs=30, time_cap_s=60, **CLASSIC))
    assert m.converged and m.n > 100  # +-50% noise needs hundreds of runs for a 1% CI
    capped = run_protocol(SyntheticRunner(noisy), ProtocolSettings(warmup_runs=0, warmup_s=0, min_runs=30, max_runs=40, **CLASSIC))
    assert capped.n == 40 and capped.stop_reason == "max_runs" and not capped.converged


def test_time_cap_is_respected() -> None:
    runner = SyntheticRunner([2_000_000, 3_000_000], sleep=True)  # 2-3 ms per "inference"
    for extra in (CLASSIC, {"windows": 1000, "min_runs": 10**6, "max_runs": 10**6}):
        s = ProtocolSettings(**{"warmup_runs": 5, "warmup_s": 0.05, "min_runs": 30, "rel_ci": 0.0,
                                "time_cap_s": 0.25, **extra})
        t0 = time.perf_counter()
        m = run_protocol(runner, s)
        wall = time.perf_counter() - t0
        assert m.stop_reason == "time_cap" and not m.converged
        assert wall < 0.25 + 0.05 + 0.25  # timed cap + warm-up + one inference and slack
        assert m.wall_s <= wall


def test_settings_validation() -> None:
    with pytest.raises(ProtocolError, match="min_runs"):
        ProtocolSettings(min_runs=1)
    with pytest.raises(ProtocolError, match="unknown protocol setting"):
        ProtocolSettings.from_mapping({"time_cap": 1})
    with pytest.raises(ProtocolError, match="whole number"):
        ProtocolSettings.from_mapping({"min_runs": 2.5})
    s = ProtocolSettings.from_mapping({"time_cap_s": "1.5", "min_runs": 40}, max_runs=None)
    assert s.time_cap_s == 1.5 and s.min_runs == 40 and s.max_runs == ProtocolSettings().max_runs


def test_inputs_are_seeded_and_generated_once() -> None:
    a = make_input((1, 3, 8, 8), "float32", seed=0)
    assert a is make_input((1, 3, 8, 8), "float32", seed=0)
    assert not np.array_equal(a, make_input((1, 3, 8, 8), "float32", seed=1))
    assert not a.flags.writeable


def test_real_ort_session_converges(medium_onnx: Path) -> None:
    s = ProtocolSettings(time_cap_s=3.0, **CLASSIC)
    with create_backend(load_device("ort-cpu-1t"), model=medium_onnx) as runner:
        m = runner.measure(s)
    assert m.n >= s.min_runs and m.warmup_runs >= s.warmup_runs
    assert 0 < m.min_ms <= m.median_ms <= m.p90_ms <= m.max_ms
    assert m.ci_low_ms <= m.median_ms <= m.ci_high_ms
    assert m.iqr_ms >= 0 and m.std_ms >= 0 and m.cv >= 0
    assert m.timed_s <= m.wall_s < s.time_cap_s + 1.0
    assert m.converged == (max(m.median_ms - m.ci_low_ms, m.ci_high_ms - m.median_ms) <= 0.01 * m.median_ms)
    assert m.converged, f"did not converge on a quiet ~1 ms model: {m}"


def test_windowed_timing_ignores_a_long_burst_of_interference() -> None:
    """1 ms inferences, but the first 40% of the timed phase runs 1.5x slower (another tenant busy):
    the classic median moves with the burst, the lower quartile of window medians does not."""
    times = [1_500_000] * 400 + [1_000_000] * 600
    s = ProtocolSettings(warmup_runs=0, warmup_s=0, min_runs=20, windows=50, min_timed_s=0.0)
    m = run_protocol(SyntheticRunner(times), s)
    assert m.stop_reason == "windows" and m.n == 1000 and len(m.window_medians_ms) == 50
    assert m.median_ms == pytest.approx(1.0) and m.window_quantile == 0.25 and m.converged
    assert m.mean_ms == pytest.approx(1.2)  # the other statistics are over every run
    burst_first = run_protocol(SyntheticRunner([1_500_000] * 600 + [1_000_000] * 400),
                               ProtocolSettings(warmup_runs=0, warmup_s=0, min_runs=1000, max_runs=1000, **CLASSIC))
    assert burst_first.median_ms == pytest.approx(1.5)


def test_windowed_timing_spreads_over_min_timed_s() -> None:
    runner = SyntheticRunner([1_000_000], sleep=True)
    s = ProtocolSettings(warmup_runs=0, warmup_s=0, min_runs=5, windows=2, min_timed_s=0.06)
    m = run_protocol(runner, s)
    assert m.stop_reason == "windows" and m.n % 5 == 0 and m.timed_s >= 0.055
    assert len(m.window_medians_ms) == m.n // 5 >= 10


def test_windowed_settings_validation() -> None:
    with pytest.raises(ProtocolError, match="windows"):
        ProtocolSettings(windows=0)
    with pytest.raises(ProtocolError, match="min_timed_s"):
        ProtocolSettings(min_timed_s=-1.0)
    with pytest.raises(ProtocolError, match="rounds"):
        ProtocolSettings(rounds=0)
    with pytest.raises(ProtocolError, match="not a number"):
        ProtocolSettings.from_mapping({"window_quantile": "nan"})


def test_real_ort_session_windowed(medium_onnx: Path) -> None:
    s = ProtocolSettings(time_cap_s=3.0)
    assert s.windowed and s.anchored  # the documented defaults
    with create_backend(load_device("ort-cpu-1t"), model=medium_onnx) as runner:
        m = runner.measure(s)
    w = np.array(m.window_medians_ms)
    assert len(w) >= s.windows and m.n >= s.windows * s.min_runs and m.stop_reason == "windows"
    assert m.median_ms == pytest.approx(np.quantile(w, s.window_quantile))
    assert m.min_ms <= m.median_ms <= m.max_ms and m.ci_low_ms <= m.median_ms <= m.ci_high_ms


class _Contended:
    """Two runners sharing one machine whose speed drops 1.6x in bursts: each call advances time."""

    def __init__(self) -> None:
        self.calls = 0

    def factor(self) -> float:
        self.calls += 1
        return 1.0 if (self.calls // 300) % 3 == 0 else 1.6  # slow two thirds of the time, in bursts of ~50 ms


def test_anchored_timing_cancels_a_shared_slowdown() -> None:
    machine = _Contended()

    class R(SyntheticRunner):
        def __init__(self, base_ns: int) -> None:
            super().__init__([base_ns])
            self.base = base_ns

        def time_once(self) -> int:
            self.calls += 1
            return int(self.base * machine.factor())

    model, anchor = R(100_000), R(250_000)
    s = ProtocolSettings(warmup_runs=5, warmup_s=0, min_runs=30, windows=10, min_timed_s=0, anchor_block_ms=2.0)
    m = run_protocol(model, s, anchor=anchor, anchor_ms=0.25)
    assert m.median_ms == pytest.approx(0.1) and m.anchor_ratio == pytest.approx(0.4) and m.anchor_ms == 0.25
    assert m.anchor_median_ms is not None and m.converged and m.scale == "anchored"
    # blocks of about anchor_block_ms (2 ms) each: 20 runs of the 0.1-ms model, 8 of the 0.25-ms anchor
    assert len(m.window_medians_ms) == len(m.anchor_block_medians_ms) >= 10
    assert m.n == 20 * len(m.window_medians_ms)
    plain = run_protocol(R(100_000), s.replace(window_quantile=0.5))
    assert plain.median_ms == pytest.approx(0.16)  # without the anchor the bursts show
    with pytest.raises(ProtocolError, match="anchor_ms"):
        run_protocol(model, s, anchor=anchor)


def test_anchored_blocks_do_not_count_the_run_after_a_switch() -> None:
    """Whichever model ran last owns the caches: the first run after a switch costs more, by how much
    depending on the other model's size.  Per-inference pairing would pay it on every run (and bias the
    ratio by size); blocks pay it once per block and leave that run out."""
    last = [None]

    class Cached(SyntheticRunner):
        def __init__(self, base_ns: int, name: str) -> None:
            super().__init__([base_ns])
            self.base, self.name = base_ns, name

        def time_once(self) -> int:
            self.calls += 1
            cold = last[0] is not None and last[0] != self.name
            last[0] = self.name
            return int(self.base * (3.0 if cold else 1.0))

    s = ProtocolSettings(warmup_runs=5, warmup_s=0, min_timed_s=0)
    for base in (20_000, 100_000, 900_000):  # 0.02 / 0.1 / 0.9 ms against a 0.2-ms anchor
        m = run_protocol(Cached(base, "m"), s, anchor=Cached(200_000, "a"), anchor_ms=0.2)
        assert m.median_ms == pytest.approx(base * 1e-6, rel=1e-9)
        assert len(m.window_medians_ms) >= 8 and m.n >= 8 * 3
