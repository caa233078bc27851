"""``hwnas supernet eval``: accuracy of one arch, or of many sampled archs written to the store.

The stored rows (arch id, accuracy, split, supernet weights hash) are the accuracy predictor's
training data.  The test split is for final figures only; tune nothing on it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from hwnas.errors import DataError
from hwnas.supernet.family import parse_arch
from hwnas.supernet.evaluate import EvalData, evaluate_arch
from hwnas.supernet.registry import create_supernet

SPLITS = ("val", "test")


def sample_archs(space, n: int, seed: int) -> list[dict]:
    """min, max and ``n`` distinct random archs (by id), in a seeded order."""
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    for a in [space.min_arch(), space.max_arch()]:
        seen.add(space.arch_id(a))
        archs.append(a)
    tries = 0
    while len(archs) < n + 2 and tries < 100 * (n + 2):
        a = space.sample(rng)
        tries += 1
        aid = space.arch_id(a)
        if aid not in seen:
            seen.add(aid)
            archs.append(a)
    return archs


def open_eval_data(family, data: str | Path | None = None, split: str = "val"):
    """What accuracy is evaluated on: the user's ``data`` (``hwnas.data.images.open_dataset``: its
    validation images, its own calibration images), else the family's shipped Fashion-MNIST split.
    The result's ``split`` labels the rows in the store (``val``/``test``, or ``val@<data id>``)."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if data is not None:
        from hwnas.data.calibration import dataset_for
        from hwnas.data.images import _is_idx_dir

        if _is_idx_dir(Path(data).expanduser()):
            if family.dataset != "fashion-mnist":
                dataset_for(family, data)  # raises the family/data mismatch line
            return EvalData.load(split, str(data))
        if split == "test":
            raise DataError("--split test reads the Fashion-MNIST test set; with your own --data, accuracy is "
                            "evaluated on its validation images (--split val)")
        ds = dataset_for(family, data)
        ds.labels  # noqa: B018  (raises when the data is unlabelled)
        return ds
    if family.dataset != "fashion-mnist":
        raise DataError(f"accuracy evaluation of {family.name} needs its data: pass --data DIR (one folder per class, "
                        f"or train/ and val/ folders, or an .npz of images and labels)")
    return EvalData.load(split)


def evaluate_job(supernet: str, weights: str | None, arch: str | None, samples: int, split: str,
                 store_path: str | Path, seed: int = 0, data_dir: str | None = None,
                 progress: Callable[..., None] | None = None, workers: int = 0,
                 ray_address: str | None = None) -> dict:
    """One arch's accuracy, or ``samples`` sampled archs' into the store (resumable).  With ``workers``
    >= 1 the archs are evaluated on that many Ray workers (``hwnas.fleet.evaluate``), each computing
    exactly what this process would."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if arch is None and samples <= 0:
        raise DataError("give --arch FILE to evaluate one arch, or --samples N to evaluate N sampled archs")
    net = create_supernet(supernet, weights=weights)
    if net.weights_hash == "init":
        raise DataError(f"supernet {supernet} has no trained weights here; pass --weights PATH")
    data = open_eval_data(net.family, data_dir, split)
    data_split_arg, split = split, data.split
    n_images = len(data.labels)
    if arch is not None:
        a = net.space.normalize(parse_arch(arch))
        t = time.perf_counter()
        acc = evaluate_arch(net, a, data)
        if progress:
            progress(1)
        return {"arch": a, "arch_id": net.space.arch_id(a), "accuracy": acc, "split": split,
                "n_images": n_images, "seconds": round(time.perf_counter() - t, 2), "supernet": supernet,
                "weights_hash": net.weights_hash}
    from hwnas.devices.store import Store

    archs = sample_archs(net.space, samples, seed)
    accs: list[float] = []
    skipped = 0
    t0 = time.perf_counter()
    Path(store_path).parent.mkdir(parents=True, exist_ok=True)
    extra: dict = {}
    with Store(store_path) as store:
        if workers:  # on Ray workers; the same rows, written by this process as they arrive
            from hwnas.fleet.evaluate import evaluate_parallel

            par = evaluate_parallel(store, supernet, weights, archs, weights_hash=net.weights_hash, space=net.space,
                                    split=split, n_images=n_images, data_dir=data_dir, data_split=data_split_arg,
                                    workers=workers, address=ray_address, progress=progress)
            got = par["accuracies"]
            accs = [got[aid] for aid in map(net.space.arch_id, archs) if aid in got]
            skipped, evaluated = par["skipped"], par["evaluated"]
            extra = {"failed": par["failed"], "retried": par["retried"], "workers": workers, "ray": par["ray"]}
        else:
            done = {r["arch_id"]: r["accuracy"] for r in store.accuracies(net.weights_hash, split)}
            for i, a in enumerate(archs):
                aid = net.space.arch_id(a)
                if aid in done:
                    skipped += 1
                    accs.append(done[aid])
                else:
                    acc = evaluate_arch(net, a, data)
                    store.add_accuracy(net.weights_hash, aid, split, acc, n_images, arch=net.space.canonical(a),
                                       supernet=supernet)
                    accs.append(acc)
                if progress:
                    progress(i + 1)
            evaluated = len(archs) - skipped
    secs = time.perf_counter() - t0
    return {"evaluated": evaluated, "skipped": skipped, **extra, "split": split, "n_images": n_images,
            "seconds": round(secs, 1), "archs_per_minute": evaluated / secs * 60 if evaluated else 0.0,
            "acc_min": min(accs) if accs else None, "acc_median": statistics.median(accs) if accs else None,
            "acc_max": max(accs) if accs else None,
            "store": str(store_path), "supernet": supernet, "weights_hash": net.weights_hash}
