"""TensorRT engines (written against the TensorRT >= 10 Python API; see the README for what has run).

``tensorrt``
    ``OUT`` is the serialized engine (``.engine``/``.plan``).  Engines are built from strongly typed
    networks (TensorRT 10 deprecated weak typing and ``BuilderFlag.FP16``/``INT8`` in 10.12; TensorRT 11
    removed them), so the ONNX model carries the precision, and that model is written first, verified
    in ONNX Runtime, with its manifest:

    - fp32: the FP32 model ``OUT`` with suffix ``.onnx``;
    - fp16: the FP32 model and the FP16 model made from it, ``OUT`` with suffix ``.fp16.onnx``
      (float32 inputs/outputs kept; top-1 agreement with PyTorch >= ``fp16_min_agreement`` on the
      validation split, its max abs error recorded);
    - int8: the FP32 model and the int8 symmetric Q/DQ model, ``OUT`` with suffix ``.int8.onnx``
      (``quantize_qdq(target="tensorrt")``, agreement >= ``min_agreement``; no calibrator: TensorRT's
      explicit quantization).

    Then the engine is built with the TensorRT Python API (strongly typed network, ``OnnxParser``,
    workspace pool limit, builder optimization level, a timing cache keyed by GPU and TensorRT version,
    ``build_serialized_network``; no precision flags), its layer datatypes are checked with the engine
    inspector, its outputs are checked against PyTorch on the validation split (fp32: max abs error
    <= ``engine_tolerance``; fp16: agreement >= ``fp16_min_agreement``; int8: agreement >=
    ``min_agreement``) and it is timed with the devices ``tensorrt`` backend.  Where TensorRT or a GPU
    is missing, ``DeviceUnavailableError`` is raised *after* the ONNX models are written, with the
    equivalent ``trtexec --stronglyTyped`` command in the message and in the ONNX manifests; no engine
    file and no engine manifest exist then.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hwnas.errors import DeviceUnavailableError, ExportError, HwnasError
from hwnas.formats import register_format
from hwnas.formats.common import (Progress, _check_options, build_manifest, compare_logits, export_verified_fp32,
                                  latency_entry, manifest_path, onnx_logits, prepare, top1, torch_logits, val_data,
                                  write_json)
from hwnas.formats.onnx import export_onnx_fp32
from hwnas.formats.onnx_int8 import DEFAULT_MIN_AGREEMENT, export_onnx_int8
from hwnas.io import atomic_outputs

DEFAULT_TRT_DEVICE = "tensorrt"
TRT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MB = 1024
DEFAULT_FP32_ENGINE_TOLERANCE = 1e-3
DEFAULT_FP16_MIN_AGREEMENT = 0.99
ORT_FP16_NOTE = ("ONNX Runtime's CPU provider runs FP16 ops it has no CPU kernels for in FP32 (inserted casts), so "
                 "this check covers the FP16 weights and graph; the engine check covers FP16 arithmetic")
_WEAK_TYPING = ("TensorRT engines are built strongly typed (the ONNX model carries the precision): weak typing "
                "and BuilderFlag.FP16/INT8 are deprecated since TensorRT 10.12 and removed in 11; "
                "drop strongly_typed=False")


def trt_onnx_paths(engine: str | Path) -> tuple[Path, Path]:
    """The FP32 ONNX and the Q/DQ ONNX models a TensorRT engine ``m.engine`` is built from."""
    engine = Path(engine)
    if engine.suffix == ".onnx":
        raise ExportError(f"--format tensorrt writes a serialized engine: name it {engine.with_suffix('.engine')} "
                          f"(the ONNX model goes beside it as {engine.name})")
    return engine.with_suffix(".onnx"), engine.with_suffix(".int8.onnx")


def trt_fp16_onnx_path(engine: str | Path) -> Path:
    """The FP16 ONNX model an FP16 engine ``m.engine`` is built from: ``m.fp16.onnx``."""
    trt_onnx_paths(engine)  # the same check of the engine's name
    return Path(engine).with_suffix(".fp16.onnx")


def trt_build_onnx(engine: str | Path, precision: str) -> Path:
    """The ONNX model the ``precision`` engine ``m.engine`` is built from (``m.onnx``, ``m.fp16.onnx``,
    ``m.int8.onnx``): a strongly typed network computes in that model's types."""
    _check_precision(precision)
    fp32, qdq = trt_onnx_paths(engine)
    return {"fp32": fp32, "fp16": trt_fp16_onnx_path(engine), "int8": qdq}[precision]


def _check_precision(precision: str) -> None:
    if precision not in TRT_PRECISIONS:
        raise ExportError(f"TensorRT precision {precision!r} is not one of {', '.join(TRT_PRECISIONS)}")


# ---------------------------------------------------------------------------------------------- tensorrt
def tensorrt_unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built here (no ``tensorrt`` module, TensorRT < 10, no CUDA GPU), or ``None``."""
    from hwnas.devices.backends.tensorrt import tensorrt_unavailable

    return tensorrt_unavailable()


def _shape_arg(dims: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in dims)


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, precision: str, *,
                    workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: str | Path | None = None,
                    strongly_typed: bool | None = None, input_shape: Sequence[int] | None = None,
                    dynamic_batch: bool = False, max_batch: int | None = None,
                    builder_optimization_level: int | None = None) -> str:
    """The ``trtexec`` command that builds the same engine as :func:`build_engine`.

    Always ``--stronglyTyped`` (required on TensorRT 10, the default and a no-op on 11) and never
    ``--fp16``/``--int8``: ``onnx_path`` must be the ``precision`` model (:func:`trt_build_onnx`).
    ``input_shape`` is the full shape (batch first); with ``dynamic_batch`` it gives the optimization
    profile (min batch 1, opt ``input_shape[0]``, max ``max_batch``).
    """
    _check_precision(precision)
    if strongly_typed is False:
        raise ExportError(_WEAK_TYPING)
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped",
            f"--memPoolSize=workspace:{int(workspace_mb)}M"]
    if builder_optimization_level is not None:
        args.append(f"--builderOptimizationLevel={int(builder_optimization_level)}")
    if timing_cache:
        args.append(f"--timingCacheFile={Path(timing_cache).expanduser()}")
    if dynamic_batch and input_shape is not None:
        b, *rest = input_shape
        args += [f"--minShapes=input:{_shape_arg([1, *rest])}", f"--optShapes=input:{_shape_arg([b, *rest])}",
                 f"--maxShapes=input:{_shape_arg([max(max_batch or b, b), *rest])}"]
    return " ".join(shlex.quote(a) for a in args)


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp32", *,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: str | Path | None = None,
                 strongly_typed: bool | None = None, builder_optimization_level: int | None = None,
                 batch: int = 1, max_batch: int | None = None, device_index: int = 0) -> dict:
    """Build a serialized TensorRT engine from ``onnx_path`` into ``engine_path`` (TensorRT >= 10).

    A strongly typed network (no precision flags: ``onnx_path`` is the FP32, FP16 or Q/DQ model of
    ``precision``, see :func:`trt_build_onnx`) parsed with ``OnnxParser``; the workspace pool limit; an
    optimization profile for a dynamic batch (1, ``batch``, ``max_batch``); ``timing_cache``
    (``"auto"``: one file per GPU and TensorRT version in ``~/.cache/hwnas/trt``, a directory, a file,
    or ``None``) loaded with ``ignore_mismatch=False`` and saved back atomically.  The engine's layer
    datatypes are checked with the engine inspector before it is written.  ``engine_path`` is written
    directly: callers pass a reserved temp path.
    """
    from hwnas.devices.backends.tensorrt import (build_serialized_engine, current_timing_cache_key, import_tensorrt,
                                                 model_for_precision, resolve_timing_cache, verify_engine_precision)

    _check_precision(precision)
    if strongly_typed is False:
        raise ExportError(_WEAK_TYPING)
    reason = tensorrt_unavailable_reason()
    if reason:
        raise DeviceUnavailableError(reason)
    if model_for_precision(onnx_path, precision) != "as-is":
        raise ExportError(f"build_engine takes the {precision} ONNX model and {Path(onnx_path).name} is FP32: make "
                          "the FP16 model with hwnas.devices.onnx_precision.convert_to_fp16 (and verify it) first")
    trt = import_tensorrt()
    import torch

    torch.cuda.set_device(device_index)
    logger = trt.Logger(trt.Logger.WARNING)
    key = current_timing_cache_key(trt, device_index) if timing_cache else None
    cache_path, keyed = resolve_timing_cache(timing_cache, key)

    def on_input(i: int, name: str, dims: list, np_dtype: str) -> tuple | None:
        if not any(d < 0 for d in dims):
            return None
        rest = dims[1:]
        if any(d < 0 for d in rest):
            raise ExportError(f"input {name!r} of {onnx_path} has dynamic non-batch dims {dims}")
        return (1, *rest), (batch, *rest), (max(max_batch or batch, batch), *rest)

    plan, info = build_serialized_engine(trt, logger, onnx_path, precision=precision, workspace_mb=workspace_mb,
                                         builder_optimization_level=builder_optimization_level,
                                         timing_cache=cache_path, timing_cache_keyed=keyed, on_input=on_input)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise ExportError(f"TensorRT could not deserialize the engine it built from {onnx_path}")
    info["precision_check"] = verify_engine_precision(trt, engine, precision, onnx_path)
    Path(engine_path).write_bytes(plan)
    return dict(info, timing_cache=str(cache_path) if cache_path else None, timing_cache_status=info["timing_cache"])


def _timing_cache_key_here(device_index: int) -> str | None:
    """This machine's timing cache key (GPU and TensorRT version), ``None`` where they cannot be read."""
    from hwnas.devices.backends.tensorrt import current_timing_cache_key, import_tensorrt

    try:
        return current_timing_cache_key(import_tensorrt(), device_index)
    except (HwnasError, RuntimeError, AssertionError):  # no TensorRT / no CUDA device after all
        return None


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


def export_onnx_fp16(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None, *,
                     fp32_out: str | Path, batch: int = 1, command: str | None = None, dynamic_batch: bool = False,
                     optimize: bool = True, tolerance: float = 1e-4, calibration: str | Path | None = None,
                     fp16_min_agreement: float = DEFAULT_FP16_MIN_AGREEMENT, progress: Progress | None = None,
                     manifest_extra: Mapping[str, Any] | None = None) -> dict:
    """The verified FP32 ONNX model at ``fp32_out`` and the FP16 model made from it at ``out``, with manifests.

    The FP16 model (float32 inputs/outputs kept; :func:`hwnas.devices.onnx_precision.convert_to_fp16`)
    is run in ONNX Runtime on the validation split: its top-1 agreement with PyTorch must be >=
    ``fp16_min_agreement`` (not gated for untrained ``init`` weights, whose near-tied logits make
    agreement meaningless) and its max abs error is recorded.  Four files or none.  Returns the FP16
    manifest; its ``fp32`` entry holds the FP32 model's.
    """
    from hwnas.devices.onnx_precision import convert_to_fp16

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    out, fp32_out = Path(out), Path(fp32_out)
    if not 0.0 <= fp16_min_agreement <= 1.0:
        raise ExportError(f"fp16_min_agreement must be within [0, 1]; got {fp16_min_agreement}")
    say("extracting the subnet and recalibrating BN")
    net, a, sub, recal = prepare(supernet, weights, arch, calibration)
    shape = net.family.input_shape(a)
    x, labels, source = val_data(net, shape[-1], calibration)
    m32_path, m16_path = manifest_path(fp32_out), manifest_path(out)
    with atomic_outputs(fp32_out, out, m32_path, m16_path) as (t32, t16, tm32, tm16):
        opt_info, ref, l32, chk32 = export_verified_fp32(sub, t32, shape, batch, dynamic_batch, optimize, x, source,
                                                         tolerance, "FP32 ONNX model", say)
        say("converting the FP32 model to FP16 (float32 inputs and outputs kept)")
        conversion = convert_to_fp16(t32, t16)
        say(f"checking the FP16 model against PyTorch on {source}")
        l16 = onnx_logits(t16, x)
        chk16 = compare_logits(ref, l16, None)
        vs32 = compare_logits(l32, l16, None)
        gated = net.weights_hash != "init"
        if gated and chk16.top1_agreement < fp16_min_agreement:
            raise ExportError(f"FP16 ONNX model agrees with PyTorch on only {chk16.top1_agreement:.2%} of {source} "
                              f"(< fp16_min_agreement {fp16_min_agreement:.0%}; max abs error "
                              f"{chk16.max_abs_err:.2e}); nothing was written")
        accuracy = {"split": source, "top1_pytorch": top1(ref, labels), "top1_fp32": top1(l32, labels),
                    "top1_fp16": top1(l16, labels), "agreement_fp16_vs_pytorch": chk16.top1_agreement,
                    "agreement_fp16_vs_fp32": vs32.top1_agreement, "max_abs_err_fp16_vs_pytorch": chk16.max_abs_err,
                    "max_abs_err_fp16_vs_fp32": vs32.max_abs_err,
                    "min_agreement": fp16_min_agreement if gated else None, "checked_with": ORT_FP16_NOTE}
        if not gated:
            accuracy["note"] = "untrained (initial) weights: the agreement gate was not applied"
        common = dict(net=net, arch=a, batch=batch, shape=shape, check_inputs=source, recalibrated=recal,
                      command=command, dynamic_batch=dynamic_batch, optimize=opt_info)
        extra = dict(manifest_extra or {})
        m32 = build_manifest(fmt="onnx", precision="fp32", check=chk32,
                             accuracy={"split": source, "top1_pytorch": accuracy["top1_pytorch"],
                                       "top1": accuracy["top1_fp32"]},
                             latency=None, fp16_model=str(out), **common, **extra)
        m16 = build_manifest(fmt="onnx", precision="fp16", check=chk16, conversion=conversion, accuracy=accuracy,
                             latency=None, fp32_model=str(fp32_out), **common, **extra)
        m32["export_seconds"] = m16["export_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(tm32, m32)
        write_json(tm16, m16)
    m32.update(path=str(fp32_out), manifest=str(m32_path))
    m16.update(path=str(out), manifest=str(m16_path), fp32=m32)
    return m16


def _engine_gate(precision: str, ref: np.ndarray, got: np.ndarray, *, gated: bool, engine_tolerance: float | None,
                 fp16_min_agreement: float, min_agreement: float, source: str):
    """The check of the engine's logits against PyTorch, and its manifest record; ``ExportError`` on failure."""
    tol = engine_tolerance if engine_tolerance is not None else (
        DEFAULT_FP32_ENGINE_TOLERANCE if precision == "fp32" else None)
    need = {"fp32": None, "fp16": fp16_min_agreement, "int8": min_agreement}[precision]
    check = compare_logits(ref, got, tol)
    if not check.passed:
        raise ExportError(f"TensorRT {precision} engine disagrees with PyTorch on {source}: max abs error "
                          f"{check.max_abs_err:.2e} > {tol:.0e}; no engine was written")
    if need is not None and gated and check.top1_agreement < need:
        raise ExportError(f"TensorRT {precision} engine agrees with PyTorch on only {check.top1_agreement:.2%} of "
                          f"{source} (< {need:.0%}; max abs error {check.max_abs_err:.2e}); no engine was written")
    gate = {"against": "PyTorch logits", "inputs": source, "max_abs_err": check.max_abs_err,
            "max_abs_err_tolerance": tol, "top1_agreement": check.top1_agreement,
            "min_agreement": need if gated else None, "passed": True}
    if need is not None and not gated:
        gate["note"] = "untrained (initial) weights: the agreement gate was not applied"
    return check, gate


@register_format("tensorrt", precisions=TRT_PRECISIONS)
def export_tensorrt(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None, *,
                    batch: int = 1, command: str | None = None, dynamic_batch: bool = False,
                    optimize: bool = True, tolerance: float = 1e-4, device: Any = None,
                    precision: str | None = None, workspace_mb: int | None = None,
                    timing_cache: str | Path | None = None, strongly_typed: bool | None = None,
                    builder_optimization_level: int | None = None, max_batch: int | None = None,
                    engine_tolerance: float | None = None, time_cap_s: float | None = None,
                    measure: bool = True, calibration: str | Path | None = None,
                    calib_images: int | None = None, calib_method: str = "minmax",
                    exclude: Sequence[str] | None = None, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                    fp16_min_agreement: float = DEFAULT_FP16_MIN_AGREEMENT,
                    progress: Progress | None = None, **options: Any) -> dict:
    """A serialized TensorRT engine at ``out`` (``precision`` fp32 | fp16 | int8; default fp32).

    Steps: the ONNX model(s) with manifests (see the module docstring), then, where TensorRT and a
    GPU are present, the engine (all-or-nothing with its manifest), its layer datatypes checked, its
    logits checked against PyTorch on the validation split (fp32: max abs error <= ``engine_tolerance``,
    default 1e-3; fp16: top-1 agreement >= ``fp16_min_agreement``, default 0.99; int8: agreement >=
    ``min_agreement``; the agreement gates are skipped for untrained ``init`` weights) and timed on
    ``device`` (default the ``tensorrt`` spec) with the devices ``tensorrt`` backend.  ``timing_cache``
    defaults to the device's (``"auto"``: one file per GPU and TensorRT version).  Without TensorRT
    or a GPU: ``DeviceUnavailableError`` carrying the ``trtexec`` command, after the ONNX files are
    written.  ``strongly_typed`` is accepted for compatibility; engines are always strongly typed.
    """
    from hwnas.devices import DeviceSpec, load_device
    from hwnas.devices.backends import runtime_config
    from hwnas.devices.backends.tensorrt import TensorRTBackend, resolve_timing_cache

    _check_options("--format tensorrt", options)
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    precision = precision or "fp32"
    _check_precision(precision)
    if strongly_typed is False:
        raise ExportError(_WEAK_TYPING)
    engine = Path(out)
    onnx_path, qdq_path = trt_onnx_paths(engine)
    fp16_path = trt_fp16_onnx_path(engine)
    build_from = trt_build_onnx(engine, precision)
    base = device if isinstance(device, DeviceSpec) else load_device(DEFAULT_TRT_DEVICE if device is None else device)
    if base.backend != "tensorrt":
        raise ExportError(f"device {base.name!r} uses backend {base.backend!r}; --format tensorrt is timed on a "
                          "device with backend 'tensorrt' (e.g. --device tensorrt)")
    opts = TensorRTBackend.resolve_options(base)
    workspace_mb = workspace_mb if workspace_mb is not None else opts["workspace_mb"]
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb <= 0:
        raise ExportError(f"workspace_mb must be a positive int (MiB); got {workspace_mb!r}")
    timing_cache = str(timing_cache if timing_cache is not None else opts["timing_cache"])
    if builder_optimization_level is None:
        builder_optimization_level = int(opts["builder_optimization_level"])
    device_index = int(opts["device_index"])
    spec = dataclasses.replace(base, batch=batch, precision=precision,
                               options={**base.options, "workspace_mb": workspace_mb, "timing_cache": timing_cache,
                                        "builder_optimization_level": builder_optimization_level})
    try:
        from hwnas.supernet.registry import resolve_family

        fam = resolve_family(supernet)
        input_shape = (batch, *fam.input_shape(arch))
    except Exception:
        input_shape = None
    reason = tensorrt_unavailable_reason()
    key = None if reason or not timing_cache else _timing_cache_key_here(device_index)
    cmd_cache, _ = resolve_timing_cache(timing_cache, key)  # the engine build's own cache where TensorRT is here
    cmd = trtexec_command(build_from, engine, precision, workspace_mb=workspace_mb, timing_cache=cmd_cache,
                          input_shape=input_shape, dynamic_batch=dynamic_batch, max_batch=max_batch,
                          builder_optimization_level=builder_optimization_level)
    trt_note = {"engine": str(engine), "precision": precision, "built_from": str(build_from), "trtexec": cmd,
                "strongly_typed": True}
    common = dict(batch=batch, command=command, dynamic_batch=dynamic_batch, optimize=optimize,
                  tolerance=tolerance, calibration=calibration, progress=progress)

    # 1. the ONNX model(s) the engine is built from: complete and verified, with their manifests
    if precision == "int8":
        say("writing the FP32 and Q/DQ INT8 ONNX models the engine is built from")
        onnx_manifest = export_onnx_int8(arch, qdq_path, supernet, weights, fp32_out=onnx_path, target="tensorrt",
                                         measure=False, calib_images=calib_images, calib_method=calib_method,
                                         exclude=exclude, min_agreement=min_agreement,
                                         manifest_extra={"tensorrt": trt_note}, **common)
        written = [onnx_path, qdq_path]
    elif precision == "fp16":
        say("writing the FP32 and FP16 ONNX models the engine is built from")
        onnx_manifest = export_onnx_fp16(arch, fp16_path, supernet, weights, fp32_out=onnx_path,
                                         fp16_min_agreement=fp16_min_agreement,
                                         manifest_extra={"tensorrt": trt_note}, **common)
        written = [onnx_path, fp16_path]
    else:
        say("writing the ONNX model the engine is built from")
        onnx_manifest = export_onnx_fp32(arch, onnx_path, supernet, weights,
                                         manifest_extra={"tensorrt": trt_note}, **common)
        written = [onnx_path]

    # 2. the engine, or a clear error saying what is missing and how to build it elsewhere
    if reason:
        raise DeviceUnavailableError(
            f"TensorRT engine {engine} not built: {reason}. Wrote {' and '.join(map(str, written))} (verified, with a "
            f"manifest beside {'each' if len(written) > 1 else 'it'}); build the engine where TensorRT and an "
            f"NVIDIA GPU are: {cmd}")
    net, a, sub, recal = prepare(supernet, weights, arch, calibration)
    shape = net.family.input_shape(a)
    x, labels, source = val_data(net, shape[-1], calibration)
    eng_manifest = manifest_path(engine)
    with atomic_outputs(engine, eng_manifest) as (t_engine, t_manifest):
        say(f"building the TensorRT {precision} engine (strongly typed, from {build_from.name})")
        build = build_engine(build_from, t_engine, precision, workspace_mb=workspace_mb, timing_cache=timing_cache,
                             builder_optimization_level=builder_optimization_level, batch=batch,
                             max_batch=max_batch, device_index=device_index)
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
            check, gate = _engine_gate(precision, ref, got, gated=net.weights_hash != "init",
                                       engine_tolerance=engine_tolerance, fp16_min_agreement=fp16_min_agreement,
                                       min_agreement=min_agreement, source=source)
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
                                            "top1": top1(got, labels),
                                            "agreement_vs_pytorch": check.top1_agreement,
                                            "min_agreement": gate["min_agreement"]},
                                  engine_check=gate, latency=latency,
                                  tensorrt=dict(build, trtexec_equivalent=cmd, precision=precision,
                                                built_from=str(build_from),
                                                builder_optimization_level=builder_optimization_level),
                                  onnx_model=str(build_from))
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(t_manifest, manifest)
    manifest.update(path=str(engine), manifest=str(eng_manifest), onnx=onnx_manifest)
    return manifest
