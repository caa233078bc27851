"""What every export format shares: preparing the subnet, the FP32 ONNX build and its check against
PyTorch, logits on ONNX Runtime, device resolution and latency records, manifests and paths."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from hwnas.data.calibration import load_calibration as _load_calibration
from hwnas.data.calibration import validation_data
from hwnas.errors import DeviceUnavailableError, ExportError
from hwnas.formats.onnx_export import INPUT_NAME, OUTPUT_NAME, OutputCheck, export_onnx, load_session
from hwnas.io import atomic_write_json
from hwnas.supernet.registry import create_supernet

Progress = Callable[[str], None]
NO_RECALIBRATION = "none"  # ``calibration="none"`` (``--calibration none``): keep the supernet's BN statistics


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "onnxslim", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def load_calibration(supernet, resolution: int, calibration: str | Path | None = None) -> torch.Tensor | None:
    """The calibration images of ``supernet``'s family at ``resolution`` (see ``hwnas.data.calibration``);
    ``None`` for ``calibration="none"``."""
    if str(calibration) == NO_RECALIBRATION:
        return None
    return _load_calibration(supernet.family, resolution, calibration)


def prepare(supernet_name: str, weights: str | None, arch: Mapping[str, Any],
            calibration: str | Path | None = None):
    """Build the supernet and extract ``arch`` for deployment (normalization recalibrated on
    ``calibration``, or on the family's shipped images; see ``SupernetModule.extract``).

    Freshly initialized weights (``weights_hash == "init"``) are not recalibrated: their statistics
    carry no information, and latency work does not need it.  Trained weights of a family without
    shipped calibration images need ``calibration`` (images, or ``"none"`` to export the weight-sharing
    statistics on purpose; the manifest then says ``bn_recalibrated: false``).
    """
    net = create_supernet(supernet_name, weights=weights)
    a = net.space.normalize(arch)
    if str(calibration) == NO_RECALIBRATION:
        source: Any = None
    else:
        source = "auto" if calibration is None else calibration
    sub = net.extract(a, calibration=source)
    return net, a, sub.eval(), bool(sub.recalibrated)


def optimize_onnx(src: Path, dst: Path) -> dict:
    """Graph optimization with onnxslim (constant folding, BN/Conv fusion, shape inference)."""
    import onnx
    import onnxslim

    model = onnx.load(str(src))
    n_before = len(model.graph.node)
    slim = onnxslim.slim(model)
    onnx.checker.check_model(slim, full_check=True)
    onnx.save(slim, str(dst))
    return {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": n_before, "nodes_after": len(slim.graph.node)}


def val_data(supernet, resolution: int, data: Any = None) -> tuple[torch.Tensor, np.ndarray | None, str]:
    """Validation images with labels for the export checks: the validation images of ``data`` (the
    ``--data`` dataset, when it is labelled), else the family's shipped split (5,000 Fashion-MNIST
    images), else random inputs without labels."""
    if data is not None and str(data) == NO_RECALIBRATION:
        data = None
    return validation_data(supernet.family, resolution, data)


@torch.no_grad()
def torch_logits(module: torch.nn.Module, x: torch.Tensor, batch_size: int = 250) -> np.ndarray:
    module = module.eval()
    return torch.cat([module(xb.contiguous()) for xb in x.split(batch_size)]).float().numpy()


def onnx_logits(path: str | Path, x: torch.Tensor | np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of the ONNX model at ``path`` (ORT CPU) for all of ``x``, in the model's own batch size.

    A static-batch model is fed batches of its size (the last one zero-padded), so the file checked
    is exactly the file shipped.
    """
    sess = load_session(path, threads=threads)
    dim0 = sess.get_inputs()[0].shape[0]
    xs = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    xs = np.ascontiguousarray(xs, dtype=np.float32)
    bs = dim0 if isinstance(dim0, int) and dim0 > 0 else 250
    outs = []
    for start in range(0, len(xs), bs):
        xb = xs[start:start + bs]
        k = len(xb)
        if k < bs and isinstance(dim0, int):
            xb = np.concatenate([xb, np.zeros((bs - k, *xb.shape[1:]), np.float32)])
        outs.append(sess.run([OUTPUT_NAME], {INPUT_NAME: xb})[0][:k])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def compare_logits(ref: np.ndarray, got: np.ndarray, tolerance: float | None) -> OutputCheck:
    """Max/mean abs error and top-1 agreement of ``got`` against ``ref`` (``tolerance`` None: no gate)."""
    d = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    max_err = float(d.max()) if d.size else 0.0
    agree = float((ref.argmax(1) == got.argmax(1)).mean()) if len(ref) else 1.0
    passed = tolerance is None or max_err <= tolerance
    return OutputCheck(max_abs_err=max_err, mean_abs_err=float(d.mean()) if d.size else 0.0, n_inputs=len(ref),
                       top1_agreement=agree, tolerance=tolerance, passed=passed)  # type: ignore[arg-type]


def top1(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Top-1 against ``labels`` (over the dataset's own classes: ``hwnas.data.images.ClassLabels``)."""
    from hwnas.data.images import top1_of

    return None if labels is None else top1_of(logits, labels)


def build_fp32_onnx(sub: torch.nn.Module, dst: Path, shape: tuple, batch: int, dynamic_batch: bool,
                    optimize: bool) -> dict | None:
    """Export ``sub`` to ``dst`` (an already reserved temp path) and optimize it; returns the optimizer info."""
    raw = dst.with_name(dst.name + ".raw.onnx")
    try:
        export_onnx(sub, raw, shape, batch=batch, dynamic_batch=dynamic_batch)
        if optimize:
            return optimize_onnx(raw, dst)
        raw.replace(dst)
        return None
    finally:
        raw.unlink(missing_ok=True)


def export_verified_fp32(sub: torch.nn.Module, dst: Path, shape: tuple, batch: int, dynamic_batch: bool,
                        optimize: bool, x: torch.Tensor, source: str, tolerance: float, what: str,
                        say: Callable[[str], None]) -> tuple[dict | None, np.ndarray, np.ndarray, OutputCheck]:
    """``build_fp32_onnx`` then the check against PyTorch on ``x`` (described as ``source``);
    ``ExportError`` naming ``what`` (e.g. "exported model") when they disagree beyond ``tolerance``.
    Returns the optimizer info, the PyTorch and the ONNX logits and the check."""
    say(f"exporting the {what} to ONNX")
    opt_info = build_fp32_onnx(sub, dst, shape, batch, dynamic_batch, optimize)
    say(f"checking the {what} against PyTorch on {source}")
    ref = torch_logits(sub, x)
    got = onnx_logits(dst, x)
    check = compare_logits(ref, got, tolerance)
    if not check.passed:
        raise ExportError(f"{what} disagrees with PyTorch: max abs error {check.max_abs_err:.2e} "
                          f"> tolerance {tolerance:.0e}; nothing was written")
    return opt_info, ref, got, check


def resolve_device(device, batch: int, precision: str | None = None):
    """The device spec ``device`` (name, path or ``DeviceSpec``) at ``batch`` (and ``precision``), checked
    to be runnable here: ``DeviceUnavailableError`` up front, before any work is done."""
    import dataclasses

    from hwnas.devices import DeviceSpec, load_device
    from hwnas.devices.backends import get_backend_class

    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    changes: dict[str, Any] = {"batch": batch}
    cls = get_backend_class(spec.backend)
    if precision is not None and precision in getattr(cls, "precisions", (precision,)):
        changes["precision"] = precision
    spec = dataclasses.replace(spec, **changes)
    reason = cls.unavailable_reason(spec)
    if reason:
        raise DeviceUnavailableError(f"device {spec.name!r} cannot run here: {reason}")
    return spec


def latency_entry(measurement: dict, spec, fingerprint: dict | None, runtime_cfg: str) -> dict:
    """The manifest's record of one latency measurement."""
    from hwnas.devices.protocol import SCALES

    m = measurement
    fp = fingerprint or {}
    host = fp.get("host", {})
    scale = m.get("scale") or ("anchored" if m.get("anchor_ratio") is not None else "isolated")
    return {
        "scale": scale,
        "how": SCALES.get(scale, scale),
        "device": spec.name,
        "backend": spec.backend,
        "batch": spec.batch,
        "precision": spec.precision,
        "median_ms": m["median_ms"],
        "p90_ms": m["p90_ms"],
        "ci95_ms": [m["ci_low_ms"], m["ci_high_ms"]],
        "n": m["n"],
        "converged": m["converged"],
        "stop_reason": m["stop_reason"],
        "runtime_config": runtime_cfg,
        "fingerprint": fp.get("fp_hash"),
        "host": {k: host.get(k) for k in ("cpu_model", "physical_cores", "usable_cpus", "gpu", "hostname")
                 if k in host},
    }


def measure_onnx_latency(path: Path, spec, time_cap_s: float | None = None) -> dict:
    """Latency of one ONNX file on ``spec`` (the devices protocol, via ``profile_onnx_file``)."""
    from hwnas.devices import profile_onnx_file

    r = profile_onnx_file(path, spec, time_cap_s=time_cap_s)
    return latency_entry(r["measurement"], spec, r.get("fingerprint"), r["runtime_config"])


def build_manifest(net, arch: dict, fmt: str, precision: str, batch: int, shape: tuple, check: OutputCheck | None,
                   check_inputs: str, recalibrated: bool, optimize: dict | None, command: str | None,
                   dynamic_batch: bool = False, **extra) -> dict:
    c = net.family
    m = {
        "format": fmt,
        "precision": precision,
        "arch": arch,
        "arch_id": net.space.arch_id(arch),
        "supernet": c.name,
        "weights": net.weights_path,
        "weights_sha256_16": net.weights_hash,
        "input": {"name": "input", "shape": ["batch" if dynamic_batch else batch, *shape], "dtype": "float32",
                  "layout": "NCHW", "resize_to": shape[-1], "mean": list(c.mean), "std": list(c.std),
                  "scale": "pixels/255, then (x - mean) / std"},
        "output": {"name": "logits", "classes": c.n_classes},
        "bn_recalibrated": recalibrated,
        "graph_optimization": optimize,
        "output_check": None if check is None else dict(check.to_dict(), inputs=check_inputs),
        "versions": _versions(),
        "command": command or " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    m.update(extra)
    return m


def write_json(path: str | Path, obj: Any) -> Path:
    """A manifest or arch file as indented JSON (numpy scalars and paths allowed), written atomically."""
    return atomic_write_json(path, obj, indent=2, default=_json_default)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


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


def _check_options(where: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ExportError(f"option(s) {', '.join(sorted(options))} do not apply to {where}")
