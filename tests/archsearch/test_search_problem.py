"""SubnetProblem, repair/mutation operators, NSGA-II runs and latency-string parsing."""

from __future__ import annotations

import numpy as np
import pytest
from pymoo.core.population import Population

from hwnas.errors import HwnasError, SearchError
from hwnas.archsearch import (
    CanonicalRepair,
    CategoricalMutation,
    SubnetProblem,
    canonicalize,
    make_nsga2,
    parse_latency,
    search_front,
)
from hwnas.archsearch.problem import CountingFn, nondominated
from search_fixtures import macs_fn


@pytest.mark.parametrize(
    "text, ms",
    [("5ms", 5.0), ("0.8ms", 0.8), ("0.8 ms", 0.8), ("500us", 0.5), ("500µs", 0.5), ("0.005s", 5.0),
     ("2", 2.0), (3, 3.0), (1.5, 1.5), ("1e-1ms", 0.1), ("5MS", 5.0)],
)
def test_parse_latency(text, ms) -> None:
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "5 kg", "-1ms", "0ms", "ms", "nan", True, float("inf"), 0])
def test_parse_latency_rejects(text) -> None:
    with pytest.raises(SearchError) as ei:
        parse_latency(text)
    assert isinstance(ei.value, HwnasError) and isinstance(ei.value, ValueError)
    assert "\n" not in str(ei.value) and "ms" in str(ei.value)


def test_canonicalize_matches_arch_space(space) -> None:
    rng = np.random.default_rng(0)
    X = rng.integers(-2, 5, size=(300, space.vector_length)).astype(float) + rng.normal(0, 0.3, (300, space.vector_length))
    C = canonicalize(space, X)
    assert C.dtype == np.int64 and C.min() >= 0 and np.all(C <= space.vector_upper)
    for x, c in zip(X, C):
        a = space.decode(np.clip(np.rint(x), 0, space.vector_upper).astype(int))
        assert np.array_equal(space.encode(space.canonical(a)), c)
        space.normalize(space.decode(c))  # valid arch: raises ArchError otherwise
    assert np.array_equal(canonicalize(space, C), C)  # idempotent
    # two archs differing only in ignored slots become one row
    a = space.min_arch()
    b = dict(a, ks=[3 if j % space.max_depth == 0 else 7 for j in range(space.n_blocks)])  # depth 1: slots 1.. ignored
    assert space.arch_id(a) == space.arch_id(b)
    assert np.array_equal(canonicalize(space, space.encode(a)), canonicalize(space, space.encode(b)))


def test_repair_and_mutation_yield_valid_archs(space, predict_accuracy, predict_latency) -> None:
    problem = SubnetProblem(space, predict_accuracy, predict_latency)
    rng = np.random.default_rng(1)
    X = rng.uniform(-3, 6, size=(64, space.vector_length))
    R = CanonicalRepair()._do(problem, X)
    assert np.array_equal(R, canonicalize(space, X))
    mut = CategoricalMutation(prob_var=0.3)
    base = canonicalize(space, rng.integers(0, space.vector_upper + 1, size=(200, space.vector_length)))
    M = mut._do(problem, base, random_state=np.random.default_rng(2))
    changed = M != base
    assert changed.any() and np.all(M >= 0) and np.all(M <= space.vector_upper)
    assert 0.2 < changed.mean() < 0.4  # every selected gene moves to another choice
    pop = mut.do(problem, Population.new(X=base.copy()), random_state=np.random.default_rng(3))
    for x in CanonicalRepair().do(problem, pop).get("X"):
        space.normalize(space.decode(x))


def test_problem_evaluates_population_in_one_call(space, predict_accuracy, predict_latency, config) -> None:
    acc = CountingFn(predict_accuracy, "acc")
    lat = CountingFn(predict_latency, "lat")
    macs = CountingFn(macs_fn(config), "macs")
    problem = SubnetProblem(space, acc, lat, budget_ms=0.3, extra_objectives={"macs": macs})
    X = np.random.default_rng(0).integers(0, space.vector_upper + 1, size=(50, space.vector_length))
    out = problem.evaluate(X, return_as_dictionary=True)
    assert (acc.calls, lat.calls, macs.calls) == (1, 1, 1) and acc.rows == 50
    assert out["F"].shape == (50, 3) and out["G"].shape == (50, 1)
    C = canonicalize(space, X)
    assert np.allclose(out["F"][:, 0], -predict_accuracy(C)) and np.allclose(out["F"][:, 1], predict_latency(C))
    assert np.allclose(out["G"][:, 0], predict_latency(C) - 0.3)
    assert problem.n_var == space.vector_length and np.array_equal(problem.xu, space.vector_upper)
    assert np.all(problem.xl == 0) and problem.vtype is int

    # a whole NSGA-II run: one call per generation per predictor, never per arch
    acc2 = CountingFn(predict_accuracy, "acc")
    r = search_front(space, acc2, predict_latency, pop_size=20, n_gen=6, seed=0)
    assert acc2.calls == r.n_calls == 6 and acc2.rows == r.n_evals
    assert r.n_evals <= 20 * 6


def test_nsga2_front_is_nondominated_and_within_budget(space, predict_accuracy, predict_latency, latency_data) -> None:
    _, y = latency_data
    budget = float(np.quantile(y, 0.4))
    r = search_front(space, predict_accuracy, predict_latency, budget_ms=budget, pop_size=32, n_gen=15, seed=3)
    assert r.feasible and len(r.X) >= 3
    assert np.all(r.latency_ms <= budget)
    assert np.allclose(r.latency_ms, predict_latency(r.X)) and np.allclose(r.accuracy, predict_accuracy(r.X))
    assert len(nondominated(r.F)) == len(r.F)  # nobody in the front dominates anybody
    assert np.all(np.diff(r.latency_ms) >= 0)
    # canonical, duplicate-free population
    assert np.array_equal(canonicalize(space, r.population_X), r.population_X)
    assert len(np.unique(r.population_X, axis=0)) == len(r.population_X)
    # the smallest arch is seeded, so the front reaches the fastest end
    assert r.latency_ms.min() <= predict_latency(canonicalize(space, space.encode(space.min_arch())))[0] + 1e-9
    # without a budget the front extends past it
    free = search_front(space, predict_accuracy, predict_latency, pop_size=32, n_gen=15, seed=3)
    assert free.latency_ms.max() > budget and free.accuracy.max() > r.accuracy.max()
    d = r.to_dict()
    assert d["n_evals"] == r.n_evals and len(d["X"]) == len(r.X)


def test_nsga2_is_deterministic_with_a_seed(space, predict_accuracy, predict_latency, config) -> None:
    kw = dict(pop_size=24, n_gen=8, budget_ms=0.3, extra_objectives={"macs": macs_fn(config)})
    a = search_front(space, predict_accuracy, predict_latency, seed=7, **kw)
    b = search_front(space, predict_accuracy, predict_latency, seed=7, **kw)
    c = search_front(space, predict_accuracy, predict_latency, seed=8, **kw)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.F, b.F) and a.n_evals == b.n_evals
    assert a.objective_names == ("accuracy", "latency_ms", "macs") and a.F.shape[1] == 3
    assert not np.array_equal(a.population_X, c.population_X)


def test_two_point_crossover_and_bad_settings(space, predict_accuracy, predict_latency) -> None:
    r = search_front(space, predict_accuracy, predict_latency, pop_size=16, n_gen=4, seed=0, crossover="two-point")
    assert len(r.X) >= 1
    with pytest.raises(SearchError, match="uniform, two-point"):
        make_nsga2(space, 16, crossover="sbx")
    with pytest.raises(SearchError, match="positive"):
        SubnetProblem(space, predict_accuracy, predict_latency, budget_ms=-1)
    with pytest.raises(SearchError, match="one per row"):
        search_front(space, lambda X: np.zeros(3), predict_latency, pop_size=8, n_gen=2)
    with pytest.raises(SearchError, match="non-finite"):
        search_front(space, lambda X: np.full(len(X), np.nan), predict_latency, pop_size=8, n_gen=2)
