"""Agent helpers shared by the devices tests (a uniquely named module: test modules import it by name,
which ``from conftest import ...`` cannot do safely when several test folders each have a conftest)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

TOKEN = "test-token-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(*extra: str, token: str | None = TOKEN, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m hwnas.devices.agent`` on a free loopback port; returns (process, base url)."""
    args = [sys.executable, "-m", "hwnas.devices.agent", "--port", "0", "--quiet", *extra]
    if token is not None:
        args += ["--token", token]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"agent did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, line.rsplit(" ", 1)[-1].strip()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()
