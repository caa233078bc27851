"""Images for BN recalibration, INT8 calibration and export checks, per family.

The family's ``dataset`` names its data: ``fashion-mnist`` families use the shipped subsets
(``calib``: 2,000 training images; ``val``: 5,000 validation images).  Any family also takes a
user's ``.npz`` (``images`` array) or a directory holding ``calib.npz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas.errors import DataError


def load_calibration(family: Any, resolution: int, calibration: str | Path | None = None) -> torch.Tensor | None:
    """Calibration images as a normalized ``[N, C, r, r]`` float32 tensor, or ``None`` when the family has
    no shipped set and ``calibration`` is not given.

    ``calibration`` is a directory holding ``calib.npz`` (like the shipped calibration data) or an
    ``.npz`` file whose ``images`` array is either uint8 ``[N, H, W]`` (grayscale, resized and normalized
    like the family's dataset) or float32 ``[N, C, r, r]`` already normalized.
    """
    if calibration is None:
        if family.dataset != "fashion-mnist":
            return None
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, _ = load_split("calib")
        return to_tensor(imgs, resolution)
    p = Path(calibration).expanduser()
    f = p / "calib.npz" if p.is_dir() else p
    if not f.is_file():
        where = f"directory {p} has no calib.npz" if p.is_dir() else f"{p} does not exist"
        raise DataError(f"calibration data not found: {where}; pass a directory with calib.npz or an .npz file")
    try:
        with np.load(f, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(f"calibration file {f} has no 'images' array (it has: {', '.join(z.files) or 'nothing'})")
            imgs = z["images"]
    except DataError:
        raise
    except Exception as exc:  # zipfile / OSError / ValueError for a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"calibration file {f} is unreadable or corrupt ({first[:160]})") from None
    c = family
    if imgs.dtype == np.uint8 and imgs.ndim == 3 and c.in_channels == 1 and len(imgs):
        from hwnas.data.fashion_mnist import to_tensor

        return to_tensor(imgs, resolution)  # Fashion-MNIST's normalization: the only 1-channel family
    want = (c.in_channels, resolution, resolution)
    if imgs.dtype == np.float32 and imgs.ndim == 4 and tuple(imgs.shape[1:]) == want and len(imgs):
        return torch.from_numpy(np.ascontiguousarray(imgs))
    raise DataError(f"calibration file {f} holds {imgs.dtype} images of shape {tuple(imgs.shape)}; expected uint8 "
                    f"[N, H, W] (1-channel families) or float32 [N, {want[0]}, {want[1]}, {want[2]}], normalized")


def check_images(family: Any, resolution: int, split: str = "val", n: int = 1000) -> tuple[torch.Tensor, str]:
    """Real images for checks where the family has a shipped dataset; random inputs otherwise."""
    if family.dataset == "fashion-mnist":
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, _ = load_split(split)
        return to_tensor(imgs[:n], resolution), f"fashion-mnist {split} ({min(n, len(imgs))} images)"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(min(n, 16), family.in_channels, resolution, resolution, generator=g)
    return x, "random normal inputs (no shipped dataset for this family)"


def validation_data(family: Any, resolution: int) -> tuple[torch.Tensor, np.ndarray | None, str]:
    """The whole validation split (5,000 Fashion-MNIST images) with labels; random inputs otherwise."""
    if family.dataset == "fashion-mnist":
        from hwnas.data.fashion_mnist import load_split, to_tensor

        imgs, labels = load_split("val")
        return to_tensor(imgs, resolution), np.asarray(labels), f"fashion-mnist val ({len(imgs)} images)"
    x, source = check_images(family, resolution, "val")
    return x, None, source


__all__ = ["check_images", "load_calibration", "validation_data"]
