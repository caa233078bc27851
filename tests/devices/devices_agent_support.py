"""Agent helpers shared by the devices tests (a uniquely named module: test modules import it by name,
which ``from conftest import ...`` cannot do safely when several test folders each have a conftest)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

TOKEN = "test-token-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(
    *extra: str, token: str | None = TOKEN, env: dict | None = None, quiet: bool = True
) -> tuple[subprocess.Popen, str]:
    """``python -m hwnas.devices.agent`` on a free loopback port; returns (process, base url).

    With ``quiet=False`` the agent logs, and its stderr is read by a thread into ``proc.stderr_lines``
    (a pipe nobody reads would fill and stall the agent); ``stop`` joins that thread."""
    args = [sys.executable, "-m", "hwnas.devices.agent", "--port", "0", *extra]
    if quiet:
        args.append("--quiet")
    if token is not None:
        args += ["--token", token]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"agent did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    if not quiet:
        lines: list[str] = []
        stream = proc.stderr
        reader = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
        reader.start()
        proc.stderr_lines = lines  # type: ignore[attr-defined]
        proc.stderr_reader = reader  # type: ignore[attr-defined]
    return proc, line.rsplit(" ", 1)[-1].strip()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader = getattr(proc, "stderr_reader", None)
    if reader is not None:
        reader.join(timeout=5)
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """Process ids of the agent's children (its measuring worker), from /proc (Linux)."""
    path = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def wait_until(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds have passed; its last value."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
