"""Supernet training on 2 gloo processes against 1 process with the same global batch: weights and step time.

Runs ``--steps`` sandwich-rule steps of ``--supernet`` (global batch ``--batch-size``, the family's recipe,
seed 0) four times, each in a fresh process:

* ``1 proc``: the single-process path, 1 thread;
* ``1 proc, 2 threads``: the same on 2 threads -- how far one process is from itself when only the float
  reduction order changes (torch's float32 batch norm on channels-last CPU tensors sums in another order);
* ``1 proc, DDP arithmetic``: one process in a gloo group of one, so training takes the distributed path
  (global-batch BN with float64 sums) with nothing to share;
* ``2 procs``: ``python -m torch.distributed.run --standalone --nproc-per-node 2``, 1 thread each.

Prints the max abs difference of the final weights (parameters and BN buffers together, and parameters
alone) of ``2 procs`` against the others and of ``1 proc`` against itself on 2 threads, with the parameters'
difference after the first steps too (float noise grows about 50x a step while a freshly initialized net
trains), the median and mean step time of each run (a step: the largest, the smallest and ``n_random``
random subnets forward and backward, then one optimizer step; checkpoint writes not counted), and the
machine.  Data: the Fashion-MNIST training split
(``--split train``, needs the IDX files) or the shipped 2,000-image calibration subset (``--split calib``).

    python bench/bench_ddp.py                       # 20 steps, batch 64, mbv3_fmnist, training split
    python bench/bench_ddp.py --split calib         # without the full dataset
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def worker(args: argparse.Namespace) -> None:
    """One training run (every rank of a torchrun job runs this); rank 0 keeps the checkpoint of every step."""
    import shutil

    import torch.distributed as dist

    from hwnas.supernet.train import TrainConfig, train_supernet

    torch.set_num_threads(args.threads)
    if args.one_rank_group:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    cfg = TrainConfig.for_family(args.supernet, epochs=1, batch_size=args.batch_size, train_split=args.split,
                                 checkpoint_every=1)
    out = Path(args.out)

    def keep(step: int, total: int, info: dict) -> None:  # called after step `step`, before its checkpoint
        if step > 1:
            shutil.copyfile(out / "checkpoint.pt", out / f"step{step - 1}.pt")

    train_supernet(cfg, out, max_steps=args.steps, progress=keep)
    if int(os.environ.get("RANK", "0")) == 0:
        shutil.copyfile(out / "checkpoint.pt", out / f"step{args.steps}.pt")


def load(run: Path, step: int) -> dict:
    return torch.load(run / f"step{step}.pt", weights_only=False)


def diff(a: dict, b: dict) -> dict[str, float]:
    """Max abs difference of the model states: all parameters and buffers, and parameters alone."""
    d = {"all": 0.0, "params": 0.0}
    for k, x in a["model"].items():
        v = float((x.double() - b["model"][k].double()).abs().max()) if x.numel() else 0.0
        d["all"] = max(d["all"], v)
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            d["params"] = max(d["params"], v)
    return d


def step_times(run: Path, steps: int) -> list[float]:
    """Training time of steps 2..N (checkpoint writes excluded: the checkpoints' cumulative ``elapsed``)."""
    elapsed = [load(run, k)["elapsed"] for k in range(1, steps + 1)]
    return [b - a for a, b in zip(elapsed, elapsed[1:])]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--supernet", default="mbv3_fmnist")
    ap.add_argument("--split", default="train", choices=["train", "calib"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--one-rank-group", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    common = [__file__, "--worker", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--supernet", args.supernet, "--split", args.split]
    runs = {
        "1 proc": ([sys.executable], ["--threads", "1"]),
        "1 proc, 2 threads": ([sys.executable], ["--threads", "2"]),
        "1 proc, DDP arithmetic": ([sys.executable], ["--threads", "1", "--one-rank-group"]),
        "2 procs": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                    ["--threads", "1"]),
    }
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        dirs = {}
        for name, (launcher, extra) in runs.items():
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            t0 = time.perf_counter()
            subprocess.run([*launcher, *common, "--out", str(out), *extra], check=True,
                           env=dict(os.environ, OMP_NUM_THREADS=extra[1]))
            dirs[name] = out
            print(f"ran {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}")
        print(f"{args.supernet}, {args.steps} steps, global batch {args.batch_size}, split {args.split!r}, "
              "gloo on loopback for 2 procs")
        pairs = [("2 procs", "1 proc"), ("2 procs", "1 proc, DDP arithmetic"), ("1 proc, 2 threads", "1 proc"),
                 ("1 proc, DDP arithmetic", "1 proc")]
        marks = sorted({k for k in (1, 2, 3, 5, 10, args.steps) if k <= args.steps})
        print(f"\nmax abs weight difference after step {args.steps}: params+buffers / params only; "
              "params only after steps " + ", ".join(map(str, marks[:-1])))
        for a, b in pairs:
            d = diff(load(dirs[a], args.steps), load(dirs[b], args.steps))
            curve = "  ".join(f"{diff(load(dirs[a], k), load(dirs[b], k))['params']:.1e}" for k in marks[:-1])
            print(f"  {a + ' vs ' + b:44s} {d['all']:9.2e} / {d['params']:8.2e}   {curve}")
        print(f"\nstep time, steps 2..{args.steps} (s)     median    mean")
        for name, run in dirs.items():
            t = step_times(run, args.steps)
            print(f"  {name:32s} {statistics.median(t):8.3f} {statistics.fmean(t):7.3f}")


if __name__ == "__main__":
    main()
