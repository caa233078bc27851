"""``hwnas export``: extract a subnet, recalibrate BN, export, optimize, check, write a manifest."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from hwnas.errors import DataError, DeviceUnavailableError, ExportError
from hwnas.export.onnx_export import (INPUT_NAME, OUTPUT_NAME, OutputCheck, atomic_output, atomic_outputs,
                                      export_onnx, load_session)
from hwnas.supernet.registry import create_supernet

FORMATS = ("onnx", "onnx-int8", "tensorrt")


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "onnxslim", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def real_inputs(supernet, resolution: int, split: str = "val", n: int = 1000) -> tuple[torch.Tensor, str]:
    """Real images for checks where the family has a shipped dataset; random inputs otherwise."""
    if supernet.config.dataset == "fashion-mnist":
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, _ = load_split(split)
        return to_tensor(imgs[:n], resolution), f"fashion-mnist {split} ({min(n, len(imgs))} images)"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(min(n, 16), supernet.config.in_channels, resolution, resolution, generator=g)
    return x, "random normal inputs (no shipped dataset for this family)"


def load_calibration(supernet, resolution: int, calibration: str | Path | None = None) -> torch.Tensor | None:
    """Calibration images (for BN recalibration and INT8 activation ranges) as a normalized tensor.

    ``calibration`` is a directory holding ``calib.npz`` (like the shipped ``calibration_data/``) or an
    ``.npz`` file whose ``images`` array is either uint8 ``[N, H, W]`` (grayscale, resized and normalized
    like the family's dataset) or float32 ``[N, C, r, r]`` already normalized.  ``None``: the family's
    shipped ``calib`` split (Fashion-MNIST), or ``None`` for families without one.
    """
    if calibration is None:
        if supernet.config.dataset != "fashion-mnist":
            return None
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, _ = load_split("calib")
        return to_tensor(imgs, resolution)
    p = Path(calibration).expanduser()
    f = p / "calib.npz" if p.is_dir() else p
    if not f.is_file():
        where = f"directory {p} has no calib.npz" if p.is_dir() else f"{p} does not exist"
        raise DataError(f"calibration data not found: {where}; pass a directory with calib.npz or an .npz file")
    try:
        with np.load(f, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(f"calibration file {f} has no 'images' array (it has: {', '.join(z.files) or 'nothing'})")
            imgs = z["images"]
    except DataError:
        raise
    except Exception as exc:  # zipfile / OSError / ValueError for a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"calibration file {f} is unreadable or corrupt ({first[:160]})") from None
    c = supernet.config
    if imgs.dtype == np.uint8 and imgs.ndim == 3 and c.in_channels == 1 and len(imgs):
        from hwnas.data.fashion_mnist import to_tensor

        return to_tensor(imgs, resolution)  # Fashion-MNIST's normalization: the only 1-channel family
    want = (c.in_channels, resolution, resolution)
    if imgs.dtype == np.float32 and imgs.ndim == 4 and tuple(imgs.shape[1:]) == want and len(imgs):
        return torch.from_numpy(np.ascontiguousarray(imgs))
    raise DataError(f"calibration file {f} holds {imgs.dtype} images of shape {tuple(imgs.shape)}; expected uint8 "
                    f"[N, H, W] (1-channel families) or float32 [N, {want[0]}, {want[1]}, {want[2]}], normalized")


def calib_batches(supernet, resolution: int, calibration: str | Path | None = None) -> list[torch.Tensor] | None:
    x = load_calibration(supernet, resolution, calibration)
    return None if x is None else list(x.split(500))


def prepare(supernet_name: str, weights: str | None, arch: Mapping[str, Any],
            calibration: str | Path | None = None):
    """Build the supernet, extract ``arch`` and recalibrate its BN (when calibration data exists).

    Freshly initialized weights (``weights_hash == "init"``) are not recalibrated: their statistics
    carry no information, and latency work does not need it.
    """
    from hwnas.supernet.bn import recalibrate_bn

    net = create_supernet(supernet_name, weights=weights)
    a = net.space.normalize(arch)
    sub = net.extract(a).eval()
    cal = calib_batches(net, a["r"], calibration)
    recalibrated = False
    if cal is not None and net.weights_hash != "init":
        recalibrate_bn(sub, cal)
        recalibrated = True
    return net, a, sub.eval(), recalibrated


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


Progress = Callable[[str], None]


def val_data(supernet, resolution: int) -> tuple[torch.Tensor, np.ndarray | None, str]:
    """The whole validation split (5,000 Fashion-MNIST images) with labels; random inputs otherwise."""
    if supernet.config.dataset == "fashion-mnist":
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, labels = load_split("val")
        return to_tensor(imgs, resolution), np.asarray(labels), f"fashion-mnist val ({len(imgs)} images)"
    x, source = real_inputs(supernet, resolution, "val")
    return x, None, source


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
    return None if labels is None else float((logits.argmax(1) == labels).mean())


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
    m = measurement
    fp = fingerprint or {}
    host = fp.get("host", {})
    return {
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


def export_subnet(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None,
                  fmt: str = "onnx", batch: int = 1, dynamic_batch: bool = False, optimize: bool = True,
                  tolerance: float = 1e-4, command: str | None = None, device: Any = None,
                  calibration: str | Path | None = None, time_cap_s: float | None = None,
                  progress: Progress | None = None, manifest_extra: Mapping[str, Any] | None = None,
                  **engine_options: Any) -> dict:
    """Export and verify; writes ``out`` and ``out`` + ``.json`` (the manifest) or nothing at all.

    ``fmt="onnx"``: FP32 ONNX, optimized with onnxslim, checked against PyTorch on the whole validation
    split (max abs error <= ``tolerance``, top-1 agreement, top-1 vs labels).  With ``device`` (a
    device name such as ``ort-cpu-1t``, a spec file or a ``DeviceSpec``) its latency there is measured
    and recorded in the manifest (the device must be runnable here, checked before any work).
    Other formats go to :func:`hwnas.export.engines.export_engine`, which takes ``engine_options``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch must be a positive int; got {batch!r}")
    precision = engine_options.get("precision")
    if fmt != "tensorrt" and precision is not None:
        implied = "int8" if fmt == "onnx-int8" else "fp32"
        if precision != implied:
            raise ExportError(f"precision {precision!r} does not apply to --format {fmt} (it is {implied}); "
                              "--fp16/--int8 choose the precision of --format tensorrt")
        engine_options.pop("precision")
    if fmt != "onnx":
        from hwnas.export.engines import export_engine  # INT8 / TensorRT paths

        return export_engine(arch, out, supernet, weights, fmt, batch=batch, command=command,
                             dynamic_batch=dynamic_batch, optimize=optimize, tolerance=tolerance, device=device,
                             calibration=calibration, time_cap_s=time_cap_s, progress=progress, **engine_options)
    if engine_options:
        raise ExportError(f"option(s) {', '.join(sorted(engine_options))} do not apply to --format onnx")
    say = progress or (lambda msg: None)
    out = Path(out)
    t0 = time.perf_counter()
    spec = resolve_device(device, batch) if device is not None else None
    say("extracting the subnet and recalibrating BN")
    net, a, sub, recal = prepare(supernet, weights, arch, calibration)
    shape = (net.config.in_channels, a["r"], a["r"])
    x, labels, source = val_data(net, a["r"])
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


def build_manifest(net, arch: dict, fmt: str, precision: str, batch: int, shape: tuple, check: OutputCheck | None,
                   check_inputs: str, recalibrated: bool, optimize: dict | None, command: str | None,
                   dynamic_batch: bool = False, **extra) -> dict:
    c = net.config
    m = {
        "format": fmt,
        "precision": precision,
        "arch": arch,
        "arch_id": net.space.arch_id(arch),
        "supernet": c.name,
        "weights": net.weights_path,
        "weights_sha256_16": net.weights_hash,
        "input": {"name": "input", "shape": ["batch" if dynamic_batch else batch, *shape], "dtype": "float32",
                  "layout": "NCHW", "resize_to": arch["r"], "mean": list(c.mean), "std": list(c.std),
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


def write_json(path: Path, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _write_json_atomic(path: Path, obj: dict) -> None:
    with atomic_output(path) as tmp:
        write_json(tmp, obj)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
