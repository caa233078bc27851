"""Latency predictors: gradient-boosted trees (default), a MACs baseline, trees over a LUT, few-shot transfer.

All take the gene matrix (or arch dicts) and predict milliseconds; see ``hwnas.predictors.base``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from hwnas.errors import PredictorError
from hwnas.predictors.base import DEFAULT_SUPERNET, Predictor, inv_target, log_target, register_predictor
from hwnas.predictors.features import featurize_vectors, n_onehot


def _import_xgb() -> Any:
    try:
        import xgboost
    except ImportError:  # pragma: no cover - a declared dependency
        raise PredictorError("the xgb predictors need xgboost (pip install xgboost)") from None
    return xgboost


def _lstsq(A: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    if w is not None:
        A, y = A * w[:, None], y * w
    return np.linalg.lstsq(A, y, rcond=None)[0]


# ---------------------------------------------------------------------------------- trees
class _Trees:
    """A thin, serializable wrapper around an XGBoost booster (trained with ``xgboost.train``).

    Threads: training uses ``n_jobs`` threads (1 when 0: a few hundred rows gain nothing from more, and
    OpenMP threads on a busy machine slow it down badly); prediction uses ``n_jobs`` threads, or all cores
    for batches of at least ``BIG_BATCH`` rows when 0.
    """

    BIG_BATCH = 20_000

    def __init__(self, params: Mapping[str, Any], n_estimators: int, n_jobs: int = 0):
        self.params = {k: v for k, v in params.items() if k != "nthread"}
        self.n_estimators = n_estimators
        self.n_jobs = int(n_jobs)
        self.booster: Any = None
        self._threads = -1

    def _set_threads(self, n: int) -> None:
        if n != self._threads:
            self.booster.set_param({"nthread": n})
            self._threads = n

    def fit(self, F: np.ndarray, z: np.ndarray) -> "_Trees":
        xgb = _import_xgb()
        threads = self.n_jobs or 1
        dtrain = xgb.DMatrix(F, label=z, nthread=threads)
        self.booster = xgb.train({**self.params, "nthread": threads}, dtrain, num_boost_round=self.n_estimators)
        self._threads = threads
        return self

    def predict(self, F: np.ndarray) -> np.ndarray:
        import os

        self._set_threads(self.n_jobs or ((os.cpu_count() or 1) if len(F) >= self.BIG_BATCH else 1))
        return np.asarray(self.booster.inplace_predict(F), dtype=np.float64)

    def to_json(self) -> str:
        return bytes(self.booster.save_raw(raw_format="json")).decode("utf-8")

    @classmethod
    def from_json(cls, text: str, params: Mapping[str, Any], n_estimators: int, n_jobs: int = 0) -> "_Trees":
        xgb = _import_xgb()
        t = cls(params, n_estimators, n_jobs)
        t.booster = xgb.Booster()
        t.booster.load_model(bytearray(text.encode("utf-8")))
        return t


@register_predictor("xgb")
class XGBPredictor(Predictor):
    """Gradient-boosted trees on the depth-masked one-hot encoding plus analytic cost features.

    ``target_transform='log'`` fits log-latency (errors become relative, which is what ±5%/±10%
    measure).  ``base='macs'`` first fits ``y ~ a + b * MACs`` and lets the trees model the log ratio
    to it, so the model extrapolates like the cost beyond the sizes it saw (``'none'``: trees alone).
    ``features``: 'all', 'onehot' or 'analytic'.  ``n_jobs``: threads (0: one to train, all cores to
    predict batches of 20,000 archs or more).  For accuracy use ``base='none', target_transform='none',
    features='onehot'`` (what ``fit_job`` passes for ``target='accuracy'``).
    """

    targets = ("latency", "accuracy")

    def __init__(self, supernet: Any = DEFAULT_SUPERNET, n_estimators: int = 400, max_depth: int = 4,
                 learning_rate: float = 0.05, subsample: float = 0.8, colsample_bytree: float = 0.8,
                 min_child_weight: float = 1.0, reg_lambda: float = 1.0, reg_alpha: float = 0.0,
                 target_transform: str = "log", base: str = "macs", features: str = "all", n_jobs: int = 0,
                 seed: int = 0):
        self.supernet = supernet
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.reg_alpha = reg_alpha
        self.target_transform = target_transform
        self.base = base
        self.features = features
        self.n_jobs = n_jobs
        self.seed = seed

    # the design matrix and the base model; overridden by the hybrid predictor
    def _design(self, V: np.ndarray) -> np.ndarray:
        if self.features not in ("all", "onehot", "analytic"):
            raise PredictorError(f"features must be 'all', 'onehot' or 'analytic'; got {self.features!r}")
        return featurize_vectors(self.config, V, onehot=self.features != "analytic",
                                 analytic=self.features != "onehot")

    _BASES: tuple[str, ...] = ("macs", "none")

    def _base_regressor(self, V: np.ndarray, F: np.ndarray) -> np.ndarray:
        """What the base model is linear in (MACs in millions), read from the design matrix when it has it."""
        if self.features != "onehot":
            col = n_onehot(self.config) if self.features == "all" else 0  # 'macs_m' leads the analytic block
            return F[:, col].astype(np.float64)
        return self.family.cost_vectors(V)["macs"] / 1e6

    def _base_values(self, s: np.ndarray) -> np.ndarray:
        return np.maximum(self.base_coef_[0] + self.base_coef_[1] * s, self.base_floor_)

    def _xgb_params(self) -> dict[str, Any]:
        p = {
            "objective": "reg:squarederror",
            "max_depth": int(self.max_depth),
            "eta": float(self.learning_rate),
            "subsample": float(self.subsample),
            "colsample_bytree": float(self.colsample_bytree),
            "min_child_weight": float(self.min_child_weight),
            "lambda": float(self.reg_lambda),
            "alpha": float(self.reg_alpha),
            "seed": int(self.seed),
            "tree_method": "hist",
            "verbosity": 0,
        }
        return p

    def _fit(self, V: np.ndarray, y: np.ndarray) -> None:
        z = log_target(y, self.target_transform)
        self.base_coef_ = np.zeros(2)
        self.base_floor_ = 0.0
        if self.base not in self._BASES:
            raise PredictorError(f"base must be one of {', '.join(map(repr, self._BASES))}; got {self.base!r}")
        F = self._design(V)
        if self.base != "none":
            if self.target_transform != "log":
                raise PredictorError(f"base={self.base!r} needs target_transform='log'")
            s = self._base_regressor(V, F)
            coef = _lstsq(np.stack([np.ones_like(s), s], axis=1), y, w=1.0 / y) if len(y) >= 2 else None
            if coef is None or coef[1] <= 0 or np.any(coef[0] + coef[1] * s <= 0):
                coef = np.array([0.0, float(np.median(y / s))])  # pure ratio when the affine fit is unusable
            self.base_coef_ = np.asarray(coef, dtype=np.float64)
            self.base_floor_ = float(0.05 * y.min())
            z = z - np.log(self._base_values(s))
        self.trees_ = _Trees(self._xgb_params(), int(self.n_estimators), self.n_jobs).fit(F, z)

    def _predict(self, V: np.ndarray) -> np.ndarray:
        F = self._design(V)
        z = self.trees_.predict(F)
        if self.base != "none":
            z = z + np.log(self._base_values(self._base_regressor(V, F)))
        return inv_target(z, self.target_transform)

    def _get_state(self) -> dict[str, Any]:
        return {"booster_json": self.trees_.to_json(), "base_coef": self.base_coef_, "base_floor": self.base_floor_}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.trees_ = _Trees.from_json(state["booster_json"], self._xgb_params(), int(self.n_estimators), self.n_jobs)
        self.base_coef_ = np.asarray(state["base_coef"], dtype=np.float64)
        self.base_floor_ = float(state["base_floor"])


@register_predictor("linear")
class LinearPredictor(Predictor):
    """Baseline: ``latency = a + b * MACs`` (least squares)."""

    def __init__(self, supernet: Any = DEFAULT_SUPERNET):
        self.supernet = supernet

    def _macs(self, V: np.ndarray) -> np.ndarray:
        return self.family.cost_vectors(V)["macs"] / 1e6

    def _fit(self, V: np.ndarray, y: np.ndarray) -> None:
        m = self._macs(V)
        if len(y) >= 2 and np.ptp(m) > 0:
            self.coef_ = _lstsq(np.stack([np.ones_like(m), m], axis=1), y)
        else:
            self.coef_ = np.array([float(np.mean(y)), 0.0])

    def _predict(self, V: np.ndarray) -> np.ndarray:
        return self.coef_[0] + self.coef_[1] * self._macs(V)

    def _get_state(self) -> dict[str, Any]:
        return {"coef": self.coef_}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.coef_ = np.asarray(state["coef"], dtype=np.float64)


# ---------------------------------------------------------------------------------- transfer
@register_predictor("transfer")
class TransferPredictor(Predictor):
    """Few-shot transfer to a new device: a fitted predictor of another device (``prior``, any kind,
    a LUT included) corrected with 10-20 measurements of the new one (HELP's setting, with a
    deliberately small model so that 10 points suffice).

    ``mode``:

    * 'ratio': ``y = c * prior``;
    * 'loglinear': ``log y = a + b log prior``, ``b`` shrunk towards 1;
    * 'loglinear_macs' (default): ``log y = a + b log prior + c log MACs``, ``b`` shrunk towards 1 and
      ``c`` towards 0, so a device whose balance of compute and fixed overhead differs from the prior's
      (a GPU, another runtime) is corrected along the compute axis;
    * 'affine': ``y = a + b * prior`` (a different fixed overhead).

    Shrinkage has the weight of ``shrinkage`` pseudo-samples.  With ``residual_trees`` and at least
    ``min_residual_samples`` measurements, strongly regularized trees also fit the log residual.
    """

    object_params = ("prior",)
    MODES = ("loglinear_macs", "loglinear", "ratio", "affine")

    def __init__(self, supernet: Any = DEFAULT_SUPERNET, prior: Any = None, mode: str = "loglinear_macs",
                 shrinkage: float = 5.0, residual_trees: bool = True, min_residual_samples: int = 60):
        self.supernet = supernet
        self.prior = prior
        self.mode = mode
        self.shrinkage = shrinkage
        self.residual_trees = residual_trees
        self.min_residual_samples = min_residual_samples

    def _prior(self) -> Predictor:
        p = self.prior
        if isinstance(p, (str, os.PathLike)):
            from hwnas.predictors.artifacts import load_predictor

            p = self.prior = load_predictor(p, expect_supernet=self.supernet_name)
        if not isinstance(p, Predictor) or not p.is_fitted():
            raise PredictorError("transfer needs prior= a fitted latency predictor of another device (or its path)")
        if p.supernet_name != self.supernet_name:
            raise PredictorError(f"the prior predicts supernet {p.supernet_name}, not {self.supernet_name}")
        return p

    def _log_macs(self, V: np.ndarray) -> np.ndarray:
        return np.log(self.family.cost_vectors(V)["macs"])

    def _fit(self, V: np.ndarray, y: np.ndarray) -> None:
        if np.any(y <= 0):
            raise PredictorError("transfer needs positive latencies")
        if self.mode not in self.MODES:
            raise PredictorError(f"mode must be one of {', '.join(map(repr, self.MODES))}; got {self.mode!r}")
        p = np.maximum(self._prior().predict(V), 1e-9)
        u, z = np.log(p), np.log(y)
        coef = np.zeros(3)  # log modes: a, b (prior), c (MACs); affine: a, b
        if self.mode == "ratio" or len(y) < 2:
            coef[:2] = [float(np.mean(z - u)), 1.0]
        elif self.mode in ("loglinear", "loglinear_macs"):
            cols = [u] if self.mode == "loglinear" else [u, self._log_macs(V)]
            A = np.stack(cols, axis=1)
            Ac, zc = A - A.mean(axis=0), z - z.mean()
            # ridge towards (b, c) = (1, 0), each penalty worth `shrinkage` samples of that column's variance
            L = np.diag([float(self.shrinkage) * max(float(np.var(col)), 1e-12) for col in cols])
            prior_coef = np.array([1.0, 0.0][: len(cols)])
            bc = np.linalg.solve(Ac.T @ Ac + L, Ac.T @ zc + L @ prior_coef)
            coef[0] = float(z.mean() - A.mean(axis=0) @ bc)
            coef[1:1 + len(bc)] = bc
        else:  # affine
            ab = _lstsq(np.stack([np.ones_like(p), p], axis=1), y, w=1.0 / y)
            if ab[1] <= 0 or np.any(ab[0] + ab[1] * p <= 0):
                ab = np.array([0.0, float(np.median(y / p))])
            coef[:2] = ab
        self.coef_ = coef
        self.residual_ = None
        if self.residual_trees and len(y) >= self.min_residual_samples:
            resid = z - np.log(self._corrected(p, V))
            self.residual_ = _Trees(_strong_reg_params(), 150).fit(featurize_vectors(self.config, V), resid)

    def _corrected(self, p: np.ndarray, V: np.ndarray) -> np.ndarray:
        a, b, c = self.coef_
        if self.mode == "affine":
            return np.maximum(a + b * p, 1e-9)
        z = a + b * np.log(np.maximum(p, 1e-9))
        if c != 0.0:
            z = z + c * self._log_macs(V)
        return np.exp(z)

    def _predict(self, V: np.ndarray) -> np.ndarray:
        out = self._corrected(self._prior().predict(V), V)
        if self.residual_ is not None:
            out = out * np.exp(self.residual_.predict(featurize_vectors(self.config, V)))
        return out

    def _get_state(self) -> dict[str, Any]:
        from hwnas.predictors.artifacts import META_KEYS, predictor_to_dict

        prior = self._prior()
        meta = {k: v for k, v in (getattr(prior, "meta_", None) or {}).items() if k in META_KEYS and v is not None}
        return {
            "coef": self.coef_,
            "residual_json": self.residual_.to_json() if self.residual_ is not None else None,
            "prior": predictor_to_dict(prior, meta),
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        from hwnas.predictors.artifacts import predictor_from_dict

        self.coef_ = np.asarray(state["coef"], dtype=np.float64)
        self.residual_ = (_Trees.from_json(state["residual_json"], _strong_reg_params(), 150)
                          if state.get("residual_json") else None)
        self.prior = predictor_from_dict(state["prior"])


def _strong_reg_params() -> dict[str, Any]:
    return {"objective": "reg:squarederror", "max_depth": 2, "eta": 0.05, "subsample": 0.8,
            "colsample_bytree": 0.5, "min_child_weight": 5.0, "lambda": 10.0, "seed": 0, "tree_method": "hist",
            "verbosity": 0}


__all__ = ["LinearPredictor", "TransferPredictor", "XGBPredictor"]
