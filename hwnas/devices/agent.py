"""The edge agent: a small HTTP(S) server on the board that measures uploaded ONNX models.

Stdlib only (``http.server``, ``ssl``) plus numpy and onnxruntime on the board; tensorrt is used lazily
when a request asks for it.  Endpoints:

* ``GET /health`` (no auth): status, version, queue length, limits.
* ``GET /fingerprint`` (auth): the board's fingerprint for the runtime config in the query.
* ``POST /measure`` (auth): body = raw ONNX bytes; query = runtime config and protocol settings
  (``backend``, ``batch``, ``precision``, ``provider``, ``threads``, ``options`` (JSON), ``input_shape``,
  ``time_cap_s``, ``min_runs``, ...).  Answers the measurement and the fingerprint as JSON.

What keeps it up (see PROTOCOL.md, "The edge agent"):

* every request must arrive whole (request line, headers and body) within ``request_timeout_s``;
  a client sending a byte every few seconds is cut at that deadline, not at each recv;
* at most ``max_connections`` connections are open at once; the next ones get a 503 at once and
  are closed, without a thread;
* an upload is admitted to the queue (and counted) before its body is read, so uploads beyond
  ``max_queue`` are refused with 503 before any of their body is read; the body streams to a
  temporary file, not to memory;
* one measurement runs at a time, in a worker process; it is stopped when it runs past its
  wall-clock limit (``2 * time_cap_s + measure_grace_s`` after the model has loaded, and
  ``load_timeout_s`` for the load), and a model that fails or crashes at run time is a 400 with the
  runtime's message, while the agent keeps serving;
* every error, whatever its status, is a JSON ``{"error", "type", "status"}``.

Auth is ``Authorization: Bearer <token>`` compared in constant time; the token comes from
``--token-file`` (mode 600), ``$HWNAS_AGENT_TOKEN`` or ``--token``.  ``--tls-cert``/``--tls-key``
serve HTTPS.  Run it on the board with ``hwnas agent serve`` or ``python -m hwnas.devices.agent``.
"""

from __future__ import annotations

import argparse
import hmac
import importlib.util
import io
import json
import math
import os
import select
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

import hwnas
from hwnas.devices.modelfile import check_onnx_bytes
from hwnas.devices.protocol import ProtocolSettings
from hwnas.devices.spec import DeviceSpec
from hwnas.errors import HwnasError, ModelFileError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV = "HWNAS_AGENT_TOKEN"
AGENT_BACKENDS = ("ort", "tensorrt")  # backends that measure an uploaded ONNX file
_PROTOCOL_KEYS = tuple(f.name for f in fields(ProtocolSettings))
_DRAIN_LIMIT = 4 << 20  # after refusing an upload, discard at most this much so the client sees the answer
_CHUNK = 1 << 20  # uploads stream to disk in chunks of this size


class AgentConfigError(HwnasError, ValueError):
    """The agent cannot start with the given settings (e.g. no token)."""


class RequestError(HwnasError, ValueError):
    """A request to the agent is malformed (bad query parameter, missing Content-Length, ...)."""


class MeasureTimeLimitError(HwnasError, TimeoutError):
    """A measurement ran past the agent's wall-clock limit and was stopped."""


class _RequestDeadline(TimeoutError):
    """The whole request (headers and body) did not arrive within ``request_timeout_s``."""


# ---------------------------------------------------------------------- query <-> runtime config
def measure_query(
    backend: str,
    *,
    batch: int = 1,
    precision: str = "fp32",
    options: Mapping[str, Any] | None = None,
    settings: ProtocolSettings | None = None,
    input_shape: Sequence[int] | None = None,
) -> dict[str, str]:
    """Query parameters for ``/measure`` and ``/fingerprint`` (the client side of ``parse_query``)."""
    q = {"backend": backend, "batch": str(batch), "precision": precision, "options": json.dumps(dict(options or {}))}
    if settings is not None:
        q.update({k: str(v) for k, v in settings.to_dict().items()})
    if input_shape is not None:
        q["input_shape"] = ",".join(str(int(d)) for d in input_shape)
    return q


def parse_query(query: str, max_time_cap_s: float) -> tuple[DeviceSpec, ProtocolSettings, tuple[int, ...] | None]:
    """A spec, protocol settings and input shape from a ``/measure`` query string (``RequestError`` if bad)."""
    from hwnas.devices.backends import get_backend_class

    q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    known = {"backend", "batch", "precision", "options", "provider", "threads", "input_shape", *_PROTOCOL_KEYS}
    unknown = sorted(set(q) - known)
    if unknown:
        raise RequestError(f"unknown query parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    backend = q.get("backend", "ort")
    if backend not in AGENT_BACKENDS:
        raise RequestError(f"backend {backend!r} cannot measure uploaded ONNX files; choose one of: {', '.join(AGENT_BACKENDS)}")
    try:
        options = json.loads(q.get("options", "{}"))
        batch = int(q.get("batch", "1"))
        shape = tuple(int(d) for d in q["input_shape"].split(",")) if q.get("input_shape") else None
    except ValueError as exc:
        raise RequestError(f"malformed query parameter ({exc})") from None
    if not isinstance(options, dict):
        raise RequestError("query parameter 'options' must be a JSON object")
    if "provider" in q:
        options["provider"] = q["provider"]
    if "threads" in q:
        try:
            options["intra_op_threads"] = int(q["threads"])
        except ValueError:
            raise RequestError(f"query parameter threads = {q['threads']!r} is not an int") from None
    spec = DeviceSpec(name=f"agent-{backend}", backend=backend, batch=batch, precision=q.get("precision", "fp32"), options=options)
    get_backend_class(backend).resolve_options(spec)  # unknown options -> DeviceSpecError (a 400)
    settings = ProtocolSettings.from_mapping({k: q[k] for k in _PROTOCOL_KEYS if k in q})
    if settings.time_cap_s > max_time_cap_s:
        raise RequestError(
            f"time_cap_s = {settings.time_cap_s} is over this agent's limit of {max_time_cap_s} s (--max-time-cap-s)"
        )
    return spec, settings, shape


# ---------------------------------------------------------------------- the measuring worker
def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


def _worker_main() -> None:
    """The worker process: reads one JSON job a line on stdin, answers JSON events on its own pipe.

    Events: ``ready`` (imports done), ``loaded`` (the model's session exists), then ``done`` with the
    measurement and fingerprint, or ``error`` (a user error: 400) or ``internal`` (a bug: 500).
    Anything the runtime prints goes to stderr, never into the event pipe.
    """
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the agent, which stops the worker

    def emit(event: str, **kw: Any) -> None:
        out.write(json.dumps({"event": event, **kw}) + "\n")

    from hwnas.devices.backends import create_backend

    if importlib.util.find_spec("onnxruntime") is not None:  # load it now, not under the first job's limit
        import onnxruntime

        onnxruntime.set_default_logger_severity(4)  # failures come back in the answer and one agent log line
    emit("ready")
    for line in sys.stdin:
        if not line.strip():
            continue
        job: dict[str, Any] = {}
        try:
            job = json.loads(line)
            spec = DeviceSpec.from_dict(job["spec"])
            settings = ProtocolSettings.from_mapping(job["settings"])
            shape = tuple(job["shape"]) if job.get("shape") else None
            with create_backend(spec, model=Path(job["model"]), input_shape=shape) as backend:
                emit("loaded")
                measurement = backend.measure(settings)
                fp = backend.fingerprint()
            emit("done", measurement=measurement.to_dict(), fingerprint=fp.to_dict())
        except HwnasError as exc:  # the temporary file's path means nothing to the client
            text = _first_line(str(exc)).replace(str(job.get("model", "")) or "\0", "the uploaded model")
            emit("error", type=type(exc).__name__, message=text or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - report, keep the worker alive
            if type(exc).__module__.startswith("onnxruntime"):  # ORT's pybind errors: the model failed to run
                emit("error", type="ModelFileError",
                     message=f"onnxruntime failed running the uploaded model: {_first_line(str(exc)) or type(exc).__name__}")  # fmt: skip
            else:
                emit("internal", type=type(exc).__name__, message=_first_line(str(exc)), traceback=traceback.format_exc())


def _forward_stderr(stream: Any) -> None:
    """Copy the worker's stderr to the agent's, less ONNX Runtime's own error log lines: the error is in
    the answer and in the agent's one log line already."""
    try:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            if "[E:onnxruntime:" not in line:
                sys.stderr.write(line)
                sys.stderr.flush()
    except (OSError, ValueError):
        pass


class _MeasureWorker:
    """One worker process, started on first use and replaced when it is stopped or dies."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self.restarts = 0

    def _start(self, deadline: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from hwnas.devices.agent import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        threading.Thread(target=_forward_stderr, args=(self.proc.stderr,), daemon=True).start()
        self._buf = b""
        self._expect(("ready",), deadline, "starting the measuring worker")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Ask the worker to exit (EOF on its stdin), then make sure it has."""
        proc = self.proc
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.stop()

    def _expect(self, events: tuple[str, ...], deadline: float, what: str) -> dict[str, Any]:
        """The next event from the worker, which must come before ``deadline`` (monotonic)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MeasureTimeLimitError(what)
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = self.proc.wait()
                self.stop()
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                if what.startswith("starting"):
                    raise RuntimeError(f"the measuring worker did not start (it ended with {how}; see the agent's stderr)")
                raise ModelFileError(f"the runtime crashed while {what} (the worker process ended with {how})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg = json.loads(line)
        if msg["event"] not in events and msg["event"] not in ("error", "internal"):
            raise RuntimeError(f"measuring worker sent {msg['event']!r} while {what}")
        return msg

    def measure(self, job: Mapping[str, Any], *, load_timeout_s: float, wall_limit_s: float) -> dict[str, Any]:
        """Run one job; the answer event (``done``/``error``/``internal``), or raise on a time-out."""
        load_deadline = time.monotonic() + load_timeout_s
        try:
            line = (json.dumps(job) + "\n").encode()
            for attempt in (0, 1):
                if self.proc is None or self.proc.poll() is not None:
                    self.stop()
                    self._start(load_deadline)
                assert self.proc is not None and self.proc.stdin is not None
                try:
                    self.proc.stdin.write(line)
                    break
                except OSError:  # the idle worker died (killed from outside): start a fresh one once
                    self.stop()
                    if attempt:
                        raise RuntimeError("cannot hand the job to the measuring worker") from None
            msg = self._expect(("loaded",), load_deadline, "loading the model")
            if msg["event"] != "loaded":
                return msg
            return self._expect(("done",), time.monotonic() + wall_limit_s, "measuring the model")
        except MeasureTimeLimitError as exc:
            self.stop()
            self.restarts += 1
            limit = load_timeout_s if str(exc) != "measuring the model" else wall_limit_s
            raise MeasureTimeLimitError(str(exc) + f" took over {limit:g} s") from None
        except HwnasError:  # the model crashed the worker
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"measuring worker failed: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------- server
class AgentServer(ThreadingHTTPServer):
    """The agent's HTTP server; ``serve_forever()`` runs it, ``url`` says where."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: a burst of connects waits for accept() instead of being reset

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        token: str | None,
        max_upload_mb: float = 256.0,
        queue_timeout_s: float = 300.0,
        max_queue: int = 8,
        max_time_cap_s: float = 120.0,
        request_timeout_s: float = 60.0,
        max_connections: int = 64,
        measure_grace_s: float = 2.0,
        load_timeout_s: float = 120.0,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        quiet: bool = False,
    ) -> None:
        self.token = token
        self.max_upload_bytes = int(max_upload_mb * (1 << 20))
        self.max_upload_mb = max_upload_mb
        self.queue_timeout_s = queue_timeout_s
        self.max_queue = max_queue
        self.max_time_cap_s = max_time_cap_s
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.measure_grace_s = measure_grace_s
        self.load_timeout_s = load_timeout_s
        self.quiet = quiet
        self.measure_lock = threading.Lock()
        self._state = threading.Lock()
        self.admitted = 0  # uploads past admission: reading their body, waiting, or measuring
        self.waiting = 0
        self.busy = False
        self.measured = 0
        self.connections = 0
        self.refused_connections = 0
        self.stopped_measurements = 0
        self.worker = _MeasureWorker()
        self._providers: list[str] | None = None
        self._tensorrt = False
        self.tls = tls_cert is not None
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        if tls_cert is not None:
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
            except (OSError, ssl.SSLError) as exc:
                self.server_close()
                raise AgentConfigError(
                    f"cannot load the TLS certificate {tls_cert} / key {tls_key} ({getattr(exc, 'strerror', None) or exc})"
                ) from None
            # the handshake runs in the request's thread under the request deadline, not in accept()
            self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def url(self) -> str:
        raw_host, port = self.server_address[:2]
        host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    # ------------------------------------------------------------------ connections
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._state:
            over = self.connections >= self.max_connections
            if over:
                self.refused_connections += 1
            else:
                self.connections += 1
        if over:
            self._refuse_connection(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._state:
                self.connections -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._state:
                self.connections -= 1

    def _refuse_connection(self, sock: socket.socket) -> None:
        """Over the connection cap: a 503 without a thread (plain HTTP), or just a close (TLS)."""
        try:
            if not isinstance(sock, ssl.SSLSocket):
                sock.setblocking(False)
                try:  # discard what already arrived, so closing does not reset the connection
                    while sock.recv(1 << 16):
                        pass
                except OSError:
                    pass
                body = json.dumps({"error": f"agent has {self.max_connections} connections open (its limit); retry later",
                                   "type": "AgentBusyError", "status": 503}).encode()  # fmt: skip
                head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
                sock.send(head + body)
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self.shutdown_request(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection failed (client vanished, TLS handshake failed): one log line, no traceback."""
        if not self.quiet:
            exc = sys.exc_info()[1]
            print(f"agent: connection from {client_address[0]} failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    def server_close(self) -> None:
        super().server_close()
        self.worker.close()

    # ------------------------------------------------------------------ queue
    def admit(self) -> bool:
        """Count an upload into the queue before its body is read; False when the queue is full."""
        with self._state:
            if self.admitted >= self.max_queue:
                return False
            self.admitted += 1
            return True

    def release(self) -> None:
        with self._state:
            self.admitted -= 1

    def health(self) -> dict[str, Any]:
        if self._providers is None:
            providers: list[str] = []
            if importlib.util.find_spec("onnxruntime") is not None:
                import onnxruntime

                providers = list(onnxruntime.get_available_providers())
            self._providers = providers
            self._tensorrt = importlib.util.find_spec("tensorrt") is not None
        with self._state:
            queue, busy, waiting, conns = self.admitted, self.busy, self.waiting, self.connections
        return {
            "status": "ok",
            "version": hwnas.__version__,
            "queue": queue,
            "waiting": waiting,
            "busy": busy,
            "measured": self.measured,
            "stopped": self.stopped_measurements,
            "connections": conns,
            "max_connections": self.max_connections,
            "max_queue": self.max_queue,
            "max_upload_mb": self.max_upload_mb,
            "queue_timeout_s": self.queue_timeout_s,
            "request_timeout_s": self.request_timeout_s,
            "max_time_cap_s": self.max_time_cap_s,
            "measure_grace_s": self.measure_grace_s,
            "load_timeout_s": self.load_timeout_s,
            "backends": list(AGENT_BACKENDS),
            "providers": list(self._providers),
            "tensorrt": self._tensorrt,
            "auth": self.token is not None,
            "tls": self.tls,
        }


class _DeadlineReader(io.RawIOBase):
    """The connection's read side, with one deadline for the whole request instead of one per recv."""

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            self._handler.deadline_hit = True
            raise _RequestDeadline("request deadline passed")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(b)
        except TimeoutError:
            self._handler.deadline_hit = True
            raise _RequestDeadline("request deadline passed") from None


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    server_version = f"hwnas-agent/{hwnas.__version__}"
    error_content_type = "application/json"
    default_request_version = "HTTP/1.0"  # answers always carry a status line and headers (no HTTP/0.9)

    def setup(self) -> None:
        self.deadline = time.monotonic() + self.server.request_timeout_s
        self.deadline_hit = False
        super().setup()
        self.rfile.close()  # replaced below; closing it drops its reference on the socket
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(max(self.deadline - time.monotonic(), 0.001))
            self.connection.do_handshake()  # errors go to AgentServer.handle_error: one line
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self), 1 << 16)

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + self.server.request_timeout_s
        self._responded = False
        super().handle_one_request()
        if self.deadline_hit and not self._responded:  # cut while sending the request line or headers
            self.close_connection = True
            self._safe_error(408, f"the request did not arrive within {self.server.request_timeout_s:g} s", "RequestError")

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ responses
    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        self._responded = True
        self.connection.settimeout(self.server.request_timeout_s)  # writes get their own bound
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "5")
        if status == 405:
            self.send_header("Allow", "GET, POST")
        if status >= 400:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "RequestError") -> None:
        self._json(status, _error_payload(status, message, kind))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too large, unknown method) as JSON too."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        if code == 501 and self.command:
            code, text = 405, f"method {self.command} is not supported; use GET /health, GET /fingerprint or POST /measure"
        self._error(code, text, "RequestError")

    def _refuse(self, status: int, message: str, kind: str = "RequestError") -> None:
        """Answer without reading the body, then discard a bounded amount so the client reads the answer."""
        self.close_connection = True
        self._error(status, message, kind)
        try:
            self.wfile.flush()
            if not isinstance(self.connection, ssl.SSLSocket):
                self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            budget = _DRAIN_LIMIT
            end = time.monotonic() + 2.0
            while budget > 0 and time.monotonic() < end:
                chunk = self.connection.recv(min(1 << 16, budget))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass

    def _authorized(self) -> bool:
        if self.server.token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.server.token.encode())

    def _guard(self, fn: Callable[[], None]) -> None:
        """Run a route; any exception becomes a JSON error and the server keeps serving."""
        try:
            fn()
        except HwnasError as exc:
            self._safe_error(400, str(exc), type(exc).__name__)
        except TimeoutError:
            self._safe_error(408, f"the request did not arrive within {self.server.request_timeout_s:g} s", "RequestError")
        except (ConnectionError, ssl.SSLError) as exc:
            self.close_connection = True
            self.log_message("connection lost: %s: %s", type(exc).__name__, exc)
        except Exception as exc:  # noqa: BLE001 - the agent must survive anything a request triggers
            if not self.server.quiet:
                traceback.print_exc(file=sys.stderr)
            self._safe_error(500, f"internal error in the agent: {type(exc).__name__}: {exc}", "AgentInternalError")

    def _safe_error(self, status: int, message: str, kind: str) -> None:
        self.close_connection = True
        if self._responded:
            return
        try:
            self._error(status, message, kind)
        except OSError:
            pass

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

    def _not_allowed(self) -> None:
        path = urlsplit(self.path).path
        self._refuse(405, f"method {self.command} is not allowed on {path}; use GET /health, GET /fingerprint or POST /measure")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_allowed  # noqa: N815

    def _get(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/health":
            self._json(200, self.server.health())
        elif url.path == "/fingerprint":
            if not self._authorized():
                self._error(401, "missing or wrong token: send Authorization: Bearer <token>", "AuthError")
                return
            from hwnas.devices.backends import get_backend_class

            spec, _, _ = parse_query(url.query, self.server.max_time_cap_s)
            self._json(200, get_backend_class(spec.backend).fingerprint_for(spec).to_dict())
        elif url.path == "/measure":
            self._error(405, "/measure takes POST with the ONNX file as the body")
        else:
            self._error(404, f"no endpoint GET {url.path}; use GET /health, GET /fingerprint or POST /measure")

    def _post(self) -> None:
        srv = self.server
        url = urlsplit(self.path)
        if url.path in ("/health", "/fingerprint"):
            self._refuse(405, f"{url.path} takes GET")
            return
        if url.path != "/measure":
            self._refuse(404, f"no endpoint POST {url.path}; use POST /measure")
            return
        if not self._authorized():
            self._refuse(401, "missing or wrong token: send Authorization: Bearer <token>", "AuthError")
            return
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "chunked uploads are not accepted; send Content-Length")
            return
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else -1
        except ValueError:
            n = -1
        if n < 0:
            self._refuse(411, "Content-Length (the size of the ONNX file) is required")
            return
        if n > srv.max_upload_bytes:
            self._refuse(
                413,
                f"upload of {n} bytes is over this agent's limit of {srv.max_upload_mb:g} MB "
                "(start the agent with a larger --max-upload-mb)",
                "ModelFileError",
            )
            return
        try:
            spec, settings, shape = parse_query(url.query, srv.max_time_cap_s)
        except HwnasError as exc:
            self._refuse(400, str(exc), type(exc).__name__)
            return
        if not srv.admit():
            self._refuse(503, f"agent queue is full ({srv.max_queue} requests); retry later", "AgentBusyError")
            return
        tmpdir = tempfile.mkdtemp(prefix="hwnas-agent-")
        try:
            path = Path(tmpdir) / "model.onnx"
            got = 0
            with path.open("wb") as fh:
                while got < n:
                    chunk = self.rfile.read1(min(_CHUNK, n - got))
                    if not chunk:
                        break
                    fh.write(chunk)
                    got += len(chunk)
            if got < n:
                status, payload = 400, _error_payload(400, f"upload truncated: received {got} of {n} bytes", "ModelFileError")
            else:
                check_onnx_bytes(path.read_bytes(), label="uploaded model")
                status, payload = self._measure(path, spec, settings, shape)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
            srv.release()
        self._json(status, payload)  # after the release, so a client that has its answer sees the queue free

    def _measure(
        self, path: Path, spec: DeviceSpec, settings: ProtocolSettings, shape: tuple[int, ...] | None
    ) -> tuple[int, dict[str, Any]]:
        """Wait for the measuring slot and measure in the worker; the answer's status and payload."""
        srv = self.server
        with srv._state:
            srv.waiting += 1
        acquired = srv.measure_lock.acquire(timeout=srv.queue_timeout_s)
        with srv._state:
            srv.waiting -= 1
            if acquired:
                srv.busy = True  # a request that timed out in the queue leaves the flag of the running one alone
        if not acquired:
            return 503, _error_payload(503, f"agent busy: waited {srv.queue_timeout_s:g} s for the running measurement",
                                       "AgentBusyError")  # fmt: skip
        wall_limit = 2 * settings.time_cap_s + srv.measure_grace_s
        job = {"model": str(path), "spec": spec.to_dict(), "settings": settings.to_dict(), "shape": list(shape) if shape else None}
        try:
            msg = srv.worker.measure(job, load_timeout_s=srv.load_timeout_s, wall_limit_s=wall_limit)
            if msg["event"] == "done":
                srv.measured += 1
        except MeasureTimeLimitError as exc:
            with srv._state:
                srv.stopped_measurements += 1
            text = (f"measurement stopped: {exc} (this agent's limit is 2 x time_cap_s + {srv.measure_grace_s:g} s "
                    f"once the model has loaded, {srv.load_timeout_s:g} s for the load); a single inference may be "
                    "slower than the time cap allows: raise time_cap_s")  # fmt: skip
            self.log_message("%s", text)
            return 400, _error_payload(400, text, "MeasureTimeLimitError")
        except ModelFileError as exc:  # the worker died under the model
            self.log_message("measurement failed: %s", exc)
            return 400, _error_payload(400, str(exc), "ModelFileError")
        finally:
            with srv._state:
                srv.busy = False
            srv.measure_lock.release()
        if msg["event"] == "done":
            return 200, {"measurement": msg["measurement"], "fingerprint": msg["fingerprint"], "settings": settings.to_dict()}
        if msg["event"] == "error":
            self.log_message("measurement failed: %s", msg["message"])
            return 400, _error_payload(400, msg["message"], msg["type"])
        if not srv.quiet:
            print(msg.get("traceback", ""), file=sys.stderr, end="")
        return 500, _error_payload(500, f"internal error in the agent: {msg['type']}: {msg['message']}", "AgentInternalError")


def _error_payload(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": message, "type": kind, "status": status}


# ---------------------------------------------------------------------- entry points
def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped); refuses a file others can read."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"cannot read the token file {p} ({getattr(exc, 'strerror', None) or exc})") from None
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AgentConfigError(
            f"token file {p} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); run chmod 600 {p}"
        )
    token = text.strip()
    if not token or any(c in token for c in "\r\n"):
        raise AgentConfigError(f"token file {p} must hold the token on one line (it is empty or has several lines)")
    return token


def resolve_token(
    token: str | None, token_env: str = TOKEN_ENV, insecure_no_token: bool = False, token_file: str | Path | None = None
) -> str | None:
    """The token to require: ``token``, else ``token_file``, else ``$token_env``; none is an error unless insecure."""
    if token and token_file:
        raise AgentConfigError("pass either --token or --token-file, not both")
    if token_file:
        return read_token_file(token_file)
    token = token or os.environ.get(token_env) or None
    if token is None and not insecure_no_token:
        raise AgentConfigError(
            f"refusing to start without a token: pass --token-file (a file of mode 600), set {token_env} "
            "or pass --token (or --insecure-no-token on a network you trust)"
        )
    return token


def _check_limits(**limits: float) -> None:
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise AgentConfigError(f"{name} = {value!r} must be a finite number > 0")


def make_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    token_env: str = TOKEN_ENV,
    token_file: str | Path | None = None,
    insecure_no_token: bool = False,
    max_upload_mb: float = 256.0,
    queue_timeout_s: float = 300.0,
    max_queue: int = 8,
    max_time_cap_s: float = 120.0,
    request_timeout_s: float = 60.0,
    max_connections: int = 64,
    measure_grace_s: float = 2.0,
    load_timeout_s: float = 120.0,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    quiet: bool = False,
) -> AgentServer:
    """A bound, not yet serving agent (``port=0`` picks a free port; see ``server.url``)."""
    tok = resolve_token(token, token_env, insecure_no_token, token_file)
    _check_limits(max_upload_mb=max_upload_mb, queue_timeout_s=queue_timeout_s, max_time_cap_s=max_time_cap_s,
                  request_timeout_s=request_timeout_s, measure_grace_s=measure_grace_s, load_timeout_s=load_timeout_s)  # fmt: skip
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise AgentConfigError(f"max_queue = {max_queue!r} must be a whole number >= 1")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 2:
        raise AgentConfigError(f"max_connections = {max_connections!r} must be a whole number >= 2")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise AgentConfigError(f"port = {port!r} must be between 0 and 65535 (0 picks a free port)")
    if (tls_cert is None) != (tls_key is None):
        raise AgentConfigError("TLS needs both --tls-cert and --tls-key")
    try:
        return AgentServer(
            host,
            port,
            token=tok,
            max_upload_mb=max_upload_mb,
            queue_timeout_s=queue_timeout_s,
            max_queue=max_queue,
            max_time_cap_s=max_time_cap_s,
            request_timeout_s=request_timeout_s,
            max_connections=max_connections,
            measure_grace_s=measure_grace_s,
            load_timeout_s=load_timeout_s,
            tls_cert=tls_cert,
            tls_key=tls_key,
            quiet=quiet,
        )
    except OSError as exc:
        raise AgentConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    ready: Callable[[AgentServer], None] | None = None,
    **settings: Any,
) -> None:
    """Run the agent until Ctrl-C or SIGTERM (``settings``: ``make_server``'s keywords).

    ``ready(server)`` is called once it listens."""
    server = make_server(host, port, token, **settings)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the agent listens on {host}, reachable from the network; keep the token secret", file=sys.stderr)
        if not server.tls:
            print("warning: plain HTTP: the token and models cross the network in clear; use --tls-cert/--tls-key "
                  "or a TLS proxy (see PROTOCOL.md)", file=sys.stderr)  # fmt: skip
    if server.token is None:
        print("warning: no token: anyone who can reach the agent can run models on it", file=sys.stderr)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        if ready is not None:
            ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hwnas.devices.agent", description="hwnas edge agent: measures uploaded ONNX models")
    ap.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default loopback only)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    ap.add_argument("--token", default=None, help=f"token clients must send (default: ${TOKEN_ENV}); visible in ps, prefer --token-file")
    ap.add_argument("--token-file", default=None, help="file holding the token (mode 600)")
    ap.add_argument("--token-env", default=TOKEN_ENV, help="environment variable holding the token")
    ap.add_argument("--insecure-no-token", action="store_true", help="run without auth (trusted networks only)")
    ap.add_argument("--max-upload-mb", type=float, default=256.0)
    ap.add_argument("--queue-timeout-s", type=float, default=300.0)
    ap.add_argument("--max-queue", type=int, default=8, help="uploads admitted at once (uploading, waiting or measuring)")
    ap.add_argument("--max-time-cap-s", type=float, default=120.0)
    ap.add_argument("--request-timeout-s", type=float, default=60.0, help="a whole request (headers + body) must arrive within this")
    ap.add_argument("--max-connections", type=int, default=64, help="open connections at once; more get 503")
    ap.add_argument("--measure-grace-s", type=float, default=2.0, help="a measurement is stopped 2 x time_cap_s + this after its model loaded")
    ap.add_argument("--load-timeout-s", type=float, default=120.0, help="limit for starting the worker and loading a model")
    ap.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    ap.add_argument("--quiet", action="store_true", help="no request log")
    args = ap.parse_args(argv)

    def ready(server: AgentServer) -> None:
        print(f"hwnas agent {hwnas.__version__} listening on {server.url}", flush=True)

    try:
        serve(
            args.host,
            args.port,
            args.token,
            token_env=args.token_env,
            token_file=args.token_file,
            insecure_no_token=args.insecure_no_token,
            max_upload_mb=args.max_upload_mb,
            queue_timeout_s=args.queue_timeout_s,
            max_queue=args.max_queue,
            max_time_cap_s=args.max_time_cap_s,
            request_timeout_s=args.request_timeout_s,
            max_connections=args.max_connections,
            measure_grace_s=args.measure_grace_s,
            load_timeout_s=args.load_timeout_s,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            quiet=args.quiet,
            ready=ready,
        )
    except HwnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "AGENT_BACKENDS",
    "AgentConfigError",
    "AgentServer",
    "DEFAULT_PORT",
    "MeasureTimeLimitError",
    "RequestError",
    "TOKEN_ENV",
    "make_server",
    "measure_query",
    "parse_query",
    "read_token_file",
    "resolve_token",
    "serve",
]

if __name__ == "__main__":
    sys.exit(main())
