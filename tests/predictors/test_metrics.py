"""Metrics on hand-computed examples, and the evaluation helpers' splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hwnas.errors import PredictorError
from hwnas.predictors.metrics import (
    evaluate_kfold,
    holdout_split,
    kendall_tau,
    kfold_indices,
    learning_curve,
    mape,
    regression_metrics,
    rmse,
    within,
)

Y = [1.0, 2.0, 3.0, 4.0]
P = [1.1, 1.8, 3.3, 4.0]


def test_hand_computed():
    assert rmse(Y, P) == pytest.approx(math.sqrt((0.01 + 0.04 + 0.09 + 0.0) / 4))
    assert mape(Y, P) == pytest.approx(7.5)  # 10% + 10% + 10% + 0% over 4
    assert within(Y, P, 5) == 0.25
    assert within(Y, P, 10) == 1.0  # exactly 10% counts as within
    assert kendall_tau(Y, P) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [5, 5, 5]) == 0.0
    m = regression_metrics(Y, P)
    assert m["n"] == 4 and m["within_10"] == 1.0 and "mape" in m
    assert "mape" not in regression_metrics(Y, P, relative=False)
    with pytest.raises(ValueError):
        rmse([1, 2], [1])


def test_splits():
    tr, te = holdout_split(10, 0.3, seed=1)
    assert len(te) == 3 and len(tr) == 7 and not set(tr) & set(te)
    assert np.array_equal(holdout_split(10, 0.3, seed=1)[1], te)
    assert len(holdout_split(10, 4)[1]) == 4
    with pytest.raises(PredictorError):
        holdout_split(10, 0.0)
    folds = kfold_indices(11, 3)
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(11))


class _Mean:
    def fit(self, X, y):
        self.m = float(np.mean(y))
        return self

    def predict(self, X):
        return np.full(len(X), self.m)


class _Exact:
    def fit(self, X, y):
        return self

    def predict(self, X):
        return np.asarray(X)[:, 0] * 2.0


def test_kfold_and_learning_curve():
    X = np.arange(1, 61, dtype=float)[:, None]
    y = X[:, 0] * 2.0
    assert evaluate_kfold(_Exact, X, y, k=5)["mape"] == 0.0
    assert evaluate_kfold(_Mean, X, y, k=5)["kendall_tau"] < 0.5
    te = np.arange(50, 60)
    rows = learning_curve(_Exact, X, y, te, sizes=(10, 25, 100))
    assert [r["n_train"] for r in rows] == [10, 25]  # 100 > 50 available rows: skipped
    assert all(r["n_test"] == 10 and r["within_5"] == 1.0 for r in rows)
