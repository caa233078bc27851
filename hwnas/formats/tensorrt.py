"""TensorRT engines (written against the TensorRT Python API; see the README for what has run).

``tensorrt``
    ``OUT`` is the serialized engine (``.engine``/``.plan``).  The ONNX model it is built from is
    written first, verified, with its manifest: ``OUT`` with suffix ``.onnx`` for FP32/FP16, and for
    INT8 also the explicitly quantized (Q/DQ) model ``OUT`` with suffix ``.int8.onnx`` (no calibrator:
    INT8 calibrators are deprecated in TensorRT 10).  Then the engine is built with the TensorRT
    Python API (explicit-batch network, ``OnnxParser``, workspace pool limit, FP16/INT8 flags or a
    strongly typed network, an on-disk timing cache, ``build_serialized_network``), checked against
    PyTorch on the validation split and timed with the devices ``tensorrt`` backend.  Where TensorRT
    or a GPU is missing, ``DeviceUnavailableError`` is raised *after* the ONNX model(s) are written,
    with the equivalent ``trtexec`` command in the message and in the ONNX manifest; no engine file
    and no engine manifest exist then.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hwnas.errors import DeviceUnavailableError, ExportError, ModelFileError
from hwnas.formats import register_format
from hwnas.formats.common import (Progress, _check_options, build_manifest, compare_logits, latency_entry, manifest_path, prepare,
                                  top1, torch_logits, val_data, write_json)
from hwnas.formats.onnx import export_onnx_fp32
from hwnas.formats.onnx_int8 import DEFAULT_MIN_AGREEMENT, export_onnx_int8
from hwnas.io import atomic_outputs

DEFAULT_TRT_DEVICE = "tensorrt"
TRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MB = 1024


def trt_onnx_paths(engine: str | Path) -> tuple[Path, Path]:
    """The FP32 ONNX and the Q/DQ ONNX models a TensorRT engine ``m.engine`` is built from."""
    engine = Path(engine)
    if engine.suffix == ".onnx":
        raise ExportError(f"--format tensorrt writes a serialized engine: name it {engine.with_suffix('.engine')} "
                          f"(the ONNX model goes beside it as {engine.name})")
    return engine.with_suffix(".onnx"), engine.with_suffix(".int8.onnx")


# ---------------------------------------------------------------------------------------------- tensorrt
def tensorrt_unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built here (no ``tensorrt`` module, no CUDA GPU), or ``None``."""
    from hwnas.devices.backends.tensorrt import NOT_INSTALLED

    if importlib.util.find_spec("tensorrt") is None:
        return NOT_INSTALLED
    try:
        import torch as _torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "torch is not installed (the TensorRT path allocates GPU buffers with torch)"
    if not _torch.cuda.is_available():
        return "no CUDA GPU visible to torch (TensorRT builds and runs engines on an NVIDIA GPU)"
    return None


def _shape_arg(dims: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in dims)


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, precision: str, *,
                    workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: str | Path | None = None,
                    strongly_typed: bool = False, input_shape: Sequence[int] | None = None,
                    dynamic_batch: bool = False, max_batch: int | None = None) -> str:
    """The ``trtexec`` command that builds the same engine as :func:`build_engine`.

    ``input_shape`` is the full shape (batch first); with ``dynamic_batch`` it gives the optimization
    profile (min batch 1, opt ``input_shape[0]``, max ``max_batch``).
    """
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if strongly_typed:
        args.append("--stronglyTyped")  # precisions come from the network (Q/DQ); no precision flags
    elif precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16"]  # explicit quantization from the Q/DQ nodes; other layers may use fp16
    args.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    if timing_cache:
        args.append(f"--timingCacheFile={Path(timing_cache).expanduser()}")
    if dynamic_batch and input_shape is not None:
        b, *rest = input_shape
        args += [f"--minShapes=input:{_shape_arg([1, *rest])}", f"--optShapes=input:{_shape_arg([b, *rest])}",
                 f"--maxShapes=input:{_shape_arg([max(max_batch or b, b), *rest])}"]
    return " ".join(shlex.quote(a) for a in args)


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp32", *,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: str | Path | None = None,
                 strongly_typed: bool = False, builder_optimization_level: int | None = None,
                 batch: int = 1, max_batch: int | None = None) -> dict:
    """Build a serialized TensorRT engine from ``onnx_path`` into ``engine_path`` (TensorRT 10 API).

    An explicit-batch network (``create_network(0)`` in TensorRT 10; the EXPLICIT_BATCH flag before)
    parsed with ``OnnxParser``; ``set_memory_pool_limit(WORKSPACE)``; FP16 / INT8+FP16 builder flags
    (INT8 only for an explicitly quantized Q/DQ model: no calibrator), or a strongly typed network
    with no precision flags; the timing cache is loaded from and saved back to ``timing_cache``.
    ``engine_path`` is written directly: callers pass a reserved temp path.
    """
    from hwnas.devices.backends.tensorrt import import_tensorrt

    if precision not in TRT_PRECISIONS:
        raise ExportError(f"TensorRT precision {precision!r} is not one of {', '.join(TRT_PRECISIONS)}")
    reason = tensorrt_unavailable_reason()
    if reason:
        raise DeviceUnavailableError(reason)
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFileError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown parser error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if builder_optimization_level is not None:
        config.builder_optimization_level = int(builder_optimization_level)
    if not strongly_typed:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    cache_path = Path(timing_cache).expanduser() if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=True)
    profile = None
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = list(t.shape)
        if any(d < 0 for d in dims):
            rest = [int(d) for d in dims[1:]]
            if any(d < 0 for d in rest):
                raise ModelFileError(f"input {t.name!r} of {onnx_path} has dynamic non-batch dims {dims}")
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(t.name, (1, *rest), (batch, *rest), (max(max_batch or batch, batch), *rest))
    if profile is not None:
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    Path(engine_path).write_bytes(bytes(memoryview(plan)))
    if cache_path:
        from hwnas.io import atomic_write_bytes

        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return {"tensorrt": str(trt.__version__), "build_seconds": round(time.perf_counter() - t0, 2),
            "strongly_typed": strongly_typed, "workspace_mb": int(workspace_mb),
            "timing_cache": str(cache_path) if cache_path else None, "engine_bytes": len(bytes(memoryview(plan)))}


def _engine_backend(spec: Any, engine_path: Path, onnx_path: Path, input_shape: Sequence[int]):
    """The devices ``tensorrt`` backend, running the serialized engine at ``engine_path`` as built
    (instead of building one more from the ONNX file): used for the output check and the timing."""
    from hwnas.devices.backends.tensorrt import TensorRTBackend
    from hwnas.devices.protocol import InputSpec

    class EngineFileBackend(TensorRTBackend):
        def _build_plan(self, trt: Any, logger: Any, path: Path) -> Any:
            self._specs = [InputSpec("input", tuple(int(d) for d in input_shape), "float32")]
            return engine_path.read_bytes()

    return EngineFileBackend(spec, model=onnx_path, input_shape=input_shape)


@register_format("tensorrt", precisions=TRT_PRECISIONS)
def export_tensorrt(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None, *,
                    batch: int = 1, command: str | None = None, dynamic_batch: bool = False,
                    optimize: bool = True, tolerance: float = 1e-4, device: Any = None,
                    precision: str | None = None, workspace_mb: int | None = None,
                    timing_cache: str | Path | None = None, strongly_typed: bool = False,
                    builder_optimization_level: int | None = None, max_batch: int | None = None,
                    engine_tolerance: float | None = None, time_cap_s: float | None = None,
                    measure: bool = True, calibration: str | Path | None = None,
                    calib_images: int | None = None, calib_method: str = "minmax",
                    exclude: Sequence[str] | None = None, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                    progress: Progress | None = None, **options: Any) -> dict:
    """A serialized TensorRT engine at ``out`` (``precision`` fp32 | fp16 | int8; default fp32).

    Steps: the ONNX model(s) with manifests (see the module docstring), then, where TensorRT and a
    GPU are present, the engine (all-or-nothing with its manifest), checked against PyTorch on the
    validation split (``engine_tolerance``: default 1e-3 for fp32, none for fp16/int8, which are
    judged by top-1 agreement) and timed on ``device`` (default the ``tensorrt`` spec) with the
    devices ``tensorrt`` backend.  Without TensorRT or a GPU: ``DeviceUnavailableError`` carrying the
    ``trtexec`` command, after the ONNX files are written.
    """
    from hwnas.devices import DeviceSpec, load_device
    from hwnas.devices.backends import runtime_config
    from hwnas.devices.backends.tensorrt import TensorRTBackend

    _check_options("--format tensorrt", options)
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    precision = precision or "fp32"
    if precision not in TRT_PRECISIONS:
        raise ExportError(f"TensorRT precision {precision!r} is not one of {', '.join(TRT_PRECISIONS)}")
    if strongly_typed and precision == "fp16":
        raise ExportError("a strongly typed network takes its precisions from the ONNX model, and the model here is "
                          "FP32: drop strongly_typed for FP16 (or use precision int8, whose Q/DQ model sets them)")
    engine = Path(out)
    onnx_path, qdq_path = trt_onnx_paths(engine)
    base = device if isinstance(device, DeviceSpec) else load_device(DEFAULT_TRT_DEVICE if device is None else device)
    if base.backend != "tensorrt":
        raise ExportError(f"device {base.name!r} uses backend {base.backend!r}; --format tensorrt is timed on a "
                          "device with backend 'tensorrt' (e.g. --device tensorrt)")
    opts = TensorRTBackend.resolve_options(base)
    workspace_mb = workspace_mb if workspace_mb is not None else opts["workspace_mb"]
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb <= 0:
        raise ExportError(f"workspace_mb must be a positive int (MiB); got {workspace_mb!r}")
    timing_cache = str(timing_cache if timing_cache is not None else opts["timing_cache"]) or None
    if builder_optimization_level is None:
        builder_optimization_level = int(opts["builder_optimization_level"])
    spec = dataclasses.replace(base, batch=batch, precision=precision,
                               options={**base.options, "workspace_mb": workspace_mb,
                                        "timing_cache": timing_cache or "",
                                        "builder_optimization_level": builder_optimization_level})
    build_from = qdq_path if precision == "int8" else onnx_path
    try:
        from hwnas.supernet.registry import resolve_family

        fam = resolve_family(supernet)
        input_shape = (batch, *fam.input_shape(arch))
    except Exception:
        input_shape = None
    cmd = trtexec_command(build_from, engine, precision, workspace_mb=workspace_mb, timing_cache=timing_cache,
                          strongly_typed=strongly_typed, input_shape=input_shape, dynamic_batch=dynamic_batch,
                          max_batch=max_batch)
    trt_note = {"engine": str(engine), "precision": precision, "built_from": str(build_from), "trtexec": cmd}
    common = dict(batch=batch, command=command, dynamic_batch=dynamic_batch, optimize=optimize,
                  tolerance=tolerance, calibration=calibration, progress=progress)

    # 1. the ONNX model(s) the engine is built from: complete and verified, with their manifests
    if precision == "int8":
        say("writing the FP32 and Q/DQ INT8 ONNX models the engine is built from")
        onnx_manifest = export_onnx_int8(arch, qdq_path, supernet, weights, fp32_out=onnx_path, target="tensorrt",
                                         measure=False, calib_images=calib_images, calib_method=calib_method,
                                         exclude=exclude, min_agreement=min_agreement,
                                         manifest_extra={"tensorrt": trt_note}, **common)
    else:
        say("writing the ONNX model the engine is built from")
        onnx_manifest = export_onnx_fp32(arch, onnx_path, supernet, weights,
                                      manifest_extra={"tensorrt": trt_note}, **common)

    # 2. the engine, or a clear error saying what is missing and how to build it elsewhere
    reason = tensorrt_unavailable_reason()
    if reason:
        written = [str(onnx_path)] + ([str(qdq_path)] if precision == "int8" else [])
        raise DeviceUnavailableError(
            f"TensorRT engine {engine} not built: {reason}. Wrote {' and '.join(written)} (verified, with a "
            f"manifest beside {'each' if len(written) > 1 else 'it'}); build the engine where TensorRT and an "
            f"NVIDIA GPU are: {cmd}")
    net, a, sub, recal = prepare(supernet, weights, arch, calibration)
    shape = net.family.input_shape(a)
    x, labels, source = val_data(net, shape[-1], calibration)
    eng_manifest = manifest_path(engine)
    with atomic_outputs(engine, eng_manifest) as (t_engine, t_manifest):
        say(f"building the TensorRT {precision} engine")
        build = build_engine(build_from, t_engine, precision, workspace_mb=workspace_mb, timing_cache=timing_cache,
                             strongly_typed=strongly_typed, builder_optimization_level=builder_optimization_level,
                             batch=batch, max_batch=max_batch)
        full_shape = (batch, *shape)
        say(f"checking the engine against PyTorch on {source}")
        ref = torch_logits(sub, x)
        with _engine_backend(spec, t_engine, build_from, full_shape) as b:
            outs = []
            xs = x.numpy()
            for start in range(0, len(xs), batch):
                xb = xs[start:start + batch]
                k = len(xb)
                if k < batch:
                    xb = np.concatenate([xb, np.zeros((batch - k, *xb.shape[1:]), np.float32)])
                outs.append(b.infer(xb)[:k])
            got = np.concatenate(outs)
            tol = engine_tolerance if engine_tolerance is not None else (1e-3 if precision == "fp32" else None)
            check = compare_logits(ref, got, tol)
            if not check.passed:
                raise ExportError(f"TensorRT engine disagrees with PyTorch: max abs error {check.max_abs_err:.2e} > "
                                  f"{tol:.0e}; no engine was written")
            latency = None
            if measure:
                say(f"timing the engine on {spec.name}")
                from hwnas.devices.protocol import ProtocolSettings

                s = ProtocolSettings.from_mapping(spec.protocol)
                if time_cap_s is not None:
                    s = s.replace(time_cap_s=time_cap_s)
                m = b.measure(s)
                fp = b.fingerprint()
                latency = latency_entry(m.to_dict(), spec, fp.to_dict(), runtime_config(spec))
        manifest = build_manifest(net, a, fmt="tensorrt", precision=precision, batch=batch, shape=shape,
                                  check=check, check_inputs=source, recalibrated=recal, optimize=None,
                                  command=command, dynamic_batch=dynamic_batch,
                                  accuracy={"split": source, "top1_pytorch": top1(ref, labels),
                                            "top1": top1(got, labels)},
                                  latency=latency, tensorrt=dict(build, trtexec_equivalent=cmd, precision=precision,
                                                                 built_from=str(build_from),
                                                                 builder_optimization_level=builder_optimization_level),
                                  onnx_model=onnx_manifest["path"])
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(t_manifest, manifest)
    manifest.update(path=str(engine), manifest=str(eng_manifest), onnx=onnx_manifest)
    return manifest
