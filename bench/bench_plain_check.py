"""An independent plain harness for a latency hwnas reported: the shipped file in a bare ONNX Runtime loop.

    python bench/bench_plain_check.py hwnas-out/export/best.onnx [--summary hwnas-out/summary.json]
                                      [--rounds 6] [--runs 1000] [--threads 1]

Nothing of hwnas times here: one ``InferenceSession`` (1 intra-op thread, sequential, like
``ort-cpu-1t``), a seeded random input, ``perf_counter`` around ``session.run`` in a plain loop of
``--runs`` runs after 300 of warm-up, repeated ``--rounds`` times in this process.  Prints each
round's median, their median and the fastest round's, and, given the main job's ``summary.json``,
the latency ``hwnas run`` reported for the file with its interval.  On a shared host the rounds
spread with the host's load; the fastest round is what a quiet machine shows.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def _loop(path: str, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(300):
        sess.run(None, {inp.name: x})

    def run(runs: int) -> float:
        t = np.empty(runs)
        for i in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {inp.name: x})
            t[i] = time.perf_counter() - t0
        return float(np.median(t)) * 1e3

    return run


def plain_medians(path: str, rounds: int, runs: int, threads: int, anchor: str | None = None):
    """Round medians of the model (ms), and of the anchor's plain loop right after each, if given."""
    model = _loop(path, threads)
    other = _loop(anchor, threads) if anchor else None
    out, out_a = [], []
    for _ in range(rounds):
        out.append(model(runs))
        if other is not None:
            out_a.append(other(runs))
    return out, out_a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--summary", default=None, help="the main job's summary.json, to compare with")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--anchor", default=None, help="an ONNX file to time the same way after each round (the "
                    "family's anchor, to tell the host's drift from the model's latency)")
    args = ap.parse_args()
    med, amed = plain_medians(args.model, args.rounds, args.runs, args.threads, args.anchor)
    print(f"{args.model}: plain loop, {args.rounds} rounds of {args.runs} runs, {args.threads} thread(s): "
          f"round medians {', '.join(f'{v:.4f}' for v in med)} ms")
    print(f"  median of rounds {np.median(med):.4f} ms, fastest round {min(med):.4f} ms")
    if amed:
        ratio = [m / a for m, a in zip(med, amed)]
        print(f"  the anchor {args.anchor} after each round: {', '.join(f'{v:.4f}' for v in amed)} ms; "
              f"model / anchor of plain loops: median {np.median(ratio):.4f}")
    if args.summary:
        b = json.load(open(args.summary))["best"]
        sh = b.get("shipped_onnx") or {}
        if sh:
            lo, hi = sh["ci95_ms"]
            print(f"  hwnas run reported for the shipped file {sh['median_ms']:.4f} ms ({lo:.4f}-{hi:.4f}, {sh['scale']}); "
                  f"plain / reported: median of rounds {np.median(med) / sh['median_ms']:.3f}, "
                  f"fastest round {min(med) / sh['median_ms']:.3f}")
            if sh.get("at_current_speed_ms"):
                print(f"  hwnas run's figure at the host's speed when it ran: {sh['at_current_speed_ms']:.4f} ms; plain / that: "
                      f"median of rounds {np.median(med) / sh['at_current_speed_ms']:.3f}")
            if amed and sh.get("anchor_ms"):
                print(f"  the anchor's calibration {sh['anchor_ms']:.4f} ms vs its plain loop now {np.median(amed):.4f} ms "
                      f"({np.median(amed) / sh['anchor_ms']:.3f}); plain model/anchor ratio x calibration = "
                      f"{np.median(ratio) * sh['anchor_ms']:.4f} ms ({np.median(ratio) * sh['anchor_ms'] / sh['median_ms']:.3f} "
                      "of reported)")


if __name__ == "__main__":
    main()
