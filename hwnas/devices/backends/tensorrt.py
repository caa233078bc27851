"""Native TensorRT backend (TensorRT 10 Python API; GPU buffers are torch CUDA tensors, no pycuda).

``__enter__`` parses the ONNX file into an explicit-batch network, builds a serialized engine with the
requested precision flags, workspace limit and an on-disk timing cache, deserializes it and binds
one CUDA buffer per I/O tensor; ``time_once`` runs ``execute_async_v3`` on a CUDA stream between two
CUDA events.  INT8 needs an explicitly quantized (Q/DQ) ONNX model: no calibrator is run here.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hwnas.devices.backends.base import LocalBackend, register_backend, resolve_shape
from hwnas.devices.backends.torch_backend import import_torch
from hwnas.devices.protocol import InputSpec
from hwnas.devices.spec import DeviceSpec, DeviceSpecError
from hwnas.errors import DeviceUnavailableError, ModelFileError

NOT_INSTALLED = "TensorRT is not installed here (pip install tensorrt; needs an NVIDIA GPU)"


def import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise DeviceUnavailableError(NOT_INSTALLED) from None


def _torch_dtype(trt: Any, torch: Any, dt: Any) -> Any:
    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
    }
    for name, tdt in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return tdt
    raise ModelFileError(f"TensorRT tensor type {dt} has no torch equivalent")


@register_backend("tensorrt")
class TensorRTBackend(LocalBackend):
    """TensorRT engine built from an ONNX file.

    Options: ``workspace_mb`` (builder memory pool limit), ``timing_cache`` (file reused across builds,
    ``""`` for none), ``builder_optimization_level`` (0-5), ``device_index``.
    Precision: fp32, fp16 (BuilderFlag.FP16), bf16 (BuilderFlag.BF16), int8 (BuilderFlag.INT8 + FP16).
    """

    option_defaults = {
        "workspace_mb": 1024,
        "timing_cache": "~/.cache/hwnas/tensorrt-timing.cache",
        "builder_optimization_level": 3,
        "device_index": 0,
    }
    unhashed = frozenset({"timing_cache"})
    precisions = ("fp32", "fp16", "bf16", "int8")

    def __init__(self, spec: DeviceSpec, model: Any = None, input_shape: Any = None) -> None:
        super().__init__(spec, model=model, input_shape=input_shape)
        self._trt: Any = None
        self._torch: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._events: tuple[Any, Any] | None = None
        self._buffers: dict[str, Any] = {}
        self._specs: list[InputSpec] = []
        self._output = ""

    @classmethod
    def resolve_options(cls, spec: DeviceSpec) -> dict[str, Any]:
        opts = super().resolve_options(spec)
        if not isinstance(opts["workspace_mb"], int) or opts["workspace_mb"] <= 0:
            raise DeviceSpecError(f"device {spec.name!r}: workspace_mb must be a positive int")
        if opts["builder_optimization_level"] not in range(6):
            raise DeviceSpecError(f"device {spec.name!r}: builder_optimization_level must be 0..5")
        return opts

    @classmethod
    def unavailable_reason(cls, spec: DeviceSpec) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return NOT_INSTALLED
        if importlib.util.find_spec("torch") is None:
            return "the tensorrt backend allocates GPU buffers with torch; install a CUDA build of torch"
        torch = import_torch()
        if not torch.cuda.is_available():
            return "no CUDA GPU visible to torch"
        return None

    @classmethod
    def runtime_fields(cls, spec: DeviceSpec) -> dict[str, Any]:
        fields = super().runtime_fields(spec)
        if cls.unavailable_reason(spec) is None:
            torch = import_torch()
            fields["gpu"] = torch.cuda.get_device_name(cls.resolve_options(spec)["device_index"])
        return fields

    # ------------------------------------------------------------------ build
    def _timing_cache_path(self) -> Path | None:
        p = str(self.options["timing_cache"])
        return Path(p).expanduser() if p else None

    def _build_plan(self, trt: Any, logger: Any, path: Path) -> Any:
        builder = trt.Builder(logger)
        major = int(str(trt.__version__).split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)  # TensorRT 10 networks are always explicit-batch
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelFileError(f"TensorRT cannot parse {path}: {errors or 'unknown parser error'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.options["workspace_mb"]) << 20)
        config.builder_optimization_level = int(self.options["builder_optimization_level"])
        if self.spec.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if self.spec.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        if self.spec.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        cache_path = self._timing_cache_path()
        cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=True)

        profile = None
        self._specs = []
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = list(tensor.shape)
            shape = resolve_shape(
                tensor.name, dims, self.spec.batch, self.input_shape if i == 0 else None, model=str(path)
            )
            if any(d < 0 for d in dims):
                profile = profile or builder.create_optimization_profile()
                profile.set_shape(tensor.name, shape, shape, shape)
            try:
                np_dtype = np.dtype(trt.nptype(tensor.dtype)).name
            except TypeError:
                raise ModelFileError(f"input {tensor.name!r} of {path} has type {tensor.dtype}, which numpy cannot feed") from None
            self._specs.append(InputSpec(tensor.name, shape, np_dtype))
        if profile is not None:
            config.add_optimization_profile(profile)

        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ModelFileError(f"TensorRT failed to build an engine for {path} (see the TensorRT log above)")
        if cache_path:
            from hwnas.io import atomic_write_bytes

            atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
        return plan

    def _activate(self) -> None:
        reason = self.unavailable_reason(self.spec)
        if reason:
            raise DeviceUnavailableError(f"device {self.spec.name!r} cannot run here: {reason}")
        trt = self._trt = import_tensorrt()
        torch = self._torch = import_torch()
        path = Path(self.model)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        device = torch.device("cuda", self.options["device_index"])
        torch.cuda.set_device(device)
        logger = trt.Logger(trt.Logger.WARNING)
        plan = self._build_plan(trt, logger, path)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise DeviceUnavailableError(f"TensorRT could not deserialize the engine built from {path}")
        context = engine.create_execution_context()
        shapes = {s.name: s.shape for s in self._specs}
        buffers: dict[str, Any] = {}
        outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, shapes[name])
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(context.get_tensor_shape(name))
            dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(name))
            buffers[name] = torch.empty(shape, dtype=dtype, device=device)
            context.set_tensor_address(name, buffers[name].data_ptr())
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                outputs.append(name)
        self._runtime, self._engine, self._context, self._buffers = runtime, engine, context, buffers
        self._output = outputs[0]
        self._stream = torch.cuda.Stream(device=device)
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def _deactivate(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
        self._buffers = {}
        self._stream = None
        self._events = None
        if self._torch is not None and self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()

    # ------------------------------------------------------------------ run
    def input_specs(self) -> list[InputSpec]:
        self._require_active()
        return list(self._specs)

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None:
        self._require_active()
        for name, arr in self._feeds(inputs).items():
            self._buffers[name].copy_(self._torch.from_numpy(np.array(arr)))
        self._torch.cuda.synchronize()

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise DeviceUnavailableError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def time_once(self) -> int:
        assert self._events is not None
        start, end = self._events
        start.record(self._stream)
        self._execute()
        end.record(self._stream)
        end.synchronize()
        return int(start.elapsed_time(end) * 1e6)

    def infer(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        self._require_active()
        self.prepare(self._feeds(x))
        self._execute()
        self._stream.synchronize()
        return self._buffers[self._output].float().cpu().numpy()


__all__ = ["NOT_INSTALLED", "TensorRTBackend", "import_tensorrt"]
