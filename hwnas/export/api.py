"""``hwnas export``: extract a subnet, recalibrate BN, export, optimize, check, write a manifest."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from hwnas.errors import ExportError
from hwnas.export.onnx_export import OutputCheck, atomic_output, check_onnx, export_onnx
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


def calib_batches(supernet, resolution: int) -> list[torch.Tensor] | None:
    if supernet.config.dataset != "fashion-mnist":
        return None
    from hwnas.data.fashion_mnist import load_split, to_tensor

    imgs, _ = load_split("calib")
    return list(to_tensor(imgs, resolution).split(500))


def prepare(supernet_name: str, weights: str | None, arch: Mapping[str, Any]):
    """Build the supernet, extract ``arch`` and recalibrate its BN (when calibration data exists)."""
    from hwnas.supernet.bn import recalibrate_bn

    net = create_supernet(supernet_name, weights=weights)
    a = net.space.normalize(arch)
    sub = net.extract(a).eval()
    cal = calib_batches(net, a["r"])
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


def export_subnet(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None,
                  fmt: str = "onnx", batch: int = 1, dynamic_batch: bool = False, optimize: bool = True,
                  tolerance: float = 1e-4, command: str | None = None) -> dict:
    """Export and verify; writes ``out`` and ``out`` + ``.json`` (the manifest) or nothing at all."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt != "onnx":
        from hwnas.export.engines import export_engine  # INT8 / TensorRT paths

        return export_engine(arch, out, supernet, weights, fmt, batch=batch, command=command)
    out = Path(out)
    t0 = time.perf_counter()
    net, a, sub, recal = prepare(supernet, weights, arch)
    shape = (net.config.in_channels, a["r"], a["r"])
    x, source = real_inputs(net, a["r"])
    manifest_path = out.with_name(out.name + ".json")
    with atomic_output(out) as tmp_final:
        raw = tmp_final.with_name(tmp_final.name + ".raw.onnx")
        try:
            export_onnx(sub, raw, shape, batch=batch, dynamic_batch=dynamic_batch)
            opt_info = optimize_onnx(raw, tmp_final) if optimize else None
            if not optimize:
                raw.replace(tmp_final)
        finally:
            raw.unlink(missing_ok=True)
        check = check_onnx(tmp_final, sub, x, tolerance=tolerance, batch_size=batch)
        if not check.passed:
            raise ExportError(f"exported model disagrees with PyTorch: max abs error {check.max_abs_err:.2e} "
                              f"> tolerance {tolerance:.0e}; nothing was written")
        manifest = build_manifest(net, a, fmt="onnx", precision="fp32", batch=batch, shape=shape,
                                  check=check, check_inputs=source, recalibrated=recal, optimize=opt_info,
                                  command=command, dynamic_batch=dynamic_batch)
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        _write_json_atomic(manifest_path, manifest)
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


def _write_json_atomic(path: Path, obj: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o).__name__)
