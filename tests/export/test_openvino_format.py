"""``--format openvino``: real OpenVINO IRs (FP32 and NNCF INT8) of the shipped mbv3_fmnist's smallest subnet.

For speed the exports run on the first 500 validation images (the checks are the same on all 5,000) and the
INT8 ones skip onnxslim.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from hwnas.devices import DeviceSpec, create_backend, load_device  # noqa: E402
from hwnas.errors import ExportError  # noqa: E402
from hwnas.formats import common as api  # noqa: E402
from hwnas.formats import export_subnet, get_format, list_formats  # noqa: E402
from hwnas.formats import openvino as ov_fmt  # noqa: E402
from hwnas.supernet.registry import create_supernet  # noqa: E402

SUPERNET = "mbv3_fmnist"
N_VAL = 500
HAS_NNCF = importlib.util.find_spec("nncf") is not None


@pytest.fixture(scope="module")
def arch():
    return create_supernet(SUPERNET, pretrained=False).space.min_arch()


@pytest.fixture(scope="module")
def small_val():
    """The first N_VAL validation images only (speed), for every export of this module."""
    full = api.val_data

    def val_data(net, r, data=None):
        x, y, _ = full(net, r, data)
        return x[:N_VAL], y[:N_VAL], f"fashion-mnist val (first {N_VAL} images)"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ov_fmt, "val_data", val_data)
        yield


def _export_under_umask(mask: int, *args, **kwargs) -> dict:
    old = os.umask(mask)
    try:
        return export_subnet(*args, **kwargs)
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory, arch, small_val):
    """The shipped trained weights, BN recalibrated; also returns the PyTorch subnet the export was made from."""
    d = tmp_path_factory.mktemp("ov-fp32")
    made = {}

    def prepare(*args, **kwargs):  # the real one, recording the subnet it extracted
        made["net"], made["arch"], made["sub"], recal = api.prepare(*args, **kwargs)
        return made["net"], made["arch"], made["sub"], recal

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ov_fmt, "prepare", prepare)
        m = _export_under_umask(0o022, arch, d / "m.xml", SUPERNET, None, fmt="openvino", device="ov-cpu-1t",
                                time_cap_s=0.3, command="pytest ov fp32")
    return d, m, made


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, arch, small_val):
    if not HAS_NNCF:
        pytest.skip("nncf is not installed")
    d = tmp_path_factory.mktemp("ov-int8")
    m = _export_under_umask(0o077, arch, d / "q.xml", SUPERNET, None, fmt="openvino", precision="int8",
                            calib_images=128, optimize=False, time_cap_s=0.3, command="pytest ov int8")
    return d, m


def _ops(xml: Path) -> dict[str, int]:
    import openvino as ov

    ops: dict[str, int] = {}
    for op in ov.Core().read_model(str(xml)).get_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
    return ops


def test_registered_with_both_precisions():
    assert "openvino" in list_formats() and get_format("openvino").precisions == ("fp32", "int8")


def test_fp32_writes_the_ir_pair_and_manifest_with_fp32_weights(fp32_export):
    d, m, _ = fp32_export
    assert sorted(p.name for p in d.iterdir()) == ["m.bin", "m.xml", "m.xml.json"]  # no .part, no scratch ONNX
    assert all(_mode(p) == 0o644 for p in d.iterdir())  # umask 022
    import openvino as ov

    model = ov.Core().read_model(str(d / "m.xml"))
    consts = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    float_types = {str(c.get_element_type()) for c in consts if c.get_element_type().is_real()}
    assert float_types and all("32" in t for t in float_types), float_types  # FP32, not compressed to FP16
    assert [sorted(p.get_names()) for p in model.inputs] == [["input"]]
    assert list(model.inputs[0].get_shape()) == [1, 1, 20, 20]
    assert m["path"] == str(d / "m.xml") and m["manifest"] == str(d / "m.xml.json")


def test_fp32_manifest_records_check_runtime_and_latency(fp32_export):
    d, m, _ = fp32_export
    man = json.loads((d / "m.xml.json").read_text())
    assert man["format"] == "openvino" and man["precision"] == "fp32" and man["command"] == "pytest ov fp32"
    assert man["weights_file"] == "m.bin" and man["compress_to_fp16"] is False and "quantization" not in man
    assert man["graph_optimization"]["tool"].startswith("onnxslim") and man["bn_recalibrated"] is True
    chk = man["output_check"]
    assert chk["passed"] and chk["max_abs_err"] <= 1e-4 and chk["tolerance"] == 1e-4 and chk["n_inputs"] == N_VAL
    assert man["onnx_check"]["passed"] and man["accuracy"]["top1"] == pytest.approx(man["accuracy"]["top1_pytorch"],
                                                                                     abs=0.002)
    import openvino as ov

    assert man["runtime"]["name"] == "openvino" and ov.__version__.startswith(man["runtime"]["version"])
    lat = man["latency"]
    assert lat["device"] == "ov-cpu-1t" and lat["backend"] == "openvino" and lat["median_ms"] > 0
    assert lat["runtime_config"].startswith("openvino:") and lat["fingerprint"]


def test_fp32_ir_on_disk_matches_pytorch(fp32_export):
    """The shipped file, run by the devices backend, against the same subnet in PyTorch (independent of the
    exporter's own check)."""
    d, _, made = fp32_export
    net, a, sub = made["net"], made["arch"], made["sub"]
    x = api.val_data(net, net.family.input_shape(a)[-1])[0][-32:]  # images the export's check did not see
    ref = api.torch_logits(sub, x)
    with create_backend(load_device("ov-cpu-1t"), model=d / "m.xml") as b:
        got = np.concatenate([b.infer(x[i:i + 1].numpy()) for i in range(len(x))])
    assert ref.std() > 0.1 and len(set(ref.argmax(1))) > 1  # logits that say something
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_int8_writes_a_quantized_ir_and_records_agreement(int8_export):
    d, m = int8_export
    assert sorted(p.name for p in d.iterdir()) == ["q.bin", "q.xml", "q.xml.json"]
    assert all(_mode(p) == 0o600 for p in d.iterdir())  # umask 077
    man = json.loads((d / "q.xml.json").read_text())
    assert man["format"] == "openvino" and man["precision"] == "int8"
    q = man["quantization"]
    assert q["tool"].startswith("nncf ") and q["preset"] == "performance" and q["calibration_images"] == 128
    assert q["n_fake_quantize"] == _ops(d / "q.xml").get("FakeQuantize") and q["n_fake_quantize"] > 10
    acc = man["accuracy"]
    assert acc["min_agreement"] == 0.97 and acc["agreement_int8_vs_fp32"] >= 0.97  # trained weights: gated
    assert acc["agreement_int8_vs_fp32"] == q["attempts"][-1]["agreement_with_fp32"]
    if len(q["attempts"]) > 1:  # NNCF's defaults fell short of the gate: the min-max fallback was used
        assert q["attempts"][0]["agreement_with_fp32"] < 0.97 and "fallback_reason" in q
        assert q["activations_range"] == "minmax" and q["fast_bias_correction"] is False
    assert acc["top1_int8"] > acc["top1_fp32"] - 0.03
    assert man["output_check"]["tolerance"] is None and man["output_check"]["max_abs_err"] > 0
    assert acc["max_abs_err_int8_vs_pytorch"] == man["output_check"]["max_abs_err"]


def test_int8_is_timed_paired_with_the_fp32_ir(int8_export):
    d, m = int8_export
    lat = m["latency"]
    assert lat["device"] == "ov-cpu-1t" and lat["fp32"]["median_ms"] > 0 and lat["int8"]["median_ms"] > 0
    assert lat["fp32"]["precision"] == "fp32" and lat["int8"]["precision"] == "int8"
    assert lat["int8"]["over_first"] == pytest.approx(lat["int8_over_fp32"]) and "paired" in lat["method"]
    spec = DeviceSpec(name="ov-int8", backend="openvino", precision="int8", options={"inference_num_threads": 1})
    with create_backend(spec, model=d / "q.xml") as b:
        out = b.infer(np.zeros((1, 1, 20, 20), np.float32))
    assert out.shape == (1, 10) and np.isfinite(out).all()


@pytest.mark.skipif(not HAS_NNCF, reason="nncf is not installed")
def test_failing_agreement_gate_writes_nothing(tmp_path, arch, monkeypatch, capfd):
    with pytest.raises(ExportError, match="within"):
        export_subnet(arch, tmp_path / "q.xml", SUPERNET, None, fmt="openvino", precision="int8", min_agreement=1.01)
    full = api.val_data
    monkeypatch.setattr(ov_fmt, "val_data", lambda net, r, data=None: tuple(v[:200] for v in full(net, r, data)[:2])
                        + ("fashion-mnist val (first 200 images)",))
    with pytest.raises(ExportError, match="min_agreement") as ei:  # trained weights, 8 calibration images: < 100%
        export_subnet(arch, tmp_path / "q.xml", SUPERNET, None, fmt="openvino", precision="int8", min_agreement=1.0,
                      calib_images=8, optimize=False, measure=False)
    assert "\n" not in str(ei.value) and "nothing was written" in str(ei.value)
    assert "with NNCF's defaults and with min-max activation ranges" in str(ei.value)  # both settings were tried
    out = capfd.readouterr().out
    assert "Statistics collection" not in out and "nncf" not in out.lower()  # stdout stays the CLI's (--json)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_fail_before_any_work(tmp_path, arch):
    ort = load_device("ort-cpu-1t")
    for kwargs, match in ((dict(out=tmp_path / "m.onnx"), r"name it .*m\.xml"),
                          (dict(workspace_mb=64), "do not apply to --format openvino"),
                          (dict(precision="fp16"), "does not apply to --format openvino"),
                          (dict(device=ort), "backend 'openvino'"),
                          (dict(precision="int8", calib_images=0), "calib_images")):
        out = kwargs.pop("out", tmp_path / "m.xml")
        with pytest.raises(ExportError, match=match):
            export_subnet(arch, out, SUPERNET, None, fmt="openvino", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_missing_openvino_or_nncf_names_the_extra(tmp_path, arch, monkeypatch):
    real = importlib.util.find_spec
    gone = {"nncf"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    with pytest.raises(ExportError, match=r"needs nncf, which is not installed here; pip install 'hwnas\[openvino\]'"):
        export_subnet(arch, tmp_path / "q.xml", SUPERNET, None, fmt="openvino", precision="int8")
    gone.add("openvino")
    with pytest.raises(ExportError, match=r"needs openvino, which is not installed here; pip install 'hwnas\[openvino\]'"):
        export_subnet(arch, tmp_path / "m.xml", SUPERNET, None, fmt="openvino")
    assert list(tmp_path.iterdir()) == []
