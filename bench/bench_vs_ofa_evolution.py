"""Benchmark: hwnas's search (NSGA-II front + budget refinement) against Once-for-All's own
``EvolutionFinder`` on the same shipped ``mbv3_fmnist`` predictors, predictor-only (no device).

    python bench/bench_vs_ofa_evolution.py [--store hwnas/resources/predictors/mbv3_fmnist/reference_store.sqlite]
        [--seeds 3] [--fractions 0.1,0.3,0.5,0.7,0.9] [--ofa-pop 100] [--ofa-gens 500]
        [--front-s 1.5] [--refine-s 1.0] [--pop 128]

Budgets: fractions of the measured latency range of the store's ``ort-cpu-1t`` rows.  OFA's finder
runs at its defaults (population 100, 500 generations), with its own ``MobileNetArchEncoder`` given
our space's ks/e/d/resolution lists; our predictors are wrapped in the interfaces it calls
(``predict_acc(list of arch dicts)`` returning a tensor, ``get_efficiency(arch dict)``).  Seeds:
OFA draws from Python's ``random`` and NumPy's global generator, both seeded per run.  hwnas: per
budget, ``search_front`` (the loop's slackened constraint, budget x 1.1) for ``--front-s`` seconds
then ``refine_for_budget`` for ``--refine-s`` seconds; its wall time includes the whole front.
"Calls" count archs passed to a predictor (OFA: every ``get_efficiency`` call plus every arch
in ``predict_acc``; hwnas: rows through both predictors, counted once per arch).

Also prints the NSGA-II front's hypervolume (``baselines.hypervolume``, normalized box of
``reference_point``) at equal wall time: NSGA-II alone for front-s + refine-s seconds ("before")
against NSGA-II for front-s seconds plus the refinement at each budget, merged ("after").
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRED = ROOT / "hwnas" / "resources" / "predictors" / "mbv3_fmnist"


def import_ofa_evolution():
    """OFA's ``EvolutionFinder`` and ``MobileNetArchEncoder`` without its torchvision data loader."""
    sys.path.insert(0, str(ROOT / "bench"))
    from ofa_compat import import_ofa_mbv3

    import_ofa_mbv3()  # assembles ofa.utils without my_dataloader where torchvision cannot load
    try:
        import tqdm  # noqa: F401  (evolution.py imports it for its progress bar only)
    except ImportError:  # a silent stand-in: run_evolution_search uses tqdm(...) as a context manager
        import types

        class _Bar:
            def __init__(self, *a, **k):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def set_postfix(self, *a, **k):
                pass

            def update(self, *a, **k):
                pass

        sys.modules["tqdm"] = types.SimpleNamespace(tqdm=_Bar)
    evo = importlib.import_module("ofa.nas.search_algorithm.evolution").EvolutionFinder
    enc = importlib.import_module("ofa.nas.accuracy_predictor.arch_encoder").MobileNetArchEncoder
    return evo, enc


class OFAAccuracy:
    """OFA's accuracy-predictor interface over an hwnas predictor; ``arch_encoder`` is OFA's sampler."""

    def __init__(self, predict, arch_encoder):
        import torch

        self.torch, self.predict, self.arch_encoder = torch, predict, arch_encoder
        self.calls = 0

    @staticmethod
    def to_hwnas(arch: dict) -> dict:
        return {"ks": list(arch["ks"]), "e": list(arch["e"]), "d": list(arch["d"]), "r": int(arch["image_size"])}

    def predict_acc(self, archs):
        self.calls += len(archs)
        return self.torch.as_tensor(self.predict([self.to_hwnas(a) for a in archs]), dtype=self.torch.float64)

    predict_accuracy = predict_acc


class OFALatency:
    """OFA's efficiency-predictor interface: one arch dict per call, latency in ms."""

    def __init__(self, predict):
        self.predict, self.calls = predict, 0

    def get_efficiency(self, arch):
        self.calls += 1
        return float(self.predict([OFAAccuracy.to_hwnas(arch)])[0])


def fmt(vals, digits=4):
    v = np.asarray(vals, dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=str(PRED / "reference_store.sqlite"))
    p.add_argument("--device", default="ort-cpu-1t")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fractions", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--ofa-pop", type=int, default=100)
    p.add_argument("--ofa-gens", type=int, default=500)
    p.add_argument("--pop", type=int, default=128, help="hwnas NSGA-II population")
    p.add_argument("--front-s", type=float, default=1.5, help="hwnas NSGA-II seconds per budget")
    p.add_argument("--refine-s", type=float, default=1.0, help="hwnas refinement seconds per budget")
    p.add_argument("--skip-ofa", action="store_true")
    args = p.parse_args(argv)

    from hwnas.archsearch import (
        encode_archs, hypervolume, near_budget_rows, refine_for_budget, reference_point, search_front,
    )  # fmt: skip
    from hwnas.archsearch.problem import nondominated
    from hwnas.predictors import load_predictor
    from hwnas.predictors.jobs import load_latency_data
    from hwnas.supernet.registry import get_family

    space = get_family("mbv3_fmnist").config.space
    lat_p = load_predictor(PRED / f"{args.device}.xgb.json")
    acc_p = load_predictor(PRED / "accuracy.json")
    pl, pa = lat_p.predict, acc_p.predict
    y = np.asarray(load_latency_data(args.store, args.device, "mbv3_fmnist")["y"], dtype=float)
    fracs = [float(f) for f in args.fractions.split(",")]
    budgets = [float(y.min() + f * (y.max() - y.min())) for f in fracs]
    print(f"predictors: {PRED.name}/{args.device}.xgb.json, accuracy.json; measured range of {len(y)} {args.device} "
          f"rows {y.min():.4f}-{y.max():.4f} ms; budgets {', '.join(f'{b:.4f}' for b in budgets)} ms")
    print(f"OFA EvolutionFinder: population {args.ofa_pop}, {args.ofa_gens} generations (defaults); "
          f"hwnas: NSGA-II pop {args.pop} for {args.front_s:g} s + refinement {args.refine_s:g} s per budget; "
          f"{args.seeds} seeds")
    if not args.skip_ofa:
        Finder, Encoder = import_ofa_evolution()
    res = {}
    for b, f in zip(budgets, fracs):
        rows = {"ofa": [], "hwnas": [], "front": []}
        for seed in range(args.seeds):
            # ---- hwnas: the front (slackened constraint, as closed_loop_search) + refinement at the budget
            t0 = time.perf_counter()
            fr = search_front(space, pa, pl, budget_ms=b * 1.1, pop_size=args.pop, time_s=args.front_s, seed=seed)
            ref = refine_for_budget(space, pa, pl, b, near_budget_rows(fr.X, fr.latency_ms, b), time_s=args.refine_s,
                                    seed=seed)
            wall = time.perf_counter() - t0
            ok = fr.latency_ms <= b
            fi = int(np.argmax(np.where(ok, fr.accuracy, -np.inf))) if ok.any() else None
            rows["front"].append((fr.accuracy[fi] if fi is not None else np.nan,
                                  fr.latency_ms[fi] if fi is not None else np.nan))
            assert ref.x is not None and ref.latency_ms <= b
            # check the answer with a fresh prediction (what a caller would see)
            chk = encode_archs(space, [space.decode(ref.x)])
            assert abs(float(pa(chk)[0]) - ref.accuracy) < 1e-9 and float(pl(chk)[0]) <= b
            rows["hwnas"].append((ref.accuracy, ref.latency_ms, fr.n_evals + ref.n_evals, wall))
            # ---- OFA
            if not args.skip_ofa:
                random.seed(seed)
                np.random.seed(seed)
                enc = Encoder(image_size_list=list(space.resolutions), ks_list=list(space.ks_list),
                              expand_list=list(space.e_list), depth_list=list(space.d_list), n_stage=space.n_stages)
                acc_w, lat_w = OFAAccuracy(pa, enc), OFALatency(pl)
                finder = Finder(lat_w, acc_w, population_size=args.ofa_pop, max_time_budget=args.ofa_gens)
                t0 = time.perf_counter()
                import contextlib
                import io

                with contextlib.redirect_stdout(io.StringIO()):  # it prints every 100 generations
                    _, info = finder.run_evolution_search(b, verbose=False)
                wall = time.perf_counter() - t0
                a_ofa = float(pa([OFAAccuracy.to_hwnas(info[1])])[0])
                rows["ofa"].append((a_ofa, float(info[2]), lat_w.calls + acc_w.calls, wall))
            print(f"  budget {b:.4f} seed {seed}: hwnas {100 * ref.accuracy:.3f}% ({wall if args.skip_ofa else rows['hwnas'][-1][3]:.1f} s)"
                  + ("" if args.skip_ofa else f", OFA {100 * rows['ofa'][-1][0]:.3f}% ({rows['ofa'][-1][3]:.1f} s)"),
                  file=sys.stderr, flush=True)
        res[b] = rows
    # ---------------------------------------------------------------- the table
    print()
    print(f"{'budget':>14} {'method':<20} {'best pred. acc %':>18} {'its pred. lat ms':>18} {'calls (archs)':>16} "
          f"{'wall s':>14}")
    for b, f in zip(budgets, fracs):
        rows = res[b]
        label = f"{b:.4f} ({100 * f:.0f}%)"
        for name, key in (("OFA EvolutionFinder", "ofa"), ("hwnas NSGA-II+refine", "hwnas")):
            if not rows[key]:
                continue
            a = np.array(rows[key], dtype=float)
            print(f"{label:>14} {name:<20} {fmt(100 * a[:, 0], 3):>18} {fmt(a[:, 1]):>18} {fmt(a[:, 2], 0):>16} "
                  f"{fmt(a[:, 3], 2):>14}")
            label = ""
        fa = np.array(rows["front"], dtype=float)
        print(f"{'':>14} {'(hwnas front only)':<20} {fmt(100 * fa[:, 0], 3):>18} {fmt(fa[:, 1]):>18}")
        if rows["ofa"]:
            h, o = np.array(rows["hwnas"]), np.array(rows["ofa"])
            print(f"{'':>14} hwnas - OFA: {100 * (h[:, 0].mean() - o[:, 0].mean()):+.3f} points, wall time ratio "
                  f"{h[:, 3].mean() / o[:, 3].mean():.3f}")
    # ---------------------------------------------------------------- HV at equal wall time
    ref_pt = reference_point(space, pa, pl)
    T = args.front_s + args.refine_s
    before, after, old = [], [], []
    for seed in range(args.seeds):
        o = search_front(space, pa, pl, pop_size=64, n_gen=40, seed=seed)
        old.append(hypervolume(o.accuracy, o.latency_ms, **ref_pt))
        nb = search_front(space, pa, pl, pop_size=args.pop, time_s=T, seed=seed)
        before.append(hypervolume(nb.accuracy, nb.latency_ms, **ref_pt))
        t0 = time.perf_counter()
        fr = search_front(space, pa, pl, pop_size=args.pop, time_s=args.front_s, seed=seed)
        Xs, A, Lt = [fr.X], [fr.accuracy], [fr.latency_ms]
        left = max(0.05, T - (time.perf_counter() - t0))
        for b in budgets:
            r = refine_for_budget(space, pa, pl, b, near_budget_rows(fr.X, fr.latency_ms, b), time_s=left / len(budgets),
                                  seed=seed)
            Xs.append(r.X)
            A.append(r.accuracies)
            Lt.append(r.latencies_ms)
        A, Lt = np.concatenate(A), np.concatenate(Lt)
        idx = nondominated(np.column_stack([-A, Lt]))
        after.append(hypervolume(A[idx], Lt[idx], **ref_pt))
    print()
    print(f"front hypervolume (normalized, {args.seeds} seeds; no budget constraint):")
    print(f"  NSGA-II 64 x 40 (the previous default, ~0.2 s)                : {fmt(old)}")
    print(f"  before: NSGA-II pop {args.pop} for {T:g} s                          : {fmt(before)}")
    print(f"  after:  NSGA-II {args.front_s:g} s + refinement at the {len(budgets)} budgets (same {T:g} s): {fmt(after)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
