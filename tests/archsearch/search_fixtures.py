"""TEST FIXTURES, not shipped predictors: a ridge latency model fit on real measurements and an
accuracy proxy that rises monotonically with MACs.

They exist so the search tests run against real models of the real space without depending on
``hwnas.predictors`` (written in parallel).  The features are analytic per-layer costs of the
OFA-MobileNetV3 family computed straight from the gene matrix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hwnas.archsearch import canonicalize
from hwnas.supernet.families.mbv3.layers import make_divisible


def _out(h: np.ndarray, stride: int) -> np.ndarray:
    return np.ceil(h / stride)


def cost_features(config: Any, X: np.ndarray) -> np.ndarray:
    """(N, 6) analytic costs of each gene row: [MACs, 1x1 MACs, depthwise MACs, active blocks,
    activation elements, resolution^2].  Vectorized over rows."""
    space = config.space
    X = canonicalize(space, np.atleast_2d(X))
    nb, ns, md = space.n_blocks, space.n_stages, space.max_depth
    ks = np.asarray(space.ks_list)[X[:, :nb]]
    d = np.asarray(space.d_list)[X[:, 2 * nb : 2 * nb + ns]]
    r = np.asarray(space.resolutions, dtype=float)[X[:, -1]]
    n = len(X)
    h = _out(r, config.first_conv_stride)
    c0 = config.first_conv_width
    pw = config.in_channels * c0 * 9 * h * h  # first conv (dense 3x3), counted as pointwise-like
    dw = 9 * c0 * h * h + 0.0  # first block: depthwise 3x3 + project
    pw = pw + c0 * config.first_block_width * h * h
    act = 2 * c0 * h * h
    blocks = np.zeros(n)
    feat = config.first_block_width
    for s, (width, stride, se) in enumerate(zip(config.stage_widths, config.stage_strides, config.stage_se)):
        for j in range(md):
            on = (j < d[:, s]).astype(float)
            b = s * md + j
            st = stride if j == 0 else 1
            mids = np.array([make_divisible(round(feat * ev), 8) for ev in space.e_list], dtype=float)
            mid = mids[X[:, nb + b]]
            ho = _out(h, st)
            expand = feat * mid * h * h
            depth = mid * ks[:, b] ** 2 * ho * ho
            proj = mid * width * ho * ho
            se_mid = np.array([make_divisible(int(m) // 4, 8) for m in mids], dtype=float)[X[:, nb + b]]
            se_cost = 2 * mid * se_mid if se else 0.0
            pw = pw + on * (expand + proj + se_cost)
            dw = dw + on * depth
            act = act + on * (mid * h * h + mid * ho * ho + width * ho * ho)
            blocks = blocks + on
            h = np.where(on > 0, ho, h) if j > 0 else ho  # a stage's first block always runs
            feat = width
    pw = pw + feat * config.final_expand_width * h * h + config.final_expand_width * config.feature_mix_width
    pw = pw + config.feature_mix_width * config.n_classes
    macs = pw + dw
    return np.column_stack([macs, pw, dw, blocks, act, r * r])


def macs_fn(config: Any):
    """An extra objective: MACs of each gene row (minimized)."""
    return lambda X: cost_features(config, X)[:, 0]


class MacsAccuracyProxy:
    """Accuracy proxy (fraction in [0, 1]), strictly increasing in MACs: saturating in log-MACs
    between the smallest and the largest arch of the space.  A test fixture, not a predictor."""

    def __init__(self, config: Any, lo: float = 0.80, hi: float = 0.92):
        self.config = config
        sp = config.space
        ends = cost_features(config, np.stack([sp.encode(sp.min_arch()), sp.encode(sp.max_arch())]))[:, 0]
        self.lmin, self.lmax = math.log(ends[0]), math.log(ends[1])
        self.lo, self.hi = lo, hi

    def __call__(self, X: np.ndarray) -> np.ndarray:
        t = (np.log(cost_features(self.config, X)[:, 0]) - self.lmin) / (self.lmax - self.lmin)
        return self.lo + (self.hi - self.lo) * (1 - np.exp(-3 * np.clip(t, 0, 1.2))) / (1 - math.exp(-3))


class RidgeLatency:
    """Latency model (ms): ridge regression on ``cost_features``, fit on real measurements.
    A test fixture, not a predictor."""

    def __init__(self, config: Any, alpha: float = 1.0):
        self.config, self.alpha = config, alpha

    def fit(self, X: np.ndarray, y: np.ndarray) -> "RidgeLatency":
        self.model_ = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha)).fit(
            cost_features(self.config, X), np.asarray(y, dtype=float)
        )
        self.floor_ = 0.5 * float(np.min(y))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.maximum(self.model_.predict(cost_features(self.config, X)), self.floor_)

    __call__ = predict


def make_refit(config: Any, X0: np.ndarray, y0: np.ndarray, alpha: float = 1.0):
    """``refit_latency(rows)``: refit ``RidgeLatency`` on the initial data plus the search's rows
    (a row replaces an initial sample of the same genes)."""
    space = config.space

    def refit(rows: list[dict]):
        X = canonicalize(space, np.asarray(X0))
        y = np.asarray(y0, dtype=float)
        keys = {tuple(x): i for i, x in enumerate(X)}
        Xl, yl = list(X), list(y)
        for row in rows:
            x = tuple(canonicalize(space, np.asarray(row["x"])[None, :])[0])
            if x in keys:
                yl[keys[x]] = row["latency_ms"]
            else:
                keys[x] = len(Xl)
                Xl.append(np.asarray(x))
                yl.append(row["latency_ms"])
        return RidgeLatency(config, alpha).fit(np.stack(Xl), np.asarray(yl))

    return refit
