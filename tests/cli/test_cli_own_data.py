"""Bring your own data, through the CLI as a user runs it: an image folder made here (Pillow PNGs, 2
classes, RGB) and an ``ofa_mbv3_w1.0`` checkpoint (its initialized weights saved to a file, standing in
for a user's: no ImageNet checkpoint can be downloaded here).  Recalibrate and evaluate, fit an accuracy
predictor, profile, search and export, then the bad inputs, each one line and exit 1."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

SUPERNET = "ofa_mbv3_w1.0"


def hwnas(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hwnas", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def one_error_line(r):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hwnas: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def make_folder(root, classes=("ant", "bee"), n=8, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            base = rng.integers(0, 256, size=3) if mode == "RGB" else rng.integers(0, 256)
            shape = (36 + i, 44, 3) if mode == "RGB" else (36 + i, 44)
            a = np.clip(rng.normal(0, 25, size=shape) + base, 0, 255).astype(np.uint8)
            Image.fromarray(a, mode).save(root / c / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    import torch

    import hwnas

    d = tmp_path_factory.mktemp("own")
    make_folder(d / "images")
    net = hwnas.create_supernet(SUPERNET, pretrained=False)
    torch.save({"state_dict": net.state_dict()}, d / "ofa_checkpoint.pth")
    return d


def test_evaluate_fit_search_export_on_an_image_folder(user):
    d, store, w, data = user, user / "store.sqlite", user / "ofa_checkpoint.pth", user / "images"
    # 1. BN recalibration + top-1 on the folder's validation images, stored (resumable)
    r = hwnas("supernet", "eval", "--supernet", SUPERNET, "--weights", w, "--data", data, "--samples", 6,
              "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["evaluated"] == 8 and ev["split"].startswith("val@") and ev["n_images"] == 8
    assert 0.0 <= ev["acc_min"] <= ev["acc_max"] <= 1.0
    r = hwnas("supernet", "eval", "--supernet", SUPERNET, "--weights", w, "--data", data, "--samples", 6,
              "--store", store, "--json")
    assert json.loads(r.stdout)["skipped"] == 8  # resumed: nothing evaluated twice
    # 2. an accuracy predictor on those rows
    r = hwnas("predictor", "fit", "--target", "accuracy", "--supernet", SUPERNET, "--weights", w, "--store", store,
              "--kind", "mlp", "-o", d / "acc.json", "--json")
    assert r.returncode == 0, r.stderr
    fit = json.loads(r.stdout)
    assert fit["n_train"] + fit["n_test"] == 8 and (d / "acc.json").is_file()
    # 3. latency on this machine
    r = hwnas("profile", "--supernet", SUPERNET, "--samples", 6, "--time-cap", 0.05, "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    # 4. search with the predictor, evaluating the most promising archs on the folder
    r = hwnas("search", "--supernet", SUPERNET, "--weights", w, "--data", data, "--accuracy-predictor",
              d / "acc.json", "--store", store, "--rounds", 1, "-o", d / "search", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    best = s["best"]
    assert best["measured_latency_ms"] <= s["budget_ms"]
    assert best["evaluated_accuracy"] is not None
    # 5. export the chosen subnet, recalibrated and checked on the same folder
    r = hwnas("export", "--supernet", SUPERNET, "--weights", w, "--arch", d / "search" / "best.json", "--data", data,
              "-o", d / "best.onnx", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["bn_recalibrated"] is True and "2 classes" in m["accuracy"]["split"]
    assert m["output_check"]["max_abs_err"] < 1e-3
    # the exported subnet's top-1 on the folder is the accuracy the search evaluated for it
    assert m["accuracy"]["top1_pytorch"] == pytest.approx(best["evaluated_accuracy"], abs=1e-9)
    assert m["accuracy"]["top1"] == pytest.approx(best["evaluated_accuracy"], abs=1 / 8 + 1e-9)


def test_search_fits_its_own_accuracy_predictor_from_data(user, tmp_path):
    """--data without --accuracy-predictor: archs are evaluated on the data and fitted on.  Another
    folder is another dataset (its own split in the store); the latency rows of the test above are reused."""
    store = user / "store.sqlite"
    if not store.exists():  # run alone
        r = hwnas("profile", "--supernet", SUPERNET, "--samples", 5, "--time-cap", 0.05, "--store", store)
        assert r.returncode == 0, r.stderr
    make_folder(tmp_path / "other", classes=("fig", "kiwi", "lime"), n=3, seed=5)
    r = hwnas("search", "--supernet", SUPERNET, "--weights", user / "ofa_checkpoint.pth", "--data", tmp_path / "other",
              "--accuracy-samples", 6, "--store", store, "--rounds", 1, "-o", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "evaluating 6 archs on val@" in r.stderr and "(0 already in" in r.stderr
    assert "accuracy predictor (" in r.stderr and "3 classes" in r.stderr
    assert (tmp_path / "s" / "best.json").is_file()


@pytest.mark.parametrize("case, needle", [
    ("grayscale", "takes 3-channel RGB images; convert them"),
    ("classes", "11 classes but supernet mbv3_fmnist's classifier has 10 outputs"),
    ("empty", "no images found in"),
    ("unreadable", "is unreadable"),
    ("rows", "row 2"),
    ("no_weights", "no trained weights"),
])
def test_bad_data_is_one_line_and_writes_nothing(user, tmp_path, case, needle):
    w = user / "ofa_checkpoint.pth"
    store = tmp_path / "store.sqlite"
    if case == "grayscale":
        make_folder(tmp_path / "d", mode="L", n=2)
        r = hwnas("supernet", "eval", "--supernet", SUPERNET, "--weights", w, "--data", tmp_path / "d",
                  "--samples", 2, "--store", store)
    elif case == "classes":
        make_folder(tmp_path / "d", classes=[f"c{i}" for i in range(11)], mode="L", n=1)
        r = hwnas("supernet", "eval", "--supernet", "mbv3_fmnist", "--data", tmp_path / "d", "--samples", 2,
                  "--store", store)
    elif case == "empty":
        (tmp_path / "d").mkdir()
        r = hwnas("search", "--supernet", SUPERNET, "--weights", w, "--data", tmp_path / "d", "--store", store,
                  "--latency-predictor", tmp_path / "none.json", "-o", tmp_path / "s")
    elif case == "unreadable":
        make_folder(tmp_path / "d", n=2)
        (tmp_path / "d" / "bee" / "01.png").write_bytes(b"\x89PNG but then nothing")
        r = hwnas("supernet", "eval", "--supernet", SUPERNET, "--weights", w, "--data", tmp_path / "d",
                  "--samples", 2, "--store", store)
    elif case == "rows":
        f = tmp_path / "rows.csv"
        ok = json.dumps({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 160})
        bad = json.dumps({"ks": [9] * 20, "e": [3] * 20, "d": [2] * 5, "r": 160})  # kernel 9 is not in the space
        f.write_text("arch,accuracy\n" + "\n".join(f'"{a.replace(chr(34), chr(34) * 2)}",0.7' for a in (ok, bad)))
        r = hwnas("predictor", "fit", "--target", "accuracy", "--supernet", SUPERNET, "--rows", f,
                  "-o", tmp_path / "acc.json")
        assert not (tmp_path / "acc.json").exists()
    else:
        make_folder(tmp_path / "d", n=2)
        r = hwnas("search", "--supernet", SUPERNET, "--data", tmp_path / "d", "--store", store, "-o", tmp_path / "s")
    line = one_error_line(r)
    assert needle in line, line
    assert not (tmp_path / "s").exists() and not store.exists()
