"""Predictor figures on a measurement store: held-out quality vs training size, few-shot transfer, throughput.

    python bench/bench_predictors.py --store runs/ref/store.sqlite --device ort-cpu-1t \
        [--device-b torch-cpu] [--supernet mbv3_fmnist] [--accuracy] [--weights PATH | --supernet-hash H] \
        [--json figures.json]

1. Latency, for each predictor kind: ±5% / ±10% / MAPE / Kendall tau on one fixed held-out set
   (``--holdout``, default 100 subnets) vs training size 25/50/100/200/400 (nested random subsets of
   the rest; ``--repeats`` draws averaged).  ``lut``/``hybrid`` need the device's LUT in the store;
   ``--build-lut`` measures the missing entries on the device first.
2. Few-shot transfer from device A (``--device``) to B (``--device-b``) with 10 and 20 measurements of
   B: the ``transfer`` predictor over an xgb prior fitted on all of A (and over A's LUT predictor when
   there is one), against the raw prior and against xgb trained on the same few B measurements.
3. Throughput: predictions per second for a batch of 100,000 archs given as integer gene vectors,
   featurization included (best of 3).
4. With ``--accuracy``: the accuracy predictors (mlp, xgb) on the store's supernet evaluations:
   Kendall tau and RMSE on a held-out set.

Needs a store with a few hundred measured subnets of one device (``hwnas profile``, anchored timing).
The shipped ``hwnas/resources/predictors/mbv3_fmnist/reference_store.sqlite`` has 500 ``ort-cpu-1t`` subnets and the
LUT, 150 at batch 8 (``ort-cpu-1t-b8``), 150 on 2 threads (``ort-cpu``) and 552 val accuracies:

    python bench/bench_predictors.py --store hwnas/resources/predictors/mbv3_fmnist/reference_store.sqlite \
        --device ort-cpu-1t --device-b ort-cpu-1t-b8 --accuracy
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from hwnas.errors import HwnasError
from hwnas.io import atomic_write_json
from hwnas.predictors import create_predictor, list_predictors
from hwnas.predictors.features import resolve_config
from hwnas.predictors.jobs import latency_table_for, load_accuracy_data, load_latency_data
from hwnas.predictors.metrics import (
    LEARNING_CURVE_SIZES,
    evaluate_kfold,
    holdout_split,
    learning_curve,
    regression_metrics,
)

LATENCY_KINDS = ("linear", "xgb", "lut", "hybrid", "mlp")


def fmt_row(cells: list[Any], widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def maker(kind: str, cfg: Any, table: Any = None, prior: Any = None, **kw: Any):
    extra = dict(kw)
    if kind in ("lut", "hybrid"):
        extra["table"] = table
    if kind == "transfer":
        extra["prior"] = prior
    if kind == "mlp":
        extra.setdefault("features", "all")
    return lambda: create_predictor(kind, supernet=cfg, **extra)


def bench_latency(args: argparse.Namespace, cfg: Any, data: dict, table: Any) -> dict:
    V, y = data["V"], data["y"]
    tr, te = holdout_split(len(y), args.holdout, args.seed)  # a count (>= 1) or a fraction
    print(f"\n== latency ({data['stat']}) on {data['device']} (fp {data['fp_hash']}): {len(y)} subnets, "
          f"{y.min():.3f}-{y.max():.3f} ms; held-out {len(te)}, pool {len(tr)}")
    out: dict[str, Any] = {"device": data["device"], "fp_hash": data["fp_hash"], "n": int(len(y)),
                           "n_test": int(len(te)), "curves": {}}
    widths = [8, 6, 7, 7, 7, 7, 7]
    print(fmt_row(["kind", "n", "±5%", "±10%", "MAPE", "tau", "fit_s"], widths))
    test_idx = te
    for kind in args.kinds:
        if kind in ("lut", "hybrid") and table is None:
            print(fmt_row([kind, "-", "no LUT in the store (use --build-lut)", "", "", "", ""], widths))
            continue
        t0 = time.perf_counter()
        rows = learning_curve(maker(kind, cfg, table=table), V, y, test_idx, sizes=args.sizes, seed=args.seed,
                              repeats=args.repeats)
        dt = (time.perf_counter() - t0) / max(len(rows), 1) / args.repeats
        for r in rows:
            print(fmt_row([kind, r["n_train"], pct(r["within_5"]), pct(r["within_10"]), f"{r['mape']:6.2f}",
                           f"{r['kendall_tau']:.3f}", f"{dt:.2f}"], widths))
        out["curves"][kind] = rows
    return out


def bench_transfer(args: argparse.Namespace, cfg: Any, a: dict, b: dict, table_a: Any) -> dict:
    print(f"\n== few-shot transfer {a['device']} -> {b['device']} ({len(b['y'])} subnets of B)")
    Vb, yb = b["V"], b["y"]
    pool, te = holdout_split(len(yb), min(100, len(yb) // 2), args.seed)
    priors = {"xgb(A)": create_predictor("xgb", supernet=cfg).fit(a["V"], a["y"])}
    if table_a is not None:
        priors["lut(A)"] = create_predictor("lut", supernet=cfg, table=table_a).fit(a["V"], a["y"])
    widths = [26, 5, 7, 7, 7, 7]
    print(fmt_row(["method", "shots", "±5%", "±10%", "MAPE", "tau"], widths))
    out: dict[str, Any] = {"device_a": a["device"], "device_b": b["device"], "n_test": int(len(te)), "rows": []}
    for name, prior in priors.items():
        m = regression_metrics(yb[te], prior.predict(Vb[te]))
        print(fmt_row([f"raw prior {name}", 0, pct(m["within_5"]), pct(m["within_10"]), f"{m['mape']:6.2f}",
                       f"{m['kendall_tau']:.3f}"], widths))
        out["rows"].append({"method": f"raw prior {name}", "shots": 0, **m})
    for shots in (10, 20):
        methods = {f"transfer from {n}": maker("transfer", cfg, prior=p) for n, p in priors.items()}
        methods["xgb on B only"] = maker("xgb", cfg)
        methods["linear MACs on B only"] = maker("linear", cfg)
        for name, make in methods.items():
            ms = []
            for rep in range(args.transfer_repeats):
                idx = np.random.default_rng(args.seed + rep).permutation(pool)[:shots]
                ms.append(regression_metrics(yb[te], make().fit(Vb[idx], yb[idx]).predict(Vb[te])))
            m = {k: float(np.mean([x[k] for x in ms])) for k in ms[0]}
            print(fmt_row([name, shots, pct(m["within_5"]), pct(m["within_10"]), f"{m['mape']:6.2f}",
                           f"{m['kendall_tau']:.3f}"], widths))
            out["rows"].append({"method": name, "shots": shots, **m})
    return out


def bench_throughput(args: argparse.Namespace, cfg: Any, data: dict, table: Any) -> dict:
    sp = cfg.space
    n = args.batch
    X = np.random.default_rng(0).integers(0, sp.vector_upper + 1, size=(n, sp.vector_length))
    print(f"\n== throughput: {n:,} archs as integer gene vectors, featurization included (best of 3)")
    out = {}
    for kind in args.kinds + ["transfer"]:
        if kind in ("lut", "hybrid") and table is None:
            continue
        if kind == "transfer":
            make = maker("transfer", cfg, prior=create_predictor("xgb", supernet=cfg).fit(data["V"], data["y"]))
        else:
            make = maker(kind, cfg, table=table)
        pred = make().fit(data["V"], data["y"])
        pred.predict(X[:100])
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            pred.predict(X)
            best = min(best, time.perf_counter() - t0)
        out[kind] = n / best
        print(f"{kind:>8}: {n / best:12,.0f} archs/s  ({best * 1e3:.0f} ms per batch)")
    return out


def bench_accuracy(args: argparse.Namespace, cfg: Any) -> dict:
    from hwnas.predictors.jobs import _params_for

    data = load_accuracy_data(args.accuracy_store or args.store, cfg, supernet_hash=args.supernet_hash,
                              weights=args.weights, split=args.split)
    V, y = data["V"], data["y"]
    tr, te = holdout_split(len(y), 0.2, args.seed)
    print(f"\n== accuracy ({data['split']}, weights {data['supernet_hash']}): {len(y)} subnets, "
          f"{y.min():.4f}-{y.max():.4f}; held-out {len(te)} (5-fold CV figures on all {len(y)} in brackets)")
    out = {}
    for label, kind, kw in (("mlp", "mlp", _params_for("accuracy", "mlp", {})),
                            ("xgb", "xgb", _params_for("accuracy", "xgb", {})),
                            ("xgb, latency defaults", "xgb", {})):
        t0 = time.perf_counter()
        pred = create_predictor(kind, supernet=cfg, **kw).fit(V[tr], y[tr])
        fit_s = time.perf_counter() - t0
        m = regression_metrics(y[te], pred.predict(V[te]), relative=False)
        m["rmse_constant"] = float(np.sqrt(np.mean((y[te] - y[tr].mean()) ** 2)))
        cv = evaluate_kfold(lambda: create_predictor(kind, supernet=cfg, **kw), V, y, k=5, seed=args.seed,
                            relative=False)
        m["cv_kendall_tau"], m["cv_rmse"] = cv["kendall_tau"], cv["rmse"]
        print(f"{label:>22}: tau {m['kendall_tau']:.3f} [{cv['kendall_tau']:.3f}]  RMSE {m['rmse']:.4f} "
              f"[{cv['rmse']:.4f}] (constant {m['rmse_constant']:.4f})  fit {fit_s:.1f} s")
        out[label] = m
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--device", required=True, help="device A (its measurements train the predictors)")
    ap.add_argument("--device-b", help="device B for few-shot transfer")
    ap.add_argument("--supernet", default="mbv3_fmnist")
    ap.add_argument("--kinds", default=",".join(LATENCY_KINDS))
    ap.add_argument("--sizes", default=",".join(map(str, LEARNING_CURVE_SIZES)))
    ap.add_argument("--holdout", type=float, default=100, help="held-out subnets (count, or a fraction < 1)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--transfer-repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stat", default="median_ms", help="latency statistic: median_ms (default) or min_ms, ...")
    ap.add_argument("--build-lut", action="store_true", help="measure missing LUT entries on device A")
    ap.add_argument("--lut-time-cap", type=float, default=None)
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--accuracy-store")
    ap.add_argument("--weights")
    ap.add_argument("--supernet-hash")
    ap.add_argument("--split", default="val")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: latency,transfer,throughput")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.sizes = tuple(int(s) for s in args.sizes.split(","))
    skip = set(filter(None, args.skip.split(",")))
    known = set(list_predictors("latency"))
    bad = [k for k in args.kinds if k not in known]
    if bad:
        print(f"unknown latency predictor kind(s) {', '.join(bad)}; choose from {', '.join(sorted(known))}")
        return 1
    try:
        cfg = resolve_config(args.supernet)
        figures: dict[str, Any] = {"supernet": cfg.name, "store": args.store}
        a = load_latency_data(args.store, args.device, cfg, stat=args.stat)
        table = None
        if "lut" in args.kinds or "hybrid" in args.kinds:
            try:
                table = latency_table_for(args.store, args.device, cfg, a["fp_hash"], build=args.build_lut,
                                          time_cap_s=args.lut_time_cap)
            except HwnasError as exc:
                print(f"(no LUT: {exc})")
        if "latency" not in skip:
            figures["latency"] = bench_latency(args, cfg, a, table)
        if args.device_b and "transfer" not in skip:
            b = load_latency_data(args.store, args.device_b, cfg, stat=args.stat)
            figures["transfer"] = bench_transfer(args, cfg, a, b, table)
        if "throughput" not in skip:
            figures["throughput"] = bench_throughput(args, cfg, a, table)
        if args.accuracy:
            figures["accuracy"] = bench_accuracy(args, cfg)
    except HwnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        atomic_write_json(args.json, figures, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
