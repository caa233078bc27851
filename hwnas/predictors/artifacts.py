"""Portable predictor artifacts: one JSON file, no pickles.

Layout::

    {"format": "hwnas-predictor", "format_version": 1,
     "kind": "xgb", "target": "latency",
     "supernet": "mbv3_fmnist", "supernet_config": {...}, "supernet_hash": "...",
     "feature_version": 1,
     "device": "ort-cpu-1t", "fp_hash": "...", "fingerprint": {...}, "stat": "median_ms",
     "n_train": 400, "metrics": {...held-out figures...}, "train_arch_ids": [...],
     "params": {...hyperparameters...},
     "state": {...learned state; numpy arrays as {"__ndarray__": dtype, "shape": [...], "data": [...]}}}

XGBoost boosters are embedded as XGBoost's own JSON model text (``save_raw('json')``), LUTs as key and
value lists, MLP weights as arrays; floats round-trip exactly, so a loaded predictor predicts exactly
what the saved one did.  ``load_predictor`` refuses, with one line, an artifact of another supernet,
family layout, feature version, device fingerprint or supernet weights.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hwnas.errors import PredictorError, UnknownSupernetError
from hwnas.io import loads_json
from hwnas.io import atomic_write_text
from hwnas.predictors.base import Predictor, get_predictor_class
from hwnas.predictors.features import FEATURE_VERSION, resolve_config
from hwnas.supernet.family import SupernetFamily

FORMAT = "hwnas-predictor"
FORMAT_VERSION = 1
DEFAULT_FILENAME = "predictor.json"
META_KEYS = ("target", "supernet_hash", "device", "fp_hash", "fingerprint", "stat", "n_train", "metrics",
             "train_arch_ids", "notes")


# ---------------------------------------------------------------------------------- JSON encoding
def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": str(obj.dtype), "shape": list(obj.shape), "data": obj.ravel().tolist()}
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, SupernetFamily):
        return obj.name
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise PredictorError(f"cannot store a {type(obj).__name__} in a predictor artifact")


def _decode(obj: Any, where: str = "predictor artifact", field: str = "state") -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return _decode_array(obj, where, field)
        return {k: _decode(v, where, f"{field}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, where, f"{field}[{i}]") for i, v in enumerate(obj)]
    return obj


def _decode_array(obj: Mapping[str, Any], where: str, field: str) -> np.ndarray:
    """An encoded array, every field checked: a wrong one is one ``PredictorError`` naming it."""
    dtype, shape, data = obj.get("__ndarray__"), obj.get("shape"), obj.get("data")
    try:
        dt = np.dtype(dtype) if isinstance(dtype, str) else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biuf":
        raise PredictorError(f"{where}: field {field!r} has array dtype {dtype!r}; expected a numeric dtype name "
                             f"such as 'float64'")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape)):
        raise PredictorError(f"{where}: field {field!r} has array shape {shape!r}; expected a list of integers >= 0")
    if not isinstance(data, list):
        raise PredictorError(f"{where}: field {field!r} has array data of type {_json_type(data)}; expected a list")
    try:
        arr = np.asarray(data, dtype=dt)
    except (TypeError, ValueError, OverflowError):
        raise PredictorError(f"{where}: field {field!r} holds array data that is not a flat list of {dt.name} "
                             f"numbers") from None
    if arr.ndim != 1 or arr.size != int(np.prod(shape, dtype=np.int64)):
        raise PredictorError(f"{where}: field {field!r} holds {arr.size} values in shape {arr.shape}, not the "
                             f"{int(np.prod(shape, dtype=np.int64))} of its shape {shape}")
    return arr.reshape(shape)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, Mapping):
        return "object"
    return type(v).__name__


# field -> (JSON types allowed, what to say); every other field is free-form
_FIELD_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "kind": (("string",), "a string"),
    "target": (("string",), "a string"),
    "supernet": (("string",), "a string"),
    "supernet_kind": (("string", "null"), "a string or null"),
    "supernet_config": (("object", "null"), "an object"),
    "supernet_hash": (("string", "null"), "a string or null"),
    "device": (("string", "null"), "a string or null"),
    "fp_hash": (("string", "null"), "a string or null"),
    "fingerprint": (("object", "null"), "an object or null"),
    "stat": (("string", "null"), "a string or null"),
    "n_train": (("number",), "an integer"),
    "metrics": (("object", "null"), "an object"),
    "train_arch_ids": (("array", "null"), "an array of strings or null"),
    "notes": (("string", "array", "object", "null"), "a string, array, object or null"),
    "params": (("object",), "an object"),
    "state": (("object",), "an object"),
}


def _check_field_types(d: Mapping[str, Any], where: str) -> None:
    """Each known artifact field has its JSON type, or one line names the field and the type expected."""
    for key in ("format_version", "feature_version"):
        v = d.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise PredictorError(f"{where}: field {key!r} must be an integer; got {_json_type(v)} {v!r:.40}")
    for key in ("kind", "params", "state"):
        if key not in d:
            raise PredictorError(f"{where} has no field {key!r}; it is not a complete predictor artifact")
    for key, (types, what) in _FIELD_TYPES.items():
        if key in d and _json_type(d[key]) not in types:
            raise PredictorError(f"{where}: field {key!r} must be {what}; got {_json_type(d[key])}")
    if "n_train" in d and (not isinstance(d["n_train"], int) or d["n_train"] < 0):
        raise PredictorError(f"{where}: field 'n_train' must be an integer >= 0; got {d['n_train']!r:.40}")
    ids = d.get("train_arch_ids")
    if isinstance(ids, list) and not all(isinstance(a, str) for a in ids):
        raise PredictorError(f"{where}: field 'train_arch_ids' must be an array of strings")


DEFAULT_FAMILY_KIND = "ofa_mbv3"  # artifacts written before families were plug-ins name no kind


def config_from_dict(d: Mapping[str, Any], kind: str | None = None) -> SupernetFamily:
    """A family of class ``kind`` rebuilt from its stored layout (an unregistered supernet)."""
    from hwnas.supernet.registry import family_from_config

    return family_from_config(kind or DEFAULT_FAMILY_KIND, dict(d))


def _config_dict(family: SupernetFamily) -> dict[str, Any]:
    return json.loads(json.dumps(family.config_dict()))  # tuples -> lists, as stored


# ---------------------------------------------------------------------------------- to / from dict
def predictor_to_dict(pred: Predictor, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The artifact of a fitted predictor as a JSON-able dict (``meta``: see ``META_KEYS``)."""
    if not pred.is_fitted():
        raise PredictorError(f"{type(pred).__name__} is not fitted; fit it before saving")
    meta = dict(meta or {})
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise PredictorError(f"unknown artifact metadata {', '.join(unknown)}; allowed: {', '.join(META_KEYS)}")
    cfg = pred.config
    target = meta.get("target", "latency")
    if target not in pred.targets:
        raise PredictorError(f"a {pred.kind} predictor does not predict {target}")
    fp = meta.get("fingerprint")
    if fp is not None and hasattr(fp, "to_dict"):
        fp = fp.to_dict()
    params = {k: v for k, v in pred.get_params().items() if k not in pred.object_params and k != "supernet"}
    return _encode({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": pred.kind,
        "target": target,
        "supernet": cfg.name,
        "supernet_kind": cfg.kind,
        "supernet_config": _config_dict(cfg),
        "supernet_hash": meta.get("supernet_hash"),
        "feature_version": FEATURE_VERSION,
        "device": meta.get("device"),
        "fp_hash": meta.get("fp_hash") or (fp or {}).get("fp_hash"),
        "fingerprint": fp,
        "stat": meta.get("stat"),
        "n_train": int(meta.get("n_train", pred.n_train_)),
        "metrics": meta.get("metrics", {}),
        "train_arch_ids": meta.get("train_arch_ids"),
        "notes": meta.get("notes"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "state": {"n_train": pred.n_train_, **pred._get_state()},
    })


def _check_header(d: Mapping[str, Any], where: str, expect_supernet: str | None, expect_fp_hash: str | None,
                  expect_supernet_hash: str | None, expect_target: str | None) -> SupernetFamily | str:
    if not isinstance(d, Mapping) or d.get("format") != FORMAT:
        raise PredictorError(f"{where} is not a hwnas predictor artifact")
    _check_field_types(d, where)
    if d.get("format_version") != FORMAT_VERSION:
        raise PredictorError(f"{where} has artifact format version {d.get('format_version')}; this hwnas reads "
                             f"version {FORMAT_VERSION}; retrain it")
    if d.get("feature_version") != FEATURE_VERSION:
        raise PredictorError(f"{where} was trained with feature version {d.get('feature_version')}; this hwnas "
                             f"computes version {FEATURE_VERSION}; retrain it")
    name = d.get("supernet")
    if expect_supernet is not None and name != expect_supernet:
        raise PredictorError(f"{where} was trained for supernet {name}, not {expect_supernet}; "
                             f"use a predictor of {expect_supernet}")
    if expect_target is not None and d.get("target") != expect_target:
        raise PredictorError(f"{where} predicts {d.get('target')}, not {expect_target}")
    if expect_fp_hash is not None and d.get("fp_hash") != expect_fp_hash:
        raise PredictorError(f"{where} was trained on device {d.get('device') or '?'} (fingerprint {d.get('fp_hash')}), "
                             f"not on this device (fingerprint {expect_fp_hash}); profile this device and fit one")
    if expect_supernet_hash is not None and d.get("supernet_hash") != expect_supernet_hash:
        raise PredictorError(f"{where} was trained on supernet weights {d.get('supernet_hash')}, not on these "
                             f"({expect_supernet_hash}); refit it on accuracies of these weights")
    saved = d.get("supernet_config") or {}
    try:
        cfg = resolve_config(name)
    except UnknownSupernetError:
        try:
            return config_from_dict(saved, d.get("supernet_kind"))
        except (TypeError, ValueError, UnknownSupernetError) as exc:
            raise PredictorError(f"{where}: supernet {name} is not registered and its stored layout is unreadable "
                                 f"({exc})") from None
    if _config_dict(cfg) != saved:
        diff = sorted(k for k in set(saved) | set(_config_dict(cfg)) if saved.get(k) != _config_dict(cfg).get(k))
        raise PredictorError(f"{where} was trained on a different layout of supernet {name} (differs in "
                             f"{', '.join(diff[:4])}); retrain it")
    return name


def predictor_from_dict(d: Mapping[str, Any], *, where: str = "predictor artifact", expect_supernet: str | None = None,
                        expect_fp_hash: str | None = None, expect_supernet_hash: str | None = None,
                        expect_target: str | None = None) -> Predictor:
    supernet = _check_header(d, where, expect_supernet, expect_fp_hash, expect_supernet_hash, expect_target)
    try:
        cls = get_predictor_class(d["kind"])
    except KeyError:
        raise PredictorError(f"{where} holds a predictor of unknown kind {d.get('kind')!r}") from None
    params = dict(_decode(d.get("params", {}), where, "params"))
    unknown = sorted(set(params) - set(cls._param_names()))
    if unknown:
        raise PredictorError(f"{where}: kind {d['kind']} has no hyperparameter(s) {', '.join(unknown)}")
    pred = cls(supernet=supernet, **params)
    state = _decode(d["state"], where, "state")
    try:
        pred._set_state(state)
        pred.n_train_ = int(state["n_train"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"{where} has a malformed {d['kind']} state ({type(exc).__name__}: {exc})") from None
    pred.meta_ = {k: d.get(k) for k in ("kind", *META_KEYS, "supernet", "feature_version", "created_at")}
    return pred


# ---------------------------------------------------------------------------------- files
def _resolve_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.suffix.lower() == ".json":
        return p
    return p / DEFAULT_FILENAME


def save_predictor(pred: Predictor, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``pred`` to ``path`` (a ``.json`` file, or a directory that gets ``predictor.json``),
    atomically: a failure never leaves a half-written file.  Returns the file written."""
    p = _resolve_path(path)
    d = predictor_to_dict(pred, meta)
    atomic_write_text(p, json.dumps(d, allow_nan=False, separators=(",", ":")))
    return p


def read_artifact(path: str | Path) -> dict[str, Any]:
    p = _resolve_path(path)
    if not p.is_file():
        raise PredictorError(f"predictor file {p} does not exist")
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise PredictorError(f"predictor file {p} cannot be read ({exc.strerror or exc})") from None
    d = loads_json(text, f"predictor file {p}", PredictorError)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise PredictorError(f"{p} is not a hwnas predictor artifact")
    return d


def read_header(path: str | Path) -> dict[str, Any]:
    """The artifact's metadata without its learned state."""
    d = read_artifact(path)
    return {k: v for k, v in d.items() if k not in ("state", "train_arch_ids")}


def load_predictor(path: str | Path, *, expect_supernet: str | None = None, expect_fp_hash: str | None = None,
                   expect_supernet_hash: str | None = None, expect_target: str | None = None) -> Predictor:
    """Load an artifact; every ``expect_*`` given must match it, or ``PredictorError`` says which did not.

    The returned predictor has ``meta_`` (the artifact's header: device, fingerprint, metrics, ...).

    A ``.pth`` / ``.pt`` / ``.tar`` path is Once-for-All's saved AccuracyPredictor, read by
    ``hwnas.predictors.ofa_mlp.load_ofa_accuracy_predictor`` for the supernet ``expect_supernet`` (required).
    """
    from hwnas.predictors.ofa_mlp import is_torch_path

    if is_torch_path(path):
        return _load_torch_predictor(Path(path).expanduser(), expect_supernet, expect_fp_hash, expect_supernet_hash,
                                     expect_target)
    p = _resolve_path(path)
    return predictor_from_dict(read_artifact(p), where=f"predictor {p}", expect_supernet=expect_supernet,
                               expect_fp_hash=expect_fp_hash, expect_supernet_hash=expect_supernet_hash,
                               expect_target=expect_target)


def _load_torch_predictor(p: Path, expect_supernet: str | None, expect_fp_hash: str | None,
                          expect_supernet_hash: str | None, expect_target: str | None) -> Predictor:
    """OFA's AccuracyPredictor file as an ``ofa_mlp`` predictor, with ``load_predictor``'s checks."""
    from hwnas.predictors.ofa_mlp import load_ofa_accuracy_predictor

    where = f"{p} (a PyTorch file, read as Once-for-All's AccuracyPredictor)"
    if expect_target is not None and expect_target != "accuracy":
        raise PredictorError(f"{where} predicts accuracy, not {expect_target}; pass a {expect_target} predictor "
                             f"artifact (.json)")
    if expect_supernet is None:
        raise PredictorError(f"{where} does not record its supernet: name it (expect_supernet=, --supernet) or "
                             f"convert it once with load_ofa_accuracy_predictor(path, supernet) and save_predictor")
    if expect_fp_hash is not None:
        raise PredictorError(f"{where} predicts accuracy and records no device fingerprint; pass a latency "
                             f"predictor of this device")
    if expect_supernet_hash is not None:
        raise PredictorError(f"{where} records no supernet weights hash to check against {expect_supernet_hash}; "
                             f"load it without one")
    return load_ofa_accuracy_predictor(p, expect_supernet)


__all__ = ["DEFAULT_FILENAME", "FORMAT", "FORMAT_VERSION", "config_from_dict", "load_predictor",
           "predictor_from_dict", "predictor_to_dict", "read_header", "save_predictor"]
