"""Features of an arch for the predictors, vectorized over the integer gene matrix.

The gene matrix is what the search holds: one row per arch, ``ArchSpace.encode`` layout
(``ks`` choice index per slot, ``e`` choice index per slot, ``d`` choice index per stage, ``r``
choice index).  ``featurize_vectors(config, X)`` turns it into float32 features:

1. depth-masked one-hot encoding: per block slot a one-hot of ``ks`` and of ``e`` (all zeros when the
   slot lies beyond its stage's depth, so archs differing only in ignored slots get identical
   features), per stage a one-hot of ``d``, and a one-hot of ``r``;
2. analytic cost (``hwnas.supernet.cost``): MACs and params (total and per stage, in millions),
   peak activation memory (millions of elements), resolution and the number of blocks that run.

Bump ``FEATURE_VERSION`` whenever the layout or meaning of a column changes: saved predictors record
it and refuse to load against another.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from hwnas.errors import ArchError
from hwnas.supernet.arch import ArchSpace
from hwnas.supernet.cost import cost_table
from hwnas.supernet.ofa_mbv3 import MBv3Config

FEATURE_VERSION = 1
_CHUNK = 32768  # rows per block when featurizing huge populations (bounds temporary memory)


def resolve_config(obj: MBv3Config | ArchSpace | str) -> MBv3Config:
    """The family config from a config, a registered family name or an ``ArchSpace`` (by its name)."""
    if isinstance(obj, MBv3Config):
        return obj
    from hwnas.supernet.registry import get_config

    if isinstance(obj, ArchSpace):
        cfg = get_config(obj.name)
        if cfg.space != obj:
            raise ArchError(f"space {obj.name!r} differs from the registered family of that name")
        return cfg
    return get_config(str(obj))


# ---------------------------------------------------------------------------------- encoding
def encode_archs(space: ArchSpace, archs: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """``(N, L)`` int64 gene matrix of arch dicts, faster than ``space.encode`` per arch.

    Accepts the ``image_size`` and ``r: [int]`` aliases; an arch with a value outside the space is
    reported by ``space.normalize`` (the field, the index and the allowed values).
    """
    archs = list(archs)
    nb, ns = space.n_blocks, space.n_stages
    n = len(archs)
    X = np.empty((n, space.vector_length), dtype=np.int64)
    if n == 0:
        return X
    ks = np.empty((n, nb), dtype=np.float64)
    e = np.empty((n, nb), dtype=np.float64)
    d = np.empty((n, ns), dtype=np.float64)
    r = np.empty(n, dtype=np.float64)
    default_r = max(space.resolutions)
    try:
        for i, a in enumerate(archs):
            ks[i] = a["ks"]
            e[i] = a["e"]
            d[i] = a["d"]
            rv = a["r"] if "r" in a else a.get("image_size", default_r)
            r[i] = rv[0] if isinstance(rv, (list, tuple)) and len(rv) == 1 else rv
    except (KeyError, ValueError, TypeError):
        _raise_first_bad(space, archs)
        raise
    for vals in (ks, e, d, r):
        bad = ~np.isfinite(vals) | (vals != np.round(vals))
        if bad.any():
            _raise_first_bad(space, archs, int(np.flatnonzero(bad.reshape(n, -1).any(axis=1))[0]))
    ks, e, d, r = (v.astype(np.int64) for v in (ks, e, d, r))
    for cols, vals, allowed in ((slice(0, nb), ks, space.ks_list), (slice(nb, 2 * nb), e, space.e_list),
                                (slice(2 * nb, 2 * nb + ns), d, space.d_list)):
        lut = _value_index(allowed)
        idx = lut[np.clip(vals, 0, len(lut) - 1)]
        idx[(vals < 0) | (vals >= len(lut))] = -1
        X[:, cols] = idx
    lut = _value_index(space.resolutions)
    ri = lut[np.clip(r, 0, len(lut) - 1)]
    ri[(r < 0) | (r >= len(lut))] = -1
    X[:, -1] = ri
    if (X < 0).any():
        _raise_first_bad(space, archs, int(np.flatnonzero((X < 0).any(axis=1))[0]))
    return X


def _value_index(allowed: Sequence[int]) -> np.ndarray:
    lut = np.full(max(allowed) + 1, -1, dtype=np.int64)
    for i, v in enumerate(allowed):
        lut[v] = i
    return lut


def _raise_first_bad(space: ArchSpace, archs: list, start: int = 0) -> None:
    for i in range(start, len(archs)):
        try:
            space.normalize(archs[i])
        except ArchError as exc:
            raise ArchError(f"arch #{i}: {exc}") from None
    raise ArchError("an arch could not be encoded")  # pragma: no cover - normalize accepts what we reject


# ---------------------------------------------------------------------------------- features
def feature_names(config: MBv3Config | ArchSpace | str) -> list[str]:
    cfg = resolve_config(config)
    sp = cfg.space
    names = []
    for slot in range(sp.n_blocks):
        s, j = divmod(slot, sp.max_depth)
        names += [f"s{s}b{j}_ks{k}" for k in sp.ks_list]
        names += [f"s{s}b{j}_e{v}" for v in sp.e_list]
    for s in range(sp.n_stages):
        names += [f"s{s}_d{v}" for v in sp.d_list]
    names += [f"r{v}" for v in sp.resolutions]
    names += ["macs_m", "params_m", "peak_act_m", "resolution", "n_blocks"]
    names += [f"s{s}_macs_m" for s in range(sp.n_stages)]
    names += [f"s{s}_params_m" for s in range(sp.n_stages)]
    return names


def n_onehot(config: MBv3Config | ArchSpace | str) -> int:
    """Number of leading one-hot columns (the rest are analytic)."""
    sp = resolve_config(config).space
    return sp.n_blocks * (len(sp.ks_list) + len(sp.e_list)) + sp.n_stages * len(sp.d_list) + len(sp.resolutions)


def featurize_vectors(config: MBv3Config | ArchSpace | str, X: np.ndarray, *, onehot: bool = True,
                      analytic: bool = True) -> np.ndarray:
    """float32 features ``(N, F)`` of the ``(N, L)`` integer gene matrix (the search's population)."""
    cfg = resolve_config(config)
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if len(X) > _CHUNK:
        return np.concatenate([featurize_vectors(cfg, X[i:i + _CHUNK], onehot=onehot, analytic=analytic)
                               for i in range(0, len(X), _CHUNK)])
    t = cost_table(cfg)
    sp = cfg.space
    ks, e, d, r, mask = t.split_vectors(X)
    n, nb, ns = len(X), sp.n_blocks, sp.n_stages
    nk, ne, nd = len(sp.ks_list), len(sp.e_list), len(sp.d_list)
    n_oh = n_onehot(cfg) if onehot else 0
    n_an = 5 + 2 * ns if analytic else 0
    out = np.zeros((n, n_oh + n_an + 1), dtype=np.float32)  # + a scratch column for skipped slots
    if onehot:
        slot_base = (np.arange(nb, dtype=np.intp) * (nk + ne))[None, :]
        scratch = out.shape[1] - 1
        cols = np.concatenate([
            np.where(mask, slot_base + ks, scratch),
            np.where(mask, slot_base + nk + e, scratch),
            nb * (nk + ne) + (np.arange(ns, dtype=np.intp) * nd)[None, :] + d,
            (nb * (nk + ne) + ns * nd + r)[:, None],
        ], axis=1)
        out[np.arange(n)[:, None], cols] = 1.0
    if analytic:
        c = t.cost_vectors(X)
        a = out[:, n_oh:n_oh + n_an]
        a[:, 0] = c["macs"] / 1e6
        a[:, 1] = c["params"] / 1e6
        a[:, 2] = c["peak_act"] / 1e6
        a[:, 3] = c["resolution"]
        a[:, 4] = c["n_blocks"]
        a[:, 5:5 + ns] = c["stage_macs"] / 1e6
        a[:, 5 + ns:] = c["stage_params"] / 1e6
    return out[:, :-1]


def featurize(config: MBv3Config | ArchSpace | str, archs: Iterable[Mapping[str, Any]] | np.ndarray,
              **kw: Any) -> np.ndarray:
    """float32 features of arch dicts (or of a gene matrix) of the family ``config``."""
    cfg = resolve_config(config)
    if isinstance(archs, np.ndarray):
        return featurize_vectors(cfg, archs, **kw)
    return featurize_vectors(cfg, encode_archs(cfg.space, archs), **kw)


def as_vectors(config: MBv3Config | ArchSpace | str, X: Any) -> np.ndarray:
    """The gene matrix of ``X``: a gene matrix (returned as int64), one arch dict, or a list of arch dicts."""
    cfg = resolve_config(config)
    if isinstance(X, Mapping):
        X = [X]
    if isinstance(X, np.ndarray):
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != cfg.space.vector_length:
            raise ArchError(f"gene matrix for {cfg.name} must have shape (N, {cfg.space.vector_length}); "
                            f"got {X.shape}")
        return X.astype(np.int64, copy=False)
    X = list(X)
    if X and not isinstance(X[0], Mapping):
        return as_vectors(cfg, np.asarray(X, dtype=np.int64))
    return encode_archs(cfg.space, X)


__all__ = ["FEATURE_VERSION", "as_vectors", "encode_archs", "feature_names", "featurize", "featurize_vectors",
           "n_onehot", "resolve_config"]
