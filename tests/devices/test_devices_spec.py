"""Device specs: loading, errors that list choices, and availability reasons on this machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from devices_agent_support import free_port
from hwnas.devices import list_devices, load_device
from hwnas.devices.backends import runtime_config
from hwnas.devices.spec import SHIPPED_DEVICES_DIR, DeviceSpec, DeviceSpecError
from hwnas.errors import HwnasError, UnknownBackendError, UnknownDeviceError

SHIPPED = ["edge-rpi", "ort-cpu", "ort-cpu-1t", "ort-cuda", "ort-trt", "ov-cpu-1t", "tensorrt", "torch-cpu",
           "torch-cuda"]


def _ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_load(name: str) -> None:
    spec = load_device(name)
    assert spec.name == name
    assert spec.batch >= 1
    assert runtime_config(spec).startswith(("ort:", "torch-", "tensorrt:", "openvino:"))
    d = spec.to_dict()
    assert DeviceSpec.from_dict(d) == spec


def test_ort_cpu_1t_fields() -> None:
    spec = load_device("ort-cpu-1t")
    assert spec.backend == "ort"
    assert spec.options["intra_op_threads"] == 1
    assert spec.options["execution_mode"] == "sequential"
    assert spec.precision == "fp32"
    assert Path(spec.source) == SHIPPED_DEVICES_DIR / "ort-cpu-1t.toml"


def test_edge_spec_has_address_and_token_env() -> None:
    spec = load_device("edge-rpi")
    assert spec.is_remote and spec.address == "127.0.0.1:8765" and spec.token_env == "HWNAS_AGENT_TOKEN"


def test_unknown_device_lists_choices() -> None:
    with pytest.raises(UnknownDeviceError) as ei:
        load_device("no-such-device")
    msg = str(ei.value)
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, HwnasError)
    assert "no-such-device" in msg and "ort-cpu-1t" in msg and "tensorrt" in msg


def test_load_by_path_and_env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "my-box.toml"
    f.write_text('backend = "ort"\nbatch = 2\n[options]\nintra_op_threads = 2\n')
    spec = load_device(f)
    assert spec.name == "my-box" and spec.batch == 2
    monkeypatch.setenv("HWNAS_DEVICES_DIR", str(tmp_path))
    assert load_device("my-box").options["intra_op_threads"] == 2
    assert "my-box" in [d.spec.name for d in list_devices()]


@pytest.mark.parametrize(
    "text, err, needle",
    [
        ('backend = "ort"\nbatch = 0\n', DeviceSpecError, "batch"),
        ('backend = "ort"\nprecision = "fp8"\n', DeviceSpecError, "precision"),
        ('backend = "ort"\n[options]\nthreadz = 1\n', DeviceSpecError, "intra_op_threads"),
        ('backend = "nope"\n', UnknownBackendError, "ort"),
        ('backend = "remote"\n', DeviceSpecError, "address"),
        ('backend = "ort"\ncolour = "red"\n', DeviceSpecError, "colour"),
        ('backend = "ort"\n[options\n', DeviceSpecError, "TOML"),
        # wrong-typed fields name the field and the type expected, whatever the field
        ('backend = "ort"\nbatch = "4"\n', DeviceSpecError, "'batch' must be a positive integer; got '4' (a string)"),
        ('backend = "ort"\nbatch = true\n', DeviceSpecError, "'batch' must be a positive integer; got True (a boolean)"),
        ('backend = 3\n', DeviceSpecError, "needs a string 'backend'; got 3 (an integer)"),
        ('backend = "ort"\nprecision = 32\n', DeviceSpecError, "'precision' = 32 is not one of"),
        ('backend = "ort"\ndescription = ["a"]\n', DeviceSpecError, "'description' must be a string; got ['a'] (an array)"),
        ('backend = "ort"\noptions = "fast"\n', DeviceSpecError, "[options] must be a table; got 'fast' (a string)"),
        ('backend = "ort"\nprotocol = [1]\n', DeviceSpecError, "[protocol] must be a table"),
        ('backend = "ort"\n[options]\nintra_op_threads = "two"\n', DeviceSpecError,
         "option 'intra_op_threads' must be an integer; got 'two' (a string)"),
        ('backend = "ort"\n[options]\nallow_spinning = "yes"\n', DeviceSpecError,
         "option 'allow_spinning' must be true or false"),
        ('backend = "ort"\n[options]\nprovider = 3\n', DeviceSpecError, "option 'provider' must be a string"),
        ('backend = "ort"\n[options]\nprovider_options = 1\n', DeviceSpecError, "option 'provider_options' must be a table"),
        ('backend = "remote"\naddress = "h:1"\ntoken_env = "T"\n[options]\ntimeout_s = inf\n', DeviceSpecError,
         "option 'timeout_s' must be a finite number"),
        ('backend = "remote"\naddress = 8765\ntoken_env = "T"\n', DeviceSpecError, "'address' must be a string"),
        ('backend = "ort"\n[protocol]\ntime_cap_s = "soon"\n', DeviceSpecError, "time_cap_s = 'soon' is not a number"),
        ('backend = "ort"\n[protocol]\nwarmup = 1\n', DeviceSpecError, "unknown protocol setting(s) warmup"),
    ],
)
def test_bad_specs_are_clear_errors(tmp_path: Path, text: str, err: type, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(err) as ei:
        load_device(f)
    assert needle in str(ei.value)
    assert "\n" not in str(ei.value)


def test_missing_spec_path() -> None:
    with pytest.raises(UnknownDeviceError, match="does not exist"):
        load_device("/nonexistent/dir/x.toml")


def test_list_devices_says_why() -> None:
    infos = {d.spec.name: d for d in list_devices()}
    assert set(SHIPPED) <= set(infos)
    assert infos["ort-cpu-1t"].available and infos["ort-cpu"].available and infos["torch-cpu"].available
    if "CUDAExecutionProvider" not in _ort_providers():
        assert not infos["ort-cuda"].available
        assert "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)" in infos["ort-cuda"].reason
    if "TensorrtExecutionProvider" not in _ort_providers():
        assert "TensorrtExecutionProvider" in infos["ort-trt"].reason
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt is not installed" in infos["tensorrt"].reason.lower()
        assert "pip install tensorrt" in infos["tensorrt"].reason
    if not _cuda():
        assert "no CUDA GPU visible to torch" in infos["torch-cuda"].reason
    d = infos["ort-cpu-1t"].to_dict()
    assert d["available"] is True and d["reason"] == "" and d["backend"] == "ort"


def test_remote_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hwnas.devices.spec import device_status

    port = free_port()
    f = tmp_path / "board.toml"
    f.write_text(f'backend = "remote"\naddress = "127.0.0.1:{port}"\ntoken_env = "HWNAS_TEST_TOKEN"\n')
    spec = load_device(f)
    monkeypatch.delenv("HWNAS_TEST_TOKEN", raising=False)
    info = device_status(spec)
    assert not info.available and "env var HWNAS_TEST_TOKEN not set" in info.reason
    monkeypatch.setenv("HWNAS_TEST_TOKEN", "x")
    info = device_status(spec)
    assert not info.available
    assert f"agent at 127.0.0.1:{port} is not reachable" in info.reason and "hwnas agent serve" in info.reason


def test_bad_spec_file_is_listed_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.toml").write_text("backend = \n")
    monkeypatch.setenv("HWNAS_DEVICES_DIR", str(tmp_path))
    infos = {d.spec.name: d for d in list_devices()}
    assert not infos["broken"].available and "TOML" in infos["broken"].reason
    assert infos["broken"].invalid and infos["broken"].to_dict()["invalid"] is True
    assert infos["ort-cpu-1t"].available and not infos["ort-cpu-1t"].invalid


def test_remote_timeout_may_be_an_integer(tmp_path: Path) -> None:
    """A float option given as a TOML integer is fine (the type check accepts ints for floats)."""
    f = tmp_path / "board.toml"
    f.write_text('backend = "remote"\naddress = "127.0.0.1:1"\ntoken_env = "T"\n[options]\ntimeout_s = 5\n')
    assert load_device(f).options["timeout_s"] == 5


def test_name_must_match_file(tmp_path: Path) -> None:
    f = tmp_path / "box-a.toml"
    f.write_text('name = "box-b"\nbackend = "ort"\n')
    with pytest.raises(DeviceSpecError, match="must match the file name"):
        load_device(f)


def test_spec_is_hashable_and_frozen() -> None:
    spec = load_device("ort-cpu-1t")
    assert hash(spec) == hash(load_device("ort-cpu-1t"))
    with pytest.raises(AttributeError):
        spec.batch = 2  # type: ignore[misc]
