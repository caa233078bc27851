"""Predictor metrics and honest evaluation helpers (held-out split, k-fold, learning curve).

Every figure is computed on archs the predictor did not see while fitting.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from hwnas.errors import PredictorError

LEARNING_CURVE_SIZES = (25, 50, 100, 200, 400)


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({len(t)} vs {len(p)})")
    if len(t) == 0:
        raise ValueError("metrics need at least one sample")
    return t, p


def rmse(y_true: Any, y_pred: Any) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mape(y_true: Any, y_pred: Any) -> float:
    """Mean absolute percentage error, in percent (``y_true`` must be non-zero)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(p - t) / np.abs(t)) * 100.0)


def within(y_true: Any, y_pred: Any, pct: float) -> float:
    """Share (0..1) of predictions within ``pct`` percent of the truth (inclusive)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(p - t) <= pct / 100.0 * np.abs(t) + 1e-12))


def kendall_tau(y_true: Any, y_pred: Any) -> float:
    """Kendall's tau-b (ties handled); 0.0 when undefined (fewer than 2 samples or a constant side)."""
    from scipy.stats import kendalltau

    t, p = _pair(y_true, y_pred)
    if len(t) < 2 or np.all(t == t[0]) or np.all(p == p[0]):
        return 0.0
    tau = kendalltau(t, p).statistic
    return float(tau) if np.isfinite(tau) else 0.0


def regression_metrics(y_true: Any, y_pred: Any, relative: bool = True) -> dict[str, float]:
    """RMSE and Kendall tau always; MAPE and the shares within 5% / 10% when ``relative``."""
    t, p = _pair(y_true, y_pred)
    out = {"n": int(len(t)), "rmse": rmse(t, p), "kendall_tau": kendall_tau(t, p)}
    if relative:
        out.update(mape=mape(t, p), within_5=within(t, p, 5), within_10=within(t, p, 10))
    return out


# ---------------------------------------------------------------------------------- splits
def holdout_split(n: int, holdout: float | int = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx): a seeded random split; ``holdout`` is a fraction or a count."""
    if n < 2:
        raise PredictorError(f"need at least 2 samples to hold some out; got {n}")
    k = int(round(holdout * n)) if isinstance(holdout, float) and holdout < 1 else int(holdout)
    if not 1 <= k < n:
        raise PredictorError(f"holdout {holdout} leaves no train or no test samples out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def kfold_indices(n: int, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    if not 2 <= k <= n:
        raise PredictorError(f"k-fold needs 2 <= k <= n; got k={k}, n={n}")
    perm = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(perm, k)
    return [(np.sort(np.concatenate(folds[:i] + folds[i + 1:])), np.sort(folds[i])) for i in range(k)]


# ---------------------------------------------------------------------------------- evaluation
Factory = Callable[[], Any]  # () -> an unfitted predictor


def evaluate_holdout(make: Factory, X: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
                     test_idx: np.ndarray, relative: bool = True) -> dict[str, float]:
    """Fit a fresh predictor on ``train_idx``, score it on ``test_idx``."""
    X, y = np.asarray(X), np.asarray(y, dtype=np.float64)
    pred = make().fit(X[train_idx], y[train_idx])
    m = regression_metrics(y[test_idx], pred.predict(X[test_idx]), relative=relative)
    m["n_train"] = int(len(train_idx))
    return m


def evaluate_kfold(make: Factory, X: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0,
                   relative: bool = True) -> dict[str, Any]:
    """k-fold cross-validation: the metrics of the pooled out-of-fold predictions, plus per-fold figures."""
    X, y = np.asarray(X), np.asarray(y, dtype=np.float64)
    oof = np.empty(len(y))
    folds = []
    for tr, te in kfold_indices(len(y), k, seed):
        pred = make().fit(X[tr], y[tr])
        oof[te] = pred.predict(X[te])
        folds.append(regression_metrics(y[te], oof[te], relative=relative))
    out: dict[str, Any] = regression_metrics(y, oof, relative=relative)
    out["k"] = k
    out["folds"] = folds
    return out


def learning_curve(make: Factory, X: np.ndarray, y: np.ndarray, test_idx: np.ndarray,
                   sizes: Sequence[int] = LEARNING_CURVE_SIZES, seed: int = 0, relative: bool = True,
                   repeats: int = 1) -> list[dict[str, Any]]:
    """Held-out metrics vs training size, with one fixed held-out set ``test_idx``.

    Training sets are nested prefixes of one seeded permutation of the remaining rows (so a larger
    size only adds data); sizes beyond the available rows are skipped.  With ``repeats > 1`` the
    figures are the mean over that many permutations.
    """
    X, y = np.asarray(X), np.asarray(y, dtype=np.float64)
    test_idx = np.asarray(test_idx)
    pool = np.setdiff1d(np.arange(len(y)), test_idx)
    rows = []
    perms = [np.random.default_rng(seed + i).permutation(pool) for i in range(repeats)]
    for size in sizes:
        if size > len(pool):
            continue
        ms = [evaluate_holdout(make, X, y, p[:size], test_idx, relative=relative) for p in perms]
        row = {k: float(np.mean([m[k] for m in ms])) for k in ms[0] if k not in ("n", "n_train")}
        row.update(n_train=int(size), n_test=int(len(test_idx)))
        rows.append(row)
    return rows


__all__ = [
    "LEARNING_CURVE_SIZES",
    "evaluate_holdout",
    "evaluate_kfold",
    "holdout_split",
    "kendall_tau",
    "kfold_indices",
    "learning_curve",
    "mape",
    "regression_metrics",
    "rmse",
    "within",
]
