"""Baselines (random search, OFA-style evolution) at equal predictor evaluations, compared by HV."""

from __future__ import annotations

import numpy as np
import pytest

from hwnas.archsearch import (
    evolution_search,
    evolution_sweep,
    hypervolume,
    nsga2_front,
    random_search,
    reference_point,
    sweep_budgets,
)
from hwnas.archsearch.problem import nondominated


def test_hypervolume_known_values() -> None:
    # one point at (acc 0.9, 1 ms) against ref (acc 0.8, 2 ms): a 0.1 x 1 box
    assert hypervolume([0.9], [1.0], 0.8, 2.0) == pytest.approx(0.1)
    assert hypervolume([0.9, 0.85], [1.0, 0.5], 0.8, 2.0) == pytest.approx(0.1 + 0.05 * 0.5)
    assert hypervolume([0.7], [1.0], 0.8, 2.0) == 0.0  # outside the box
    assert hypervolume([], [], 0.8, 2.0) == 0.0
    # normalized: the whole box is 1
    assert hypervolume([1.0], [0.0], 0.8, 2.0, ideal_accuracy=1.0, ideal_latency_ms=0.0) == pytest.approx(1.0)


def test_baselines_make_fronts_at_equal_evaluations(space, predict_accuracy, predict_latency) -> None:
    ns = nsga2_front(space, predict_accuracy, predict_latency, pop_size=24, n_gen=10, seed=0)
    n = ns.n_evals
    rnd = random_search(space, predict_accuracy, predict_latency, n, seed=0)
    ref = reference_point(space, predict_accuracy, predict_latency)
    budgets = sweep_budgets(ref["ideal_latency_ms"] + 1e-3, ref["ref_latency_ms"], 4)
    evo = evolution_sweep(space, predict_accuracy, predict_latency, budgets, n, seed=0, population_size=20)
    arc = evolution_sweep(space, predict_accuracy, predict_latency, budgets, n, seed=0, population_size=20,
                          use_archive=True)
    hv = {}
    for f in (ns, rnd, evo, arc):
        assert f.n_evals == n, f.method  # the same number of predictor evaluations
        assert len(f.X) >= 1
        assert len(nondominated(np.column_stack([-f.accuracy, f.latency_ms]))) == len(f.X)
        assert np.allclose(f.accuracy, predict_accuracy(f.X)) and np.allclose(f.latency_ms, predict_latency(f.X))
        hv[f.method] = hypervolume(f.accuracy, f.latency_ms, **ref)
        assert 0 < hv[f.method] < 1
        assert f.to_dict()["method"] == f.method
    assert len(evo.X) <= len(budgets)
    assert hv["evolution-sweep-archive"] >= hv["evolution-sweep"] - 1e-12  # the archive contains the winners


def test_evolution_respects_the_budget_and_is_seeded(space, predict_accuracy, predict_latency, latency_data) -> None:
    _, y = latency_data
    budget = float(np.quantile(y, 0.4))
    a = evolution_search(space, predict_accuracy, predict_latency, budget, 600, seed=3, population_size=30)
    b = evolution_search(space, predict_accuracy, predict_latency, budget, 600, seed=3, population_size=30)
    assert a.x is not None and a.latency_ms <= budget and a.n_evals == 600 and a.generations >= 2
    assert np.array_equal(a.x, b.x) and a.accuracy == b.accuracy
    assert np.all(a.archive_latency_ms <= budget) and a.accuracy == pytest.approx(a.archive_accuracy.max())
    rnd = random_search(space, predict_accuracy, predict_latency, 600, seed=3, budget_ms=budget)
    assert np.all(rnd.latency_ms <= budget)
    # an impossible budget: nothing feasible, no crash
    none = evolution_search(space, predict_accuracy, predict_latency, 1e-6, 50, seed=0)
    assert none.x is None and none.n_evals == 50
