"""Tiny real ONNX models built with onnx.helper (no exporter needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_convnet(
    path: str | Path,
    *,
    channels: int = 8,
    size: int = 32,
    in_ch: int = 3,
    classes: int = 10,
    batch: int | str = "N",
    spatial: int | str | None = None,
    seed: int = 0,
) -> Path:
    """Conv-ReLU-Conv-ReLU-GlobalAvgPool-Flatten-Gemm; ``batch``/``spatial`` may be symbolic (dynamic)."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    inits = [
        init("w1", channels, in_ch, 3, 3), init("b1", channels),
        init("w2", channels, channels, 3, 3), init("b2", channels),
        init("wfc", channels, classes), init("bfc", classes),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"]),
    ]
    hw = spatial if spatial is not None else size
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, in_ch, hw, hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hwnas-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    p = Path(path)
    onnx.save(model, str(p))
    return p


def build_affine(path: str | Path, w: np.ndarray, b: np.ndarray) -> Path:
    """y = x @ w + b with a dynamic batch: an exact numeric reference for backend outputs."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(b.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = Path(path)
    onnx.save(model, str(p))
    return p
