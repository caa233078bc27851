"""The lookup-table capability of MobileNetV3 families (Once-for-All's latency-table idea).

Every distinct block configuration -- (in_ch, out_ch, kernel, mid channels, stride, activation, SE,
input size, residual) -- plus the stem (first conv + first block) and the head (final expand, pool,
feature mix, classifier) at each resolution is one entry; an arch's network is the sum of its stem,
the blocks that run and its head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from hwnas.errors import ArchError
from hwnas.supernet.families.mbv3.cost import conv_out, cost_table, mid_channels
from hwnas.supernet.families.mbv3.model import MBv3Config


# ---------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class LutIndex:
    """The distinct entries of a family and where each arch slot looks them up."""

    keys: list[str]
    entries: list[dict]
    slot_idx: np.ndarray  # (slots, nk, ne, nr) -> entry index
    stem_idx: np.ndarray  # (nr,)
    head_idx: np.ndarray  # (nr,)
    key_pos: dict[str, int] = field(default_factory=dict)


def _block_entry(in_ch: int, out_ch: int, ks: int, mid: int, stride: int, act: str, se: bool, size: int) -> dict:
    res = stride == 1 and in_ch == out_ch
    key = f"mb-i{in_ch}-o{out_ch}-k{ks}-m{mid}-s{stride}-{act}-{'se' if se else 'nose'}-h{size}-{'res' if res else 'nores'}"
    return {"key": key, "kind": "block", "in_ch": in_ch, "out_ch": out_ch, "ks": ks, "mid": mid, "stride": stride,
            "act": act, "se": se, "size": size, "residual": res}


@lru_cache(maxsize=16)
def lut_index(config: MBv3Config) -> LutIndex:
    """Every distinct entry of the family and where each slot looks it up."""
    c, sp = config, config.space
    t = cost_table(config)
    keys: list[str] = []
    entries: list[dict] = []
    pos: dict[str, int] = {}

    def add(entry: dict) -> int:
        k = entry["key"]
        if k not in pos:
            pos[k] = len(keys)
            keys.append(k)
            entries.append(entry)
        return pos[k]

    nk, ne, nr = len(sp.ks_list), len(sp.e_list), len(sp.resolutions)
    slot_idx = np.zeros((sp.n_blocks, nk, ne, nr), dtype=np.int64)
    stem_idx = np.zeros(nr, dtype=np.int64)
    head_idx = np.zeros(nr, dtype=np.int64)
    for ri, r in enumerate(sp.resolutions):
        stem_idx[ri] = add({"key": f"stem-c{c.in_channels}-w{c.first_conv_width}-s{c.first_conv_stride}-"
                                   f"b{c.first_block_width}-h{r}", "kind": "stem", "size": r})
        for slot, info in enumerate(t.slots):
            size = int(t.stage_in[info.stage, ri])
            if info.index > 0:
                size = conv_out(size, 3, c.stage_strides[info.stage])
            for ki, ks in enumerate(sp.ks_list):
                for ei, e in enumerate(sp.e_list):
                    mid = mid_channels(info.in_ch, e)
                    slot_idx[slot, ki, ei, ri] = add(
                        _block_entry(info.in_ch, info.out_ch, ks, mid, info.stride, info.act, info.se, size))
        fs = int(t.final_size[ri])
        head_idx[ri] = add({"key": f"head-i{c.stage_widths[-1]}-f{c.final_expand_width}-m{c.feature_mix_width}-"
                                   f"n{c.n_classes}-h{fs}", "kind": "head", "size": fs})
    return LutIndex(keys, entries, slot_idx, stem_idx, head_idx, pos)


def entry_module(config: MBv3Config, entry: Mapping[str, Any]) -> tuple[Any, tuple[int, int, int]]:
    """A static ``nn.Module`` for one LUT entry and its input shape (C, H, W)."""
    import torch
    from torch import nn

    from hwnas.supernet.families.mbv3.layers import ConvLayer, LinearLayer, MBConvLayer, ResidualBlock

    c = config
    kind, size = entry["kind"], int(entry["size"])
    if kind == "block":
        layer = MBConvLayer(entry["in_ch"], entry["out_ch"], entry["ks"], entry["stride"], entry["mid"],
                            entry["act"], entry["se"])
        return ResidualBlock(layer, entry["residual"]).eval(), (entry["in_ch"], size, size)
    if kind == "stem":
        first = MBConvLayer(c.first_conv_width, c.first_block_width, 3, 1, None, "relu", False)
        m = nn.Sequential(ConvLayer(c.in_channels, c.first_conv_width, 3, c.first_conv_stride, "h_swish"),
                          ResidualBlock(first, c.first_conv_width == c.first_block_width))
        return m.eval(), (c.in_channels, size, size)
    if kind == "head":
        class Head(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.final_expand_layer = ConvLayer(c.stage_widths[-1], c.final_expand_width, 1, 1, "h_swish")
                self.feature_mix_layer = ConvLayer(c.final_expand_width, c.feature_mix_width, 1, 1, "h_swish",
                                                   use_bn=False, bias=False)
                self.classifier = LinearLayer(c.feature_mix_width, c.n_classes, 0.0)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = self.final_expand_layer(x)
                x = x.mean((2, 3), keepdim=True)
                x = self.feature_mix_layer(x)
                return self.classifier(torch.flatten(x, 1))

        return Head().eval(), (c.stage_widths[-1], size, size)
    raise ArchError(f"unknown LUT entry kind {kind!r}")


def lut_usage(config: MBv3Config, V: np.ndarray) -> np.ndarray:
    """``(N, 2 + slots)`` entry indices of each arch: stem, head, then each slot (``-1`` where it does not run)."""
    idx = lut_index(config)
    t = cost_table(config)
    ks, e, _, r, mask = t.split_vectors(V)
    slots = idx.slot_idx[np.arange(t.n_slots)[None, :], ks, e, r[:, None]]
    slots = np.where(mask, slots, -1)
    return np.concatenate([idx.stem_idx[r][:, None], idx.head_idx[r][:, None], slots], axis=1)


__all__ = ["LutIndex", "entry_module", "lut_index", "lut_usage"]
