"""OpenVINO Runtime backend: an ONNX file or an OpenVINO IR (``.xml`` + ``.bin``) compiled for a device.

``__enter__`` reads the model (the ONNX front end for ``.onnx``, ``Core.read_model`` otherwise), reshapes
it to the static input shape the spec asks for (the spec's batch, ``input_shape`` for dynamic dims),
compiles it with the spec's options and creates one reusable infer request; ``time_once`` times one
synchronous ``infer`` on the staged input tensors.  ``openvino`` is imported only when a runner is
entered or availability is asked, so registering the backend costs nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hwnas.devices.backends.base import LocalBackend, ModelKindError, register_backend, resolve_shape
from hwnas.devices.backends.ort import _dims_text, _physical_memory_bytes
from hwnas.devices.protocol import InputSpec
from hwnas.devices.spec import DeviceSpec, DeviceSpecError
from hwnas.errors import DeviceUnavailableError, ModelFileError

NOT_INSTALLED = "OpenVINO is not installed; pip install 'hwnas[openvino]' (or pip install openvino)"
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
PRECISION_HINTS = ("f32", "bf16", "f16", "")  # "": the plugin's own default (bf16 on CPUs that have AMX/AVX512-BF16)
_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")


def import_openvino() -> Any:
    try:
        return importlib.import_module("openvino")
    except ImportError:
        raise DeviceUnavailableError(NOT_INSTALLED) from None


@lru_cache(maxsize=1)
def _core() -> Any:
    """One ``openvino.Core`` per process (creating one loads the plugin registry)."""
    return import_openvino().Core()


def openvino_version() -> str:
    return str(import_openvino().__version__).split("-")[0]


def ov_message(exc: BaseException) -> str:
    """The line of an OpenVINO error that says what is wrong: OpenVINO prefixes it with
    ``Exception from src/...cpp:NN:`` and ``Check '...' failed at ...:`` lines."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))
              and not ln.endswith("failed with GeneralFailure:")]
    return (useful or lines or [type(exc).__name__])[-1]


def compile_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``compile_model`` properties for resolved backend ``options`` (CPU-only ones only for CPU)."""
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": options["performance_hint"], "NUM_STREAMS": int(options["num_streams"])}
    if options["inference_precision_hint"]:
        cfg["INFERENCE_PRECISION_HINT"] = options["inference_precision_hint"]
    if str(options["device"]).split(".")[0] == "CPU":
        if options["inference_num_threads"]:
            cfg["INFERENCE_NUM_THREADS"] = int(options["inference_num_threads"])
        cfg["ENABLE_HYPER_THREADING"] = bool(options["enable_hyper_threading"])
    return cfg


@register_backend("openvino")
class OpenVINOBackend(LocalBackend):
    """OpenVINO ``CompiledModel`` with one reusable ``InferRequest``.

    Options: ``device`` (``CPU``, ``GPU``, ...), ``inference_num_threads`` (0 = OpenVINO's default, all
    cores), ``num_streams``, ``performance_hint`` (LATENCY|THROUGHPUT|CUMULATIVE_THROUGHPUT),
    ``enable_hyper_threading``, ``inference_precision_hint`` (``f32`` keeps FP32 layers in FP32 even on
    CPUs with bf16; ``""`` leaves the plugin's default).  The model file carries the precision: an
    NNCF-quantized IR runs its INT8 parts in INT8 whatever the hint.  A model whose input shape differs
    from the spec's (its batch, or dynamic dims) is reshaped to the static shape before compiling, so
    ``infer`` takes inputs of that shape only (unlike ONNX Runtime, a static batch of another size is
    reshaped rather than refused).
    """

    option_defaults = {
        "device": "CPU",
        "inference_num_threads": 0,
        "num_streams": 1,
        "performance_hint": "LATENCY",
        "enable_hyper_threading": False,
        "inference_precision_hint": "f32",
    }
    precisions = ("fp32", "int8")  # the model file carries the precision (an NNCF-quantized IR is INT8)

    @classmethod
    def resolve_options(cls, spec: DeviceSpec) -> dict[str, Any]:
        opts = super().resolve_options(spec)
        for key, lo in (("inference_num_threads", 0), ("num_streams", 1)):
            v = opts[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise DeviceSpecError(f"device {spec.name!r}: {key} must be an int >= {lo}"
                                      + (" (0 = all cores)" if lo == 0 else ""))
        if opts["performance_hint"] not in PERFORMANCE_HINTS:
            raise DeviceSpecError(f"device {spec.name!r}: performance_hint must be one of {', '.join(PERFORMANCE_HINTS)}")
        if opts["inference_precision_hint"] not in PRECISION_HINTS:
            raise DeviceSpecError(f"device {spec.name!r}: inference_precision_hint must be one of "
                                  f"{', '.join(repr(h) for h in PRECISION_HINTS)}")
        if not isinstance(opts["device"], str) or not opts["device"]:
            raise DeviceSpecError(f"device {spec.name!r}: device must be an OpenVINO device name such as 'CPU'")
        return opts

    @classmethod
    def unavailable_reason(cls, spec: DeviceSpec) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return NOT_INSTALLED
        device = str(cls.resolve_options(spec)["device"])
        base = device.split(":")[0].split(".")[0]
        if base in _VIRTUAL_DEVICES:
            return None
        try:
            available = list(_core().available_devices)
        except Exception as exc:  # a broken installation: OpenVINO's RuntimeError, or a missing shared library
            return f"OpenVINO cannot start ({ov_message(exc)})"
        if device not in available and base not in {d.split(".")[0] for d in available}:
            return f"OpenVINO has no {device} device here (available: {', '.join(available) or 'none'})"
        return None

    def __init__(self, spec: DeviceSpec, model: Any = None, input_shape: Any = None) -> None:
        super().__init__(spec, model=model, input_shape=input_shape)
        self._compiled: Any = None
        self._request: Any = None
        self._specs: list[InputSpec] = []
        self.compile_config: dict[str, Any] = compile_config(self.options)

    def _check_model(self) -> None:
        if not isinstance(self.model, (str, Path)):
            raise ModelKindError(f"backend {self.name!r} measures ONNX files and OpenVINO IR (.xml) files; pass a "
                                 f"path, got {type(self.model).__name__}")

    # ------------------------------------------------------------------ load
    def _read(self, path: Path) -> Any:
        try:
            if path.suffix.lower() == ".onnx":
                # the ONNX front end directly: Core.read_model would try every front end on a corrupt file
                from openvino.frontend import FrontEndManager

                fe = FrontEndManager().load_by_framework("onnx")
                return fe.convert(fe.load(str(path)))
            return _core().read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError and its own GeneralFailure (an Exception)
            why = ov_message(exc)
            weights = path.with_suffix(".bin")
            if path.suffix.lower() == ".xml" and not weights.is_file():
                why = f"its weights file {weights.name} is missing ({why})"
            raise ModelFileError(f"OpenVINO cannot load {path}: {why}") from None

    def _static_shapes(self, model: Any, path: Path) -> list[InputSpec]:
        specs = []
        for i, port in enumerate(model.inputs):
            names = sorted(port.get_names())
            name = names[0] if names else f"input{i}"
            pshape = port.get_partial_shape()
            if pshape.rank.is_dynamic:
                raise ModelFileError(f"input {name!r} of {path} has a dynamic rank; OpenVINO needs a static shape")
            dims = [d.get_length() if d.is_static else -1 for d in pshape]
            if dims:
                dims[0] = -1  # the batch is the spec's: a model with another static batch is reshaped to it
            override = self.input_shape if i == 0 else None
            if override is None and any(d < 0 for d in dims[1:]):
                example = "x".join(str(self.spec.batch) if k == 0 else (str(d) if d >= 0 else "<?>")
                                   for k, d in enumerate(dims))
                raise ModelFileError(f"input {name!r} of {path} has dynamic dims in shape {pshape}; give its size "
                                     f"with --input-shape {name}:{example} (input_shape=(...) in Python)")
            shape = resolve_shape(name, dims, self.spec.batch, override, model=str(path))
            try:
                dtype = np.dtype(port.get_element_type().to_dtype()).name
            except Exception:
                raise ModelFileError(f"input {name!r} of {path} has type {port.get_element_type()}, which numpy "
                                     "cannot feed") from None
            specs.append(InputSpec(name, shape, dtype))
        return specs

    def _activate(self) -> None:
        reason = self.unavailable_reason(self.spec)
        if reason:
            raise DeviceUnavailableError(f"device {self.spec.name!r} cannot run here: {reason}")
        ov = import_openvino()
        path = Path(self.model)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        model = self._read(path)
        specs = self._static_shapes(model, path)
        need = sum(math.prod(sp.shape) * np.dtype(sp.dtype).itemsize for sp in specs)
        have = _physical_memory_bytes()
        if have is not None and need > have:
            big = max(specs, key=lambda sp: math.prod(sp.shape) * np.dtype(sp.dtype).itemsize)
            raise ModelFileError(
                f"the inputs of {path} need {need / 2**30:.1f} GiB (input {big.name!r} has shape "
                f"{_dims_text(big.shape)}), more than this machine's {have / 2**30:.1f} GiB of memory; "
                "pass a smaller --input-shape or use a smaller model"
            )
        current = [str(p.get_partial_shape()) for p in model.inputs]
        if any(not p.get_partial_shape().is_static or tuple(p.get_shape()) != s.shape
               for p, s in zip(model.inputs, specs, strict=True)):
            try:
                model.reshape({i: ov.PartialShape(list(s.shape)) for i, s in enumerate(specs)})
            except Exception as exc:
                raise ModelFileError(f"OpenVINO cannot reshape {path} from {', '.join(current)} to "
                                     f"{', '.join(_dims_text(s.shape) for s in specs)}: {ov_message(exc)}") from None
        try:
            compiled = _core().compile_model(model, self.options["device"], self.compile_config)
        except Exception as exc:
            raise ModelFileError(f"OpenVINO cannot compile {path} for {self.options['device']}: "
                                 f"{ov_message(exc)}") from None
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._specs = specs

    def _deactivate(self) -> None:
        self._request = None
        self._compiled = None

    # ------------------------------------------------------------------ run
    def input_specs(self) -> list[InputSpec]:
        self._require_active()
        return list(self._specs)

    def _run_failed(self, exc: BaseException) -> ModelFileError:
        return ModelFileError(f"OpenVINO cannot run {self.model}: {ov_message(exc)}")

    def _stage(self, feeds: Mapping[str, np.ndarray]) -> None:
        ov = import_openvino()
        for i, sp in enumerate(self._specs):
            arr = feeds[sp.name]
            if tuple(arr.shape) != sp.shape:
                raise ModelFileError(f"input {sp.name!r} has shape {_dims_text(arr.shape)}; {self.model} was compiled "
                                     f"for {_dims_text(sp.shape)} (the device spec's batch {self.spec.batch})")
            self._request.set_input_tensor(i, ov.Tensor(arr))  # a copy: the caller's array may change

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None:
        self._require_active()
        self._stage(self._feeds(inputs))

    def time_once(self) -> int:
        req = self._request
        try:
            t0 = time.perf_counter_ns()
            req.infer(share_outputs=True)  # staged inputs, outputs left in the request (no copy)
            return time.perf_counter_ns() - t0
        except RuntimeError as exc:
            raise self._run_failed(exc) from None

    def infer(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        self._require_active()
        self._stage(self._feeds(x))
        try:
            self._request.infer(share_outputs=True)
        except RuntimeError as exc:
            raise self._run_failed(exc) from None
        return np.array(self._request.get_output_tensor(0).data)


__all__ = ["NOT_INSTALLED", "OpenVINOBackend", "compile_config", "import_openvino", "openvino_version", "ov_message"]
