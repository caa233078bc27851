"""Closed-loop search: NSGA-II on the predictors, verified on the real device, latency predictor refit.

Each round runs ``search_front`` on the current predictors, picks the most promising archs near the
budget (plus a few across the front), measures them with the ``measure`` callback, and hands every
measurement so far to ``refit_latency``, which returns the next round's latency predictor.  The
answer is the most accurate arch whose *measured* latency is within budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hwnas.errors import SearchError
from hwnas.archsearch.problem import FrontSearch, VectorFn, canonicalize, nondominated, search_front
from hwnas.archsearch.refine import Refinement, near_budget_rows, refine_for_budget
from hwnas.archsearch.units import parse_latency
from hwnas.supernet.family import SearchSpace

# measure(archs) -> one latency in ms per arch (nan where the arch could not be measured)
MeasureFn = Callable[[list[dict]], Sequence[float]]
# refit_latency(rows) -> the new predict_latency; rows: dicts with arch, arch_id, x, latency_ms
RefitFn = Callable[[list[dict]], VectorFn]
# evaluate_accuracy(archs) -> one accuracy per arch, same scale as predict_accuracy
AccuracyFn = Callable[[list[dict]], Sequence[float]]
# confirm(arch) -> (latency ms, 95% interval low, high): a fresh measurement of a candidate answer
ConfirmFn = Callable[[dict], Sequence[float]]


@dataclass(frozen=True)
class SearchEvent:
    """Progress of a closed-loop search, passed to the ``progress`` callback."""

    stage: str  # "fastest" | "search" | "refine" | "measure" | "refit" | "evaluate" | "done"
    round: int
    rounds: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MeasuredPoint:
    """An arch measured on the device during the search."""

    arch_id: str
    arch: dict
    measured_latency_ms: float
    predicted_latency_ms: float  # by the latency predictor of the round that picked it (before refit)
    predicted_accuracy: float
    round: int  # 0: the fastest-arch check before the first round
    reason: str  # "fastest" | "refined" | "near-budget" | "spread" | "fill"
    evaluated_accuracy: float | None = None
    # the final fresh measurement of a candidate for the answer (``confirm``): latency and its 95% interval
    confirmed_latency_ms: float | None = None
    confirmed_ci_ms: tuple[float, float] | None = None

    @property
    def accuracy(self) -> float:
        return self.predicted_accuracy if self.evaluated_accuracy is None else self.evaluated_accuracy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = self.accuracy
        return d


@dataclass(frozen=True)
class FrontPoint:
    """A point of the final predicted Pareto front."""

    arch_id: str
    arch: dict
    predicted_accuracy: float
    predicted_latency_ms: float
    objectives: dict = field(default_factory=dict)  # extra objectives by name
    measured_latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RoundStats:
    round: int
    predictor_evals: int
    search_s: float
    evals_per_s: float
    front_size: int
    predicted_feasible: bool  # did the predictors think anything met the (slackened) budget
    n_measured: int
    measure_s: float
    latency_mape_pct: float | None  # this round's latency predictor on the archs it picked
    latency_max_err_pct: float | None
    refit_s: float | None
    best_arch_id: str
    best_measured_latency_ms: float
    best_accuracy: float
    refine_evals: int = 0  # of predictor_evals, those of the budget refinement
    front_best_accuracy: float | None = None  # best NSGA-II front point predicted within the budget
    refined_accuracy: float | None = None  # best arch of the refinement (predicted, within the budget)
    refined_latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    """What ``closed_loop_search`` found: the chosen arch, the predicted front, every measurement."""

    supernet: str
    device: str
    budget_ms: float
    best: MeasuredPoint
    accuracy_source: str  # "predicted" | "evaluated"
    fastest_ms: float
    front: tuple[FrontPoint, ...]
    measured: tuple[MeasuredPoint, ...]
    rounds: tuple[RoundStats, ...]
    objective_names: tuple[str, ...]
    wall_s: float
    search_s: float
    measure_s: float
    predictor_evals: int
    evals_per_s: float  # predictor evaluations per second of search time (NSGA-II and refinement)
    settings: dict = field(default_factory=dict)
    # the answer's fresh confirmation (``confirm``): each arch tried, in order, and whether the answer's
    # interval lies within the budget at its upper end
    confirmations: tuple[dict, ...] = ()
    confirmed_within_budget: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "supernet": self.supernet,
            "device": self.device,
            "budget_ms": self.budget_ms,
            "best": self.best.to_dict(),
            "accuracy_source": self.accuracy_source,
            "fastest_ms": self.fastest_ms,
            "front": [p.to_dict() for p in self.front],
            "measured": [p.to_dict() for p in self.measured],
            "rounds": [r.to_dict() for r in self.rounds],
            "objective_names": list(self.objective_names),
            "wall_s": self.wall_s,
            "search_s": self.search_s,
            "measure_s": self.measure_s,
            "predictor_evals": self.predictor_evals,
            "evals_per_s": self.evals_per_s,
            "settings": dict(self.settings),
            "confirmations": [dict(c) for c in self.confirmations],
            "confirmed_within_budget": self.confirmed_within_budget,
        }


def _merge_front(front: FrontSearch, ref: Refinement, extra_objectives: Mapping[str, VectorFn] | None) -> FrontSearch:
    """``front`` with the refinement's archs added: the non-dominated set of both, sorted by latency."""
    Xr = np.asarray(ref.X, dtype=np.int64)
    cols = [-np.asarray(ref.accuracies, dtype=float), np.asarray(ref.latencies_ms, dtype=float)]
    cols += [np.asarray(fn(Xr), dtype=float).reshape(-1) for fn in (extra_objectives or {}).values()]
    X = np.concatenate([front.X, Xr])
    F = np.concatenate([front.F, np.column_stack(cols)])
    _, first = np.unique(X, axis=0, return_index=True)
    first = np.sort(first)
    X, F = X[first], F[first]
    idx = nondominated(F)
    idx = idx[np.lexsort((F[idx, 0], F[idx, 1]))]
    return replace(front, X=X[idx], F=F[idx])


def _measure(measure: MeasureFn, archs: list[dict]) -> list[float]:
    vals = list(measure(archs))
    if len(vals) != len(archs):
        raise SearchError(f"measure returned {len(vals)} latencies for {len(archs)} archs; it must return one per arch")
    out = []
    for v in vals:
        v = float("nan") if v is None else float(v)
        out.append(v if math.isfinite(v) and v > 0 else float("nan"))
    return out


def select_candidates(
    front: FrontSearch,
    budget_ms: float,
    exclude: set[str],
    ids: Sequence[str],
    pop_ids: Sequence[str],
    *,
    n_verify: int,
    n_spread: int = 2,
    band: tuple[float, float] = (0.8, 1.1),
) -> list[tuple[str, int, str]]:
    """Pick up to ``n_verify`` unmeasured archs: ``(source, row, reason)`` with source "front" or "pop".

    Near the budget (``n_verify - n_spread`` picks): latency targets spaced over ``band`` x budget,
    nearest the budget first; for each, the most accurate front point predicted at or under the
    target.  Taking the most accurate in-band points alone would pick the top of the band only,
    all over budget whenever the predictor is optimistic; spreading the targets brackets the
    budget.  Then ``n_spread`` points spread evenly across the front by predicted latency (they
    keep the refit honest away from the budget), then anything left: in-band front points most
    accurate first, in-band population points, the rest of the front.
    """
    lo, hi = band[0] * budget_ms, band[1] * budget_ms
    acc, lat = -front.F[:, 0], front.F[:, 1]
    chosen: list[tuple[str, int, str]] = []
    taken: set[str] = set(exclude)

    def take(src: str, i: int, reason: str) -> bool:
        aid = ids[i] if src == "front" else pop_ids[i]
        if aid in taken or len(chosen) >= n_verify:
            return False
        taken.add(aid)
        chosen.append((src, i, reason))
        return True

    in_band = [int(i) for i in np.argsort(-acc, kind="stable") if lo <= lat[i] <= hi]
    n_near = max(1, n_verify - n_spread)
    targets = np.geomspace(lo, hi, n_near) if n_near > 1 else np.array([budget_ms])
    targets = targets[np.argsort(np.abs(np.log(targets / budget_ms)), kind="stable")]
    for t in targets:
        for i in in_band:  # most accurate first
            if lat[i] <= t and take("front", i, "near-budget"):
                break
    rest = [i for i in np.argsort(lat, kind="stable") if ids[i] not in taken]
    if rest and n_spread > 0:
        pos = np.unique(np.round(np.linspace(0, len(rest) - 1, min(n_spread, len(rest)))).astype(int))
        for p in pos:
            take("front", int(rest[p]), "spread")
    for i in in_band:
        take("front", i, "near-budget")
    pacc, plat = -front.population_F[:, 0], front.population_F[:, 1]
    for i in np.argsort(-pacc, kind="stable"):
        if lo <= plat[i] <= hi:
            take("pop", int(i), "fill")
    for i in np.argsort(lat, kind="stable"):
        take("front", int(i), "fill")
    return chosen


def closed_loop_search(
    space: SearchSpace,
    predict_accuracy: VectorFn,
    predict_latency: VectorFn,
    refit_latency: RefitFn | None,
    measure: MeasureFn,
    budget_ms: float | str,
    *,
    rounds: int = 3,
    pop_size: int = 64,
    n_gen: int | None = None,
    time_s: float | None = None,
    refine: bool = True,
    refine_evals: int | None = None,
    refine_time_s: float | None = None,
    n_verify: int = 6,
    n_spread: int = 2,
    band: tuple[float, float] = (0.8, 1.1),
    constraint_slack: float = 0.1,
    extra_objectives: Mapping[str, VectorFn] | None = None,
    evaluate_accuracy: AccuracyFn | None = None,
    n_evaluate: int = 5,
    confirm: ConfirmFn | None = None,
    n_confirm: int = 6,
    seed: int = 0,
    crossover: str = "uniform",
    supernet: str | None = None,
    device: str = "",
    progress: Callable[[SearchEvent], None] | None = None,
) -> SearchResult:
    """Search for the most accurate arch within ``budget_ms`` of *measured* latency.

    ``predict_accuracy``/``predict_latency``/``extra_objectives`` take the ``(N, L)`` canonical gene
    matrix and return ``(N,)`` floats.  ``measure(archs)`` returns one latency (ms) per arch dict on
    the target device (nan where it failed).  ``refit_latency(rows)`` receives every measurement of
    this search so far (dicts with ``arch``, ``arch_id``, ``x`` (gene list), ``latency_ms``) and
    returns the next round's latency predictor; ``None`` keeps the predictor as is.

    The smallest arch is measured first: if it is slower than the budget, ``SearchError`` names its
    latency.  The NSGA-II constraint is the budget plus ``constraint_slack`` (the predictor may be
    pessimistic); the final choice uses measured latency against the exact budget.  With
    ``evaluate_accuracy`` the ``n_evaluate`` most promising within-budget archs are evaluated and
    the best evaluated accuracy wins.

    With ``confirm(arch) -> (latency, ci_low, ci_high)`` (a fresh measurement: a new runtime session,
    longer timing) the answer is confirmed before it is returned: the candidates, best first, are
    confirmed in turn (at most ``n_confirm``) until one's interval lies within the budget at its upper
    end; if none does, the answer is the candidate with the lowest upper end and
    ``confirmed_within_budget`` is False.

    Sizing, per round: NSGA-II runs ``n_gen`` generations of ``pop_size`` (default 40), or with
    ``time_s`` as many as fit in ``time_s`` seconds (capped at ``n_gen`` if given too).  Then, with
    ``refine``, ``refine_for_budget`` closes the budget from the front points near it
    (``refine_evals`` archs, default 10,000, or ``refine_time_s`` seconds); its best arch is the
    round's first candidate (reason "refined") and its archs join the front (non-dominated merge,
    so the front's hypervolume can only grow).  ``predictor_evals`` counts both stages.  Only
    evaluation counts (no ``time_s``/``refine_time_s``) make a run deterministic for a seed.
    """
    budget = parse_latency(budget_ms)
    if int(rounds) < 1:
        raise SearchError(f"rounds must be at least 1; got {rounds}")
    if int(n_verify) < 1:
        raise SearchError(f"n_verify must be at least 1; got {n_verify}")
    if not (0 < band[0] <= 1 <= band[1]):
        raise SearchError(f"band must satisfy 0 < low <= 1 <= high; got {band}")
    if constraint_slack < 0:
        raise SearchError(f"constraint_slack must be >= 0; got {constraint_slack}")
    if not callable(measure):
        raise SearchError("measure must be a callable taking a list of arch dicts")
    rounds = int(rounds)
    supernet = supernet if supernet is not None else space.name
    emit = progress or (lambda e: None)
    t_start = time.perf_counter()
    measured: dict[str, MeasuredPoint] = {}
    stats: list[RoundStats] = []
    search_s = measure_s = 0.0
    n_evals = 0

    def acc_of(archs: list[dict]) -> np.ndarray:
        X = canonicalize(space, np.stack([space.encode(a) for a in archs]))
        return np.asarray(predict_accuracy(X), dtype=float).reshape(-1)

    # ---------------------------------------------------------------- the fastest subnet first
    fastest = space.canonical(space.min_arch())
    fid = space.arch_id(fastest)
    emit(SearchEvent("fastest", 0, rounds, f"measuring the smallest arch {fid}"))
    t = time.perf_counter()
    (fast_ms,) = _measure(measure, [fastest])
    measure_s += time.perf_counter() - t
    if not math.isfinite(fast_ms):
        raise SearchError(f"the smallest arch {fid} could not be measured on {device or 'the device'}; check the device")
    if fast_ms > budget:
        raise SearchError(
            f"latency budget {budget:.4g} ms is below the fastest subnet of {supernet}: its smallest arch {fid} "
            f"measured {fast_ms:.4g} ms on {device or 'the device'}; ask for at least {fast_ms:.4g} ms"
        )
    fx = canonicalize(space, space.encode(fastest)[None, :])
    measured[fid] = MeasuredPoint(
        fid, fastest, fast_ms, float(np.asarray(predict_latency(fx)).reshape(-1)[0]),
        float(acc_of([fastest])[0]), 0, "fastest",
    )  # fmt: skip

    def best_so_far() -> MeasuredPoint:
        ok = [p for p in measured.values() if p.measured_latency_ms <= budget]
        return max(ok, key=lambda p: (p.accuracy, -p.measured_latency_ms))

    def rows() -> list[dict]:
        return [
            {"arch": p.arch, "arch_id": p.arch_id, "x": space.encode(p.arch).tolist(), "latency_ms": p.measured_latency_ms}
            for p in measured.values()
        ]

    if refine_evals is None and refine_time_s is None:
        refine_evals = 10_000
    lat_fn = predict_latency
    front: FrontSearch | None = None
    for k in range(1, rounds + 1):
        size = f"{pop_size} x {n_gen}" if time_s is None else f"{pop_size} x up to {time_s:g} s"
        emit(SearchEvent("search", k, rounds, f"round {k}/{rounds}: NSGA-II, {size} on the predictors"))
        front = search_front(
            space, predict_accuracy, lat_fn, budget_ms=budget * (1 + constraint_slack),
            extra_objectives=extra_objectives, pop_size=pop_size, n_gen=n_gen, seed=seed + k - 1, crossover=crossover,
            time_s=time_s,
        )  # fmt: skip
        round_s, round_evals = front.wall_s, front.n_evals
        ok_front = front.latency_ms <= budget
        front_best = float(front.accuracy[ok_front].max()) if ok_front.any() else None
        ref: Refinement | None = None
        if refine:
            emit(SearchEvent("refine", k, rounds, f"round {k}/{rounds}: refining for {budget:.4g} ms on the predictors"))
            ref = refine_for_budget(
                space, predict_accuracy, lat_fn, budget, near_budget_rows(front.X, front.latency_ms, budget),
                n_evals=refine_evals, time_s=refine_time_s, seed=seed + k - 1,
            )  # fmt: skip
            round_s += ref.wall_s
            round_evals += ref.n_evals
            if ref.x is not None:
                front = _merge_front(front, ref, extra_objectives)
        search_s += round_s
        n_evals += round_evals
        ids = [space.arch_id(space.decode(x)) for x in front.X]
        pop_ids = [space.arch_id(space.decode(x)) for x in front.population_X]
        first: list[tuple[str, int, str]] = []
        if ref is not None and ref.x is not None:
            rid = space.arch_id(space.decode(ref.x))
            if rid not in measured and rid in ids:
                first = [("front", ids.index(rid), "refined")]
        picks = first + select_candidates(
            front, budget, set(measured) | {ids[i] for _, i, _ in first}, ids, pop_ids,
            n_verify=n_verify - len(first), n_spread=n_spread, band=band,
        )  # fmt: skip
        archs, pred_lat, pred_acc, reasons = [], [], [], []
        for src, i, reason in picks:
            Xs, Fs = (front.X, front.F) if src == "front" else (front.population_X, front.population_F)
            archs.append(space.decode(Xs[i]))
            pred_acc.append(float(-Fs[i, 0]))
            pred_lat.append(float(Fs[i, 1]))
            reasons.append(reason)
        emit(SearchEvent("measure", k, rounds, f"round {k}/{rounds}: measuring {len(archs)} archs on {device or 'the device'}"))
        t = time.perf_counter()
        lats = _measure(measure, archs) if archs else []
        dt = time.perf_counter() - t
        measure_s += dt
        errs = []
        for a, ml, pl, pa, why in zip(archs, lats, pred_lat, pred_acc, reasons):
            if not math.isfinite(ml):
                continue
            aid = space.arch_id(a)
            measured[aid] = MeasuredPoint(aid, a, ml, pl, pa, k, why)
            errs.append(abs(pl - ml) / ml * 100)
        refit_s = None
        if refit_latency is not None and k < rounds and errs:
            emit(SearchEvent("refit", k, rounds, f"round {k}/{rounds}: refitting the latency predictor on {len(measured)} measurements"))
            t = time.perf_counter()
            new = refit_latency(rows())
            refit_s = time.perf_counter() - t
            if not callable(new):
                raise SearchError("refit_latency must return the new predict_latency callable")
            lat_fn = new
        b = best_so_far()
        stats.append(RoundStats(
            round=k, predictor_evals=round_evals, search_s=round_s,
            evals_per_s=round_evals / round_s if round_s > 0 else float("inf"),
            front_size=len(front.X), predicted_feasible=front.feasible, n_measured=len(errs), measure_s=dt,
            latency_mape_pct=float(np.mean(errs)) if errs else None,
            latency_max_err_pct=float(np.max(errs)) if errs else None, refit_s=refit_s,
            best_arch_id=b.arch_id, best_measured_latency_ms=b.measured_latency_ms, best_accuracy=b.accuracy,
            refine_evals=ref.n_evals if ref is not None else 0, front_best_accuracy=front_best,
            refined_accuracy=ref.accuracy if ref is not None else None,
            refined_latency_ms=ref.latency_ms if ref is not None else None,
        ))  # fmt: skip

    # ---------------------------------------------------------------- final choice
    source = "predicted"
    if evaluate_accuracy is not None:
        ok = sorted(
            (p for p in measured.values() if p.measured_latency_ms <= budget),
            key=lambda p: (-p.predicted_accuracy, p.measured_latency_ms),
        )[: max(1, int(n_evaluate))]
        emit(SearchEvent("evaluate", rounds, rounds, f"evaluating the accuracy of {len(ok)} within-budget archs"))
        vals = list(evaluate_accuracy([p.arch for p in ok]))
        if len(vals) != len(ok):
            raise SearchError(f"evaluate_accuracy returned {len(vals)} values for {len(ok)} archs")
        for p, v in zip(ok, vals):
            measured[p.arch_id] = MeasuredPoint(**{**asdict(p), "evaluated_accuracy": float(v)})
        source = "evaluated"
        cands = [measured[p.arch_id] for p in ok]
        ranked = sorted(cands, key=lambda p: (-(p.evaluated_accuracy or 0.0), p.measured_latency_ms))
    else:
        ranked = sorted((p for p in measured.values() if p.measured_latency_ms <= budget),
                        key=lambda p: (-p.accuracy, p.measured_latency_ms))
    best = ranked[0]
    confirmations: list[dict] = []
    confirmed_ok: bool | None = None
    if confirm is not None:
        emit(SearchEvent("confirm", rounds, rounds, "confirming the answer in a fresh measurement"))
        tried: list[MeasuredPoint] = []
        for p in ranked[: max(1, int(n_confirm))]:
            lat, lo, hi = (float(v) for v in confirm(p.arch))
            q = MeasuredPoint(**{**asdict(p), "confirmed_latency_ms": lat, "confirmed_ci_ms": (lo, hi)})
            measured[p.arch_id] = q
            tried.append(q)
            confirmations.append({"arch_id": p.arch_id, "latency_ms": lat, "ci_low_ms": lo, "ci_high_ms": hi,
                                  "search_latency_ms": p.measured_latency_ms, "within_budget": hi <= budget})
            if hi <= budget:
                break
        ok_tried = [q for q in tried if q.confirmed_ci_ms[1] <= budget]  # type: ignore[index]
        confirmed_ok = bool(ok_tried)
        best = ok_tried[0] if ok_tried else min(tried, key=lambda q: q.confirmed_ci_ms[1])  # type: ignore[index]

    assert front is not None
    names = front.objective_names
    fpoints = []
    for x, f in zip(front.X, front.F):
        a = space.decode(x)
        aid = space.arch_id(a)
        m = measured.get(aid)
        fpoints.append(FrontPoint(
            aid, a, float(-f[0]), float(f[1]), {n: float(v) for n, v in zip(names[2:], f[2:])},
            m.measured_latency_ms if m else None,
        ))  # fmt: skip
    wall = time.perf_counter() - t_start
    lat_note = (f"{best.confirmed_latency_ms:.4g} ms confirmed" if best.confirmed_latency_ms is not None
                else f"{best.measured_latency_ms:.4g} ms measured")
    emit(SearchEvent("done", rounds, rounds, f"chose {best.arch_id}: {lat_note}"))
    return SearchResult(
        supernet=supernet, device=device, budget_ms=budget, best=best, accuracy_source=source, fastest_ms=fast_ms,
        front=tuple(fpoints), measured=tuple(sorted(measured.values(), key=lambda p: (p.round, p.measured_latency_ms))),
        rounds=tuple(stats), objective_names=tuple(names), wall_s=wall, search_s=search_s, measure_s=measure_s,
        predictor_evals=n_evals, evals_per_s=n_evals / search_s if search_s > 0 else float("inf"),
        settings={
            "rounds": rounds, "pop_size": pop_size, "n_gen": n_gen, "time_s": time_s, "refine": bool(refine),
            "refine_evals": refine_evals, "refine_time_s": refine_time_s, "n_verify": n_verify, "n_spread": n_spread,
            "band": list(band), "constraint_slack": constraint_slack, "seed": seed, "crossover": crossover,
            "n_evaluate": n_evaluate if evaluate_accuracy is not None else None,
            "n_confirm": n_confirm if confirm is not None else None,
        },
        confirmations=tuple(confirmations), confirmed_within_budget=confirmed_ok,
    )  # fmt: skip


__all__ = [
    "AccuracyFn",
    "ConfirmFn",
    "FrontPoint",
    "MeasureFn",
    "MeasuredPoint",
    "RefitFn",
    "RoundStats",
    "SearchEvent",
    "SearchResult",
    "closed_loop_search",
    "select_candidates",
]
