"""``--format onnx``: FP32 ONNX, optimized with onnxslim, checked against PyTorch on the validation split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from hwnas.errors import ExportError
from hwnas.formats import register_format
from hwnas.formats.common import (Progress, build_manifest, export_verified_fp32, measure_onnx_latency, prepare,
                                  resolve_device, top1, val_data, write_json)
from hwnas.io import atomic_outputs


@register_format("onnx", precisions=("fp32",))
def export_onnx_fp32(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None, *,
                     batch: int = 1, dynamic_batch: bool = False, optimize: bool = True, tolerance: float = 1e-4,
                     command: str | None = None, device: Any = None, calibration: str | Path | None = None,
                     time_cap_s: float | None = None, progress: Progress | None = None,
                     manifest_extra: Mapping[str, Any] | None = None, **options: Any) -> dict:
    """FP32 ONNX checked against PyTorch on the whole validation split (max abs error <= ``tolerance``,
    top-1 agreement, top-1 vs labels).  With ``device`` (a device name such as ``ort-cpu-1t``, a spec
    file or a ``DeviceSpec``) its latency there is measured and recorded in the manifest (the device must
    be runnable here, checked before any work).  Writes ``out`` and ``out.json`` or nothing."""
    if options:
        raise ExportError(f"option(s) {', '.join(sorted(options))} do not apply to --format onnx")
    say = progress or (lambda msg: None)
    out = Path(out)
    t0 = time.perf_counter()
    spec = resolve_device(device, batch) if device is not None else None
    say("extracting the subnet and recalibrating BN")
    net, a, sub, recal = prepare(supernet, weights, arch, calibration)
    shape = net.family.input_shape(a)
    x, labels, source = val_data(net, shape[-1], calibration)
    manifest_path = out.with_name(out.name + ".json")
    with atomic_outputs(out, manifest_path) as (tmp_model, tmp_manifest):
        opt_info, ref, got, check = export_verified_fp32(sub, tmp_model, shape, batch, dynamic_batch, optimize, x,
                                                         source, tolerance, "exported model", say)
        latency = None
        if spec is not None:
            say(f"measuring latency on {spec.name}")
            latency = measure_onnx_latency(tmp_model, spec, time_cap_s)
        manifest = build_manifest(net, a, fmt="onnx", precision="fp32", batch=batch, shape=shape,
                                  check=check, check_inputs=source, recalibrated=recal, optimize=opt_info,
                                  command=command, dynamic_batch=dynamic_batch,
                                  accuracy={"split": source, "top1_pytorch": top1(ref, labels),
                                            "top1": top1(got, labels)},
                                  latency=latency, **dict(manifest_extra or {}))
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(tmp_manifest, manifest)
    manifest["path"] = str(out)
    manifest["manifest"] = str(manifest_path)
    return manifest
