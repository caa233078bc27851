"""Fashion-MNIST: IDX loading, the fixed splits, normalization and batching.

Splits (fixed forever; changing them invalidates every accuracy predictor trained on ``val``):

* the official 60k training set is permuted with ``numpy.random.default_rng(0).permutation(60000)``;
  ``val`` = the first 5,000 indices of that permutation, ``train`` = the remaining 55,000
  (in permutation order), ``calib`` = the first 2,000 indices of ``train``
  (i.e. permutation positions 5,000..6,999), so ``calib`` is a uniform random subset of ``train``;
* ``test`` = the official 10k ``t10k`` set, in file order. Final figures only.

``val`` and ``calib`` are shipped as ``hwnas/resources/calibration_data/{val,calib}.npz`` so they work
without the full dataset; ``train`` and ``test`` need the IDX files (Debian package ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.errors import DataError

__all__ = [
    "DEFAULT_DIR",
    "SPLITS",
    "SPLIT_SEED",
    "NUM_CLASSES",
    "CLASSES",
    "MEAN",
    "STD",
    "read_idx",
    "resolve_data_dir",
    "calib_dir",
    "load_raw",
    "split_indices",
    "load_split",
    "to_tensor",
    "batches",
    "augment_batch",
]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DATA_DIR = "HWNAS_FMNIST_DIR"
ENV_CALIB_DIR = "HWNAS_CALIB_DIR"

SPLITS = ("train", "val", "test", "calib")
SPLIT_SEED = 0
N_TRAIN_FILE = 60_000
N_TEST_FILE = 10_000
N_VAL = 5_000
N_CALIB = 2_000
IMAGE_SIZE = 28
NUM_CLASSES = 10
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Pixel statistics of the 55,000-image ``train`` split, on the [0, 1] scale (uint8 / 255),
# over all pixels of all images (population std, float64 accumulation). Computed once with
#   x = load_split("train")[0].astype(np.float64) / 255; MEAN, STD = x.mean(), x.std()
# (``python -m hwnas.data.make_subsets`` prints them; tests/data check them against the raw files).
MEAN = 0.28618128  # 0.2861812804212594
STD = 0.35307522  # 0.35307521677547743

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data DIR"


# ----------------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw; detected from the content, not the name).

    ``expected_magic`` (2051 for images, 2049 for labels) is checked when given. A missing,
    truncated or malformed file raises :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path} is a truncated or corrupt gzip file ({e}); re-download or reinstall it"
            ) from None
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(raw)} bytes; re-download or reinstall it")
    magic = int.from_bytes(raw[:4], "big")
    zero, type_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{path} has IDX magic number {magic}, expected {expected_magic}; "
            "is it the wrong file or not an IDX file?"
        )
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {magic}); re-download or reinstall it")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: the IDX header needs {header} bytes, file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what}: shape {dims} needs {expected} data bytes, found {got}; "
            "re-download or reinstall it"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


# ----------------------------------------------------------------------------------------------
# Locations
# ----------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The Fashion-MNIST directory: ``data_dir``, else ``$HWNAS_FMNIST_DIR``, else the Debian path."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DIR


def calib_dir() -> Path:
    """Where the shipped subsets live: ``$HWNAS_CALIB_DIR``, else the package's ``resources/calibration_data``."""
    env = os.environ.get(ENV_CALIB_DIR)
    if env:
        return Path(env).expanduser()
    from hwnas.resources import calibration_data_dir

    return calibration_data_dir()


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def load_raw(part: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The official ``"train"`` (60k) or ``"t10k"`` (10k) set as read-only arrays, in file order."""
    if part not in _FILES:
        raise DataError(f"unknown Fashion-MNIST file set {part!r}; choose 'train' or 't10k'")
    directory = resolve_data_dir(data_dir)
    img_stem, lbl_stem = _FILES[part]
    img_path, lbl_path = _find_file(directory, img_stem), _find_file(directory, lbl_stem)
    if img_path is None or lbl_path is None:
        if directory.is_dir():
            missing = img_stem if img_path is None else lbl_stem
            raise DataError(
                f"Fashion-MNIST not found at {directory} (no {missing}[.gz]); {_INSTALL_HINT}"
            )
        raise DataError(f"Fashion-MNIST not found at {directory}; {_INSTALL_HINT}")
    return _load_raw_cached(str(img_path.resolve()), str(lbl_path.resolve()), part)


@lru_cache(maxsize=4)
def _load_raw_cached(img_path: str, lbl_path: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(img_path, IDX_IMAGES_MAGIC)
    labels = read_idx(lbl_path, IDX_LABELS_MAGIC)
    n = N_TRAIN_FILE if part == "train" else N_TEST_FILE
    if images.dtype != np.uint8 or images.shape != (n, IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{img_path} holds {images.dtype} images of shape {images.shape}, "
            f"expected uint8 ({n}, 28, 28); is this Fashion-MNIST?"
        )
    if labels.dtype != np.uint8 or labels.shape != (n,):
        raise DataError(f"{lbl_path} holds labels of shape {labels.shape}, expected ({n},); is this Fashion-MNIST?")
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{lbl_path} has label {int(labels.max())}, expected 0..9; is this Fashion-MNIST?")
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def split_indices(split: str) -> np.ndarray:
    """Indices of ``split`` into its source file (the 60k train file; ``test``: the t10k file)."""
    _check_split(split)
    if split == "test":
        return np.arange(N_TEST_FILE, dtype=np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(N_TRAIN_FILE).astype(np.int64)
    if split == "val":
        return perm[:N_VAL]
    if split == "train":
        return perm[N_VAL:]
    return perm[N_VAL: N_VAL + N_CALIB]  # calib: the first 2,000 of train


def split_from_raw(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Build ``split`` from the IDX files (never from the shipped subsets)."""
    _check_split(split)
    images, labels = load_raw("t10k" if split == "test" else "train", data_dir)
    idx = split_indices(split)
    return images[idx], labels[idx]  # fancy indexing: fresh, writable copies


def _load_shipped(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(
            f"{path} is unreadable or corrupt ({e}); regenerate it with `python -m hwnas.data.make_subsets`"
        ) from None
    if images.dtype != np.uint8 or images.shape != (n, IMAGE_SIZE, IMAGE_SIZE) or labels.dtype != np.int64 \
            or labels.shape != (n,):
        raise DataError(
            f"{path} holds images {images.dtype}{images.shape} / labels {labels.dtype}{labels.shape}, "
            f"expected uint8({n}, 28, 28) / int64({n},); regenerate it with `python -m hwnas.data.make_subsets`"
        )
    return images, labels


def load_split(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N,28,28], labels int64 [N])`` of one split: train, val, test or calib.

    ``val`` and ``calib`` come from the shipped ``resources/calibration_data/{split}.npz`` (no dataset needed);
    only when those files are absent are they rebuilt from the IDX files in ``data_dir``.
    """
    _check_split(split)
    if split in ("val", "calib"):
        path = calib_dir() / f"{split}.npz"
        if path.is_file():
            return _load_shipped(path, N_VAL if split == "val" else N_CALIB)
        try:
            return split_from_raw(split, data_dir)
        except DataError as e:
            raise DataError(f"shipped subset {path} is missing and {e}") from None
    return split_from_raw(split, data_dir)


# ----------------------------------------------------------------------------------------------
# Tensors, augmentation, batching
# ----------------------------------------------------------------------------------------------


def _as_uint8_tensor(images) -> torch.Tensor:
    t = images
    if isinstance(images, np.ndarray):
        arr = np.ascontiguousarray(images)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # torch warns on read-only
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.ndim != 3:
        shape = tuple(getattr(images, "shape", ()))
        dtype = getattr(images, "dtype", type(images).__name__)
        raise DataError(f"expected uint8 images of shape [N, H, W], got {dtype} {shape}")
    return t


def to_tensor(images_uint8, resolution: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 ``[N,H,W]`` (numpy or torch) -> normalized float32 ``[N,1,r,r]``.

    Pixels go to [0, 1], are resized (bilinear, antialiased) when ``r`` differs from the input size,
    then normalized with :data:`MEAN` / :data:`STD`.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise DataError(f"resolution must be a positive int, got {resolution!r}")
    resolution = int(resolution)
    x = _as_uint8_tensor(images_uint8).to(torch.float32).div_(255.0).unsqueeze(1)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x.sub_(MEAN).div_(STD).contiguous()


def augment_batch(images_uint8, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding + random horizontal flip, vectorized.

    Takes and returns uint8 ``[N,H,W]`` (a torch tensor); all randomness comes from ``generator``.
    """
    x = _as_uint8_tensor(images_uint8)
    n, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # zero = black background
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # [n,h,1]
    cols = ox[:, None] + torch.arange(w)  # [n,w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]  # [n,1,w]
    return padded[torch.arange(n)[:, None, None], rows, cols]


def batches(
    images,
    labels,
    batch_size: int,
    resolution: int = IMAGE_SIZE,
    shuffle: bool = False,
    seed: int = 0,
    augment: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x float32 [B,1,r,r], y int64 [B])``; the last batch may be smaller.

    Shuffling and augmentation draw from one ``torch.Generator`` seeded with ``seed``, so the same
    arguments give the same batches; pass ``seed + epoch`` for a new order each epoch.
    """
    imgs = _as_uint8_tensor(images)
    if isinstance(labels, torch.Tensor):
        lbls = labels.to(torch.int64)
    else:
        lbls = torch.from_numpy(np.array(labels, dtype=np.int64))  # a writable copy
    if lbls.ndim != 1 or lbls.shape[0] != imgs.shape[0]:
        raise DataError(f"got {imgs.shape[0]} images but labels of shape {tuple(lbls.shape)}; they must match")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    gen = torch.Generator().manual_seed(int(seed))
    n = imgs.shape[0]
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for start in range(0, n, int(batch_size)):
        idx = order[start: start + int(batch_size)]
        xb = imgs[idx]
        if augment:
            xb = augment_batch(xb, gen)
        yield to_tensor(xb, resolution), lbls[idx]
