"""Benchmark: ``kill -9`` at random moments of a profiling job, then resume; work lost per kill.

    python bench/bench_kill_resume.py [--kills 10] [--rounds 1,2] [--samples 100] [--seed 0]

For each ``rounds`` setting, a copy of the ``ort-cpu-1t`` device spec with ``[protocol] rounds = R``
(and a 0.3 s time cap, so visits are short) is profiled into a fresh store by ``hwnas.jobs.profile``
(the job ``hwnas profile`` runs: the default ``mbv3_fmnist`` supernet, anchored timing) in a child
process.  The child prints a line after every visit it takes of a model (the anchor's calibration is
not counted).  The parent waits for the first visit, sleeps a random 0-4 s, sends SIGKILL, and reads
the store: the work kept is ``rows x R + visits kept for unfinished rows``; the visits taken but not
kept are the work lost by that kill (goal: at most 1, the visit in flight).  After each kill it counts
the job's scratch directories left in the temp directory (``hwnas-profile-<pid>-*``); the next run
removes them.  A last run without a kill completes the profile, after which none may be left.

Prints one line per kill and a summary per rounds setting.  Not a timed benchmark: the figures are
counts, so a busy machine only changes where the kills land.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys
from hwnas.devices.backends.base import LocalBackend
import hwnas.jobs as jobs

_measure = LocalBackend.measure

def measure(self, settings=None, anchor=None, anchor_ms=None):
    m = _measure(self, settings, anchor=anchor, anchor_ms=anchor_ms)
    if anchor is not None:  # a visit of a model (the anchor's calibration has no anchor)
        print("visit", flush=True)
    return m

LocalBackend.measure = measure
store, spec, samples = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = jobs.profile(spec, "mbv3_fmnist", samples=samples, store=store)
print("done", r.measured, r.skipped, flush=True)
"""


def kept_work(store: Path, rounds: int) -> int:
    """Visits the store holds: every row counts ``rounds``, plus the visits kept for unfinished rows."""
    from hwnas.devices import Store
    from hwnas.errors import StoreError

    try:
        st = Store(store, readonly=True)
    except StoreError:
        return 0
    with st:
        rows = st._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        names = {r[0] for r in st._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        kept = st._conn.execute("SELECT COUNT(*) FROM visits").fetchone()[0] if "visits" in names else 0
    return int(rows) * rounds + int(kept)


def leftovers() -> list[str]:
    return sorted(glob.glob(os.path.join(tempfile.gettempdir(), "hwnas-profile-*")))


def write_spec(d: Path, rounds: int) -> Path:
    src = (ROOT / "hwnas" / "resources" / "devices" / "ort-cpu-1t.toml").read_text()
    text = src.replace('name = "ort-cpu-1t"', f'name = "ort-cpu-1t-r{rounds}"').replace(
        "time_cap_s = 3.0", f"time_cap_s = 0.3\nrounds = {rounds}")
    p = d / f"ort-cpu-1t-r{rounds}.toml"
    p.write_text(text)
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--rounds", default="1,2")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    child = work / "child.py"
    child.write_text(CHILD)
    print(f"profiling {args.samples} mbv3_fmnist subnets on ort-cpu-1t copies (time cap 0.3 s), "
          f"{args.kills} kills per rounds setting; scratch {work}")
    for rounds in [int(r) for r in args.rounds.split(",")]:
        spec = write_spec(work, rounds)
        store = work / f"r{rounds}.sqlite"
        lost, left = [], []
        for k in range(args.kills):
            before = kept_work(store, rounds)
            proc = subprocess.Popen([sys.executable, str(child), str(store), str(spec), str(args.samples)],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert proc.stdout is not None
            visits = 0
            first = proc.stdout.readline()
            if first.startswith("done"):
                print(f"  rounds {rounds}: the profile completed before kill {k + 1}")
                proc.wait()
                break
            visits += first.startswith("visit")
            deadline = time.monotonic() + rng.uniform(0.0, 4.0)
            os.set_blocking(proc.stdout.fileno(), False)
            while time.monotonic() < deadline and proc.poll() is None:
                line = proc.stdout.readline()
                if line:
                    visits += line.startswith("visit")
                else:
                    time.sleep(0.005)
            if proc.poll() is not None:
                print(f"  rounds {rounds}: the profile completed before kill {k + 1}")
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            for line in proc.stdout.read().splitlines():  # what it printed before dying
                visits += line.startswith("visit")
            proc.stdout.close()
            after = kept_work(store, rounds)
            lost.append(visits - (after - before))
            left.append(len(leftovers()))
            print(f"  rounds {rounds} kill {k + 1:2d}: {visits:3d} visits taken, {after - before:3d} kept, "
                  f"{lost[-1]} lost; scratch dirs left {left[-1]}")
        res = subprocess.run([sys.executable, str(child), str(store), str(spec), str(args.samples)],
                             capture_output=True, text=True)
        done = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr.strip()[-200:]
        print(f"rounds {rounds}: visits lost per kill max {max(lost, default=0)}, total {sum(lost)} over "
              f"{len(lost)} kills; final run: {done}; scratch dirs left after it {len(leftovers())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
