"""``hwnas run``: the three jobs end to end on the embedded default.

profile this machine (ort-cpu-1t) -> fit the latency predictor -> closed-loop NSGA-II search for a
budget that suits this machine -> export the chosen subnet as verified ONNX and INT8 ONNX.
Measurements live in ``OUT/store.sqlite``; a second run reuses them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hwnas.errors import PredictorError

REPO_PREDICTORS = Path(__file__).resolve().parents[1] / "predictors"


def shipped_accuracy_predictor(supernet: str) -> Path:
    p = REPO_PREDICTORS / supernet / "accuracy.json"
    if not p.is_file():
        raise PredictorError(f"no shipped accuracy predictor at {p}; fit one with "
                             f"`hwnas predictor fit --target accuracy --supernet {supernet} --out {p}`")
    return p


def choose_budget(latencies_ms: np.ndarray, fraction: float = 0.35) -> float:
    """A budget inside the achievable range: ``fraction`` of the way from the fastest to the slowest."""
    lo, hi = float(np.min(latencies_ms)), float(np.max(latencies_ms))
    return round(lo + fraction * (hi - lo), 3)


def search_job(store_path: str | Path, device: str, supernet: str, budget: str | float | None,
               out_dir: str | Path, *, rounds: int = 2, seed: int = 0, predictors_dir: str | Path | None = None,
               weights: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``hwnas search``: fit the device's latency predictor on its measurements in the store, load the
    accuracy predictor shipped with the weights, run the closed-loop NSGA-II search, write the outputs."""
    import tempfile

    from hwnas.devices import Store, load_device
    from hwnas.devices.profile import default_anchor, supernet_model_builder
    from hwnas.errors import SearchError
    from hwnas.predictors.artifacts import load_predictor
    from hwnas.predictors.jobs import fit_job, load_latency_data
    from hwnas.search.loop import closed_loop_search
    from hwnas.search.measure import device_measure
    from hwnas.search.output import format_table, write_outputs
    from hwnas.search.units import parse_latency
    from hwnas.supernet.evaluate import EvalData, evaluate_arch
    from hwnas.supernet.registry import create_supernet

    out = Path(out_dir)
    pred_dir = Path(predictors_dir) if predictors_dir else out / "predictors"
    if not Path(store_path).is_file():
        raise SearchError(f"no measurements at {store_path}; profile the device first: "
                          f"hwnas profile --device {device} --store {store_path}")
    data_rows = load_latency_data(store_path, device, supernet)
    lats = np.asarray(data_rows["y"], dtype=float)
    lat_fit = fit_job(store_path, device, supernet, target="latency", kind="xgb", out=pred_dir / "latency.json",
                      holdout=0.2, seed=seed)
    lat_pred = load_predictor(lat_fit["out"])
    net = create_supernet(supernet, weights=weights)
    acc_pred = load_predictor(shipped_accuracy_predictor(supernet), expect_supernet=supernet,
                              expect_supernet_hash=net.weights_hash)
    m = lat_fit["metrics"]
    log(f"      latency predictor (xgb, {lat_fit['n_train']} train / {lat_fit['n_test']} held out): "
        f"{100 * m['within_10']:.0f}% within +-10%, MAPE {m['mape']:.1f}%, Kendall tau {m['kendall_tau']:.3f}")
    budget_ms = parse_latency(budget) if budget is not None else choose_budget(lats)
    log(f"      searching for the most accurate subnet within {budget_ms:.3f} ms on {device} "
        f"(measured range {lats.min():.3f}-{lats.max():.3f} ms), {rounds} rounds")
    spec = load_device(device)
    data = EvalData.load("val")
    with tempfile.TemporaryDirectory(prefix="hwnas-search-") as tmp, Store(store_path) as st:
        measure = device_measure(st, spec, supernet_model_builder(net, spec.backend, tmp, batch=spec.batch), supernet,
                                 net.space, anchor=default_anchor(net.space))

        def refit(rows):
            fit = fit_job(store_path, device, supernet, target="latency", kind="xgb", out=Path(tmp) / "lat.json",
                          holdout=0.0, seed=seed)
            return load_predictor(fit["out"]).predict

        result = closed_loop_search(
            net.space, acc_pred.predict, lat_pred.predict, refit, measure, budget_ms, rounds=rounds, seed=seed,
            evaluate_accuracy=lambda archs: [evaluate_arch(net, a, data) for a in archs],
            supernet=supernet, device=device)
    paths = write_outputs(result, out)
    log(format_table(result))
    return {"result": result, "latency_fit": lat_fit, "files": paths, "budget_ms": budget_ms}


def run_main(out_dir: str | Path = "hwnas-out", device: str = "ort-cpu-1t", supernet: str = "mbv3_fmnist",
             samples: int = 150, budget: str | float | None = None, rounds: int = 2, seed: int = 0,
             time_cap_s: float = 1.0, log: Callable[[str], None] = print,
             progress: Callable[..., None] | None = None) -> dict[str, Any]:
    from hwnas.devices.profile import profile_supernet
    from hwnas.export.api import export_subnet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "store.sqlite"
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. profile the device
    log(f"[1/3] profiling {device}: {samples} subnets of {supernet} (resumes from {store_path})")
    t = time.perf_counter()
    prof = profile_supernet(store_path, device, supernet, samples, seed=seed, time_cap_s=time_cap_s,
                            progress=progress)
    timings["profile_s"] = time.perf_counter() - t
    log(f"      {prof['measured']} measured, {prof['skipped']} reused, {prof['subnets_per_min']:.0f} subnets/min")

    # 2. predictors and the closed-loop search
    log(f"[2/3] predictors and closed-loop NSGA-II search on {device}")
    t = time.perf_counter()
    found = search_job(store_path, device, supernet, budget, out / "search", rounds=rounds, seed=seed,
                       predictors_dir=out / "predictors", log=log)
    timings["search_s"] = time.perf_counter() - t
    result, lat_fit, paths, budget_ms = found["result"], found["latency_fit"], found["files"], found["budget_ms"]
    m = lat_fit["metrics"]

    # 3. export the chosen subnet
    log(f"[3/3] exporting {result.best.arch_id} as verified ONNX (FP32) and ONNX Runtime INT8")
    t = time.perf_counter()
    best = result.best.arch
    exp_dir = out / "export"
    int8 = export_subnet(best, exp_dir / "best.int8.onnx", supernet, fmt="onnx-int8", command="hwnas run",
                         device=device, fp32_out=exp_dir / "best.onnx")
    timings["export_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    b = result.best
    summary = {
        "device": device,
        "supernet": supernet,
        "budget_ms": budget_ms,
        "best": {"arch_id": b.arch_id, "measured_latency_ms": b.measured_latency_ms,
                 "predicted_latency_ms": b.predicted_latency_ms, "val_top1": b.accuracy,
                 "predicted_top1": b.predicted_accuracy},
        "latency_predictor": {"n_train": lat_fit["n_train"], "n_test": lat_fit["n_test"], **m},
        # the INT8/FP32 ratio is timed paired, side by side; in ms it is scaled by the chosen subnet's
        # anchored latency, so it reads on the same scale as every other latency of this job
        "int8": {"fp32_ms": b.measured_latency_ms,
                 "int8_ms": b.measured_latency_ms * int8["latency"]["int8_over_fp32"],
                 "int8_over_fp32": int8["latency"]["int8_over_fp32"],
                 "side_by_side_raw_ms": {"fp32": int8["latency"]["fp32"]["median_ms"],
                                         "int8": int8["latency"]["int8"]["median_ms"]},
                 "top1_fp32": int8["accuracy"]["top1_fp32"], "top1_int8": int8["accuracy"]["top1_int8"],
                 "agreement": int8["accuracy"]["agreement_int8_vs_fp32"]},
        "files": {"store": str(store_path), **paths, "onnx": str(exp_dir / "best.onnx"),
                  "onnx_manifest": str(exp_dir / "best.onnx.json"),
                  "onnx_int8": int8.get("path"), "onnx_int8_manifest": int8.get("manifest")},
        "profile": {k: prof[k] for k in ("measured", "skipped", "subnets_per_min", "overhead")},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
