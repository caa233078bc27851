"""The edge agent under hostile or unlucky clients: real agent subprocesses, real sockets on loopback,
real ONNX Runtime sessions of tiny models built here."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import onnx
import pytest
from devices_agent_support import TOKEN, start_agent, stop, wait_until, worker_pids
from onnx import TensorProto, helper, numpy_helper

from hwnas.devices import load_device, profile_onnx_file
from hwnas.devices.agent import (
    AgentConfigError,
    make_server,
    measure_query,
    read_token_file,
)
from hwnas.devices.protocol import ProtocolSettings
from hwnas.devices.remote import AgentClient
from hwnas.errors import DeviceUnavailableError, HwnasError

QUICK = ProtocolSettings(warmup_runs=3, warmup_s=0.02, min_runs=10, min_timed_s=0.02, time_cap_s=0.3)
REQUEST_TIMEOUT_S = 1.5


# ---------------------------------------------------------------------- models and helpers
def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hwnas-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_slow_matmul(path: Path, depth: int) -> Path:
    """``depth`` chained Nx1024 @ 1024x1024 MatMuls; the weight is made at run time, so the file is tiny.

    At batch N = 2048, about 40 ms per MatMul on one core of this project's VM: depth 250 is a ~10 s
    inference that loads in 0.5 s."""
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["w"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1e-3]))]  # fmt: skip
    prev = "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        prev = f"m{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1024])],
        initializer=[numpy_helper.from_array(np.array([1024, 1024], dtype=np.int64), "wshape")],
    )  # fmt: skip
    return _save(graph, path)


def build_reshape_fails_at_run_time(path: Path) -> Path:
    """Loads fine (the batch is dynamic) but a batch-1 input of 4 values cannot become shape (3, -1)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "M"])],
        initializer=[numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "shape")],
    )  # fmt: skip
    return _save(graph, path)


@pytest.fixture(scope="module")
def slow_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_slow_matmul(tmp_path_factory.mktemp("slow") / "slow.onnx", depth=250)


@pytest.fixture(scope="module")
def failing_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reshape_fails_at_run_time(tmp_path_factory.mktemp("bad") / "bad.onnx")


def measure_path(settings: ProtocolSettings = QUICK, batch: int = 1) -> str:
    return "/measure?" + urlencode(measure_query("ort", batch=batch, options={"intra_op_threads": 1}, settings=settings))


def request(url: str, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, dict]:  # fmt: skip
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    return resp.status, (json.loads(raw) if raw else {}), dict(resp.getheaders())


def health(url: str) -> dict:
    status, data, _ = request(url, "GET", "/health", token=None, timeout=10)
    assert status == 200, data
    return data


def raw_exchange(url: str, payload: bytes, timeout: float = 10) -> tuple[int, dict]:
    """Send raw bytes, read the whole answer; (status, JSON body)."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body.decode())


def hold_upload(url: str, size: int = 500_000) -> socket.socket:
    """An authorized upload whose headers and first KB are sent, the rest held back."""
    u = urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    head = (f"POST {measure_path()} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()  # fmt: skip
    s.sendall(head + b"\0" * 1024)
    return s


@pytest.fixture(scope="module")
def strict_agent() -> Iterator[tuple[subprocess.Popen, str]]:
    """An agent with small limits, logging to a captured stderr."""
    proc, url = start_agent(
        "--request-timeout-s", str(REQUEST_TIMEOUT_S), "--max-connections", "6", "--max-queue", "2",
        "--queue-timeout-s", "0.5", "--measure-grace-s", "0.5", "--max-upload-mb", "1", quiet=False,
    )  # fmt: skip
    try:
        yield proc, url
    finally:
        stop(proc)


# ---------------------------------------------------------------------- the request deadline
def test_slow_loris_headers_cut_at_the_request_deadline(strict_agent: tuple[subprocess.Popen, str]) -> None:
    """A byte of header every 0.2 s never trips a per-recv timeout; the whole-request deadline cuts it."""
    _, url = strict_agent
    u = urlsplit(url)
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        answer = b""
        try:
            for c in b"X-Slow: " + b"a" * 200:
                s.sendall(bytes([c]))
                time.sleep(0.2)
                if time.monotonic() - t0 > 6:
                    break
        except OSError:  # the agent closed the connection: what we want
            pass
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    took = time.monotonic() - t0
    assert took < REQUEST_TIMEOUT_S + 1.5, took
    if answer:  # the agent answers 408 as JSON before closing
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b" 408 " in head.split(b"\r\n")[0] and json.loads(body)["status"] == 408
    assert health(url)["status"] == "ok"


def test_slow_body_cut_at_the_request_deadline(strict_agent: tuple[subprocess.Popen, str]) -> None:
    _, url = strict_agent
    t0 = time.monotonic()
    s = hold_upload(url, size=100_000)
    answer = b""
    try:
        while time.monotonic() - t0 < 6:
            s.sendall(b"\0")
            time.sleep(0.2)
    except OSError:
        pass
    try:
        while chunk := s.recv(65536):
            answer += chunk
    except OSError:
        pass
    s.close()
    took = time.monotonic() - t0
    assert took < REQUEST_TIMEOUT_S + 1.5, took
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 408 " in head.split(b"\r\n")[0], answer[:200]
    assert json.loads(body)["type"] == "RequestError"
    assert wait_until(lambda: health(url)["queue"] == 0, timeout=5)


# ---------------------------------------------------------------------- connections and the queue
def test_connection_cap_gives_fast_503_json(strict_agent: tuple[subprocess.Popen, str]) -> None:
    _, url = strict_agent
    u = urlsplit(url)
    idle = [socket.create_connection((u.hostname, u.port), timeout=10) for _ in range(5)]
    try:
        assert wait_until(lambda: health(url)["connections"] == 6, timeout=5)  # 5 idle + the /health itself
        idle.append(socket.create_connection((u.hostname, u.port), timeout=10))
        assert wait_until(lambda: _connections_seen(url) == "full", timeout=5)
        t0 = time.monotonic()
        status, data = raw_exchange(url, b"GET /health HTTP/1.0\r\n\r\n")
        assert time.monotonic() - t0 < 1.0
        assert status == 503 and data["type"] == "AgentBusyError" and "connections" in data["error"]
    finally:
        for s in idle:
            s.close()
    assert wait_until(lambda: _connections_seen(url) == "ok", timeout=5)


def _connections_seen(url: str) -> str:
    try:
        status, _ = raw_exchange(url, b"GET /health HTTP/1.0\r\n\r\n", timeout=5)
    except OSError:
        return "error"
    return "ok" if status == 200 else "full"


def test_held_uploads_are_counted_and_the_rest_refused_at_once(strict_agent: tuple[subprocess.Popen, str], tiny_onnx: Path) -> None:
    """max_queue 2: two uploads whose bodies are still arriving fill the queue; a third is refused
    with 503 before any of its body is read (before: all were admitted while reading)."""
    _, url = strict_agent
    held = [hold_upload(url), hold_upload(url)]
    try:
        assert wait_until(lambda: health(url)["queue"] == 2, timeout=5)
        t0 = time.monotonic()
        status, data, headers = request(url, "POST", measure_path(), body=tiny_onnx.read_bytes())
        assert time.monotonic() - t0 < 1.0
        assert status == 503 and data["type"] == "AgentBusyError" and "queue is full" in data["error"]
        assert headers.get("Retry-After")
    finally:
        for s in held:
            s.close()
    assert wait_until(lambda: health(url)["queue"] == 0, timeout=5)  # abandoned uploads leave the queue
    status, data, _ = request(url, "POST", measure_path(), body=tiny_onnx.read_bytes())
    assert status == 200, data


@pytest.mark.parametrize("agent_kind", ["capped", "default"])
def test_burst_of_connects_all_answered(strict_agent: tuple[subprocess.Popen, str], agent: str, agent_kind: str) -> None:
    """40 clients connect at the same instant: every one gets an HTTP answer (200, or 503 JSON over the
    cap of 6 connections), none is reset, and every connect completes at once: the listen backlog holds
    the burst (with the old backlog of 5, Linux drops the excess SYNs and the clients retry after 1 s;
    other systems reset them)."""
    url = strict_agent[1] if agent_kind == "capped" else agent
    u = urlsplit(url)
    n = 40
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    connect_s = [0.0] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            t0 = time.monotonic()
            with socket.create_connection((u.hostname, u.port), timeout=10) as s:
                connect_s[i] = time.monotonic() - t0
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            results[i] = int(data.split(b" ", 2)[1])
        except (OSError, IndexError, ValueError) as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    errors = [r for r in results if not isinstance(r, int)]
    assert not errors, errors[:3]
    assert all(r in (200, 503) for r in results)
    if agent_kind == "default":
        assert all(r == 200 for r in results)
    assert max(connect_s) < 0.9, sorted(connect_s)[-5:]
    assert health(url)["status"] == "ok"


# ---------------------------------------------------------------------- measurements
def test_busy_flag_stays_true_after_a_queue_timeout(strict_agent: tuple[subprocess.Popen, str], tiny_onnx: Path) -> None:
    _, url = strict_agent
    slow = ProtocolSettings(min_runs=10**6, max_runs=10**6, time_cap_s=2.0, warmup_s=0.0)
    out: dict[str, object] = {}
    t = threading.Thread(target=lambda: out.update(r=request(url, "POST", measure_path(slow), body=tiny_onnx.read_bytes())))
    t.start()
    try:
        assert wait_until(lambda: health(url)["busy"], timeout=15)
        status, data, _ = request(url, "POST", measure_path(), body=tiny_onnx.read_bytes())
        assert status == 503 and "waited 0.5 s" in data["error"]
        h = health(url)
        assert h["busy"] is True and h["queue"] == 1  # the running measurement is still there
    finally:
        t.join(timeout=30)
    assert out["r"][0] == 200, out["r"]  # type: ignore[index]
    h = health(url)
    assert h["busy"] is False and h["queue"] == 0


def test_slow_model_is_stopped_at_the_wall_clock_limit(strict_agent: tuple[subprocess.Popen, str], slow_onnx: Path,
                                                       tiny_onnx: Path) -> None:  # fmt: skip
    """A ~10 s inference with time_cap_s = 0.2: stopped at 2 x 0.2 + 0.5 s after the load (before, the
    protocol ran one warm-up and 3 timed runs, ~40 s, holding the lock), and the agent measures on."""
    _, url = strict_agent
    before = health(url)["stopped"]
    t0 = time.monotonic()
    status, data, _ = request(url, "POST", measure_path(ProtocolSettings(time_cap_s=0.2), batch=2048), body=slow_onnx.read_bytes())
    took = time.monotonic() - t0
    assert status == 400 and data["type"] == "MeasureTimeLimitError", data
    assert "raise time_cap_s" in data["error"] and "\n" not in data["error"]
    assert took < 4.5, took  # load (worker start included) + 0.9 s, far below one 10 s inference
    h = health(url)
    assert h["busy"] is False and h["stopped"] == before + 1
    status, data, _ = request(url, "POST", measure_path(), body=tiny_onnx.read_bytes())
    assert status == 200 and data["measurement"]["n"] >= 3


def test_model_failing_at_run_time_is_400_with_one_line(strict_agent: tuple[subprocess.Popen, str], failing_onnx: Path) -> None:
    proc, url = strict_agent
    seen = len(proc.stderr_lines)  # type: ignore[attr-defined]
    status, data, _ = request(url, "POST", measure_path(), body=failing_onnx.read_bytes())
    assert status == 400 and data["type"] == "ModelFileError", data
    assert "uploaded model" in data["error"] and "cannot be reshaped" in data["error"]
    assert "\n" not in data["error"] and "hwnas-agent-" not in data["error"]  # no temporary path
    assert health(url)["status"] == "ok"
    time.sleep(0.2)
    new = proc.stderr_lines[seen:]  # type: ignore[attr-defined]
    assert not any("Traceback" in line for line in new), new
    assert sum("measurement failed" in line for line in new) == 1, new
    assert not any("[E:onnxruntime:" in line for line in new), new  # ORT's own error log line is dropped


def test_worker_killed_mid_measurement_is_400_and_the_agent_recovers(strict_agent: tuple[subprocess.Popen, str],
                                                                      slow_onnx: Path, tiny_onnx: Path) -> None:  # fmt: skip
    """A model that crashes the runtime (here: the worker is killed under it) answers 400, not a hang or 500."""
    proc, url = strict_agent
    out: dict[str, object] = {}
    body = slow_onnx.read_bytes()
    t = threading.Thread(target=lambda: out.update(r=request(url, "POST", measure_path(ProtocolSettings(time_cap_s=5), batch=2048), body=body)))
    t.start()
    assert wait_until(lambda: health(url)["busy"] and bool(worker_pids(proc)), timeout=10)
    time.sleep(0.5)
    for pid in worker_pids(proc):
        os.kill(pid, signal.SIGKILL)
    t.join(timeout=30)
    status, data, _ = out["r"]  # type: ignore[misc]
    assert status == 400 and data["type"] == "ModelFileError" and "signal 9" in data["error"], data
    status, data, _ = request(url, "POST", measure_path(), body=tiny_onnx.read_bytes())
    assert status == 200, data


# ---------------------------------------------------------------------- JSON for every status
def _json_error(status: int, data: dict, expected: int) -> None:
    assert status == expected, (status, data)
    assert data["status"] == expected and data["error"] and data["type"]


def test_every_error_status_is_json(strict_agent: tuple[subprocess.Popen, str], tiny_onnx: Path) -> None:
    _, url = strict_agent
    body = tiny_onnx.read_bytes()
    s, d, _ = request(url, "GET", "/nope")
    _json_error(s, d, 404)
    s, d, _ = request(url, "POST", "/nope", body=body)
    _json_error(s, d, 404)
    for method, path in [("PUT", "/measure"), ("DELETE", "/health"), ("GET", "/measure"), ("POST", "/health"), ("BREW", "/")]:
        s, d, h = request(url, method, path, body=b"")
        _json_error(s, d, 405)
        assert "GET" in h.get("Allow", "")
    s, d = raw_exchange(url, f"POST /measure HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    _json_error(s, d, 411)
    s, d, _ = request(url, "POST", measure_path(), body=b"\0" * ((1 << 20) + 1))
    _json_error(s, d, 413)
    s, d, _ = request(url, "POST", measure_path(), body=body, token="wrong")
    _json_error(s, d, 401)
    s, d, _ = request(url, "POST", "/measure?colour=red", body=body)
    _json_error(s, d, 400)
    s, d = raw_exchange(url, b"NONSENSE\r\n\r\n")  # http.server's own 400 (bad request line)
    _json_error(s, d, 400)
    s, d = raw_exchange(url, b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n")  # http.server's own 414
    _json_error(s, d, 414)
    held = [hold_upload(url), hold_upload(url)]
    try:
        assert wait_until(lambda: health(url)["queue"] == 2, timeout=5)
        s, d, _ = request(url, "POST", measure_path(), body=body)
        _json_error(s, d, 503)
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: health(url)["queue"] == 0, timeout=5)


# ---------------------------------------------------------------------- token file and settings
def test_token_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("from-a-file\n")
    f.chmod(0o600)
    assert read_token_file(f) == "from-a-file"
    proc, url = start_agent("--token-file", str(f), token=None)
    try:
        assert request(url, "GET", "/fingerprint", token="from-a-file")[0] == 200
        assert request(url, "GET", "/fingerprint", token=TOKEN)[0] == 401
    finally:
        stop(proc)


@pytest.mark.parametrize("case", ["group-readable", "empty", "missing", "both"])
def test_bad_token_file_is_one_line_exit_1(tmp_path: Path, case: str) -> None:
    f = tmp_path / "token"
    f.write_text("" if case == "empty" else "secret\n")
    f.chmod(0o644 if case == "group-readable" else 0o600)
    if case == "missing":
        f.unlink()
    args = ["agent", "serve", "--port", "0", "--token-file", str(f)] + (["--token", "x"] if case == "both" else [])
    hwnas = shutil.which("hwnas", path=str(Path(sys.executable).parent))
    assert hwnas, "the hwnas console script is not installed next to this python"
    res = subprocess.run([hwnas, *args], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    expected = {"group-readable": "chmod 600", "empty": "one line", "missing": "cannot read", "both": "not both"}[case]
    assert expected in lines[0]


@pytest.mark.parametrize("kw", [{"port": 99999}, {"max_upload_mb": float("inf")}, {"request_timeout_s": float("nan")},
                                {"max_connections": 0}, {"tls_cert": "c.pem"}])  # fmt: skip
def test_bad_agent_settings_are_config_errors(kw: dict) -> None:
    with pytest.raises(AgentConfigError):
        make_server(port=kw.pop("port", 0), token="t", **kw)


# ---------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_agent_with_ca_file(tls_files: tuple[Path, Path], tiny_onnx: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    cert, key = tls_files
    proc, url = start_agent("--tls-cert", str(cert), "--tls-key", str(key), "--request-timeout-s", "2")
    try:
        assert url.startswith("https://")
        client = AgentClient(url, TOKEN, ca_file=cert, timeout_s=10)
        assert client.health()["tls"] is True
        m, fp = client.measure(tiny_onnx, measure_query("ort", options={"intra_op_threads": 1}, settings=QUICK))
        assert m.median_ms > 0 and fp.fp_hash
        with pytest.raises(DeviceUnavailableError, match="ca_file"):  # self-signed: not in the system CAs
            AgentClient(url, TOKEN, timeout_s=5).health()
        with pytest.raises(HwnasError):  # plain HTTP to the TLS port fails cleanly ...
            AgentClient(url.replace("https://", "http://"), TOKEN, timeout_s=5).health()
        u = urlsplit(url)
        with socket.create_connection((u.hostname, u.port), timeout=10):  # ... and so does a silent client
            t0 = time.monotonic()
            assert client.health()["status"] == "ok"  # the handshake of the silent one blocks nobody
            assert time.monotonic() - t0 < 2
        ctx = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection((u.hostname, u.port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /nope HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert b" 404 " in data.split(b"\r\n")[0] and json.loads(data.partition(b"\r\n\r\n")[2])["status"] == 404
        # a remote device spec: https:// address, ca_file relative to the spec file
        shutil.copy(cert, tmp_path / "board-ca.pem")
        (tmp_path / "board.toml").write_text(
            f'backend = "remote"\naddress = "{url}"\ntoken_env = "HWNAS_TEST_TLS_TOKEN"\n'
            '[options]\nca_file = "board-ca.pem"\nintra_op_threads = 1\n[protocol]\ntime_cap_s = 0.3\nmin_runs = 10\n'
        )
        monkeypatch.setenv("HWNAS_TEST_TLS_TOKEN", TOKEN)
        out = profile_onnx_file(tiny_onnx, load_device(tmp_path / "board.toml"))
        assert out["measurement"]["median_ms"] > 0 and out["fingerprint"]["runtime"]["backend"] == "ort"
    finally:
        stop(proc)
