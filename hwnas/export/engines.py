"""Optimized engines: ONNX Runtime INT8 (static QDQ quantization) and TensorRT.

``onnx-int8``
    The FP32 ONNX model is exported and checked as for ``--format onnx``, pre-processed with
    ``quant_pre_process`` (shape inference, ORT graph optimization) and quantized with
    ``quantize_static`` in the QDQ format: weights int8 symmetric per output channel, activations
    calibrated (MinMax by default) on the calibration images at the arch's resolution.  For ONNX
    Runtime on CPU activations are uint8 asymmetric (the U8S8 kernels are the fast ones on x86); for
    TensorRT they are int8 symmetric, as TensorRT's explicit quantization requires.  Both models are
    evaluated on the whole validation split (top-1 of each, their top-1 agreement, max abs error vs
    PyTorch) and timed side by side on the device (default ``ort-cpu-1t``).  Two files and two
    manifests are written, or none: ``OUT`` (INT8) and, unless ``fp32_out`` says otherwise, the FP32
    model beside it (:func:`default_fp32_path`: ``m.onnx`` -> ``m.fp32.onnx``, ``m.int8.onnx`` ->
    ``m.fp32.onnx``).

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

import contextlib
import dataclasses
import importlib.util
import shlex
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from hwnas.errors import DeviceUnavailableError, ExportError, ModelFileError

DEFAULT_INT8_DEVICE = "ort-cpu-1t"
DEFAULT_TRT_DEVICE = "tensorrt"
TRT_PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
# Node groups that can be kept in FP32 by name (``exclude``); anything else is a node name or op type.
EXCLUDE_GROUPS = ("se", "classifier", "first_conv", "depthwise")
# Tried, in order, when full quantization agrees with FP32 on fewer than ``min_agreement`` of the
# validation images: the squeeze-excite gates (a multiplicative path whose small sigmoid outputs lose
# the most to a per-tensor scale) and the classifier (the logits themselves), then the first conv too.
FALLBACK_EXCLUDES: tuple[tuple[str, ...], ...] = (("se", "classifier"), ("se", "classifier", "first_conv"))
DEFAULT_MIN_AGREEMENT = 0.97
DEFAULT_WORKSPACE_MB = 1024

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- paths
def default_fp32_path(out: str | Path) -> Path:
    """Where the FP32 model of an ``onnx-int8`` export goes: ``m.onnx``/``m.int8.onnx`` -> ``m.fp32.onnx``."""
    out = Path(out)
    stem = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    if stem.endswith(".int8"):
        stem = stem[: -len(".int8")]
    return out.with_name(stem + ".fp32.onnx")


def manifest_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def trt_onnx_paths(engine: str | Path) -> tuple[Path, Path]:
    """The FP32 ONNX and the Q/DQ ONNX models a TensorRT engine ``m.engine`` is built from."""
    engine = Path(engine)
    if engine.suffix == ".onnx":
        raise ExportError(f"--format tensorrt writes a serialized engine: name it {engine.with_suffix('.engine')} "
                          f"(the ONNX model goes beside it as {engine.name})")
    return engine.with_suffix(".onnx"), engine.with_suffix(".int8.onnx")


# ---------------------------------------------------------------------------------------------- entry
def export_engine(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None, fmt: str, *,
                  batch: int = 1, command: str | None = None, **options: Any) -> dict:
    """``export_subnet`` for ``onnx-int8`` and ``tensorrt`` (see the module docstring and the two exporters)."""
    if fmt == "onnx-int8":
        return export_onnx_int8(arch, out, supernet, weights, batch=batch, command=command, **options)
    if fmt == "tensorrt":
        return export_tensorrt(arch, out, supernet, weights, batch=batch, command=command, **options)
    raise ExportError(f"unknown engine format {fmt!r}; choose onnx-int8 or tensorrt")


# ---------------------------------------------------------------------------------------------- quantization
class _ArrayReader:
    """A ``CalibrationDataReader`` over an array of normalized images (made lazily: ORT is imported late)."""

    @staticmethod
    def create(x: np.ndarray, batch_size: int):
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
                self._i = 0

            def get_next(self) -> dict | None:
                if self._i >= len(self._batches):
                    return None
                self._i += 1
                return {"input": np.ascontiguousarray(self._batches[self._i - 1], dtype=np.float32)}

            def rewind(self) -> None:
                self._i = 0

        return Reader()


def _set_batch_dim(model: Any, value: int | str) -> None:
    """Set the leading dim of every graph input and output; drop stale intermediate shapes."""
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            d = dims[0]
            if isinstance(value, str):
                d.ClearField("dim_value")
                d.dim_param = value
            else:
                d.ClearField("dim_param")
                d.dim_value = int(value)
    del model.graph.value_info[:]


def _is_depthwise(node: Any, inits: Mapping[str, Any]) -> bool:
    if node.op_type != "Conv":
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    w = inits.get(node.input[1]) if len(node.input) > 1 else None
    return group > 1 and w is not None and len(w.dims) == 4 and w.dims[1] == 1


def resolve_excludes(model: Any, exclude: Sequence[str]) -> dict[str, list[str]]:
    """Map each ``exclude`` entry (a group in ``EXCLUDE_GROUPS``, an op type or a node name) to node names.

    An entry that matches no node is an ``ExportError`` naming the groups, so a typo is not ignored.
    """
    inits = {t.name: t for t in model.graph.initializer}
    nodes = list(model.graph.node)
    out: dict[str, list[str]] = {}
    for e in exclude:
        if e == "se":
            names = [n.name for n in nodes if "/se/" in n.name]
        elif e == "classifier":
            names = [n.name for n in nodes if n.name.startswith("/classifier/") or n.op_type in ("Gemm", "MatMul")]
        elif e == "first_conv":
            names = [n.name for n in nodes if n.name.startswith("/first_conv/")]
        elif e == "depthwise":
            names = [n.name for n in nodes if _is_depthwise(n, inits)]
        else:
            names = [n.name for n in nodes if n.name == e or n.op_type == e]
        if not names:
            raise ExportError(f"exclude entry {e!r} matches no node of the model; use a group "
                              f"({', '.join(EXCLUDE_GROUPS)}), an op type (e.g. Gemm) or a node name")
        out[e] = names
    return out


def quantize_qdq(src: str | Path, dst: str | Path, calib: torch.Tensor | np.ndarray, *, target: str = "ort",
                 exclude: Sequence[str] = (), method: str = "minmax", calib_batch: int = 100) -> dict:
    """Static QDQ quantization of the FP32 model ``src`` into ``dst`` (ONNX Runtime's quantizer).

    ``target="ort"``: uint8 asymmetric activations, int8 symmetric per-channel weights (U8S8, ORT's fast
    CPU path).  ``target="tensorrt"``: int8 symmetric activations and weights (TensorRT's explicit
    quantization).  Calibration runs on a copy of the model whose batch dim is relaxed, so it can take
    the images ``calib_batch`` at a time; the quantized model gets the batch dims of ``src`` back.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    if target not in ("ort", "tensorrt"):
        raise ExportError(f"quantization target {target!r} is not one of ort, tensorrt")
    if method not in CALIB_METHODS:
        raise ExportError(f"calibration method {method!r} is not one of {', '.join(CALIB_METHODS)}")
    x = calib.numpy() if isinstance(calib, torch.Tensor) else np.asarray(calib)
    if len(x) == 0:
        raise ExportError("INT8 calibration got no images")
    calib_batch = min(calib_batch, len(x))
    if method != "minmax" and len(x) % calib_batch:
        # ORT's histogram collectors (entropy, percentile) fail on batches of unequal size: drop the remainder
        x = x[: len(x) - len(x) % calib_batch]
    src, dst = Path(src), Path(dst)
    orig = onnx.load(str(src))
    dim0 = orig.graph.input[0].type.tensor_type.shape.dim[0]
    batch_dim: int | str = dim0.dim_param if dim0.dim_param else dim0.dim_value
    act = QuantType.QUInt8 if target == "ort" else QuantType.QInt8
    extra = {"ActivationSymmetric": target == "tensorrt", "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwnas-quant-") as td:
        pre, dyn, q = Path(td) / "pre.onnx", Path(td) / "dyn.onnx", Path(td) / "q.onnx"
        quant_pre_process(str(src), str(pre))
        model = onnx.load(str(pre))
        _set_batch_dim(model, "N")
        onnx.save(model, str(dyn))
        groups = resolve_excludes(model, exclude)
        excluded = sorted({n for names in groups.values() for n in names})
        try:
            quantize_static(str(dyn), str(q), _ArrayReader.create(x, calib_batch), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded or None,
                            calibrate_method=getattr(CalibrationMethod, {"minmax": "MinMax", "entropy": "Entropy",
                                                                           "percentile": "Percentile"}[method]),
                            extra_options=extra)
        except Exception as exc:  # the quantizer raises many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"INT8 quantization of {src.name} failed: {first[:200]}") from exc
        qm = onnx.load(str(q))
        _set_batch_dim(qm, batch_dim)
        qm = onnx.shape_inference.infer_shapes(qm)
        onnx.checker.check_model(qm, full_check=True)
        onnx.save(qm, str(dst))
    ops: dict[str, int] = {}
    for n in qm.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    import onnxruntime

    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        "format": "QDQ",
        "target": target,
        "preprocess": "quant_pre_process (symbolic shape inference, ORT graph optimization)",
        "weights": "int8 symmetric, per output channel",
        "activations": ("uint8 asymmetric, per tensor" if target == "ort" else "int8 symmetric, per tensor"),
        "calibration_method": method,
        "calibration_images": int(len(x)),
        "excluded": {k: v for k, v in groups.items()},
        "n_quantize_linear": ops.get("QuantizeLinear", 0),
        "n_dequantize_linear": ops.get("DequantizeLinear", 0),
        "op_counts": dict(sorted(ops.items())),
        "opset": max((o.version for o in qm.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def is_qdq_model(path: str | Path) -> bool:
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return {"QuantizeLinear", "DequantizeLinear"} <= ops


# ---------------------------------------------------------------------------------------------- latency
def measure_side_by_side(models: Mapping[str, tuple[Path, Any]], time_cap_s: float | None = None,
                         rounds: int = 3, settings: Any = None) -> dict:
    """Time several models on their devices in one run, interleaved, so drift hits them alike.

    ``models`` maps a label to ``(onnx_path, DeviceSpec)``.  All backends are loaded first; then in
    each of ``rounds`` rounds every model is measured with the devices protocol (time cap split over
    the rounds), the order alternating between rounds.  Each model's latency is the median of its
    round medians; ``rounds_ms`` keeps the per-round medians.  When every backend runs in this process
    the models after the first are timed paired with the first (anchored timing, the first model as
    the anchor): their ``over_first`` is the median per-inference ratio to the first model, which
    slowdowns from other tenants of the machine do not move, and their ``median_ms`` is that ratio times
    the first model's latency.
    """
    from hwnas.devices.backends import create_backend, runtime_config
    from hwnas.devices.backends.base import LocalBackend
    from hwnas.devices.protocol import ProtocolSettings
    from hwnas.export.api import latency_entry

    labels = list(models)
    per: dict[str, list[Any]] = {k: [] for k in labels}
    fps: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        backends = {}
        for k in labels:
            path, spec = models[k]
            backends[k] = stack.enter_context(create_backend(spec, model=path))
        first = labels[0]
        paired = len(labels) > 1 and all(isinstance(b, LocalBackend) for b in backends.values())
        for r in range(rounds):
            for k in (labels if r % 2 == 0 else labels[::-1]):
                spec = models[k][1]
                s = settings or ProtocolSettings.from_mapping(spec.protocol)
                cap = time_cap_s if time_cap_s is not None else s.time_cap_s
                s = s.replace(time_cap_s=max(cap / rounds, 0.05), warmup_s=min(s.warmup_s, cap / rounds))
                if paired and k != first:
                    # anchor_ms=1: the reported figure is the bare ratio, scaled below
                    per[k].append(backends[k].measure(s, anchor=backends[first], anchor_ms=1.0))
                else:
                    per[k].append(backends[k].measure(s))
        for k in labels:
            b = backends[k]
            fps[k] = getattr(b, "last_fingerprint", None) or b.fingerprint()
    out: dict[str, Any] = {}
    first_ms = statistics.median(m.median_ms for m in per[labels[0]])
    for k in labels:
        ms = per[k]
        best = sorted(ms, key=lambda m: m.median_ms)[len(ms) // 2]  # the median round, for p90/CI
        entry = latency_entry(best.to_dict(), models[k][1], fps[k].to_dict(), runtime_config(models[k][1]))
        if ms[0].anchor_ratio is not None:
            ratio = statistics.median(m.anchor_ratio for m in ms)
            entry["over_first"] = ratio
            entry["median_ms"] = ratio * first_ms
            entry["rounds_ratio"] = [round(m.anchor_ratio, 5) for m in ms]
            entry["ci95_ms"] = [v * first_ms for v in entry["ci95_ms"]]  # the ratio's CI, in ms
        else:
            entry["median_ms"] = statistics.median(m.median_ms for m in ms)
            entry["rounds_ms"] = [round(m.median_ms, 5) for m in ms]
        entry["n"] = sum(m.n for m in ms)
        entry["converged"] = all(m.converged for m in ms)
        out[k] = entry
    return out


# ---------------------------------------------------------------------------------------------- onnx-int8
def _check_options(where: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ExportError(f"option(s) {', '.join(sorted(options))} do not apply to {where}")


def export_onnx_int8(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None, *,
                     batch: int = 1, command: str | None = None, dynamic_batch: bool = False,
                     optimize: bool = True, tolerance: float = 1e-4, device: Any = None,
                     measure: bool = True, time_cap_s: float | None = None,
                     calibration: str | Path | None = None, calib_images: int | None = None,
                     calib_method: str = "minmax", exclude: Sequence[str] | None = None,
                     min_agreement: float = DEFAULT_MIN_AGREEMENT, fp32_out: str | Path | None = None,
                     target: str = "ort", progress: Progress | None = None,
                     manifest_extra: Mapping[str, Any] | None = None, **options: Any) -> dict:
    """FP32 + INT8 (QDQ) ONNX models of ``arch``, both verified on the validation split, timed side by side.

    ``exclude``: node groups/op types/node names kept in FP32 (``None``: quantize everything, and if
    top-1 agreement with FP32 falls below ``min_agreement`` retry with ``FALLBACK_EXCLUDES`` before
    giving up; an explicit list, even empty, is used as is; the gate is skipped for untrained
    ``init`` weights, whose near-tied logits make agreement meaningless).  ``calib_images`` caps the number of
    calibration images (default all 2,000).  ``device`` (default ``ort-cpu-1t``) times both models,
    unless ``measure=False``.  Returns the INT8 manifest; its ``fp32`` entry holds the FP32 model's.
    """
    from hwnas.export.api import (build_manifest, compare_logits, export_verified_fp32, load_calibration,
                                  onnx_logits, prepare, resolve_device, top1, val_data, write_json)
    from hwnas.export.onnx_export import atomic_outputs

    _check_options("--format onnx-int8", options)
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    out = Path(out)
    fp32_path = Path(fp32_out) if fp32_out is not None else default_fp32_path(out)
    if fp32_path.resolve() == out.resolve():
        raise ExportError(f"the FP32 and INT8 models would both be written to {out}; pass another fp32_out")
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"min_agreement must be within [0, 1]; got {min_agreement}")
    spec32 = spec8 = None
    if measure:
        dev = DEFAULT_INT8_DEVICE if device is None else device
        spec32 = resolve_device(dev, batch, "fp32")
        spec8 = resolve_device(dev, batch, "int8")
    say("extracting the subnet and recalibrating BN")
    net, a, sub, recal = prepare(supernet, weights, arch, calibration)
    cal = load_calibration(net, a["r"], calibration)
    if cal is None:
        raise ExportError(f"INT8 calibration needs real images and supernet {net.config.name!r} has no shipped "
                          "calibration set: pass calibration=DIR_OR_NPZ (float32 [N, C, r, r], normalized)")
    if calib_images is not None:
        if calib_images < 1:
            raise ExportError(f"calib_images must be >= 1; got {calib_images}")
        cal = cal[:calib_images]
    cal_source = (f"{calibration} ({len(cal)} images)" if calibration is not None
                  else f"fashion-mnist calib ({len(cal)} images)")
    shape = (net.config.in_channels, a["r"], a["r"])
    x, labels, source = val_data(net, a["r"])
    m32_path, m8_path = manifest_path(fp32_path), manifest_path(out)
    with atomic_outputs(fp32_path, out, m32_path, m8_path) as (t32, t8, tm32, tm8):
        opt_info, ref, l32, chk32 = export_verified_fp32(sub, t32, shape, batch, dynamic_batch, optimize, x,
                                                         source, tolerance, "FP32 ONNX model", say)
        attempts = [tuple(exclude)] if exclude is not None else [(), *FALLBACK_EXCLUDES]
        # untrained weights have near-tied logits: their agreement says nothing about quantization quality
        gated = net.weights_hash != "init"
        tried = []
        for excl in attempts:
            say(f"quantizing (QDQ, {calib_method} calibration on {cal_source}"
                + (f", keeping {', '.join(excl)} in FP32" if excl else "") + ")")
            qinfo = quantize_qdq(t32, t8, cal, target=target, exclude=excl, method=calib_method)
            say(f"evaluating the INT8 model on {source}")
            l8 = onnx_logits(t8, x)
            agreement = float((l8.argmax(1) == l32.argmax(1)).mean())
            tried.append({"excluded": list(excl), "agreement_with_fp32": agreement, "top1": top1(l8, labels)})
            if agreement >= min_agreement or not gated:
                break
        else:
            raise ExportError(
                f"INT8 model agrees with FP32 on only {agreement:.2%} of {source} (< min_agreement "
                f"{min_agreement:.0%}) even with {', '.join(attempts[-1]) or 'nothing'} kept in FP32; nothing was "
                "written. Try calib_method='percentile' or 'entropy', more exclusions, or a lower min_agreement")
        qinfo["attempts"] = tried
        if len(tried) > 1:
            qinfo["fallback_reason"] = (f"full quantization agreed with FP32 on {tried[0]['agreement_with_fp32']:.2%} "
                                        f"< {min_agreement:.0%}; kept {', '.join(attempts[len(tried) - 1])} in FP32")
        chk8 = compare_logits(ref, l8, None)
        latency = None
        if measure:
            say(f"timing FP32 and INT8 side by side on {spec32.name}")
            lat = measure_side_by_side({"fp32": (t32, spec32), "int8": (t8, spec8)}, time_cap_s=time_cap_s)
            latency = {"device": spec32.name, "fp32": lat["fp32"], "int8": lat["int8"],
                       "int8_over_fp32": lat["int8"]["median_ms"] / lat["fp32"]["median_ms"],
                       "speedup": lat["fp32"]["median_ms"] / lat["int8"]["median_ms"],
                       "method": ("both models loaded, measured in interleaved rounds; INT8 timed paired with FP32 "
                                  "(median per-inference ratio)" if "over_first" in lat["int8"] else
                                  "both models loaded, measured in interleaved rounds (median of round medians)")}
        accuracy = {"split": source, "top1_pytorch": top1(ref, labels), "top1_fp32": top1(l32, labels),
                    "top1_int8": top1(l8, labels), "agreement_int8_vs_fp32": agreement,
                    "min_agreement": min_agreement if gated else None}
        if not gated:
            accuracy["note"] = "untrained (initial) weights: the agreement gate was not applied"
        common = dict(net=net, arch=a, batch=batch, shape=shape, check_inputs=source, recalibrated=recal,
                      command=command, dynamic_batch=dynamic_batch)
        extra = dict(manifest_extra or {})
        m32 = build_manifest(fmt="onnx", precision="fp32", check=chk32, optimize=opt_info,
                             accuracy={"split": source, "top1_pytorch": accuracy["top1_pytorch"],
                                       "top1": accuracy["top1_fp32"]},
                             latency=None if latency is None else latency["fp32"],
                             int8_model=str(out), **common, **extra)
        m8 = build_manifest(fmt="onnx-int8", precision="int8", check=chk8, optimize=opt_info,
                            quantization=dict(qinfo, calibration_data=cal_source), accuracy=accuracy,
                            latency=latency, fp32_model=str(fp32_path), **common, **extra)
        secs = round(time.perf_counter() - t0, 2)
        m32["export_seconds"] = m8["export_seconds"] = secs
        write_json(tm32, m32)
        write_json(tm8, m8)
    m32.update(path=str(fp32_path), manifest=str(m32_path))
    m8.update(path=str(out), manifest=str(m8_path), fp32=m32)
    return m8


def compare_fp32_int8(arch: Mapping[str, Any], supernet: str = "mbv3_fmnist", weights: str | None = None,
                      device: Any = DEFAULT_INT8_DEVICE, **options: Any) -> dict:
    """Export ``arch`` as FP32 and INT8 ONNX (in a temp dir) and compare them on ``device``.

    Returns ``latency_ratio`` (INT8 / FP32 median latency, measured side by side), ``speedup``,
    both medians, top-1 of both on the validation split, their top-1 agreement and the INT8 model's
    max abs error vs PyTorch.  ``options`` go to :func:`export_onnx_int8` (``calib_method``,
    ``exclude``, ``time_cap_s``, ``batch``, ...).
    """
    with tempfile.TemporaryDirectory(prefix="hwnas-int8-") as td:
        m = export_onnx_int8(arch, Path(td) / "model.int8.onnx", supernet, weights, device=device, **options)
    lat, acc, q = m["latency"], m["accuracy"], m["quantization"]
    return {
        "arch_id": m["arch_id"],
        "device": lat["device"],
        "latency_ratio": lat["int8_over_fp32"],
        "speedup": lat["speedup"],
        "fp32_ms": lat["fp32"]["median_ms"],
        "int8_ms": lat["int8"]["median_ms"],
        "top1_fp32": acc["top1_fp32"],
        "top1_int8": acc["top1_int8"],
        "agreement": acc["agreement_int8_vs_fp32"],
        "max_abs_err_int8_vs_pytorch": m["output_check"]["max_abs_err"],
        "max_abs_err_fp32_vs_pytorch": m["fp32"]["output_check"]["max_abs_err"],
        "excluded": sorted(q["excluded"]),
        "n_val": m["output_check"]["n_inputs"],
    }


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
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(cache_path.suffix + ".tmp")
        tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        tmp.replace(cache_path)
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
    from hwnas.export.api import (build_manifest, compare_logits, export_subnet, prepare, top1, torch_logits,
                                  val_data, write_json)
    from hwnas.export.onnx_export import atomic_outputs

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
        from hwnas.supernet.registry import get_config

        cfg = get_config(supernet)
        a0 = cfg.space.normalize(arch)
        input_shape = (batch, cfg.in_channels, a0["r"], a0["r"])
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
        onnx_manifest = export_subnet(arch, onnx_path, supernet, weights, fmt="onnx",
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
    shape = (net.config.in_channels, a["r"], a["r"])
    x, labels, source = val_data(net, a["r"])
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
                from hwnas.export.api import latency_entry

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


__all__ = [
    "CALIB_METHODS",
    "DEFAULT_INT8_DEVICE",
    "DEFAULT_MIN_AGREEMENT",
    "EXCLUDE_GROUPS",
    "FALLBACK_EXCLUDES",
    "TRT_PRECISIONS",
    "build_engine",
    "compare_fp32_int8",
    "default_fp32_path",
    "export_engine",
    "export_onnx_int8",
    "export_tensorrt",
    "is_qdq_model",
    "measure_side_by_side",
    "quantize_qdq",
    "resolve_excludes",
    "tensorrt_unavailable_reason",
    "trtexec_command",
]
