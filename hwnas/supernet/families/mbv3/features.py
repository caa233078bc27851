"""Predictor features of MobileNetV3 families, vectorized over the integer gene matrix.

1. depth-masked one-hot encoding: per block slot a one-hot of ``ks`` and of ``e`` (all zeros when the
   slot lies beyond its stage's depth, so archs differing only in ignored slots get identical
   features), per stage a one-hot of ``d``, and a one-hot of ``r``;
2. analytic cost (``cost.py``): MACs and params (total and per stage, in millions), peak activation
   memory (millions of elements), resolution and the number of blocks that run.
"""

from __future__ import annotations

import numpy as np

from hwnas.supernet.families.mbv3.cost import cost_table
from hwnas.supernet.families.mbv3.model import MBv3Config
from hwnas.supernet.family import cost_columns

_CHUNK = 32768  # rows per block when featurizing huge populations (bounds temporary memory)


def feature_names(config: MBv3Config) -> list[str]:
    sp = config.space
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


def n_onehot(config: MBv3Config) -> int:
    """Number of leading one-hot columns (the rest are analytic)."""
    sp = config.space
    return sp.n_blocks * (len(sp.ks_list) + len(sp.e_list)) + sp.n_stages * len(sp.d_list) + len(sp.resolutions)


def featurize_vectors(config: MBv3Config, X: np.ndarray, *, onehot: bool = True,
                      analytic: bool = True) -> np.ndarray:
    """float32 features ``(N, F)`` of the ``(N, L)`` integer gene matrix (the search's population)."""
    cfg = config
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
        cost_columns(out[:, n_oh:n_oh + n_an], t.cost_vectors(X), ns)
    return out[:, :-1]


__all__ = ["feature_names", "featurize_vectors", "n_onehot"]
