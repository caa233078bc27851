"""Budget refinement after the NSGA-II front: within budget, at least the front's best, deterministic, counted."""

from __future__ import annotations

import numpy as np
import pytest

from hwnas.archsearch import near_budget_rows, refine_for_budget, search_front
from hwnas.archsearch.problem import CountingFn
from hwnas.errors import SearchError


def _budget(latency_data) -> float:
    _, y = latency_data
    return float(np.quantile(y, 0.45))


@pytest.fixture(scope="module")
def front_and_budget(space, predict_accuracy, predict_latency, latency_data):
    budget = _budget(latency_data)
    fr = search_front(space, predict_accuracy, predict_latency, budget_ms=budget * 1.1, pop_size=24, n_gen=8, seed=0)
    return fr, budget


def test_refinement_stays_within_budget_and_beats_the_front(space, predict_accuracy, predict_latency,
                                                            front_and_budget) -> None:
    fr, budget = front_and_budget
    r = refine_for_budget(space, predict_accuracy, predict_latency, budget,
                          near_budget_rows(fr.X, fr.latency_ms, budget), n_evals=3000, seed=0)
    assert r.x is not None and r.latency_ms <= budget
    assert np.all(r.latencies_ms <= budget) and r.accuracies[0] == r.accuracy
    # a fresh prediction of the returned arch agrees: it is really within budget
    assert float(predict_latency(r.x[None, :])[0]) <= budget
    assert float(predict_accuracy(r.x[None, :])[0]) == pytest.approx(r.accuracy)
    ok = fr.latency_ms <= budget
    assert ok.any() and r.accuracy >= fr.accuracy[ok].max() - 1e-12
    assert r.seed_accuracy is not None and r.gain >= 0


def test_refinement_is_deterministic_and_counts_its_evaluations(space, predict_accuracy, predict_latency,
                                                                front_and_budget) -> None:
    fr, budget = front_and_budget
    seeds = near_budget_rows(fr.X, fr.latency_ms, budget)
    pa, pl = CountingFn(predict_accuracy, "a"), CountingFn(predict_latency, "l")
    a = refine_for_budget(space, pa, pl, budget, seeds, n_evals=1500, seed=3)
    assert a.n_evals == pa.rows == pl.rows and a.n_calls == pa.calls == pl.calls and 0 < a.n_evals <= 1500
    b = refine_for_budget(space, predict_accuracy, predict_latency, budget, seeds, n_evals=1500, seed=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.X, b.X) and a.n_evals == b.n_evals
    assert a.accuracy == b.accuracy and a.generations == b.generations


def test_refinement_time_target_and_impossible_budget(space, predict_accuracy, predict_latency, front_and_budget) -> None:
    fr, budget = front_and_budget
    r = refine_for_budget(space, predict_accuracy, predict_latency, budget, fr.X, time_s=0.3, seed=0)
    assert r.x is not None and r.latency_ms <= budget and r.wall_s < 2.0
    none = refine_for_budget(space, predict_accuracy, predict_latency, 1e-6, None, n_evals=200, seed=0)
    assert none.x is None and none.accuracy is None and none.n_evals == 200 and len(none.X) == 0
    with pytest.raises(SearchError):
        refine_for_budget(space, predict_accuracy, predict_latency, -1.0, None)


def test_search_front_time_target(space, predict_accuracy, predict_latency) -> None:
    r = search_front(space, predict_accuracy, predict_latency, pop_size=16, time_s=0.3, seed=0)
    assert r.n_gen >= 1 and r.n_evals > 0 and r.wall_s < 2.0
    capped = search_front(space, predict_accuracy, predict_latency, pop_size=16, n_gen=3, time_s=30, seed=0)
    assert capped.n_gen == 3


def test_loop_counts_the_refinement_and_keeps_the_front(space, config, predict_accuracy, latency_data) -> None:
    from hwnas.archsearch import closed_loop_search
    from search_fixtures import RidgeLatency
    from test_search_loop import _SlowDevice

    X, y = latency_data
    pred = RidgeLatency(config).fit(X, y)
    budget = _budget(latency_data)
    kw = dict(rounds=1, pop_size=16, n_gen=6, n_verify=3, seed=2)
    off = closed_loop_search(space, predict_accuracy, pred, None, _SlowDevice(space, pred, 1.0), budget, refine=False, **kw)
    on = closed_loop_search(space, predict_accuracy, pred, None, _SlowDevice(space, pred, 1.0), budget,
                            refine_evals=2000, **kw)
    s = on.rounds[0]
    assert 0 < s.refine_evals <= 2000 and s.predictor_evals == off.rounds[0].predictor_evals + s.refine_evals
    assert on.predictor_evals == s.predictor_evals and off.rounds[0].refine_evals == 0
    assert s.refined_accuracy >= s.front_best_accuracy and s.refined_latency_ms <= budget
    assert any(p.reason == "refined" for p in on.measured)
    # the front keeps every point the refinement does not dominate: its hypervolume cannot drop
    from hwnas.archsearch import hypervolume

    ref = dict(ref_accuracy=0.0, ref_latency_ms=10.0)
    hv = lambda r: hypervolume([p.predicted_accuracy for p in r.front], [p.predicted_latency_ms for p in r.front], **ref)  # noqa: E731
    assert hv(on) >= hv(off) - 1e-12
    assert on.best.predicted_accuracy >= off.best.predicted_accuracy - 1e-12  # the device is the predictor here
