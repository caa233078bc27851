"""ONNX Runtime INT8: static QDQ quantization of the verified FP32 model.

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
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from hwnas.errors import ExportError
from hwnas.formats import register_format
from hwnas.formats.common import (Progress, _check_options, build_manifest, compare_logits, default_fp32_path, export_verified_fp32,
                                  latency_entry, load_calibration, manifest_path, onnx_logits, prepare, resolve_device,
                                  top1, val_data, write_json)
from hwnas.io import atomic_outputs

DEFAULT_INT8_DEVICE = "ort-cpu-1t"
CALIB_METHODS = ("minmax", "entropy", "percentile")
# Node groups every model has that can be kept in FP32 by name (``exclude``); a family adds its own
# (``SupernetFamily.node_groups``: group -> substring of node names); anything else is a node name or
# op type.  When full quantization agrees with FP32 on fewer than ``min_agreement`` of the validation
# images, the family's ``int8_fallback_excludes`` are tried in order.
EXCLUDE_GROUPS = ("classifier", "depthwise")
DEFAULT_MIN_AGREEMENT = 0.97


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


def resolve_excludes(model: Any, exclude: Sequence[str],
                     node_groups: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Map each ``exclude`` entry (a group of ``EXCLUDE_GROUPS`` or of ``node_groups``, an op type or a
    node name) to node names.

    An entry that matches no node is an ``ExportError`` naming the groups, so a typo is not ignored.
    """
    groups = dict(node_groups or {})
    inits = {t.name: t for t in model.graph.initializer}
    nodes = list(model.graph.node)
    out: dict[str, list[str]] = {}
    for e in exclude:
        if e == "classifier":
            pat = groups.get("classifier", "/classifier/")
            names = [n.name for n in nodes if pat in n.name or n.op_type in ("Gemm", "MatMul")]
        elif e == "depthwise":
            names = [n.name for n in nodes if _is_depthwise(n, inits)]
        elif e in groups:
            names = [n.name for n in nodes if groups[e] in n.name]
        else:
            names = [n.name for n in nodes if n.name == e or n.op_type == e]
        if not names:
            known = sorted(set(EXCLUDE_GROUPS) | set(groups))
            raise ExportError(f"exclude entry {e!r} matches no node of the model; use a group "
                              f"({', '.join(known)}), an op type (e.g. Gemm) or a node name")
        out[e] = names
    return out


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has 8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8);
    ``None`` where it cannot be told (not Linux x86).  Read from ``/proc/cpuinfo``."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not flags:
        return None
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})


def rewrite_for_int8(model: Any) -> dict[str, int]:
    """Graph rewrites that give ORT's CPU EP integer kernels where the FP32 export has none.

    ``ReduceMean`` over both spatial axes with ``keepdims=1`` (the SE squeeze as PyTorch exports
    ``x.mean((2, 3), keepdim=True)``) becomes ``GlobalAveragePool``, the same arithmetic, which the QDQ
    transformer turns into ``QLinearGlobalAveragePool``; a ``ReduceMean`` stays float between a
    DequantizeLinear and a QuantizeLinear.  Returns the count of each rewrite.
    """
    import onnx.numpy_helper as nph

    inits = {t.name: t for t in model.graph.initializer}
    n_gap = 0
    for node in model.graph.node:
        if node.op_type != "ReduceMean":
            continue
        attrs = {a.name: a for a in node.attribute}
        keep = attrs["keepdims"].i if "keepdims" in attrs else 1
        axes = list(attrs["axes"].ints) if "axes" in attrs else None
        if axes is None and len(node.input) > 1 and node.input[1] in inits:
            axes = [int(v) for v in nph.to_array(inits[node.input[1]]).ravel()]
        if keep != 1 or axes is None or sorted(axes) not in ([2, 3], [-2, -1]):
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        del node.input[1:]
        n_gap += 1
    return {"ReduceMean->GlobalAveragePool": n_gap}


def ort_optimized_ops(path: str | Path, threads: int = 1) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime's CPU EP actually runs for ``path`` (all optimizations on,
    as on ``ort-cpu-1t``), read back from ``optimized_model_filepath``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="hwnas-optgraph-") as td:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(td) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        m = onnx.load(str(Path(td) / "opt.onnx"))
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items()))


def graph_summary(ops: Mapping[str, int]) -> dict:
    """Q/DQ ops and float compute ops left in an optimized graph (layout and shape ops not counted)."""
    qdq = {k: v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear")}
    layout = {"Transpose", "Reshape", "Flatten", "ReorderInput", "ReorderOutput", "Squeeze", "Unsqueeze", "Identity"}
    floats = {k: v for k, v in ops.items() if k not in qdq and k not in layout and not k.startswith("QLinear")
              and k not in ("QGemm", "QAttention", "MatMulIntegerToFloat", "DynamicQuantizeLinear")}
    return {"qdq": qdq, "float_ops": floats, "int8_ops": {k: v for k, v in ops.items()
                                                          if k.startswith("QLinear") or k == "QGemm"}}


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Collect what ORT's quantizer logs through the root logger (e.g. per-channel axis notes on LayerNorm
    weights) into a list for the manifest, instead of printing it among hwnas's own output."""
    got: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage()[:300])

    root = logging.getLogger()
    keep, saved_handlers, saved_level = _Keep(logging.WARNING), root.handlers[:], root.level
    root.handlers = [keep]
    root.setLevel(logging.WARNING)
    try:
        yield got
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def quantize_qdq(src: str | Path, dst: str | Path, calib: torch.Tensor | np.ndarray, *, target: str = "ort",
                 exclude: Sequence[str] = (), method: str = "minmax", calib_batch: int = 100,
                 node_groups: Mapping[str, str] | None = None, reduce_range: bool | None = None,
                 rewrite: bool | None = None, op_types: Sequence[str] | None = None) -> dict:
    """Static QDQ quantization of the FP32 model ``src`` into ``dst`` (ONNX Runtime's quantizer).

    ``target="ort"``: uint8 asymmetric activations, int8 symmetric per-channel weights (U8S8, ORT's fast
    CPU path).  ``target="tensorrt"``: int8 symmetric activations and weights (TensorRT's explicit
    quantization).  Calibration runs on a copy of the model whose batch dim is relaxed, so it can take
    the images ``calib_batch`` at a time; the quantized model gets the batch dims of ``src`` back.

    The recipe follows ONNX Runtime's CPU guidance: :func:`rewrite_for_int8` first (``rewrite``; ``None``:
    for ``target="ort"`` only, as TensorRT fuses the float squeeze itself), then
    ``quant_pre_process``; ``reduce_range`` (7-bit weights) where the CPU has no VNNI (``None``: decided
    by :func:`cpu_has_vnni`; the U8S8 kernels without VNNI sum pairs of products in 16 bits, which
    saturates with 8-bit weights and costs accuracy); ``op_types`` limits the op types quantized (``None``:
    every op ORT can quantize).
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
    vnni = cpu_has_vnni()
    if rewrite is None:
        rewrite = target == "ort"
    if reduce_range is None:
        reduce_range = target == "ort" and vnni is False
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwnas-quant-") as td:
        rw, pre, dyn, q = (Path(td) / f for f in ("rw.onnx", "pre.onnx", "dyn.onnx", "q.onnx"))
        rewrites: dict[str, int] = {}
        if rewrite:
            rw_model = onnx.load(str(src))
            rewrites = rewrite_for_int8(rw_model)
            onnx.save(rw_model, str(rw))
        quant_pre_process(str(rw if rewrite else src), str(pre))
        model = onnx.load(str(pre))
        _set_batch_dim(model, "N")
        onnx.save(model, str(dyn))
        groups = resolve_excludes(model, exclude, node_groups)
        excluded = sorted({n for names in groups.values() for n in names})
        try:
            with _captured_warnings() as warned:
                quantize_static(str(dyn), str(q), _ArrayReader.create(x, calib_batch), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                                reduce_range=bool(reduce_range), nodes_to_exclude=excluded or None,
                                op_types_to_quantize=list(op_types) if op_types else None,
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
        "weights": ("int8 symmetric, per output channel" + (", 7-bit range (reduce_range)" if reduce_range else "")),
        "reduce_range": bool(reduce_range),
        "cpu_vnni": vnni,
        "rewrites": rewrites,
        "op_types": list(op_types) if op_types else "all ORT can quantize",
        "activations": ("uint8 asymmetric, per tensor" if target == "ort" else "int8 symmetric, per tensor"),
        "calibration_method": method,
        "calibration_images": int(len(x)),
        "excluded": {k: v for k, v in groups.items()},
        "quantizer_warnings": sorted(set(warned))[:20],
        "n_quantize_linear": ops.get("QuantizeLinear", 0),
        "n_dequantize_linear": ops.get("DequantizeLinear", 0),
        "op_counts": dict(sorted(ops.items())),
        "opset": max((o.version for o in qm.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "seconds": round(time.perf_counter() - t0, 2),
    }


DYNAMIC_OP_TYPES = ("MatMul", "Gemm")


def quantize_dynamic_int8(src: str | Path, dst: str | Path, *, op_types: Sequence[str] = DYNAMIC_OP_TYPES,
                          exclude: Sequence[str] = (), node_groups: Mapping[str, str] | None = None,
                          reduce_range: bool | None = None, per_channel: bool = False) -> dict:
    """Dynamic INT8 quantization of the FP32 model ``src`` into ``dst`` (ONNX Runtime's ``quantize_dynamic``).

    Weights of ``op_types`` (default MatMul and Gemm) are stored int8 symmetric; activations are
    quantized to uint8 at run time, per tensor, from their own range, so there is no calibration set
    and no activation scale to get wrong.  ONNX Runtime runs these as ``MatMulInteger`` /
    ``DynamicQuantizeMatMul`` (its fast path for transformers on CPU); convolutions stay FP32 (their
    dynamic form, ``ConvInteger``, is slower than FP32 on CPU).  ``reduce_range`` (7-bit weights):
    ``None`` decides by :func:`cpu_has_vnni`, as for the static recipe.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    src, dst = Path(src), Path(dst)
    vnni = cpu_has_vnni()
    if reduce_range is None:
        reduce_range = vnni is False
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwnas-quant-") as td:
        pre, q = Path(td) / "pre.onnx", Path(td) / "q.onnx"
        quant_pre_process(str(src), str(pre))
        model = onnx.load(str(pre))
        groups = resolve_excludes(model, exclude, node_groups)
        excluded = sorted({n for names in groups.values() for n in names})
        try:
            with _captured_warnings() as warned:
                quantize_dynamic(str(pre), str(q), op_types_to_quantize=list(op_types), per_channel=per_channel,
                                 reduce_range=bool(reduce_range), weight_type=QuantType.QInt8,
                                 nodes_to_exclude=excluded or None)
        except Exception as exc:  # the quantizer raises many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"dynamic INT8 quantization of {src.name} failed: {first[:200]}") from exc
        qm = onnx.load(str(q))
        onnx.checker.check_model(qm, full_check=True)
        onnx.save(qm, str(dst))
    ops: dict[str, int] = {}
    for n in qm.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    import onnxruntime

    n_quant = sum(v for k, v in ops.items() if k in ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger",
                                                        "MatMulIntegerToFloat"))
    if n_quant == 0:
        raise ExportError(f"dynamic INT8 quantization of {src.name} quantized nothing (no {', '.join(op_types)} "
                          "with constant weights); use the static recipe for this model")
    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        "format": "dynamic",
        "target": "ort",
        "preprocess": "quant_pre_process (symbolic shape inference, ORT graph optimization)",
        "weights": ("int8 symmetric, " + ("per output channel" if per_channel else "per tensor")
                    + (", 7-bit range (reduce_range)" if reduce_range else "")),
        "reduce_range": bool(reduce_range),
        "cpu_vnni": vnni,
        "op_types": list(op_types),
        "activations": "uint8 asymmetric, per tensor, range computed at run time (no calibration)",
        "calibration_method": None,
        "calibration_images": 0,
        "excluded": {k: v for k, v in groups.items()},
        "n_quantized_nodes": n_quant,
        "quantizer_warnings": sorted(set(warned))[:20],
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
    the anchor): their ``over_first`` is the median ratio to the first model of alternating blocks, which
    slowdowns from other tenants of the machine do not move, and their ``median_ms`` is that ratio times
    the first model's latency.
    """
    from hwnas.devices.backends import create_backend, runtime_config
    from hwnas.devices.backends.base import LocalBackend
    from hwnas.devices.protocol import ProtocolSettings

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
            entry["scale"] = "paired"
            entry["how"] = (f"paired: the median ratio to {labels[0]} of alternating 10-ms blocks x {labels[0]}'s "
                            "isolated latency in this run")
            entry["rounds_ratio"] = [round(m.anchor_ratio, 5) for m in ms]
            entry["ci95_ms"] = [v * first_ms for v in entry["ci95_ms"]]  # the ratio's CI, in ms
        else:
            entry["median_ms"] = statistics.median(m.median_ms for m in ms)
            entry["rounds_ms"] = [round(m.median_ms, 5) for m in ms]
        entry["n"] = sum(m.n for m in ms)
        entry["converged"] = all(m.converged for m in ms)
        out[k] = entry
    return out


def int8_vs_fp32_latency(fp32: tuple[Path, Any], int8: tuple[Path, Any], time_cap_s: float | None,
                         what: str = "both models") -> dict:
    """The manifest's latency block of an INT8 model timed side by side with its FP32 model
    (:func:`measure_side_by_side`, the INT8 one paired with the FP32 one where both run here)."""
    lat = measure_side_by_side({"fp32": fp32, "int8": int8}, time_cap_s=time_cap_s)
    return {"device": int8[1].name, "fp32": lat["fp32"], "int8": lat["int8"],
            "int8_over_fp32": lat["int8"]["median_ms"] / lat["fp32"]["median_ms"],
            "speedup": lat["fp32"]["median_ms"] / lat["int8"]["median_ms"],
            "method": (f"{what} loaded, measured in interleaved rounds; INT8 timed paired with FP32 (median "
                       "ratio of alternating blocks)" if "over_first" in lat["int8"] else
                       f"{what} loaded, measured in interleaved rounds (median of round medians)")}


# ---------------------------------------------------------------------------------------------- onnx-int8
@register_format("onnx-int8", precisions=("int8",))
def export_onnx_int8(arch: Mapping[str, Any], out: str | Path, supernet: str, weights: str | None = None, *,
                     batch: int = 1, command: str | None = None, dynamic_batch: bool = False,
                     optimize: bool = True, tolerance: float = 1e-4, device: Any = None,
                     measure: bool = True, time_cap_s: float | None = None,
                     calibration: str | Path | None = None, calib_images: int | None = None,
                     calib_method: str = "minmax", exclude: Sequence[str] | None = None,
                     min_agreement: float = DEFAULT_MIN_AGREEMENT, fp32_out: str | Path | None = None,
                     target: str = "ort", mode: str | None = None, progress: Progress | None = None,
                     manifest_extra: Mapping[str, Any] | None = None, **options: Any) -> dict:
    """FP32 + INT8 ONNX models of ``arch``, both verified on the validation split, timed side by side.

    ``mode``: ``"static"`` (QDQ with calibrated activation scales, :func:`quantize_qdq`) or ``"dynamic"``
    (int8 MatMul/Gemm, activation scales at run time, :func:`quantize_dynamic_int8`; no calibration
    images); ``None``: the family's preferred scheme (the first of its ``int8_modes``; static for TensorRT).

    ``exclude``: node groups/op types/node names kept in FP32 (``None``: quantize everything, and if
    top-1 agreement with FP32 falls below ``min_agreement`` retry with the family's ``int8_fallback_excludes`` before
    giving up; an explicit list, even empty, is used as is; the gate is skipped for untrained
    ``init`` weights, whose near-tied logits make agreement meaningless).  ``calib_images`` caps the number of
    calibration images (default all 2,000).  ``device`` (default ``ort-cpu-1t``) times both models,
    unless ``measure=False``.  Returns the INT8 manifest; its ``fp32`` entry holds the FP32 model's.
    """

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
    if mode is None:  # the family's preference; TensorRT builds from Q/DQ models only
        mode = (net.family.int8_modes or ("static",))[0] if target == "ort" else "static"
    if mode not in ("static", "dynamic"):
        raise ExportError(f"INT8 mode {mode!r} is not one of static, dynamic")
    if mode == "dynamic" and target != "ort":
        raise ExportError("dynamic INT8 is an ONNX Runtime scheme; TensorRT needs the static (QDQ) recipe: mode='static'")
    shape = net.family.input_shape(a)
    cal = load_calibration(net, shape[-1], calibration) if mode == "static" else None
    if cal is None and mode == "static":
        raise ExportError(f"INT8 calibration needs real images and supernet {net.family.name!r} has no shipped "
                          "calibration set: pass its images with --data DIR (an image folder, train/val folders or an .npz)")
    if calib_images is not None and cal is not None:
        if calib_images < 1:
            raise ExportError(f"calib_images must be >= 1; got {calib_images}")
        cal = cal[:calib_images]
    cal_source = ("none (dynamic: activation ranges computed at run time)" if cal is None
                  else f"{calibration} ({len(cal)} images)" if calibration is not None
                  else f"{net.family.name} calib ({len(cal)} images)")
    shape = net.family.input_shape(a)
    x, labels, source = val_data(net, shape[-1], calibration)
    m32_path, m8_path = manifest_path(fp32_path), manifest_path(out)
    with atomic_outputs(fp32_path, out, m32_path, m8_path) as (t32, t8, tm32, tm8):
        opt_info, ref, l32, chk32 = export_verified_fp32(sub, t32, shape, batch, dynamic_batch, optimize, x,
                                                         source, tolerance, "FP32 ONNX model", say)
        fallbacks = [tuple(f) for f in net.family.int8_fallback_excludes]
        attempts = [tuple(exclude)] if exclude is not None else [(), *fallbacks]
        # untrained weights have near-tied logits: their agreement says nothing about quantization quality
        gated = net.weights_hash != "init"
        tried = []
        for excl in attempts:
            keep = f", keeping {', '.join(excl)} in FP32" if excl else ""
            if mode == "dynamic":
                say(f"quantizing (dynamic: int8 MatMul/Gemm weights{keep})")
                qinfo = quantize_dynamic_int8(t32, t8, exclude=excl, node_groups=net.family.node_groups)
            else:
                say(f"quantizing (QDQ, {calib_method} calibration on {cal_source}{keep})")
                qinfo = quantize_qdq(t32, t8, cal, target=target, exclude=excl, method=calib_method,
                                     node_groups=net.family.node_groups)
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
        if target == "ort":
            # what ORT's CPU EP runs: integer kernels, Q/DQ pairs and float ops left, before and after
            qinfo["ort_graph"] = {"fp32": graph_summary(ort_optimized_ops(t32)),
                                  "int8": graph_summary(ort_optimized_ops(t8))}
        if len(tried) > 1:
            qinfo["fallback_reason"] = (f"full quantization agreed with FP32 on {tried[0]['agreement_with_fp32']:.2%} "
                                        f"< {min_agreement:.0%}; kept {', '.join(attempts[len(tried) - 1])} in FP32")
        chk8 = compare_logits(ref, l8, None)
        latency = None
        if measure:
            say(f"timing FP32 and INT8 side by side on {spec32.name}")
            latency = int8_vs_fp32_latency((t32, spec32), (t8, spec8), time_cap_s, "both models")
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
