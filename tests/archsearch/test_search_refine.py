"""Budget refinement after the NSGA-II front: within budget, at least the front's best, deterministic, counted."""

from __future__ import annotations

import numpy as np
import pytest

from hwnas.archsearch import canonicalize, near_budget_rows, refine_for_budget, search_front
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


# ---------------------------------------------------------------------------------------------
# a small space that can be enumerated: the exact constrained optimum is known
# ---------------------------------------------------------------------------------------------
class _ToySpace:
    """Two stages of up to three blocks (a width gene per block slot, a depth gene per stage) and a
    resolution gene: 9 ternary genes, slots beyond a stage's depth inactive (canonical choice 0),
    like the mbv3 space.  Only what the search calls is implemented."""

    name = "toy"
    n_slots, n_stages = 6, 2
    vector_upper = np.full(9, 2, dtype=np.int64)
    vector_length = 9

    def _ignored(self, X):
        depth = X[:, 6:8] + 1  # (N, 2)
        return (np.arange(3)[None, None, :] >= depth[:, :, None]).reshape(len(X), 6)

    def canonicalize(self, X):
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            return self.canonicalize(X[None, :])[0]
        Xi = np.clip(np.rint(X), 0, self.vector_upper).astype(np.int64)
        Xi[:, :6][self._ignored(Xi)] = 0
        return Xi

    def active_genes(self, X):
        X = np.asarray(X, dtype=np.int64)
        act = np.ones(X.shape, dtype=bool)
        act[:, :6] = ~self._ignored(X)
        return act

    def encode(self, arch):
        return np.asarray(arch["x"], dtype=np.int64)

    def min_arch(self):
        return {"x": [0] * 9}


def _toy_problem(seed: int = 0):
    """Additive accuracy with interactions (wider blocks help less at low resolution, a deeper
    stage helps only with wide blocks) and a latency that grows with width x resolution."""
    rng = np.random.default_rng(seed)
    space = _ToySpace()
    wa = rng.uniform(0.2, 1.0, size=(6, 3)).cumsum(axis=1)  # accuracy of each width choice per slot
    wl = rng.uniform(0.5, 1.5, size=(6, 3)).cumsum(axis=1)  # latency of each width choice per slot
    res_a, res_l = np.array([0.0, 1.2, 2.0]), np.array([1.0, 1.4, 1.9])

    def accuracy(X):
        X = space.canonicalize(np.atleast_2d(X))
        act = space.active_genes(X)[:, :6]
        blocks = np.where(act, wa[np.arange(6), X[:, :6]], 0.0)
        inter = 0.3 * (X[:, :6] * act).sum(axis=1) * X[:, 8] / 2.0
        return blocks.sum(axis=1) * (1.0 + 0.1 * X[:, 8]) + res_a[X[:, 8]] + inter - 0.05 * (blocks ** 2).sum(axis=1)

    def latency(X):
        X = space.canonicalize(np.atleast_2d(X))
        act = space.active_genes(X)[:, :6]
        return (np.where(act, wl[np.arange(6), X[:, :6]], 0.0).sum(axis=1) + 1.0) * res_l[X[:, 8]]

    grid = np.stack(np.meshgrid(*[np.arange(3)] * 9, indexing="ij"), -1).reshape(-1, 9)
    grid = np.unique(space.canonicalize(grid), axis=0)
    return space, accuracy, latency, grid


def _toy_optimum(accuracy, latency, grid, budget):
    a, lt = accuracy(grid), latency(grid)
    ok = lt <= budget
    i = np.flatnonzero(ok)[np.argmax(a[ok])]
    return grid[i], float(a[i])


@pytest.mark.parametrize("quantile", [0.15, 0.4, 0.7])
def test_refinement_reaches_the_exact_optimum_of_an_enumerable_space(quantile) -> None:
    space, accuracy, latency, grid = _toy_problem()
    budget = float(np.quantile(latency(grid), quantile))
    x_opt, a_opt = _toy_optimum(accuracy, latency, grid, budget)
    # from the smallest arch alone (no front), evaluating a third of the space
    r = refine_for_budget(space, accuracy, latency, budget, None, n_evals=len(grid) // 3, seed=0, batch=128)
    assert r.n_evals <= len(grid) // 3
    assert r.accuracy == pytest.approx(a_opt) and np.array_equal(r.x, x_opt)
    assert r.latency_ms <= budget and float(latency(r.x)[0]) <= budget
    # the non-dominated set of what it evaluated: within budget, sorted, nothing dominated
    pa_, pl_ = r.pareto_accuracies, r.pareto_latencies_ms
    assert len(pa_) >= 1 and pa_[0] == r.accuracy and np.all(pl_ <= budget)
    assert np.all(np.diff(pa_) < 0) and np.all(np.diff(pl_) < 0)
    assert np.allclose(accuracy(r.pareto_X), pa_) and np.allclose(latency(r.pareto_X), pl_)


def test_refinement_is_deterministic_and_never_over_budget_on_the_toy_space() -> None:
    space, accuracy, latency, grid = _toy_problem(seed=1)
    lat = latency(grid)
    for q in (0.05, 0.3, 0.6, 0.95):
        budget = float(np.quantile(lat, q))
        seeds = grid[np.argsort(np.abs(lat - budget))[:6]]  # near the budget, over it too
        runs = [refine_for_budget(space, accuracy, latency, budget, seeds, n_evals=700, seed=5, batch=64)
                for _ in range(2)]
        a, b = runs
        assert np.array_equal(a.x, b.x) and np.array_equal(a.X, b.X) and np.array_equal(a.pareto_X, b.pareto_X)
        assert a.n_evals == b.n_evals <= 700 and a.generations == b.generations
        assert np.all(latency(a.X) <= budget) and np.all(a.latencies_ms <= budget) and np.all(latency(a.pareto_X) <= budget)
        assert a.seed_accuracy is not None and a.accuracy >= a.seed_accuracy


def test_row_keys_and_activation_variants(space) -> None:
    from hwnas.archsearch.refine import RowKeys, _activation_variants, neighbourhood_moves

    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, size=(500, space.vector_length))
    keys = RowKeys(space.vector_upper)
    assert keys.int_keys
    k = keys(X)
    assert len(np.unique(k)) == len(np.unique(X, axis=0))
    # numeric order of the keys is the lexicographic order of the rows
    assert np.array_equal(np.unique(X, axis=0), X[np.argsort(k, kind="stable")][np.unique(np.sort(k), return_index=True)[1]])
    big = RowKeys(np.full(64, 2))  # 3**64 rows: no int64 key, the row bytes instead
    Xb = rng.integers(0, 3, size=(50, 64))
    assert not big.int_keys and len(set(big(np.concatenate([Xb, Xb])).tolist())) == len(np.unique(Xb, axis=0))
    # the one-gene moves come first; then every pair of distinct genes
    g, s = neighbourhood_moves(space.vector_upper, 2)
    L = space.vector_length
    assert len(g) == 2 * L + 4 * L * (L - 1) // 2 and np.all(s[: 2 * L, 1] == 0)
    # a deeper stage: its new block at every kernel x expand combination (9), not only the smallest
    x = canonicalize(space, space.encode(space.min_arch())[None, :])
    nb, ns = space.n_blocks, space.n_stages
    y = x.copy()
    y[0, 2 * nb] = 1  # stage 0: one block deeper
    y = canonicalize(space, y)
    newly = space.active_genes(y) & ~space.active_genes(x)
    assert newly.sum() == 2  # the new block's kernel and expand genes
    V = _activation_variants(y, newly, space.vector_upper + 1, rng, 9)
    assert len(np.unique(V, axis=0)) == 9 and np.all(V[:, ~newly[0]] == y[0, ~newly[0]])
