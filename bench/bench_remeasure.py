"""Measurement noise floor: re-measure archs already in a store and compare medians.

    python bench/bench_remeasure.py --store S --device ort-cpu-1t [--n 60]

Prints the ratio (new / stored median) quantiles and the share within +-5% and +-10%: no latency
predictor can be scored better than this on the same device.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from hwnas.devices import Store, load_device, profile_archs
from hwnas.devices.profile import ANCHOR_META
from hwnas.jobs import anchor_of, supernet_model_builder
from hwnas.supernet.registry import create_supernet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--device", default="ort-cpu-1t")
    ap.add_argument("--supernet", default="mbv3_fmnist")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = load_device(args.device)
    with Store(args.store, readonly=True) as st:
        rows = [r for r in st.measurements(supernet=args.supernet, device=spec.name) if r["arch"]]
        # the anchor calibration of the stored rows, so both sets are on the same scale
        anchors = {k: v for k, v in st._exec("SELECT key, value FROM meta WHERE key LIKE ?", (ANCHOR_META + "|%",))}
    rng = np.random.default_rng(args.seed)
    rows = [rows[i] for i in rng.permutation(len(rows))[: args.n]]
    net = create_supernet(args.supernet, pretrained=False)
    with tempfile.TemporaryDirectory() as tmp:
        with Store(Path(tmp) / "re.sqlite") as st2:
            for k, v in anchors.items():
                st2.set_meta(k, v)
            profile_archs(st2, spec, [(r["arch_id"], r["arch"]) for r in rows],
                          supernet_model_builder(net, spec.backend, tmp, batch=spec.batch), args.supernet,
                          delete_models=True, anchor=anchor_of(net.family))
            new = {r["arch_id"]: r["median_ms"] for r in st2.measurements()}
    ratio = np.array([new[r["arch_id"]] / r["median_ms"] for r in rows])
    dev = np.abs(ratio - 1)
    print(f"{len(ratio)} archs re-measured on {args.device}: new/stored median ratio "
          f"p0/p10/p50/p90/p100 = {' / '.join(f'{q:.3f}' for q in np.quantile(ratio, [0, .1, .5, .9, 1]))}")
    print(f"within +-5%: {100 * np.mean(dev < 0.05):.1f}%, within +-10%: {100 * np.mean(dev < 0.10):.1f}%, "
          f"median |deviation| {100 * np.median(dev):.2f}%")


if __name__ == "__main__":
    main()
