"""Baselines for the NSGA-II search, at an equal number of predictor evaluations.

* ``random_search``: uniform random archs, keep the non-dominated set.
* ``evolution_search``: Once-for-All's ``EvolutionFinder``: single objective (maximize predicted
  accuracy subject to predicted latency <= budget); a population of feasible archs, the best
  ``parent_ratio`` kept as parents, children by per-gene resampling mutation and uniform crossover,
  infeasible children rejected.  ``evolution_sweep`` runs it for several budgets to get a front.
* ``nsga2_front``: the NSGA-II run of ``search_front`` in the same shape, for comparison.

Every arch handed to the predictors counts as one evaluation, rejected ones included, as in
``SubnetProblem``.  Fronts are compared by ``hypervolume`` (pymoo's ``HV``) with a fixed
reference point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from pymoo.indicators.hv import HV

from hwnas.errors import SearchError
from hwnas.archsearch.problem import VectorFn, canonicalize, nondominated, search_front
from hwnas.supernet.family import SearchSpace


@dataclass(frozen=True, eq=False)
class BaselineFront:
    """A method's front (non-dominated in (-accuracy, latency)), sorted by latency."""

    method: str
    X: np.ndarray
    accuracy: np.ndarray
    latency_ms: np.ndarray
    n_evals: int
    wall_s: float
    seed: int
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "X": np.asarray(self.X).tolist(),
            "accuracy": np.asarray(self.accuracy).tolist(),
            "latency_ms": np.asarray(self.latency_ms).tolist(),
            "n_evals": self.n_evals,
            "wall_s": self.wall_s,
            "seed": self.seed,
            "info": dict(self.info),
        }


class _Budgeted:
    """Evaluate batches on both predictors until ``n_evals`` archs have been evaluated."""

    def __init__(self, pa: VectorFn, pl: VectorFn, n_evals: int):
        if n_evals < 1:
            raise SearchError(f"n_evals must be at least 1; got {n_evals}")
        self.pa, self.pl, self.n_max = pa, pl, int(n_evals)
        self.n = 0
        self.X: list[np.ndarray] = []
        self.acc: list[np.ndarray] = []
        self.lat: list[np.ndarray] = []

    @property
    def remaining(self) -> int:
        return self.n_max - self.n

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = X[: self.remaining]
        if len(X) == 0:
            return X, np.zeros(0), np.zeros(0)
        acc = np.asarray(self.pa(X), dtype=float).reshape(-1)
        lat = np.asarray(self.pl(X), dtype=float).reshape(-1)
        self.n += len(X)
        self.X.append(X)
        self.acc.append(acc)
        self.lat.append(lat)
        return X, acc, lat

    def archive(self, budget_ms: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.X:
            return np.zeros((0, 0), dtype=np.int64), np.zeros(0), np.zeros(0)
        X, a, lt = np.concatenate(self.X), np.concatenate(self.acc), np.concatenate(self.lat)
        if budget_ms is not None:
            m = lt <= budget_ms
            X, a, lt = X[m], a[m], lt[m]
        return X, a, lt


def _front(method: str, X: np.ndarray, acc: np.ndarray, lat: np.ndarray, n_evals: int, wall: float, seed: int,
           info: dict | None = None) -> BaselineFront:
    if len(X):
        _, first = np.unique(X, axis=0, return_index=True)  # one row per distinct arch
        X, acc, lat = X[first], acc[first], lat[first]
        idx = nondominated(np.column_stack([-acc, lat]))
        idx = idx[np.lexsort((-acc[idx], lat[idx]))]
        X, acc, lat = X[idx], acc[idx], lat[idx]
    return BaselineFront(method, X, acc, lat, int(n_evals), wall, int(seed), dict(info or {}))


def random_search(
    space: SearchSpace,
    predict_accuracy: VectorFn,
    predict_latency: VectorFn,
    n_evals: int,
    *,
    seed: int = 0,
    budget_ms: float | None = None,
    batch: int = 512,
) -> BaselineFront:
    """``n_evals`` uniform random (canonical) archs; the non-dominated set of those within budget."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    ev = _Budgeted(predict_accuracy, predict_latency, n_evals)
    while ev.remaining > 0:
        n = min(batch, ev.remaining)
        ev(canonicalize(space, rng.integers(0, space.vector_upper + 1, size=(n, space.vector_length))))
    X, acc, lat = ev.archive(budget_ms)
    return _front("random", X, acc, lat, ev.n, time.perf_counter() - t0, seed)


@dataclass(frozen=True, eq=False)
class EvolutionResult:
    """One ``evolution_search`` run: the best feasible arch (``None`` if none was found)."""

    budget_ms: float
    x: np.ndarray | None
    accuracy: float | None
    latency_ms: float | None
    n_evals: int
    generations: int
    archive_X: np.ndarray
    archive_accuracy: np.ndarray
    archive_latency_ms: np.ndarray


def evolution_search(
    space: SearchSpace,
    predict_accuracy: VectorFn,
    predict_latency: VectorFn,
    budget_ms: float,
    n_evals: int,
    *,
    seed: int | np.random.Generator = 0,
    population_size: int = 100,
    parent_ratio: float = 0.25,
    mutation_ratio: float = 0.5,
    mutate_prob: float = 0.1,
    batch_factor: float = 2.0,
) -> EvolutionResult:
    """OFA ``EvolutionFinder``: maximize predicted accuracy s.t. predicted latency <= ``budget_ms``.

    Candidates are generated in batches (``batch_factor`` x the number still needed) and evaluated
    with one predictor call per batch; infeasible ones are discarded but counted, feasible ones
    beyond the number needed join the population.  Stops when
    ``n_evals`` archs have been evaluated.  ``archive_*`` hold every feasible arch evaluated.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ev = _Budgeted(predict_accuracy, predict_latency, n_evals)
    upper = space.vector_upper
    n_par = max(1, int(round(population_size * parent_ratio)))
    n_mut = int(round(population_size * mutation_ratio))
    n_cx = population_size - n_par - n_mut

    def fill(need: int, make) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs, accs, lats = [], [], []
        got = 0
        while got < need and ev.remaining > 0:
            Xc = canonicalize(space, make(max(1, int(np.ceil((need - got) * batch_factor)))))
            Xc, a, lt = ev(Xc)
            ok = lt <= budget_ms
            xs.append(Xc[ok])
            accs.append(a[ok])
            lats.append(lt[ok])
            got += int(ok.sum())
        if not xs:
            return np.zeros((0, space.vector_length), dtype=np.int64), np.zeros(0), np.zeros(0)
        # every feasible arch evaluated is kept (a batch may overshoot ``need``): nothing paid for is thrown away
        return np.concatenate(xs), np.concatenate(accs), np.concatenate(lats)

    def random_rows(n: int) -> np.ndarray:
        return rng.integers(0, upper + 1, size=(n, space.vector_length))

    PX, PA, PL = fill(population_size, random_rows)
    gens = 0
    while ev.remaining > 0 and len(PX) > 0:
        order = np.argsort(-PA, kind="stable")[:n_par]
        parX, parA, parL = PX[order], PA[order], PL[order]

        def mutate(n: int, parX=parX) -> np.ndarray:
            base = parX[rng.integers(0, len(parX), size=n)]
            mask = rng.random(base.shape) < mutate_prob
            return np.where(mask, rng.integers(0, upper + 1, size=base.shape), base)

        def cross(n: int, parX=parX) -> np.ndarray:
            a = parX[rng.integers(0, len(parX), size=n)]
            b = parX[rng.integers(0, len(parX), size=n)]
            return np.where(rng.random(a.shape) < 0.5, a, b)

        mX, mA, mL = fill(n_mut, mutate)
        cX, cA, cL = fill(n_cx, cross)
        PX = np.concatenate([parX, mX, cX])
        PA = np.concatenate([parA, mA, cA])
        PL = np.concatenate([parL, mL, cL])
        gens += 1
    AX, AA, AL = ev.archive(budget_ms)
    if len(PX) == 0:
        return EvolutionResult(float(budget_ms), None, None, None, ev.n, gens, AX, AA, AL)
    i = int(np.argmax(PA))
    return EvolutionResult(float(budget_ms), PX[i], float(PA[i]), float(PL[i]), ev.n, gens, AX, AA, AL)


def sweep_budgets(lat_min: float, lat_max: float, n: int = 6) -> np.ndarray:
    """``n`` budgets spaced geometrically from just above ``lat_min`` to ``lat_max``."""
    if n < 1:
        raise SearchError(f"need at least one budget; got {n}")
    lo = lat_min * 1.05
    hi = max(lat_max, lo * 1.01)
    return np.geomspace(lo, hi, n)


def evolution_sweep(
    space: SearchSpace,
    predict_accuracy: VectorFn,
    predict_latency: VectorFn,
    budgets: Sequence[float],
    n_evals: int,
    *,
    seed: int = 0,
    use_archive: bool = False,
    **kwargs: Any,
) -> BaselineFront:
    """Run ``evolution_search`` once per budget with ``n_evals / len(budgets)`` evaluations each.

    The front is the non-dominated set of the per-budget winners (what OFA's search gives you);
    with ``use_archive`` it is the non-dominated set of every feasible arch any run evaluated.
    """
    budgets = [float(b) for b in budgets]
    if not budgets:
        raise SearchError("evolution_sweep needs at least one budget")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    per = [n_evals // len(budgets) + (1 if i < n_evals % len(budgets) else 0) for i in range(len(budgets))]
    xs, accs, lats, n_total = [], [], [], 0
    for b, n in zip(budgets, per):
        r = evolution_search(space, predict_accuracy, predict_latency, b, max(1, n), seed=rng, **kwargs)
        n_total += r.n_evals
        if use_archive:
            xs.append(r.archive_X)
            accs.append(r.archive_accuracy)
            lats.append(r.archive_latency_ms)
        elif r.x is not None:
            xs.append(r.x[None, :])
            accs.append(np.array([r.accuracy]))
            lats.append(np.array([r.latency_ms]))
    if xs:
        X, acc, lat = np.concatenate(xs), np.concatenate(accs), np.concatenate(lats)
    else:
        X, acc, lat = np.zeros((0, space.vector_length), dtype=np.int64), np.zeros(0), np.zeros(0)
    name = "evolution-sweep-archive" if use_archive else "evolution-sweep"
    return _front(name, X, acc, lat, n_total, time.perf_counter() - t0, seed, {"budgets": budgets})


def nsga2_front(
    space: SearchSpace,
    predict_accuracy: VectorFn,
    predict_latency: VectorFn,
    *,
    pop_size: int = 64,
    n_gen: int = 40,
    seed: int = 0,
    budget_ms: float | None = None,
    **kwargs: Any,
) -> BaselineFront:
    """``search_front`` (NSGA-II) as a ``BaselineFront``; ``n_evals`` is what it actually evaluated."""
    r = search_front(space, predict_accuracy, predict_latency, pop_size=pop_size, n_gen=n_gen, seed=seed,
                     budget_ms=budget_ms, **kwargs)
    return _front("nsga2", r.X, r.accuracy, r.latency_ms, r.n_evals, r.wall_s, seed,
                  {"pop_size": pop_size, "n_gen": n_gen, "evals_per_s": r.evals_per_s})


def reference_point(
    space: SearchSpace, predict_accuracy: VectorFn, predict_latency: VectorFn, margin: float = 0.05
) -> dict[str, float]:
    """A fixed HV box from the smallest and largest archs: reference (worst) point at the smallest
    arch's accuracy and the largest arch's latency, widened by ``margin`` of the range; ideal point
    at the largest arch's accuracy and the smallest arch's latency, widened likewise."""
    X = canonicalize(space, np.stack([space.encode(space.min_arch()), space.encode(space.max_arch())]))
    acc = np.asarray(predict_accuracy(X), dtype=float).reshape(-1)
    lat = np.asarray(predict_latency(X), dtype=float).reshape(-1)
    da, dl = abs(acc[1] - acc[0]) or 1.0, abs(lat[1] - lat[0]) or 1.0
    return {
        "ref_accuracy": float(min(acc) - margin * da),
        "ref_latency_ms": float(max(lat) + margin * dl),
        "ideal_accuracy": float(max(acc) + margin * da),
        "ideal_latency_ms": float(max(0.0, min(lat) - margin * dl)),
    }


def hypervolume(
    accuracy: Sequence[float],
    latency_ms: Sequence[float],
    ref_accuracy: float,
    ref_latency_ms: float,
    *,
    ideal_accuracy: float | None = None,
    ideal_latency_ms: float | None = None,
) -> float:
    """pymoo ``HV`` of the points ``(-accuracy, latency_ms)`` against the reference point
    ``(-ref_accuracy, ref_latency_ms)``.  With an ideal point the box is normalized to [0, 1]^2, so
    the result is the dominated fraction of the box; otherwise it is in accuracy x ms."""
    F = np.column_stack([-np.asarray(accuracy, dtype=float), np.asarray(latency_ms, dtype=float)])
    ref = np.array([-ref_accuracy, ref_latency_ms], dtype=float)
    F = F[np.all(F < ref, axis=1)] if len(F) else F.reshape(0, 2)
    if len(F) == 0:
        return 0.0
    if ideal_accuracy is not None and ideal_latency_ms is not None:
        ideal = np.array([-ideal_accuracy, ideal_latency_ms], dtype=float)
        span = ref - ideal
        if np.any(span <= 0):
            raise SearchError(f"the ideal point {ideal.tolist()} must be better than the reference point {ref.tolist()}")
        return float(HV(ref_point=np.ones(2))((F - ideal) / span))
    return float(HV(ref_point=ref)(F))


__all__ = [
    "BaselineFront",
    "EvolutionResult",
    "evolution_search",
    "evolution_sweep",
    "hypervolume",
    "nsga2_front",
    "random_search",
    "reference_point",
    "sweep_budgets",
]
