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
