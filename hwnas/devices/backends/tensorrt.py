"""Native TensorRT backend (TensorRT >= 10 Python API; GPU buffers are torch CUDA tensors, no pycuda).

Engines are built from *strongly typed* networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on
TensorRT 10, where weak typing and ``BuilderFlag.FP16``/``INT8`` are deprecated since 10.12; TensorRT 11
removed those flags and types every network strongly), so the ONNX model carries the precision:

- ``fp32``: an FP32 model, as is;
- ``fp16``: an FP16 model, or an FP32 model converted to FP16 here (float32 inputs/outputs kept,
  :func:`hwnas.devices.onnx_precision.convert_to_fp16`);
- ``int8``: an explicitly quantized (int8 symmetric Q/DQ) model only -- no calibrator runs here, and
  any other model is refused before TensorRT is touched;
- ``bf16``: a BF16 model only.

``__enter__`` parses the model into the network, builds a serialized engine (workspace pool limit,
builder optimization level, detailed profiling verbosity, a timing cache keyed by GPU and TensorRT
version), deserializes it, checks with the engine inspector that the layers run in the requested
precision, and binds one CUDA buffer per I/O tensor (checking every ``set_input_shape`` and
``set_tensor_address``); ``time_once`` runs ``execute_async_v3`` on a CUDA stream between two CUDA
events.

Timing cache (option ``timing_cache``): ``"auto"`` (default) is
``~/.cache/hwnas/trt/timing-<gpu>-sm<cc>-trt<version>.cache``, one file per GPU model, compute
capability and TensorRT version; a directory puts that file there; any other path is used as is; ``""``
disables it.  The cache is loaded with ``ignore_mismatch=False`` and written back atomically after
each build.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hwnas.devices.backends.base import LocalBackend, register_backend, resolve_shape
from hwnas.devices.backends.torch_backend import import_torch
from hwnas.devices.protocol import InputSpec
from hwnas.devices.spec import DeviceSpec, DeviceSpecError
from hwnas.errors import DeviceUnavailableError, ModelFileError

NOT_INSTALLED = "TensorRT is not installed here (pip install tensorrt; needs an NVIDIA GPU)"
MIN_TENSORRT = 10
TIMING_CACHE_AUTO = "auto"
TIMING_CACHE_DIR = "~/.cache/hwnas/trt"
TRTEXEC_TIMING_CACHE = "trtexec.timing.cache"  # the trtexec command's cache where the GPU is not known
INT8_EXPORT_HINT = ("export one with `hwnas export --format tensorrt --int8` (it writes the int8 symmetric Q/DQ "
                    "model beside the engine) or quantize this one with "
                    "hwnas.formats.onnx_int8.quantize_qdq(src, dst, calib, target='tensorrt')")


# ---------------------------------------------------------------------------------------------- the library
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip()[:200] if text else type(exc).__name__


def tensorrt_version_problem(version: str) -> str | None:
    """Why TensorRT ``version`` is too old for hwnas (``None`` if it is >= 10)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return f"TensorRT reports an unreadable version {version!r}; hwnas needs TensorRT >= {MIN_TENSORRT}"
    if major < MIN_TENSORRT:
        return (f"TensorRT {version} is installed; hwnas needs TensorRT >= {MIN_TENSORRT} (strongly typed networks, "
                f"the name-based tensor API): pip install 'tensorrt>={MIN_TENSORRT}'")
    return None


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, >= 10; ``DeviceUnavailableError`` (one line) otherwise."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        raise DeviceUnavailableError(NOT_INSTALLED) from None
    except Exception as exc:  # a wheel whose libraries are missing raises other errors on import
        raise DeviceUnavailableError(f"TensorRT is installed but does not import ({_first_line(exc)}); "
                                     f"install TensorRT >= {MIN_TENSORRT} with its libraries") from None
    problem = tensorrt_version_problem(getattr(trt, "__version__", "unknown"))
    if problem:
        raise DeviceUnavailableError(problem)
    return trt


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built and run here (no module, too old, no CUDA GPU), or ``None``.

    The module is looked up without importing it first, so a machine without TensorRT pays nothing."""
    if importlib.util.find_spec("tensorrt") is None:
        return NOT_INSTALLED
    if importlib.util.find_spec("torch") is None:
        return "the tensorrt backend allocates GPU buffers with torch; install a CUDA build of torch"
    torch = import_torch()
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch (TensorRT builds and runs engines on an NVIDIA GPU)"
    try:
        import_tensorrt()
    except DeviceUnavailableError as exc:
        return str(exc)
    return None


def strongly_typed_flags(trt: Any) -> int:
    """``create_network`` flags for a strongly typed network: the STRONGLY_TYPED bit where the enum has it
    (TensorRT 10; kept but ignored in 11, where every network is strongly typed)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


# ---------------------------------------------------------------------------------------------- timing cache
def _slug(text: str, dots: bool = False) -> str:
    """Lower case letters, digits and single ``-`` (and single ``.`` with ``dots``): safe in a file name."""
    out = re.sub(r"[^a-z0-9.]+" if dots else r"[^a-z0-9]+", "-", str(text).lower())
    return re.sub(r"\.{2,}", ".", out).strip("-.")


def timing_cache_key(gpu_name: str, compute_capability: Sequence[int], trt_version: str) -> str:
    """The file-name-safe key of a timing cache: GPU model, compute capability and TensorRT version
    (``"NVIDIA H200", (9, 0), "10.13.0.35"`` -> ``"nvidia-h200-sm90-trt10.13.0.35"``)."""
    cc = "".join(str(int(c)) for c in tuple(compute_capability)[:2])
    return f"{_slug(gpu_name) or 'gpu'}-sm{cc}-trt{_slug(trt_version, dots=True) or 'unknown'}"


def timing_cache_dir() -> Path:
    return Path(TIMING_CACHE_DIR).expanduser()


def timing_cache_path(key: str | None, cache_dir: str | Path | None = None) -> Path:
    """The timing cache file for ``key`` (see :func:`timing_cache_key`) in ``cache_dir`` (default
    ``~/.cache/hwnas/trt``); ``key=None`` (GPU unknown, e.g. a printed trtexec command) names
    ``trtexec.timing.cache``."""
    d = Path(cache_dir).expanduser() if cache_dir is not None else timing_cache_dir()
    return d / (f"timing-{key}.cache" if key else TRTEXEC_TIMING_CACHE)


def resolve_timing_cache(option: str | Path | None, key: str | None) -> tuple[Path | None, bool]:
    """The cache file an option names, and whether it is keyed (one per GPU and TensorRT version).

    ``""``/``None``: no cache; ``"auto"``: the keyed file in ``~/.cache/hwnas/trt``; an existing
    directory (or a path ending in ``/``): the keyed file there; anything else: that file."""
    if option is None or str(option) == "":
        return None, False
    text = str(option)
    if text == TIMING_CACHE_AUTO:
        return timing_cache_path(key), True
    p = Path(text).expanduser()
    if text.endswith(("/", "\\")) or p.is_dir():
        return timing_cache_path(key, p), True
    return p, False


def current_timing_cache_key(trt: Any, device_index: int = 0) -> str:
    torch = import_torch()
    return timing_cache_key(torch.cuda.get_device_name(device_index), torch.cuda.get_device_capability(device_index),
                            str(trt.__version__))


def _attach_timing_cache(config: Any, path: Path | None, keyed: bool) -> dict:
    """Load ``path`` into ``config`` (``ignore_mismatch=False``); a keyed cache TensorRT refuses is
    replaced by a fresh one, an explicit file it refuses is an error (it belongs to another GPU)."""
    info: dict[str, Any] = {"path": str(path) if path else None, "keyed": keyed, "loaded_bytes": 0}
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
        info["stat"] = (path.stat().st_mtime_ns, path.stat().st_size)
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # a truncated or foreign file
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            info.update(loaded_bytes=len(data), status="loaded")
            return info
        if not keyed:
            raise DeviceSpecError(
                f"TensorRT refused the timing cache {path} (made on another GPU or TensorRT version, or damaged; "
                f"loaded with ignore_mismatch=False): delete it, or use timing_cache = \"{TIMING_CACHE_AUTO}\" "
                f"(one file per GPU and TensorRT version in {TIMING_CACHE_DIR})")
        info["status"] = "refused by TensorRT (other device or version, or damaged); started afresh"
        info.pop("stat", None)
    else:
        info["status"] = "new" if path is not None else "none"
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise DeviceUnavailableError("TensorRT refused an empty timing cache (set_timing_cache returned False)")
    return info


def _save_timing_cache(config: Any, path: Path, info: Mapping[str, Any]) -> None:
    """Write the build's timing cache to ``path`` atomically, first folding in what another build wrote
    there since it was loaded (as Polygraphy does)."""
    from hwnas.io import atomic_write_bytes

    cache = config.get_timing_cache()
    if cache is None:
        return
    if path.is_file() and (path.stat().st_mtime_ns, path.stat().st_size) != info.get("stat"):
        try:
            other = config.create_timing_cache(path.read_bytes())
            if other is not None:
                cache.combine(other, False)
        except Exception:
            pass  # a file TensorRT cannot read is simply replaced
    atomic_write_bytes(path, bytes(memoryview(cache.serialize())))


# ---------------------------------------------------------------------------------------------- precision
def model_for_precision(path: str | Path, precision: str) -> str:
    """How a model becomes an engine of ``precision``: ``"as-is"`` or ``"convert-fp16"``.

    Any model that would not give an engine of that precision is a one-line ``ModelFileError`` (no
    TensorRT needed): a strongly typed engine computes in the model's own types."""
    from hwnas.devices.onnx_precision import model_precision, trt_qdq_problem

    path = Path(path)
    have = model_precision(path)
    if precision == "int8":
        if have != "int8":
            raise ModelFileError(
                f"precision int8 needs an explicitly quantized (Q/DQ) ONNX model and {path.name} has no "
                f"QuantizeLinear/DequantizeLinear nodes (TensorRT builds INT8 only from Q/DQ models; no calibrator "
                f"runs here): {INT8_EXPORT_HINT}")
        problem = trt_qdq_problem(path)
        if problem:
            raise ModelFileError(f"{path.name} is not quantized for TensorRT: {problem}; {INT8_EXPORT_HINT}")
        return "as-is"
    if have == precision:
        return "as-is"
    if precision == "fp16" and have == "fp32":
        return "convert-fp16"
    if precision == "bf16":
        raise ModelFileError(f"precision bf16 needs a BF16 ONNX model and {path.name} is {have} (TensorRT 11 has no "
                             "BF16 builder flag and hwnas converts FP32 to FP16 only): use precision fp16 or fp32")
    article = "a" if have == "bf16" else "an"
    raise ModelFileError(f"precision {precision} but {path.name} is {article} {have.upper()} model, and a strongly "
                         "typed TensorRT engine computes in the model's own types: use precision "
                         f"{have} or pass the FP32 model")


_DTYPE_TOKENS = {"int8": {"int8"}, "fp16": {"fp16", "half"}, "bf16": {"bf16", "bfloat16"},
                 "fp32": {"fp32", "float"}}


def engine_layer_precisions(trt: Any, engine: Any) -> dict | None:
    """Per-datatype counts of the engine's layers from the engine inspector (``None`` where the
    inspector gives no layer datatypes): a layer counts for each type among its input/output formats.
    ``opaque`` counts fused foreign/Myelin nodes whose inner types the inspector does not list."""
    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:
        return None
    layers = [x for x in info.get("Layers", []) if isinstance(x, dict)] if isinstance(info, dict) else []
    if not layers:
        return None
    counts = {"layers": len(layers), "int8": 0, "fp16": 0, "bf16": 0, "fp32": 0, "opaque": 0}
    seen_types = False
    for layer in layers:
        kinds: set[str] = set()
        for t in [*layer.get("Inputs", []), *layer.get("Outputs", [])]:
            if not isinstance(t, dict):
                continue
            text = " ".join(str(t.get(k, "")) for k in ("Format/Datatype", "Datatype", "DataType"))
            tokens = set(re.split(r"[^a-z0-9]+", text.lower()))
            kinds |= {k for k, names in _DTYPE_TOKENS.items() if tokens & names}
        seen_types |= bool(kinds)
        for k in kinds:
            counts[k] += 1
        kind = str(layer.get("LayerType", ""))
        if kind.lower() in ("myelin", "foreignnode") or "{ForeignNode" in str(layer.get("Name", "")):
            counts["opaque"] += 1
    return counts if seen_types else None


def verify_engine_precision(trt: Any, engine: Any, precision: str, source: str | Path) -> dict:
    """Confirm with the engine inspector that an FP16/BF16/INT8 engine has layers of that type; an engine
    without them is an error (where fused nodes hide the types, the network check before the build,
    Q/DQ layers with INT8 outputs in a strongly typed network, stands)."""
    counts = engine_layer_precisions(trt, engine)
    out: dict[str, Any] = {"layer_datatypes": counts}
    if precision == "fp32":
        return out
    if counts is None:
        raise ModelFileError(f"cannot confirm that the TensorRT engine built from {Path(source).name} computes in "
                             f"{precision}: the engine inspector lists no layer datatypes (profiling verbosity "
                             "DETAILED was set)")
    if counts[precision] == 0 and counts["opaque"] == 0:
        raise ModelFileError(f"TensorRT built an engine with no {precision.upper()} layers from {Path(source).name} "
                             f"(layer datatypes {counts}); refusing to time it as {precision}")
    out["confirmed"] = counts[precision] > 0
    return out


def _network_types(trt: Any, network: Any) -> dict:
    q = int8 = half = bf16 = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.QUANTIZE:
            q += 1
        for j in range(layer.num_outputs):
            dt = layer.get_output(j).dtype
            int8 += dt == trt.DataType.INT8
            half += dt == trt.DataType.HALF
            bf16 += hasattr(trt.DataType, "BF16") and dt == trt.DataType.BF16
    return {"layers": int(network.num_layers), "quantize_layers": int(q), "int8_tensors": int(int8),
            "fp16_tensors": int(half), "bf16_tensors": int(bf16)}


def build_serialized_engine(trt: Any, logger: Any, onnx_path: str | Path, *, precision: str, workspace_mb: int,
                            builder_optimization_level: int | None = None, timing_cache: Path | None = None,
                            timing_cache_keyed: bool = True,
                            on_input: Callable[[int, str, list, str], tuple | None] | None = None,
                            ) -> tuple[bytes, dict]:
    """A serialized engine built from ``onnx_path`` (whose types are ``precision``) and its build record.

    Strongly typed network, ``OnnxParser``, no precision builder flags; ``on_input(index, name, dims,
    numpy_dtype)`` returns the ``(min, opt, max)`` shapes of a dynamic input (called for every input).
    Before the build the network must contain what ``precision`` needs (Q/DQ layers with INT8 outputs
    for int8, FP16 tensors for fp16).  The timing cache is loaded from and saved back to ``timing_cache``.
    """
    onnx_path = Path(onnx_path)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    flags = strongly_typed_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).strip().replace("\n", " ") for i in range(parser.num_errors))
        raise ModelFileError(f"TensorRT cannot parse {onnx_path}: {errors[:400] or 'unknown parser error'}")
    net = _network_types(trt, network)
    if precision == "int8" and not (net["quantize_layers"] and net["int8_tensors"]):
        raise ModelFileError(f"the TensorRT network parsed from {onnx_path.name} has no Quantize layers with INT8 "
                             f"outputs ({net}); {INT8_EXPORT_HINT}")
    if precision in ("fp16", "bf16") and not net[f"{precision}_tensors"]:
        raise ModelFileError(f"the TensorRT network parsed from {onnx_path.name} has no {precision} tensors ({net})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if builder_optimization_level is not None:
        config.builder_optimization_level = int(builder_optimization_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer datatypes for the precision check
    cache_info = _attach_timing_cache(config, timing_cache, timing_cache_keyed)
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = [int(d) for d in tensor.shape]
        try:
            np_dtype = np.dtype(trt.nptype(tensor.dtype)).name
        except TypeError:
            raise ModelFileError(f"input {tensor.name!r} of {onnx_path} has type {tensor.dtype}, which numpy cannot "
                                 "feed") from None
        shapes = on_input(i, tensor.name, dims, np_dtype) if on_input is not None else None
        if any(d < 0 for d in dims):
            if shapes is None:
                raise ModelFileError(f"input {tensor.name!r} of {onnx_path} has dynamic dims {dims} and no shapes")
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, *[tuple(int(d) for d in s) for s in shapes])
    if profile is not None:
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelFileError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    data = bytes(memoryview(plan))
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache, cache_info)
    cache_info.pop("stat", None)
    return data, {"tensorrt": str(trt.__version__), "strongly_typed": True, "network_flags": flags,
                  "builder_flags": "none (precision from the model's types)", "workspace_mb": int(workspace_mb),
                  "builder_optimization_level": builder_optimization_level, "profiling_verbosity": "DETAILED",
                  "network": net, "timing_cache": cache_info, "build_seconds": round(time.perf_counter() - t0, 2),
                  "engine_bytes": len(data)}


# ---------------------------------------------------------------------------------------------- the backend
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
    """TensorRT engine built from an ONNX file (strongly typed: the model's types are the precision).

    Options: ``workspace_mb`` (builder memory pool limit), ``timing_cache`` (``"auto"``: one file per GPU and
    TensorRT version in ``~/.cache/hwnas/trt``; a directory; a file; ``""`` for none),
    ``builder_optimization_level`` (0-5), ``device_index``.
    Precision: fp32 (FP32 model), fp16 (FP16 model, or FP32 converted to FP16 here), int8 (int8 symmetric
    Q/DQ model only), bf16 (BF16 model only).
    """

    option_defaults = {
        "workspace_mb": 1024,
        "timing_cache": TIMING_CACHE_AUTO,
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
        self._plan_action = "as-is"
        self.build_info: dict[str, Any] = {}

    @classmethod
    def resolve_options(cls, spec: DeviceSpec) -> dict[str, Any]:
        opts = super().resolve_options(spec)
        if not isinstance(opts["workspace_mb"], int) or opts["workspace_mb"] <= 0:
            raise DeviceSpecError(f"device {spec.name!r}: workspace_mb must be a positive int")
        if opts["builder_optimization_level"] not in range(6):
            raise DeviceSpecError(f"device {spec.name!r}: builder_optimization_level must be 0..5")
        if not isinstance(opts["timing_cache"], str):
            raise DeviceSpecError(f"device {spec.name!r}: timing_cache must be a path, \"auto\" or \"\"")
        return opts

    @classmethod
    def unavailable_reason(cls, spec: DeviceSpec) -> str | None:
        return tensorrt_unavailable()

    @classmethod
    def runtime_fields(cls, spec: DeviceSpec) -> dict[str, Any]:
        fields = super().runtime_fields(spec)
        if cls.unavailable_reason(spec) is None:
            torch = import_torch()
            fields["gpu"] = torch.cuda.get_device_name(cls.resolve_options(spec)["device_index"])
        return fields

    # ------------------------------------------------------------------ build
    def _timing_cache(self, trt: Any) -> tuple[Path | None, bool]:
        option = self.options["timing_cache"]
        key = current_timing_cache_key(trt, int(self.options["device_index"])) if option else None
        return resolve_timing_cache(option, key)

    def _build_plan(self, trt: Any, logger: Any, path: Path) -> bytes:
        self._specs = []

        def on_input(i: int, name: str, dims: list, np_dtype: str) -> tuple:
            shape = resolve_shape(name, dims, self.spec.batch, self.input_shape if i == 0 else None, model=str(path))
            self._specs.append(InputSpec(name, shape, np_dtype))
            return shape, shape, shape

        cache, keyed = self._timing_cache(trt)
        with tempfile.TemporaryDirectory(prefix="hwnas-trt-") as td:
            src, conversion = path, None
            if self._plan_action == "convert-fp16":
                from hwnas.devices.onnx_precision import convert_to_fp16

                src = Path(td) / f"{path.stem}.fp16.onnx"
                conversion = convert_to_fp16(path, src)
            plan, info = build_serialized_engine(
                trt, logger, src, precision=self.spec.precision, workspace_mb=int(self.options["workspace_mb"]),
                builder_optimization_level=int(self.options["builder_optimization_level"]), timing_cache=cache,
                timing_cache_keyed=keyed, on_input=on_input)
        self.build_info = dict(info, built_from=str(path), fp16_conversion=conversion)
        return plan

    def _activate(self) -> None:
        reason = self.unavailable_reason(self.spec)
        if reason:
            raise DeviceUnavailableError(f"device {self.spec.name!r} cannot run here: {reason}")
        path = Path(self.model)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        # refuse a model that would not give an engine of the requested precision, before TensorRT is touched
        self._plan_action = model_for_precision(path, self.spec.precision)
        trt = self._trt = import_tensorrt()
        torch = self._torch = import_torch()
        device = torch.device("cuda", self.options["device_index"])
        torch.cuda.set_device(device)
        logger = trt.Logger(trt.Logger.WARNING)
        plan = self._build_plan(trt, logger, path)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise DeviceUnavailableError(f"TensorRT could not deserialize the engine built from {path}")
        self.build_info["precision_check"] = verify_engine_precision(trt, engine, self.spec.precision, path)
        context = engine.create_execution_context()
        if context is None:
            raise DeviceUnavailableError(f"TensorRT could not create an execution context for {path} (GPU memory?)")
        shapes = {s.name: tuple(s.shape) for s in self._specs}
        buffers: dict[str, Any] = {}
        outputs: list[str] = []
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                if name not in shapes:
                    raise ModelFileError(f"engine input {name!r} of {path.name} is not an input of the network")
                if not context.set_input_shape(name, shapes[name]):
                    raise ModelFileError(f"TensorRT refused input shape {list(shapes[name])} for tensor {name!r} of "
                                         f"{path.name} (outside the engine's optimization profile?)")
        for name in names:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelFileError(f"TensorRT left tensor {name!r} of {path.name} with unresolved shape "
                                     f"{list(shape)}")
            dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(name))
            buffers[name] = torch.empty(shape, dtype=dtype, device=device)
            if not context.set_tensor_address(name, buffers[name].data_ptr()):
                raise ModelFileError(f"TensorRT refused the device address for tensor {name!r} with shape "
                                     f"{list(shape)} of {path.name}")
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                outputs.append(name)
        if not outputs:
            raise ModelFileError(f"the engine built from {path.name} has no outputs")
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


__all__ = ["INT8_EXPORT_HINT", "NOT_INSTALLED", "TIMING_CACHE_AUTO", "TensorRTBackend", "build_serialized_engine",
           "current_timing_cache_key", "engine_layer_precisions", "import_tensorrt", "model_for_precision",
           "resolve_timing_cache", "strongly_typed_flags", "tensorrt_unavailable", "tensorrt_version_problem",
           "timing_cache_key", "timing_cache_path", "verify_engine_precision"]
