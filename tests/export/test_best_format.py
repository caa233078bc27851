"""``--format best``: candidates built, gated, timed paired on the device, the winner written with the table.

Real ONNX Runtime (and OpenVINO where installed) on the shipped ``mbv3_fmnist`` weights' smallest subnet.
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from hwnas.errors import ExportError
from hwnas.formats import export_subnet
from hwnas.formats.common import onnx_logits, val_data
from hwnas.formats.onnx_int8 import graph_summary, is_qdq_model, ort_optimized_ops, rewrite_for_int8
from hwnas.supernet.registry import create_supernet

SUPERNET = "mbv3_fmnist"
FAST = dict(time_cap_s=0.3, rounds=2, calib_images=256)
HAS_OV = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def arch():
    a = create_supernet(SUPERNET, pretrained=False).space.min_arch()
    a["r"] = 20
    return a


@pytest.fixture(scope="module")
def best(tmp_path_factory, arch):
    d = tmp_path_factory.mktemp("best")
    m = export_subnet(arch, d / "engine.onnx", SUPERNET, None, fmt="best", candidates=["ort-fp32", "ort-int8"],
                      command="pytest best", **FAST)
    return d, m


def test_every_candidate_is_recorded_and_the_fastest_passing_one_wins(best, arch):
    d, m = best
    sel = m["selection"]
    rows = {c["name"]: c for c in sel["candidates"]}
    assert list(rows) == ["ort-fp32", "ort-int8"]
    for c in rows.values():
        assert c["latency_ms"] > 0 and c["size_bytes"] > 0 and c["runtime"] == "onnxruntime"
        assert 0.5 < c["top1"] <= 1 and c["runtime_version"]
    assert rows["ort-fp32"]["speedup_vs_ort_fp32"] == 1.0 and rows["ort-int8"]["precision"] == "int8"
    assert len(rows["ort-int8"]["rounds_speedup"]) == 2  # paired with ort-fp32, per round
    assert rows["ort-int8"]["size_bytes"] < 0.5 * rows["ort-fp32"]["size_bytes"]
    i8 = rows["ort-int8"]
    int8_wins = i8["passed"] and i8["speedup_vs_ort_fp32"] >= sel["min_speedup"]
    assert sel["winner"] == ("ort-int8" if int8_wins else "ort-fp32")
    assert (sel["int8_line"] is None) == int8_wins
    # the file written is the winner's, and it scores what the table says it scores
    path = Path(m["path"])
    assert path == d / "engine.onnx" and path.is_file() and is_qdq_model(path) == int8_wins
    net = create_supernet(SUPERNET)
    x, labels, _ = val_data(net, arch["r"])
    assert float((onnx_logits(path, x).argmax(1) == labels).mean()) == pytest.approx(rows[sel["winner"]]["top1"])
    on_disk = json.loads((d / "engine.onnx.json").read_text())
    assert on_disk["selection"]["winner"] == sel["winner"] and on_disk["command"] == "pytest best"
    assert on_disk["format"] == ("onnx-int8" if int8_wins else "onnx")
    assert on_disk["selection"]["gate"] == {"min_agreement": 0.99, "max_top1_drop": 0.003,
                                            "split": on_disk["selection"]["gate"]["split"], "applied": True}


def test_int8_recipe_records_the_graph_ort_runs(best):
    _, m = best
    q = next(c for c in m["selection"]["candidates"] if c["name"] == "ort-int8")
    assert q["passed"] in (True, False)
    with_q = m.get("quantization") or {}
    if with_q:  # the INT8 model won: its recipe is in the manifest
        assert with_q["rewrites"]["ReduceMean->GlobalAveragePool"] >= 1
        assert "GlobalAveragePool" not in with_q["ort_graph"]["int8"]["float_ops"]


def test_a_candidate_that_fails_the_gate_is_timed_never_chosen_and_fp32_is_written_once(tmp_path, arch):
    # agreement 100% and no top-1 drop at all: INT8 cannot pass, however fast it is
    m = export_subnet(arch, tmp_path / "engine.onnx", SUPERNET, None, fmt="best", candidates=["ort-int8"],
                      min_agreement=1.0, max_top1_drop=0.0, fp32_out=tmp_path / "best.onnx", **FAST)
    rows = {c["name"]: c for c in m["selection"]["candidates"]}
    assert m["selection"]["winner"] == "ort-fp32" and rows["ort-int8"]["gate"].startswith("failed: agreement")
    assert rows["ort-int8"]["latency_ms"] > 0 and "fails the accuracy gate" in m["selection"]["int8_line"]
    # ORT FP32 won, so the engine is the FP32 model, written once where fp32_out says, with the umask's mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.onnx.json"]
    assert m["path"] == str(tmp_path / "best.onnx") and not is_qdq_model(tmp_path / "best.onnx")
    assert oct((tmp_path / "best.onnx").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


@pytest.mark.parametrize("kw, msg", [
    (dict(candidates=["ort-int9"]), "unknown candidate"),
    (dict(min_speedup=0.5), "min_speedup"),
    (dict(min_agreement=1.5), "min_agreement"),
    (dict(device="torch-cpu"), "not an ONNX Runtime CPU device"),
    (dict(dynamic_batch=True), "dynamic-batch"),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, arch, kw, msg):
    with pytest.raises(ExportError, match=msg):
        export_subnet(arch, tmp_path / "e.onnx", SUPERNET, None, fmt="best", **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(HAS_OV, reason="openvino is installed")
def test_openvino_candidate_without_openvino_names_the_extra(tmp_path, arch):
    with pytest.raises(ExportError, match=r"hwnas\[openvino\]"):
        export_subnet(arch, tmp_path / "e.onnx", SUPERNET, None, fmt="best", candidates=["openvino-fp32"])


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
def test_openvino_candidates_are_timed_paired_and_an_ir_winner_is_written(tmp_path, arch):
    m = export_subnet(arch, tmp_path / "engine.onnx", SUPERNET, None, fmt="best",
                      candidates=["ort-fp32", "openvino-fp32"], min_speedup=1.0, **FAST)
    rows = {c["name"]: c for c in m["selection"]["candidates"]}
    ov = rows["openvino-fp32"]
    assert ov["runtime"] == "openvino" and ov["agreement_with_fp32"] >= 0.999 and len(ov["rounds_speedup"]) == 2
    assert ov["device"].startswith("ov-cpu")
    if m["selection"]["winner"] == "openvino-fp32":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.bin", "engine.xml", "engine.xml.json"]
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.onnx", "engine.onnx.json"]


def test_rewrite_for_int8_keeps_the_arithmetic(tmp_path, arch):
    """ReduceMean over H, W -> GlobalAveragePool: same outputs in ORT, one per SE block, no ReduceMean left."""
    from hwnas.formats.common import prepare
    from hwnas.formats.onnx_export import export_onnx

    src = tmp_path / "m.onnx"
    _, a, sub, _ = prepare(SUPERNET, None, arch | {"e": [4] * len(arch["e"])}, "none")
    export_onnx(sub, src, (1, a["r"], a["r"]))
    model = onnx.load(str(src))
    n_mean = sum(n.op_type == "ReduceMean" for n in model.graph.node)
    done = rewrite_for_int8(model)
    assert n_mean >= 1 and done == {"ReduceMean->GlobalAveragePool": n_mean}
    assert not any(n.op_type == "ReduceMean" for n in model.graph.node)
    dst = tmp_path / "rw.onnx"
    onnx.save(model, str(dst))
    x = torch.randn(16, 1, arch["r"], arch["r"])
    np.testing.assert_allclose(onnx_logits(dst, x), onnx_logits(src, x), rtol=1e-5, atol=1e-5)
    ops = graph_summary(ort_optimized_ops(dst))
    assert "ReduceMean" not in ops["float_ops"]


def test_default_candidates_follow_the_family_int8_modes():
    from hwnas.formats.best import default_candidates
    from hwnas.supernet.registry import get_family

    cnn, vit = default_candidates(get_family("mbv3_fmnist")), default_candidates(get_family("vit_fmnist"))
    assert "ort-int8-dynamic" not in cnn and {"ort-fp32", "ort-int8", "ort-int8-alt"} <= set(cnn)
    assert {"ort-fp32", "ort-int8", "ort-int8-dynamic"} <= set(vit)
    assert any(c.startswith("openvino") for c in vit) == HAS_OV
