"""Anchored timing against isolated timing of the same model, by model size.

    python bench/bench_anchor_bias.py [--supernet mbv3_fmnist] [--n 15] [--device ort-cpu-1t] [--block-ms 10]

For ``n`` subnets (the smallest, the largest and random ones; the ONNX files ``hwnas export`` would
ship, un-recalibrated) this times, in one process, each subnet:

* **isolated**: alone, 1 s of 30-run windows, the lower quartile of the window medians (the reference:
  what a plain loop on a quiet machine reads);
* **per-inference pairing**: the protocol before #13, one anchor inference after every model inference;
* **blocks**: ``run_protocol`` as hwnas profiles now, in alternating blocks of ``--block-ms``.

Both anchored figures use, as the anchor's latency, its isolated timing taken just before and just
after the subnet (their mean), so the calibration is not what is tested here: only the pairing.
Prints the anchored / isolated ratio per subnet and the median by size tercile.  Run it on a quiet
machine; name the CPU (``lscpu``) beside its figures.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np

from hwnas.devices import create_backend, load_device
from hwnas.devices.protocol import ProtocolSettings, make_inputs, run_protocol
from hwnas.jobs import supernet_model_builder
from hwnas.supernet.registry import create_supernet


def _warm(*runners, seconds: float = 0.2) -> None:
    """Stage inputs and run the runners in turn for ``seconds``."""
    for r in runners:
        r.prepare(make_inputs(r.input_specs(), 0))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for r in runners:
            r.time_once()


def isolated(r, seconds: float) -> float:
    """Lower quartile of 30-run window medians over ``seconds`` after 0.2 s of warm-up (ms)."""
    gc.disable()
    try:
        _warm(r)
        wm: list[float] = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or len(wm) < 10:
            wm.append(float(np.median([r.time_once() for _ in range(30)])))
    finally:
        gc.enable()
    return float(np.quantile(wm, 0.25)) * 1e-6


def per_inference(r, a, anchor_ms: float, seconds: float = 0.3) -> float:
    """The pre-#13 protocol: one anchor run after each model run; anchor_ms x the median ratio."""
    gc.disable()
    try:
        _warm(r, a)
        ratios: list[float] = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or len(ratios) < 30:
            m = r.time_once()
            ratios.append(m / max(a.time_once(), 1))
    finally:
        gc.enable()
    return float(np.median(ratios)) * anchor_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", default="mbv3_fmnist")
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--device", default="ort-cpu-1t")
    ap.add_argument("--block-ms", type=float, default=ProtocolSettings().anchor_block_ms)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = load_device(args.device)
    net = create_supernet(args.supernet, pretrained=False)
    sp = net.space
    rng = np.random.default_rng(args.seed)
    archs = [sp.min_arch(), sp.max_arch()] + [sp.sample(rng) for _ in range(max(args.n - 2, 0))]
    settings = ProtocolSettings.from_mapping(spec.protocol).replace(anchor_block_ms=args.block_ms)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build = supernet_model_builder(net, spec.backend, tmp, batch=spec.batch)
        amodel, ashape = build(net.family.default_anchor())
        with create_backend(spec, model=amodel, input_shape=ashape) as A:
            for arch in archs:
                model, shape = build(arch)
                with create_backend(spec, model=model, input_shape=shape) as R:
                    a1 = isolated(A, 0.5)
                    iso = isolated(R, 1.0)
                    a2 = isolated(A, 0.5)
                    cal = (a1 + a2) / 2
                    old = per_inference(R, A, cal)
                    new = run_protocol(R, settings, anchor=A, anchor_ms=cal).median_ms
                rows.append((sp.arch_id(arch), iso, old / iso, new / iso))
                print(f"{rows[-1][0][:34]:34s} isolated {iso:8.4f} ms  per-inference {old / iso:.3f}  "
                      f"blocks {new / iso:.3f}  (anchor alone {a1:.4f} / {a2:.4f} ms)", flush=True)
    rows.sort(key=lambda r: r[1])
    k = len(rows) // 3
    print(f"\n{args.supernet} on {args.device}, {len(rows)} subnets, blocks of {args.block_ms:g} ms; "
          "median anchored / isolated by size tercile:")
    for name, part in zip(("small", "medium", "large"), (rows[:k], rows[k:2 * k], rows[2 * k:])):
        print(f"  {name:6s} (isolated median {np.median([r[1] for r in part]):.4f} ms): per-inference "
              f"{np.median([r[2] for r in part]):.3f}  blocks {np.median([r[3] for r in part]):.3f}  "
              f"(blocks, range {min(r[3] for r in part):.3f}-{max(r[3] for r in part):.3f})")


if __name__ == "__main__":
    main()
