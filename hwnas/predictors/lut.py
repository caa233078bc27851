"""Layer-wise latency lookup table (in Once-for-All's spirit) and the predictors built on it.

Every distinct block configuration of a family -- (in_ch, out_ch, kernel, mid channels, stride,
activation, SE, input size, residual) -- plus the stem (first conv + first block) and the head (final
expand, pool, feature mix, classifier) at each resolution is exported as a tiny static ONNX model and
measured on the device with the usual protocol.  The rows go to the measurement store under the
supernet name ``<family>:lut`` (so building is resumable and a table is shared by everything reading
the store), keyed by the entry's readable key.

An arch's LUT latency is the sum of its entries.  Measured in isolation every entry pays a call's
fixed overhead, and a whole network differs by a roughly constant factor (fusion, caches), so the
``lut`` predictor fits ``y = a + b * lut_sum + c * n_blocks`` on whole-network measurements; ``hybrid``
gives trees the LUT sum as an extra feature.  Entries hold each model's minimum time by default (see
``LatencyTable.from_store``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from hwnas.errors import PredictorError
from hwnas.predictors.base import DEFAULT_SUPERNET, Predictor, register_predictor
from hwnas.predictors.features import featurize_vectors, resolve_config
from hwnas.predictors.latency import XGBPredictor, _lstsq
from hwnas.supernet.cost import conv_out, cost_table, mid_channels
from hwnas.supernet.ofa_mbv3 import MBv3Config

LUT_SUFFIX = ":lut"
DEFAULT_LUT_STAT = "min_ms"


def lut_store_name(config: MBv3Config | str) -> str:
    """The ``supernet`` column value of a family's LUT rows in the store."""
    return resolve_config(config).name + LUT_SUFFIX


# ---------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class LutIndex:
    """The distinct entries of a family and where each arch slot looks them up."""

    keys: list[str]
    entries: list[dict]
    slot_idx: np.ndarray  # (slots, nk, ne, nr) -> entry index
    stem_idx: np.ndarray  # (nr,)
    head_idx: np.ndarray  # (nr,)
    key_pos: dict[str, int] = field(default_factory=dict)


def _block_entry(in_ch: int, out_ch: int, ks: int, mid: int, stride: int, act: str, se: bool, size: int) -> dict:
    res = stride == 1 and in_ch == out_ch
    key = f"mb-i{in_ch}-o{out_ch}-k{ks}-m{mid}-s{stride}-{act}-{'se' if se else 'nose'}-h{size}-{'res' if res else 'nores'}"
    return {"key": key, "kind": "block", "in_ch": in_ch, "out_ch": out_ch, "ks": ks, "mid": mid, "stride": stride,
            "act": act, "se": se, "size": size, "residual": res}


@lru_cache(maxsize=16)
def lut_index(config: MBv3Config) -> LutIndex:
    c, sp = config, config.space
    t = cost_table(config)
    keys: list[str] = []
    entries: list[dict] = []
    pos: dict[str, int] = {}

    def add(entry: dict) -> int:
        k = entry["key"]
        if k not in pos:
            pos[k] = len(keys)
            keys.append(k)
            entries.append(entry)
        return pos[k]

    nk, ne, nr = len(sp.ks_list), len(sp.e_list), len(sp.resolutions)
    slot_idx = np.zeros((sp.n_blocks, nk, ne, nr), dtype=np.int64)
    stem_idx = np.zeros(nr, dtype=np.int64)
    head_idx = np.zeros(nr, dtype=np.int64)
    for ri, r in enumerate(sp.resolutions):
        stem_idx[ri] = add({"key": f"stem-c{c.in_channels}-w{c.first_conv_width}-s{c.first_conv_stride}-"
                                   f"b{c.first_block_width}-h{r}", "kind": "stem", "size": r})
        for slot, info in enumerate(t.slots):
            size = int(t.stage_in[info.stage, ri])
            if info.index > 0:
                size = conv_out(size, 3, c.stage_strides[info.stage])
            for ki, ks in enumerate(sp.ks_list):
                for ei, e in enumerate(sp.e_list):
                    mid = mid_channels(info.in_ch, e)
                    slot_idx[slot, ki, ei, ri] = add(
                        _block_entry(info.in_ch, info.out_ch, ks, mid, info.stride, info.act, info.se, size))
        fs = int(t.final_size[ri])
        head_idx[ri] = add({"key": f"head-i{c.stage_widths[-1]}-f{c.final_expand_width}-m{c.feature_mix_width}-"
                                   f"n{c.n_classes}-h{fs}", "kind": "head", "size": fs})
    return LutIndex(keys, entries, slot_idx, stem_idx, head_idx, pos)


def entries_for(config: MBv3Config | str, V: np.ndarray) -> list[int]:
    """Entry indices the archs of gene matrix ``V`` use (to build a partial table)."""
    cfg = resolve_config(config)
    idx = lut_index(cfg)
    t = cost_table(cfg)
    ks, e, _, r, mask = t.split_vectors(V)
    used = set(idx.stem_idx[r].tolist()) | set(idx.head_idx[r].tolist())
    flat = idx.slot_idx[np.arange(t.n_slots)[None, :], ks, e, r[:, None]]
    used |= set(flat[mask].tolist())
    return sorted(used)


def entry_module(config: MBv3Config, entry: Mapping[str, Any]) -> tuple[Any, tuple[int, int, int]]:
    """A static ``nn.Module`` for one LUT entry and its input shape (C, H, W)."""
    import torch
    from torch import nn

    from hwnas.supernet.layers import ConvLayer, LinearLayer, MBConvLayer, ResidualBlock

    c = config
    kind, size = entry["kind"], int(entry["size"])
    if kind == "block":
        layer = MBConvLayer(entry["in_ch"], entry["out_ch"], entry["ks"], entry["stride"], entry["mid"],
                            entry["act"], entry["se"])
        return ResidualBlock(layer, entry["residual"]).eval(), (entry["in_ch"], size, size)
    if kind == "stem":
        first = MBConvLayer(c.first_conv_width, c.first_block_width, 3, 1, None, "relu", False)
        m = nn.Sequential(ConvLayer(c.in_channels, c.first_conv_width, 3, c.first_conv_stride, "h_swish"),
                          ResidualBlock(first, c.first_conv_width == c.first_block_width))
        return m.eval(), (c.in_channels, size, size)
    if kind == "head":
        class Head(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.final_expand_layer = ConvLayer(c.stage_widths[-1], c.final_expand_width, 1, 1, "h_swish")
                self.feature_mix_layer = ConvLayer(c.final_expand_width, c.feature_mix_width, 1, 1, "h_swish",
                                                   use_bn=False, bias=False)
                self.classifier = LinearLayer(c.feature_mix_width, c.n_classes, 0.0)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = self.final_expand_layer(x)
                x = x.mean((2, 3), keepdim=True)
                x = self.feature_mix_layer(x)
                return self.classifier(torch.flatten(x, 1))

        return Head().eval(), (c.stage_widths[-1], size, size)
    raise PredictorError(f"unknown LUT entry kind {kind!r}")


# ---------------------------------------------------------------------------------- the table
class LatencyTable:
    """Measured milliseconds of each LUT entry of one family on one device."""

    def __init__(self, supernet: MBv3Config | str, values_ms: Mapping[str, float], fp_hash: str = "",
                 device: str = ""):
        self.config = resolve_config(supernet)
        self.fp_hash = fp_hash
        self.device = device
        idx = lut_index(self.config)
        self.values = np.array([float(values_ms.get(k, np.nan)) for k in idx.keys], dtype=np.float64)
        unknown = sorted(set(values_ms) - set(idx.key_pos))
        if unknown:
            raise PredictorError(f"LUT holds {len(unknown)} entries that family {self.config.name} does not have "
                                 f"(e.g. {unknown[0]}); it was built for another family")
        self._flat_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def n_missing(self) -> int:
        return int(np.isnan(self.values).sum())

    def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._flat_cache is None:
            idx = lut_index(self.config)
            slot = np.append(self.values[idx.slot_idx].ravel(), 0.0)
            self._flat_cache = (slot, self.values[idx.stem_idx], self.values[idx.head_idx])
        return self._flat_cache

    def sum_vectors(self, V: np.ndarray) -> np.ndarray:
        """LUT latency (ms) of every arch of the gene matrix ``V``: stem + blocks that run + head."""
        t = cost_table(self.config)
        ks, e, _, r, mask = t.split_vectors(V)
        slot, stem, head = self._flat()
        total = slot[t.flat_index(ks, e, r, mask)].sum(axis=1) + stem[r] + head[r]
        if np.isnan(total).any():
            raise PredictorError(f"the LUT lacks entries some archs use ({self.n_missing} of {len(self.values)} "
                                 "entries unmeasured); build it for the whole space")
        return total

    def to_state(self) -> dict[str, Any]:
        keys = lut_index(self.config).keys
        ok = ~np.isnan(self.values)
        return {"supernet": self.config.name, "fp_hash": self.fp_hash, "device": self.device,
                "keys": [k for k, o in zip(keys, ok) if o], "values_ms": self.values[ok]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], supernet: MBv3Config | str | None = None) -> "LatencyTable":
        vals = np.asarray(state["values_ms"], dtype=np.float64)
        return cls(supernet if supernet is not None else state["supernet"], dict(zip(state["keys"], vals.tolist())),
                   fp_hash=state.get("fp_hash", ""), device=state.get("device", ""))

    @classmethod
    def from_store(cls, store: Any, supernet: MBv3Config | str, fp_hash: str, device: str = "",
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

    from hwnas.predictors.artifacts import _config_dict, atomic_write_text
    from hwnas.predictors.features import FEATURE_VERSION

    idx = lut_index(table.config)
    entries = [{**idx.entries[i], "ms": float(v)} for i, v in enumerate(table.values) if not np.isnan(v)]
    doc = {"format": LUT_FORMAT, "format_version": 1, "supernet": table.config.name,
           "supernet_config": _config_dict(table.config), "feature_version": FEATURE_VERSION,
           "device": table.device, "fp_hash": table.fp_hash, "n_entries": len(idx.keys), "entries": entries}
    p = Path(path)
    atomic_write_text(p, json.dumps(doc, indent=1, allow_nan=False))
    return p


def load_table(path: str | Path, *, expect_supernet: str | None = None,
               expect_fp_hash: str | None = None) -> LatencyTable:
    """Read a LUT written by ``save_table``; a wrong family, layout or device is one ``PredictorError`` line."""
    import json

    from hwnas.errors import UnknownSupernetError
    from hwnas.predictors.artifacts import _config_dict, config_from_dict

    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictorError(f"LUT file {p} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PredictorError(f"LUT file {p} is not valid JSON ({exc})") from None
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
        cfg = config_from_dict(doc.get("supernet_config") or {})
    return LatencyTable(cfg, {e["key"]: e["ms"] for e in doc.get("entries", [])}, fp_hash=doc.get("fp_hash", ""),
                        device=doc.get("device", ""))


def build_latency_table(
    supernet: MBv3Config | str,
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
    from hwnas.export.onnx_export import export_onnx
    from hwnas.predictors.features import as_vectors

    cfg = resolve_config(supernet)
    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    idx = lut_index(cfg)
    wanted = range(len(idx.keys)) if archs is None else entries_for(cfg, as_vectors(cfg, archs))
    todo = [(idx.keys[i], idx.entries[i]) for i in wanted]
    torch_backend = spec.backend.startswith("torch")
    with tempfile.TemporaryDirectory(prefix="hwnas-lut-", dir=workdir) as tmp:
        def build(entry: dict) -> tuple[Any, Any]:
            module, shape = entry_module(cfg, entry)
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


def _as_table(table: Any, config: MBv3Config) -> LatencyTable:
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
                "blocks": [np.ones_like(s), s, cost_table(self.config).cost_vectors(V)["n_blocks"]]}[mode]
        return np.stack(cols, axis=1)

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


__all__ = ["HybridPredictor", "LUTPredictor", "LatencyTable", "LutIndex", "build_latency_table", "entries_for",
           "entry_module", "load_table", "lut_index", "lut_store_name", "save_table"]
