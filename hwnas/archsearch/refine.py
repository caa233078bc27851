"""Close the budget: after the NSGA-II front, a constrained single-objective search for one budget.

``refine_for_budget`` maximizes predicted accuracy subject to predicted latency <= ``budget_ms``,
starting from given gene rows (typically the front points near the budget).  Each generation it
keeps the most accurate feasible archs seen so far as parents (elitist), and makes one batch of
children, evaluated with a single call to each predictor:

* the complete one-gene neighbourhood of the current best (every other choice of every gene):
  a deterministic hill-climbing step, which is what walks a front point up to the budget;
* categorical mutations of the parents (``CategoricalMutation`` of ``problem.py``: each gene
  resampled to a different choice with probability ``mutation_prob_var``; by default half the
  mutants at 1/L and half at 3/L);
* uniform crossovers of two parents.

Children are canonicalized (``canonicalize``); archs already evaluated are never evaluated again.
Infeasible children are discarded but counted.  The run stops after ``n_evals`` archs or
``time_s`` seconds, whichever comes first; with ``n_evals`` alone it is deterministic for a seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hwnas.archsearch.problem import CategoricalMutation, CountingFn, SubnetProblem, VectorFn, canonicalize
from hwnas.errors import SearchError
from hwnas.supernet.family import SearchSpace

DEFAULT_REFINE_EVALS = 20_000


@dataclass(frozen=True, eq=False)
class Refinement:
    """The outcome of ``refine_for_budget``.

    ``x``/``accuracy``/``latency_ms``: the most accurate feasible arch found (``x`` is ``None`` when
    nothing evaluated was within budget).  ``X``/``accuracies``/``latencies_ms``: the ``n_keep`` most
    accurate distinct feasible archs, best first.  ``seed_accuracy``: the best feasible seed row's
    predicted accuracy (``None`` if no seed row was within budget).  ``n_evals`` counts every arch
    passed to the predictors (seed rows included), ``n_calls`` the predictor calls (each predictor).
    """

    budget_ms: float
    x: np.ndarray | None
    accuracy: float | None
    latency_ms: float | None
    X: np.ndarray
    accuracies: np.ndarray
    latencies_ms: np.ndarray
    seed_accuracy: float | None
    n_evals: int
    n_calls: int
    generations: int
    wall_s: float
    seed: int

    @property
    def gain(self) -> float | None:
        """Predicted accuracy gained over the best feasible seed."""
        if self.accuracy is None or self.seed_accuracy is None:
            return None
        return self.accuracy - self.seed_accuracy

    def to_dict(self) -> dict:
        return {
            "budget_ms": self.budget_ms,
            "x": None if self.x is None else np.asarray(self.x).tolist(),
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
            "X": np.asarray(self.X).tolist(),
            "accuracies": np.asarray(self.accuracies).tolist(),
            "latencies_ms": np.asarray(self.latencies_ms).tolist(),
            "seed_accuracy": self.seed_accuracy,
            "n_evals": self.n_evals,
            "n_calls": self.n_calls,
            "generations": self.generations,
            "wall_s": self.wall_s,
            "seed": self.seed,
        }


def refine_for_budget(
    space: SearchSpace,
    predict_accuracy: VectorFn,
    predict_latency: VectorFn,
    budget_ms: float,
    seeds_X: np.ndarray | None = None,
    *,
    n_evals: int | None = None,
    time_s: float | None = None,
    seed: int = 0,
    n_parents: int = 16,
    batch: int = 512,
    mutation_prob_var: float | None = None,
    n_keep: int = 5,
) -> Refinement:
    """Maximize predicted accuracy s.t. predicted latency <= ``budget_ms``, seeded from ``seeds_X``.

    ``seeds_X``: gene rows to start from (e.g. the front points near the budget); the smallest arch
    of the space is always added, so a feasible start exists whenever anything is feasible.  Stops
    after ``n_evals`` predicted archs (default ``DEFAULT_REFINE_EVALS`` when ``time_s`` is not given)
    or ``time_s`` seconds, whichever first.  Never returns an arch predicted over ``budget_ms``.
    """
    if not (np.isfinite(budget_ms) and budget_ms > 0):
        raise SearchError(f"latency budget must be a positive number of ms; got {budget_ms!r}")
    if n_evals is None and time_s is None:
        n_evals = DEFAULT_REFINE_EVALS
    if n_evals is not None and int(n_evals) < 1:
        raise SearchError(f"n_evals must be at least 1; got {n_evals}")
    if time_s is not None and not time_s > 0:
        raise SearchError(f"time_s must be positive; got {time_s}")
    if n_parents < 1 or batch < 1:
        raise SearchError(f"n_parents and batch must be at least 1; got {n_parents}, {batch}")
    t0 = time.perf_counter()
    budget = float(budget_ms)
    max_evals = None if n_evals is None else int(n_evals)
    acc_fn = CountingFn(predict_accuracy, "predict_accuracy")
    lat_fn = CountingFn(predict_latency, "predict_latency")
    problem = SubnetProblem(space, acc_fn, lat_fn)  # bounds for the mutation operator
    # small steps (one gene on average) and larger jumps (three genes), half the mutants each
    mutations = ([CategoricalMutation(prob_var=mutation_prob_var)] if mutation_prob_var is not None else
                 [CategoricalMutation(prob_var=1.0 / space.vector_length),
                  CategoricalMutation(prob_var=min(0.5, 3.0 / space.vector_length))])
    mutation = mutations[-1]
    rng = np.random.default_rng(seed)
    L = space.vector_length
    upper = np.asarray(space.vector_upper, dtype=np.int64)

    seen: set[bytes] = set()
    # feasible archive (kept sorted by accuracy, best first; at most a few hundred rows)
    keep = max(n_parents, int(n_keep), 1) * 4
    FX = np.zeros((0, L), dtype=np.int64)
    FA = np.zeros(0)
    FL = np.zeros(0)
    n_done = 0

    def out_of_budget() -> bool:
        if max_evals is not None and n_done >= max_evals:
            return True
        return time_s is not None and time.perf_counter() - t0 >= time_s

    def evaluate(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Evaluate the not-yet-seen rows of ``X`` (canonical), within the evaluation budget."""
        nonlocal n_done
        X = canonicalize(space, X).astype(np.int64)
        if len(X) == 0:
            return X, np.zeros(0), np.zeros(0)
        X = np.unique(X, axis=0)  # sorted: deterministic
        new = np.fromiter((r.tobytes() not in seen for r in X), dtype=bool, count=len(X))
        X = X[new]
        if max_evals is not None:
            X = X[: max(0, max_evals - n_done)]
        if len(X) == 0:
            return X, np.zeros(0), np.zeros(0)
        seen.update(r.tobytes() for r in X)
        a = acc_fn(X)
        lt = lat_fn(X)
        n_done += len(X)
        return X, a, lt

    def absorb(X: np.ndarray, a: np.ndarray, lt: np.ndarray) -> None:
        nonlocal FX, FA, FL
        ok = lt <= budget
        if not ok.any():
            return
        FX = np.concatenate([FX, X[ok]])
        FA = np.concatenate([FA, a[ok]])
        FL = np.concatenate([FL, lt[ok]])
        order = np.lexsort((FL, -FA))[:keep]  # most accurate first, then faster
        FX, FA, FL = FX[order], FA[order], FL[order]

    # ---- seeds
    start = [canonicalize(space, space.encode(space.min_arch())[None, :])]
    if seeds_X is not None and len(np.atleast_2d(seeds_X)):
        start.insert(0, canonicalize(space, np.atleast_2d(np.asarray(seeds_X))))
    X0, a0, l0 = evaluate(np.concatenate(start).astype(np.int64))
    seed_ok = l0 <= budget
    seed_acc = float(a0[seed_ok].max()) if seed_ok.any() else None
    if seeds_X is None or not len(np.atleast_2d(seeds_X)):
        seed_acc = None
    absorb(X0, a0, l0)

    # ---- offspring generations
    gens = 0
    # the one-gene neighbourhood offsets: for each gene g and shift s in 1..n_g-1
    offs = [(g, s) for g in range(L) for s in range(1, int(upper[g]) + 1)]
    neigh_g = np.array([g for g, _ in offs], dtype=np.int64)
    neigh_s = np.array([s for _, s in offs], dtype=np.int64)
    while not out_of_budget():
        if len(FX) == 0:  # nothing feasible yet: random restarts
            kids = rng.integers(0, upper + 1, size=(batch, L))
        else:
            parents = FX[:n_parents]
            parts = []
            # full one-gene neighbourhood of the best (and of the next ones when they were already explored)
            for row in FX[: min(len(FX), 4)]:
                nb = np.repeat(row[None, :], len(offs), axis=0)
                nb[np.arange(len(offs)), neigh_g] = (row[neigh_g] + neigh_s) % (upper[neigh_g] + 1)
                parts.append(nb)
            n_rest = max(0, batch - sum(len(p) for p in parts))
            n_mut = n_rest // 2
            n_cx = n_rest - n_mut
            if n_mut:
                base = parents[rng.integers(0, len(parents), size=n_mut)]
                for j, op in enumerate(mutations):
                    parts.append(op._do(problem, base[j::len(mutations)], random_state=rng))
            if n_cx:
                pa = parents[rng.integers(0, len(parents), size=n_cx)]
                pb = parents[rng.integers(0, len(parents), size=n_cx)]
                child = np.where(rng.random(pa.shape) < 0.5, pa, pb)
                # a crossover of near-identical parents adds little: mutate one gene on top, sometimes
                parts.append(mutation._do(problem, child, random_state=rng) if gens % 2 else child)
            kids = np.concatenate(parts)
        X, a, lt = evaluate(kids)
        gens += 1
        if len(X) == 0:
            if max_evals is not None and n_done >= max_evals:
                break
            # everything proposed was seen before: force exploration with random archs
            X, a, lt = evaluate(rng.integers(0, upper + 1, size=(batch, L)))
            if len(X) == 0:
                break
        absorb(X, a, lt)

    wall = time.perf_counter() - t0
    k = min(len(FX), max(1, int(n_keep)))
    if len(FX) == 0:
        return Refinement(budget, None, None, None, FX[:0], FA[:0], FL[:0], seed_acc, n_done, acc_fn.calls, gens,
                          wall, int(seed))
    return Refinement(budget, FX[0].copy(), float(FA[0]), float(FL[0]), FX[:k].copy(), FA[:k].copy(), FL[:k].copy(),
                      seed_acc, n_done, acc_fn.calls, gens, wall, int(seed))


def near_budget_rows(X: np.ndarray, latency_ms: np.ndarray, budget_ms: float, k: int = 8) -> np.ndarray:
    """The ``k`` rows of a front nearest ``budget_ms`` in log latency, those within budget first."""
    X = np.atleast_2d(np.asarray(X))
    lat = np.asarray(latency_ms, dtype=float).reshape(-1)
    if len(X) == 0:
        return X
    d = np.abs(np.log(np.maximum(lat, 1e-12) / budget_ms))
    order = np.lexsort((d, lat > budget_ms))
    return X[order[:k]]


__all__ = ["DEFAULT_REFINE_EVALS", "Refinement", "near_budget_rows", "refine_for_budget"]
