"""A user's own labelled images, for any family: BN recalibration, accuracy evaluation, INT8 calibration.

``open_dataset(path, family)`` reads one of these layouts (``--data PATH`` on every command):

* an **image folder**: ``PATH/<class>/*.png|jpg|...``, one folder per class, labels by sorted folder
  name (the layout and label order of ``torchvision.datasets.ImageFolder``; for ImageNet's 1000 synset
  folders that is the order Once-for-All's classifier uses);
* an image folder with **splits**: ``PATH/train/<class>/...`` and ``PATH/val/<class>/...`` (the
  ImageNet layout): calibration images come from ``train``, evaluation from ``val``;
* **arrays** in an ``.npz``: ``images`` (uint8 ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]``) and
  ``labels`` (int ``[N]``); without ``labels`` it serves calibration only;
* a **Fashion-MNIST IDX directory** (``train-images-idx3-ubyte[.gz]`` ...): the fixed splits of
  ``hwnas.data.fashion_mnist``.

Without splits, one fixed seeded draw of the pool gives the calibration images (``calib_images``,
2,000 as Once-for-All uses, at most half the pool) and the rest is the validation set (all of it, or a
fixed subset of ``val_images``).  An image folder without class folders (images directly in ``PATH``)
is unlabelled: calibration only.

Preprocessing is the family's (``SupernetFamily.crop_ratio``, ``mean``, ``std``): for ImageNet families
the evaluation transform of Once-for-All and timm (resize the shorter side to ``ceil(r / 0.875)``,
bilinear, center crop ``r``), then ``[0, 1]`` scaling and the family's mean/std; for others a resize
to ``r x r``.  Images are converted to the family's channel count (grayscale strays in an RGB folder,
as in ImageNet, become RGB like torchvision's loader does); a folder whose images all have the wrong
channel count, more classes than the classifier has outputs, an empty folder or an unreadable image
is one ``DataError`` line, raised before any evaluation starts.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hwnas.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
DEFAULT_CALIB_IMAGES = 2000
_PROBE_PER_CLASS = 2
_CACHE_RESOLUTIONS = 2


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return (s.splitlines()[0] if s else type(exc).__name__)[:160]


def _bands(mode: str) -> int:
    """Colour channels of a PIL mode, alpha not counted ('P' palettes are colour)."""
    if mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return 3
    return 1  # L, LA, 1, I, F, I;16...


# ---------------------------------------------------------------------------------- preprocessing
def preprocess_pil(img: Any, family: Any, resolution: int) -> np.ndarray:
    """One PIL image -> uint8 ``[C, r, r]`` by the family's evaluation transform (before normalization)."""
    from PIL import Image

    r = int(resolution)
    img = img.convert("RGB" if family.in_channels == 3 else "L")
    crop = float(getattr(family, "crop_ratio", 1.0))
    if crop < 1.0:
        short = int(math.ceil(r / crop))
        w, h = img.size
        if w <= h:
            size = (short, int(short * h / w))
        else:
            size = (int(short * w / h), short)
        img = img.resize(size, Image.BILINEAR)
        w, h = img.size
        left, top = int(round((w - r) / 2.0)), int(round((h - r) / 2.0))
        img = img.crop((left, top, left + r, top + r))
    elif img.size != (r, r):
        img = img.resize((r, r), Image.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None, :, :] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def normalize(x_uint8: torch.Tensor, family: Any) -> torch.Tensor:
    """uint8 ``[N, C, r, r]`` -> float32 scaled to [0, 1] and normalized by the family's mean/std."""
    mean = torch.tensor(family.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(family.std, dtype=torch.float32).view(1, -1, 1, 1)
    return x_uint8.to(torch.float32).div_(255.0).sub_(mean).div_(std).contiguous()


class ClassLabels(np.ndarray):
    """int64 labels that know how many classes their dataset has: a dataset of ``K`` classes is scored
    by the classifier's first ``K`` outputs (class ``k`` is output ``k``), so a 2-class folder is not
    scored against 1,000 ImageNet outputs.  ``top1_of`` applies it."""

    n_classes: int | None = None

    @classmethod
    def of(cls, labels: Any, n_classes: int | None) -> "ClassLabels":
        out = np.asarray(labels, dtype=np.int64).view(cls)
        out.n_classes = None if n_classes is None else int(n_classes)
        return out

    def __array_finalize__(self, obj: Any) -> None:
        self.n_classes = getattr(obj, "n_classes", None)


def top1_of(logits: Any, labels: Any) -> float:
    """Top-1 of ``logits`` against ``labels`` (numpy or torch), over the labels' ``n_classes`` outputs."""
    k = getattr(labels, "n_classes", None)
    lg = logits[:, :k] if k else logits
    pred = lg.argmax(1)
    if isinstance(pred, torch.Tensor):
        y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        return float((pred == y).float().mean())
    return float((pred == np.asarray(labels)).mean())


# ---------------------------------------------------------------------------------- sources
@dataclass
class _Pool:
    """Images of one role: files on disk or an in-memory array, with labels (or none)."""

    files: list[Path] | None = None
    arrays: np.ndarray | None = None  # uint8 [N, H, W, C] or [N, H, W]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.arrays)

    def subset(self, idx: np.ndarray) -> "_Pool":
        idx = np.asarray(idx, dtype=np.int64)
        return _Pool(files=None if self.files is None else [self.files[i] for i in idx],
                     arrays=None if self.arrays is None else self.arrays[idx],
                     labels=None if self.labels is None else self.labels[idx])

    def image(self, i: int):
        from PIL import Image, UnidentifiedImageError

        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        f = self.files[i]
        try:
            with Image.open(f) as im:
                im.load()
                return im.copy() if im.mode != "P" else im.convert("RGBA")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise DataError(f"image {f} is unreadable ({_first_line(exc)}); remove or replace it") from None


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def _class_dirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_folder(root: Path) -> tuple[_Pool, list[str]]:
    """``root/<class>/*`` -> files and labels (sorted class names), or unlabelled ``root/*`` images."""
    try:
        classes = _class_dirs(root)
        if not classes:
            files = _image_files(root)
            if not files:
                raise DataError(f"no images found in {root}: expected one folder per class ({root}/<class>/*.png|"
                                f"jpg|...) like torchvision's ImageFolder, train/ and val/ class folders, or a "
                                f"calib.npz")
            return _Pool(files=files, labels=None), []
        files, labels = [], []
        for k, c in enumerate(classes):
            fs = _image_files(c)
            if not fs:
                raise DataError(f"class folder {c} holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...); "
                                f"add images or remove the folder")
            files += fs
            labels += [k] * len(fs)
    except PermissionError as exc:
        raise DataError(f"cannot read {exc.filename or root}: permission denied") from None
    return _Pool(files=files, labels=np.asarray(labels, dtype=np.int64)), [c.name for c in classes]


def _is_idx_dir(p: Path) -> bool:
    return any((p / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))


def _read_npz(f: Path) -> tuple[_Pool, _Pool | None, list[str]]:
    try:
        with np.load(f, allow_pickle=False) as z:
            names = set(z.files)
            if "images" not in names:
                raise DataError(f"{f} has no 'images' array (it has: {', '.join(sorted(names)) or 'nothing'}); "
                                f"save images (uint8 [N, H, W(, C)]) and labels (int [N])")
            images = z["images"]
            labels = z["labels"] if "labels" in names else None
            calib = z["calib_images"] if "calib_images" in names else None
    except DataError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{f} is unreadable or corrupt ({_first_line(exc)}); rewrite it with numpy.savez") from None

    def as_hwc(a: np.ndarray, what: str) -> np.ndarray:
        if a.dtype != np.uint8 or a.ndim not in (3, 4) or not len(a):
            raise DataError(f"{f}: {what} is {a.dtype} of shape {tuple(a.shape)}; expected uint8 [N, H, W], "
                            f"[N, H, W, C] or [N, C, H, W] with N > 0")
        if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(0, 2, 3, 1)
        if a.ndim == 4 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim == 4 and a.shape[-1] != 3:
            raise DataError(f"{f}: {what} has {a.shape[-1]} channels; expected 1 or 3")
        return np.ascontiguousarray(a)

    images = as_hwc(images, "'images'")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{f}: 'labels' is {labels.dtype} of shape {tuple(labels.shape)}; expected int [{len(images)}]")
        if labels.min() < 0:
            raise DataError(f"{f}: 'labels' has negative class {int(labels.min())}; classes are 0..K-1")
        labels = labels.astype(np.int64)
    pool = _Pool(arrays=images, labels=labels)
    cpool = None if calib is None else _Pool(arrays=as_hwc(calib, "'calib_images'"))
    n_classes = 0 if labels is None else int(labels.max()) + 1
    return pool, cpool, [str(k) for k in range(n_classes)]


# ---------------------------------------------------------------------------------- the dataset
@dataclass(eq=False)
class ImageDataset:
    """Calibration and validation images of one user dataset for one family.

    ``tensors(r)`` -> ``(val x, calib x)``, normalized float32 at resolution ``r``; ``labels``: the
    validation labels.  ``split`` names the validation set in the store (``val@<data id>``), so
    accuracies of different datasets never mix.  Same interface as ``EvalData``.
    """

    family: Any
    root: Path
    layout: str
    classes: list[str]
    val_pool: _Pool | None
    calib_pool: _Pool
    data_id: str
    batch_size: int = 500
    _cache: "OrderedDict[tuple[str, int], torch.Tensor]" = field(default_factory=OrderedDict, repr=False)

    @property
    def split(self) -> str:
        return f"val@{self.data_id}"

    @property
    def labelled(self) -> bool:
        return self.val_pool is not None and self.val_pool.labels is not None and len(self.val_pool) > 0

    @property
    def labels(self) -> torch.Tensor:
        self._need_labels()
        return torch.from_numpy(self.val_pool.labels.copy())

    @property
    def n_outputs(self) -> int | None:
        """The classifier outputs scored: the dataset's class count when it has fewer than the family."""
        k = len(self.classes)
        return k if 0 < k < self.family.n_classes else None

    @property
    def n_val(self) -> int:
        return len(self.val_pool) if self.val_pool is not None else 0

    @property
    def n_calib(self) -> int:
        return len(self.calib_pool)

    def describe(self) -> str:
        cls = f", {len(self.classes)} classes" if self.classes else ", unlabelled"
        return f"{self.root} ({self.layout}{cls}; {self.n_calib} calibration / {self.n_val} validation images)"

    def _need_labels(self) -> None:
        if not self.labelled:
            raise DataError(f"{self.root} has no labelled validation images (it is {self.layout}); accuracy needs "
                            f"one folder per class ({self.root}/<class>/...) or an .npz with 'labels'")

    def _images(self, role: str, resolution: int) -> torch.Tensor:
        key = (role, int(resolution))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        pool = self.calib_pool if role == "calib" else self.val_pool
        out = np.empty((len(pool), self.family.in_channels, resolution, resolution), dtype=np.uint8)
        for i in range(len(pool)):
            out[i] = preprocess_pil(pool.image(i), self.family, resolution)
        t = torch.from_numpy(out)
        self._cache[key] = t
        while len(self._cache) > 2 * _CACHE_RESOLUTIONS:
            self._cache.popitem(last=False)
        return t

    def calibration(self, resolution: int) -> torch.Tensor:
        return normalize(self._images("calib", resolution), self.family)

    def validation(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._need_labels()
        return normalize(self._images("val", resolution), self.family), self.labels

    def tensors(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.validation(resolution)
        return (x.contiguous(memory_format=torch.channels_last),
                self.calibration(resolution).contiguous(memory_format=torch.channels_last))

    def check_readable(self) -> None:
        """Decode every image once (names the first unreadable file), without keeping them."""
        for pool in (self.calib_pool, self.val_pool):
            if pool is not None and pool.files is not None:
                for i in range(len(pool)):
                    pool.image(i)


def _fingerprint(parts: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            try:
                st = p.stat()
            except OSError:
                h.update(str(p).encode())
                continue
            h.update(f"{p.parent.name}/{p.name}:{st.st_size}".encode())
        elif isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(str(p).encode())
    return h.hexdigest()[:12]


def _probe_channels(pool: _Pool, family: Any, root: Path) -> None:
    """Every probed image with the wrong channel count -> one line (a few strays are converted)."""
    if pool.arrays is not None:
        c = 1 if pool.arrays.ndim == 3 else pool.arrays.shape[-1]
        if c != family.in_channels:
            raise DataError(f"{root} holds {c}-channel images; supernet {family.name} takes {family.in_channels}-"
                            f"channel images ({'RGB' if family.in_channels == 3 else 'grayscale'}); convert them")
        return
    idx: list[int] = []
    if pool.labels is None:
        idx = list(range(min(len(pool), 8)))
    else:
        for k in np.unique(pool.labels):
            idx += [int(i) for i in np.flatnonzero(pool.labels == k)[:_PROBE_PER_CLASS]]
    bands = [_bands(pool.image(i).mode) for i in idx]
    if bands and all(b != family.in_channels for b in bands):
        raise DataError(f"{root} holds {bands[0]}-channel images (e.g. {pool.files[idx[0]].name}); supernet "
                        f"{family.name} takes {family.in_channels}-channel "
                        f"{'RGB' if family.in_channels == 3 else 'grayscale'} images; convert them")


def _check_classes(classes: list[str], family: Any, root: Path) -> None:
    if len(classes) > family.n_classes:
        raise DataError(f"{root} has {len(classes)} classes but supernet {family.name}'s classifier has "
                        f"{family.n_classes} outputs; use at most {family.n_classes} classes (labels follow "
                        f"the sorted folder names)")


def open_dataset(path: str | os.PathLike, family: Any, *, val_images: int | None = None,
                 calib_images: int = DEFAULT_CALIB_IMAGES, seed: int = 0, batch_size: int = 500) -> Any:
    """The dataset at ``path`` for ``family`` (see the module docstring): an ``ImageDataset``, or the
    Fashion-MNIST ``EvalData`` for an IDX directory.  Layout, channels and classes are checked here."""
    p = Path(path).expanduser()
    if isinstance(calib_images, bool) or int(calib_images) < 1:
        raise DataError(f"calib_images must be a positive number; got {calib_images!r}")
    if val_images is not None and (isinstance(val_images, bool) or int(val_images) < 1):
        raise DataError(f"val_images must be a positive number; got {val_images!r}")
    if not p.exists():
        raise DataError(f"data {p} does not exist; pass an image folder (one folder per class), an .npz or a "
                        f"Fashion-MNIST IDX directory")
    if p.is_dir() and _is_idx_dir(p):
        if family.dataset != "fashion-mnist":
            raise DataError(f"{p} is a Fashion-MNIST IDX directory; supernet {family.name} is a {family.dataset} "
                            f"family: pass an image folder of its data")
        from hwnas.supernet.evaluate import EvalData

        return EvalData.load("val", str(p), batch_size=batch_size)
    rng = np.random.default_rng(seed)
    calib_pool: _Pool | None = None
    if p.is_file():
        if p.suffix.lower() != ".npz":
            raise DataError(f"data {p} is a file but not an .npz; pass an image folder or an .npz with 'images' "
                            f"and 'labels'")
        pool, calib_pool, classes = _read_npz(p)
        layout, fp = "arrays", [p.name, p.stat().st_size, _fingerprint([pool.arrays[:: max(1, len(pool) // 64)]])]
    elif (p / "train").is_dir() and (p / "val").is_dir():
        train, classes_t = _read_folder(p / "train")
        pool, classes = _read_folder(p / "val")
        if pool.labels is None or train.labels is None or classes != classes_t:
            raise DataError(f"{p}/train and {p}/val must hold the same class folders "
                            f"({len(classes_t)} vs {len(classes)} classes)")
        n = min(int(calib_images), len(train))
        calib_pool = train.subset(np.sort(rng.permutation(len(train))[:n]))
        layout, fp = "train/val folders", [*calib_pool.files, "|", *pool.files]
    else:
        pool, classes = _read_folder(p)
        layout, fp = ("image folder" if classes else "unlabelled image folder"), list(pool.files)
    _check_classes(classes, family, p)
    if calib_pool is None:
        if pool.labels is None:  # unlabelled: all of it calibrates, nothing to evaluate
            n = min(int(calib_images), len(pool))
            calib_pool, val_pool = pool.subset(np.sort(rng.permutation(len(pool))[:n])), None
        else:
            if len(pool) < 2:
                raise DataError(f"{p} holds {len(pool)} image; it needs at least 2 (calibration and validation)")
            perm = rng.permutation(len(pool))
            n = min(int(calib_images), len(pool) // 2)
            calib_pool, val_pool = pool.subset(np.sort(perm[:n])), pool.subset(np.sort(perm[n:]))
    else:
        val_pool = pool if pool.labels is not None else None
    if val_pool is not None and val_images is not None and len(val_pool) > int(val_images):
        val_pool = val_pool.subset(np.sort(np.random.default_rng(seed + 1).permutation(len(val_pool))[:int(val_images)]))
    _probe_channels(calib_pool, family, p)
    if val_pool is not None:
        _probe_channels(val_pool, family, p)
    data_id = _fingerprint([family.name, layout, seed, calib_images, val_images, *fp])
    return ImageDataset(family=family, root=p, layout=layout, classes=list(classes), val_pool=val_pool,
                        calib_pool=calib_pool, data_id=data_id, batch_size=batch_size)


__all__ = ["DEFAULT_CALIB_IMAGES", "IMAGE_EXTENSIONS", "ClassLabels", "ImageDataset", "normalize", "open_dataset",
           "preprocess_pil", "top1_of"]
