"""The shipped ``vit_fmnist`` weights and predictors: they load, score what the model card says on the
shipped validation images, and the predictors refuse nothing they should accept.

Top-1 here is on the first 1,000 of the 5,000 shipped validation images (BN recalibrated on the shipped
2,000 calibration images), against floors a little below the model card's full-split figures.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hwnas.jobs import shipped_predictor_path
from hwnas.predictors import load_predictor
from hwnas.supernet.evaluate import EvalData, evaluate_arch
from hwnas.supernet.registry import ZOO_DIR, create_supernet, default_weights_path

FAMILY = "vit_fmnist"
pytestmark = pytest.mark.skipif(default_weights_path(FAMILY) is None, reason="vit_fmnist weights not shipped")


@pytest.fixture(scope="module")
def net():
    torch.set_num_threads(2)
    return create_supernet(FAMILY)


@pytest.fixture(scope="module")
def val1k():
    ev = EvalData.load("val")
    return EvalData("val", ev.images[:1000], ev.labels[:1000], ev.calib_images)


def test_weights_load_and_score_on_val(net, val1k):
    assert net.weights_hash != "init"
    card = json.loads((ZOO_DIR / f"{FAMILY}.summary.json").read_text())
    sp = net.space
    top_max = evaluate_arch(net, sp.max_arch(), val1k)
    top_min = evaluate_arch(net, sp.min_arch(), val1k)
    # floors 1.5 points under the full-split figures of the model card (1,000 images: sd about 0.9 points)
    assert top_max >= card["val_top1_max"] - 0.015, (top_max, card["val_top1_max"])
    assert top_min >= card["val_top1_min"] - 0.015, (top_min, card["val_top1_min"])
    assert top_max > top_min


def test_shipped_predictors_belong_to_these_weights(net):
    fam = net.family
    acc = load_predictor(shipped_predictor_path(FAMILY, "accuracy.json"), expect_supernet=FAMILY,
                         expect_target="accuracy")
    assert acc.meta_["supernet_hash"] == net.weights_hash
    lat = load_predictor(shipped_predictor_path(FAMILY, "ort-cpu-1t.xgb.json"), expect_supernet=FAMILY,
                         expect_target="latency")
    X = fam.space.encode_many([fam.space.min_arch(), fam.default_anchor(), fam.space.max_arch()])
    ms = lat.predict(X)
    assert np.all(np.diff(ms) > 0) and ms[-1] / ms[0] > 4  # small < anchor < large, a wide range
    top = acc.predict(X)
    assert np.all((top > 0.7) & (top < 1.0)) and top[-1] > top[0]


def test_best_engine_with_dynamic_int8_is_gated_and_written(tmp_path, net):
    from hwnas.formats import export_subnet
    from hwnas.formats.onnx_int8 import ort_optimized_ops

    arch = net.family.default_anchor()
    m = export_subnet(arch, tmp_path / "e.onnx", FAMILY, None, fmt="best",
                      candidates=["ort-fp32", "ort-int8-dynamic"], time_cap_s=0.3, rounds=2)
    sel = m["selection"]
    rows = {c["name"]: c for c in sel["candidates"]}
    dyn = rows["ort-int8-dynamic"]
    assert sel["gate"]["applied"]  # trained weights: the accuracy gate decides
    drop = rows["ort-fp32"]["top1"] - dyn["top1"]
    assert dyn["passed"] == (dyn["agreement_with_fp32"] >= 0.99 and drop <= 0.003 + 1e-12), dyn
    assert dyn["agreement_with_fp32"] > 0.97 and dyn["size_bytes"] < 0.5 * rows["ort-fp32"]["size_bytes"]
    assert sel["winner"] in rows and (tmp_path / "e.onnx").is_file()
    if sel["winner"] == "ort-int8-dynamic":
        assert m["quantization"]["format"] == "dynamic" and m["quantization"]["calibration_images"] == 0
        ops = ort_optimized_ops(tmp_path / "e.onnx")
        assert ops.get("MatMulIntegerToFloat", 0) + ops.get("DynamicQuantizeMatMul", 0) > 0, ops


def test_onnx_int8_follows_the_family_and_tensorrt_gets_qdq(tmp_path, net):
    from hwnas.formats.onnx_int8 import export_onnx_int8

    arch = net.space.min_arch()
    dyn = export_onnx_int8(arch, tmp_path / "d.int8.onnx", FAMILY, measure=False, min_agreement=0.0)
    assert dyn["quantization"]["format"] == "dynamic"  # the family's preferred scheme
    trt = export_onnx_int8(arch, tmp_path / "t.int8.onnx", FAMILY, measure=False, min_agreement=0.0,
                           target="tensorrt", calib_images=64)
    assert trt["quantization"]["format"] == "QDQ" and trt["quantization"]["target"] == "tensorrt"
