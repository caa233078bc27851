"""PyTorch backends: ``torch-cpu`` and ``torch-cuda`` measure an ``nn.Module`` (not an ONNX file)."""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from hwnas.devices.backends.base import LocalBackend, ModelKindError, register_backend
from hwnas.devices.protocol import InputSpec
from hwnas.devices.spec import DeviceSpec, DeviceSpecError
from hwnas.errors import DeviceUnavailableError

INPUT_NAME = "input"


def import_torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise DeviceUnavailableError("torch is not installed here (pip install torch)") from None


def _first_tensor(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    if isinstance(out, Mapping):
        return _first_tensor(next(iter(out.values())))
    return out


class _TorchBackend(LocalBackend):
    """Shared logic: the module is deep-copied on ``__enter__`` (the caller's module is never mutated),
    put in eval mode on the device and run under ``torch.inference_mode``.

    Options: ``threads`` (torch intra-op threads, 0 = torch's default), ``channels_last``,
    ``half_mode`` (``cast``: module and input in fp16/bf16; ``autocast``: fp32 weights under autocast).
    """

    device_type: ClassVar[str] = "cpu"
    option_defaults: ClassVar[Mapping[str, Any]] = {"threads": 0, "channels_last": False, "half_mode": "cast"}
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")

    def __init__(self, spec: DeviceSpec, model: Any = None, input_shape: Any = None) -> None:
        super().__init__(spec, model=model, input_shape=input_shape)
        self._torch: Any = None
        self._module: Any = None
        self._x: Any = None
        self._old_threads: int | None = None
        self._shape: tuple[int, ...] = ()

    @classmethod
    def resolve_options(cls, spec: DeviceSpec) -> dict[str, Any]:
        opts = super().resolve_options(spec)
        if opts["half_mode"] not in ("cast", "autocast"):
            raise DeviceSpecError(f"device {spec.name!r}: half_mode must be 'cast' or 'autocast'")
        if isinstance(opts["threads"], bool) or not isinstance(opts["threads"], int) or opts["threads"] < 0:
            raise DeviceSpecError(f"device {spec.name!r}: threads must be an int >= 0 (0 = torch's default)")
        return opts

    @classmethod
    def unavailable_reason(cls, spec: DeviceSpec) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed here (pip install torch)"
        return None

    def _check_model(self) -> None:
        if isinstance(self.model, (str, Path)):
            raise ModelKindError(
                f"backend {self.name!r} measures PyTorch modules, not files ({self.model}); "
                "use the `ort` backend (e.g. device ort-cpu) to measure ONNX files"
            )
        if not (callable(self.model) and hasattr(self.model, "parameters") and hasattr(self.model, "eval")):
            raise ModelKindError(f"backend {self.name!r} needs a torch.nn.Module; got {type(self.model).__name__}")
        if self.input_shape is None:
            raise ModelKindError(f"backend {self.name!r} needs input_shape with the module, e.g. (1, 3, 224, 224)")

    # ------------------------------------------------------------------ helpers
    @property
    def _dtype(self) -> Any:
        t = self._torch
        return {"fp32": t.float32, "fp16": t.float16, "bf16": t.bfloat16}[self.spec.precision]

    @property
    def _casting(self) -> bool:
        return self.spec.precision != "fp32" and self.options["half_mode"] == "cast"

    def _autocast(self) -> Any:
        if self.spec.precision != "fp32" and self.options["half_mode"] == "autocast":
            return self._torch.autocast(device_type=self.device_type, dtype=self._dtype)
        return contextlib.nullcontext()

    def _device(self) -> Any:
        return self._torch.device(self.device_type)

    def _forward(self, x: Any) -> Any:
        with self._torch.inference_mode(), self._autocast():
            return self._module(x)

    def _to_input(self, arr: np.ndarray) -> Any:
        t = self._torch
        x = t.from_numpy(np.array(arr, dtype=np.float32)).to(self._device())
        if self._casting:
            x = x.to(self._dtype)
        if self.options["channels_last"] and x.dim() == 4:
            x = x.contiguous(memory_format=t.channels_last)
        return x

    # ------------------------------------------------------------------ lifecycle
    def _activate(self) -> None:
        reason = self.unavailable_reason(self.spec)
        if reason:
            raise DeviceUnavailableError(f"device {self.spec.name!r} cannot run here: {reason}")
        t = self._torch = import_torch()
        if self.options["threads"] > 0:
            self._old_threads = t.get_num_threads()
            t.set_num_threads(self.options["threads"])
        m = copy.deepcopy(self.model).eval().to(self._device())
        if self._casting:
            m = m.to(self._dtype)
        if self.options["channels_last"]:
            m = m.to(memory_format=t.channels_last)
        self._module = m
        assert self.input_shape is not None  # checked in _check_model
        self._shape = (self.spec.batch, *self.input_shape[1:])

    def _deactivate(self) -> None:
        self._module = None
        self._x = None
        if self._old_threads is not None and self._torch is not None:
            self._torch.set_num_threads(self._old_threads)
            self._old_threads = None

    def input_specs(self) -> list[InputSpec]:
        self._require_active()
        return [InputSpec(INPUT_NAME, self._shape, "float32")]

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None:
        self._require_active()
        self._x = self._to_input(self._feeds(inputs)[INPUT_NAME])

    def time_once(self) -> int:
        t0 = time.perf_counter_ns()
        self._forward(self._x)
        return time.perf_counter_ns() - t0

    def infer(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        self._require_active()
        out = _first_tensor(self._forward(self._to_input(self._feeds(x)[INPUT_NAME])))
        return out.float().cpu().numpy()


@register_backend("torch-cpu")
class TorchCpuBackend(_TorchBackend):
    """Eager PyTorch on the CPU, timed with ``time.perf_counter_ns``."""


@register_backend("torch-cuda")
class TorchCudaBackend(_TorchBackend):
    """Eager PyTorch on a CUDA GPU, timed with CUDA events (and a synchronize) per inference.

    Extra options: ``device_index``, ``cuda_graphs`` (capture the forward once and replay it, removing
    launch overhead), ``cudnn_benchmark``.  Precision fp32, fp16 or bf16 (see ``half_mode``).
    """

    device_type = "cuda"
    option_defaults = {
        **_TorchBackend.option_defaults,
        "device_index": 0,
        "cuda_graphs": False,
        "cudnn_benchmark": True,
    }
    precisions = ("fp32", "fp16", "bf16")

    def __init__(self, spec: DeviceSpec, model: Any = None, input_shape: Any = None) -> None:
        super().__init__(spec, model=model, input_shape=input_shape)
        self._graph: Any = None
        self._events: tuple[Any, Any] | None = None
        self._stream: Any = None
        self._old_benchmark: bool | None = None
        self._old_device: int | None = None

    @classmethod
    def unavailable_reason(cls, spec: DeviceSpec) -> str | None:
        reason = super().unavailable_reason(spec)
        if reason:
            return reason
        torch = import_torch()
        if not torch.cuda.is_available():
            build = f" (torch {torch.__version__} is a CPU-only build)" if torch.version.cuda is None else ""
            return f"no CUDA GPU visible to torch{build}"
        idx = cls.resolve_options(spec)["device_index"]
        if idx >= torch.cuda.device_count():
            return f"CUDA device {idx} does not exist (torch sees {torch.cuda.device_count()})"
        return None

    @classmethod
    def runtime_fields(cls, spec: DeviceSpec) -> dict[str, Any]:
        fields = super().runtime_fields(spec)
        torch = import_torch()
        if torch.cuda.is_available():
            fields["gpu"] = torch.cuda.get_device_name(cls.resolve_options(spec)["device_index"])
            fields["cuda"] = torch.version.cuda
        return fields

    def _device(self) -> Any:
        return self._torch.device("cuda", self.options["device_index"])

    def _activate(self) -> None:
        reason = self.unavailable_reason(self.spec)
        if reason:
            raise DeviceUnavailableError(f"device {self.spec.name!r} cannot run here: {reason}")
        t = self._torch = import_torch()
        self._old_device = t.cuda.current_device()
        t.cuda.set_device(self.options["device_index"])  # graph replay and events use the current device
        super()._activate()
        self._old_benchmark = t.backends.cudnn.benchmark
        t.backends.cudnn.benchmark = bool(self.options["cudnn_benchmark"])
        self._stream = t.cuda.current_stream(self._device())  # where the module's kernels are queued
        self._events = (t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True))

    def _deactivate(self) -> None:
        self._graph = None
        self._events = None
        self._stream = None
        super()._deactivate()
        if self._torch is not None:
            if self._old_benchmark is not None:
                self._torch.backends.cudnn.benchmark = self._old_benchmark
            self._torch.cuda.empty_cache()
            if self._old_device is not None:
                self._torch.cuda.set_device(self._old_device)
                self._old_device = None

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None:
        super().prepare(inputs)
        self._graph = None
        if self.options["cuda_graphs"]:
            t = self._torch
            side = t.cuda.Stream(device=self._device())
            side.wait_stream(self._stream)
            with t.cuda.stream(side):
                for _ in range(3):  # warm up allocator and cuDNN autotuning outside the capture
                    self._forward(self._x)
            self._stream.wait_stream(side)
            graph = t.cuda.CUDAGraph()
            with t.cuda.graph(graph):
                self._forward(self._x)
            self._graph = graph

    def time_once(self) -> int:
        assert self._events is not None
        start, end = self._events
        start.record(self._stream)
        if self._graph is not None:
            self._graph.replay()
        else:
            self._forward(self._x)
        end.record(self._stream)
        end.synchronize()
        return int(start.elapsed_time(end) * 1e6)


__all__ = ["TorchCpuBackend", "TorchCudaBackend", "import_torch"]
