"""ONNX Runtime backend: any execution provider ORT has here (CPU, CUDA, TensorRT, ...)."""

from __future__ import annotations

import importlib
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hwnas.devices.backends.base import LocalBackend, register_backend, resolve_shape
from hwnas.devices.protocol import InputSpec
from hwnas.devices.spec import DeviceSpec, DeviceSpecError
from hwnas.errors import DeviceUnavailableError, ModelFileError

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_EXEC_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
_INSTALL_HINTS = {
    "CUDAExecutionProvider": "install onnxruntime-gpu",
    "TensorrtExecutionProvider": "install onnxruntime-gpu and the TensorRT libraries",
    "OpenVINOExecutionProvider": "install onnxruntime-openvino",
    "DmlExecutionProvider": "install onnxruntime-directml",
    "CoreMLExecutionProvider": "use the macOS onnxruntime wheel",
}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider")


def import_ort() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise DeviceUnavailableError("onnxruntime is not installed here (pip install onnxruntime)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _ort_errors(ort: Any) -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises for a model that fails (pybind ``Fail``, ``InvalidArgument``,
    ``RuntimeException``, ...): not our own bugs, which stay ordinary exceptions with a traceback."""
    mod = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    found = tuple(v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, Exception)) if mod else ()
    return found or (RuntimeError,)


def _physical_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _dims_text(dims: Sequence[Any]) -> str:
    return "x".join(str(d) if isinstance(d, int) and d >= 0 else str(d or "?") for d in dims)


@register_backend("ort")
class OrtBackend(LocalBackend):
    """ONNX Runtime ``InferenceSession``.

    Options: ``provider`` (execution provider), ``provider_options`` (table passed to it),
    ``intra_op_threads`` (0 = ORT's default, all physical cores), ``inter_op_threads``,
    ``execution_mode`` (sequential|parallel), ``graph_optimization_level`` (disable|basic|extended|all),
    ``allow_spinning`` (ORT's thread spin-waiting).  The CUDA and TensorRT providers get inputs and
    outputs bound in GPU memory (IO binding), so host<->device copies are not timed.
    """

    option_defaults = {
        "provider": "CPUExecutionProvider",
        "provider_options": {},
        "intra_op_threads": 0,
        "inter_op_threads": 1,
        "execution_mode": "sequential",
        "graph_optimization_level": "all",
        "allow_spinning": True,
    }
    precisions = ("fp32", "fp16", "bf16", "int8")  # the ONNX file carries the precision; TRT EP may lower it

    @classmethod
    def resolve_options(cls, spec: DeviceSpec) -> dict[str, Any]:
        opts = super().resolve_options(spec)
        if opts["graph_optimization_level"] not in _OPT_LEVELS:
            raise DeviceSpecError(
                f"device {spec.name!r}: graph_optimization_level must be one of {', '.join(_OPT_LEVELS)}"
            )
        if opts["execution_mode"] not in _EXEC_MODES:
            raise DeviceSpecError(f"device {spec.name!r}: execution_mode must be one of {', '.join(_EXEC_MODES)}")
        for key in ("intra_op_threads", "inter_op_threads"):
            if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 0:
                raise DeviceSpecError(f"device {spec.name!r}: {key} must be an int >= 0 (0 = all cores)")
        if not isinstance(opts["provider_options"], Mapping):
            raise DeviceSpecError(f"device {spec.name!r}: provider_options must be a table")
        return opts

    @classmethod
    def unavailable_reason(cls, spec: DeviceSpec) -> str | None:
        try:
            ort = import_ort()
        except DeviceUnavailableError as exc:
            return str(exc)
        provider = cls.resolve_options(spec)["provider"]
        if provider not in ort.get_available_providers():
            hint = _INSTALL_HINTS.get(provider, "install an onnxruntime build that has it")
            return f"onnxruntime has no {provider} ({hint})"
        return None

    @classmethod
    def runtime_fields(cls, spec: DeviceSpec) -> dict[str, Any]:
        fields = super().runtime_fields(spec)
        if fields["provider"] in _GPU_PROVIDERS:
            from hwnas.devices.fingerprint import host_info

            fields["gpu"] = host_info()["gpu"]
        return fields

    def __init__(self, spec: DeviceSpec, model: Any = None, input_shape: Any = None) -> None:
        # input_shape: one shape (the first input's) or {input name: shape} for several / named inputs
        self._named_shapes: dict[str, tuple[int, ...]] = {}
        if isinstance(input_shape, Mapping):
            self._named_shapes = {str(k): tuple(int(d) for d in v) for k, v in input_shape.items()}
            input_shape = None
        super().__init__(spec, model=model, input_shape=input_shape)
        self._errors: tuple[type[BaseException], ...] = ()
        self._session: Any = None
        self._specs: list[InputSpec] = []
        self._output: str = ""
        self._feeds_staged: dict[str, np.ndarray] = {}
        self._binding: Any = None
        self._device_inputs: list[Any] = []

    @property
    def on_device(self) -> bool:
        """Inputs/outputs live in CUDA memory (IO binding) for the CUDA and TensorRT providers."""
        return self.options["provider"] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")

    def _session_options(self, ort: Any) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options["intra_op_threads"]
        so.inter_op_num_threads = self.options["inter_op_threads"]
        so.execution_mode = getattr(ort.ExecutionMode, _EXEC_MODES[self.options["execution_mode"]])
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPT_LEVELS[self.options["graph_optimization_level"]]
        )
        so.log_severity_level = 4  # fatal only: a failing model is raised as one ModelFileError line, not logged too
        spin = "1" if self.options["allow_spinning"] else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        return so

    def _provider_list(self) -> list[Any]:
        provider = self.options["provider"]
        popts = {k: (str(v) if isinstance(v, bool) else v) for k, v in self.options["provider_options"].items()}
        if provider == "TensorrtExecutionProvider" and self.spec.precision == "fp16":
            popts.setdefault("trt_fp16_enable", "True")
        if provider == "TensorrtExecutionProvider" and self.spec.precision == "int8":
            popts.setdefault("trt_int8_enable", "True")
        providers: list[Any] = [(provider, popts)]
        if provider == "TensorrtExecutionProvider":
            providers.append("CUDAExecutionProvider")  # ORT's documented fallback chain for TRT
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        return providers

    def _activate(self) -> None:
        ort = import_ort()
        reason = self.unavailable_reason(self.spec)
        if reason:
            raise DeviceUnavailableError(f"device {self.spec.name!r} cannot run here: {reason}")
        path = Path(self.model)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        try:
            sess = ort.InferenceSession(str(path), self._session_options(ort), providers=self._provider_list())
        except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            raise ModelFileError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from None
        if sess.get_providers()[0] != self.options["provider"]:
            raise DeviceUnavailableError(
                f"onnxruntime fell back to {sess.get_providers()[0]}: {self.options['provider']} failed to initialise"
            )
        self._errors = _ort_errors(ort)
        inputs = sess.get_inputs()
        unknown = sorted(set(self._named_shapes) - {inp.name for inp in inputs})
        if unknown:
            raise ModelFileError(f"{path} has no input named {', '.join(map(repr, unknown))}; its inputs are "
                                 f"{', '.join(repr(i.name) for i in inputs)}")
        specs = []
        for i, inp in enumerate(inputs):
            if inp.type not in _ORT_DTYPES:
                raise ModelFileError(f"input {inp.name!r} of {path} has unsupported type {inp.type}")
            override = self._named_shapes.get(inp.name, self.input_shape if i == 0 else None)
            dynamic = [j for j, d in enumerate(inp.shape) if j > 0 and not (isinstance(d, int) and d >= 0)]
            if override is None and dynamic:
                j = dynamic[0]
                example = "x".join(str(d) if isinstance(d, int) and d >= 0 else (str(self.spec.batch) if k == 0
                                   else f"<{d or '?'}>") for k, d in enumerate(inp.shape))
                raise ModelFileError(
                    f"input {inp.name!r} of {path} has a dynamic dimension {j} ({inp.shape[j] or '?'}) in shape "
                    f"{_dims_text(inp.shape)}; give its size with --input-shape {inp.name}:{example} "
                    f"(input_shape={{{inp.name!r}: (...)}} in Python)"
                )
            shape = resolve_shape(inp.name, inp.shape, self.spec.batch, override, model=str(path))
            specs.append(InputSpec(inp.name, shape, _ORT_DTYPES[inp.type]))
        need = sum(math.prod(sp.shape) * np.dtype(sp.dtype).itemsize for sp in specs)
        have = _physical_memory_bytes()
        if have is not None and need > have:
            big = max(specs, key=lambda sp: math.prod(sp.shape) * np.dtype(sp.dtype).itemsize)
            raise ModelFileError(
                f"the inputs of {path} need {need / 2**30:.1f} GiB (input {big.name!r} has shape "
                f"{_dims_text(big.shape)}), more than this machine's {have / 2**30:.1f} GiB of memory; "
                "pass a smaller --input-shape or use a smaller model"
            )
        self._session = sess
        self._specs = specs
        self._output = sess.get_outputs()[0].name

    def _deactivate(self) -> None:
        self._binding = None
        self._device_inputs = []
        self._feeds_staged = {}
        self._session = None

    def input_specs(self) -> list[InputSpec]:
        self._require_active()
        return list(self._specs)

    def _run_failed(self, exc: BaseException) -> ModelFileError:
        """A model that loads but fails when run (a shape mismatch inside the graph, memory it cannot get)."""
        return ModelFileError(f"onnxruntime cannot run {self.model}: {_first_line(exc)}")

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None:
        self._require_active()
        feeds = self._feeds(inputs)
        if not self.on_device:
            self._feeds_staged = feeds
            return
        ort = import_ort()
        device = "cuda"
        try:
            binding = self._session.io_binding()
            self._device_inputs = [ort.OrtValue.ortvalue_from_numpy(v, device, 0) for v in feeds.values()]
            for name, val in zip(feeds, self._device_inputs, strict=True):
                binding.bind_ortvalue_input(name, val)
            for out in self._session.get_outputs():
                binding.bind_output(out.name, device)
        except self._errors as exc:
            raise self._run_failed(exc) from None
        self._binding = binding

    def time_once(self) -> int:
        try:
            if self._binding is not None:
                t0 = time.perf_counter_ns()
                self._session.run_with_iobinding(self._binding)  # ORT synchronises the EP stream after Run
                return time.perf_counter_ns() - t0
            t0 = time.perf_counter_ns()
            self._session.run([self._output], self._feeds_staged)
            return time.perf_counter_ns() - t0
        except self._errors as exc:
            raise self._run_failed(exc) from None

    def infer(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        self._require_active()
        feeds = self._feeds(x)
        try:
            return np.asarray(self._session.run([self._output], feeds)[0])
        except self._errors as exc:
            raise self._run_failed(exc) from None


__all__ = ["OrtBackend", "import_ort"]
