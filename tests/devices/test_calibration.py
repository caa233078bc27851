"""The anchor's calibration: bursts through a run, the lower-quartile estimate, and the drift check
against a real SQLite store whose anchored rows it rescales."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwnas.devices import Store
from hwnas.devices.calibration import (
    DRIFT_TOLERANCE,
    RECALIBRATE_MIN_S,
    AnchorCalibration,
    history_key,
    settle,
)
from hwnas.devices.protocol import InputSpec, Measurement
from hwnas.errors import StoreError

KEY = ("fp0", "ort:test", 1, "fp32")
AKEY = "anchor_ms|fp0|ort:test|1|fp32|anchor"


class _Machine:
    """An anchor on a machine with slow stretches: of every 10 bursts, the first ``slow`` run 1.6x slower."""

    def __init__(self, base_ns: int, slow: int) -> None:
        self.base, self.slow, self.bursts = base_ns, slow, -1

    def input_specs(self) -> list[InputSpec]:
        return [InputSpec("x", (1, 4), "float32")]

    def prepare(self, inputs) -> None:  # called once per burst
        self.bursts += 1

    def time_once(self) -> int:
        return int(self.base * (1.6 if self.bursts % 10 < self.slow else 1.0))


def _row(st: Store, arch_id: str, ratio: float, anchor_ms: float) -> None:
    m = Measurement(median_ms=ratio * anchor_ms, p90_ms=1, iqr_ms=0, mean_ms=1, std_ms=0, min_ms=1, max_ms=1, cv=0,
                    ci_low_ms=0.99 * ratio * anchor_ms, ci_high_ms=1.01 * ratio * anchor_ms, n=10, converged=True,
                    stop_reason="windows", warmup_runs=1, timed_s=0.1, wall_s=0.2, anchor_ratio=ratio,
                    anchor_ms=anchor_ms, scale="anchored")
    st.add_measurement(*KEY[:2], arch_id, m, batch=KEY[2], precision=KEY[3], supernet="toy", device="d")


def _cal(values_ms, span_s: float) -> AnchorCalibration:
    """A calibration whose windows are given (as if timed ``span_s`` apart at the ends)."""
    c = AnchorCalibration(runner=None)
    c.window_ms = list(values_ms)
    c.window_at = list(np.linspace(0.0, span_s, len(values_ms)))
    c.bursts = max(1, len(values_ms) // 10)
    return c


@pytest.mark.parametrize("slow", [0, 3, 6])
def test_the_estimate_ignores_slow_stretches_under_three_quarters_of_the_time(slow: int) -> None:
    cal = AnchorCalibration(_Machine(200_000, slow))
    for _ in range(20):
        cal.burst(0.0)  # one window per burst (a few bursts' worth of stretches)
    assert len(cal.window_ms) == 20 and cal.bursts == 20
    assert cal.estimate() == pytest.approx(0.2)
    plain_median = float(np.median(cal.window_ms))
    assert plain_median == pytest.approx(0.32 if slow >= 6 else 0.2)  # the median would not


def test_first_run_calibrates_and_puts_its_rows_on_the_estimate(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as st:
        _row(st, "a", 1.5, 0.20)  # written with the start burst's provisional figure
        _row(st, "b", 0.5, 0.20)
        out = settle(st, AKEY, _cal([0.21] * 30, 3.0), KEY, None, "device 'd'")
        assert out.action == "calibrated" and out.anchor_ms == pytest.approx(0.21) and out.rescaled_rows == 2
        assert float(st.get_meta(AKEY)) == pytest.approx(0.21)
        rows = {r["arch_id"]: r for r in st.measurements()}
        assert rows["a"]["median_ms"] == pytest.approx(1.5 * 0.21) and rows["b"]["median_ms"] == pytest.approx(0.105)
        m = st.measurement(*KEY[:2], "a", *KEY[2:])
        assert m.anchor_ms == pytest.approx(0.21) and m.ci_high_ms == pytest.approx(1.01 * 1.5 * 0.21)
        hist = json.loads(st.get_meta(history_key(AKEY)))
        assert [h["action"] for h in hist] == ["calibrated"] and hist[0]["estimate_ms"] == pytest.approx(0.21)


def test_drift_in_a_long_run_recalibrates_and_says_so(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as st:
        first = settle(st, AKEY, _cal([0.20] * 40, RECALIBRATE_MIN_S + 5), KEY, None, "device 'd'")
        _row(st, "a", 2.0, first.anchor_ms)
        # a later long run within tolerance: the calibration becomes the median of the two runs
        near = settle(st, AKEY, _cal([0.202] * 40, RECALIBRATE_MIN_S + 5), KEY, 0.20, "device 'd'")
        assert near.action == "pooled" and near.message == "" and near.anchor_ms == pytest.approx(0.201)
        # a third, 10% slower: told, and the median of the three runs (0.202) is the new calibration
        far = settle(st, AKEY, _cal([0.22] * 40, RECALIBRATE_MIN_S + 5), KEY, near.anchor_ms, "device 'd'")
        assert far.action == "recalibrated" and far.drift > DRIFT_TOLERANCE
        assert "slower" in far.message and "rescaled" in far.message and "\n" not in far.message
        assert far.anchor_ms == pytest.approx(0.202) and float(st.get_meta(AKEY)) == pytest.approx(0.202)
        assert st.measurements()[0]["median_ms"] == pytest.approx(2.0 * 0.202)
        assert len(json.loads(st.get_meta(history_key(AKEY)))) == 3


def test_drift_in_a_short_run_only_warns(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as st:
        st.set_meta(AKEY, repr(0.20))
        _row(st, "a", 2.0, 0.20)
        out = settle(st, AKEY, _cal([0.23] * 20, 2.0), KEY, 0.20, "device 'd'")
        assert out.action == "warned" and "too short" in out.message and out.anchor_ms == 0.20
        assert float(st.get_meta(AKEY)) == 0.20 and st.measurements()[0]["median_ms"] == pytest.approx(0.4)
        quiet = settle(st, AKEY, _cal([0.201] * 20, 2.0), KEY, 0.20, "device 'd'")
        assert quiet.action == "kept" and quiet.message == ""


def test_rescale_refuses_a_bad_calibration(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as st:
        with pytest.raises(StoreError, match="positive"):
            st.rescale_anchored(*KEY, 0.0)
