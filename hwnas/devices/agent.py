"""The edge agent: a small HTTP server on the board that measures uploaded ONNX models.

Stdlib only (``http.server``) plus numpy and onnxruntime on the board; tensorrt is used lazily when a
request asks for it.  Endpoints:

* ``GET /health`` (no auth): status, version, queue length, limits.
* ``GET /fingerprint`` (auth): the board's fingerprint for the runtime config in the query.
* ``POST /measure`` (auth): body = raw ONNX bytes; query = runtime config and protocol settings
  (``backend``, ``batch``, ``precision``, ``provider``, ``threads``, ``options`` (JSON), ``input_shape``,
  ``time_cap_s``, ``min_runs``, ...).  Answers the measurement and the fingerprint as JSON.

Auth is ``Authorization: Bearer <token>`` compared in constant time.  A ``Content-Length`` over the
limit is refused (413) before any of the body is read; malformed ONNX is a 400; one measurement runs
at a time and the others wait in a bounded queue (503 when it is full or the wait is too long).  Every
error is a JSON ``{"error", "type", "status"}`` and the server keeps serving.

Run it on the board with ``hwnas agent serve`` or ``python -m hwnas.devices.agent --port 8765``; the
token comes from ``--token`` or ``$HWNAS_AGENT_TOKEN``.
"""

from __future__ import annotations

import argparse
import hmac
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
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
from hwnas.errors import HwnasError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV = "HWNAS_AGENT_TOKEN"
AGENT_BACKENDS = ("ort", "tensorrt")  # backends that measure an uploaded ONNX file
_PROTOCOL_KEYS = tuple(f.name for f in fields(ProtocolSettings))
_DRAIN_LIMIT = 4 << 20  # after refusing an upload, discard at most this much so the client sees the answer


class AgentConfigError(HwnasError, ValueError):
    """The agent cannot start with the given settings (e.g. no token)."""


class RequestError(HwnasError, ValueError):
    """A request to the agent is malformed (bad query parameter, missing Content-Length, ...)."""


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


# ---------------------------------------------------------------------- server
class AgentServer(ThreadingHTTPServer):
    """The agent's HTTP server; ``serve_forever()`` runs it, ``url`` says where."""

    daemon_threads = True
    allow_reuse_address = True

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
        quiet: bool = False,
    ) -> None:
        self.token = token
        self.max_upload_bytes = int(max_upload_mb * (1 << 20))
        self.max_upload_mb = max_upload_mb
        self.queue_timeout_s = queue_timeout_s
        self.max_queue = max_queue
        self.max_time_cap_s = max_time_cap_s
        self.request_timeout_s = request_timeout_s
        self.quiet = quiet
        self.measure_lock = threading.Lock()
        self._state = threading.Lock()
        self.waiting = 0
        self.busy = False
        self.measured = 0
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        raw_host, port = self.server_address[:2]
        host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def health(self) -> dict[str, Any]:
        providers: list[str] = []
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime

            providers = list(onnxruntime.get_available_providers())
        with self._state:
            queue, busy = self.waiting + int(self.busy), self.busy
        return {
            "status": "ok",
            "version": hwnas.__version__,
            "queue": queue,
            "busy": busy,
            "measured": self.measured,
            "max_upload_mb": self.max_upload_mb,
            "queue_timeout_s": self.queue_timeout_s,
            "max_time_cap_s": self.max_time_cap_s,
            "backends": list(AGENT_BACKENDS),
            "providers": providers,
            "tensorrt": importlib.util.find_spec("tensorrt") is not None,
            "auth": self.token is not None,
        }


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    server_version = f"hwnas-agent/{hwnas.__version__}"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout_s)  # a stalled client cannot hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ responses
    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "5")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "RequestError") -> None:
        self._json(status, {"error": message, "type": kind, "status": status})

    def _refuse(self, status: int, message: str, kind: str = "RequestError") -> None:
        """Answer without reading the body, then discard a bounded amount so the client reads the answer."""
        self.close_connection = True
        self._error(status, message, kind)
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            budget = _DRAIN_LIMIT
            while budget > 0:
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
            self._safe_error(408, "the request was not received in time", "RequestError")
        except Exception as exc:  # noqa: BLE001 - the agent must survive anything a request triggers
            if not self.server.quiet:
                traceback.print_exc(file=sys.stderr)
            self._safe_error(500, f"internal error in the agent: {type(exc).__name__}: {exc}", "AgentInternalError")

    def _safe_error(self, status: int, message: str, kind: str) -> None:
        self.close_connection = True
        try:
            self._error(status, message, kind)
        except OSError:
            pass

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

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
        else:
            self._error(404, f"no endpoint GET {url.path}; use GET /health, GET /fingerprint or POST /measure")

    def _post(self) -> None:
        url = urlsplit(self.path)
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
        if n > self.server.max_upload_bytes:
            self._refuse(
                413,
                f"upload of {n} bytes is over this agent's limit of {self.server.max_upload_mb:g} MB "
                "(start the agent with a larger --max-upload-mb)",
                "ModelFileError",
            )
            return
        with self.server._state:
            full = self.server.waiting + int(self.server.busy) >= self.server.max_queue
        if full:
            self._refuse(503, f"agent queue is full ({self.server.max_queue} requests); retry later", "AgentBusyError")
            return
        data = self.rfile.read(n)
        if len(data) < n:
            self._error(400, f"upload truncated: received {len(data)} of {n} bytes", "ModelFileError")
            return
        spec, settings, shape = parse_query(url.query, self.server.max_time_cap_s)
        check_onnx_bytes(data, label="uploaded model")
        self._measure(data, spec, settings, shape)

    def _measure(self, data: bytes, spec: DeviceSpec, settings: ProtocolSettings, shape: tuple[int, ...] | None) -> None:
        from hwnas.devices.backends import create_backend

        srv = self.server
        with srv._state:
            srv.waiting += 1
        acquired = srv.measure_lock.acquire(timeout=srv.queue_timeout_s)
        with srv._state:
            srv.waiting -= 1
            srv.busy = acquired
        if not acquired:
            self._error(503, f"agent busy: waited {srv.queue_timeout_s:g} s for the running measurement", "AgentBusyError")
            return
        tmpdir = tempfile.mkdtemp(prefix="hwnas-agent-")
        try:
            path = Path(tmpdir) / "model.onnx"
            path.write_bytes(data)
            with create_backend(spec, model=path, input_shape=shape) as backend:
                measurement = backend.measure(settings)
                fp = backend.fingerprint()
            srv.measured += 1
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
            with srv._state:
                srv.busy = False
            srv.measure_lock.release()
        self._json(200, {"measurement": measurement.to_dict(), "fingerprint": fp.to_dict(), "settings": settings.to_dict()})


# ---------------------------------------------------------------------- entry points
def resolve_token(token: str | None, token_env: str = TOKEN_ENV, insecure_no_token: bool = False) -> str | None:
    """The token to require: ``token``, else ``$token_env``; none at all is an error unless insecure."""
    token = token or os.environ.get(token_env) or None
    if token is None and not insecure_no_token:
        raise AgentConfigError(
            f"refusing to start without a token: set {token_env} or pass --token "
            "(or --insecure-no-token on a network you trust)"
        )
    return token


def make_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    token_env: str = TOKEN_ENV,
    insecure_no_token: bool = False,
    max_upload_mb: float = 256.0,
    queue_timeout_s: float = 300.0,
    max_queue: int = 8,
    max_time_cap_s: float = 120.0,
    quiet: bool = False,
) -> AgentServer:
    """A bound, not yet serving agent (``port=0`` picks a free port; see ``server.url``)."""
    tok = resolve_token(token, token_env, insecure_no_token)
    if max_upload_mb <= 0 or queue_timeout_s <= 0 or max_queue < 1 or max_time_cap_s <= 0:
        raise AgentConfigError("max_upload_mb, queue_timeout_s and max_time_cap_s must be > 0 and max_queue >= 1")
    try:
        return AgentServer(
            host,
            port,
            token=tok,
            max_upload_mb=max_upload_mb,
            queue_timeout_s=queue_timeout_s,
            max_queue=max_queue,
            max_time_cap_s=max_time_cap_s,
            quiet=quiet,
        )
    except OSError as exc:
        raise AgentConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    token_env: str = TOKEN_ENV,
    insecure_no_token: bool = False,
    max_upload_mb: float = 256.0,
    queue_timeout_s: float = 300.0,
    max_queue: int = 8,
    max_time_cap_s: float = 120.0,
    quiet: bool = False,
    ready: Callable[[AgentServer], None] | None = None,
) -> None:
    """Run the agent until Ctrl-C or SIGTERM.  ``ready(server)`` is called once it listens."""
    server = make_server(
        host,
        port,
        token,
        token_env=token_env,
        insecure_no_token=insecure_no_token,
        max_upload_mb=max_upload_mb,
        queue_timeout_s=queue_timeout_s,
        max_queue=max_queue,
        max_time_cap_s=max_time_cap_s,
        quiet=quiet,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the agent listens on {host}, reachable from the network; keep the token secret", file=sys.stderr)
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
    ap.add_argument("--token", default=None, help=f"token clients must send (default: ${TOKEN_ENV})")
    ap.add_argument("--token-env", default=TOKEN_ENV, help="environment variable holding the token")
    ap.add_argument("--insecure-no-token", action="store_true", help="run without auth (trusted networks only)")
    ap.add_argument("--max-upload-mb", type=float, default=256.0)
    ap.add_argument("--queue-timeout-s", type=float, default=300.0)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--max-time-cap-s", type=float, default=120.0)
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
            insecure_no_token=args.insecure_no_token,
            max_upload_mb=args.max_upload_mb,
            queue_timeout_s=args.queue_timeout_s,
            max_queue=args.max_queue,
            max_time_cap_s=args.max_time_cap_s,
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
    "TOKEN_ENV",
    "make_server",
    "measure_query",
    "parse_query",
    "resolve_token",
    "serve",
]

if __name__ == "__main__":
    sys.exit(main())
