"""Data shipped inside the package: device specs, reference predictors, calibration images.

``devices/``          one TOML spec per reference device (``hwnas devices`` lists them)
``predictors/NAME/``  predictor artifacts and the measurement store behind them, per supernet
``calibration_data/`` the Fashion-MNIST ``val`` and ``calib`` subsets (``.npz``)

They are read through :mod:`importlib.resources`, so they are found in a source checkout, an editable
install and an installed wheel alike.  hwnas never writes here: these are read-only inputs.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

__all__ = ["calibration_data_dir", "resource_dir", "shipped_devices_dir", "shipped_predictors_dir"]

_extracted = contextlib.ExitStack()  # only for a zipped install (Python 3.12+ extracts directories)
atexit.register(_extracted.close)


def resource_dir(name: str) -> Path:
    """The shipped directory ``name`` (``devices``, ``predictors``, ``calibration_data``) as a real path."""
    res = resources.files(__name__) / name
    if isinstance(res, Path):  # a normal install or a checkout: the directory itself
        return res
    return Path(_extracted.enter_context(resources.as_file(res)))


def shipped_devices_dir() -> Path:
    """The reference device specs (``*.toml``)."""
    return resource_dir("devices")


def shipped_predictors_dir(supernet: str | None = None) -> Path:
    """The shipped predictors, or those of one supernet (``shipped_predictors_dir("mbv3_fmnist")``)."""
    d = resource_dir("predictors")
    return d / supernet if supernet else d


def calibration_data_dir() -> Path:
    """The shipped Fashion-MNIST subsets (``val.npz``, ``calib.npz``)."""
    return resource_dir("calibration_data")
