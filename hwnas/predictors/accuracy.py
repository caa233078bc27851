"""Accuracy predictor: a small ensemble of MLPs on the depth-masked one-hot encoding.

Trained with scikit-learn's ``MLPRegressor`` (L-BFGS, which suits a few hundred samples); the
weights are kept as plain arrays and the forward pass is numpy, so the artifact is portable and a
loaded predictor gives exactly the same numbers.  ``xgb`` also predicts accuracy; ``fit_job`` picks
whichever scores better on held-out data when asked for ``kind='auto'``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from hwnas.errors import PredictorError
from hwnas.predictors.base import DEFAULT_SUPERNET, Predictor, register_predictor
from hwnas.predictors.features import featurize_vectors


@register_predictor("mlp")
class MLPPredictor(Predictor):
    """``n_ensemble`` MLPs (ReLU, ``hidden`` units, L2 ``alpha``) on standardized features and target,
    averaged.  ``features``: 'all' (default: the one-hot encoding plus the analytic cost), 'onehot' or
    'analytic'.  Defaults chosen by 5-fold CV on 252 Fashion-MNIST supernet evaluations."""

    targets = ("accuracy", "latency")

    def __init__(self, supernet: Any = DEFAULT_SUPERNET, hidden: tuple[int, ...] | list[int] = (128, 128),
                 alpha: float = 1.0, max_iter: int = 500, n_ensemble: int = 5, features: str = "all",
                 seed: int = 0):
        self.supernet = supernet
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.n_ensemble = n_ensemble
        self.features = features
        self.seed = seed

    def _design(self, V: np.ndarray) -> np.ndarray:
        if self.features not in ("all", "onehot", "analytic"):
            raise PredictorError(f"features must be 'all', 'onehot' or 'analytic'; got {self.features!r}")
        return featurize_vectors(self.config, V, onehot=self.features != "analytic",
                                 analytic=self.features != "onehot").astype(np.float64)

    def _fit(self, V: np.ndarray, y: np.ndarray) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor
        from threadpoolctl import threadpool_limits

        F = self._design(V)
        self.x_mean_ = F.mean(axis=0)
        self.x_scale_ = F.std(axis=0)
        self.x_scale_[self.x_scale_ == 0] = 1.0
        self.y_mean_ = float(y.mean())
        self.y_scale_ = float(y.std()) or 1.0
        Fs = (F - self.x_mean_) / self.x_scale_
        ys = (y - self.y_mean_) / self.y_scale_
        self.weights_: list[list[np.ndarray]] = []
        self.biases_: list[list[np.ndarray]] = []
        for i in range(int(self.n_ensemble)):
            m = MLPRegressor(hidden_layer_sizes=tuple(int(h) for h in self.hidden), alpha=float(self.alpha),
                             solver="lbfgs", max_iter=int(self.max_iter), random_state=int(self.seed) + i)
            # one BLAS thread: these matrices are small, and spinning BLAS threads on a busy machine
            # make the fit many times slower
            with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
                warnings.simplefilter("ignore", ConvergenceWarning)
                m.fit(Fs, ys)
            self.weights_.append([np.asarray(w, dtype=np.float64) for w in m.coefs_])
            self.biases_.append([np.asarray(b, dtype=np.float64) for b in m.intercepts_])

    def _predict(self, V: np.ndarray) -> np.ndarray:
        Fs = (self._design(V) - self.x_mean_) / self.x_scale_
        out = np.zeros(len(Fs))
        for ws, bs in zip(self.weights_, self.biases_):
            h = Fs
            for j, (w, b) in enumerate(zip(ws, bs)):
                h = h @ w + b
                if j < len(ws) - 1:
                    h = np.maximum(h, 0.0)
            out += h[:, 0]
        return out / len(self.weights_) * self.y_scale_ + self.y_mean_

    def _get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"x_mean": self.x_mean_, "x_scale": self.x_scale_, "y_mean": self.y_mean_,
                                 "y_scale": self.y_scale_, "n_members": len(self.weights_),
                                 "n_layers": len(self.weights_[0])}
        for i, (ws, bs) in enumerate(zip(self.weights_, self.biases_)):
            for j, (w, b) in enumerate(zip(ws, bs)):
                state[f"w{i}_{j}"] = w
                state[f"b{i}_{j}"] = b
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.x_mean_ = np.asarray(state["x_mean"], dtype=np.float64)
        self.x_scale_ = np.asarray(state["x_scale"], dtype=np.float64)
        self.y_mean_ = float(state["y_mean"])
        self.y_scale_ = float(state["y_scale"])
        n, L = int(state["n_members"]), int(state["n_layers"])
        self.weights_ = [[np.asarray(state[f"w{i}_{j}"], dtype=np.float64) for j in range(L)] for i in range(n)]
        self.biases_ = [[np.asarray(state[f"b{i}_{j}"], dtype=np.float64) for j in range(L)] for i in range(n)]


__all__ = ["MLPPredictor"]
