"""Which engine is fastest here: every ``--format best`` candidate against ORT FP32, timed paired.

    python bench/bench_engines.py [--arch r24-735273_5354_7372_5273] [--time-cap 3] [--rounds 3]

For three subnets (the shipped ``mbv3_fmnist`` family's largest, ``--arch`` of that family (default: the
main job's chosen arch), and an ``ofa_mbv3_w1.0`` subnet at r=224 with untrained weights and random
calibration images, so latency only) it runs ``--format best`` with every candidate this machine can
run and prints each one's speed-up over ORT FP32 (median ratio of alternating blocks when timed paired,
``rounds`` interleaved rounds), its per-round speed-ups, top-1 drop and agreement, and the winner.

For the shipped family's arch it then prints the graph ONNX Runtime's CPU EP runs (optimized, as on
``ort-cpu-1t``) for the INT8 model before the recipe (no rewrite, 8-bit weights) and after it, and
where the INT8 model's time goes by op type (ORT's profiler), which is what limits its speed-up.
All figures are of the files in a temporary directory, on this machine's CPU (named first).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from hwnas.formats import export_subnet
from hwnas.formats.common import load_calibration, prepare
from hwnas.formats.onnx_export import export_onnx
from hwnas.formats.onnx_int8 import (cpu_has_vnni, graph_summary, measure_side_by_side, ort_optimized_ops,
                                     quantize_qdq)
from hwnas.supernet.registry import get_family


def cpu_line() -> str:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    want = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(want) or 'none of avx2/avx512/vnni/amx'}"


def parse_mbv3_id(arch_id: str, space) -> dict:
    """``r24-735273_5354_...`` -> the arch dict (per stage: ks/e digit pairs of its active blocks)."""
    max_depth, n_stages = space.max_depth, space.n_stages
    head, rest = arch_id.split("-", 1)
    ks, e, d = [], [], []
    stages = rest.split("_")
    if len(stages) != n_stages:
        raise SystemExit(f"{arch_id}: expected {n_stages} stages")
    for s in stages:
        blocks = [(int(s[i]), int(s[i + 1])) for i in range(0, len(s), 2)]
        d.append(len(blocks))
        for j in range(max_depth):
            k_, e_ = blocks[j] if j < len(blocks) else (min(space.ks_list), min(space.e_list))
            ks.append(k_)
            e.append(e_)
    return {"ks": ks, "e": e, "d": d, "r": int(head[1:])}


def run_best(label: str, arch: dict, supernet: str, args, td: Path) -> dict:
    m = export_subnet(arch, td / f"{label}.onnx", supernet, None, fmt="best", time_cap_s=args.time_cap,
                      rounds=args.rounds, min_speedup=1.03)
    sel = m["selection"]
    print(f"\n== {label}: {supernet} {m['arch_id']} (gate {'applied' if sel['gate']['applied'] else 'not applied'}; "
          f"calibration: {sel['calibration']})")
    print(f"   {'candidate':<15}{'speed-up':>9}  {'per round':<24}{'ms (raw)':>10}{'top-1':>8}{'drop':>7}"
          f"{'agree':>8}{'MB':>7}  gate")
    ref = next(c for c in sel["candidates"] if c["name"] == "ort-fp32")
    for c in sel["candidates"]:
        drop = (100 * (ref["top1"] - c["top1"])) if ref.get("top1") is not None and c.get("top1") is not None else None
        rounds = " ".join(f"{v:.3f}" for v in c.get("rounds_speedup") or [])
        top = f"{100 * c['top1']:.2f}" if c.get("top1") is not None else "-"
        dr = f"{drop:+.2f}" if drop is not None else "-"
        print(f"   {c['name']:<15}{c['speedup_vs_ort_fp32']:>8.3f}x  {rounds:<24}{c['latency_ms']:>10.4f}"
              f"{top:>8}{dr:>7}{100 * c['agreement_with_fp32']:>7.2f}%"
              f"{c['size_bytes'] / 1e6:>7.2f}  {c['gate']}")
    print(f"   winner: {sel['winner']} ({sel['reason']})")
    if sel.get("int8_line"):
        print(f"   {sel['int8_line']}")
    return m


def op_time_shares(path: Path, n: int = 200) -> list[tuple[str, float, float]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.log_severity_level = 3
    so.profile_file_prefix = str(path.with_suffix("")) + "_prof"
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
    for _ in range(n):
        s.run(None, {i.name: x})
    f = s.end_profiling()
    agg: dict[str, float] = collections.defaultdict(float)
    for e in json.loads(Path(f).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            agg[e["args"]["op_name"]] += e["dur"]
    os.remove(f)
    tot = sum(agg.values())
    return [(op, d / n / 1000, d / tot) for op, d in sorted(agg.items(), key=lambda t: -t[1])]


def graph_report(arch: dict, supernet: str, td: Path) -> None:
    net, a, sub, _ = prepare(supernet, None, arch, None)
    shape = net.family.input_shape(a)
    p32 = td / "g32.onnx"
    export_onnx(sub, p32, shape)
    cal = load_calibration(net, shape[-1], None)[:500]
    print(f"\n== the graph ORT runs for {supernet} {net.family.space.arch_id(a)} (ort-cpu-1t, all optimizations)")
    print(f"   FP32: {graph_summary(ort_optimized_ops(p32))}")
    print("      time by op type: " + ", ".join(f"{op} {ms:.3f} ms ({100 * sh:.0f}%)" for op, ms, sh in op_time_shares(p32)[:5]))
    files = {}
    for label, kw in (("INT8 before the recipe (no rewrite, 8-bit weights)", dict(rewrite=False, reduce_range=False)),
                      ("INT8 with the recipe", dict())):
        dst = td / ("g8_" + ("old" if "before" in label else "new") + ".onnx")
        files[label] = dst
        info = quantize_qdq(p32, dst, cal, target="ort", node_groups=net.family.node_groups, **kw)
        g = graph_summary(ort_optimized_ops(dst))
        print(f"   {label}: rewrites {info['rewrites']}, reduce_range {info['reduce_range']}")
        print(f"      Q/DQ left {g['qdq']}; float ops left {g['float_ops']}; integer ops {g['int8_ops']}")
        shares = op_time_shares(dst)
        print("      time by op type: " + ", ".join(f"{op} {ms:.3f} ms ({100 * sh:.0f}%)" for op, ms, sh in shares[:7]))
    # before and after, timed paired with FP32 in one run, and scored on the validation split
    from hwnas.devices import load_device
    from hwnas.formats.common import onnx_logits, val_data

    dev32, dev8 = load_device("ort-cpu-1t"), dataclasses.replace(load_device("ort-cpu-1t"), precision="int8")
    lat = measure_side_by_side({"fp32": (p32, dev32), **{k: (v, dev8) for k, v in files.items()}}, rounds=3)
    x, labels, _ = val_data(net, shape[-1], None)
    l32 = onnx_logits(p32, x)
    for k, v in files.items():
        l8 = onnx_logits(v, x)
        print(f"   {k}: {1 / lat[k]['over_first']:.3f}x FP32 (per round "
              f"{' '.join(f'{1 / r:.3f}' for r in lat[k]['rounds_ratio'])}), top-1 {100 * (l8.argmax(1) == labels).mean():.2f}% "
              f"vs {100 * (l32.argmax(1) == labels).mean():.2f}%, agreement {100 * (l8.argmax(1) == l32.argmax(1)).mean():.2f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="r24-735273_5354_7372_5273", help="an mbv3_fmnist arch id")
    ap.add_argument("--time-cap", type=float, default=3.0, help="timed seconds per candidate over all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-ofa", action="store_true")
    ap.add_argument("--graph-only", action="store_true", help="only the graph report of --arch")
    args = ap.parse_args()
    print(f"CPU: {cpu_line()}; VNNI/AMX 8-bit dot products: {cpu_has_vnni()}")
    fam = get_family("mbv3_fmnist")
    with tempfile.TemporaryDirectory(prefix="hwnas-bench-engines-") as td:
        td = Path(td)
        if args.graph_only:
            graph_report(parse_mbv3_id(args.arch, fam.space), "mbv3_fmnist", td)
            return
        run_best("largest", fam.space.max_arch(), "mbv3_fmnist", args, td)
        chosen = parse_mbv3_id(args.arch, fam.space)
        run_best("chosen", chosen, "mbv3_fmnist", args, td)
        if not args.skip_ofa:
            ofa = get_family("ofa_mbv3_w1.0").space.sample(3)
            ofa["r"] = 224
            run_best("ofa224", ofa, "ofa_mbv3_w1.0", args, td)
        graph_report(chosen, "mbv3_fmnist", td)


if __name__ == "__main__":
    main()
