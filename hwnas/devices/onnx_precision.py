"""The precision an ONNX model carries, and FP32 -> FP16 conversion of a model.

A strongly typed TensorRT network (the only kind TensorRT 11 builds; ``BuilderFlag.FP16``/``INT8``
were deprecated in 10.12 and removed in 11) computes in the types the ONNX model says: FP32 from an
FP32 model, FP16 from an FP16 model, INT8 from an explicitly quantized (Q/DQ) model.  This module
tells which of those a file is (:func:`model_precision`, :func:`is_qdq_onnx`, :func:`trt_qdq_problem`)
and makes the FP16 model from a verified FP32 one (:func:`convert_to_fp16`).  (No BF16 conversion: the
ONNX opsets hwnas exports, below 22, do not type Conv for bfloat16.)

The conversion keeps the graph inputs and outputs float32 (a ``Cast`` after each float input and
before each float output), so callers feed and read the same arrays as for the FP32 model; inside,
every float32 initializer, ``Constant`` and ``Cast``-to-float becomes float16 and the ``value_info``
types follow.  Only the ``onnx`` package is used.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hwnas.errors import ModelFileError

FP16_MAX = 65504.0
# Inputs the ONNX operator specs type as float32 whatever the data's type: they stay float32.
_FLOAT32_INPUTS = frozenset({("Resize", 2), ("Upsample", 1)})
# Ops whose ``dtype`` attribute names the float type they produce.
_DTYPE_ATTR_OPS = frozenset({"EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"})
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _onnx() -> Any:
    return importlib.import_module("onnx")


def _load(path: str | Path, what: str = "model") -> Any:
    onnx = _onnx()
    try:
        return onnx.load(str(path))
    except FileNotFoundError:
        raise ModelFileError(f"{what} file {path} does not exist") from None
    except Exception as exc:  # protobuf's DecodeError and friends
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path} is not an ONNX model or is truncated ({first})") from None


def _all_nodes(graph: Any) -> Iterable[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(g)


# ---------------------------------------------------------------------------------------------- what a file is
def is_qdq_onnx(path_or_model: Any) -> bool:
    """Whether the model has QuantizeLinear and DequantizeLinear nodes (explicit quantization)."""
    model = path_or_model if hasattr(path_or_model, "graph") else _load(path_or_model)
    return _QDQ_OPS <= {n.op_type for n in _all_nodes(model.graph)}


def trt_qdq_problem(path_or_model: Any) -> str | None:
    """Why a Q/DQ model cannot be TensorRT's explicit quantization (``None`` if it can).

    TensorRT quantizes symmetrically to int8: every QuantizeLinear zero point must be int8 and 0.
    ONNX Runtime's CPU target (``quantize_qdq(target="ort")``) makes uint8 asymmetric activations.
    """
    onnx = _onnx()
    from onnx import numpy_helper

    model = path_or_model if hasattr(path_or_model, "graph") else _load(path_or_model)
    consts = {t.name: t for t in model.graph.initializer}
    for n in _all_nodes(model.graph):
        if n.op_type == "Constant" and n.output and any(a.name == "value" for a in n.attribute):
            consts[n.output[0]] = next(a.t for a in n.attribute if a.name == "value")
    for n in _all_nodes(model.graph):
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or not n.input[2]:
            continue
        zp = consts.get(n.input[2])
        if zp is None:
            continue
        if zp.data_type != onnx.TensorProto.INT8:
            kind = onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name
            return (f"QuantizeLinear {n.name or n.output[0]!r} quantizes to {kind} (ONNX Runtime's CPU target); "
                    "TensorRT takes int8 symmetric Q/DQ only")
        if numpy_helper.to_array(zp).any():
            return (f"QuantizeLinear {n.name or n.output[0]!r} has a non-zero zero point (asymmetric); "
                    "TensorRT takes int8 symmetric Q/DQ only")
    return None


def model_precision(path_or_model: Any) -> str:
    """``"int8"`` for a Q/DQ model, ``"fp16"``/``"bf16"`` for a model computing in that type, else ``"fp32"``."""
    onnx = _onnx()
    model = path_or_model if hasattr(path_or_model, "graph") else _load(path_or_model)
    if is_qdq_onnx(model):
        return "int8"
    kinds: Counter = Counter(t.data_type for t in model.graph.initializer)
    for n in _all_nodes(model.graph):
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to":
                kinds[a.i] += 1
            elif a.name == "value" and a.HasField("t"):
                kinds[a.t.data_type] += 1
    if kinds[onnx.TensorProto.FLOAT16]:
        return "fp16"
    if kinds[onnx.TensorProto.BFLOAT16]:
        return "bf16"
    return "fp32"


# ---------------------------------------------------------------------------------------------- conversion
def _half_array(arr: np.ndarray, stats: Counter) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    stats["clipped"] += int((np.abs(a) > FP16_MAX).sum())
    out = np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)
    stats["underflow_to_zero"] += int(((a != 0) & (out == 0)).sum())
    return out


def _half_tensor(t: Any, stats: Counter) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(_half_array(numpy_helper.to_array(t), stats), t.name)


class _Names:
    def __init__(self, graph: Any) -> None:
        self.used = {n for node in graph.node for n in [*node.input, *node.output]}
        self.used |= {v.name for v in [*graph.input, *graph.output, *graph.initializer, *graph.value_info]}

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name


def convert_to_fp16(src: str | Path, dst: str | Path, *, keep_fp32_ops: Iterable[str] = ()) -> dict:
    """Write ``src`` (an FP32 ONNX model) to ``dst`` computing in FP16, float32 inputs/outputs kept.

    Float32 initializers and ``Constant`` values become float16 (clipped to +-65504; the counts of
    clipped values and of non-zero values that round to 0 are returned); ``Cast`` to float and
    the ``dtype`` of generator ops follow; a ``Cast`` is inserted after each float32 graph input and
    before each float32 graph output; ops named in ``keep_fp32_ops`` (and the inputs the ONNX specs type
    as float32, e.g. ``Resize`` scales) stay float32 with casts around them.  The result passes
    ``onnx.checker`` (full check, strict shape inference) or ``ModelFileError`` is raised.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper

    precision = "fp16"
    low = TensorProto.FLOAT16
    FLOAT = TensorProto.FLOAT
    keep = frozenset(keep_fp32_ops)
    model = _load(src)
    graph = model.graph
    if any(a.HasField("g") or len(a.graphs) for n in graph.node for a in n.attribute):
        raise ModelFileError(f"{src} has control-flow subgraphs (If/Loop/Scan); FP16 conversion handles flat graphs")
    if is_qdq_onnx(model):
        raise ModelFileError(f"{src} is a Q/DQ (INT8) model; convert the FP32 model to FP16 instead")
    if model_precision(model) != "fp32":
        raise ModelFileError(f"{src} is already a {model_precision(model)} model")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise ModelFileError(f"shape inference failed on {src} ({str(exc).splitlines()[0][:200]})") from None
    types: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in graph.initializer:
        types[t.name] = t.data_type
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[n.output[0]] = FLOAT
    missing = [o for n in graph.node for o in n.output if o and o not in types]
    if missing:
        raise ModelFileError(f"shape inference on {src} left the type of {missing[0]!r} unknown; cannot convert it")

    names = _Names(graph)
    stats: Counter = Counter()
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    inits = {t.name: t for t in graph.initializer}
    # float32 tensors computed in the low type from now on (graph inputs/outputs keep their names and
    # float32 type: the internal low-precision tensors get new names)
    is_float = {name for name, dt in types.items() if dt == FLOAT}
    rename: dict[str, str] = {}  # float32 graph input/output name -> its low-precision internal name
    head: list[Any] = []
    tail: list[Any] = []
    for name in sorted(graph_inputs & is_float):
        if name in inits:
            continue  # an initializer listed as an input (old IR): converted with the initializers
        rename[name] = names.fresh(f"{name}_{precision}")
        head.append(helper.make_node("Cast", [name], [rename[name]], to=low,
                                     name=names.fresh(f"cast_{name}_to_{precision}")))
    for o in graph.output:
        if o.name in is_float and o.name not in graph_inputs:
            rename[o.name] = names.fresh(f"{o.name}_{precision}")
            tail.append(helper.make_node("Cast", [rename[o.name]], [o.name], to=FLOAT,
                                         name=names.fresh(f"cast_{o.name}_to_fp32")))
    f32_copy: dict[str, str] = {}  # low tensor -> its float32 twin (for float32-only consumers)

    def as_float32(tensor: str, before: list[Any]) -> str:
        if tensor in graph_inputs and tensor not in inits:
            return tensor  # the float32 graph input itself
        if tensor not in f32_copy:
            if tensor in inits:
                twin = names.fresh(f"{tensor}_fp32")
                t32 = onnx.TensorProto()
                t32.CopyFrom(inits[tensor])
                t32.name = twin
                graph.initializer.append(t32)
                inits[twin] = t32
            else:
                twin = names.fresh(f"{tensor}_fp32")
                before.append(helper.make_node("Cast", [rename.get(tensor, tensor)], [twin], to=FLOAT,
                                               name=names.fresh(f"cast_{tensor}_to_fp32")))
                stats["casts_inserted"] += 1
            f32_copy[tensor] = twin
        return f32_copy[tensor]

    body: list[Any] = []
    for node in graph.node:
        pre: list[Any] = []
        post: list[Any] = []
        kept = node.op_type in keep or node.name in keep
        for i, name in enumerate(node.input):
            if name and name in is_float:
                if kept or (node.op_type, i) in _FLOAT32_INPUTS:
                    node.input[i] = as_float32(name, pre)
                elif name in rename:
                    node.input[i] = rename[name]
        for i, name in enumerate(node.output):
            if not name or name not in is_float:
                continue
            if kept:
                out32 = names.fresh(f"{name}_fp32")
                node.output[i] = out32
                post.append(helper.make_node("Cast", [out32], [rename.get(name, name)], to=low,
                                             name=names.fresh(f"cast_{name}_to_{precision}")))
                stats["casts_inserted"] += 1
            elif name in rename:
                node.output[i] = rename[name]
        if not kept:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = low
                elif node.op_type in _DTYPE_ATTR_OPS and a.name == "dtype" and a.i == FLOAT:
                    a.i = low
                elif a.name == "value" and a.HasField("t") and a.t.data_type == FLOAT:
                    a.t.CopyFrom(_half_tensor(a.t, stats))
                    stats["constants_converted"] += 1
                elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                    vals = [a.f] if a.name == "value_float" else list(a.floats)
                    arr = _half_array(np.array(vals, np.float32), stats)
                    t = onnx.numpy_helper.from_array(arr if a.name == "value_floats" else arr.reshape(()), "value")
                    node.attribute.remove(a)
                    node.attribute.append(helper.make_attribute("value", t))
                    stats["constants_converted"] += 1
                    break
        body += [*pre, node, *post]
    stats["casts_inserted"] += len(head) + len(tail)
    consumed = {name for n in [*head, *body, *tail] for name in n.input}
    for t in list(graph.initializer):
        if t.name in f32_copy and t.name not in consumed and t.name not in graph_inputs:
            graph.initializer.remove(t)  # every consumer takes its float32 twin
        elif t.data_type == FLOAT and t.name not in f32_copy.values():
            t.CopyFrom(_half_tensor(t, stats))
            stats["initializers_converted"] += 1
    del graph.node[:]
    graph.node.extend(head + body + tail)
    for vi in graph.value_info:
        tt = vi.type.tensor_type
        if vi.name in is_float and tt.elem_type == FLOAT:
            tt.elem_type = low
            if vi.name in rename:
                vi.name = rename[vi.name]
    for name, new in rename.items():  # the internal twins of the float32 inputs/outputs
        src_vi = next((v for v in [*graph.input, *graph.output] if v.name == name), None)
        if src_vi is not None:
            vi = graph.value_info.add()
            vi.CopyFrom(src_vi)
            vi.name = new
            vi.type.tensor_type.elem_type = low
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelFileError(f"the {precision} conversion of {src} is not a valid model "
                             f"({str(exc).strip().splitlines()[0][:200]})") from None
    onnx.save(model, str(dst))
    return {"tool": "hwnas.devices.onnx_precision.convert_to_fp16", "precision": precision,
            "io_types": "float32 (Cast after each input, before each output)",
            "initializers_converted": stats["initializers_converted"],
            "constants_converted": stats["constants_converted"], "casts_inserted": stats["casts_inserted"],
            "clipped_to_fp16_range": stats["clipped"], "underflow_to_zero": stats["underflow_to_zero"],
            "kept_fp32_ops": sorted(keep)}


__all__ = ["FP16_MAX", "convert_to_fp16", "is_qdq_onnx", "model_precision", "trt_qdq_problem"]
