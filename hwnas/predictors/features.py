"""Features of an arch for the predictors, vectorized over the integer gene matrix.

The gene matrix is what the search holds: one canonical row per arch (``space.encode`` layout).
Each family computes its own features through the contract (``SupernetFamily.featurize``): a gene
one-hot block (genes without effect all zero, so archs that build the same network get identical
features) followed by an analytic block whose first column is ``macs_m`` (MACs in millions).

Bump ``FEATURE_VERSION`` whenever the layout or meaning of a column changes: saved predictors record
it and refuse to load against another.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from hwnas.errors import ArchError
from hwnas.supernet.family import SearchSpace, SupernetFamily

FEATURE_VERSION = 1


def resolve_config(obj: Any) -> SupernetFamily:
    """The family from a family, a registered family name, a supernet module or a space (by its name)."""
    from hwnas.supernet.registry import get_family, resolve_family

    if isinstance(obj, SearchSpace):
        fam = get_family(obj.name)
        if fam.space != obj:
            raise ArchError(f"space {obj.name!r} differs from the registered family of that name")
        return fam
    return resolve_family(obj)


def encode_archs(space: SearchSpace, archs: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """``(N, L)`` int64 gene matrix of arch dicts (validated; ``ArchError`` names the first bad arch)."""
    return space.encode_many(archs)


def feature_names(family: Any) -> list[str]:
    return resolve_config(family).feature_names()


def n_onehot(family: Any) -> int:
    """Number of leading one-hot columns (the rest are analytic, ``macs_m`` first)."""
    return resolve_config(family).n_onehot


def featurize_vectors(family: Any, X: np.ndarray, *, onehot: bool = True, analytic: bool = True) -> np.ndarray:
    """float32 features ``(N, F)`` of the ``(N, L)`` integer gene matrix (the search's population)."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    return resolve_config(family).featurize(X, onehot=onehot, analytic=analytic)


def featurize(family: Any, archs: Iterable[Mapping[str, Any]] | np.ndarray, **kw: Any) -> np.ndarray:
    """float32 features of arch dicts (or of a gene matrix) of ``family``."""
    fam = resolve_config(family)
    if isinstance(archs, np.ndarray):
        return featurize_vectors(fam, archs, **kw)
    return featurize_vectors(fam, fam.space.canonicalize(fam.space.encode_many(archs)), **kw)


def as_vectors(family: Any, X: Any) -> np.ndarray:
    """The canonical gene matrix of ``X``: a gene matrix, one arch dict, or a list of arch dicts."""
    fam = resolve_config(family)
    sp = fam.space
    if isinstance(X, Mapping):
        X = [X]
    if isinstance(X, np.ndarray):
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != sp.vector_length:
            raise ArchError(f"gene matrix for {fam.name} must have shape (N, {sp.vector_length}); got {X.shape}")
        return X.astype(np.int64, copy=False)
    X = list(X)
    if X and not isinstance(X[0], Mapping):
        return as_vectors(fam, np.asarray(X, dtype=np.int64))
    return sp.canonicalize(sp.encode_many(X))


__all__ = ["FEATURE_VERSION", "as_vectors", "encode_archs", "feature_names", "featurize", "featurize_vectors",
           "n_onehot", "resolve_config"]
