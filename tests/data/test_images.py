"""A user's own images (``hwnas.data.images``): layouts, the family's preprocessing, and bad data as one line."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from hwnas.data.calibration import load_calibration, validation_data
from hwnas.data.images import ImageDataset, open_dataset, preprocess_pil, top1_of
from hwnas.errors import DataError
from hwnas.supernet.registry import get_family

OFA = get_family("ofa_mbv3_w1.0")
FMNIST = get_family("mbv3_fmnist")


def make_folder(root, classes=("cat", "dog"), n=6, mode="RGB", size=(40, 52), seed=0):
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(root / c / f"{i:03d}.png")
    return root


def test_imagenet_eval_transform_matches_a_hand_computed_crop():
    """Shorter side to ceil(r / 0.875), bilinear, center crop r (OFA's and timm's eval transform)."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)  # H 300, W 400
    img = Image.fromarray(a)
    r = 128
    got = preprocess_pil(img, OFA, r)
    short = math.ceil(r / 0.875)  # 147
    ref = img.resize((int(short * 400 / 300), short), Image.BILINEAR)
    w, h = ref.size
    left, top = int(round((w - r) / 2.0)), int(round((h - r) / 2.0))
    ref = np.asarray(ref.crop((left, top, left + r, top + r))).transpose(2, 0, 1)
    assert got.shape == (3, r, r) and got.dtype == np.uint8
    assert np.array_equal(got, ref)
    # Fashion-MNIST families resize to r x r, one channel
    g = preprocess_pil(Image.fromarray(a[..., 0]), FMNIST, 32)
    assert g.shape == (1, 32, 32)


def test_image_folder_splits_labels_and_normalization(tmp_path):
    make_folder(tmp_path / "d", n=7)
    ds = open_dataset(tmp_path / "d", OFA)
    assert isinstance(ds, ImageDataset) and ds.classes == ["cat", "dog"]
    assert ds.n_calib == 7 and ds.n_val == 7  # half the pool calibrates, the rest is validation
    assert ds.split.startswith("val@") and len(ds.split) == 4 + 12
    x, y = ds.validation(128)
    assert x.shape == (7, 3, 128, 128) and x.dtype == torch.float32
    assert set(y.tolist()) <= {0, 1}
    # normalization is the family's mean/std applied to [0, 1] pixels
    raw = ds._images("val", 128).float() / 255
    mean = torch.tensor(OFA.mean).view(1, 3, 1, 1)
    std = torch.tensor(OFA.std).view(1, 3, 1, 1)
    assert torch.allclose(x, (raw - mean) / std, atol=1e-6)
    # calibration and validation images are disjoint files, fixed across opens
    assert not set(ds.calib_pool.files) & set(ds.val_pool.files)
    again = open_dataset(tmp_path / "d", OFA)
    assert again.split == ds.split and again.calib_pool.files == ds.calib_pool.files
    # a different image set is a different split label
    make_folder(tmp_path / "d", classes=("emu",), n=3)
    assert open_dataset(tmp_path / "d", OFA).split != ds.split


def test_train_val_layout_and_val_cap(tmp_path):
    make_folder(tmp_path / "imnet" / "train", n=9, seed=1)
    make_folder(tmp_path / "imnet" / "val", n=5, seed=2)
    ds = open_dataset(tmp_path / "imnet", OFA, calib_images=4, val_images=6)
    assert ds.layout == "train/val folders" and ds.n_calib == 4 and ds.n_val == 6
    assert all("train" in str(f) for f in ds.calib_pool.files) and all("val" in str(f) for f in ds.val_pool.files)


def test_npz_arrays_and_unlabelled_calibration(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(10, 3, 30, 30), dtype=np.uint8)  # NCHW is accepted too
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(10) % 3)
    ds = open_dataset(tmp_path / "d.npz", OFA)
    assert ds.layout == "arrays" and ds.classes == ["0", "1", "2"] and ds.n_calib == 5 and ds.n_val == 5
    assert ds.calibration(128).shape == (5, 3, 128, 128)
    # images only: all of them calibrate (BN and INT8), nothing to evaluate
    np.savez(tmp_path / "c.npz", images=imgs.transpose(0, 2, 3, 1))
    x = load_calibration(OFA, 128, tmp_path / "c.npz")
    assert x.shape == (10, 3, 128, 128)
    with pytest.raises(DataError, match="no labelled validation images"):
        open_dataset(tmp_path / "c.npz", OFA).validation(128)


def test_validation_data_scores_a_small_dataset_on_its_own_classes(tmp_path):
    make_folder(tmp_path / "d", n=4)
    x, labels, source = validation_data(OFA, 128, tmp_path / "d")
    assert labels.n_classes == 2 and "2 classes" in source
    logits = np.zeros((len(labels), 1000))
    logits[:, 500] = 10.0  # an output beyond the dataset's classes never counts as a prediction
    logits[np.arange(len(labels)), labels] = 1.0
    assert top1_of(logits, labels) == 1.0
    assert top1_of(torch.from_numpy(logits), labels) == 1.0


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("empty", "no images found"),
    ("empty_class", "holds no images"),
    ("grayscale", "1-channel images"),
    ("too_many_classes", "11 classes but supernet mbv3_fmnist's classifier has 10 outputs"),
    ("unreadable", "is unreadable"),
    ("not_npz", "not an .npz"),
    ("corrupt_npz", "unreadable or corrupt"),
    ("npz_no_images", "has no 'images' array"),
    ("npz_bad_labels", "'labels' is"),
    ("idx_for_imagenet", "Fashion-MNIST IDX directory"),
])
def test_bad_data_is_one_line(tmp_path, case, match):
    fam = OFA
    p = tmp_path / "d"
    if case == "empty":
        p.mkdir()
    elif case == "empty_class":
        make_folder(p, n=2)
        (p / "zebra").mkdir()
    elif case == "grayscale":
        make_folder(p, n=2, mode="L")
    elif case == "too_many_classes":
        make_folder(p, classes=[f"c{i:02d}" for i in range(11)], n=1, mode="L")
        fam = FMNIST
    elif case == "unreadable":
        make_folder(p, n=3)
        (p / "dog" / "001.png").write_bytes(b"not a png at all")
    elif case == "not_npz":
        p = tmp_path / "d.txt"
        p.write_text("hello")
    elif case == "corrupt_npz":
        p = tmp_path / "d.npz"
        p.write_bytes(b"PK\x03\x04 truncated")
    elif case == "npz_no_images":
        p = tmp_path / "d.npz"
        np.savez(p, x=np.zeros(3))
    elif case == "npz_bad_labels":
        p = tmp_path / "d.npz"
        np.savez(p, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.zeros(3, np.int64))
    elif case == "idx_for_imagenet":
        p.mkdir()
        (p / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError, match=match) as e:
        ds = open_dataset(p, fam)
        ds.check_readable()
    assert "\n" not in str(e.value)


def test_stray_grayscale_images_in_an_rgb_folder_are_converted(tmp_path):
    """ImageNet has a few grayscale JPEGs among its RGB ones; torchvision's loader converts them, so do we."""
    make_folder(tmp_path / "d", n=4)
    Image.fromarray(np.full((20, 20), 128, np.uint8), "L").save(tmp_path / "d" / "cat" / "gray.png")
    ds = open_dataset(tmp_path / "d", OFA)
    assert ds.calibration(128).shape[1] == 3 and ds.validation(128)[0].shape[1] == 3
