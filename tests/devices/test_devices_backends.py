"""Backends: registry, runner lifecycle, outputs, and clear errors where a backend cannot run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from devices_onnx_models import build_affine, build_convnet
from hwnas.devices import create_backend, list_backends, load_device
from hwnas.devices.backends import ModelKindError, get_backend_class
from hwnas.devices.protocol import ProtocolSettings
from hwnas.devices.spec import DeviceSpec
from hwnas.errors import DeviceUnavailableError, HwnasError, ModelFileError, UnknownBackendError

FAST = ProtocolSettings(warmup_runs=3, warmup_s=0.01, min_runs=10, time_cap_s=0.3)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_registry_lists_builtin_backends() -> None:
    assert {"ort", "torch-cpu", "torch-cuda", "tensorrt", "remote"} <= set(list_backends())
    with pytest.raises(UnknownBackendError, match="ort"):
        get_backend_class("nope")


@pytest.mark.parametrize("name", ["ort", "torch-cpu", "torch-cuda", "tensorrt", "remote"])
def test_every_backend_reports_availability(name: str) -> None:
    spec_name = {"ort": "ort-cpu-1t", "remote": "edge-rpi"}.get(name, name)
    spec = load_device(spec_name)
    reason = get_backend_class(name).unavailable_reason(spec)
    assert reason is None or (isinstance(reason, str) and reason)


def test_init_touches_nothing(tmp_path: Path) -> None:
    """Constructing a runner reads no file; the missing model is reported on __enter__."""
    b = create_backend(load_device("ort-cpu-1t"), model=tmp_path / "missing.onnx")
    assert not b.is_active
    with pytest.raises(ModelFileError, match="does not exist"):
        with b:
            pass
    assert not b.is_active


def test_ort_output_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((5, 3)), rng.standard_normal(3)
    path = build_affine(tmp_path / "affine.onnx", w, b)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    with create_backend(load_device("ort-cpu-1t"), model=path) as runner:
        y = runner.infer(x)
        assert runner.input_specs()[0].shape == (1, 5)
    np.testing.assert_allclose(y, x @ w.astype(np.float32) + b.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_ort_not_active_is_an_error(tiny_onnx: Path) -> None:
    runner = create_backend(load_device("ort-cpu-1t"), model=tiny_onnx)
    with pytest.raises(RuntimeError, match="context manager"):
        runner.infer(np.zeros((1, 3, 16, 16), np.float32))


def test_batch_comes_from_spec(tiny_onnx: Path) -> None:
    spec = DeviceSpec(name="b4", backend="ort", batch=4, options={"intra_op_threads": 1})
    with create_backend(spec, model=tiny_onnx) as runner:
        assert runner.input_specs()[0].shape == (4, 3, 16, 16)
        m = runner.measure(FAST)
    assert m.batch == 4 and m.input_shapes == {"input": [4, 3, 16, 16]}


def test_fixed_batch_mismatch(tmp_path: Path) -> None:
    path = build_convnet(tmp_path / "fixed.onnx", channels=4, size=8, batch=1)
    spec = DeviceSpec(name="b2", backend="ort", batch=2)
    with pytest.raises(ModelFileError, match="fixed batch of 1"):
        with create_backend(spec, model=path):
            pass


def test_dynamic_spatial_needs_input_shape(tmp_path: Path) -> None:
    path = build_convnet(tmp_path / "dyn.onnx", channels=4, size=8, spatial="H")
    spec = load_device("ort-cpu-1t")
    with pytest.raises(ModelFileError, match="input_shape"):
        with create_backend(spec, model=path):
            pass
    with create_backend(spec, model=path, input_shape=(1, 3, 20, 20)) as runner:
        assert runner.input_specs()[0].shape == (1, 3, 20, 20)
        assert runner.infer(np.zeros((1, 3, 20, 20), np.float32)).shape == (1, 10)


def test_ort_garbage_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(ModelFileError, match="onnxruntime cannot load"):
        with create_backend(load_device("ort-cpu-1t"), model=bad):
            pass


def test_ort_absent_provider_is_clear(tiny_onnx: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP")
    with pytest.raises(DeviceUnavailableError, match="no CUDAExecutionProvider"):
        with create_backend(load_device("ort-cuda"), model=tiny_onnx):
            pass


def _torch_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )  # fmt: skip


def test_torch_cpu_matches_module_and_does_not_mutate_it() -> None:
    import torch

    net = _torch_net().train()
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32)
    with create_backend(load_device("torch-cpu"), model=net, input_shape=(1, 3, 12, 12)) as runner:
        y = runner.infer(x)
        m = runner.measure(FAST)
    assert net.training  # the caller's module was copied, not put in eval mode
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert m.n >= FAST.min_runs and m.median_ms > 0


def test_torch_backend_refuses_onnx_path(tiny_onnx: Path) -> None:
    with pytest.raises(ModelKindError) as ei:
        create_backend(load_device("torch-cpu"), model=tiny_onnx)
    assert isinstance(ei.value, HwnasError)
    assert "PyTorch modules" in str(ei.value) and "`ort`" in str(ei.value)


def test_torch_backend_needs_input_shape() -> None:
    with pytest.raises(ModelKindError, match="input_shape"):
        create_backend(load_device("torch-cpu"), model=_torch_net())


def test_onnx_backend_refuses_module() -> None:
    with pytest.raises(ModelKindError, match="ONNX"):
        create_backend(load_device("ort-cpu-1t"), model=_torch_net())


def test_torch_cuda_unavailable_here() -> None:
    if _cuda():
        pytest.skip("a CUDA GPU is visible")
    runner = create_backend(load_device("torch-cuda"), model=_torch_net(), input_shape=(1, 3, 8, 8))
    with pytest.raises(DeviceUnavailableError, match="no CUDA GPU"):
        with runner:
            pass


def test_tensorrt_unavailable_here_with_install_hint(tiny_onnx: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed")
    runner = create_backend(load_device("tensorrt"), model=tiny_onnx)  # init must not import tensorrt
    with pytest.raises(DeviceUnavailableError) as ei:
        with runner:
            pass
    assert "TensorRT is not installed here (pip install tensorrt; needs an NVIDIA GPU)" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_tensorrt_older_than_10_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from hwnas.devices.backends import tensorrt as trt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))  # what import finds
    with pytest.raises(DeviceUnavailableError) as ei:
        trt_backend.import_tensorrt()
    msg = str(ei.value)
    assert "TensorRT 8.6.1 is installed" in msg and ">= 10" in msg and "\n" not in msg
    assert trt_backend.tensorrt_version_problem("10.13.0.35") is None
    assert trt_backend.tensorrt_version_problem("11.0.0.14") is None


def test_tensorrt_timing_cache_is_keyed_by_gpu_and_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from hwnas.devices.backends.tensorrt import (TensorRTBackend, resolve_timing_cache, timing_cache_key,
                                                 timing_cache_path)

    key = timing_cache_key("NVIDIA H200", (9, 0), "10.13.0.35")
    assert key == "nvidia-h200-sm90-trt10.13.0.35"
    assert timing_cache_key("NVIDIA H200", (9, 0), "11.0.0.14") != key  # another TensorRT: another file
    assert timing_cache_key("NVIDIA A100-SXM4-80GB", (8, 0), "10.13.0.35") != key  # another GPU: another file
    odd = timing_cache_key("GeForce RTX 4090 / ../../etc", (8, 9), "10.x/../1")
    assert re.fullmatch(r"[a-z0-9.-]+", odd) and ".." not in odd and "sm89" in odd
    monkeypatch.setenv("HOME", str(tmp_path))
    p = timing_cache_path(key)
    assert p == tmp_path / ".cache" / "hwnas" / "trt" / f"timing-{key}.cache" and p.name.count("/") == 0
    assert resolve_timing_cache("auto", key) == (p, True)
    assert resolve_timing_cache(str(tmp_path), key) == (tmp_path / f"timing-{key}.cache", True)  # a directory
    assert resolve_timing_cache("shared/", key) == (Path("shared") / f"timing-{key}.cache", True)
    assert resolve_timing_cache(str(tmp_path / "my.cache"), key) == (tmp_path / "my.cache", False)  # a file, as given
    assert resolve_timing_cache("", key) == (None, False)
    assert TensorRTBackend.option_defaults["timing_cache"] == "auto"
    assert load_device("tensorrt").options["timing_cache"] == "auto"


@pytest.fixture(scope="module")
def qdq_models(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> dict[str, Path]:
    """The tiny conv net quantized for ONNX Runtime (uint8 activations) and for TensorRT (int8 symmetric)."""
    from hwnas.formats.onnx_int8 import quantize_qdq

    d = tmp_path_factory.mktemp("qdq")
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    out = {"ort": d / "ort.onnx", "tensorrt": d / "trt.onnx"}
    for target, path in out.items():
        quantize_qdq(tiny_onnx, path, x, target=target)
    return out


def test_tensorrt_int8_refuses_a_model_without_qdq(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiling at int8 never builds a non-INT8 engine: an FP32 model is refused before TensorRT is touched."""
    from hwnas.devices.backends import tensorrt as trt_backend

    with pytest.raises(ModelFileError) as ei:
        trt_backend.model_for_precision(tiny_onnx, "int8")
    msg = str(ei.value)
    assert "\n" not in msg and "Q/DQ" in msg and "`hwnas export --format tensorrt --int8`" in msg
    assert "target='tensorrt'" in msg

    def no_tensorrt() -> None:
        raise AssertionError("TensorRT was reached with a model that cannot give an INT8 engine")

    monkeypatch.setattr(trt_backend.TensorRTBackend, "unavailable_reason", classmethod(lambda cls, spec: None))
    monkeypatch.setattr(trt_backend, "import_tensorrt", no_tensorrt)
    spec = DeviceSpec(name="trt-int8", backend="tensorrt", precision="int8")
    with pytest.raises(ModelFileError, match="--format tensorrt --int8"):
        with create_backend(spec, model=tiny_onnx):
            pass


def test_tensorrt_takes_its_precision_from_the_model(tiny_onnx: Path, qdq_models: dict[str, Path]) -> None:
    from hwnas.devices.backends.tensorrt import model_for_precision

    assert model_for_precision(qdq_models["tensorrt"], "int8") == "as-is"
    with pytest.raises(ModelFileError, match="not quantized for TensorRT.*int8 symmetric"):
        model_for_precision(qdq_models["ort"], "int8")  # uint8 asymmetric activations
    assert model_for_precision(tiny_onnx, "fp32") == "as-is"
    assert model_for_precision(tiny_onnx, "fp16") == "convert-fp16"  # made FP16 before the build
    with pytest.raises(ModelFileError, match="strongly typed"):
        model_for_precision(qdq_models["tensorrt"], "fp32")
    with pytest.raises(ModelFileError, match="BF16 ONNX model"):
        model_for_precision(tiny_onnx, "bf16")


# ---------------------------------------------------------------------- GPU (skipped without CUDA)
@pytest.mark.gpu
@pytest.mark.parametrize("precision, graphs", [("fp32", False), ("fp16", False), ("fp16", True), ("bf16", False)])
def test_torch_cuda_measures(precision: str, graphs: bool) -> None:
    if not _cuda():
        pytest.skip("no CUDA GPU visible to torch")
    spec = DeviceSpec(name="tc", backend="torch-cuda", precision=precision, options={"cuda_graphs": graphs})
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with create_backend(spec, model=_torch_net(), input_shape=(1, 3, 32, 32)) as runner:
        y = runner.infer(x)
        m = runner.measure(FAST)
    assert y.shape == (1, 4) and np.isfinite(y).all()
    assert m.median_ms > 0 and m.n >= FAST.min_runs


@pytest.mark.gpu
def test_ort_cuda_measures(tiny_onnx: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    with create_backend(load_device("ort-cuda"), model=tiny_onnx) as gpu, create_backend(
        load_device("ort-cpu-1t"), model=tiny_onnx
    ) as cpu:
        x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(gpu.infer(x), cpu.infer(x), rtol=1e-3, atol=1e-4)
        assert gpu.measure(FAST).median_ms > 0


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_builds_and_matches_ort(tmp_path: Path, tiny_onnx: Path) -> None:
    if importlib.util.find_spec("tensorrt") is None or not _cuda():
        pytest.skip("needs TensorRT and a CUDA GPU")
    spec = DeviceSpec(
        name="trt", backend="tensorrt", precision="fp32", options={"timing_cache": str(tmp_path / "timing.cache")}
    )
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with create_backend(spec, model=tiny_onnx) as trt, create_backend(load_device("ort-cpu-1t"), model=tiny_onnx) as ref:
        np.testing.assert_allclose(trt.infer(x), ref.infer(x), rtol=1e-2, atol=1e-3)
        assert trt.measure(FAST).median_ms > 0
    assert (tmp_path / "timing.cache").is_file()


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_low_precision_engines(tmp_path: Path, tiny_onnx: Path, qdq_models: dict[str, Path],
                                        precision: str) -> None:
    if importlib.util.find_spec("tensorrt") is None or not _cuda():
        pytest.skip("needs TensorRT and a CUDA GPU")
    model = qdq_models["tensorrt"] if precision == "int8" else tiny_onnx  # fp16: converted by the backend
    spec = DeviceSpec(name="trt", backend="tensorrt", precision=precision, options={"timing_cache": f"{tmp_path}/"})
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with create_backend(spec, model=model) as trt, create_backend(load_device("ort-cpu-1t"), model=model) as ref:
        np.testing.assert_allclose(trt.infer(x), ref.infer(x), rtol=5e-2, atol=5e-2)
        assert trt.measure(FAST).median_ms > 0
        info = trt.build_info
    assert info["strongly_typed"] and info["precision_check"]["layer_datatypes"][precision] > 0
    assert [p.name for p in tmp_path.iterdir()] == [Path(info["timing_cache"]["path"]).name]
    assert Path(info["timing_cache"]["path"]).name.startswith("timing-") and "-trt1" in info["timing_cache"]["path"]


def test_importing_is_cheap() -> None:
    """The package, the registry and the agent module import no heavy library."""
    import subprocess
    import sys

    code = (
        "import sys, hwnas.devices, hwnas.devices.agent; from hwnas.devices import list_backends; list_backends();"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
