"""Subnet evaluation on Ray workers (``hwnas supernet eval --workers``): the same accuracies as the
serial job, resumable into the store, and an arch whose worker dies is evaluated by another."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from hwnas.devices.store import Store  # noqa: E402
from hwnas.fleet.cluster import LOCAL_NODE_IP  # noqa: E402
from hwnas.supernet.accuracy import evaluate_job, open_eval_data, sample_archs  # noqa: E402
from hwnas.supernet.registry import create_supernet  # noqa: E402

SUPERNET = "mbv3_fmnist"


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (the jobs reuse a connected driver)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address=LOCAL_NODE_IP)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """80 real Fashion-MNIST images (the shipped calibration subset) as a folder of PNGs, 4 classes."""
    from hwnas.data.fashion_mnist import load_split

    imgs, labels = load_split("calib")
    root = tmp_path_factory.mktemp("fm-folder")
    for c in range(4):
        (root / f"class{c}").mkdir()
        for j, i in enumerate(np.flatnonzero(np.asarray(labels) == c)[:20]):
            Image.fromarray(np.asarray(imgs[i], dtype=np.uint8), "L").save(root / f"class{c}" / f"{j:02d}.png")
    return root


def test_two_workers_give_the_serial_accuracies(ray_local, images: Path, tmp_path: Path) -> None:
    common = dict(supernet=SUPERNET, weights=None, arch=None, samples=4, split="val", seed=3, data_dir=str(images))
    serial = evaluate_job(store_path=tmp_path / "serial.sqlite", **common)
    par = evaluate_job(store_path=tmp_path / "ray.sqlite", workers=2, **common)
    assert serial["evaluated"] == par["evaluated"] == 6 and par["workers"] == 2
    rows = {}
    for name in ("serial", "ray"):
        with Store(tmp_path / f"{name}.sqlite") as st:
            rows[name] = {r["arch_id"]: r["accuracy"] for r in st.accuracies(serial["weights_hash"], serial["split"])}
    assert rows["serial"] == rows["ray"] and len(rows["ray"]) == 6  # identical, arch by arch
    again = evaluate_job(store_path=tmp_path / "ray.sqlite", workers=2, **common)
    assert again["evaluated"] == 0 and again["skipped"] == 6  # resumed from the store


def test_worker_killed_mid_run_loses_nothing(ray_local, images: Path, tmp_path: Path) -> None:
    from hwnas.fleet.evaluate import evaluate_parallel

    net = create_supernet(SUPERNET)
    data = open_eval_data(net.family, str(images), "val")
    archs = sample_archs(net.space, 4, seed=5)
    killed = {}

    def on_start(info):
        killed["pid"] = info["pids"][0]
        os.kill(info["pids"][0], signal.SIGKILL)  # before its first arch: that call fails, another worker takes it

    with Store(tmp_path / "s.sqlite") as st:
        out = evaluate_parallel(st, SUPERNET, None, archs, weights_hash=net.weights_hash, space=net.space,
                                split=data.split, n_images=len(data.labels), data_dir=str(images), workers=2,
                                on_start=on_start)
        stored = {r["arch_id"] for r in st.accuracies(net.weights_hash, data.split)}
    assert stored == {net.space.arch_id(a) for a in archs} and out["evaluated"] == len(archs)
    assert out["retried"], out
