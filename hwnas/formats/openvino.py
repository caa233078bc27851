"""OpenVINO IR, FP32 or NNCF post-training INT8, verified on the validation split as OpenVINO runs it.

``openvino``
    ``OUT`` is the IR graph (``.xml``), with its weights beside it (``OUT`` with suffix ``.bin``) and the
    manifest ``OUT.json``; all three are written, or none.  The FP32 ONNX model is exported and checked
    against PyTorch exactly as for ``--format onnx`` (into a scratch directory, not shipped), converted
    with OpenVINO's ONNX frontend (``Core.read_model``: the same model as ``openvino.convert_model``, which
    sends usage telemetry unless the user opted out) and saved with FP32 weights (``compress_to_fp16=False``).  For
    ``precision="int8"`` it is quantized with NNCF (``nncf.quantize``, the ``performance`` preset:
    symmetric INT8 weights and activations, FakeQuantize nodes in the IR) on the family's calibration
    images.  The IR itself, run by OpenVINO on the CPU in f32 inference precision, is then checked on
    the whole validation split: FP32 against PyTorch (max abs error <= ``tolerance``), INT8 by its top-1
    agreement with FP32 (gate ``min_agreement``, not applied to untrained ``init`` weights; below it NNCF
    is run once more with min-max activation ranges and no bias correction, see ``NNCF_ATTEMPTS``).  With
    ``device`` (an ``openvino`` device spec such as ``ov-cpu-1t``) the IR is timed there with the devices
    protocol; an INT8 IR is timed side by side with the FP32 IR it was quantized from (paired timing).
    Needs the ``openvino`` extra (``pip install 'hwnas[openvino]'``: openvino, and nncf for INT8).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from hwnas.errors import ExportError
from hwnas.formats import register_format
from hwnas.formats.common import (Progress, _check_options, build_manifest, compare_logits, export_verified_fp32,
                                  load_calibration, manifest_path, measure_onnx_latency, prepare, resolve_device,
                                  top1, val_data, write_json)
from hwnas.formats.onnx_int8 import DEFAULT_MIN_AGREEMENT, int8_vs_fp32_latency
from hwnas.io import atomic_outputs, job_tempdir

OV_PRECISIONS = ("fp32", "int8")
DEFAULT_OV_INT8_DEVICE = "ov-cpu-1t"
INSTALL_HINT = "pip install 'hwnas[openvino]'"
NNCF_PRESET = "performance"
MAX_CALIB_SUBSET = 300
# NNCF settings tried in turn while the INT8 IR agrees with FP32 on fewer than ``min_agreement`` of the
# validation images: NNCF's defaults, then min-max activation ranges without fast bias correction (on the
# shipped mbv3_fmnist's smallest subnet: 95.7% agreement, then 98.2%; ONNX Runtime QDQ: 98.9%)
NNCF_ATTEMPTS = ({"minmax_activations": False, "fast_bias_correction": True},
                 {"minmax_activations": True, "fast_bias_correction": False})
# the output check runs the IR on one CPU thread in f32, whatever the CPU's default (bf16 where it has it)
CHECK_CONFIG = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32"}


def openvino_missing(precision: str = "fp32") -> str | None:
    """Why ``--format openvino`` at ``precision`` cannot run here (openvino, or nncf for INT8, missing), or ``None``."""
    need = ("openvino", "nncf") if precision == "int8" else ("openvino",)
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    what = " and ".join(missing)
    return (f"--format openvino{' (int8)' if precision == 'int8' else ''} needs {what}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed here; {INSTALL_HINT}")


def ir_paths(out: str | Path) -> tuple[Path, Path]:
    """The IR graph ``m.xml`` and its weights ``m.bin``; ``ExportError`` for an ``out`` not named ``.xml``."""
    out = Path(out)
    if out.suffix.lower() != ".xml":
        raise ExportError(f"--format openvino writes an OpenVINO IR: name it {out.with_suffix('.xml')} (its weights "
                          f"go beside it as {out.with_suffix('.bin').name})")
    return out, out.with_suffix(".bin")


def ir_logits(path: str | Path, x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Logits of the IR at ``path`` run by OpenVINO (CPU, ``CHECK_CONFIG``) for all of ``x``, in the IR's own
    batch size (a static batch is fed batches of its size, the last one zero-padded; a dynamic one 250 at a
    time), so the file checked is the file shipped."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    dim0 = model.inputs[0].get_partial_shape()[0]
    bs = dim0.get_length() if dim0.is_static else 250
    compiled = core.compile_model(model, "CPU", CHECK_CONFIG)
    req = compiled.create_infer_request()
    xs = np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x), dtype=np.float32)
    outs = []
    for start in range(0, len(xs), bs):
        xb = xs[start:start + bs]
        k = len(xb)
        if k < bs and dim0.is_static:
            xb = np.concatenate([xb, np.zeros((bs - k, *xb.shape[1:]), np.float32)])
        req.infer({0: xb}, share_outputs=True)
        outs.append(np.array(req.get_output_tensor(0).data[:k]))
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@contextlib.contextmanager
def _nncf_quiet() -> Iterator[None]:
    """NNCF's progress bars (rich, on stdout) dropped and its log (also on stdout) moved to stderr at WARNING,
    so stdout stays the CLI's (``--json``); NNCF's logger is put back as it was afterwards."""
    from nncf.common.logging.logger import nncf_logger

    handlers = [h for h in nncf_logger.handlers if type(h) is logging.StreamHandler]
    saved = [(h, h.stream, h.level) for h in handlers]
    level = nncf_logger.level
    try:
        nncf_logger.setLevel(logging.WARNING)
        for h in handlers:
            h.setStream(sys.stderr)
            h.setLevel(logging.WARNING)
        with open(os.devnull, "w", encoding="utf-8") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        nncf_logger.setLevel(level)
        for h, stream, lvl in saved:
            h.setStream(stream)
            h.setLevel(lvl)


def quantize_nncf(model: Any, calib: torch.Tensor | np.ndarray, batch: int | None, *, minmax_activations: bool = False,
                  fast_bias_correction: bool = True) -> tuple[Any, dict]:
    """NNCF post-training quantization of the OpenVINO ``model`` on ``calib`` (normalized NCHW images), fed
    ``batch`` images at a time (the model's static batch; ``None``: one at a time for a dynamic batch) and
    on at most ``MAX_CALIB_SUBSET`` of those batches.  ``minmax_activations``: activation ranges from the
    min and max over the calibration set (NNCF's default averages per-batch ranges, which clips);
    ``fast_bias_correction``: NNCF's bias correction step."""
    import nncf

    xs = np.ascontiguousarray(calib.numpy() if isinstance(calib, torch.Tensor) else np.asarray(calib), np.float32)
    step = batch or 1
    items = [xs[i:i + step] for i in range(0, len(xs) - step + 1, step)]
    if not items:
        raise ExportError(f"INT8 calibration needs at least {step} images (one batch of the model); got {len(xs)}")
    subset = min(MAX_CALIB_SUBSET, len(items))
    advanced = None
    if minmax_activations:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    t0 = time.perf_counter()
    try:
        with _nncf_quiet():
            q = nncf.quantize(model, nncf.Dataset(items[:subset], lambda a: a),
                              preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=subset, model_type=None,
                              fast_bias_correction=fast_bias_correction, advanced_parameters=advanced)
    except Exception as exc:  # NNCF raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"NNCF INT8 quantization failed: {first[:200]}") from exc
    ops: dict[str, int] = {}
    for op in q.get_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
    return q, {
        "tool": f"nncf {nncf.__version__}",
        "method": "post-training quantization (nncf.quantize)",
        "preset": NNCF_PRESET,
        "model_type": None,
        "target_device": "ANY",
        "activations_range": "minmax" if minmax_activations else "nncf default",
        "fast_bias_correction": fast_bias_correction,
        "weights": "int8 symmetric, per output channel",
        "activations": "int8 per tensor, symmetric (performance preset)",
        "calibration_images": int(subset * step),
        "subset_size": subset,
        "n_fake_quantize": ops.get("FakeQuantize", 0),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def onnx_to_ir(onnx_path: str | Path, dst: str | Path, calib: Any = None, batch: int = 1,
               nncf_settings: Mapping[str, Any] | None = None) -> dict:
    """OpenVINO IR (FP32 weights) of the FP32 ONNX model at ``onnx_path``, written to ``dst``; NNCF-quantized on
    ``calib`` with ``nncf_settings`` (one of ``NNCF_ATTEMPTS``) when given.  Returns what was done."""
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))  # the ONNX frontend; convert_model would send telemetry
    info: dict = {"converter": f"openvino Core.read_model (ONNX frontend) {ov.__version__}", "compress_to_fp16": False}
    if calib is not None:
        model, qinfo = quantize_nncf(model, calib, batch, **(nncf_settings or {}))
        info.update(qinfo)
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return info


@register_format("openvino", precisions=OV_PRECISIONS)
def export_openvino(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None, *,
                    batch: int = 1, command: str | None = None, dynamic_batch: bool = False,
                    optimize: bool = True, tolerance: float = 1e-4, precision: str | None = None,
                    device: Any = None, measure: bool = True, time_cap_s: float | None = None,
                    calibration: str | Path | None = None, calib_images: int | None = None,
                    min_agreement: float = DEFAULT_MIN_AGREEMENT, progress: Progress | None = None,
                    manifest_extra: Mapping[str, Any] | None = None, **options: Any) -> dict:
    """OpenVINO IR ``out`` (``.xml`` + ``.bin``), FP32 or NNCF INT8 (``precision``), verified as OpenVINO runs it.

    FP32: the IR's logits on the validation split within ``tolerance`` of PyTorch.  INT8: top-1 of the IR,
    its agreement with FP32 (``min_agreement``, skipped for untrained ``init`` weights) and its max abs error
    vs PyTorch.  ``device``: an ``openvino`` device spec to time the IR on (FP32 default: not timed; INT8
    default ``ov-cpu-1t``, INT8 and FP32 IRs side by side, unless ``measure=False``).  ``calib_images`` caps
    the calibration images (NNCF uses at most 300).  Writes ``out``, its ``.bin`` and ``out.json``, or nothing.
    """
    _check_options("--format openvino", options)
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    precision = precision or "fp32"
    if precision not in OV_PRECISIONS:
        raise ExportError(f"OpenVINO precision {precision!r} is not one of {', '.join(OV_PRECISIONS)}")
    xml_out, bin_out = ir_paths(out)
    missing = openvino_missing(precision)
    if missing:
        raise ExportError(missing)
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"min_agreement must be within [0, 1]; got {min_agreement}")
    if calib_images is not None and calib_images < 1:
        raise ExportError(f"calib_images must be >= 1; got {calib_images}")
    int8 = precision == "int8"
    spec32 = spec = None
    if measure and (device is not None or int8):
        dev = DEFAULT_OV_INT8_DEVICE if device is None else device
        spec32 = resolve_device(dev, batch, "fp32")
        if spec32.backend != "openvino":
            raise ExportError(f"device {spec32.name!r} uses backend {spec32.backend!r}; --format openvino is timed on "
                              "a device with backend 'openvino' (e.g. --device ov-cpu-1t)")
        spec = resolve_device(spec32, batch, precision)
    import openvino as ov

    from hwnas.devices.backends.openvino import openvino_version

    say("extracting the subnet and recalibrating BN")
    net, a, sub, recal = prepare(supernet, weights, arch, calibration)
    shape = net.family.input_shape(a)
    cal = None
    if int8:
        cal = load_calibration(net, shape[-1], calibration)
        if cal is None:
            raise ExportError(f"INT8 calibration needs real images and supernet {net.family.name!r} has no shipped "
                              "calibration set: pass its images with --data DIR (an image folder, train/val folders "
                              "or an .npz)")
        if calib_images is not None:
            cal = cal[:calib_images]
    x, labels, source = val_data(net, shape[-1], calibration)
    man_out = manifest_path(xml_out)
    with job_tempdir("hwnas-openvino-") as td, atomic_outputs(xml_out, bin_out, man_out) as (t_xml, t_bin, t_man):
        onnx32 = td / "model.onnx"
        opt_info, ref, l32, chk32 = export_verified_fp32(sub, onnx32, shape, batch, dynamic_batch, optimize, x,
                                                         source, tolerance, "FP32 ONNX model", say)
        say("converting the ONNX model to OpenVINO IR")
        model = ov.Core().read_model(str(onnx32))
        ir32 = td / "fp32.xml"
        ov.save_model(model, str(ir32), compress_to_fp16=False)  # FP32 weights: the default would halve them
        gated = net.weights_hash != "init"  # untrained weights: near-tied logits make agreement meaningless
        accuracy: dict[str, Any] = {"split": source, "top1_pytorch": top1(ref, labels)}
        qinfo: dict | None = None
        if not int8:
            say(f"checking the OpenVINO IR against PyTorch on {source}")
            ir = ir32
            got = ir_logits(ir, x)
            check = compare_logits(ref, got, tolerance)
            if not check.passed:
                raise ExportError(f"OpenVINO IR disagrees with PyTorch: max abs error {check.max_abs_err:.2e} > "
                                  f"tolerance {tolerance:.0e}; nothing was written")
            accuracy["top1"] = top1(got, labels)
        else:
            ir = td / "int8.xml"
            tried: list[dict] = []
            for settings in NNCF_ATTEMPTS if gated else NNCF_ATTEMPTS[:1]:
                say(f"quantizing with NNCF ({NNCF_PRESET} preset, "
                    f"{'min-max activation ranges, no bias correction' if settings['minmax_activations'] else 'defaults'}"
                    f", {len(cal) if dynamic_batch else min(len(cal), MAX_CALIB_SUBSET * batch)} calibration images)")
                qmodel, qinfo = quantize_nncf(model, cal, None if dynamic_batch else batch, **settings)
                ov.save_model(qmodel, str(ir), compress_to_fp16=False)
                say(f"evaluating the INT8 IR on {source}")
                got = ir_logits(ir, x)
                agreement = float((got.argmax(1) == l32.argmax(1)).mean())
                tried.append({"activations_range": qinfo["activations_range"],
                              "fast_bias_correction": qinfo["fast_bias_correction"],
                              "agreement_with_fp32": agreement, "top1": top1(got, labels)})
                if not gated or agreement >= min_agreement:
                    break
            else:
                raise ExportError(
                    f"INT8 IR agrees with FP32 on only {agreement:.2%} of {source} (< min_agreement "
                    f"{min_agreement:.0%}) with NNCF's defaults and with min-max activation ranges; nothing was "
                    "written. Try more calibration images (--data) or a lower min_agreement")
            assert qinfo is not None
            qinfo["attempts"] = tried
            if len(tried) > 1:
                qinfo["fallback_reason"] = (f"NNCF's defaults agreed with FP32 on {tried[0]['agreement_with_fp32']:.2%} "
                                            f"< {min_agreement:.0%}; min-max activation ranges without bias "
                                            "correction were used")
            qinfo["calibration_data"] = (f"{calibration} ({qinfo['calibration_images']} images)" if calibration
                                         is not None else f"fashion-mnist calib ({qinfo['calibration_images']} images)")
            check = compare_logits(ref, got, None)
            accuracy.update(top1_fp32=top1(l32, labels), top1_int8=top1(got, labels), agreement_int8_vs_fp32=agreement,
                            max_abs_err_int8_vs_pytorch=check.max_abs_err, min_agreement=min_agreement if gated else None)
            if not gated:
                accuracy["note"] = "untrained (initial) weights: the agreement gate was not applied"
        latency = None
        if spec is not None and spec32 is not None:
            if int8:
                say(f"timing the FP32 and INT8 IRs side by side on {spec.name}")
                latency = int8_vs_fp32_latency((ir32, spec32), (ir, spec), time_cap_s,
                                               "FP32 IR (not written) and INT8 IR")
            else:
                say(f"measuring latency on {spec.name}")
                latency = measure_onnx_latency(ir, spec, time_cap_s)
        shutil.copyfile(ir, t_xml)
        shutil.copyfile(ir.with_suffix(".bin"), t_bin)
        runtime = {"name": "openvino", "version": openvino_version(), "check_device": "CPU", "check_config": CHECK_CONFIG}
        extra: dict[str, Any] = dict(manifest_extra or {})
        if qinfo is not None:
            extra["quantization"] = qinfo
        manifest = build_manifest(net, a, fmt="openvino", precision=precision, batch=batch, shape=shape, check=check,
                                  check_inputs=source, recalibrated=recal, optimize=opt_info, command=command,
                                  dynamic_batch=dynamic_batch, accuracy=accuracy, latency=latency, runtime=runtime,
                                  weights_file=bin_out.name, compress_to_fp16=False,
                                  onnx_check=dict(chk32.to_dict(), inputs=source), **extra)
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(t_man, manifest)
    manifest["path"] = str(xml_out)
    manifest["manifest"] = str(man_out)
    return manifest
