"""Repeatability of the measurement protocol: one ONNX model measured in N separate processes.

    python bench/bench_repeatability.py MODEL.onnx [--runs 5] [--device ort-cpu-1t] [--time-cap 3]
                                        [--agent] [--json]

Each run is a fresh Python process (new ORT session, new allocator state), so the spread of the
medians is the run-to-run noise a latency predictor has to live with.  Prints the N medians, their
mean and coefficient of variation (CV = std/mean).  With ``--agent`` it also starts a local edge
agent (``python -m hwnas.devices.agent``) on loopback and measures the same model N times through
it, printing the agent/local ratio of the mean medians.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def _child(model: str, device: str, time_cap: float) -> None:
    from hwnas.devices import profile_onnx_file

    out = profile_onnx_file(model, device, time_cap_s=time_cap)
    print(json.dumps(out["measurement"]))


def _measure_in_process(model: str, device: str, time_cap: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", model, "--device", device, "--time-cap", str(time_cap)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"run failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _stats(medians: list[float]) -> dict[str, float]:
    mean = statistics.fmean(medians)
    std = statistics.stdev(medians) if len(medians) > 1 else 0.0
    return {"mean_ms": mean, "std_ms": std, "cv": std / mean if mean else 0.0,
            "spread": (max(medians) - min(medians)) / mean if mean else 0.0}  # fmt: skip


def _agent_medians(model: str, device: str, time_cap: float, runs: int) -> list[float]:
    from hwnas.devices import DeviceSpec, load_device, profile_onnx_file

    local = load_device(device)
    if local.backend != "ort":
        raise SystemExit("--agent compares against an ort device (the agent measures ONNX with ort)")
    token = secrets.token_urlsafe(16)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwnas.devices.agent", "--port", "0", "--quiet", "--token", token],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" ", 1)[-1].strip()
        os.environ["HWNAS_BENCH_AGENT_TOKEN"] = token
        spec = DeviceSpec(
            name="bench-agent", backend="remote", address=url, token_env="HWNAS_BENCH_AGENT_TOKEN",
            batch=local.batch, precision=local.precision, options=dict(local.options), protocol=dict(local.protocol),
        )  # fmt: skip
        return [profile_onnx_file(model, spec, time_cap_s=time_cap)["measurement"]["median_ms"] for _ in range(runs)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="ONNX file to measure")
    ap.add_argument("--runs", type=int, default=5, help="number of separate processes (default 5)")
    ap.add_argument("--device", default="ort-cpu-1t")
    ap.add_argument("--time-cap", type=float, default=3.0, help="protocol time cap per run, seconds")
    ap.add_argument("--agent", action="store_true", help="also measure through a local edge agent")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.model, args.device, args.time_cap)
        return
    if not Path(args.model).is_file():
        raise SystemExit(f"error: model file {args.model} does not exist")

    runs = [_measure_in_process(args.model, args.device, args.time_cap) for _ in range(args.runs)]
    medians = [r["median_ms"] for r in runs]
    report: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "medians_ms": medians,
        "n": [r["n"] for r in runs],
        "converged": [r["converged"] for r in runs],
        **_stats(medians),
    }
    if args.agent:
        agent = _agent_medians(args.model, args.device, args.time_cap, args.runs)
        report["agent_medians_ms"] = agent
        report["agent"] = _stats(agent)
        report["agent_over_local"] = report["agent"]["mean_ms"] / report["mean_ms"]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.model} on {args.device}, {args.runs} processes, time cap {args.time_cap:g} s")
    for i, r in enumerate(runs, 1):
        print(f"  run {i}: median {r['median_ms']:.4f} ms  (n={r['n']}, converged={r['converged']}, cv={r['cv']:.3f})")
    print(f"  mean of medians {report['mean_ms']:.4f} ms, CV of medians {report['cv'] * 100:.2f}%, "
          f"max-min spread {report['spread'] * 100:.2f}%")  # fmt: skip
    if args.agent:
        print("  through the agent: " + ", ".join(f"{m:.4f}" for m in report["agent_medians_ms"]) + " ms")
        print(f"  agent CV {report['agent']['cv'] * 100:.2f}%, agent/local ratio {report['agent_over_local']:.3f}")


if __name__ == "__main__":
    main()
