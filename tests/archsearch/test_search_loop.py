"""Closed-loop search: real measurements on ort-cpu-1t, impossible budgets, accuracy evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwnas.errors import HwnasError, SearchError
from hwnas.archsearch import SearchResult, closed_loop_search, encode_archs
from search_fixtures import RidgeLatency, macs_fn


def _budget(latency_data) -> float:
    _, y = latency_data
    return float(np.quantile(y, 0.45))


def test_closed_loop_on_the_real_device(space, predict_accuracy, predict_latency, refit_latency, ort_measure,
                                        latency_data, measure_calls) -> None:
    budget = _budget(latency_data)
    refits, events = [], []

    def refit(rows):
        refits.append(len(rows))
        return refit_latency(rows)

    n_before = len(measure_calls)
    r = closed_loop_search(
        space, predict_accuracy, predict_latency, refit, ort_measure, f"{budget}ms",
        rounds=2, pop_size=24, n_gen=8, n_verify=3, seed=0, device="ort-cpu-1t", progress=events.append,
    )  # fmt: skip
    assert isinstance(r, SearchResult)
    assert r.best.measured_latency_ms <= budget  # the choice is verified on the device
    assert r.budget_ms == pytest.approx(budget) and r.device == "ort-cpu-1t" and r.supernet == "mbv3_fmnist"
    # measured: the fastest arch first, then up to 3 per round, each a real call to the device
    calls = measure_calls[n_before:]
    assert calls[0] == [space.arch_id(space.min_arch())] and len(calls) == 3
    assert r.measured[0].reason == "fastest" and r.fastest_ms == r.measured[0].measured_latency_ms
    assert 3 <= len(r.measured) <= 7 and len({p.arch_id for p in r.measured}) == len(r.measured)
    assert refits == [len([p for p in r.measured if p.round <= 1])]  # refit between rounds, on all data so far
    assert [s.round for s in r.rounds] == [1, 2] and all(s.predictor_evals > 0 for s in r.rounds)
    assert r.predictor_evals == sum(s.predictor_evals for s in r.rounds) and r.evals_per_s > 0
    # the best is the most accurate measured arch within budget
    ok = [p for p in r.measured if p.measured_latency_ms <= budget]
    assert r.best.predicted_accuracy == max(p.predicted_accuracy for p in ok)
    assert r.accuracy_source == "predicted"
    # front: within the slackened budget, sorted by latency; measured points marked
    assert all(p.predicted_latency_ms <= budget * 1.1 + 1e-9 for p in r.front)
    assert any(p.measured_latency_ms is not None for p in r.front)
    assert {e.stage for e in events} >= {"fastest", "search", "measure", "refit", "done"}
    json.dumps(r.to_dict())  # plain JSON


def test_impossible_budget_names_the_fastest_latency(space, predict_accuracy, predict_latency, refit_latency,
                                                     ort_measure, store) -> None:
    with pytest.raises(SearchError) as ei:
        closed_loop_search(space, predict_accuracy, predict_latency, refit_latency, ort_measure, "1us",
                           rounds=1, pop_size=8, n_gen=2, device="ort-cpu-1t")
    msg = str(ei.value)
    rows = [m for m in store.measurements() if m["arch_id"] == space.arch_id(space.min_arch())]
    fastest = rows[0]["median_ms"]
    assert f"{fastest:.4g} ms" in msg and "ort-cpu-1t" in msg and space.arch_id(space.min_arch()) in msg
    assert isinstance(ei.value, HwnasError) and isinstance(ei.value, ValueError) and "\n" not in msg


class _SlowDevice:
    """A deterministic stand-in device for the loop logic: the fixture latency model x ``factor``."""

    def __init__(self, space, model, factor: float):
        self.space, self.model, self.factor, self.calls = space, model, factor, 0

    def __call__(self, archs):
        self.calls += 1
        return list(self.model(encode_archs(self.space, archs)) * self.factor)


def test_loop_corrects_an_optimistic_predictor(space, config, predict_accuracy, latency_data) -> None:
    X, y = latency_data
    pred = RidgeLatency(config).fit(X, y)
    device = _SlowDevice(space, pred, 1.3)  # the device is 30% slower than predicted
    budget = _budget(latency_data)

    def refit(rows):
        Xr = encode_archs(space, [r["arch"] for r in rows])
        return RidgeLatency(config).fit(np.vstack([X, Xr]), np.concatenate([y * 1.3, [r["latency_ms"] for r in rows]]))

    r = closed_loop_search(space, predict_accuracy, pred, refit, device, budget, rounds=3, pop_size=24, n_gen=8,
                           n_verify=4, seed=1, extra_objectives={"macs": macs_fn(config)})
    assert r.best.measured_latency_ms <= budget
    m1, m3 = r.rounds[0].latency_mape_pct, r.rounds[-1].latency_mape_pct
    assert m1 > 15 and m3 < 5  # the refit learned the device
    assert r.objective_names == ("accuracy", "latency_ms", "macs")
    assert all("macs" in p.objectives for p in r.front)
    # the chosen arch is better than the smallest one
    assert r.best.predicted_accuracy > r.measured[0].predicted_accuracy


def test_loop_with_accuracy_evaluation_and_determinism(space, config, predict_accuracy, latency_data) -> None:
    X, y = latency_data
    pred = RidgeLatency(config).fit(X, y)
    budget = _budget(latency_data)
    evaluated = []

    def evaluate(archs):  # e.g. a real accuracy check on a validation split; here: the proxy minus a penalty
        evaluated.append(len(archs))
        return list(predict_accuracy(encode_archs(space, archs)) - 0.01)

    kw = dict(rounds=2, pop_size=16, n_gen=6, n_verify=3, seed=5, evaluate_accuracy=evaluate, n_evaluate=3)
    a = closed_loop_search(space, predict_accuracy, pred, None, _SlowDevice(space, pred, 1.0), budget, **kw)
    b = closed_loop_search(space, predict_accuracy, pred, None, _SlowDevice(space, pred, 1.0), budget, **kw)
    assert a.accuracy_source == "evaluated" and evaluated == [3, 3]
    assert a.best.evaluated_accuracy == pytest.approx(a.best.predicted_accuracy - 0.01)
    assert a.best.arch_id == b.best.arch_id and [p.arch_id for p in a.front] == [p.arch_id for p in b.front]
    assert a.best.measured_latency_ms <= budget


def test_loop_rejects_bad_callbacks(space, predict_accuracy, predict_latency) -> None:
    with pytest.raises(SearchError, match="one per arch"):
        closed_loop_search(space, predict_accuracy, predict_latency, None, lambda archs: [], 1.0, rounds=1)
    with pytest.raises(SearchError, match="could not be measured"):
        closed_loop_search(space, predict_accuracy, predict_latency, None, lambda archs: [float("nan")] * len(archs),
                           1.0, rounds=1)
    with pytest.raises(SearchError, match="rounds"):
        closed_loop_search(space, predict_accuracy, predict_latency, None, lambda a: [0.1] * len(a), 1.0, rounds=0)
    with pytest.raises(SearchError, match="understood"):
        closed_loop_search(space, predict_accuracy, predict_latency, None, lambda a: [0.1] * len(a), "soon")


def test_select_candidates_brackets_the_budget(space) -> None:
    from hwnas.archsearch.loop import select_candidates
    from hwnas.archsearch.problem import FrontSearch

    lat = np.linspace(0.1, 1.1, 51)  # a front: accuracy rises with latency
    F = np.column_stack([-(0.8 + 0.1 * lat), lat])
    X = np.zeros((51, space.vector_length), dtype=np.int64)
    fs = FrontSearch(X, F, X, F, ("accuracy", "latency_ms"), 1.1, 1, 1, 1, 51, 0, 0.1, 0.0)
    ids = [f"a{i}" for i in range(51)]
    picks = select_candidates(fs, 1.0, {"a50"}, ids, ids, n_verify=6, n_spread=2)
    assert len(picks) == 6 and len({i for _, i, _ in picks}) == 6
    near = [lat[i] for _, i, why in picks if why == "near-budget"]
    spread = [lat[i] for _, i, why in picks if why == "spread"]
    assert len(near) == 4 and min(near) <= 0.85 and max(near) <= 1.1 and any(x <= 1.0 for x in near)
    assert len(spread) == 2 and min(spread) < 0.3  # one from the fast end of the front
    assert 50 not in [i for _, i, _ in picks]  # already measured


def test_device_measure_reports_failed_archs_as_nan(space, store, latency_data) -> None:
    from hwnas.errors import ExportError
    from hwnas.archsearch import device_measure
    from search_settings import FAST

    def build(arch):
        raise ExportError("cannot export this one")

    measure = device_measure(store, "ort-cpu-1t", build, "mbv3_fmnist", space, settings=FAST)
    odd = space.max_arch()
    odd["ks"] = [5] * space.n_blocks  # not measured before: its build fails
    fastest, failed = measure([space.min_arch(), odd])  # the smallest arch comes from the store
    assert fastest > 0 and np.isnan(failed)
