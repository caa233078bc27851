"""Analytic cost of a subnet from its family's ``MBv3Config``: MACs, parameters, activation memory.

Every elastic block slot's cost depends only on (slot, kernel size, expand ratio, resolution): the
slot fixes the input/output widths, the stride, the activation and SE, and the resolution fixes the
feature-map sizes (each stage's first block always runs, so the strides always apply).  So a
``CostTable`` precomputes a ``(slots, n_ks, n_e, n_r)`` array per quantity once per family, and the
cost of any number of archs is a masked gather and sum over their integer gene vectors
(``ArchSpace.encode``), which is how the predictors featurize 100,000 archs in well under a second.

Counting rules (what a hook on every ``nn.Conv2d``/``nn.Linear`` of the extracted module counts):

* MACs of a conv: ``out_h * out_w * out_ch * in_ch / groups * k * k``; of a linear: ``in * out``.
  BN, activations, the SE multiply, residual adds and the global pool are not counted.
* params: ``sum(p.numel() for p in module.parameters())`` (conv/linear weights and biases, BN affine).
* activation memory: for each conv/linear, its input plus its output feature map (elements); the peak
  is the largest of these over the network (batch 1).  ``peak_act_bytes`` is that times 4 (fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hwnas.supernet.families.mbv3.layers import SEModule, make_divisible
from hwnas.supernet.families.mbv3.model import MBv3Config

BYTES_PER_ELEMENT = 4  # fp32


def conv_out(size: int, k: int, stride: int) -> int:
    """Spatial output size of a conv with padding ``k // 2`` (what every conv of the family uses)."""
    return (size + 2 * (k // 2) - k) // stride + 1


def _conv(cin: int, cout: int, k: int, stride: int, h: int, groups: int = 1, bias: bool = False,
          bn: bool = True) -> tuple[int, int, int, int]:
    """(macs, params, act_elements, out_size) of one conv at input size ``h``."""
    ho = conv_out(h, k, stride)
    macs = ho * ho * cout * (cin // groups) * k * k
    params = cout * (cin // groups) * k * k + (cout if bias else 0) + (2 * cout if bn else 0)
    act = cin * h * h + cout * ho * ho
    return macs, params, act, ho


def mbconv_cost(cin: int, cout: int, ks: int, stride: int, mid: int | None, use_se: bool,
                h: int) -> tuple[int, int, int, int]:
    """(macs, params, peak_act_elements, out_size) of one ``MBConvLayer`` at input size ``h``."""
    macs = params = peak = 0
    if mid is None:
        mid = cin
    else:
        m, p, a, _ = _conv(cin, mid, 1, 1, h)
        macs, params, peak = macs + m, params + p, max(peak, a)
    m, p, a, ho = _conv(mid, mid, ks, stride, h, groups=mid)
    macs, params, peak = macs + m, params + p, max(peak, a)
    if use_se:
        se_mid = make_divisible(mid // SEModule.REDUCTION, 8)
        for ci, co in ((mid, se_mid), (se_mid, mid)):
            m, p, a, _ = _conv(ci, co, 1, 1, 1, bias=True, bn=False)
            macs, params, peak = macs + m, params + p, max(peak, a)
    m, p, a, _ = _conv(mid, cout, 1, 1, ho)
    return macs + m, params + p, max(peak, a), ho


def mid_channels(in_ch: int, expand_ratio: int) -> int:
    return make_divisible(round(in_ch * expand_ratio), 8)


@dataclass(frozen=True)
class SlotInfo:
    """The static facts of one elastic block slot."""

    stage: int
    index: int  # position in the stage
    in_ch: int
    out_ch: int
    stride: int
    act: str
    se: bool

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


class CostTable:
    """Per-slot cost arrays of one family; build with ``cost_table(config)`` (cached)."""

    QUANTITIES = ("macs", "params", "act")

    def __init__(self, config: MBv3Config):
        self.config = c = config
        self.space = sp = config.space
        self.n_slots = sp.n_blocks
        self.slots: list[SlotInfo] = []
        feature = c.first_block_width
        for s, (w, st, act, se) in enumerate(zip(c.stage_widths, c.stage_strides, c.stage_acts, c.stage_se)):
            for j in range(sp.max_depth):
                self.slots.append(SlotInfo(s, j, feature if j == 0 else w, w, st if j == 0 else 1, act, se))
            feature = w
        nr, nk, ne = len(sp.resolutions), len(sp.ks_list), len(sp.e_list)
        # input size of each stage per resolution
        self.stem_out = np.zeros(nr, dtype=np.int64)
        self.stage_in = np.zeros((sp.n_stages, nr), dtype=np.int64)
        self.final_size = np.zeros(nr, dtype=np.int64)
        shape = (self.n_slots, nk, ne, nr)
        self.slot = {q: np.zeros(shape, dtype=np.int64) for q in self.QUANTITIES}
        self.stem = {q: np.zeros(nr, dtype=np.int64) for q in self.QUANTITIES}
        self.head = {q: np.zeros(nr, dtype=np.int64) for q in self.QUANTITIES}
        for ri, r in enumerate(sp.resolutions):
            m1, p1, a1, h = _conv(c.in_channels, c.first_conv_width, 3, c.first_conv_stride, r)
            m2, p2, a2, h = mbconv_cost(c.first_conv_width, c.first_block_width, 3, 1, None, False, h)
            self.stem["macs"][ri], self.stem["params"][ri], self.stem["act"][ri] = m1 + m2, p1 + p2, max(a1, a2)
            self.stem_out[ri] = h
            for s in range(sp.n_stages):
                self.stage_in[s, ri] = h
                for j in range(sp.max_depth):
                    info = self.slots[s * sp.max_depth + j]
                    hin = h if j == 0 else conv_out(h, 3, c.stage_strides[s])
                    for ki, ks in enumerate(sp.ks_list):
                        for ei, e in enumerate(sp.e_list):
                            m, p, a, _ = mbconv_cost(info.in_ch, info.out_ch, ks, info.stride,
                                                     mid_channels(info.in_ch, e), info.se, hin)
                            idx = (s * sp.max_depth + j, ki, ei, ri)
                            self.slot["macs"][idx], self.slot["params"][idx], self.slot["act"][idx] = m, p, a
                h = conv_out(h, 3, c.stage_strides[s])
            self.final_size[ri] = h
            last = c.stage_widths[-1]
            m1, p1, a1, _ = _conv(last, c.final_expand_width, 1, 1, h)
            m2, p2, a2, _ = _conv(c.final_expand_width, c.feature_mix_width, 1, 1, 1, bn=False)
            m3 = c.feature_mix_width * c.n_classes
            p3 = m3 + c.n_classes
            a3 = c.feature_mix_width + c.n_classes
            self.head["macs"][ri], self.head["params"][ri] = m1 + m2 + m3, p1 + p2 + p3
            self.head["act"][ri] = max(a1, a2, a3)
        # float64 copies for the vectorized path (sums of integers are exact below 2**53)
        self._flat = {q: self.flat(self.slot[q]).astype(np.float64) for q in self.QUANTITIES}
        self._stem_f = {q: v.astype(np.float64) for q, v in self.stem.items()}
        self._head_f = {q: v.astype(np.float64) for q, v in self.head.items()}
        self._res_f = np.asarray(sp.resolutions, dtype=np.float64)
        self._slot_pos = np.tile(np.arange(sp.max_depth), sp.n_stages)
        self._slot_stage = np.repeat(np.arange(sp.n_stages), sp.max_depth)

    # ------------------------------------------------------------------ vectorized cost
    def split_vectors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ks_idx, e_idx, d_idx, r_idx, mask) from the ``(N, L)`` gene matrix (clipped to the space)."""
        sp = self.space
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != sp.vector_length:
            raise ValueError(f"gene matrix must have shape (N, {sp.vector_length}); got {X.shape}")
        upper = sp.vector_upper
        if X.size and (X.min() < 0 or (X > upper).any()):  # repair as ArchSpace.decode does
            X = np.clip(X, 0, upper)
        X = X.astype(np.intp, copy=False)
        nb, ns = sp.n_blocks, sp.n_stages
        ks, e, d, r = X[:, :nb], X[:, nb:2 * nb], X[:, 2 * nb:2 * nb + ns], X[:, -1]
        # slot j of a stage runs iff j < depth: compare each slot's position with its stage's depth
        depth = np.asarray(sp.d_list, dtype=np.intp)[d]  # (N, ns)
        mask = self._slot_pos[None, :] < depth[:, self._slot_stage]
        return ks, e, d, r, mask

    def flat_index(self, ks: np.ndarray, e: np.ndarray, r: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(N, n_slots)`` indices into a flattened ``(slots, nk, ne, nr)`` table plus one trailing zero
        (where skipped slots point)."""
        sp = self.space
        nk, ne, nr = len(sp.ks_list), len(sp.e_list), len(sp.resolutions)
        base = (np.arange(self.n_slots, dtype=np.intp) * (nk * ne * nr))[None, :]
        idx = base + (ks * ne + e) * nr + r[:, None]
        return np.where(mask, idx, self.n_slots * nk * ne * nr)

    def flat(self, table: np.ndarray) -> np.ndarray:
        return np.append(table.ravel(), 0)

    def gather(self, table: np.ndarray, ks: np.ndarray, e: np.ndarray, r: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
        """Per-slot values ``(N, n_slots)`` of a ``(slots, nk, ne, nr)`` table, zero on skipped slots."""
        return self.flat(table)[self.flat_index(ks, e, r, mask)]

    def cost_vectors(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Cost arrays (float64, integral values) for every row of the gene matrix ``X``."""
        sp = self.space
        ks, e, _, r, mask = self.split_vectors(X)
        idx = self.flat_index(ks, e, r, mask)
        md = sp.max_depth
        out: dict[str, np.ndarray] = {}
        for q in ("macs", "params"):
            per_slot = self._flat[q][idx]  # float64: exact for integers below 2**53
            stages = per_slot[:, 0::md].copy()  # slot = stage * max_depth + j; strided adds beat a BLAS call
            for j in range(1, md):
                stages += per_slot[:, j::md]
            out[f"stage_{q}"] = stages
            out[f"stem_{q}"] = self._stem_f[q][r]
            out[f"head_{q}"] = self._head_f[q][r]
            out[q] = per_slot.sum(axis=1) + out[f"stem_{q}"] + out[f"head_{q}"]
        act = self._flat["act"][idx]
        stage_act = act[:, ::sp.max_depth]
        for j in range(1, sp.max_depth):
            stage_act = np.maximum(stage_act, act[:, j::sp.max_depth])
        out["stage_act"] = stage_act
        out["peak_act"] = np.maximum(np.maximum(self._stem_f["act"][r], self._head_f["act"][r]),
                                     stage_act.max(axis=1))
        out["peak_act_bytes"] = out["peak_act"] * BYTES_PER_ELEMENT
        out["resolution"] = self._res_f[r]
        out["n_blocks"] = mask.sum(axis=1).astype(np.float64)
        return out


@lru_cache(maxsize=16)
def cost_table(config: MBv3Config) -> CostTable:
    return CostTable(config)


__all__ = ["CostTable", "SlotInfo", "conv_out", "cost_table", "mbconv_cost", "mid_channels"]
