"""The edge agent as a real subprocess on loopback, and the remote backend/client against it."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devices_agent_support import TOKEN, free_port, start_agent, stop
from hwnas.devices import create_backend, load_device, profile_onnx_file
from hwnas.devices.agent import make_server, measure_query
from hwnas.devices.protocol import ProtocolSettings
from hwnas.devices.remote import AgentAuthError, AgentClient
from hwnas.devices.spec import DeviceSpec
from hwnas.errors import DeviceUnavailableError, ModelFileError

QUICK = ProtocolSettings(warmup_runs=5, warmup_s=0.05, min_runs=20, time_cap_s=0.5)


def request(url: str, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
            headers: dict | None = None) -> tuple[int, dict]:  # fmt: skip
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = json.loads(resp.read().decode())
    conn.close()
    return resp.status, data


def alive(url: str) -> bool:
    status, data = request(url, "GET", "/health", token=None)
    return status == 200 and data["status"] == "ok"


def measure_path(settings: ProtocolSettings = QUICK, **kw) -> str:
    from urllib.parse import urlencode

    return "/measure?" + urlencode(measure_query("ort", options={"intra_op_threads": 1}, settings=settings, **kw))


def test_health_needs_no_auth(agent: str) -> None:
    status, data = request(agent, "GET", "/health", token=None)
    assert status == 200 and data["status"] == "ok" and data["version"]
    assert data["queue"] == 0 and data["max_upload_mb"] == 1.0 and "CPUExecutionProvider" in data["providers"]


def test_fingerprint_needs_auth(agent: str) -> None:
    assert request(agent, "GET", "/fingerprint", token=None)[0] == 401
    status, data = request(agent, "GET", "/fingerprint?threads=1")
    assert status == 200 and len(data["fp_hash"]) == 12 and data["runtime"]["intra_op_threads"] == 1


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_measure_without_valid_token_is_401(agent: str, tiny_onnx: Path, token: str | None) -> None:
    status, data = request(agent, "POST", measure_path(), body=tiny_onnx.read_bytes(), token=token)
    assert status == 401 and "token" in data["error"]
    assert alive(agent)


def test_measure_agrees_with_local(agent: str, medium_onnx: Path) -> None:
    s = ProtocolSettings(time_cap_s=2.0)
    with create_backend(load_device("ort-cpu-1t"), model=medium_onnx) as runner:
        local = runner.measure(s)
    status, data = request(agent, "POST", measure_path(s), body=medium_onnx.read_bytes())
    assert status == 200, data
    remote = data["measurement"]
    ratio = remote["median_ms"] / local.median_ms
    assert 0.5 < ratio < 2.0, (remote["median_ms"], local.median_ms)
    assert remote["n"] >= s.min_runs and data["fingerprint"]["runtime"]["intra_op_threads"] == 1


def test_oversize_content_length_refused_before_reading(agent: str) -> None:
    """A 1 GB claim with a few bytes sent gets 413 at once (the body is never read)."""
    u = urlsplit(agent)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.putrequest("POST", measure_path())
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(1 << 30))
    conn.endheaders()
    conn.send(b"\x08\x07" * 16)
    resp = conn.getresponse()
    data = json.loads(resp.read().decode())
    conn.close()
    assert resp.status == 413 and "limit of 1 MB" in data["error"]
    assert alive(agent)


def test_upload_just_over_limit_is_413(agent: str) -> None:
    status, data = request(agent, "POST", measure_path(), body=b"\0" * ((1 << 20) + 1))
    assert status == 413
    assert alive(agent)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "text"])
def test_malformed_onnx_is_400(agent: str, medium_onnx: Path, kind: str) -> None:
    good = medium_onnx.read_bytes()
    body = {
        "garbage": os.urandom(4096),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "text": b"this is not a model",
    }[kind]
    status, data = request(agent, "POST", measure_path(), body=body)
    assert status == 400 and data["type"] == "ModelFileError" and "ONNX" in data["error"]
    assert alive(agent)


def test_bad_requests_are_json_errors(agent: str, tiny_onnx: Path) -> None:
    status, data = request(agent, "POST", "/measure?threads=lots", body=tiny_onnx.read_bytes())
    assert status == 400 and "threads" in data["error"]
    status, data = request(agent, "POST", "/measure?colour=red", body=tiny_onnx.read_bytes())
    assert status == 400 and "colour" in data["error"]
    status, data = request(agent, "POST", "/measure?time_cap_s=9999", body=tiny_onnx.read_bytes())
    assert status == 400 and "limit" in data["error"]
    status, data = request(agent, "POST", "/measure?provider=CUDAExecutionProvider", body=tiny_onnx.read_bytes())
    assert status == 400 and data["type"] == "DeviceUnavailableError"
    assert request(agent, "GET", "/nope")[0] == 404
    assert alive(agent)


def _remote_spec(tmp_path: Path, url: str, token_env: str = "HWNAS_TEST_AGENT_TOKEN") -> DeviceSpec:
    f = tmp_path / "board.toml"
    f.write_text(
        f'backend = "remote"\naddress = "{urlsplit(url).netloc}"\ntoken_env = "{token_env}"\n'
        '[options]\nintra_op_threads = 1\n[protocol]\ntime_cap_s = 0.5\nmin_runs = 20\n'
    )
    return load_device(f)


def test_remote_backend_measures(agent: str, tmp_path: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _remote_spec(tmp_path, agent)
    monkeypatch.setenv("HWNAS_TEST_AGENT_TOKEN", TOKEN)
    out = profile_onnx_file(tiny_onnx, spec)
    assert out["measurement"]["median_ms"] > 0 and out["measurement"]["n"] >= 20
    assert out["fingerprint"]["runtime"]["backend"] == "ort"
    assert out["runtime_config"].startswith("ort:")


def test_remote_wrong_token_names_env_var(agent: str, tmp_path: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _remote_spec(tmp_path, agent)
    monkeypatch.setenv("HWNAS_TEST_AGENT_TOKEN", "not-the-token")
    with pytest.raises(AgentAuthError, match="HWNAS_TEST_AGENT_TOKEN"):
        with create_backend(spec, model=tiny_onnx) as b:
            b.measure()


def test_remote_unreachable(tmp_path: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _remote_spec(tmp_path, f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HWNAS_TEST_AGENT_TOKEN", TOKEN)
    with pytest.raises(DeviceUnavailableError) as ei:
        with create_backend(spec, model=tiny_onnx):
            pass
    assert "is not reachable" in str(ei.value) and "hwnas agent serve" in str(ei.value)


def test_remote_rejects_bad_file_locally(agent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _remote_spec(tmp_path, agent)
    monkeypatch.setenv("HWNAS_TEST_AGENT_TOKEN", TOKEN)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk" * 100)
    with pytest.raises(ModelFileError):
        with create_backend(spec, model=bad):
            pass


def test_agent_refuses_to_start_without_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HWNAS_AGENT_TOKEN"}
    res = subprocess.run(
        [sys.executable, "-m", "hwnas.devices.agent", "--port", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1 and "without a token" in res.stderr and "Traceback" not in res.stderr


def test_agent_token_from_env_var(tiny_onnx: Path) -> None:
    proc, url = start_agent(token=None, env={"HWNAS_AGENT_TOKEN": "from-env"})
    try:
        assert request(url, "GET", "/fingerprint", token="from-env")[0] == 200
        assert request(url, "GET", "/fingerprint", token=TOKEN)[0] == 401
    finally:
        stop(proc)


def test_one_measurement_at_a_time_and_queue_timeout(tiny_onnx: Path) -> None:
    """In-process server (same code) with a short queue timeout: the second request waits, then 503."""
    server = make_server(port=0, token="t", queue_timeout_s=0.2, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = AgentClient(server.url, "t")
        slow = measure_query("ort", options={"intra_op_threads": 1},
                             settings=ProtocolSettings(min_runs=10**6, max_runs=10**6, time_cap_s=1.5, warmup_s=0.0))  # fmt: skip
        results: dict[str, object] = {}

        def run_slow() -> None:
            results["slow"] = client.measure(tiny_onnx, slow)

        t = threading.Thread(target=run_slow)
        t.start()
        assert_busy = False
        for _ in range(100):
            if client.health()["busy"]:
                assert_busy = True
                break
            threading.Event().wait(0.02)
        assert assert_busy
        with pytest.raises(DeviceUnavailableError, match="busy"):
            client.measure(tiny_onnx, measure_query("ort", settings=QUICK))
        t.join(timeout=30)
        m, fp = results["slow"]  # type: ignore[misc]
        assert m.stop_reason == "time_cap" and fp.fp_hash
        assert client.health()["queue"] == 0
    finally:
        server.shutdown()
        server.server_close()
