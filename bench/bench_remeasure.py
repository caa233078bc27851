"""Measurement noise floor across processes and hours: re-measure archs already in a store.

    hwnas profile --device ort-cpu-1t --samples 100 --store S     # the reference profile, one process
    python bench/bench_remeasure.py --store S --device ort-cpu-1t [--n 100]   # now, and again hours later

This process re-measures ``n`` of the store's rows of ``--device`` into a fresh store: new ONNX
Runtime sessions, and the anchor calibrated afresh in this run (nothing is copied from ``S``), so the
comparison tests the whole chain: the block ratios, the calibration and the machine's drift since
the rows were taken (their age is printed).  Prints the new / stored latency ratio quantiles, the
share within +-5% and +-10% and the median deviation: no latency predictor can be scored better than
this on the same device.  The same shares for the anchor ratios alone separate the calibration (the
machine's own speed, which can move by several percent in minutes on a shared host) from the rest.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hwnas.devices import Store, load_device, profile_archs
from hwnas.devices.profile import ANCHOR_META
from hwnas.jobs import anchor_of, supernet_model_builder
from hwnas.supernet.registry import create_supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--device", default="ort-cpu-1t")
    ap.add_argument("--supernet", default="mbv3_fmnist")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = load_device(args.device)
    with Store(args.store, readonly=True) as st:
        rows = [r for r in st.measurements(supernet=args.supernet, device=spec.name) if r["arch"]]
        old_ratio = {r["arch_id"]: st.measurement(r["fp_hash"], r["runtime_config"], r["arch_id"], r["batch"],
                                                  r["precision"]).anchor_ratio for r in rows}
        cal_old = [float(v) for k, v in st._exec("SELECT key, value FROM meta WHERE key LIKE ?", (ANCHOR_META + "|%",))
                   if f"|{spec.batch}|{spec.precision}|" in k]
    if not rows:
        raise SystemExit(f"{args.store} holds no {args.supernet} rows of device {spec.name}")
    rng = np.random.default_rng(args.seed)
    rows = [rows[i] for i in rng.permutation(len(rows))[: args.n]]
    ages = [(datetime.now(timezone.utc) - datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))).total_seconds()
            for r in rows]
    net = create_supernet(args.supernet, pretrained=False)
    with tempfile.TemporaryDirectory() as tmp:
        with Store(Path(tmp) / "re.sqlite") as st2:  # a fresh store: this run calibrates the anchor itself
            s = profile_archs(st2, spec, [(r["arch_id"], r["arch"]) for r in rows],
                              supernet_model_builder(net, spec.backend, tmp, batch=spec.batch), args.supernet,
                              delete_models=True, anchor=anchor_of(net.family))
            new = {r["arch_id"]: r["median_ms"] for r in st2.measurements()}
            new_ratio = {r["arch_id"]: st2.measurement(r["fp_hash"], r["runtime_config"], r["arch_id"], r["batch"],
                                                       r["precision"]).anchor_ratio for r in st2.measurements()}
    ratio = np.array([new[r["arch_id"]] / r["median_ms"] for r in rows if r["arch_id"] in new])
    dev = np.abs(ratio - 1)
    cal = s.get("calibration") or {}
    print(f"{len(ratio)} archs of {args.supernet} re-measured on {args.device} in a new process, "
          f"{np.median(ages) / 3600:.2f} h after the stored rows (median age)")
    print(f"anchor calibration: stored {', '.join(f'{c:.4f}' for c in cal_old) or '-'} ms, this run "
          f"{cal.get('anchor_ms', float('nan')):.4f} ms ({cal.get('bursts')} bursts over {cal.get('span_s', 0):.0f} s)")
    print(f"new/stored ratio p0/p10/p50/p90/p100 = {' / '.join(f'{q:.3f}' for q in np.quantile(ratio, [0, .1, .5, .9, 1]))}")
    print(f"within +-5%: {100 * np.mean(dev < 0.05):.1f}%, within +-10%: {100 * np.mean(dev < 0.10):.1f}%, "
          f"median |deviation| {100 * np.median(dev):.2f}%")
    rr = np.array([new_ratio[a] / old_ratio[a] for a in new_ratio if old_ratio.get(a) and new_ratio[a]])
    if len(rr):  # the anchored ratios alone: the part of the chain that does not depend on the calibration
        d2 = np.abs(rr - 1)
        print(f"anchor ratios alone (calibration left out): median new/stored {np.median(rr):.3f}, within +-5%: "
              f"{100 * np.mean(d2 < 0.05):.1f}%, within +-10%: {100 * np.mean(d2 < 0.10):.1f}%, "
              f"median |deviation| {100 * np.median(d2):.2f}%")


if __name__ == "__main__":
    main()
