"""Fleet profiling on Ray, measured: what Ray costs, how the work splits, what a dead agent does, and
the throughput of 1 vs 2 agents.

    python bench/bench_fleet.py [--n 20] [--time-cap 1.0] [--skip-throughput]

1. Ray: the size of its installed packages, ``import ray`` (median of 5 fresh interpreters, less a
   bare interpreter), and the start of a local instance (``ray.init``, median of 3).
2. 40 tiny ONNX subnets over two loopback agents (the test's setup): how many each board measured,
   duplicates, missing; then again with agent 0 killed after 20 rows: which subnets were retried.
3. Throughput: ``hwnas.profile`` of ``--n`` subnets of the shipped supernet (exported as ``hwnas
   export`` writes them) on 1 agent, then on 2 agents of the same kind, each ``intra_op_threads = 1``;
   subnets per minute, and the per-subnet latency ratio of the 2-agent rows to the 1-agent rows
   (the agents share this machine's cores and caches: that ratio shows whether they disturb each other).
Run it on a quiet machine (no helper, no test run): it times real inferences.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "devices"))

from devices_agent_support import TOKEN, start_agent, stop  # noqa: E402
from devices_onnx_models import build_convnet  # noqa: E402

TOKEN_ENV = "HWNAS_BENCH_FLEET_TOKEN"


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")


def spec_file(d: Path, name: str, url: str, time_cap: float | None = None) -> Path:
    from urllib.parse import urlsplit

    f = d / f"{name}.toml"
    proto = f"[protocol]\ntime_cap_s = {time_cap}\n" if time_cap else "[protocol]\ntime_cap_s = 0.1\nwarmup_s = 0.02\nmin_runs = 10\n"
    f.write_text(f'name = "{name}"\nbackend = "remote"\naddress = "{urlsplit(url).netloc}"\ntoken_env = "{TOKEN_ENV}"\n'
                 f"[options]\nintra_op_threads = 1\n{proto}")
    return f


def ray_costs() -> None:
    import importlib.metadata as md

    site = Path(md.distribution("ray").locate_file(""))
    size = sum(f.stat().st_size for f in (site / "ray").rglob("*") if f.is_file())
    bare, imp = [], []
    for _ in range(5):
        for cmd, out in (("pass", bare), ("import ray", imp)):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", cmd], check=True)
            out.append(time.perf_counter() - t)
    import ray

    from hwnas.fleet.cluster import LOCAL_NODE_IP

    starts = []
    for _ in range(3):
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address=LOCAL_NODE_IP)
        starts.append(time.perf_counter() - t)
        ray.shutdown()
    print(f"ray {ray.__version__}: package dir {size / 2**20:.0f} MiB (without its dependencies); "
          f"import ray {statistics.median(imp) - statistics.median(bare):.2f} s over a bare interpreter "
          f"(median of 5); local instance start (ray.init) median {statistics.median(starts):.2f} s "
          f"of {', '.join(f'{s:.2f}' for s in starts)}")


def tiny_fleet(kill: bool) -> None:
    from hwnas.devices import Store, load_device
    from hwnas.fleet import profile_fleet

    archs = [(f"c{4 + i % 8}-s{8 + 2 * (i // 8)}", {"c": 4 + i % 8, "s": 8 + 2 * (i // 8)}) for i in range(40)]
    agents = [start_agent() for _ in range(2)]
    try:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            specs = [load_device(spec_file(d, f"board-{k}", url)) for k, (_, url) in enumerate(agents)]
            n = [0]

            def progress(ev):
                n[0] += ev.status == "measured"
                if kill and n[0] == 20 and ev.status == "measured":
                    agents[0][0].kill()

            def build(spec, arch):
                return build_convnet(d / f"{time.monotonic_ns()}.onnx", channels=arch["c"], size=arch["s"], batch=1), None

            with Store(d / "s.sqlite") as st:
                out = profile_fleet(st, specs, archs, build, "tiny", progress=progress)
                rows = st.measurements()
            ids = [r["arch_id"] for r in rows]
            print(f"40 subnets, 2 agents{', agent 0 killed after 20 rows' if kill else ''}: by board "
                  f"{dict(Counter(r['device'] for r in rows))}; {len(ids)} rows, {len(ids) - len(set(ids))} duplicates, "
                  f"{len({a for a, _ in archs} - set(ids))} missing; {out['wall_s']:.1f} s, "
                  f"{out['subnets_per_min']:.0f} subnets/min (Ray start {out['ray']['start_s']:.1f} s)")
            for r in out["retries"]:
                print(f"  retried {r['arch_id']}: from {r['board']} ({r['reason'][:90]}), measured by {r['measured_by']}")
    finally:
        for p, _ in agents:
            stop(p)


def export_rate(n: int) -> None:
    """The driver's share: building and exporting one subnet's ONNX file, as the fleet does it."""
    from hwnas.devices.profile import stratified_sample
    from hwnas.jobs import supernet_model_builder
    from hwnas.supernet.registry import create_supernet

    net = create_supernet("mbv3_fmnist", pretrained=False)
    archs = stratified_sample(net.space, n, 1, lambda a: net.family.arch_cost(a)["macs"])
    with tempfile.TemporaryDirectory() as d:
        build = supernet_model_builder(net, "onnx", d)
        times = []
        for _, a in archs:
            t = time.perf_counter()
            Path(build(a)[0]).unlink()
            times.append(time.perf_counter() - t)
    print(f"driver: extract + ONNX export + onnxslim of one subnet, median {statistics.median(times):.2f} s over "
          f"{n} (a ceiling of {60 / statistics.median(times):.0f} subnets/min for one driver process)")


def res_m(store: Path) -> list:
    """The stored measurements of a store (with their timing fields)."""
    from hwnas.devices import Store

    with Store(store) as st:
        return [st.measurement(x["fp_hash"], x["runtime_config"], x["arch_id"], x["batch"], x["precision"])
                for x in st.measurements()]


def throughput(n: int, time_cap: float) -> None:
    import hwnas

    agents = [start_agent() for _ in range(2)]
    try:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            files = [str(spec_file(d, f"agent-{k}", url, time_cap)) for k, (_, url) in enumerate(agents)]
            res = {}
            for k, label in ((0, "1 agent, no Ray (hwnas profile --device)"), (1, "1 agent on Ray"),
                             (2, "2 agents on Ray")):
                store = d / f"s{k}.sqlite"
                t = time.perf_counter()
                r = hwnas.profile(files[0] if k == 0 else files[:k], "mbv3_fmnist", n, store=store)
                wall = time.perf_counter() - t
                det = r.details
                start = det["ray"]["start_s"] if k else 0.0
                with hwnas.devices.Store(store) as st:
                    res[k] = {x["arch_id"]: x["median_ms"] for x in st.measurements()}
                print(f"{label}: {n} mbv3_fmnist subnets, time cap {time_cap:g} s: {r.measured / wall * 60:.1f} "
                      f"subnets/min over the whole job ({wall:.1f} s, of which Ray start {start:.1f} s); "
                      f"{r.measured / (wall - start) * 60:.1f} subnets/min without the start")
                if k:  # where a board's time went: inside its actor (upload, load, protocol) vs waiting
                    for b, v in det["boards"].items():
                        print(f"  {b}: {v['measured']} subnets, {v['busy_s']:.1f} s in the actor's measure calls, "
                              f"{v['turnaround_s']:.1f} s from hand-out to result")
                print(f"  inside the protocol (the agents' measurement wall time): "
                      f"{sum(st_m.wall_s for st_m in res_m(store)):.1f} s")
            for k in (1, 2):
                common = sorted(set(res[0]) & set(res[k]))
                ratio = np.array([res[k][a] / res[0][a] for a in common])
                print(f"latency of the same subnets, {k} agent(s) on Ray / 1 agent without Ray (isolated scale, "
                      f"the agents' timing): median {np.median(ratio):.3f}, quartiles {np.quantile(ratio, 0.25):.3f}-"
                      f"{np.quantile(ratio, 0.75):.3f} over {len(common)} subnets")
    finally:
        for p, _ in agents:
            stop(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--time-cap", type=float, default=1.0)
    ap.add_argument("--skip-throughput", action="store_true")
    a = ap.parse_args()
    os.environ[TOKEN_ENV] = TOKEN
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    ray_costs()
    tiny_fleet(kill=False)
    tiny_fleet(kill=True)
    if not a.skip_throughput:
        export_rate(a.n)
        throughput(a.n, a.time_cap)


if __name__ == "__main__":
    main()
