"""Benchmark: NSGA-II against random search and OFA-style evolution at equal predictor evaluations.

    python bench/bench_search.py [--device ort-cpu-1t] [--store runs/measurements.sqlite] [--seeds 5]
                                 [--pop 64] [--gens 40] [--latency 0.25ms] [--measure-max 0]

Predictors: until ``hwnas.predictors`` ships artifacts this script uses the search tests' FIXTURES
(``tests/archsearch/search_fixtures.py``): a ridge latency model fit on real measurements from the
device (rows for the device and supernet already in ``--store``, else ``--n-train`` archs measured
now) and an accuracy proxy monotone in MACs.  Figures are about the search algorithms on those
models, not about the predictors.

Fronts are compared by normalized hypervolume (pymoo ``HV``; fixed box from the smallest and
largest arch, see ``hwnas.archsearch.baselines.reference_point``), mean and std over seeds.  With
``--measure-max K`` up to K points of each front (evenly spread by latency) are measured on the
device and the HV is recomputed with measured latency.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_fixtures():
    spec = importlib.util.spec_from_file_location("search_fixtures", ROOT / "tests" / "archsearch" / "search_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def latency_training_data(args, net, space, store, measure):
    """(X, y) for the ridge fixture: the store's rows for this device/supernet, topped up by measuring."""
    from hwnas.devices import fingerprint_for, load_device, runtime_config, stratified_sample
    from hwnas.archsearch import encode_archs

    spec = load_device(args.device)
    fp = fingerprint_for(spec)
    rc = runtime_config(spec)
    rows = [r for r in store.measurements(fp_hash=fp.fp_hash, supernet=args.supernet)
            if r["runtime_config"] == rc and r["arch"] and r["batch"] == spec.batch and r["precision"] == spec.precision]
    if len(rows) < args.n_train:
        fix = load_fixtures()
        cfg = net.config
        size = lambda a: float(fix.cost_features(cfg, space.encode(a)[None])[0, 0])  # noqa: E731
        archs = [a for _, a in stratified_sample(space, args.n_train, args.seed_data, size)]
        print(f"measuring {len(archs)} archs on {args.device} for the latency fixture ...", file=sys.stderr)
        measure(archs)
        rows = [r for r in store.measurements(fp_hash=fp.fp_hash, supernet=args.supernet) if r["runtime_config"] == rc
                and r["arch"] and r["batch"] == spec.batch and r["precision"] == spec.precision]
    X = encode_archs(space, [r["arch"] for r in rows])
    y = np.array([r["median_ms"] for r in rows], dtype=float)
    return X, y


def spread(front, k):
    if k <= 0 or len(front.X) <= k:
        return np.arange(len(front.X))
    return np.unique(np.round(np.linspace(0, len(front.X) - 1, k)).astype(int))


def fmt(vals):
    v = np.asarray(vals, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", default="mbv3_fmnist")
    p.add_argument("--device", default="ort-cpu-1t")
    p.add_argument("--store", default=None, help="measurement store (SQLite); default: a temporary one")
    p.add_argument("--n-train", type=int, default=40, help="archs behind the latency fixture")
    p.add_argument("--seed-data", type=int, default=0)
    p.add_argument("--time-cap", type=float, default=0.2, help="seconds of timed runs per arch when measuring")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--pop", type=int, default=64)
    p.add_argument("--gens", type=int, default=40)
    p.add_argument("--budgets", type=int, default=6, help="budgets in the evolution sweep")
    p.add_argument("--evo-pop", type=int, default=100, help="OFA EvolutionFinder population size")
    p.add_argument("--latency", default=None, help="a budget for the single-budget table (default: median)")
    p.add_argument("--measure-max", type=int, default=0, help="measure up to K points per front (0: predicted only)")
    p.add_argument("--predictors", choices=["fixtures", "real"], default="fixtures",
                   help="real: the shipped accuracy predictor and an xgb latency predictor fit on --store")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from hwnas.devices import ProtocolSettings, Store
    from hwnas.jobs import anchor_of, supernet_model_builder
    from hwnas.archsearch import (
        device_measure, encode_archs, evolution_search, evolution_sweep, hypervolume, nsga2_front, parse_latency,
        random_search, reference_point, search_front, sweep_budgets,
    )  # fmt: skip
    from hwnas.supernet.registry import create_supernet

    fix = load_fixtures()
    net = create_supernet(args.supernet, pretrained=False)
    space, cfg = net.space, net.config
    tmp = tempfile.TemporaryDirectory(prefix="hwnas-bench-search-")
    store_path = Path(args.store) if args.store else Path(tmp.name) / "measurements.sqlite"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    settings = ProtocolSettings(warmup_runs=5, warmup_s=0.05, min_runs=20, time_cap_s=args.time_cap)
    out: dict = {"settings": vars(args)}
    with Store(store_path) as store:
        build = supernet_model_builder(net, "torch" if args.device.startswith("torch") else "ort", Path(tmp.name) / "onnx")
        measure = device_measure(store, args.device, build, args.supernet, space, settings=settings,
                                 anchor=anchor_of(net.family))  # the scale of the store's anchored rows
        X, y = latency_training_data(args, net, space, store, measure)
        if args.predictors == "real":
            from hwnas.jobs import shipped_predictor_path
            from hwnas.predictors.artifacts import load_predictor
            from hwnas.predictors.base import create_predictor

            lat = create_predictor("xgb", supernet=args.supernet).fit(X, y)  # fit on every stored row
            pl = lat.predict
            pa = load_predictor(shipped_predictor_path(args.supernet, "accuracy.json")).predict
            print(f"predictors: xgb latency on {len(y)} real {args.device} measurements, shipped accuracy predictor")
        else:
            pl = fix.RidgeLatency(cfg).fit(X, y)
            pa = fix.MacsAccuracyProxy(cfg)
            resid = np.abs(pl(X) - y) / y * 100
            print(f"latency fixture: ridge on {len(y)} real {args.device} measurements "
                  f"({y.min():.3f}-{y.max():.3f} ms), train MAPE {resid.mean():.1f}%")
        ref = reference_point(space, pa, pl)
        budgets = sweep_budgets(float(pl(encode_archs(space, [space.min_arch()]))[0]),
                                float(pl(encode_archs(space, [space.max_arch()]))[0]), args.budgets)
        methods = ["nsga2", "random", "evolution-sweep", "evolution-sweep-archive"]
        hv = {m: [] for m in methods}
        hv_meas = {m: [] for m in methods}
        size = {m: [] for m in methods}
        wall = {m: [] for m in methods}
        evals, eps = [], []
        for seed in range(args.seeds):
            ns = nsga2_front(space, pa, pl, pop_size=args.pop, n_gen=args.gens, seed=seed)
            n = ns.n_evals
            evals.append(n)
            eps.append(ns.info["evals_per_s"])
            fronts = [
                ns,
                random_search(space, pa, pl, n, seed=seed),
                evolution_sweep(space, pa, pl, budgets, n, seed=seed, population_size=args.evo_pop),
                evolution_sweep(space, pa, pl, budgets, n, seed=seed, population_size=args.evo_pop, use_archive=True),
            ]
            for f in fronts:
                hv[f.method].append(hypervolume(f.accuracy, f.latency_ms, **ref))
                size[f.method].append(len(f.X))
                wall[f.method].append(f.wall_s)
                if args.measure_max > 0:
                    idx = spread(f, args.measure_max)
                    lat = np.array(measure([space.decode(x) for x in f.X[idx]]))
                    ok = np.isfinite(lat)
                    hv_meas[f.method].append(hypervolume(f.accuracy[idx][ok], lat[ok], **ref))
        print(f"\nNSGA-II pop {args.pop} x {args.gens} gens: {np.mean(evals):.0f} predictor evaluations per run, "
              f"{np.mean(eps):.0f} evals/s (pymoo loop + predictors); every method gets the same count")
        print(f"HV box: accuracy [{ref['ref_accuracy']:.4f}, {ref['ideal_accuracy']:.4f}], "
              f"latency [{ref['ideal_latency_ms']:.4f}, {ref['ref_latency_ms']:.4f}] ms; {args.seeds} seeds\n")
        hdr = f"{'method':<26} {'HV (predicted)':>18} {'HV (measured)':>18} {'front':>6} {'wall s':>7}"
        print(hdr)
        print("-" * len(hdr))
        table = []
        for m in methods:
            hm = fmt(hv_meas[m]) if hv_meas[m] else "-"
            print(f"{m:<26} {fmt(hv[m]):>18} {hm:>18} {np.mean(size[m]):>6.1f} {np.mean(wall[m]):>7.2f}")
            table.append({"method": m, "hv_mean": float(np.mean(hv[m])), "hv_std": float(np.std(hv[m], ddof=1)) if len(hv[m]) > 1 else 0.0,
                          "hv_measured": hv_meas[m] or None, "front_size": float(np.mean(size[m])),
                          "wall_s": float(np.mean(wall[m])), "hv": hv[m]})

        # single budget: best predicted accuracy within budget at equal evaluations
        budget = parse_latency(args.latency) if args.latency else float(np.median(y))
        best = {"nsga2": [], "evolution": [], "random": []}
        for seed in range(args.seeds):
            r = search_front(space, pa, pl, budget_ms=budget, pop_size=args.pop, n_gen=args.gens, seed=seed)
            best["nsga2"].append(r.accuracy.max() if r.feasible else np.nan)
            e = evolution_search(space, pa, pl, budget, r.n_evals, seed=seed, population_size=args.evo_pop)
            best["evolution"].append(e.accuracy if e.accuracy is not None else np.nan)
            rs = random_search(space, pa, pl, r.n_evals, seed=seed, budget_ms=budget)
            best["random"].append(rs.accuracy.max() if len(rs.X) else np.nan)
        print(f"\nbest predicted accuracy within {budget:.4g} ms (predicted), equal evaluations, {args.seeds} seeds")
        for m, v in best.items():
            print(f"  {m:<12} {fmt(v)}")
        out.update(
            latency_model={"kind": "xgb" if args.predictors == "real" else "ridge fixture", "n": int(len(y))},
            reference=ref,
            budgets=[float(b) for b in budgets], evals=evals, evals_per_s=eps, table=table,
            single_budget={"budget_ms": budget, **{m: [float(x) for x in v] for m, v in best.items()}},
        )  # fmt: skip
    tmp.cleanup()
    if args.json:
        print(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    t = time.perf_counter()
    rc = main()
    print(f"\n({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    sys.exit(rc)
