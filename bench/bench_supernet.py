"""Figures of the shipped supernet: test top-1 of the largest/smallest subnet, spread over random archs,
correlation with MACs (and with measured latency if a store is given), determinism, eval throughput.

    python bench/bench_supernet.py [--weights W] [--n 50] [--split test] [--store S --device ort-cpu-1t]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from scipy.stats import kendalltau, spearmanr

from hwnas.supernet.accuracy import sample_archs
from hwnas.supernet.evaluate import EvalData, evaluate_arch
from hwnas.supernet.registry import create_supernet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--supernet", default="mbv3_fmnist")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--store", default=None, help="store with measured latencies to correlate with")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    net = create_supernet(args.supernet, weights=args.weights)
    data = EvalData.load(args.split)
    sp = net.space
    out: dict = {"split": args.split, "n_images": len(data.labels), "weights_hash": net.weights_hash}
    out["top1_max"] = evaluate_arch(net, sp.max_arch(), data)
    out["top1_min"] = evaluate_arch(net, sp.min_arch(), data)
    a = sp.sample(args.seed)
    first, second = evaluate_arch(net, a, data), evaluate_arch(net, a, data)
    out["determinism"] = {"arch_id": sp.arch_id(a), "first": first, "second": second, "equal": first == second}

    archs = sample_archs(sp, args.n, args.seed)[2:]  # n random archs (min/max reported above)
    t = time.perf_counter()
    accs = [evaluate_arch(net, x, data) for x in archs]
    secs = time.perf_counter() - t
    macs = [net.family.arch_cost(x)["macs"] for x in archs]
    out["random"] = {"n": len(accs), "min": min(accs), "median": statistics.median(accs), "max": max(accs),
                     "spearman_vs_macs": float(spearmanr(accs, macs)[0]),
                     "kendall_vs_macs": float(kendalltau(accs, macs)[0]),
                     "archs_per_minute": len(accs) / secs * 60}
    if args.store:
        from hwnas.devices.store import Store

        with Store(args.store, readonly=True) as st:
            lat = {r["arch_id"]: r["median_ms"] for r in st.measurements(supernet=args.supernet)}
        pairs = [(acc, lat[sp.arch_id(x)]) for acc, x in zip(accs, archs) if sp.arch_id(x) in lat]
        if len(pairs) >= 5:
            out["random"]["spearman_vs_latency"] = float(spearmanr(*zip(*pairs))[0])
            out["random"]["n_with_latency"] = len(pairs)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    r = out["random"]
    print(f"{args.split} top-1 ({out['n_images']} images): largest {out['top1_max']:.4f}, smallest {out['top1_min']:.4f}")
    print(f"{r['n']} random archs: min {r['min']:.4f} / median {r['median']:.4f} / max {r['max']:.4f}; "
          f"Spearman vs MACs {r['spearman_vs_macs']:.3f} (Kendall {r['kendall_vs_macs']:.3f})"
          + (f"; Spearman vs measured latency {r['spearman_vs_latency']:.3f} (n={r['n_with_latency']})"
             if "spearman_vs_latency" in r else ""))
    d = out["determinism"]
    print(f"determinism: {d['arch_id']} evaluated twice: {d['first']:.4f} / {d['second']:.4f} (equal: {d['equal']})")
    print(f"evaluation throughput: {r['archs_per_minute']:.1f} archs/min ({out['n_images']} images each, "
          f"plus BN recalibration on 2,000)")


if __name__ == "__main__":
    main()
