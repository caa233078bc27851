"""Backend registry and the runner interface every backend implements.

Backends are runners in Polygraphy's sense: ``__init__`` only records the model and options,
``__enter__`` loads (creates the session, builds the engine, moves the module to the GPU),
``infer``/``time_once``/``measure`` work inside the ``with`` block and ``__exit__`` releases.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

import numpy as np

from hwnas.devices.fingerprint import Fingerprint, make_fingerprint
from hwnas.devices.protocol import InputSpec, Measurement, ProtocolSettings, run_protocol
from hwnas.devices.spec import DeviceSpec, DeviceSpecError
from hwnas.errors import HwnasError, ModelFileError, UnknownBackendError

_REGISTRY: dict[str, type[Backend]] = {}
_BUILTIN_MODULES = (
    "hwnas.devices.backends.ort",
    "hwnas.devices.backends.torch_backend",
    "hwnas.devices.backends.tensorrt",
    "hwnas.devices.backends.openvino",
    "hwnas.devices.remote",
)
B = TypeVar("B", bound=type["Backend"])


class ModelKindError(HwnasError, TypeError):
    """A backend was given a kind of model it cannot measure (e.g. an ONNX file for a torch backend)."""


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator adding a backend to the registry under ``name``."""

    def deco(cls: B) -> B:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)  # cheap: heavy libraries are imported lazily inside the backends


def list_backends() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownBackendError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_backend(
    spec: DeviceSpec, model: Any = None, input_shape: Sequence[int] | None = None
) -> Backend:
    """A runner for ``spec``; nothing is loaded until it is entered (``with create_backend(...) as b``).

    ``model`` is an ONNX path for ``ort``/``tensorrt``/``openvino``/``remote`` (``openvino`` also takes
    an OpenVINO IR ``.xml``) and an ``nn.Module`` for the torch backends; ``input_shape`` is the full
    input shape, whose leading (batch) dim is replaced by the spec's ``batch``.  It is required for torch
    modules and for ONNX inputs with dynamic non-batch dims.
    """
    return get_backend_class(spec.backend)(spec, model=model, input_shape=input_shape)


def fingerprint_for(spec: DeviceSpec) -> Fingerprint:
    """The fingerprint of the device ``spec`` runs on (asks the agent for remote devices)."""
    return get_backend_class(spec.backend).fingerprint_for(spec)


def runtime_config(spec: DeviceSpec) -> str:
    """A canonical, readable string of the backend and its resolved options (a store key)."""
    cls = get_backend_class(spec.backend)
    opts = cls.hashed_options(spec)
    def fmt(v: Any) -> str:
        return json.dumps(v, sort_keys=True, separators=(",", ":")) if isinstance(v, Mapping) else str(v)

    return f"{cls.runtime_name(spec)}:" + ",".join(f"{k}={fmt(opts[k])}" for k in sorted(opts))


class Backend(ABC):
    """A runner for one model on one device."""

    name: ClassVar[str] = ""
    option_defaults: ClassVar[Mapping[str, Any]] = {}
    unhashed: ClassVar[frozenset[str]] = frozenset()  # options that do not change latency (paths, timeouts)
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, spec: DeviceSpec, model: Any = None, input_shape: Sequence[int] | None = None) -> None:
        self.spec = spec
        self.options = self.resolve_options(spec)
        self.model = model
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self._active = False
        self._check_model()

    # ------------------------------------------------------------------ class-level facts
    @classmethod
    def resolve_options(cls, spec: DeviceSpec) -> dict[str, Any]:
        """The spec's options merged over the defaults; unknown options or precisions are errors."""
        unknown = sorted(set(spec.options) - set(cls.option_defaults))
        if unknown:
            raise DeviceSpecError(
                f"device {spec.name!r}: unknown option(s) {', '.join(unknown)} for backend {cls.name!r}; "
                f"allowed: {', '.join(sorted(cls.option_defaults))}"
            )
        if spec.precision not in cls.precisions:
            raise DeviceSpecError(
                f"device {spec.name!r}: backend {cls.name!r} supports precision {', '.join(cls.precisions)}; "
                f"got {spec.precision!r}"
            )
        return {**cls.option_defaults, **spec.options}

    @classmethod
    def hashed_options(cls, spec: DeviceSpec) -> dict[str, Any]:
        return {k: v for k, v in cls.resolve_options(spec).items() if k not in cls.unhashed}

    @classmethod
    def runtime_name(cls, spec: DeviceSpec) -> str:
        """The runtime that actually runs the model (the agent's backend for a remote device)."""
        return cls.name

    @classmethod
    def unavailable_reason(cls, spec: DeviceSpec) -> str | None:
        """Why ``spec`` cannot run here (missing library, no GPU, ...), or ``None`` if it can."""
        return None

    @classmethod
    def runtime_fields(cls, spec: DeviceSpec) -> dict[str, Any]:
        """The runtime part of the fingerprint."""
        return {
            "backend": cls.runtime_name(spec),
            "batch": spec.batch,
            "precision": spec.precision,
            **cls.hashed_options(spec),
        }

    @classmethod
    def fingerprint_for(cls, spec: DeviceSpec) -> Fingerprint:
        """The fingerprint of ``spec`` on the machine that runs it (here, for local backends)."""
        return make_fingerprint(cls.runtime_fields(spec))

    def fingerprint(self) -> Fingerprint:
        return self.fingerprint_for(self.spec)

    # ------------------------------------------------------------------ lifecycle
    def _check_model(self) -> None:
        """Validate the *kind* of model given (no file is read, no device touched)."""
        if not isinstance(self.model, (str, Path)):
            raise ModelKindError(
                f"backend {self.name!r} measures ONNX files; pass a path to a .onnx file, got {type(self.model).__name__}"
            )

    def __enter__(self) -> Backend:
        if self._active:
            raise RuntimeError(f"{type(self).__name__} is already active")
        self._activate()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._deactivate()
        finally:
            self._active = False

    @property
    def is_active(self) -> bool:
        return self._active

    def _require_active(self) -> None:
        if not self._active:
            raise RuntimeError(f"{type(self).__name__} is not active; use it as a context manager (with ... as b)")

    def default_settings(self) -> ProtocolSettings:
        return ProtocolSettings.from_mapping(self.spec.protocol)

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def measure(self, settings: ProtocolSettings | None = None) -> Measurement:
        """Latency of the model with the measurement protocol."""


class LocalBackend(Backend):
    """A backend that runs in this process: the protocol drives ``prepare``/``time_once``."""

    @abstractmethod
    def input_specs(self) -> list[InputSpec]:
        """Names, concrete shapes and dtypes of the model inputs (after activation)."""

    @abstractmethod
    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Stage ``inputs`` on the device for ``time_once``."""

    @abstractmethod
    def time_once(self) -> int:
        """Run one inference on the staged inputs; return its duration in nanoseconds."""

    @abstractmethod
    def infer(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Run the model on ``x`` (an array for single-input models, or a name->array dict); first output."""

    def measure(self, settings: ProtocolSettings | None = None, anchor: LocalBackend | None = None,
                anchor_ms: float | None = None) -> Measurement:
        """The protocol on this model; with ``anchor`` (an active runner of the reference model) and
        its calibrated latency ``anchor_ms``, anchored timing (``run_protocol``)."""
        self._require_active()
        if anchor is not None:
            anchor._require_active()
        return run_protocol(self, settings or self.default_settings(), batch=self.spec.batch, anchor=anchor,
                            anchor_ms=anchor_ms)

    def _feeds(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = self.input_specs()
        if isinstance(x, Mapping):
            missing = sorted({s.name for s in specs} - set(x))
            if missing:
                raise ModelFileError(f"missing model input(s) {', '.join(missing)}")
            return {s.name: np.ascontiguousarray(x[s.name], dtype=s.dtype) for s in specs}
        if len(specs) != 1:
            raise ModelFileError(
                f"model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); pass a dict of arrays"
            )
        return {specs[0].name: np.ascontiguousarray(x, dtype=specs[0].dtype)}


def resolve_shape(
    name: str, dims: Sequence[Any], batch: int, override: Sequence[int] | None, model: str = "model"
) -> tuple[int, ...]:
    """A concrete input shape: dynamic leading dim -> ``batch``, other dynamic dims from ``override``."""
    fixed = [d if isinstance(d, (int, np.integer)) and d >= 0 else None for d in dims]
    if override is not None:
        want = (batch, *override[1:]) if len(override) else ()
        if len(want) != len(fixed) or any(f is not None and f != w for f, w in zip(fixed[1:], want[1:], strict=True)):
            raise ModelFileError(
                f"input_shape {list(override)} does not fit input {name!r} of {model} with shape {list(dims)}"
            )
        shape = want
    else:
        if any(d is None for d in fixed[1:]):
            raise ModelFileError(
                f"input {name!r} of {model} has dynamic dims {list(dims)}; pass input_shape to fix them"
            )
        shape = (batch, *(int(d) for d in fixed[1:] if d is not None)) if fixed else ()
    if fixed and fixed[0] is not None and fixed[0] != batch:
        raise ModelFileError(
            f"input {name!r} of {model} has a fixed batch of {fixed[0]} but the device spec asks for batch {batch}; "
            "export with a dynamic batch axis or use a spec with that batch"
        )
    return tuple(int(d) for d in shape)


__all__ = [
    "Backend",
    "LocalBackend",
    "ModelKindError",
    "create_backend",
    "fingerprint_for",
    "get_backend_class",
    "list_backends",
    "register_backend",
    "resolve_shape",
    "runtime_config",
]
