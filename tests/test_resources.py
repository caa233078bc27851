"""Shipped data lives inside the package and is found through ``hwnas.resources``; user dirs come first."""

from __future__ import annotations

from pathlib import Path

import pytest

import hwnas
from hwnas.resources import calibration_data_dir, resource_dir, shipped_devices_dir, shipped_predictors_dir

PKG = Path(hwnas.__file__).resolve().parent


def test_shipped_dirs_are_inside_the_package():
    for d in (shipped_devices_dir(), shipped_predictors_dir(), calibration_data_dir()):
        assert d.is_dir() and d.resolve().is_relative_to(PKG / "resources")
    assert (shipped_devices_dir() / "ort-cpu-1t.toml").is_file()
    names = {p.name for p in shipped_predictors_dir("mbv3_fmnist").iterdir()}
    assert {"accuracy.json", "ort-cpu-1t.xgb.json", "reference_store.sqlite"} <= names
    assert {"val.npz", "calib.npz"} <= {p.name for p in calibration_data_dir().iterdir()}
    assert resource_dir("devices") == shipped_devices_dir()


def test_calibration_data_dir_and_its_override(monkeypatch):
    from hwnas.data import fashion_mnist as fm

    monkeypatch.delenv(fm.ENV_CALIB_DIR, raising=False)
    assert fm.calib_dir() == calibration_data_dir()
    monkeypatch.setenv(fm.ENV_CALIB_DIR, "/somewhere/else")
    assert fm.calib_dir() == Path("/somewhere/else")


def _spec(d: Path, name: str, threads: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.toml").write_text(f'backend = "ort"\n[options]\nintra_op_threads = {threads}\n')


def test_device_lookup_order(tmp_path, monkeypatch: pytest.MonkeyPatch):
    from hwnas.devices import load_device
    from hwnas.devices.spec import SHIPPED_DEVICES_DIR, device_dirs

    monkeypatch.delenv("HWNAS_DEVICES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert device_dirs() == [SHIPPED_DEVICES_DIR]  # no ./devices here
    _spec(tmp_path / "devices", "ort-cpu-1t", 3)  # ./devices overrides a shipped spec
    _spec(tmp_path / "devices", "mine", 2)
    assert load_device("ort-cpu-1t").options["intra_op_threads"] == 3
    assert Path(load_device("mine").source) == tmp_path / "devices" / "mine.toml"
    _spec(tmp_path / "env", "mine", 4)  # $HWNAS_DEVICES_DIR comes before ./devices
    monkeypatch.setenv("HWNAS_DEVICES_DIR", str(tmp_path / "env"))
    assert load_device("mine").options["intra_op_threads"] == 4
    assert device_dirs() == [tmp_path / "env", tmp_path / "devices", SHIPPED_DEVICES_DIR]
    monkeypatch.chdir(SHIPPED_DEVICES_DIR.parent)  # ./devices is the shipped dir itself: listed once
    assert device_dirs().count(SHIPPED_DEVICES_DIR) == 1
