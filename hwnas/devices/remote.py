"""Client of the edge agent (``AgentClient``) and the ``remote`` backend built on it.

A remote spec names the agent's ``address`` and the environment variable holding its token
(``token_env``); its ``options`` are the options of the backend the agent runs (``agent_backend``,
``ort`` by default), plus ``timeout_s`` for the HTTP calls themselves and ``ca_file``, the CA
certificate (PEM) that signed the certificate of an agent served over TLS (an ``https://`` address;
without ``ca_file`` the system's trusted CAs are used).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode

from hwnas.devices.agent import AGENT_BACKENDS, measure_query
from hwnas.devices.backends.base import Backend, get_backend_class, register_backend
from hwnas.devices.fingerprint import Fingerprint
from hwnas.devices.modelfile import check_onnx_file
from hwnas.devices.protocol import Measurement, ProtocolSettings
from hwnas.devices.spec import DeviceSpec, DeviceSpecError
from hwnas.errors import DeviceUnavailableError, HwnasError, ModelFileError


class AgentAuthError(HwnasError, PermissionError):
    """The agent refused the token (HTTP 401)."""


class AgentRequestError(HwnasError, RuntimeError):
    """The agent answered a request with an error."""


def _error_classes() -> dict[str, type[HwnasError]]:
    """Every HwnasError subclass by name, to re-raise the agent's errors as the same class here."""
    out: dict[str, type[HwnasError]] = {}
    todo: list[type[HwnasError]] = [HwnasError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return out


def _base_url(address: str) -> str:
    a = address.strip().rstrip("/")
    return a if a.startswith(("http://", "https://")) else f"http://{a}"


class AgentClient:
    """HTTP client of one agent; every call has a timeout and raises ``HwnasError`` subclasses."""

    def __init__(
        self,
        address: str,
        token: str | None,
        *,
        timeout_s: float = 30.0,
        token_env: str | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        self.address = address
        self.url = _base_url(address)
        self.token = token
        self.timeout_s = timeout_s
        self.token_env = token_env
        self.ca_file = str(ca_file) if ca_file else None
        self._tls: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            try:
                self._tls = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise DeviceUnavailableError(
                    f"cannot load the CA certificate {self.ca_file} for the agent at {address} "
                    f"({getattr(exc, 'strerror', None) or exc})"
                ) from None
        elif self.ca_file:
            raise DeviceSpecError(f"ca_file is set but the agent address {address} is not https://")

    def _unreachable(self, reason: object) -> DeviceUnavailableError:
        return DeviceUnavailableError(
            f"agent at {self.address} is not reachable ({reason}); start it with `hwnas agent serve` on the board"
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        length: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        url = self.url + path + (f"?{urlencode(query)}" if query else "")
        req = urllib.request.Request(url, data=body, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            req.add_header("Content-Type", "application/octet-stream")
            req.add_header("Content-Length", str(length))
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout_s, context=self._tls) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except TimeoutError:
            raise DeviceUnavailableError(
                f"agent at {self.address} did not answer within {timeout or self.timeout_s:g} s"
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                raise self._tls_failed(exc.reason) from None
            raise self._unreachable(exc.reason) from None
        except ssl.SSLError as exc:
            raise self._tls_failed(exc) from None
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None
        except json.JSONDecodeError:
            raise AgentRequestError(f"agent at {self.address} answered something that is not JSON") from None

    def _tls_failed(self, reason: ssl.SSLError) -> DeviceUnavailableError:
        hint = ("set the spec's ca_file to the CA certificate that signed the agent's certificate"
                if isinstance(reason, ssl.SSLCertVerificationError) else "check that the agent serves TLS (--tls-cert)")  # fmt: skip
        return DeviceUnavailableError(f"TLS with the agent at {self.address} failed ({reason.reason or reason}); {hint}")

    def _http_error(self, exc: urllib.error.HTTPError) -> HwnasError:
        try:
            payload = json.loads(exc.read().decode())
            message, kind = str(payload.get("error", exc.reason)), str(payload.get("type", ""))
        except (ValueError, OSError):
            message, kind = str(exc.reason), ""
        where = f"agent at {self.address}"
        if exc.code == 401:
            env = f"set {self.token_env} to" if self.token_env else "pass"
            return AgentAuthError(f"{where} rejected the token (401): {env} the token the agent was started with")
        if exc.code == 503:
            return DeviceUnavailableError(f"{where} is busy: {message}")
        if exc.code == 413:
            return ModelFileError(f"{where} refused the upload: {message}")
        cls = _error_classes().get(kind)
        if cls is not None:
            try:
                return cls(f"{where}: {message}")
            except TypeError:  # a subclass with another constructor signature
                pass
        return AgentRequestError(f"{where} answered {exc.code}: {message}")

    # ------------------------------------------------------------------ endpoints
    def health(self, timeout: float | None = None) -> dict[str, Any]:
        return self._request("GET", "/health", timeout=timeout)

    def fingerprint(self, query: Mapping[str, str]) -> Fingerprint:
        return Fingerprint.from_dict(self._request("GET", "/fingerprint", query=query))

    def measure(
        self, onnx_path: str | Path, query: Mapping[str, str], *, timeout: float | None = None
    ) -> tuple[Measurement, Fingerprint]:
        """Upload ``onnx_path`` and measure it with the runtime config and settings in ``query``."""
        path = Path(onnx_path)
        size = path.stat().st_size
        with path.open("rb") as fh:
            out = self._request("POST", "/measure", query=query, body=fh, length=size, timeout=timeout)
        return Measurement.from_dict(out["measurement"]), Fingerprint.from_dict(out["fingerprint"])


@register_backend("remote")
class RemoteBackend(Backend):
    """Measures an ONNX file on an edge agent; the protocol runs on the board."""

    option_defaults = {"agent_backend": "ort", "timeout_s": 30.0, "ca_file": ""}
    unhashed = frozenset({"agent_backend", "timeout_s", "ca_file"})
    precisions = ("fp32", "fp16", "bf16", "int8")

    def __init__(self, spec: DeviceSpec, model: Any = None, input_shape: Sequence[int] | None = None) -> None:
        super().__init__(spec, model=model, input_shape=input_shape)
        self._client: AgentClient | None = None
        self._health: dict[str, Any] = {}
        self.last_fingerprint: Fingerprint | None = None

    # ------------------------------------------------------------------ spec handling
    @classmethod
    def agent_spec(cls, spec: DeviceSpec) -> DeviceSpec:
        """The spec the agent runs: the remote options minus the client-side ones."""
        opts = dict(spec.options)
        backend = opts.pop("agent_backend", "ort")
        opts.pop("timeout_s", None)
        opts.pop("ca_file", None)
        if backend not in AGENT_BACKENDS:
            raise DeviceSpecError(
                f"device {spec.name!r}: agent_backend must be one of {', '.join(AGENT_BACKENDS)}; got {backend!r}"
            )
        return DeviceSpec(name=spec.name, backend=backend, batch=spec.batch, precision=spec.precision,
                          options=opts, protocol=spec.protocol)  # fmt: skip

    @classmethod
    def resolve_options(cls, spec: DeviceSpec) -> dict[str, Any]:
        inner = cls.agent_spec(spec)
        timeout = spec.options.get("timeout_s", cls.option_defaults["timeout_s"])
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise DeviceSpecError(f"device {spec.name!r}: timeout_s must be a positive number")
        ca_file = spec.options.get("ca_file", "")
        if not isinstance(ca_file, str):
            raise DeviceSpecError(f"device {spec.name!r}: ca_file must be a path (a string)")
        return {"agent_backend": inner.backend, "timeout_s": float(timeout), "ca_file": ca_file,
                **get_backend_class(inner.backend).resolve_options(inner)}  # fmt: skip

    @classmethod
    def runtime_name(cls, spec: DeviceSpec) -> str:
        return cls.agent_spec(spec).backend

    @classmethod
    def _query(cls, spec: DeviceSpec, settings: ProtocolSettings | None = None, input_shape: Sequence[int] | None = None) -> dict[str, str]:
        inner = cls.agent_spec(spec)
        return measure_query(inner.backend, batch=spec.batch, precision=spec.precision, options=inner.options,
                             settings=settings, input_shape=input_shape)  # fmt: skip

    @classmethod
    def client_for(cls, spec: DeviceSpec) -> AgentClient:
        assert spec.address and spec.token_env  # DeviceSpec validates remote specs
        token = os.environ.get(spec.token_env)
        if not token:
            raise DeviceUnavailableError(
                f"env var {spec.token_env} not set; export it with the token the agent at {spec.address} was started with"
            )
        opts = cls.resolve_options(spec)
        ca_file = opts["ca_file"] or None
        if ca_file and spec.source and not Path(ca_file).expanduser().is_absolute():
            ca_file = str(Path(spec.source).parent / ca_file)  # relative to the spec file
        return AgentClient(spec.address, token, timeout_s=opts["timeout_s"], token_env=spec.token_env,
                           ca_file=str(Path(ca_file).expanduser()) if ca_file else None)  # fmt: skip

    @classmethod
    def unavailable_reason(cls, spec: DeviceSpec) -> str | None:
        try:
            client = cls.client_for(spec)
            health = client.health(timeout=1.5)
        except HwnasError as exc:
            return str(exc)
        provider = cls.resolve_options(spec).get("provider")
        if provider and health.get("providers") and provider not in health["providers"]:
            return f"the agent at {spec.address} has no {provider} (it has {', '.join(health['providers'])})"
        return None

    @classmethod
    def fingerprint_for(cls, spec: DeviceSpec) -> Fingerprint:
        return cls.client_for(spec).fingerprint(cls._query(spec))

    # ------------------------------------------------------------------ lifecycle
    def _activate(self) -> None:
        path = check_onnx_file(self.model)
        client = self.client_for(self.spec)
        health = client.health()
        limit = float(health.get("max_upload_mb", 0)) * (1 << 20)
        if limit and path.stat().st_size > limit:
            raise ModelFileError(
                f"{path} is {path.stat().st_size / (1 << 20):.1f} MB, over the agent's upload limit of "
                f"{health['max_upload_mb']:g} MB (start the agent with a larger --max-upload-mb)"
            )
        self._client, self._health = client, health

    def _deactivate(self) -> None:
        self._client = None

    def measure(self, settings: ProtocolSettings | None = None) -> Measurement:
        self._require_active()
        assert self._client is not None
        s = settings or self.default_settings()
        # generous read timeout: queueing behind other jobs, the model load and the agent's wall-clock limit
        # of the measurement (2 x time_cap_s + measure_grace_s; older agents: warm-up + timed phase + 60 s)
        h = self._health
        timeout = (self._client.timeout_s + float(h.get("queue_timeout_s", 0)) + 2 * s.time_cap_s
                   + float(h.get("load_timeout_s", 60)) + float(h.get("measure_grace_s", 0)) + 10)  # fmt: skip
        measurement, fp = self._client.measure(self.model, self._query(self.spec, s, self.input_shape), timeout=timeout)
        self.last_fingerprint = fp
        return measurement


__all__ = ["AgentAuthError", "AgentClient", "AgentRequestError", "RemoteBackend"]
