"""The edge agent under a bounded load on loopback: honest clients and hostile ones at the same time.

Starts a real agent subprocess (``python -m hwnas.devices.agent``) on a free loopback port, then runs
``--clients`` threads for ``--duration`` seconds.  Two thirds are honest: they upload a tiny ONNX model
to ``POST /measure`` (0.1 s time cap) or ask ``GET /fingerprint``, and back off 0.5 s after a 503.  A
third are hostile, in equal shares:

* slow-loris: send a request's headers one byte every 2 s;
* oversized: claim a 64 MB upload (over the 8 MB limit) and stream zeros as fast as they can;
* garbage: random bytes instead of HTTP, or a well-formed upload of random bytes instead of ONNX;
* abandoned: open a connection, send half a request (or nothing), close it without reading.

A sampler times ``GET /health`` every 0.1 s throughout, and the agent's and its worker's memory are read
from ``/proc/PID/status`` (VmHWM: the peak resident set).  Prints requests served / refused (by status)
/ reset (connection errors, no answer) per client kind, the peak memory, and /health latency
p50/p99/max.  Linux only (``/proc``).

    python bench/bench_agent_load.py                 # 50 clients, 60 s
    python bench/bench_agent_load.py --duration 10   # a quick look
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np

TOKEN = "bench-agent-load-token"
KINDS_HOSTILE = ("slow-loris", "oversized", "garbage", "abandoned")


def build_model(path: Path) -> Path:
    """A tiny conv net (Conv-Relu-GlobalAveragePool-Flatten-Gemm, 3x32x32 input): ~0.1 ms per inference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32), n)
             for n, s in [("w", (16, 3, 3, 3)), ("b", (16,)), ("fw", (16, 10)), ("fb", (10,))]]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process in KiB ({} once it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def add(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.counts[kind][outcome] += 1


def classify(status: int) -> str:
    return "served" if 200 <= status < 300 else f"refused {status}"


def http_call(host: str, port: int, method: str, path: str, body: bytes | None, timeout: float) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        json.loads(raw.decode())  # every answer, error or not, must be JSON
        return resp.status
    finally:
        conn.close()


def honest(host: str, port: int, model: bytes, stop_at: float, tally: Tally, seed: int) -> None:
    rnd = random.Random(seed)
    q = {"backend": "ort", "batch": "1", "precision": "fp32", "options": json.dumps({"intra_op_threads": 1}),
         "warmup_runs": "3", "warmup_s": "0.02", "min_runs": "10", "min_timed_s": "0.02", "time_cap_s": "0.1"}  # fmt: skip
    path = "/measure?" + urlencode(q)
    while time.monotonic() < stop_at:
        kind = "honest-measure" if rnd.random() < 0.8 else "honest-fingerprint"
        try:
            if kind == "honest-measure":
                status = http_call(host, port, "POST", path, model, timeout=60)
            else:
                status = http_call(host, port, "GET", "/fingerprint?threads=1", None, timeout=30)
            tally.add(kind, classify(status))
            if status == 503:
                time.sleep(0.5)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            tally.add(kind, f"reset ({type(exc).__name__})")
            time.sleep(0.2)


def _read_answer(s: socket.socket) -> int | None:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    if not data.startswith(b"HTTP/"):
        return None
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def hostile(host: str, port: int, kind: str, stop_at: float, tally: Tally, seed: int) -> None:
    rnd = random.Random(seed)
    while time.monotonic() < stop_at:
        try:
            s = socket.create_connection((host, port), timeout=30)
        except OSError as exc:
            tally.add(kind, f"reset ({type(exc).__name__})")
            time.sleep(0.2)
            continue
        status: int | None = None
        try:
            if kind == "slow-loris":
                s.sendall(b"POST /measure HTTP/1.1\r\n")
                try:
                    for c in f"Authorization: Bearer {TOKEN}\r\nX-Pad: {'a' * 100}\r\n".encode():
                        if time.monotonic() > stop_at:
                            break
                        s.sendall(bytes([c]))
                        time.sleep(2.0)
                except OSError:  # cut by the agent: its answer may still be in our receive buffer
                    pass
                status = _read_answer(s)
            elif kind == "oversized":
                s.sendall(f"POST /measure HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {64 << 20}\r\n\r\n".encode())
                chunk = b"\0" * (1 << 16)
                try:
                    for _ in range(1024):
                        s.sendall(chunk)
                except OSError:
                    pass
                status = _read_answer(s)
            elif kind == "garbage":
                if rnd.random() < 0.5:
                    s.sendall(os.urandom(rnd.randint(1, 4096)) + b"\r\n\r\n")
                else:
                    body = os.urandom(rnd.randint(100, 100_000))
                    s.sendall(f"POST /measure HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                status = _read_answer(s)
            else:  # abandoned
                if rnd.random() < 0.5:
                    s.sendall(f"POST /measure HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n".encode() + b"\0" * 500)
                time.sleep(rnd.uniform(0.0, 0.5))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
                tally.add(kind, "abandoned")
                continue
        except OSError as exc:
            tally.add(kind, f"reset ({type(exc).__name__})")
            continue
        finally:
            s.close()
        tally.add(kind, "no answer" if status is None else classify(status))
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--request-timeout-s", type=float, default=10.0, help="the agent's whole-request deadline")
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--max-connections", type=int, default=64)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    model = build_model(tmp / "tiny.onnx").read_bytes()
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    cmd = [sys.executable, "-m", "hwnas.devices.agent", "--port", "0", "--quiet", "--token-file", str(token_file),
           "--max-upload-mb", "8", "--max-queue", str(args.max_queue), "--queue-timeout-s", "5",
           "--request-timeout-s", str(args.request_timeout_s), "--max-connections", str(args.max_connections)]  # fmt: skip
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert agent.stdout is not None
    line = agent.stdout.readline()
    if "listening on" not in line:
        print(f"agent did not start: {line!r} {agent.stderr.read() if agent.stderr else ''}", file=sys.stderr)
        return 1
    url = urlsplit(line.rsplit(" ", 1)[-1].strip())
    host, port = url.hostname or "127.0.0.1", int(url.port or 0)
    stderr_lines: list[str] = []
    threading.Thread(target=lambda: stderr_lines.extend(agent.stderr or []), daemon=True).start()

    n_hostile = args.clients // 3
    n_honest = args.clients - n_hostile
    tally = Tally()
    t_start = time.monotonic()
    stop_at = t_start + args.duration
    threads = [threading.Thread(target=honest, args=(host, port, model, stop_at, tally, i), daemon=True) for i in range(n_honest)]
    threads += [threading.Thread(target=hostile, args=(host, port, KINDS_HOSTILE[i % 4], stop_at, tally, 1000 + i), daemon=True)
                for i in range(n_hostile)]  # fmt: skip

    health_ms: list[float] = []
    health_fail: Counter = Counter()
    mem = {"agent_hwm": 0, "agent_rss_max": 0, "worker_hwm": 0}
    max_conns = 0

    def sampler() -> None:
        nonlocal max_conns
        next_mem = 0.0
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(host, port, timeout=10)
                conn.request("GET", "/health")
                resp = conn.getresponse()
                data = json.loads(resp.read().decode())
                conn.close()
                if resp.status == 200:
                    health_ms.append((time.perf_counter() - t0) * 1e3)
                    max_conns = max(max_conns, int(data.get("connections", 0)))
                else:
                    health_fail[f"status {resp.status}"] += 1
            except (OSError, http.client.HTTPException, ValueError) as exc:
                health_fail[type(exc).__name__] += 1
            if time.monotonic() >= next_mem:
                st = proc_status(agent.pid)
                mem["agent_hwm"] = max(mem["agent_hwm"], st.get("VmHWM", 0))
                mem["agent_rss_max"] = max(mem["agent_rss_max"], st.get("VmRSS", 0))
                for c in children(agent.pid):
                    mem["worker_hwm"] = max(mem["worker_hwm"], proc_status(c).get("VmHWM", 0))
                next_mem = time.monotonic() + 0.5
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))

    samp = threading.Thread(target=sampler, daemon=True)
    samp.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.duration + 120)
    samp.join(timeout=30)
    wall = time.monotonic() - t_start
    final = proc_status(agent.pid)
    mem["agent_hwm"] = max(mem["agent_hwm"], final.get("VmHWM", 0))
    for c in children(agent.pid):
        mem["worker_hwm"] = max(mem["worker_hwm"], proc_status(c).get("VmHWM", 0))
    alive = agent.poll() is None
    agent.terminate()
    try:
        agent.wait(timeout=10)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()

    print(f"agent under load: {n_honest} honest + {n_hostile} hostile clients for {wall:.1f} s on loopback "
          f"(max_queue {args.max_queue}, max_connections {args.max_connections}, request deadline {args.request_timeout_s:g} s)")  # fmt: skip
    kinds = ["honest-measure", "honest-fingerprint", *KINDS_HOSTILE]
    print(f"{'client kind':<20} {'served':>7} {'refused':>8} {'reset':>6} {'other':>6}  details")
    total = Counter()
    for kind in kinds:
        c = tally.counts.get(kind, Counter())
        served = c["served"]
        refused = sum(v for k, v in c.items() if k.startswith("refused"))
        reset = sum(v for k, v in c.items() if k.startswith("reset"))
        other = sum(c.values()) - served - refused - reset
        total.update(served=served, refused=refused, reset=reset, other=other)
        details = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))
        print(f"{kind:<20} {served:>7} {refused:>8} {reset:>6} {other:>6}  {details}")
    print(f"{'all':<20} {total['served']:>7} {total['refused']:>8} {total['reset']:>6} {total['other']:>6}")
    if health_ms:
        h = np.asarray(health_ms)
        print(f"/health: {len(h)} samples, p50 {np.percentile(h, 50):.1f} ms, p99 {np.percentile(h, 99):.1f} ms, "
              f"max {h.max():.1f} ms; failures: {dict(health_fail) or 0}; most connections seen open: {max_conns}")  # fmt: skip
    else:
        print(f"/health: no successful sample; failures: {dict(health_fail)}")
    print(f"memory peak (VmHWM): agent {mem['agent_hwm'] / 1024:.1f} MiB, measuring worker {mem['worker_hwm'] / 1024:.1f} MiB")
    print(f"agent alive at the end: {alive}; agent stderr lines: {len(stderr_lines)}"
          + (f" (first: {stderr_lines[0].strip()[:160]!r})" if stderr_lines else ""))  # fmt: skip
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
