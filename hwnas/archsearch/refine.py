"""Close the budget: after the NSGA-II front, a constrained single-objective search for one budget.

``refine_for_budget`` maximizes predicted accuracy subject to predicted latency <= ``budget_ms``,
starting from given gene rows (typically the front points near the budget; the smallest arch is
always added).  Each generation makes one batch of children (``batch`` archs, one call to each
predictor), half of each kind by default (``explore``):

* best-first expansion: the complete one- and two-gene neighbourhoods (every other choice of one
  gene, of every pair of genes) of the best candidates not expanded yet.  At the budget an
  accuracy gain almost always costs latency; the two-gene moves raise one gene and lower another,
  which is what moves an arch along the budget boundary.  A move that activates genes (a deeper
  stage: a new block, which canonicalization makes the smallest) is also tried with those genes at
  up to 9 other choices (the new block at every kernel x expand size), a move no one- or two-gene
  step makes.  Candidates are the feasible archs and those just over the budget (up to
  ``1 + over`` times it), ranked by accuracy less ``bridge`` x the front's accuracy-per-ms slope x
  the excess latency: an accurate arch slightly over budget is a bridge to a basin that no chain
  of feasible archs reaches (e.g. a higher resolution with smaller blocks);
* categorical mutations (one and three genes on average) and uniform crossovers of a diverse
  parent set: the most accurate feasible archs, each at least ``min_distance`` genes from those
  before it, so the parents are not all neighbours of the best.

Rows are canonicalized (``canonicalize``) and keyed by one int64 per row (a mixed-radix number of
the genes; the row's bytes for spaces of 2**62 or more vectors), so an arch is evaluated at most
once.  Infeasible children are counted, never returned.  The run stops after ``n_evals`` archs or
``time_s`` seconds, whichever comes first (with ``time_s`` the last batch is sized to end on
time); with ``n_evals`` alone it is deterministic for a seed.  The predictors run with one BLAS
thread (``blas_threads``): at these batch sizes more BLAS threads only spin, and on a busy
2-core machine make the MLP accuracy predictor several times slower.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
    accurate distinct feasible archs, best first.  ``pareto_X``/``pareto_accuracies``/
    ``pareto_latencies_ms``: the (accuracy, latency) non-dominated set of every feasible arch
    evaluated, most accurate first (what the refinement adds to a front below the budget).
    ``seed_accuracy``: the best feasible seed row's predicted accuracy (``None`` if no seed row was
    within budget).  ``n_evals`` counts every arch passed to the predictors (seed rows included),
    ``n_calls`` the predictor calls (each predictor).
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
    pareto_X: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    pareto_accuracies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pareto_latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))

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
            "pareto_X": np.asarray(self.pareto_X).tolist(),
            "pareto_accuracies": np.asarray(self.pareto_accuracies).tolist(),
            "pareto_latencies_ms": np.asarray(self.pareto_latencies_ms).tolist(),
            "seed_accuracy": self.seed_accuracy,
            "n_evals": self.n_evals,
            "n_calls": self.n_calls,
            "generations": self.generations,
            "wall_s": self.wall_s,
            "seed": self.seed,
        }


class RowKeys:
    """One hashable key per gene row: an int64 mixed-radix number when the space has fewer than
    2**62 gene vectors (``n_g = upper_g + 1`` choices per gene), else the row's bytes."""

    def __init__(self, upper: np.ndarray):
        sizes = np.asarray(upper, dtype=np.int64) + 1
        self.int_keys = float(np.prod(sizes.astype(float))) < 2.0**62
        if self.int_keys:
            w = np.ones(len(sizes), dtype=np.int64)
            for i in range(len(sizes) - 2, -1, -1):
                w[i] = w[i + 1] * sizes[i + 1]
            self.weights = w  # lexicographic order of rows = numeric order of keys

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.int64)
        if self.int_keys:
            return X @ self.weights
        return np.array([r.tobytes() for r in X], dtype=object)


def neighbourhood_moves(upper: np.ndarray, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(genes, shifts)``, each ``(M, 2)``: every change of one gene (and, with radius 2, of two
    distinct genes) to another choice, as ``x[g] = (x[g] + s) % n_g``; one-gene moves first,
    padded with shift 0 (no change) in the second column."""
    upper = np.asarray(upper, dtype=np.int64)
    one = [(g, s) for g in range(len(upper)) for s in range(1, int(upper[g]) + 1)]
    genes = [[g, g] for g, _ in one]
    shifts = [[s, 0] for _, s in one]
    if radius >= 2:
        for i, (g, s) in enumerate(one):
            for h, t in one[i + 1:]:
                if h != g:
                    genes.append([g, h])
                    shifts.append([s, t])
    return np.asarray(genes, dtype=np.int64), np.asarray(shifts, dtype=np.int64)


def _apply_moves(x: np.ndarray, genes: np.ndarray, shifts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    out = np.repeat(x[None, :], len(genes), axis=0)
    r = np.arange(len(genes))
    for c in range(genes.shape[1]):
        g = genes[:, c]
        out[r, g] = (out[r, g] + shifts[:, c]) % sizes[g]
    return out


def _activation_variants(Y: np.ndarray, newly: np.ndarray, sizes: np.ndarray, rng: np.random.Generator,
                         n_max: int) -> np.ndarray:
    """For each row of ``Y``, up to ``n_max`` variants with its ``newly`` active genes set to other
    choices: every combination when there are at most ``n_max``, else ``n_max`` random ones.

    A move that activates genes (a deeper stage: a new block) gives them their canonical choice
    (the smallest block); the variants try the new block at every size at once, a move that a
    one- or two-gene step cannot make."""
    n, L = Y.shape
    sz = np.where(newly, sizes[None, :], 1).astype(np.int64)
    cp = np.cumprod(sz, axis=1)
    n_combos = cp[:, -1]
    before = cp // sz  # exclusive cumulative product: the radix of each newly active gene
    c = np.arange(n_max, dtype=np.int64)
    digits = (c[None, :, None] // before[:, None, :]) % sz[:, None, :]  # (n, n_max, L): combination c
    full = (n_combos <= n_max)[:, None, None]
    if not full.all():
        rand = rng.integers(0, np.iinfo(np.int64).max, size=(n, n_max, L)) % sz[:, None, :]
        digits = np.where(full, digits, rand)
    E = np.where(newly[:, None, :], digits, Y[:, None, :])
    valid = (c[None, :] < n_combos[:, None]) | ~full[:, :, 0]
    return E[valid].reshape(-1, L)


def _pareto(A: np.ndarray, Lt: np.ndarray) -> np.ndarray:
    """Indices of the (max accuracy, min latency) non-dominated rows, most accurate first (one per tie)."""
    if len(A) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-A, Lt))  # by latency, then most accurate
    a = A[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(a)[:-1]])
    idx = order[a > best_before]
    return idx[::-1]


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
    batch: int = 1024,
    mutation_prob_var: float | None = None,
    n_keep: int = 5,
    explore: float = 0.5,
    min_distance: int = 3,
    bridge: float = 0.5,
    over: float = 0.1,
    blas_threads: int | None = 1,
) -> Refinement:
    """Maximize predicted accuracy s.t. predicted latency <= ``budget_ms``, seeded from ``seeds_X``.

    ``seeds_X``: gene rows to start from (e.g. the front points near the budget, over it too); the
    smallest arch of the space is always added, so a feasible start exists whenever anything is
    feasible.  Stops after ``n_evals`` predicted archs (default ``DEFAULT_REFINE_EVALS`` when
    ``time_s`` is not given) or ``time_s`` seconds, whichever first.  Never returns an arch
    predicted over ``budget_ms``.

    ``batch``: archs per generation; ``explore``: the share of each batch for mutations and
    crossovers of ``n_parents`` parents at least ``min_distance`` genes apart (the rest goes to
    the neighbourhoods); ``bridge``/``over``: how far over budget an arch may be and still be
    expanded (see the module docstring; ``bridge=0``: feasible archs only); ``blas_threads``:
    BLAS threads while predicting (``None``: as they are).
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
    if not 0.0 <= explore <= 1.0 or bridge < 0 or over < 0 or min_distance < 1:
        raise SearchError(f"need 0 <= explore <= 1, bridge >= 0, over >= 0, min_distance >= 1; got {explore}, "
                          f"{bridge}, {over}, {min_distance}")
    args = (space, predict_accuracy, predict_latency, float(budget_ms), seeds_X, None if n_evals is None else int(n_evals),
            time_s, int(seed), int(n_parents), int(batch), mutation_prob_var, int(n_keep), float(explore),
            int(min_distance), float(bridge), float(over))
    if blas_threads is None:
        return _refine(*args)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(blas_threads), user_api="blas"):
        return _refine(*args)


def _refine(space, predict_accuracy, predict_latency, budget, seeds_X, max_evals, time_s, seed, n_parents, batch,
            mutation_prob_var, n_keep, explore, min_distance, bridge, over) -> Refinement:
    t0 = time.perf_counter()
    acc_fn = CountingFn(predict_accuracy, "predict_accuracy")
    lat_fn = CountingFn(predict_latency, "predict_latency")
    problem = SubnetProblem(space, acc_fn, lat_fn)  # bounds for the mutation operator
    # small steps (one gene on average) and larger jumps (three genes), half the mutants each
    mutations = ([CategoricalMutation(prob_var=mutation_prob_var)] if mutation_prob_var is not None else
                 [CategoricalMutation(prob_var=1.0 / space.vector_length),
                  CategoricalMutation(prob_var=min(0.5, 3.0 / space.vector_length))])
    rng = np.random.default_rng(seed)
    L = space.vector_length
    upper = np.asarray(space.vector_upper, dtype=np.int64)
    sizes = upper + 1
    keyer = RowKeys(upper)
    mv_genes, mv_shifts = neighbourhood_moves(upper, 2)
    kdt = np.int64 if keyer.int_keys else object

    seen: set = set()
    expanded: set = set()
    cap = max(2048, 2 * batch, 4 * max(n_parents, int(n_keep)))
    # feasible archive, most accurate first (then faster, then by key): the answer and the parents
    FX, FA, FL, FK = np.zeros((0, L), dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0, dtype=kdt)
    # expansion candidates: the feasible archive's rows and, with ``bridge``, rows just over budget
    CX, CA, CL, CK = FX, FA, FL, FK
    PX, PA, PL = FX, FA, FL  # the non-dominated set of every feasible arch evaluated
    n_done = 0
    rate = None  # seconds per evaluated row (measured), to fit the last batch in time_s

    def room() -> int:
        """How many more archs may be evaluated now."""
        n = batch
        if max_evals is not None:
            n = min(n, max_evals - n_done)
        if time_s is not None and rate is not None:
            left = time_s - (time.perf_counter() - t0)
            n = min(n, max(64, int(left / rate)))
        return max(0, n)

    def out_of_budget() -> bool:
        if max_evals is not None and n_done >= max_evals:
            return True
        return time_s is not None and time.perf_counter() - t0 >= time_s

    def fresh(X: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray, bool]:
        """The canonical, not yet seen, distinct rows of ``X`` in order of first appearance, at most
        ``limit``; and whether all of them fitted."""
        if len(X) == 0:
            return X.reshape(0, L).astype(np.int64), FK[:0], True
        X = canonicalize(space, X)
        k = keyer(X)
        _, first = np.unique(k, return_index=True)
        first.sort()
        X, k = X[first], k[first]
        new = np.fromiter((v not in seen for v in k.tolist()), dtype=bool, count=len(k))
        X, k = X[new], k[new]
        complete = limit is None or len(X) <= limit
        if not complete:
            X, k = X[:limit], k[:limit]
        return X, k, complete

    def slope() -> float:
        """Accuracy per ms along the feasible non-dominated set near the budget (0 if unknown)."""
        if len(PA) < 2:
            return 0.0
        m = PL >= 0.7 * budget
        if m.sum() < 2:
            m = np.ones(len(PA), dtype=bool)
        if np.ptp(PL[m]) <= 0:
            return 0.0
        return max(0.0, float(np.polyfit(PL[m], PA[m], 1)[0]))

    def score(A: np.ndarray, Lt: np.ndarray) -> np.ndarray:
        """Expansion rank: accuracy, less ``bridge`` x the slope x the latency over budget."""
        if bridge <= 0 or not (Lt > budget).any():
            return A
        s = slope()
        return A - np.where(Lt > budget, (Lt - budget) * s * bridge if s > 0 else np.inf, 0.0)

    def evaluate(X: np.ndarray, k: np.ndarray) -> None:
        nonlocal n_done, FX, FA, FL, FK, CX, CA, CL, CK, PX, PA, PL, rate
        if len(X) == 0:
            return
        seen.update(k.tolist())
        t = time.perf_counter()
        a = acc_fn(X)
        lt = lat_fn(X)
        dt = time.perf_counter() - t
        n_done += len(X)
        if len(X) >= 256:  # the per-row cost of the predictors, for sizing the last batch
            r = dt / len(X) * 1.15  # + the proposal overhead
            rate = r if rate is None else 0.5 * rate + 0.5 * r
        ok = lt <= budget
        if ok.any():
            Xo, ao, lo, ko = X[ok], a[ok], lt[ok], k[ok]
            FX, FA, FL, FK = (np.concatenate([FX, Xo]), np.concatenate([FA, ao]), np.concatenate([FL, lo]),
                              np.concatenate([FK, ko]))
            order = np.lexsort((FK, FL, -FA))[:cap]
            FX, FA, FL, FK = FX[order], FA[order], FL[order], FK[order]
            PX, PA, PL = np.concatenate([PX, Xo]), np.concatenate([PA, ao]), np.concatenate([PL, lo])
            p = _pareto(PA, PL)
            PX, PA, PL = PX[p], PA[p], PL[p]
        near = lt <= budget * (1.0 + over) if bridge > 0 else ok
        if near.any():
            CX, CA, CL, CK = (np.concatenate([CX, X[near]]), np.concatenate([CA, a[near]]),
                              np.concatenate([CL, lt[near]]), np.concatenate([CK, k[near]]))
            if len(CX) > 2 * cap:
                order = np.lexsort((CK, CL, -score(CA, CL)))[:cap]
                CX, CA, CL, CK = CX[order], CA[order], CL[order], CK[order]

    def diverse_parents() -> np.ndarray:
        """The most accurate archived rows, each at least ``min_distance`` genes from those before."""
        cand = FX[: 64 * n_parents]
        chosen = [0]
        dist = (cand != cand[0]).sum(axis=1)  # to the nearest chosen row
        while len(chosen) < n_parents:
            far = np.flatnonzero(dist >= min_distance)
            if len(far) == 0:
                break
            chosen.append(int(far[0]))
            dist = np.minimum(dist, (cand != cand[far[0]]).sum(axis=1))
        return cand[chosen]

    def neighbours(x: np.ndarray) -> np.ndarray:
        """The one- and two-gene neighbours of ``x``, then the variants of those that activate genes."""
        Y = _apply_moves(x, mv_genes, mv_shifts, sizes)
        Yc = canonicalize(space, Y)
        newly = space.active_genes(Yc) & ~space.active_genes(x[None, :])[0][None, :]
        rows = np.flatnonzero(newly.any(axis=1))
        if len(rows) == 0:
            return Y
        return np.concatenate([Y, _activation_variants(Yc[rows], newly[rows], sizes, rng, 9)])

    # ---- seeds
    start = [canonicalize(space, space.encode(space.min_arch())[None, :])]
    have_seeds = seeds_X is not None and len(np.atleast_2d(seeds_X)) > 0
    if have_seeds:
        start.insert(0, canonicalize(space, np.atleast_2d(np.asarray(seeds_X))))
    X0, k0, _ = fresh(np.concatenate(start).astype(np.int64), max_evals)
    evaluate(X0, k0)
    seed_acc = float(FA[0]) if have_seeds and len(FA) else None  # the best feasible start row

    # ---- offspring generations
    gens = 0
    while not out_of_budget():
        n_room = room()
        if n_room <= 0:
            break
        if len(FX) == 0:  # nothing feasible yet: random restarts
            X, k, _ = fresh(rng.integers(0, upper + 1, size=(n_room, L)), n_room)
        else:
            n_exp = n_room - int(round(explore * n_room))
            X, k = FX[:0], FK[:0]
            # best-first expansion: neighbourhoods of the best unexpanded candidates, in order
            sc = score(CA, CL)
            for i in np.lexsort((CK, CL, -sc)):
                if len(X) >= n_exp:
                    break
                if CK[i] in expanded:
                    continue
                Xn, kn, complete = fresh(neighbours(CX[i]), n_exp - len(X))
                if complete:
                    expanded.add(CK[i])
                if len(Xn):
                    keep = ~np.isin(kn, k)
                    X, k = np.concatenate([X, Xn[keep]]), np.concatenate([k, kn[keep]])
            n_rest = n_room - len(X)
            if n_rest > 0:
                parents = diverse_parents()
                n_mut = n_rest // 2
                n_cx = n_rest - n_mut
                parts = []
                base = parents[rng.integers(0, len(parents), size=n_mut)]
                for j, op in enumerate(mutations):
                    parts.append(op._do(problem, base[j::len(mutations)], random_state=rng))
                pa_ = parents[rng.integers(0, len(parents), size=n_cx)]
                pb_ = parents[rng.integers(0, len(parents), size=n_cx)]
                child = np.where(rng.random(pa_.shape) < 0.5, pa_, pb_)
                parts.append(mutations[0]._do(problem, child, random_state=rng) if gens % 2 else child)
                Xe, ke, _ = fresh(np.concatenate(parts), n_rest)
                keep = ~np.isin(ke, k)
                X, k = np.concatenate([X, Xe[keep]]), np.concatenate([k, ke[keep]])
            if len(X) == 0:  # everything proposed was seen before: random archs
                X, k, _ = fresh(rng.integers(0, upper + 1, size=(n_room, L)), n_room)
        gens += 1
        if len(X) == 0:
            break
        evaluate(X, k)

    wall = time.perf_counter() - t0
    kk = min(len(FX), max(1, int(n_keep)))
    if len(FX) == 0:
        return Refinement(budget, None, None, None, FX[:0], FA[:0], FL[:0], seed_acc, n_done, acc_fn.calls, gens,
                          wall, int(seed), FX[:0], FA[:0], FL[:0])
    return Refinement(budget, FX[0].copy(), float(FA[0]), float(FL[0]), FX[:kk].copy(), FA[:kk].copy(), FL[:kk].copy(),
                      seed_acc, n_done, acc_fn.calls, gens, wall, int(seed), PX.copy(), PA.copy(), PL.copy())


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
