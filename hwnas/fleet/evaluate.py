"""Subnet accuracy in parallel on Ray: BN recalibration + top-1 of many archs, resumable into the store.

Each worker is a Ray actor that loads the supernet and the evaluation data once and then evaluates
one arch per call (``evaluate_arch``, the serial job's own function, so a subnet's accuracy does not
depend on where it was computed); a worker asks for one CPU, or one GPU when the cluster has one.
The driver hands archs to free workers one at a time and alone writes each accuracy row to the store
as it arrives, so a killed job loses only the evaluations in flight and a rerun skips what is stored.
A worker that dies has its arch handed to another worker (Ray restarts the dead one).

On a cluster, every node must see the weights file and the data at the paths given.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hwnas.errors import HwnasError
from hwnas.fleet.cluster import ray_session, require_ray


class EvalWorker:
    """One evaluation worker (a Ray actor): the supernet and the data, loaded once."""

    def __init__(self, supernet: str, weights: str | None, data_dir: str | None, split: str, threads: int) -> None:
        import torch

        from hwnas.supernet.accuracy import open_eval_data
        from hwnas.supernet.registry import create_supernet

        torch.set_num_threads(max(int(threads), 1))
        self.net = create_supernet(supernet, weights=weights)
        if torch.cuda.is_available():
            self.net = self.net.cuda()
        self.data = open_eval_data(self.net.family, data_dir, split)

    def info(self) -> dict[str, Any]:
        import torch

        return {"weights_hash": self.net.weights_hash, "split": self.data.split, "pid": os.getpid(),
                "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}

    def evaluate(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        from hwnas.supernet.evaluate import evaluate_arch

        t = time.perf_counter()
        try:
            return {"ok": True, "accuracy": evaluate_arch(self.net, arch, self.data),
                    "seconds": time.perf_counter() - t, "pid": os.getpid()}
        except HwnasError as exc:
            return {"ok": False, "error": str(exc)}


def evaluate_parallel(
    store: Any,
    supernet: str,
    weights: str | Path | None,
    archs: Sequence[Mapping[str, Any]],
    *,
    weights_hash: str,
    space: Any,
    split: str,
    n_images: int,
    data_dir: str | None = None,
    data_split: str = "val",
    workers: int = 2,
    address: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``archs`` on ``workers`` Ray workers into ``store`` (rows keyed by ``weights_hash``,
    ``split``); archs already stored are skipped.  Returns ``{"accuracies": {arch_id: acc}, "evaluated",
    "skipped", "retried", "workers", "ray"}``."""
    ray = require_ray()
    from ray.exceptions import RayError

    if workers < 1:
        raise HwnasError(f"--workers must be at least 1; got {workers}")
    done = {r["arch_id"]: r["accuracy"] for r in store.accuracies(weights_hash, split)}
    todo: list[dict] = []
    accs: dict[str, float] = {}
    skipped, queued = 0, set()
    for a in archs:
        aid = space.arch_id(a)
        if aid in done:
            accs[aid] = done[aid]
            skipped += 1
        elif aid not in queued:
            queued.add(aid)
            todo.append(dict(a))
    retried: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with ray_session(address) as session:
        gpus = ray.cluster_resources().get("GPU", 0)
        cls = ray.remote(EvalWorker).options(num_cpus=1, num_gpus=1 if gpus >= workers else 0, max_restarts=-1,
                                             max_task_retries=0)
        pool = [cls.remote(supernet, str(weights) if weights else None, data_dir, data_split, 1)
                for _ in range(workers)]
        infos = ray.get([w.info.remote() for w in pool], timeout=600)
        for info in infos:
            if info["weights_hash"] != weights_hash or info["split"] != split:
                raise HwnasError(f"a Ray worker loaded other weights or data ({info['weights_hash']}, {info['split']}) "
                                 f"than this process ({weights_hash}, {split}); on a cluster every node must see "
                                 "the same weights file and data at the same paths")
        if on_start:
            on_start({"pids": [i["pid"] for i in infos], "ray": session})
        queue = list(todo)
        inflight: dict[Any, tuple[int, Any, dict]] = {}  # ref -> (worker index, worker, arch)
        free = list(range(workers))
        t0 = time.perf_counter()
        n_done = skipped
        while queue or inflight:
            while free and queue:
                k = free.pop(0)
                a = queue.pop(0)
                inflight[pool[k].evaluate.remote(a)] = (k, pool[k], a)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                k, _, a = inflight.pop(ref)
                aid = space.arch_id(a)
                try:
                    res = ray.get(ref)
                except RayError as exc:  # the worker died: another one takes the arch
                    retried.append({"arch_id": aid, "worker": k, "reason": str(exc).splitlines()[0][:200]})
                    queue.insert(0, a)
                    free.append(k)  # Ray restarts the actor; its next call waits for it
                    continue
                free.append(k)
                if not res["ok"]:
                    failed.append({"arch_id": aid, "error": res["error"]})
                    continue
                store.add_accuracy(weights_hash, aid, split, res["accuracy"], n_images, arch=space.canonical(a),
                                   supernet=supernet)
                accs[aid] = res["accuracy"]
                n_done += 1
                if progress:
                    progress(n_done)
        secs = time.perf_counter() - t0
        start_s = session["start_s"]
        ray_info = {"address": session["address"], "local": session["local"], "start_s": start_s,
                    "gpus_per_worker": 1 if gpus >= workers else 0}
    return {"accuracies": accs, "evaluated": len(todo) - len(failed), "skipped": skipped, "failed": failed,
            "retried": retried, "workers": workers, "ray": ray_info, "eval_seconds": secs}


__all__ = ["EvalWorker", "evaluate_parallel"]
