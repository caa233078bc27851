"""Layer-wise latency lookup table (in Once-for-All's spirit) and the predictors built on it.

A family with the ``lut`` capability lists its distinct entries (blocks at their input size, the
stem and the head at each resolution: ``lut_entries``), builds a static module for each
(``lut_entry_module``) and says which entries each arch sums (``lut_usage``).  Every entry is
exported as a tiny static ONNX model and measured on the device with the usual protocol.  The rows
go to the measurement store under the supernet name ``<family>:lut`` (so building is resumable and a table is shared by everything reading
the store), keyed by the entry's readable key.

An arch's LUT latency is the sum of its entries.  Measured in isolation every entry pays a call's
fixed overhead, and a whole network differs by a roughly constant factor (fusion, caches), so the
``lut`` predictor fits ``y = a + b * lut_sum + c * n_blocks`` on whole-network measurements; ``hybrid``
gives trees the LUT sum as an extra feature.  Entries hold each model's minimum time by default (see
``LatencyTable.from_store``).
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from hwnas.errors import PredictorError
from hwnas.predictors.base import DEFAULT_SUPERNET, Predictor, register_predictor
from hwnas.predictors.features import featurize_vectors, resolve_config
from hwnas.predictors.latency import XGBPredictor, _lstsq
from hwnas.supernet.family import SupernetFamily

LUT_SUFFIX = ":lut"
DEFAULT_LUT_STAT = "min_ms"


def lut_store_name(config: SupernetFamily | str) -> str:
    """The ``supernet`` column value of a family's LUT rows in the store."""
    return resolve_config(config).name + LUT_SUFFIX


# ---------------------------------------------------------------------------------- entries
@lru_cache(maxsize=16)
def _keys(family: SupernetFamily) -> tuple[list[str], dict[str, int]]:
    family.require("lut", "a block lookup table")
    keys = [e["key"] for e in family.lut_entries()]
    return keys, {k: i for i, k in enumerate(keys)}


def entries_for(family: Any, V: np.ndarray) -> list[int]:
    """Entry indices the archs of gene matrix ``V`` use (to build a partial table)."""
    fam = resolve_config(family)
    _keys(fam)
    used = fam.lut_usage(V)
    return sorted(set(used[used >= 0].tolist()))


# ---------------------------------------------------------------------------------- the table
class LatencyTable:
    """Measured milliseconds of each LUT entry of one family on one device."""

    def __init__(self, supernet: SupernetFamily | str, values_ms: Mapping[str, float], fp_hash: str = "",
                 device: str = ""):
        self.config = resolve_config(supernet)
        self.fp_hash = fp_hash
        self.device = device
        keys, pos = _keys(self.config)
        self.values = np.array([float(values_ms.get(k, np.nan)) for k in keys], dtype=np.float64)
        unknown = sorted(set(values_ms) - set(pos))
        if unknown:
            raise PredictorError(f"LUT holds {len(unknown)} entries that family {self.config.name} does not have "
                                 f"(e.g. {unknown[0]}); it was built for another family")

    @property
    def n_missing(self) -> int:
        return int(np.isnan(self.values).sum())

    def sum_vectors(self, V: np.ndarray) -> np.ndarray:
        """LUT latency (ms) of every arch of the gene matrix ``V``: the sum of the entries it uses."""
        padded = np.append(self.values, 0.0)  # a trailing 0, where the -1 padding of ``lut_usage`` points
        total = padded[self.config.lut_usage(np.asarray(V))].sum(axis=1)
        if np.isnan(total).any():
            raise PredictorError(f"the LUT lacks entries some archs use ({self.n_missing} of {len(self.values)} "
                                 "entries unmeasured); build it for the whole space")
        return total

    def to_state(self) -> dict[str, Any]:
        keys = _keys(self.config)[0]
        ok = ~np.isnan(self.values)
        return {"supernet": self.config.name, "fp_hash": self.fp_hash, "device": self.device,
                "keys": [k for k, o in zip(keys, ok) if o], "values_ms": self.values[ok]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], supernet: SupernetFamily | str | None = None) -> "LatencyTable":
        vals = np.asarray(state["values_ms"], dtype=np.float64)
        return cls(supernet if supernet is not None else state["supernet"], dict(zip(state["keys"], vals.tolist())),
                   fp_hash=state.get("fp_hash", ""), device=state.get("device", ""))

    @classmethod
    def from_store(cls, store: Any, supernet: SupernetFamily | str, fp_hash: str, device: str = "",
                   stat: str = DEFAULT_LUT_STAT) -> "LatencyTable":
        """The table from the store's ``<family>:lut`` rows of fingerprint ``fp_hash``.

        ``stat``: the entries are models of a few microseconds, whose median a busy machine inflates
        unevenly; their minimum is the steadiest figure (on a loaded 2-core box it ranked 500 measured
        networks at tau 0.77 after the offset fit, the median at 0.66).
        """
        cfg = resolve_config(supernet)
        rows = store.measurements(fp_hash=fp_hash, supernet=lut_store_name(cfg))
        return cls(cfg, {r["arch_id"]: r[stat] for r in rows}, fp_hash=fp_hash, device=device)


LUT_FORMAT = "hwnas-latency-table"


def save_table(table: LatencyTable, path: str | Path) -> Path:
    """Write a LUT as JSON: a header (family, its layout, device, fingerprint, feature version) and one
    record per entry (its key, block configuration and milliseconds).  Atomic, like ``save_predictor``."""
    import json

    from hwnas.io import atomic_write_text
    from hwnas.predictors.artifacts import _config_dict
    from hwnas.predictors.features import FEATURE_VERSION

    all_entries = table.config.lut_entries()
    entries = [{**all_entries[i], "ms": float(v)} for i, v in enumerate(table.values) if not np.isnan(v)]
    doc = {"format": LUT_FORMAT, "format_version": 1, "supernet": table.config.name,
           "supernet_kind": table.config.kind, "supernet_config": _config_dict(table.config),
           "feature_version": FEATURE_VERSION, "device": table.device, "fp_hash": table.fp_hash,
           "n_entries": len(all_entries), "entries": entries}
    p = Path(path)
    atomic_write_text(p, json.dumps(doc, indent=1, allow_nan=False))
    return p


def load_table(path: str | Path, *, expect_supernet: str | None = None,
               expect_fp_hash: str | None = None) -> LatencyTable:
    """Read a LUT written by ``save_table``; a wrong family, layout or device is one ``PredictorError`` line."""

    from hwnas.errors import UnknownSupernetError
    from hwnas.predictors.artifacts import _config_dict, config_from_dict

    p = Path(path)
    from hwnas.io import loads_json

    try:
        doc = loads_json(p.read_bytes(), f"LUT file {p}", PredictorError)
    except FileNotFoundError:
        raise PredictorError(f"LUT file {p} does not exist") from None
    if not isinstance(doc, dict) or doc.get("format") != LUT_FORMAT:
        raise PredictorError(f"{p} is not a hwnas latency table")
    name = doc.get("supernet")
    if expect_supernet is not None and name != expect_supernet:
        raise PredictorError(f"LUT {p} was built for supernet {name}, not {expect_supernet}")
    if expect_fp_hash is not None and doc.get("fp_hash") != expect_fp_hash:
        raise PredictorError(f"LUT {p} was measured on device {doc.get('device') or '?'} (fingerprint "
                             f"{doc.get('fp_hash')}), not on this device (fingerprint {expect_fp_hash})")
    try:
        cfg = resolve_config(name)
        if _config_dict(cfg) != doc.get("supernet_config"):
            raise PredictorError(f"LUT {p} was built on a different layout of supernet {name}; rebuild it")
    except UnknownSupernetError:
        cfg = config_from_dict(doc.get("supernet_config") or {}, doc.get("supernet_kind"))
    return LatencyTable(cfg, {e["key"]: e["ms"] for e in doc.get("entries", [])}, fp_hash=doc.get("fp_hash", ""),
                        device=doc.get("device", ""))


def build_latency_table(
    supernet: SupernetFamily | str,
    device: Any,
    store: Any,
    *,
    settings: Any = None,
    archs: Iterable[Any] | None = None,
    progress: Callable[[Any], None] | None = None,
    workdir: str | Path | None = None,
    stat: str = DEFAULT_LUT_STAT,
) -> tuple[LatencyTable, dict[str, Any]]:
    """Measure every LUT entry of ``supernet`` on ``device`` (a name, path or ``DeviceSpec``) into ``store``
    (entries already there are skipped) and return the table and the profiling summary.

    ``archs`` (a gene matrix or arch dicts) restricts the table to the entries those archs use;
    ``stat`` is the statistic of each entry the table holds (see ``LatencyTable.from_store``).
    """
    from hwnas.devices.profile import profile_archs
    from hwnas.devices.spec import DeviceSpec, load_device
    from hwnas.formats.onnx_export import export_onnx
    from hwnas.predictors.features import as_vectors

    cfg = resolve_config(supernet)
    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    keys, _ = _keys(cfg)
    all_entries = cfg.lut_entries()
    wanted = range(len(keys)) if archs is None else entries_for(cfg, as_vectors(cfg, archs))
    todo = [(keys[i], all_entries[i]) for i in wanted]
    torch_backend = spec.backend.startswith("torch")
    with tempfile.TemporaryDirectory(prefix="hwnas-lut-", dir=workdir) as tmp:
        def build(entry: dict) -> tuple[Any, Any]:
            module, shape = cfg.lut_entry_module(entry)
            if torch_backend:
                return module, (spec.batch, *shape)
            path = Path(tmp) / f"{entry['key']}.onnx"
            export_onnx(module, path, shape, batch=spec.batch)  # static batch, like the whole networks
            return path, None

        summary = profile_archs(store, spec, todo, build, lut_store_name(cfg), settings=settings, progress=progress,
                                delete_models=True)
    if summary["failed"]:
        f = summary["failed"][0]
        raise PredictorError(f"{len(summary['failed'])} LUT entries failed to measure (e.g. {f['arch_id']}: {f['error']})")
    table = LatencyTable.from_store(store, cfg, summary["fp_hash"], device=spec.name, stat=stat)
    return table, summary


def _as_table(table: Any, config: SupernetFamily) -> LatencyTable:
    if isinstance(table, LatencyTable):
        if table.config.name != config.name:
            raise PredictorError(f"the LUT was built for {table.config.name}, not {config.name}")
        return table
    if isinstance(table, Mapping):
        return LatencyTable.from_state(table, config) if "keys" in table else LatencyTable(config, table)
    raise PredictorError("this predictor needs table= a LatencyTable (see build_latency_table)")


# ---------------------------------------------------------------------------------- predictors
@register_predictor("lut")
class LUTPredictor(Predictor):
    """Sum of measured block latencies with an offset fitted on whole networks.

    ``offset``: 'scale' (``y = b * s``), 'affine' (``y = a + b * s``), 'blocks'
    (``y = a + b * s + c * n_blocks``, which removes the per-call overhead every isolated block
    measurement carries) or 'auto' (blocks from 8 samples, affine from 3, scale below).  Fitted
    relative to ``y`` (weights ``1/y``) so the error is spread evenly in percent.
    """

    object_params = ("table",)

    def __init__(self, supernet: Any = DEFAULT_SUPERNET, table: Any = None, offset: str = "auto"):
        self.supernet = supernet
        self.table = table
        self.offset = offset

    def lut_sum(self, X: Any) -> np.ndarray:
        return _as_table(self.table, self.config).sum_vectors(self.vectors(X))

    def _design(self, V: np.ndarray, mode: str) -> np.ndarray:
        s = _as_table(self.table, self.config).sum_vectors(V)
        cols = {"scale": [s], "affine": [np.ones_like(s), s],
                "blocks": [np.ones_like(s), s, self._n_blocks(V)]}[mode]
        return np.stack(cols, axis=1)

    def _n_blocks(self, V: np.ndarray) -> np.ndarray:
        """Blocks each network runs (the family's ``n_blocks`` cost, else the entries it sums)."""
        c = self.family.cost_vectors(V)
        if "n_blocks" in c:
            return np.asarray(c["n_blocks"], dtype=np.float64)
        return (self.family.lut_usage(V) >= 0).sum(axis=1).astype(np.float64)

    def _fit(self, V: np.ndarray, y: np.ndarray) -> None:
        mode = self.offset
        if mode == "auto":
            mode = "blocks" if len(y) >= 8 else "affine" if len(y) >= 3 else "scale"
        if mode not in ("scale", "affine", "blocks"):
            raise PredictorError(f"offset must be 'auto', 'scale', 'affine' or 'blocks'; got {self.offset!r}")
        A = self._design(V, mode)
        coef = _lstsq(A, y, w=1.0 / y)
        if mode != "scale" and (coef[1] <= 0 or np.any(A @ coef <= 0)):
            mode, A = "scale", A[:, 1:2]
            coef = _lstsq(A, y, w=1.0 / y)
        self.mode_ = mode
        self.coef_ = np.asarray(coef, dtype=np.float64)

    def _predict(self, V: np.ndarray) -> np.ndarray:
        return self._design(V, self.mode_) @ self.coef_

    def _get_state(self) -> dict[str, Any]:
        return {"mode": self.mode_, "coef": self.coef_, "table": _as_table(self.table, self.config).to_state()}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.mode_ = str(state["mode"])
        self.coef_ = np.asarray(state["coef"], dtype=np.float64)
        self.table = LatencyTable.from_state(state["table"], self.config)


@register_predictor("hybrid")
class HybridPredictor(XGBPredictor):
    """Trees given the LUT sum as an extra feature.  ``base`` is the model the trees correct (they fit
    the log ratio to it): 'macs' (default, as for ``xgb``), 'lut' (the LUT sum with a fitted affine
    offset) or 'none'.  On 500 ort-cpu-1t subnets 'macs' did better than 'lut' (tau 0.83 vs 0.80 at 400
    training subnets)."""

    targets = ("latency",)
    object_params = ("table",)

    def __init__(self, supernet: Any = DEFAULT_SUPERNET, table: Any = None, n_estimators: int = 400,
                 max_depth: int = 4, learning_rate: float = 0.05, subsample: float = 0.8,
                 colsample_bytree: float = 0.8, min_child_weight: float = 1.0, reg_lambda: float = 1.0,
                 reg_alpha: float = 0.0, target_transform: str = "log", base: str = "macs", features: str = "all",
                 n_jobs: int = 0, seed: int = 0):
        super().__init__(supernet=supernet, n_estimators=n_estimators, max_depth=max_depth,
                         learning_rate=learning_rate, subsample=subsample, colsample_bytree=colsample_bytree,
                         min_child_weight=min_child_weight, reg_lambda=reg_lambda, reg_alpha=reg_alpha,
                         target_transform=target_transform, base=base, features=features, n_jobs=n_jobs, seed=seed)
        self.table = table

    def _lut(self, V: np.ndarray) -> np.ndarray:
        return _as_table(self.table, self.config).sum_vectors(V)

    def _design(self, V: np.ndarray) -> np.ndarray:
        F = featurize_vectors(self.config, V, onehot=self.features != "analytic", analytic=self.features != "onehot")
        return np.concatenate([F, self._lut(V)[:, None].astype(np.float32)], axis=1)

    _BASES = ("lut", "macs", "none")

    def _base_regressor(self, V: np.ndarray, F: np.ndarray) -> np.ndarray:
        if self.base == "lut":
            return F[:, -1].astype(np.float64)  # the LUT sum is the last column of the design matrix
        return super()._base_regressor(V, F[:, :-1])

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "table": _as_table(self.table, self.config).to_state()}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.table = LatencyTable.from_state(state["table"], self.config)
        super()._set_state(state)


__all__ = ["HybridPredictor", "LUTPredictor", "LatencyTable", "build_latency_table", "entries_for", "load_table",
           "lut_store_name", "save_table"]
