"""Benchmark: hwnas's search (NSGA-II front + budget refinement) against Once-for-All's own
``EvolutionFinder`` on the same shipped ``mbv3_fmnist`` predictors, predictor-only (no device).

    python bench/bench_vs_ofa_evolution.py [--store hwnas/resources/predictors/mbv3_fmnist/reference_store.sqlite]
        [--seeds 3] [--fractions 0.1,0.3,0.5,0.7,0.9] [--ofa-pop 100] [--ofa-gens 500]
        [--front-s 1.0] [--refine-s 1.0] [--pop 128] [--ofa-cache FILE.json] [--skip-hv]

Budgets: fractions of the measured latency range of the store's ``ort-cpu-1t`` rows.  OFA's finder
runs at its defaults (population 100, 500 generations), with its own ``MobileNetArchEncoder`` given
our space's ks/e/d/resolution lists; our predictors are wrapped in the interfaces it calls
(``predict_acc(list of arch dicts)`` returning a tensor, ``get_efficiency(arch dict)``).  Seeds:
OFA draws from Python's ``random`` and NumPy's global generator, both seeded per run.  hwnas: per
budget, ``search_front`` (the loop's slackened constraint, budget x 1.1) for ``--front-s`` seconds
then ``refine_for_budget`` for ``--refine-s`` seconds; its wall time includes the whole front.
"Calls" count archs passed to a predictor (OFA: every ``get_efficiency`` call plus every arch
in ``predict_acc``; hwnas: rows through both predictors, counted once per arch).

``--ofa-cache FILE.json``: OFA's result per (budget, seed) (its arch, predicted accuracy and
latency, calls, wall time) is stored in FILE, keyed by the budget, seed, population, generations
and a digest of the two predictor files; an entry found there is reused instead of rerunning OFA
(each such line says "cached", and so does the table), so hwnas can be iterated on without OFA's
~25-50 s per run.  A cached wall time was measured in another run: for a fair ratio, run without
the cache (the final table needs a fresh OFA run).

Also prints the NSGA-II front's hypervolume (``baselines.hypervolume``, normalized box of
``reference_point``) at equal wall time: NSGA-II alone for front-s + refine-s seconds ("before")
against NSGA-II for front-s seconds plus the refinement at each budget (the rest of the time, split
evenly), the non-dominated set of each refinement's evaluated archs merged in ("after").
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
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
    p.add_argument("--front-s", type=float, default=1.0, help="hwnas NSGA-II seconds per budget")
    p.add_argument("--refine-s", type=float, default=1.0, help="hwnas refinement seconds per budget")
    p.add_argument("--skip-ofa", action="store_true")
    p.add_argument("--ofa-cache", default=None, metavar="FILE.json",
                   help="reuse (and store) OFA's per-(budget, seed) results in this JSON file")
    p.add_argument("--skip-hv", action="store_true", help="skip the hypervolume at equal wall time")
    p.add_argument("--dump", default=None, metavar="FILE.json", help="write the per-seed results (archs included)")
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
    digest = hashlib.sha1(b"".join((PRED / n).read_bytes() for n in (f"{args.device}.xgb.json", "accuracy.json")))
    digest = digest.hexdigest()[:12]
    cache_path = Path(args.ofa_cache) if args.ofa_cache else None
    cache = json.loads(cache_path.read_text()) if cache_path is not None and cache_path.exists() else {}
    n_cached = 0

    def ofa_key(b: float, seed: int) -> str:
        return f"budget={b:.6f}|seed={seed}|pop={args.ofa_pop}|gens={args.ofa_gens}|predictors={digest}"

    Finder = Encoder = None
    res = {}
    for b, f in zip(budgets, fracs):
        rows = {"ofa": [], "hwnas": [], "front": [], "ofa_x": [], "hwnas_x": []}
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
                key = ofa_key(b, seed)
                hit = cache.get(key)
                if hit is None:
                    if Finder is None:
                        Finder, Encoder = import_ofa_evolution()
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
                    wall_o = time.perf_counter() - t0
                    arch = OFAAccuracy.to_hwnas(info[1])
                    hit = {"accuracy": float(pa([arch])[0]), "latency_ms": float(info[2]),
                           "calls": int(lat_w.calls + acc_w.calls), "wall_s": float(wall_o),
                           "x": space.canonicalize(space.encode(arch)).tolist(), "cached": False}
                    if cache_path is not None:
                        cache[key] = {k: v for k, v in hit.items() if k != "cached"}
                        cache_path.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(cache[k])}" for k in sorted(cache))
                                              + "\n}\n")
                else:
                    hit = dict(hit, cached=True)
                    n_cached += 1
                rows["ofa"].append((hit["accuracy"], hit["latency_ms"], hit["calls"], hit["wall_s"]))
                rows["ofa_x"].append(hit["x"])
            rows["hwnas_x"].append(np.asarray(ref.x).tolist())
            line = f"  budget {b:.4f} seed {seed}: hwnas {100 * ref.accuracy:.3f}% ({rows['hwnas'][-1][3]:.2f} s)"
            if rows["ofa"]:
                o = rows["ofa"][-1]
                diff = np.asarray(rows["ofa_x"][-1]) != np.asarray(rows["hwnas_x"][-1])
                line += (f", OFA {100 * o[0]:.3f}% ({o[3]:.1f} s{', cached' if hit['cached'] else ''}): "
                         f"{100 * (ref.accuracy - o[0]):+.3f} points, ratio {rows['hwnas'][-1][3] / o[3]:.3f}, "
                         f"{int(diff.sum())} genes apart" + ("  LOSS" if ref.accuracy < o[0] else ""))
            print(line, file=sys.stderr, flush=True)
        res[b] = rows
    # ---------------------------------------------------------------- the table
    print()
    if n_cached:
        print(f"OFA: {n_cached} of {len(budgets) * args.seeds} runs reused from {cache_path} (cached; their wall times "
              f"come from another run)")
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
            d = 100 * (h[:, 0] - o[:, 0])
            print(f"{'':>14} hwnas - OFA: {d.mean():+.3f} points (mean; per seed {', '.join(f'{v:+.3f}' for v in d)}; "
                  f"{int((d < 0).sum())} seeds lose), wall time ratio {h[:, 3].mean() / o[:, 3].mean():.3f} "
                  f"(worst seed {(h[:, 3] / o[:, 3]).max():.3f})")
    if args.dump:
        Path(args.dump).write_text(json.dumps({f"{b:.6f}": {k: np.asarray(v).tolist() for k, v in r.items()}
                                               for b, r in res.items()}, indent=1))
    # ---------------------------------------------------------------- HV at equal wall time
    if args.skip_hv:
        return 0
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
            Xs.append(r.pareto_X)  # the non-dominated set of all it evaluated (its best included)
            A.append(r.pareto_accuracies)
            Lt.append(r.pareto_latencies_ms)
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
