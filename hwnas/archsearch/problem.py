"""The pymoo problem over an arch space's integer encoding, its operators, and one NSGA-II run.

The search talks to predictors through a small protocol (``VectorFn``): a callable taking the
``(N, L)`` integer gene matrix of ``SearchSpace.encode`` and returning ``(N,)`` floats.  The problem
calls each predictor once per population (vectorized), never per arch.

Objectives (all minimized, in this order): ``-accuracy``, ``latency_ms``, then any extra objective
callables (MACs, params, peak memory...).  With a budget, one inequality constraint
``latency_ms - budget_ms <= 0``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.crossover.ux import UniformCrossover
from pymoo.optimize import minimize
from pymoo.termination.collection import TerminationCollection
from pymoo.termination.max_gen import MaximumGenerationTermination
from pymoo.termination.max_time import TimeBasedTermination
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from hwnas.errors import SearchError
from hwnas.supernet.family import SearchSpace

# predict(X_int (N, L) int64) -> (N,) floats
VectorFn = Callable[[np.ndarray], np.ndarray]

CROSSOVERS = ("uniform", "two-point")


# ---------------------------------------------------------------------------------------------
# encoding helpers
# ---------------------------------------------------------------------------------------------
def canonicalize(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """Repair an integer (or float) gene matrix: round, clip to ``[0, vector_upper]`` and set the
    genes that have no effect to their fixed choice (``space.canonicalize``).

    Two rows that build the same network become equal, so pymoo's duplicate elimination on ``X``
    removes them.  Agrees row by row with ``space.encode(space.canonical(space.decode(x)))``.
    """
    X = np.asarray(X, dtype=float)
    cols = X.shape[-1] if X.ndim else 0
    if X.ndim not in (1, 2) or cols != space.vector_length:
        raise SearchError(f"gene matrix has {cols} columns; space {space.name!r} needs {space.vector_length}")
    return space.canonicalize(X)


def encode_archs(space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Canonical gene matrix of a list of arch dicts."""
    if not archs:
        return np.zeros((0, space.vector_length), dtype=np.int64)
    return canonicalize(space, np.stack([space.encode(a) for a in archs]))


def decode_rows(space: SearchSpace, X: np.ndarray) -> list[dict]:
    """Canonical arch dicts of a gene matrix."""
    return [space.decode(x) for x in canonicalize(space, np.atleast_2d(X))]


def nondominated(F: np.ndarray) -> np.ndarray:
    """Indices of the first non-dominated front of ``F`` (rows minimized)."""
    F = np.asarray(F, dtype=float)
    if len(F) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(NonDominatedSorting().do(F, only_non_dominated_front=True), dtype=int)


class CountingFn:
    """Wrap a ``VectorFn``: check its output, count calls and rows, time it."""

    def __init__(self, fn: VectorFn, name: str):
        if not callable(fn):
            raise SearchError(f"{name} must be a callable taking the (N, L) gene matrix; got {type(fn).__name__}")
        self.fn, self.name = fn, name
        self.calls = 0
        self.rows = 0
        self.seconds = 0.0

    def __call__(self, X: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        y = np.asarray(self.fn(X), dtype=float).reshape(-1)
        self.seconds += time.perf_counter() - t
        if y.shape != (len(X),):
            raise SearchError(f"{self.name} returned {y.shape[0]} values for {len(X)} archs; it must return one per row")
        if not np.all(np.isfinite(y)):
            raise SearchError(f"{self.name} returned non-finite values (nan/inf) for {int((~np.isfinite(y)).sum())} archs")
        self.calls += 1
        self.rows += len(X)
        return y


# ---------------------------------------------------------------------------------------------
# pymoo problem and operators
# ---------------------------------------------------------------------------------------------
class SubnetProblem(Problem):
    """Vectorized pymoo ``Problem`` over ``space``'s integer genes (lower 0, upper ``vector_upper``).

    ``F = [-accuracy, latency_ms, *extra]`` and, when ``budget_ms`` is set,
    ``G = [latency_ms - budget_ms]``.  Each ``_evaluate`` makes exactly one call to each predictor
    for the whole population; ``n_calls`` and ``n_rows`` count them.
    """

    def __init__(
        self,
        space: SearchSpace,
        predict_accuracy: VectorFn,
        predict_latency: VectorFn,
        *,
        budget_ms: float | None = None,
        extra_objectives: Mapping[str, VectorFn] | None = None,
    ):
        if budget_ms is not None and not (np.isfinite(budget_ms) and budget_ms > 0):
            raise SearchError(f"latency budget must be a positive number of ms; got {budget_ms!r}")
        self.space = space
        self.budget_ms = None if budget_ms is None else float(budget_ms)
        self.predict_accuracy = predict_accuracy
        self.predict_latency = predict_latency
        self.extra_objectives = dict(extra_objectives or {})
        for name in self.extra_objectives:
            if name in ("accuracy", "latency_ms"):
                raise SearchError(f"extra objective name {name!r} clashes with a built-in objective")
        self.objective_names = ("accuracy", "latency_ms", *self.extra_objectives)
        self.n_calls = 0
        self.n_rows = 0
        super().__init__(
            n_var=space.vector_length,
            n_obj=2 + len(self.extra_objectives),
            n_ieq_constr=0 if budget_ms is None else 1,
            xl=np.zeros(space.vector_length, dtype=np.int64),
            xu=space.vector_upper.astype(np.int64),
            vtype=int,
        )

    def _evaluate(self, X, out, *args, **kwargs):
        Xi = canonicalize(self.space, X)
        self.n_calls += 1
        self.n_rows += len(Xi)
        acc = np.asarray(self.predict_accuracy(Xi), dtype=float).reshape(-1)
        lat = np.asarray(self.predict_latency(Xi), dtype=float).reshape(-1)
        cols = [-acc, lat] + [np.asarray(fn(Xi), dtype=float).reshape(-1) for fn in self.extra_objectives.values()]
        out["F"] = np.column_stack(cols)
        if self.budget_ms is not None:
            out["G"] = (lat - self.budget_ms)[:, None]


class CanonicalRepair(Repair):
    """Round, clip and canonicalize (see ``canonicalize``) every offspring."""

    def _do(self, problem, X, **kwargs):
        return canonicalize(problem.space, X)


class CategoricalMutation(Mutation):
    """Resample each gene with probability ``prob_var`` to a *different* allowed choice (uniformly).

    Genes are categorical choice indices, so there is no notion of a small step: polynomial
    mutation's bias toward neighbouring indices has no meaning here.
    """

    def __init__(self, prob: float = 1.0, prob_var: float | None = None, **kwargs):
        super().__init__(prob=prob, prob_var=prob_var, **kwargs)

    def _do(self, problem, X, random_state=None, **kwargs):
        rng = random_state if random_state is not None else np.random.default_rng()
        X = np.asarray(X).round().astype(np.int64)
        n_choices = np.asarray(problem.xu, dtype=np.int64) - np.asarray(problem.xl, dtype=np.int64) + 1
        p = self.get_prob_var(problem, size=(len(X), 1))
        mask = (rng.random(X.shape) < p) & (n_choices[None, :] > 1)
        shift = rng.integers(1, np.maximum(n_choices, 2)[None, :], size=X.shape)  # 1..n-1: never the same choice
        Xm = np.where(mask, (X + shift) % n_choices[None, :], X)
        return Xm


class AnchoredSampling(Sampling):
    """Uniform random genes, plus the given anchor rows (the smallest and largest arch) first."""

    def __init__(self, anchors: np.ndarray | None = None):
        super().__init__()
        self.anchors = None if anchors is None else np.atleast_2d(np.asarray(anchors, dtype=np.int64))

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        rng = random_state if random_state is not None else np.random.default_rng()
        X = rng.integers(0, np.asarray(problem.xu, dtype=np.int64) + 1, size=(n_samples, problem.n_var))
        if self.anchors is not None:
            k = min(len(self.anchors), n_samples)
            X[:k] = self.anchors[:k]
        return X


def make_nsga2(
    space: SearchSpace,
    pop_size: int = 64,
    *,
    crossover: str = "uniform",
    crossover_prob: float = 0.9,
    mutation_prob_var: float | None = 0.1,
    anchors: bool = True,
) -> NSGA2:
    """NSGA-II with operators for categorical genes and duplicate elimination on canonical vectors."""
    if pop_size < 4:
        raise SearchError(f"population size must be at least 4; got {pop_size}")
    if crossover not in CROSSOVERS:
        raise SearchError(f"unknown crossover {crossover!r}; choose one of: {', '.join(CROSSOVERS)}")
    xo = UniformCrossover(prob=crossover_prob) if crossover == "uniform" else TwoPointCrossover(prob=crossover_prob)
    anchor_rows = (
        canonicalize(space, np.stack([space.encode(space.min_arch()), space.encode(space.max_arch())]))
        if anchors
        else None
    )
    return NSGA2(
        pop_size=pop_size,
        sampling=AnchoredSampling(anchor_rows),
        crossover=xo,
        mutation=CategoricalMutation(prob_var=mutation_prob_var),
        repair=CanonicalRepair(),
        eliminate_duplicates=True,
    )


# ---------------------------------------------------------------------------------------------
# one predictor-driven search
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FrontSearch:
    """The outcome of one NSGA-II run on the predictors.

    ``X`` is the canonical gene matrix of the returned front (feasible points only when a budget
    was set and any was feasible), ``F`` its objective values (``-accuracy`` first) and
    ``population_X``/``population_F`` the whole final population.
    """

    X: np.ndarray
    F: np.ndarray
    population_X: np.ndarray
    population_F: np.ndarray
    objective_names: tuple[str, ...]
    budget_ms: float | None
    n_evals: int
    n_calls: int
    n_gen: int
    pop_size: int
    seed: int
    wall_s: float
    predictor_s: float
    feasible: bool = True
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def accuracy(self) -> np.ndarray:
        return -self.F[:, 0]

    @property
    def latency_ms(self) -> np.ndarray:
        return self.F[:, 1]

    @property
    def evals_per_s(self) -> float:
        return self.n_evals / self.wall_s if self.wall_s > 0 else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("X", "F", "population_X", "population_F"):
            d[k] = np.asarray(d[k]).tolist()
        d["objective_names"] = list(self.objective_names)
        d["evals_per_s"] = self.evals_per_s
        return d


def search_front(
    space: SearchSpace,
    predict_accuracy: VectorFn,
    predict_latency: VectorFn,
    *,
    budget_ms: float | None = None,
    extra_objectives: Mapping[str, VectorFn] | None = None,
    pop_size: int = 64,
    n_gen: int | None = None,
    seed: int = 0,
    crossover: str = "uniform",
    mutation_prob_var: float | None = 0.1,
    time_s: float | None = None,
) -> FrontSearch:
    """Run NSGA-II (pymoo ``minimize``) on the predictors and return the non-dominated set, sorted
    by predicted latency.  ``n_evals`` counts archs actually passed to the predictors.

    Size: ``n_gen`` generations (default 40), or with ``time_s`` as many generations as fit in
    ``time_s`` seconds (capped at ``n_gen`` when both are given).  Only ``n_gen`` alone is
    deterministic for a seed; ``FrontSearch.n_gen`` is the number of generations actually run."""
    if time_s is not None and not time_s > 0:
        raise SearchError(f"time_s must be positive; got {time_s}")
    if n_gen is None and time_s is None:
        n_gen = 40
    if n_gen is not None and n_gen < 1:
        raise SearchError(f"number of generations must be at least 1; got {n_gen}")
    acc = CountingFn(predict_accuracy, "predict_accuracy")
    lat = CountingFn(predict_latency, "predict_latency")
    extra = {k: CountingFn(f, f"objective {k!r}") for k, f in (extra_objectives or {}).items()}
    problem = SubnetProblem(space, acc, lat, budget_ms=budget_ms, extra_objectives=extra)
    algo = make_nsga2(space, pop_size, crossover=crossover, mutation_prob_var=mutation_prob_var)
    t0 = time.perf_counter()
    if time_s is None:
        termination = MaximumGenerationTermination(int(n_gen))
    elif n_gen is None:
        termination = TimeBasedTermination(float(time_s))
    else:
        termination = TerminationCollection(MaximumGenerationTermination(int(n_gen)), TimeBasedTermination(float(time_s)))
    res = minimize(problem, algo, termination, seed=int(seed), verbose=False, copy_algorithm=False)
    wall = time.perf_counter() - t0
    gens_run = int(getattr(res.algorithm, "n_gen", None) or 1) - 1 if time_s is not None else int(n_gen)
    pop = res.pop
    PX = canonicalize(space, np.asarray(pop.get("X")))
    PF = np.asarray(pop.get("F"), dtype=float)
    feasible = True
    if budget_ms is not None:
        fmask = (PF[:, 1] <= budget_ms)
        feasible = bool(fmask.any())
        cand = np.flatnonzero(fmask) if feasible else np.arange(len(PF))
    else:
        cand = np.arange(len(PF))
    if budget_ms is not None and not feasible:
        # nothing predicted within budget: return the predicted-fastest archs (least violation)
        order = np.argsort(PF[:, 1], kind="stable")[: max(1, min(5, len(PF)))]
        idx = order
    else:
        idx = cand[nondominated(PF[cand])]
    idx = idx[np.lexsort((PF[idx, 0], PF[idx, 1]))]
    return FrontSearch(
        X=PX[idx], F=PF[idx], population_X=PX, population_F=PF,
        objective_names=problem.objective_names, budget_ms=budget_ms,
        n_evals=problem.n_rows, n_calls=problem.n_calls, n_gen=max(1, gens_run), pop_size=int(pop_size), seed=int(seed),
        wall_s=wall, predictor_s=acc.seconds + lat.seconds + sum(e.seconds for e in extra.values()),
        feasible=feasible,
    )  # fmt: skip


__all__ = [
    "AnchoredSampling",
    "CROSSOVERS",
    "CanonicalRepair",
    "CategoricalMutation",
    "CountingFn",
    "FrontSearch",
    "SubnetProblem",
    "VectorFn",
    "canonicalize",
    "decode_rows",
    "encode_archs",
    "make_nsga2",
    "nondominated",
    "search_front",
]
