"""Predictor jobs over the measurement store (the CLI wraps these; no logic lives in the CLI).

``fit_job`` fits a latency or accuracy predictor on a seeded train split of the store's rows and
reports its metrics on the held-out rest; the saved artifact is the model those metrics describe
(fitted on the train split only), and it lists its training arch ids so ``eval_job`` can score it
later on rows it never saw.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hwnas.errors import PredictorError, UnknownDeviceError
from hwnas.predictors.base import DEFAULT_SUPERNET, Predictor, create_predictor, get_predictor_class
from hwnas.predictors.features import as_vectors, resolve_config
from hwnas.predictors.metrics import evaluate_kfold, holdout_split, regression_metrics

ACCURACY_KINDS = ("mlp", "xgb")
# defaults per (target, kind) under the caller's params: trees for accuracy model it directly on the
# one-hot encoding (5-fold CV on 252 Fashion-MNIST evaluations: tau 0.71 vs 0.67 with the latency defaults)
DEFAULT_PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("accuracy", "xgb"): {"base": "none", "target_transform": "none", "features": "onehot"},
}


def _params_for(target: str, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {**DEFAULT_PARAMS.get((target, kind), {}), **dict(params)}


# ---------------------------------------------------------------------------------- data
def _device_name(device: Any) -> str:
    from hwnas.devices.spec import DeviceSpec, load_device

    if isinstance(device, DeviceSpec):
        return device.name
    try:
        return load_device(device).name
    except UnknownDeviceError:
        return str(device)  # a device measured elsewhere whose spec is not here: its name is enough to read


LATENCY_STATS = ("median_ms", "min_ms", "mean_ms", "p90_ms")


def load_latency_data(store_path: str | Path, device: Any, supernet: Any = DEFAULT_SUPERNET,
                      fp_hash: str | None = None, stat: str = "median_ms") -> dict[str, Any]:
    """Whole-network latency rows of ``device`` for ``supernet``: ``V`` (gene matrix), ``y`` (the ``stat``
    column, median ms by default), ``arch_ids``, ``fp_hash``, ``fingerprint``, ``device``.

    A store may hold several fingerprints of one device name (a library upgrade, another host); without
    ``fp_hash`` the one with the most rows is used and the others are listed in ``other_fp_hashes``.
    """
    from hwnas.devices.store import Store

    cfg = resolve_config(supernet)
    if stat not in LATENCY_STATS:
        raise PredictorError(f"stat must be one of {', '.join(LATENCY_STATS)}; got {stat!r}")
    if device is None and fp_hash is None:
        raise PredictorError("pass a device (or a fingerprint hash) to read latency measurements")
    name = _device_name(device) if device is not None else None
    p = Path(store_path)
    if not p.is_file():
        raise PredictorError(f"store {p} does not exist; profile a device into it first (hwnas profile)")
    with Store(p, readonly=True) as store:
        rows = store.measurements(fp_hash=fp_hash, supernet=cfg.name, device=name if fp_hash is None else None)
        rows = [r for r in rows if r["arch"] is not None]
        counts = Counter(r["fp_hash"] for r in rows)
        if not rows:
            have = sorted({(r["device"], r["supernet"]) for r in store.measurements()})
            listing = ", ".join(f"{d}/{s}" for d, s in have if not s.endswith(":lut")) or "none"
            raise PredictorError(f"store {p} has no {cfg.name} measurements of device {name or '?'}"
                                 f"{f' with fingerprint {fp_hash}' if fp_hash else ''}; it has: {listing}")
        fp = fp_hash or counts.most_common(1)[0][0]
        rows = [r for r in rows if r["fp_hash"] == fp]
        fingerprint = store.fingerprint(fp)
    V = as_vectors(cfg, [r["arch"] for r in rows])
    return {
        "V": V,
        "y": np.array([r[stat] for r in rows], dtype=np.float64),
        "stat": stat,
        "arch_ids": [r["arch_id"] for r in rows],
        "fp_hash": fp,
        "fingerprint": fingerprint.to_dict() if fingerprint is not None else None,
        "device": rows[0]["device"] or name or "",
        "other_fp_hashes": sorted(set(counts) - {fp}),
    }


def supernet_weights_hash(supernet: str, weights: str | Path | None) -> str:
    from hwnas.supernet.registry import create_supernet

    net = create_supernet(supernet, weights=weights)
    if net.weights_hash == "init":
        raise PredictorError(f"supernet {supernet} has no trained weights here; pass weights=PATH (--weights)")
    return net.weights_hash


def load_accuracy_data(store_path: str | Path, supernet: Any = DEFAULT_SUPERNET, *, supernet_hash: str | None = None,
                       weights: str | Path | None = None, split: str = "val") -> dict[str, Any]:
    """Accuracy rows of the supernet weights ``supernet_hash`` (or the hash of ``weights``) on ``split``."""
    from hwnas.devices.store import Store

    cfg = resolve_config(supernet)
    h = supernet_hash or supernet_weights_hash(cfg.name, weights)
    p = Path(store_path)
    if not p.is_file():
        raise PredictorError(f"store {p} does not exist; evaluate subnets into it first (hwnas supernet eval)")
    with Store(p, readonly=True) as store:
        rows = [r for r in store.accuracies(h, split) if r["arch"] is not None]
        if not rows and split == "val":  # the default: the one user dataset these weights were evaluated on
            splits = sorted({r["split"] for r in store.accuracies(h) if r["arch"] is not None and r["split"] != "test"})
            if len(splits) == 1:
                split = splits[0]
                rows = [r for r in store.accuracies(h, split) if r["arch"] is not None]
            elif len(splits) > 1:
                raise PredictorError(f"store {p} has accuracies of {cfg.name} weights {h} on {len(splits)} datasets "
                                     f"({', '.join(splits)}); choose one with --split")
    if not rows:
        raise PredictorError(f"store {p} has no {split} accuracies of {cfg.name} weights {h}; "
                             "run hwnas supernet eval --samples N first")
    return {
        "V": as_vectors(cfg, [r["arch"] for r in rows]),
        "y": np.array([r["accuracy"] for r in rows], dtype=np.float64),
        "arch_ids": [r["arch_id"] for r in rows],
        "supernet_hash": h,
        "split": split,
    }


# ---------------------------------------------------------------------------------- LUT
def latency_table_for(store_path: str | Path, device: Any, supernet: Any, fp_hash: str, *, build: bool = True,
                      progress: Callable[[Any], None] | None = None, time_cap_s: float | None = None) -> Any:
    """The device's LUT from the store; missing entries are measured on ``device`` when ``build``."""
    from hwnas.devices.store import Store
    from hwnas.predictors.lut import LatencyTable, build_latency_table

    with Store(store_path) as store:
        table = LatencyTable.from_store(store, supernet, fp_hash, device=_device_name(device))
        if table.n_missing == 0:
            return table
        if not build:
            raise PredictorError(f"the store has {len(table.values) - table.n_missing} of {len(table.values)} LUT "
                                 f"entries of {supernet} on {_device_name(device)}; build the LUT on the device")
        settings = None
        if time_cap_s is not None:
            from hwnas.devices.protocol import ProtocolSettings
            from hwnas.devices.spec import DeviceSpec, load_device

            spec = device if isinstance(device, DeviceSpec) else load_device(device)
            settings = ProtocolSettings.from_mapping(spec.protocol).replace(time_cap_s=time_cap_s)
        table, _ = build_latency_table(supernet, device, store, settings=settings, progress=progress)
    if table.fp_hash != fp_hash:
        raise PredictorError(f"the device now has fingerprint {table.fp_hash} but the network measurements were "
                             f"taken at {fp_hash}; re-profile it so the LUT and the measurements match")
    return table


# ---------------------------------------------------------------------------------- jobs
def _make(kind: str, supernet: str, params: Mapping[str, Any], table: Any = None, prior: Any = None) -> Callable[[], Predictor]:
    cls = get_predictor_class(kind)
    extra: dict[str, Any] = {}
    if "table" in cls.object_params:
        extra["table"] = table
    if "prior" in cls.object_params:
        extra["prior"] = prior
    return lambda: create_predictor(kind, supernet=supernet, **extra, **dict(params))


def fit_job(
    store_path: str | Path,
    device: Any = None,
    supernet: Any = DEFAULT_SUPERNET,
    target: str = "latency",
    kind: str | None = None,
    out: str | Path | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    *,
    params: Mapping[str, Any] | None = None,
    max_train: int | None = None,
    fp_hash: str | None = None,
    prior: str | Path | Predictor | None = None,
    build_lut: bool = True,
    time_cap_s: float | None = None,
    stat: str = "median_ms",
    weights: str | Path | None = None,
    supernet_hash: str | None = None,
    split: str = "val",
    progress: Callable[[Any], None] | None = None,
    rows: str | Path | None = None,
) -> dict[str, Any]:
    """Fit a ``kind`` predictor of ``target`` on the store's rows and report held-out metrics.

    latency: rows of ``device`` (name, path or spec) for ``supernet``; kind defaults to ``xgb``;
    ``lut``/``hybrid`` read the device's LUT from the store and measure missing entries on the device
    (``build_lut``, each entry measured with the device's protocol, its time cap ``time_cap_s`` if given);
    ``transfer`` needs ``prior`` (a predictor of another device, or its path) and is
    meant for few measurements (``max_train`` 10-20).
    accuracy: rows of the supernet weights (``supernet_hash``, or the hash of ``weights``) on ``split``;
    kind defaults to ``xgb`` on the one-hot encoding (it ranked best in 5-fold CV on 252 Fashion-MNIST
    evaluations: tau 0.71 vs 0.69 for ``mlp``); ``auto`` picks ``mlp`` or ``xgb`` by 5-fold CV on the train split.
    ``rows``: a CSV or JSON file of (arch, accuracy) rows (``hwnas.predictors.rows``) to fit on instead
    of the store (accuracy only; ``store_path`` is then not read), with the same split and metrics.

    ``params``: hyperparameters of ``kind``, or a dict per kind (``{"mlp": {...}, "xgb": {...}}``).
    ``holdout`` is the held-out fraction (seeded split); ``max_train`` caps the training rows; ``stat`` is the
    latency statistic fitted (``median_ms``; ``min_ms`` is steadier on a machine with other load).
    The artifact (``out``: a .json file or a directory) is the model fitted on the train split.
    """
    if target not in ("latency", "accuracy"):
        raise PredictorError(f"target must be 'latency' or 'accuracy'; got {target!r}")
    if rows is not None and target != "accuracy":
        raise PredictorError(f"rows files hold (arch, accuracy) rows; fit a {target} predictor on the store's "
                             f"measurements (without rows), or pass target='accuracy' (--target accuracy)")
    cfg = resolve_config(supernet)
    from hwnas.supernet.registry import registered_name_or_family

    snet: Any = registered_name_or_family(cfg)  # an unregistered family travels as is
    params = dict(params or {})
    # params are hyperparameters of the kind, or per kind: {"mlp": {...}, "xgb": {...}} (what 'auto' takes)
    per_kind = bool(params) and all(k in _kinds_for(None) and isinstance(v, Mapping) for k, v in params.items())
    meta: dict[str, Any] = {"target": target}
    if kind not in (None, "auto") and target not in get_predictor_class(kind).targets:
        raise PredictorError(f"predictor kind {kind!r} does not predict {target}; choose one of: "
                             f"{', '.join(_kinds_for(target))}")
    if target == "latency":
        if device is None:
            raise PredictorError("a latency predictor needs a device (--device)")
        data = load_latency_data(store_path, device, snet, fp_hash, stat=stat)
        kind = kind or "xgb"
        meta.update(device=data["device"], fp_hash=data["fp_hash"], fingerprint=data["fingerprint"],
                    supernet_hash=None)
    elif rows is not None:
        data = load_rows_data(rows, snet)
        kind = kind or "xgb"
        meta.update(supernet_hash=None, notes=f"fitted on the (arch, accuracy) rows of {data['rows']}")
    else:
        data = load_accuracy_data(store_path, snet, supernet_hash=supernet_hash, weights=weights, split=split)
        kind = kind or "xgb"
        meta.update(supernet_hash=data["supernet_hash"])
    V, y, ids = data["V"], data["y"], data["arch_ids"]
    if len(y) < 5:
        if rows is not None:
            raise PredictorError(f"only {len(y)} distinct archs in {data['rows']}; fit needs at least 5 rows")
        raise PredictorError(f"only {len(y)} rows in the store; fit needs at least 5 (profile more subnets)")
    tr, te = holdout_split(len(y), holdout, seed) if holdout else (np.arange(len(y)), np.zeros(0, dtype=int))
    if max_train is not None:
        tr = np.sort(np.random.default_rng(seed).permutation(tr)[:max_train])
    table = None
    if kind in ("lut", "hybrid"):
        table = latency_table_for(store_path, device, snet, data["fp_hash"], build=build_lut, progress=progress,
                                  time_cap_s=time_cap_s)
    if kind == "transfer" and prior is None:
        raise PredictorError("kind 'transfer' needs prior= a latency predictor of another device (--prior PATH)")
    if isinstance(prior, (str, Path)):
        from hwnas.predictors.artifacts import load_predictor

        prior = load_predictor(prior, expect_supernet=cfg.name, expect_target="latency")
    selection = None
    if kind == "auto":
        kind, selection = _select_kind(snet, target, V[tr], y[tr], params, seed)
    kind_params = dict(params.get(kind, {})) if per_kind else params
    make = _make(kind, snet, _params_for(target, kind, kind_params), table=table, prior=prior)
    pred = make().fit(V[tr], y[tr])
    result: dict[str, Any] = {
        "kind": kind, "target": target, "supernet": cfg.name, "n_rows": int(len(y)), "n_train": int(len(tr)),
        "n_test": int(len(te)), "seed": seed, "holdout": holdout,
    }
    for k in ("device", "fp_hash", "supernet_hash"):
        if meta.get(k):
            result[k] = meta[k]
    if target == "latency":
        result["stat"] = stat
    if target == "latency" and data.get("other_fp_hashes"):
        result["other_fp_hashes"] = data["other_fp_hashes"]
    if selection:
        result["selection"] = selection
    if rows is not None:
        result["rows"] = data["rows"]
        result["rows_info"] = data["rows_info"]
    metrics: dict[str, Any] = {}
    if len(te):
        relative = target == "latency"
        metrics = regression_metrics(y[te], pred.predict(V[te]), relative=relative)
        const = np.full(len(te), float(np.mean(y[tr])))
        metrics["rmse_constant"] = float(np.sqrt(np.mean((y[te] - const) ** 2)))
        if target == "latency" and kind != "linear":
            base = create_predictor("linear", supernet=snet).fit(V[tr], y[tr]).predict(V[te])
            metrics["linear_macs"] = regression_metrics(y[te], base, relative=True)
    result["metrics"] = metrics
    if out is not None:
        from hwnas.predictors.artifacts import save_predictor

        meta.update(n_train=len(tr), metrics=metrics, train_arch_ids=[ids[i] for i in tr])
        if target == "latency":
            meta["stat"] = stat
        if prior is not None:
            meta["notes"] = f"transfer from {getattr(prior, 'meta_', {}).get('device') or 'a prior device'}"
        result["out"] = str(save_predictor(pred, out, meta))
    return result


def load_rows_data(rows: str | Path, supernet: Any) -> dict[str, Any]:
    """``fit_job``'s data dict of a rows file: ``V``, ``y`` (fractions), ``arch_ids``, ``rows``, ``rows_info``."""
    from hwnas.predictors.rows import read_accuracy_rows

    V, y, info = read_accuracy_rows(rows, supernet)
    return {"V": V, "y": y, "arch_ids": info["arch_ids"], "rows": info["path"],
            "rows_info": {k: v for k, v in info.items() if k != "arch_ids"}}


def _kinds_for(target: str | None) -> list[str]:
    from hwnas.predictors.base import list_predictors

    return list_predictors(target)


def _select_kind(supernet: Any, target: str, V: np.ndarray, y: np.ndarray, params: Mapping[str, Any],
                 seed: int) -> tuple[str, dict]:
    """Pick the predictor kind (mlp or xgb) with the best 5-fold Kendall tau on the training rows."""
    scores = {}
    for kind in ACCURACY_KINDS:
        make = _make(kind, supernet, _params_for(target, kind, params.get(kind, {})))
        m = evaluate_kfold(make, V, y, k=min(5, len(y)), seed=seed, relative=False)
        scores[kind] = {"kendall_tau": m["kendall_tau"], "rmse": m["rmse"]}
    best = max(scores, key=lambda k: scores[k]["kendall_tau"])
    return best, {"cv": scores, "chosen": best}


def eval_job(
    store_path: str | Path,
    predictor: str | Path | Predictor,
    device: Any = None,
    *,
    fp_hash: str | None = None,
    supernet_hash: str | None = None,
    split: str | None = None,
    include_train: bool = False,
    stat: str | None = None,
) -> dict[str, Any]:
    """Score a saved predictor on the store's rows it was not trained on.

    Latency: the rows of the artifact's device fingerprint (or of ``device`` / ``fp_hash``: e.g. the
    target device of a transfer predictor).  Accuracy: the rows of the artifact's supernet weights on
    ``split`` (default 'val').  The latency statistic is the one it was fitted on unless ``stat``.  Rows whose arch id is in the artifact's training list are skipped unless
    ``include_train``.
    """
    from hwnas.predictors.artifacts import load_predictor

    pred = load_predictor(predictor) if isinstance(predictor, (str, Path)) else predictor
    meta = getattr(pred, "meta_", {}) or {}
    target = meta.get("target", "latency")
    name = pred.supernet_name
    if target == "latency":
        if device is None and fp_hash is None:
            fp_hash = meta.get("fp_hash")
            if not fp_hash:
                raise PredictorError("the predictor records no device fingerprint; pass device=")
        data = load_latency_data(store_path, device if device is not None else meta.get("device"), pred.config, fp_hash,
                                 stat=stat or meta.get("stat") or "median_ms")
    else:
        h = supernet_hash or meta.get("supernet_hash")
        data = load_accuracy_data(store_path, pred.config, supernet_hash=h, split=split or "val")
    train_ids = set(meta.get("train_arch_ids") or [])
    keep = np.array([include_train or a not in train_ids for a in data["arch_ids"]], dtype=bool)
    if not keep.any():
        raise PredictorError("every row in the store was used to train this predictor; measure new subnets to "
                             "evaluate it honestly (or pass include_train)")
    V, y = data["V"][keep], data["y"][keep]
    metrics = regression_metrics(y, pred.predict(V), relative=target == "latency")
    out = {"kind": pred.kind, "target": target, "supernet": name, "n_eval": int(keep.sum()),
           "n_skipped_train": int((~keep).sum()), "metrics": metrics}
    if target == "latency":
        out.update(device=data["device"], fp_hash=data["fp_hash"], trained_on=meta.get("fp_hash"))
    return out


def predict_job(predictor: str | Path | Predictor, archs: Sequence[Mapping[str, Any]] | np.ndarray, *,
                expect_supernet: str | None = None, expect_fp_hash: str | None = None) -> np.ndarray:
    """Predictions of a saved predictor for arch dicts or a gene matrix (vectorized)."""
    from hwnas.predictors.artifacts import load_predictor

    pred = (load_predictor(predictor, expect_supernet=expect_supernet, expect_fp_hash=expect_fp_hash)
            if isinstance(predictor, (str, Path)) else predictor)
    return pred.predict(archs)


__all__ = ["eval_job", "fit_job", "latency_table_for", "load_accuracy_data", "load_latency_data", "predict_job",
           "supernet_weights_hash"]
