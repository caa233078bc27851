"""The ``openvino`` backend: real OpenVINO runs of tiny ONNX models and of their IRs, checked against ONNX Runtime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from devices_onnx_models import build_convnet  # noqa: E402
from hwnas.devices import create_backend, fingerprint_for, list_backends, list_devices, load_device  # noqa: E402
from hwnas.devices.backends import ModelKindError, runtime_config  # noqa: E402
from hwnas.devices.backends.openvino import NOT_INSTALLED, OpenVINOBackend, compile_config  # noqa: E402
from hwnas.devices.profile import profile_onnx_file  # noqa: E402
from hwnas.devices.protocol import ProtocolSettings  # noqa: E402
from hwnas.devices.spec import DeviceSpec, DeviceSpecError  # noqa: E402
from hwnas.errors import DeviceUnavailableError, ModelFileError  # noqa: E402

FAST = ProtocolSettings(warmup_runs=3, warmup_s=0.01, min_runs=10, time_cap_s=0.3)


@pytest.fixture(scope="module")
def tiny_ir(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny conv net as an OpenVINO IR (dynamic batch, FP32 weights)."""
    import openvino as ov

    xml = tmp_path_factory.mktemp("ir") / "tiny.xml"
    ov.save_model(ov.convert_model(str(tiny_onnx)), str(xml), compress_to_fp16=False)
    return xml


def _x(batch: int = 1, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def test_registered_and_the_shipped_spec_validates() -> None:
    assert "openvino" in list_backends()
    spec = load_device("ov-cpu-1t")
    assert spec.backend == "openvino" and spec.batch == 1 and spec.precision == "fp32"
    assert spec.options == {"device": "CPU", "inference_num_threads": 1, "num_streams": 1, "performance_hint": "LATENCY",
                            "enable_hyper_threading": False, "inference_precision_hint": "f32"}
    assert spec.protocol == {"time_cap_s": 3.0}
    rc = runtime_config(spec)
    assert rc.startswith("openvino:") and "inference_num_threads=1" in rc and "inference_precision_hint=f32" in rc
    ort = load_device("ort-cpu-1t")
    assert rc != runtime_config(ort)  # store keys never mix OpenVINO and ORT rows
    fp = fingerprint_for(spec)
    assert fp.fp_hash != fingerprint_for(ort).fp_hash and fp.runtime["backend"] == "openvino"
    assert fp.host["libs"]["openvino"]  # the version is recorded, and hashed (fingerprint.BACKEND_LIBS)
    info = {d.spec.name: d for d in list_devices()}["ov-cpu-1t"]
    assert info.available and info.reason == ""


def test_bad_options_name_themselves() -> None:
    for opts, match in (({"performance_hint": "FAST"}, "performance_hint"), ({"inference_num_threads": -1}, ">= 0"),
                        ({"num_streams": 0}, "num_streams"), ({"inference_precision_hint": "int4"}, "precision_hint"),
                        ({"threads": 1}, "unknown option")):
        with pytest.raises(DeviceSpecError, match=match):
            create_backend(DeviceSpec(name="ov", backend="openvino", options=opts), model="m.onnx")
    with pytest.raises(ModelKindError, match="OpenVINO IR"):
        create_backend(load_device("ov-cpu-1t"), model=object())


def test_compile_config_is_what_runs(tiny_onnx: Path) -> None:
    spec = load_device("ov-cpu-1t")
    want = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": 1, "ENABLE_HYPER_THREADING": False}
    assert compile_config(OpenVINOBackend.resolve_options(spec)) == want
    with create_backend(spec, model=tiny_onnx) as b:
        compiled = b._compiled
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1 and compiled.get_property("NUM_STREAMS") == 1
        assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
        assert compiled.get_property("ENABLE_HYPER_THREADING") is False
        assert "32" in str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # f32, not bf16


@pytest.mark.parametrize("which", ["onnx", "ir"])
def test_outputs_equal_onnx_runtime(which: str, tiny_onnx: Path, tiny_ir: Path) -> None:
    model = tiny_onnx if which == "onnx" else tiny_ir
    x = _x()
    with create_backend(load_device("ort-cpu-1t"), model=tiny_onnx) as ort, \
            create_backend(load_device("ov-cpu-1t"), model=model) as ov:
        assert ov.input_specs()[0].name == "input" and ov.input_specs()[0].shape == (1, 3, 16, 16)
        y = ov.infer(x)
        np.testing.assert_allclose(y, ort.infer(x), rtol=1e-4, atol=1e-4)
        y[:] = 0  # infer returns a copy, not a view of the request's output
        assert np.abs(ov.infer(x)).max() > 0
    with pytest.raises(RuntimeError, match="context manager"):
        ov.infer(x)


def test_batch_comes_from_the_spec(tiny_onnx: Path, tmp_path: Path) -> None:
    spec = DeviceSpec(name="ov-b4", backend="openvino", batch=4, options={"inference_num_threads": 1})
    x = _x(4, seed=1)
    with create_backend(spec, model=tiny_onnx) as ov, create_backend(
            DeviceSpec(name="ort-b4", backend="ort", batch=4, options={"intra_op_threads": 1}), model=tiny_onnx) as ort:
        assert ov.input_specs()[0].shape == (4, 3, 16, 16)
        np.testing.assert_allclose(ov.infer(x), ort.infer(x), rtol=1e-4, atol=1e-4)
        with pytest.raises(ModelFileError, match="compiled for 4x3x16x16"):
            ov.infer(_x(2))
    fixed = build_convnet(tmp_path / "fixed.onnx", channels=4, size=8, batch=1)
    with create_backend(DeviceSpec(name="ov-b2", backend="openvino", batch=2), model=fixed) as ov:
        assert ov.input_specs()[0].shape == (2, 3, 8, 8)  # a static batch of 1 is reshaped to the spec's
        assert ov.infer(_x(2, 8)).shape == (2, 10)


def test_dynamic_spatial_needs_input_shape(tmp_path: Path) -> None:
    path = build_convnet(tmp_path / "dyn.onnx", channels=4, size=8, spatial="H")
    spec = load_device("ov-cpu-1t")
    with pytest.raises(ModelFileError, match="--input-shape input:1x3x<\\?>x<\\?>"):
        with create_backend(spec, model=path):
            pass
    with create_backend(spec, model=path, input_shape=(1, 3, 20, 20)) as ov:
        assert ov.input_specs()[0].shape == (1, 3, 20, 20)
        assert ov.infer(_x(1, 20)).shape == (1, 10)


def test_measure_and_anchored_with_an_ort_anchor(medium_onnx: Path) -> None:
    x_shape = (1, 3, 48, 48)
    with create_backend(load_device("ort-cpu-1t"), model=medium_onnx) as ort, \
            create_backend(load_device("ov-cpu-1t"), model=medium_onnx) as ov:
        m = ov.measure(FAST)
        assert m.n >= FAST.min_runs and 0 < m.min_ms <= m.median_ms <= m.p90_ms < 1000
        assert m.batch == 1 and m.input_shapes == {"input": list(x_shape)} and m.anchor_ratio is None
        a = ov.measure(FAST, anchor=ort, anchor_ms=2.0)  # OpenVINO timed paired with ONNX Runtime
        assert a.anchor_ratio is not None and 0.05 < a.anchor_ratio < 20
        assert a.median_ms == pytest.approx(2.0 * a.anchor_ratio) and a.anchor_median_ms > 0
        back = ort.measure(FAST, anchor=ov, anchor_ms=1.0)  # and the other way round
        assert back.anchor_ratio is not None and back.anchor_ratio > 0


def test_corrupt_and_missing_files_are_one_line_errors(tmp_path: Path, tiny_ir: Path, capfd) -> None:
    spec = load_device("ov-cpu-1t")
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"\x08\x01garbage" * 10)
    bad_xml = tmp_path / "bad.xml"
    bad_xml.write_text('<?xml version="1.0"?><net name="x" version="11"><layers>')
    bad_xml.with_suffix(".bin").write_bytes(b"\x00" * 16)
    no_bin = tmp_path / "nobin.xml"
    no_bin.write_bytes(tiny_ir.read_bytes())
    truncated = tmp_path / "trunc.xml"
    truncated.write_bytes(tiny_ir.read_bytes())
    truncated.with_suffix(".bin").write_bytes(tiny_ir.with_suffix(".bin").read_bytes()[:100])
    cases = [(bad_onnx, "OpenVINO cannot load"), (bad_xml, "OpenVINO cannot load"), (no_bin, "nobin.bin is missing"),
             (truncated, "OpenVINO cannot load"), (tmp_path / "none.onnx", "does not exist")]
    for path, match in cases:
        with pytest.raises(ModelFileError, match=match) as ei:
            with create_backend(spec, model=path):
                pass
        assert "\n" not in str(ei.value) and "Exception from src" not in str(ei.value), str(ei.value)
    assert "GraphDef" not in capfd.readouterr().err  # no other front end tried the corrupt .onnx


def test_profile_takes_an_ir_on_an_openvino_device_only(tiny_ir: Path) -> None:
    r = profile_onnx_file(tiny_ir, "ov-cpu-1t", time_cap_s=0.2)
    assert r["runtime_config"].startswith("openvino:") and r["measurement"]["median_ms"] > 0
    with pytest.raises(ModelFileError, match="is an OpenVINO IR; measure it on a device with backend 'openvino'"):
        profile_onnx_file(tiny_ir, "ort-cpu-1t", time_cap_s=0.2)


def test_not_installed_is_one_clear_line(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert NOT_INSTALLED == "OpenVINO is not installed; pip install 'hwnas[openvino]' (or pip install openvino)"
    spec = load_device("ov-cpu-1t")
    assert OpenVINOBackend.unavailable_reason(spec) == NOT_INSTALLED
    assert {d.spec.name: d for d in list_devices()}["ov-cpu-1t"].reason == NOT_INSTALLED
    with pytest.raises(DeviceUnavailableError) as ei:
        with create_backend(spec, model=tiny_onnx):
            pass
    assert NOT_INSTALLED in str(ei.value) and "\n" not in str(ei.value)
