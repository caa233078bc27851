"""Images for BN recalibration, INT8 calibration and export checks, per family.

With no data given, ``fashion-mnist`` families use the shipped subsets (``calib``: 2,000 training
images; ``val``: 5,000 validation images) and other families have none.  Given data (``--data``) is
anything ``hwnas.data.images.open_dataset`` reads (an image folder, train/val folders, an ``.npz``
of images and labels, a Fashion-MNIST IDX directory), or, for calibration only, a directory holding
``calib.npz`` or an ``.npz`` of float32 ``[N, C, r, r]`` images already normalized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas.errors import DataError

_OPEN: dict[tuple, Any] = {}


def dataset_for(family: Any, data: Any) -> Any:
    """``open_dataset(data, family)``, opened once per (family, path) in this process; a dataset object
    (``ImageDataset``/``EvalData``) is returned as it is."""
    if hasattr(data, "tensors"):
        return data
    from hwnas.data.images import open_dataset

    p = Path(data).expanduser().resolve()
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        mtime = 0
    key = (family.name, str(p), mtime)
    if key not in _OPEN:
        _OPEN.clear()  # one dataset at a time: images are cached per resolution inside it
        _OPEN[key] = open_dataset(p, family)
    return _OPEN[key]


def _is_legacy(family: Any, p: Path) -> bool:
    """The older calibration-only formats: ``DIR/calib.npz``, or an ``.npz`` without labels holding
    normalized float32 images (or, for Fashion-MNIST families, uint8 ``[N, 28, 28]``)."""
    if p.is_dir():
        return (p / "calib.npz").is_file()
    if not (p.is_file() and p.suffix.lower() == ".npz"):
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            if "labels" in z.files or "images" not in z.files:
                return False
            imgs = z["images"]
    except Exception:
        return False  # open_dataset reports it
    return imgs.dtype == np.float32 or (imgs.dtype == np.uint8 and imgs.ndim == 3 and family.dataset == "fashion-mnist")


def _legacy_calibration(family: Any, resolution: int, p: Path) -> torch.Tensor:
    f = p / "calib.npz" if p.is_dir() else p
    try:
        with np.load(f, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(f"calibration file {f} has no 'images' array (it has: {', '.join(z.files) or 'nothing'})")
            imgs = z["images"]
    except DataError:
        raise
    except Exception as exc:  # zipfile / OSError / ValueError for a corrupt file
        from hwnas.data.images import _first_line

        raise DataError(f"calibration file {f} is unreadable or corrupt ({_first_line(exc)})") from None
    c = family
    if imgs.dtype == np.uint8 and imgs.ndim == 3 and c.in_channels == 1 and len(imgs):
        from hwnas.data.fashion_mnist import to_tensor

        return to_tensor(imgs, resolution)  # the shipped subsets' own normalization
    want = (c.in_channels, resolution, resolution)
    if imgs.dtype == np.float32 and imgs.ndim == 4 and tuple(imgs.shape[1:]) == want and len(imgs):
        return torch.from_numpy(np.ascontiguousarray(imgs))
    raise DataError(f"calibration file {f} holds {imgs.dtype} images of shape {tuple(imgs.shape)}; expected uint8 "
                    f"[N, H, W] (1-channel families) or float32 [N, {want[0]}, {want[1]}, {want[2]}], normalized")


def load_calibration(family: Any, resolution: int, calibration: Any = None) -> torch.Tensor | None:
    """Calibration images as a normalized ``[N, C, r, r]`` float32 tensor, or ``None`` when the family has
    no shipped set and ``calibration`` is not given (see the module docstring for what it can be)."""
    if calibration is None:
        if family.dataset != "fashion-mnist":
            return None
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, _ = load_split("calib")
        return to_tensor(imgs, resolution)
    if hasattr(calibration, "tensors"):
        return _calibration_of(calibration, resolution)
    p = Path(calibration).expanduser()
    if not p.exists():
        raise DataError(f"calibration data {p} does not exist; pass an image folder (one folder per class), an .npz "
                        f"or a directory with calib.npz")
    if _is_legacy(family, p):
        return _legacy_calibration(family, resolution, p)
    return _calibration_of(dataset_for(family, p), resolution)


def _calibration_of(ds: Any, resolution: int) -> torch.Tensor:
    if hasattr(ds, "calibration"):
        return ds.calibration(resolution)
    return ds.tensors(resolution)[1].contiguous()  # EvalData: (val, calib)


def check_images(family: Any, resolution: int, split: str = "val", n: int = 1000,
                 data: Any = None) -> tuple[torch.Tensor, str]:
    """Real images for checks: the given dataset's validation images, the family's shipped set, or random
    inputs when there is neither."""
    ds = None if data is None else _labelled_dataset(family, data)
    if ds is not None:
        x, _ = _validation_of(ds, resolution)
        return x[:n], f"{_describe(ds)} ({min(n, len(x))} images)"
    if family.dataset == "fashion-mnist":
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, _ = load_split(split)
        return to_tensor(imgs[:n], resolution), f"fashion-mnist {split} ({min(n, len(imgs))} images)"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(min(n, 16), family.in_channels, resolution, resolution, generator=g)
    return x, "random normal inputs (no shipped dataset for this family)"


def _labelled_dataset(family: Any, data: Any) -> Any:
    if hasattr(data, "tensors"):
        return data
    p = Path(data).expanduser()
    if _is_legacy(family, p):
        return None  # calibration-only files
    ds = dataset_for(family, p)
    return ds if getattr(ds, "labelled", True) else None


def _validation_of(ds: Any, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(ds, "validation"):
        return ds.validation(resolution)
    return ds.tensors(resolution)[0].contiguous(), ds.labels


def _describe(ds: Any) -> str:
    if hasattr(ds, "describe"):
        return ds.describe()
    return f"fashion-mnist {ds.split}"


def validation_data(family: Any, resolution: int, data: Any = None) -> tuple[torch.Tensor, np.ndarray | None, str]:
    """Validation images with labels: the given dataset's, else the family's shipped split (5,000
    Fashion-MNIST images), else random inputs without labels."""
    if data is not None:
        ds = _labelled_dataset(family, data)
        if ds is not None:
            from hwnas.data.images import ClassLabels

            x, y = _validation_of(ds, resolution)
            return x, ClassLabels.of(y, getattr(ds, "n_outputs", None)), f"{_describe(ds)}"
    if family.dataset == "fashion-mnist":
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, labels = load_split("val")
        return to_tensor(imgs, resolution), np.asarray(labels), f"fashion-mnist val ({len(imgs)} images)"
    x, source = check_images(family, resolution, "val")
    return x, None, source


__all__ = ["check_images", "dataset_for", "load_calibration", "validation_data"]
