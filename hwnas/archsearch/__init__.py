"""Search: the pymoo problem, NSGA-II on the predictors, closed-loop verification on the device,
baselines and Pareto outputs.

Predictors plug in through one protocol: a callable on the ``(N, L)`` integer gene matrix of
``space.encode`` (canonical: genes without effect at their fixed choice, ``space.canonicalize``) returning ``(N,)``
floats: ``predict_accuracy``, ``predict_latency`` (ms) and optional extra objectives (minimized).
"""

from hwnas.archsearch.baselines import (
    BaselineFront,
    evolution_search,
    evolution_sweep,
    hypervolume,
    nsga2_front,
    random_search,
    reference_point,
    sweep_budgets,
)
from hwnas.archsearch.loop import (
    FrontPoint,
    MeasuredPoint,
    RoundStats,
    SearchEvent,
    SearchResult,
    closed_loop_search,
)
from hwnas.archsearch.measure import device_confirm, device_measure
from hwnas.archsearch.output import best_arch_dict, format_table, plot_front, write_outputs
from hwnas.archsearch.problem import (
    CanonicalRepair,
    CategoricalMutation,
    FrontSearch,
    SubnetProblem,
    VectorFn,
    canonicalize,
    decode_rows,
    encode_archs,
    make_nsga2,
    search_front,
)
from hwnas.archsearch.refine import Refinement, near_budget_rows, refine_for_budget
from hwnas.archsearch.units import parse_latency

__all__ = [
    "BaselineFront",
    "CanonicalRepair",
    "CategoricalMutation",
    "FrontPoint",
    "FrontSearch",
    "MeasuredPoint",
    "Refinement",
    "RoundStats",
    "SearchEvent",
    "SearchResult",
    "SubnetProblem",
    "VectorFn",
    "best_arch_dict",
    "canonicalize",
    "closed_loop_search",
    "decode_rows",
    "device_confirm",
    "device_measure",
    "encode_archs",
    "evolution_search",
    "evolution_sweep",
    "format_table",
    "hypervolume",
    "make_nsga2",
    "near_budget_rows",
    "nsga2_front",
    "parse_latency",
    "plot_front",
    "random_search",
    "reference_point",
    "refine_for_budget",
    "search_front",
    "sweep_budgets",
    "write_outputs",
]
