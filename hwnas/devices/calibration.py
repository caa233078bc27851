"""The anchor's calibration: its latency alone, estimated from bursts spread through a profiling run.

Anchored timing (``protocol.run_protocol``) measures each model as a ratio to a reference model, the
anchor, which cancels slowdowns that hit both; every latency of a store's device key is that ratio
times one number, the anchor's calibrated latency.  A single 2-s calibration can fall in one of this
kind of machine's slow stretches (they last up to seconds) and then every row of the key is off by as
much.  So the calibration is spread out:

* a burst of the anchor alone at the start of the run, one between models every ``BURST_EVERY_S``, and
  one at the end, until at least ``MIN_CALIBRATION_S`` of bursts (windows of about 5 ms, 3 to 30 runs);
* the estimate is the lower quartile of all the bursts' window medians, so slow stretches covering
  up to three quarters of the bursts do not move it;
* the first run of a key writes its rows with the start burst's figure, then puts them all on the
  run's final estimate (``Store.rescale_anchored``);
* every later run re-estimates it the same way: that is the **drift check**.  A run whose bursts
  span at least ``RECALIBRATE_MIN_S`` makes the calibration the median of every such run's estimate
  (the machine's speed moves by a few percent over minutes; the median of many runs moves less),
  and every row of the key is rescaled to it; if its own estimate was more than ``DRIFT_TOLERANCE``
  off, the user is told.  A shorter run (a search's device check) never changes the calibration
  and only warns.  Every estimate is kept in the store (``calibration_history``).
"""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hwnas.devices.protocol import make_inputs

BURST_EVERY_S = 1.0  # a burst between models once this long has passed since the last one
BURST_S = 0.1  # length of a burst between models
START_S = 0.5  # the burst at the start of a run
MIN_CALIBRATION_S = 2.0  # bursts of a run add up to at least this (the end burst makes up the rest)
WINDOW_MS = 5.0  # a window of the anchor alone: about this long, 3 to 30 runs
DRIFT_TOLERANCE = 0.03  # a run's estimate this far from the stored calibration is drift
RECALIBRATE_MIN_S = 10.0  # a run's bursts must span this long for its estimate to replace the stored one
HISTORY_LIMIT = 200  # calibration estimates kept per key


class AnchorCalibration:
    """Windows of the anchor timed alone, in bursts through one run; ``estimate()`` is their lower quartile."""

    def __init__(self, runner: Any, seed: int = 0) -> None:
        self.runner = runner
        self.seed = seed
        self.window_ms: list[float] = []
        self.window_at: list[float] = []
        self.burst_s = 0.0
        self.bursts = 0
        self._last = -math.inf
        self._runs_per_window: int | None = None

    def burst(self, seconds: float) -> None:
        """Time the anchor alone for about ``seconds``: 2 runs to take the caches back (not counted), then
        windows of about ``WINDOW_MS``."""
        r = self.runner
        r.prepare(make_inputs(r.input_specs(), self.seed))
        gc_on = gc.isenabled()
        gc.disable()
        t0 = time.perf_counter()
        try:
            warm = [int(r.time_once()) for _ in range(2)]
            if self._runs_per_window is None:
                t = float(np.median(warm + [int(r.time_once()) for _ in range(3)]))
                self._runs_per_window = int(min(30, max(3, math.ceil(WINDOW_MS * 1e6 / max(t, 1.0)))))
            k = self._runs_per_window
            while True:
                w = [int(r.time_once()) for _ in range(k)]
                now = time.perf_counter()
                self.window_ms.append(float(np.median(w)) * 1e-6)
                self.window_at.append(now)
                if now - t0 >= seconds:
                    break
        finally:
            if gc_on:
                gc.enable()
        self.burst_s += time.perf_counter() - t0
        self.bursts += 1
        self._last = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self._last >= BURST_EVERY_S

    def finish(self) -> None:
        """The end burst: at least ``BURST_S``, more until the run's bursts add up to ``MIN_CALIBRATION_S``."""
        self.burst(max(BURST_S, MIN_CALIBRATION_S - self.burst_s))

    def estimate(self) -> float:
        if not self.window_ms:
            raise ValueError("no calibration bursts were timed")
        return float(np.quantile(self.window_ms, 0.25))

    @property
    def span_s(self) -> float:
        return float(self.window_at[-1] - self.window_at[0]) if len(self.window_at) > 1 else 0.0

    def spread(self) -> float:
        """Relative spread of the window medians (upper / lower quartile - 1): how noisy the run was."""
        q1, q3 = np.quantile(self.window_ms, [0.25, 0.75])
        return float(q3 / q1 - 1)


@dataclass(frozen=True)
class CalibrationOutcome:
    """What a run's drift check found and did."""

    anchor_ms: float  # the calibration every row of the key is on after this run
    estimate_ms: float  # this run's estimate
    previous_ms: float | None  # the stored calibration before this run (None: this run made the first)
    drift: float | None  # estimate / previous - 1
    action: str  # "calibrated" | "kept" | "pooled" | "recalibrated" | "warned"
    windows: int
    bursts: int
    span_s: float
    spread: float
    quantiles_ms: dict | None = None  # p5 / p10 / p25 / p50 of this run's window medians
    rescaled_rows: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def history_key(anchor_key: str) -> str:
    return f"calibration_history|{anchor_key}"


def settle(store: Any, anchor_key: str, cal: AnchorCalibration, row_key: tuple[str, str, int, str],
           previous: float | None, what: str) -> CalibrationOutcome:
    """Close a run's calibration: store the first calibration of a key, or check the stored one for
    drift; put every anchored row of ``row_key`` on the result; record the estimate in the history."""
    est = cal.estimate()
    base = dict(estimate_ms=est, previous_ms=previous, windows=len(cal.window_ms), bursts=cal.bursts,
                span_s=cal.span_s, spread=cal.spread(),
                quantiles_ms={f"p{q}": float(np.quantile(cal.window_ms, q / 100)) for q in (5, 10, 25, 50)})
    hk = history_key(anchor_key)
    try:
        hist = [h for h in json.loads(store.get_meta(hk) or "[]") if isinstance(h, dict)]
    except ValueError:
        hist = []
    supported = cal.span_s >= RECALIBRATE_MIN_S
    if previous is None:
        # another process may have calibrated this key meanwhile: the first value stored wins
        final = float(store.claim_meta(anchor_key, repr(est)))
        action, drift, msg = "calibrated", None, ""
    else:
        drift = est / previous - 1
        how = f"{est:.4f} vs {previous:.4f} ms, {cal.bursts} bursts over {cal.span_s:.0f} s"
        side = "slower" if drift > 0 else "faster"
        if supported:
            # the calibration is the median of every well-supported run's estimate: the machine's speed
            # moves by a few percent over minutes, and the median of many runs moves less than any one
            pool = [float(h["estimate_ms"]) for h in hist
                    if float(h.get("span_s") or 0) >= RECALIBRATE_MIN_S and h.get("estimate_ms")]
            final = float(np.median(pool + [est]))
            if abs(final / previous - 1) < 1e-3:
                final = previous
            action = "kept" if final == previous else "pooled"
            msg = ""
            if abs(drift) > DRIFT_TOLERANCE:
                action = "recalibrated"
                msg = (f"the anchor of {what} ran {100 * abs(drift):.1f}% {side} than its calibration ({how}); "
                       f"the calibration is now {final:.4f} ms (the median of {len(pool) + 1} runs' estimates) and "
                       "every stored latency of this device was rescaled to it")
            if final != previous:
                store.set_meta(anchor_key, repr(final))
        else:
            final = previous
            action, msg = "kept", ""
            if abs(drift) > DRIFT_TOLERANCE:
                action = "warned"
                msg = (f"the anchor of {what} ran {100 * abs(drift):.1f}% {side} than its calibration ({how}), in a "
                       f"run too short to recalibrate (< {RECALIBRATE_MIN_S:.0f} s); if the machine was busy, profile "
                       "again when it is quiet; a longer profile recalibrates")
    rescaled = store.rescale_anchored(*row_key, final)
    out = CalibrationOutcome(anchor_ms=final, drift=drift, action=action, rescaled_rows=rescaled, message=msg, **base)
    hist.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **out.to_dict()})
    store.set_meta(hk, json.dumps(hist[-HISTORY_LIMIT:]))
    return out


__all__ = ["AnchorCalibration", "CalibrationOutcome", "DRIFT_TOLERANCE", "history_key", "settle"]
