"""Once-for-All's ResNet50 supernet family ``ofa_resnet50``: elastic depth, expand ratio and width.

The layout is OFA's ``OFAResNets(depth_list=[0, 1, 2], expand_ratio_list=[0.2, 0.25, 0.35],
width_mult_list=[0.65, 0.8, 1.0])`` (the published ``ofa_resnet50`` supernet): a three-conv input stem
whose middle conv (a residual 3x3) can be skipped, a 3x3/2 max pool, four stages of bottleneck blocks
(``2, 2, 4, 2`` base blocks plus ``d`` more each), ``avgpool_conv`` downsampling, global average pool
and a linear classifier.  Module and parameter names equal OFA's, so its state dicts load key for key
(including the older spelling its ``OFAResNets.load_state_dict`` renames); the code is our own.

**Arch format** (OFA's own dict, what ``sample_active_subnet`` returns and ``set_active_subnet`` takes)::

    {"d": [5 ints], "e": [18 floats], "w": [6 ints], "r": int}

* ``d[0]``: input stem depth -- the stem's middle conv runs only when ``d[0] == max(depth_list)``
  (OFA samples 0 or 2; 1 is accepted and builds the same network as 0); ``d[1..4]``: extra blocks
  per stage beyond the base depth (stage ``s`` runs ``base[s] + d[s+1]`` blocks);
* ``e[i]``: expand ratio of block slot ``i`` (stage by stage, ``base[s] + max(depth_list)`` slots per
  stage); the middle width is ``make_divisible(round(out_width * e), 8)``; slots beyond a stage's
  depth are carried but ignored;
* ``w[j]``: width-multiplier *indices* into ``width_mult_list``: ``w[0]`` the stem's first two convs
  (width ``make_divisible(make_divisible(64 * wm, 8) // 2, 8)``), ``w[1]`` the stem's last conv
  (``make_divisible(64 * wm, 8)``), ``w[2..5]`` the four stages (``make_divisible(base * wm, 8)``);
* ``r``: input resolution, 128..224 in steps of 4: the sizes OFA's ImageNet training samples
  (``MyRandomResizedCrop`` in continuous mode draws multiples of ``IMAGE_SIZE_SEG = 4`` between the
  smallest and largest ``image_size``, 128 and 224), the same range as ``ofa_mbv3_w1.0`` here.
  ``"image_size"`` and ``"r": [int]`` are aliases; a missing ``r`` means the largest.

**Genes** (choice indices, 30 columns): ``d[0..4]``, ``e[0..17]``, ``w[0..5]``, ``r``.  Canonical rows set
every gene without effect to a fixed choice: ``d[0]`` to 0 unless it is the maximum (the stem conv is
skipped either way), ``e`` of slots beyond a stage's depth to 0, and any width or expand choice that
yields the same channel count as a smaller choice to that smaller choice (``w[0]`` of 0.65 and 0.8
both give a 24-channel stem in the published layout).  So two archs that build the same network get
one gene row, one one-hot feature row and one arch id.

Costs (``cost_vectors``) follow the counting rules of ``hwnas.supernet.families.mbv3.cost``: conv MACs
``out_h * out_w * out_ch * in_ch / groups * k * k``, linear ``in * out``; params are every parameter of
the extracted module (conv weights, BN affine, classifier weight and bias); activation memory is the
largest input-plus-output element count of any conv/linear (batch 1).  Pools, BN, ReLU and residual
adds are not counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.errors import ArchError
from hwnas.supernet.distributed import batch_norm
from hwnas.supernet.family import (
    ConfigFamily,
    SearchSpace,
    SupernetModule,
    arch_fields,
    cost_columns,
    gene_features,
    gene_onehot_names,
)
from hwnas.supernet.registry import register_family_kind, register_supernet

Arch = dict  # {"d": list[int], "e": list[float], "w": list[int], "r": int}

BYTES_PER_ELEMENT = 4  # fp32
_ID_MAX_LEN = 40


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` without dropping more than 10% (OFA's channel rule)."""
    min_val = divisor if min_val is None else min_val
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_out(size: int, k: int, stride: int) -> int:
    """Spatial output size of a conv with padding ``k // 2`` (every conv of the family)."""
    return (size + 2 * (k // 2) - k) // stride + 1


def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer())


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v)


# ================================================================================== search space
@dataclass(frozen=True)
class ResNetSpace(SearchSpace):
    """The choices of an OFA-ResNet family (see the module docstring for the arch format and genes)."""

    base_depths: tuple[int, ...] = (2, 2, 4, 2)
    depth_list: tuple[int, ...] = (0, 1, 2)
    expand_list: tuple[float, ...] = (0.2, 0.25, 0.35)
    width_mult_list: tuple[float, ...] = (0.65, 0.8, 1.0)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 4))
    stem_base_width: int = 64
    stage_base_widths: tuple[int, ...] = (256, 512, 1024, 2048)
    channel_divisible: int = 8
    name: str = ""

    # ------------------------------------------------------------------ layout
    @property
    def n_stages(self) -> int:
        return len(self.base_depths)

    @property
    def max_depth(self) -> int:
        return max(self.depth_list)

    @property
    def stage_slots(self) -> tuple[int, ...]:
        """Block slots per stage (base depth plus the largest extra depth)."""
        return tuple(b + self.max_depth for b in self.base_depths)

    @property
    def n_blocks(self) -> int:
        return sum(self.stage_slots)

    @property
    def n_d(self) -> int:
        return self.n_stages + 1

    @property
    def n_w(self) -> int:
        return self.n_stages + 2

    # gene column offsets: d, e, w, r
    @property
    def d_cols(self) -> slice:
        return slice(0, self.n_d)

    @property
    def e_cols(self) -> slice:
        return slice(self.n_d, self.n_d + self.n_blocks)

    @property
    def w_cols(self) -> slice:
        s = self.n_d + self.n_blocks
        return slice(s, s + self.n_w)

    @property
    def r_col(self) -> int:
        return self.n_d + self.n_blocks + self.n_w

    @cached_property
    def slot_stage(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_stages), self.stage_slots)

    @cached_property
    def slot_pos(self) -> np.ndarray:
        return np.concatenate([np.arange(n) for n in self.stage_slots])

    # ------------------------------------------------------------------ channel tables
    @cached_property
    def stem_channels(self) -> tuple[int, ...]:
        """Width of the stem's last conv per width index."""
        return tuple(make_divisible(self.stem_base_width * w, self.channel_divisible) for w in self.width_mult_list)

    @cached_property
    def stem_mid_channels(self) -> tuple[int, ...]:
        """Width of the stem's first two convs per width index."""
        return tuple(make_divisible(c // 2, self.channel_divisible) for c in self.stem_channels)

    @cached_property
    def stage_channels(self) -> tuple[tuple[int, ...], ...]:
        """Output width of each stage per width index."""
        return tuple(tuple(make_divisible(b * w, self.channel_divisible) for w in self.width_mult_list)
                     for b in self.stage_base_widths)

    def mid_channels(self, out_ch: int, expand: float) -> int:
        """A bottleneck's middle width (OFA: ``make_divisible(round(out * e), 8)``)."""
        return make_divisible(round(out_ch * expand), self.channel_divisible)

    @cached_property
    def stage_mid_channels(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """``[stage][width index][expand index]`` middle width."""
        return tuple(tuple(tuple(self.mid_channels(c, e) for e in self.expand_list) for c in chans)
                     for chans in self.stage_channels)

    @cached_property
    def w_gene_channels(self) -> tuple[tuple[int, ...], ...]:
        """The channel count each ``w`` gene's choices give: stem-mid, stem, then each stage."""
        return (self.stem_mid_channels, self.stem_channels, *self.stage_channels)

    @cached_property
    def _w_canon(self) -> np.ndarray:
        """``(n_w, n_widths)``: the smallest width index giving the same channels."""
        return np.array([[list(ch).index(c) for c in ch] for ch in self.w_gene_channels], dtype=np.int64)

    @cached_property
    def _e_canon(self) -> np.ndarray:
        """``(n_stages, n_widths, n_expand)``: the smallest expand index giving the same middle width."""
        return np.array([[[list(m).index(x) for x in m] for m in per_w] for per_w in self.stage_mid_channels],
                        dtype=np.int64)

    # ------------------------------------------------------------------ validation
    def normalize(self, arch: Mapping[str, Any]) -> Arch:
        """A validated copy of ``arch`` (``{"d", "e", "w", "r"}``) or ``ArchError`` naming the bad field."""
        arch = arch_fields(arch, ("d", "e", "w"), max(self.resolutions))
        out: Arch = {}
        widx = list(range(len(self.width_mult_list)))
        for key, n, allowed, what in (
            ("d", self.n_d, list(self.depth_list), "d[0]: input stem depth, d[1:]: extra blocks per stage"),
            ("e", self.n_blocks, list(self.expand_list), "one expand ratio per block slot"),
            ("w", self.n_w, widx, f"indices into width_mult_list {list(self.width_mult_list)}"),
        ):
            val = arch[key]
            if not isinstance(val, (list, tuple)):
                raise ArchError(f"arch field '{key}' must be a list of {n} values ({what}); got {val!r}")
            if len(val) != n:
                raise ArchError(f"arch field '{key}' has {len(val)} entries; this space ({self.name}) needs {n} ({what})")
            vals = []
            for i, v in enumerate(val):
                if key == "e":
                    if not _is_number(v):
                        raise ArchError(f"arch field 'e[{i}]' = {v!r} is not a number; allowed: {allowed}")
                    match = [a for a in allowed if abs(float(v) - a) <= 1e-9 * max(1.0, abs(a))]
                    if not match:
                        raise ArchError(f"arch field 'e[{i}]' = {v!r} is not allowed; allowed: {allowed}")
                    vals.append(match[0])
                    continue
                if not _is_int(v):
                    raise ArchError(f"arch field '{key}[{i}]' = {v!r} is not an int; allowed: {allowed}")
                v = int(v)
                if v not in allowed:
                    suffix = f" ({what})" if key == "w" else ""
                    raise ArchError(f"arch field '{key}[{i}]' = {v} is not allowed; allowed: {allowed}{suffix}")
                vals.append(v)
            out[key] = vals
        r = arch["r"]
        if not _is_int(r):
            raise ArchError(f"arch field 'r' = {r!r} is not an int; allowed: {list(self.resolutions)}")
        if int(r) not in self.resolutions:
            raise ArchError(f"arch field 'r' = {int(r)} is not allowed; allowed: {list(self.resolutions)}")
        out["r"] = int(r)
        return out

    # ------------------------------------------------------------------ integer vector
    @property
    def vector_upper(self) -> np.ndarray:
        nd, ne, nw = len(self.depth_list), len(self.expand_list), len(self.width_mult_list)
        return np.array([nd - 1] * self.n_d + [ne - 1] * self.n_blocks + [nw - 1] * self.n_w
                        + [len(self.resolutions) - 1], dtype=np.int64)

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        a = self.normalize(arch)
        return np.array([self.depth_list.index(v) for v in a["d"]] + [self.expand_list.index(v) for v in a["e"]]
                        + list(a["w"]) + [self.resolutions.index(a["r"])], dtype=np.int64)

    def decode(self, vec: Iterable[int]) -> Arch:
        v = np.asarray(list(vec), dtype=np.int64)
        if v.shape != (self.vector_length,):
            raise ArchError(f"arch vector must have {self.vector_length} genes; got shape {v.shape}")
        v = np.clip(v, 0, self.vector_upper)  # any integer vector maps to a valid arch
        return {
            "d": [self.depth_list[i] for i in v[self.d_cols]],
            "e": [self.expand_list[i] for i in v[self.e_cols]],
            "w": [int(i) for i in v[self.w_cols]],
            "r": self.resolutions[v[self.r_col]],
        }

    def gene_names(self) -> list[str]:
        return ([f"d[{i}]" for i in range(self.n_d)] + [f"e[{i}]" for i in range(self.n_blocks)]
                + [f"w[{i}]" for i in range(self.n_w)] + ["r"])

    def gene_choices(self) -> list[tuple]:
        widx = tuple(range(len(self.width_mult_list)))
        return ([tuple(self.depth_list)] * self.n_d + [tuple(self.expand_list)] * self.n_blocks
                + [widx] * self.n_w + [tuple(self.resolutions)])

    # ------------------------------------------------------------------ canonical genes
    def block_mask(self, Xi: np.ndarray) -> np.ndarray:
        """``(N, n_blocks)``: which block slots run (position below the stage's base + extra depth)."""
        Xi = np.asarray(Xi)
        extra = np.asarray(self.depth_list, dtype=np.int64)[np.clip(Xi[:, 1:self.n_d], 0, len(self.depth_list) - 1)]
        depth = np.asarray(self.base_depths, dtype=np.int64)[None, :] + extra  # (N, n_stages)
        return self.slot_pos[None, :] < depth[:, self.slot_stage]

    def canonicalize_ints(self, Xi: np.ndarray) -> np.ndarray:
        """Genes without effect to a fixed choice (see the module docstring); rows are clipped ints."""
        nd = len(self.depth_list)
        wc = self.w_cols
        Xi[:, wc] = self._w_canon[np.arange(self.n_w)[None, :], Xi[:, wc]]
        Xi[:, 0] = np.where(Xi[:, 0] == nd - 1, nd - 1, 0)  # the stem conv runs only at the largest depth
        mask = self.block_mask(Xi)
        stage_w = Xi[:, wc.start + 2 + self.slot_stage]  # (N, n_blocks): each slot's stage width index
        e = self._e_canon[self.slot_stage[None, :], stage_w, Xi[:, self.e_cols]]
        Xi[:, self.e_cols] = np.where(mask, e, 0)
        return Xi

    def active_genes(self, Xi: np.ndarray) -> np.ndarray:
        Xi = np.asarray(Xi, dtype=np.int64)
        act = np.ones(Xi.shape, dtype=bool)
        act[:, self.e_cols] = self.block_mask(Xi)
        return act

    # ------------------------------------------------------------------ archs
    def sample(self, rng: np.random.Generator | int | None = None) -> Arch:
        """A random arch as OFA's ``sample_active_subnet`` draws one (stem depth min or max)."""
        rng = np.random.default_rng(rng)
        stem = [min(self.depth_list), max(self.depth_list)]
        return {
            "d": [int(stem[rng.integers(2)])] + [int(x) for x in rng.choice(self.depth_list, self.n_stages)],
            "e": [float(self.expand_list[i]) for i in rng.integers(0, len(self.expand_list), self.n_blocks)],
            "w": [int(x) for x in rng.integers(0, len(self.width_mult_list), self.n_w)],
            "r": int(rng.choice(self.resolutions)),
        }

    def min_arch(self) -> Arch:
        return {"d": [min(self.depth_list)] * self.n_d, "e": [min(self.expand_list)] * self.n_blocks,
                "w": [0] * self.n_w, "r": min(self.resolutions)}

    def max_arch(self) -> Arch:
        return {"d": [max(self.depth_list)] * self.n_d, "e": [max(self.expand_list)] * self.n_blocks,
                "w": [len(self.width_mult_list) - 1] * self.n_w, "r": max(self.resolutions)}

    def arch_id(self, arch: Mapping[str, Any]) -> str:
        """``r{r}-d{d}-w{w}-e{expand index of each block that runs}`` of the canonical arch, e.g.
        ``r224-d02101-w012221-e0120120...``; an 8-hex digest where that would not fit 40 characters."""
        a = self.canonical(arch)
        v = self.encode(a)
        mask = self.block_mask(v[None, :])[0]
        tokens = [str(x) for x in (*a["d"], *a["w"])] + [str(x) for x in v[self.e_cols][mask]]
        readable = (f"r{a['r']}-d{''.join(map(str, a['d']))}-w{''.join(map(str, a['w']))}"
                    f"-e{''.join(str(x) for x in v[self.e_cols][mask])}")
        if len(readable) <= _ID_MAX_LEN and all(len(t) == 1 for t in tokens):
            return readable
        return f"r{a['r']}-{hashlib.sha1(json.dumps(a, sort_keys=True).encode()).hexdigest()[:8]}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "n_stages": self.n_stages,
            "base_depths": list(self.base_depths),
            "depth_list": list(self.depth_list),
            "expand_list": list(self.expand_list),
            "width_mult_list": list(self.width_mult_list),
            "resolutions": list(self.resolutions),
            "n_blocks": self.n_blocks,
            "widths": {"stem_mid": list(self.stem_mid_channels), "stem": list(self.stem_channels),
                       "stages": [list(c) for c in self.stage_channels]},
        }


# ================================================================================== the layout
@dataclass(frozen=True)
class ResNetConfig:
    """One OFA-ResNet layout; the defaults are the published ``ofa_resnet50``."""

    name: str = "ofa_resnet50"
    in_channels: int = 3
    n_classes: int = 1000
    depth_list: tuple[int, ...] = (0, 1, 2)
    expand_ratio_list: tuple[float, ...] = (0.2, 0.25, 0.35)
    width_mult_list: tuple[float, ...] = (0.65, 0.8, 1.0)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 4))
    base_depths: tuple[int, ...] = (2, 2, 4, 2)
    stage_base_widths: tuple[int, ...] = (256, 512, 1024, 2048)
    stage_strides: tuple[int, ...] = (1, 2, 2, 2)
    stem_base_width: int = 64
    channel_divisible: int = 8
    dropout: float = 0.0
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    dataset: str = "imagenet"

    @property
    def space(self) -> ResNetSpace:
        return _space_of(self)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@lru_cache(maxsize=32)
def _space_of(cfg: ResNetConfig) -> ResNetSpace:
    if len(cfg.stage_strides) != len(cfg.base_depths) or len(cfg.stage_base_widths) != len(cfg.base_depths):
        raise ValueError("base_depths, stage_base_widths and stage_strides need one entry per stage")
    return ResNetSpace(
        base_depths=tuple(int(x) for x in cfg.base_depths),
        depth_list=tuple(sorted(int(x) for x in cfg.depth_list)),
        expand_list=tuple(sorted(float(x) for x in cfg.expand_ratio_list)),
        width_mult_list=tuple(sorted(float(x) for x in cfg.width_mult_list)),
        resolutions=tuple(sorted(int(x) for x in cfg.resolutions)),
        stem_base_width=int(cfg.stem_base_width),
        stage_base_widths=tuple(int(x) for x in cfg.stage_base_widths),
        channel_divisible=int(cfg.channel_divisible),
        name=cfg.name,
    )


@dataclass(frozen=True)
class _Slot:
    """Static facts of one block slot."""

    stage: int
    pos: int
    stride: int
    in_gene: int  # index (within the w genes) of the gene giving this slot's input width
    in_channels: tuple[int, ...]  # per width index of that gene
    out_channels: tuple[int, ...]  # per width index of the stage gene
    conv_downsample: bool  # False: identity shortcut


def _slots(cfg: ResNetConfig) -> list[_Slot]:
    sp = cfg.space
    out = []
    prev_gene, prev = 1, sp.stem_channels
    for s, n in enumerate(sp.stage_slots):
        for j in range(n):
            stride = cfg.stage_strides[s] if j == 0 else 1
            in_gene, cin = (prev_gene, prev) if j == 0 else (2 + s, sp.stage_channels[s])
            cout = sp.stage_channels[s]
            # OFA's dynamic block: an identity shortcut iff stride 1 and equal width *lists*
            out.append(_Slot(s, j, stride, in_gene, tuple(cin), tuple(cout), not (stride == 1 and cin == cout)))
        prev_gene, prev = 2 + s, sp.stage_channels[s]
    return out


# ================================================================================== elastic layers
class ElasticConv2d(nn.Module):
    """A ``k x k`` conv whose output and input widths are leading slices of the largest (``.conv``)."""

    def __init__(self, max_in: int, max_out: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.conv = nn.Conv2d(max_in, max_out, kernel_size, stride=stride, bias=False)

    def weight_slice(self, out_ch: int, in_ch: int) -> torch.Tensor:
        return self.conv.weight[:out_ch, :in_ch]

    def forward(self, x: torch.Tensor, out_ch: int) -> torch.Tensor:
        w = self.weight_slice(out_ch, x.size(1)).contiguous()
        return F.conv2d(x, w, None, self.stride, self.kernel_size // 2)


class ElasticBatchNorm2d(nn.Module):
    """BatchNorm over the leading channels of the largest (``.bn``)."""

    def __init__(self, max_features: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, bn = x.size(1), self.bn
        if c == bn.num_features:
            return bn(x)
        momentum = 0.0
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked += 1
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                          bn.training or not bn.track_running_stats, momentum, bn.eps)


class ElasticConvLayer(nn.Module):
    """conv -> BN -> ReLU with elastic output width."""

    def __init__(self, max_in: int, max_out: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = ElasticConv2d(max_in, max_out, kernel_size, stride)
        self.bn = ElasticBatchNorm2d(max_out)
        self.act = nn.ReLU(inplace=True)
        self.active_out = max_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x, self.active_out)))


class ElasticStemResidual(nn.Module):
    """The stem's skippable middle conv with its identity shortcut (``.conv``, ``.shortcut``)."""

    def __init__(self, conv: ElasticConvLayer):
        super().__init__()
        self.conv = conv
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv.active_out = x.size(1)
        return self.conv(x) + self.shortcut(x)


def _elastic_seq(max_in: int, max_out: int, k: int, stride: int, act: bool) -> nn.Sequential:
    mods: list[tuple[str, nn.Module]] = [("conv", ElasticConv2d(max_in, max_out, k, stride)),
                                         ("bn", ElasticBatchNorm2d(max_out))]
    if act:
        mods.append(("act", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(mods))


class ElasticBottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 bottleneck with elastic middle and output widths; ``avgpool_conv``
    downsample (average pool of the stride, ceil mode, then a 1x1 conv) unless the shortcut is identity."""

    def __init__(self, slot: _Slot, max_mid: int, kernel_size: int = 3):
        super().__init__()
        cin, cout = max(slot.in_channels), max(slot.out_channels)
        self.stride = slot.stride
        self.conv1 = _elastic_seq(cin, max_mid, 1, 1, True)
        self.conv2 = _elastic_seq(max_mid, max_mid, kernel_size, slot.stride, True)
        self.conv3 = _elastic_seq(max_mid, cout, 1, 1, False)
        if slot.conv_downsample:
            self.downsample: nn.Module = nn.Sequential(OrderedDict([
                ("avg_pool", nn.AvgPool2d(slot.stride, slot.stride, 0, ceil_mode=True)),
                ("conv", ElasticConv2d(cin, cout, 1, 1)),
                ("bn", ElasticBatchNorm2d(cout)),
            ]))
        else:
            self.downsample = nn.Identity()
        self.final_act = nn.ReLU(inplace=True)
        self.active_out = cout
        self.active_mid = max_mid

    @property
    def has_conv_downsample(self) -> bool:
        return not isinstance(self.downsample, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid, out = self.active_mid, self.active_out
        if self.has_conv_downsample:
            ds = self.downsample
            res = ds.bn(ds.conv(ds.avg_pool(x), out))
        else:
            res = x
        c1, c2, c3 = self.conv1, self.conv2, self.conv3
        y = c1.act(c1.bn(c1.conv(x, mid)))
        y = c2.act(c2.bn(c2.conv(y, mid)))
        y = c3.bn(c3.conv(y, out))
        return self.final_act(y + res)


class ElasticLinear(nn.Module):
    def __init__(self, max_in: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(max_in, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.linear.weight[:, : x.size(1)].contiguous(), self.linear.bias)


class ElasticClassifier(nn.Module):
    def __init__(self, max_in: int, n_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.linear = ElasticLinear(max_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear(x)


class GlobalAvgPool(nn.Module):
    """Mean over width then height, as OFA's ``MyGlobalAvgPool2d(keep_dim=False)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(3).mean(2)


# ================================================================================== static layers
class ConvLayer(nn.Module):
    """Static conv -> BN -> ReLU (``.conv``, ``.bn``, ``.act``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


class Bottleneck(nn.Module):
    """Static bottleneck block (names as OFA's ``ResNetBottleneckBlock``)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, conv_downsample: bool, kernel_size: int = 3):
        super().__init__()
        self.conv1 = nn.Sequential(OrderedDict([("conv", nn.Conv2d(cin, mid, 1, 1, 0, bias=False)),
                                                ("bn", nn.BatchNorm2d(mid)), ("act", nn.ReLU(inplace=True))]))
        self.conv2 = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, bias=False)),
            ("bn", nn.BatchNorm2d(mid)), ("act", nn.ReLU(inplace=True))]))
        self.conv3 = nn.Sequential(OrderedDict([("conv", nn.Conv2d(mid, cout, 1, 1, 0, bias=False)),
                                                ("bn", nn.BatchNorm2d(cout))]))
        if conv_downsample:
            mods: list[tuple[str, nn.Module]] = []
            if stride > 1:
                # with no padding, count_include_pad=False computes what OFA's ceil-mode pool computes
                # (PyTorch divides a window clipped at the border by its clipped size either way) and
                # exports to an ONNX AveragePool every runtime reads the same way
                mods.append(("avg_pool", nn.AvgPool2d(stride, stride, 0, ceil_mode=True, count_include_pad=False)))
            mods += [("conv", nn.Conv2d(cin, cout, 1, 1, 0, bias=False)), ("bn", nn.BatchNorm2d(cout))]
            self.downsample: nn.Module = nn.Sequential(OrderedDict(mods))
        else:
            self.downsample = nn.Identity()
        self.final_act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.downsample(x)
        return self.final_act(self.conv3(self.conv2(self.conv1(x))) + res)


class LinearLayer(nn.Module):
    def __init__(self, cin: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ResNetSubnet(nn.Module):
    """A static ResNet (what ``extract`` returns): plain Conv/BN/ReLU/pools/Linear, ONNX-exportable.
    Names follow OFA's static ``ResNets`` (``input_stem``, ``blocks``, ``classifier``)."""

    def __init__(self, input_stem: nn.ModuleList, blocks: nn.ModuleList, classifier: nn.Module,
                 in_channels: int, resolution: int, stage_of_block: list[int]):
        super().__init__()
        self.input_stem = input_stem
        self.max_pooling = nn.MaxPool2d(3, 2, 1)
        self.blocks = blocks
        self.global_avg_pool = GlobalAvgPool()
        self.classifier = classifier
        self.in_channels = in_channels
        self.resolution = resolution
        self.stage_of_block = list(stage_of_block)
        self.arch: dict = {}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.input_stem:
            x = layer(x)
        x = self.max_pooling(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.global_avg_pool(x))


def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d, out_ch: int, in_ch: int) -> None:
    dst.weight.copy_(src.weight[:out_ch, :in_ch])


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d) -> None:
    c = dst.num_features
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.eps, dst.momentum = src.eps, src.momentum
    if src.num_batches_tracked is not None and dst.num_batches_tracked is not None:
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


# ================================================================================== the supernet
class OFAResNets(SupernetModule):
    """Weight-sharing OFA-ResNet supernet; ``state_dict()`` keys and shapes equal OFA's ``OFAResNets``."""

    def __init__(self, config: ResNetConfig, family: ResNet50Family | None = None):
        super().__init__()
        self.family = family if family is not None else ResNet50Family(config)
        self.config = config
        sp = config.space
        self.slots = _slots(config)
        mid, stem = max(sp.stem_mid_channels), max(sp.stem_channels)
        self.input_stem = nn.ModuleList([
            ElasticConvLayer(config.in_channels, mid, 3, 2),
            ElasticStemResidual(ElasticConvLayer(mid, mid, 3, 1)),
            ElasticConvLayer(mid, stem, 3, 1),
        ])
        self.max_pooling = nn.MaxPool2d(3, 2, 1)
        blocks = []
        for slot in self.slots:
            max_mid = sp.mid_channels(max(slot.out_channels), max(sp.expand_list))
            blocks.append(ElasticBottleneck(slot, max_mid))
        self.blocks = nn.ModuleList(blocks)
        self.global_avg_pool = GlobalAvgPool()
        self.classifier = ElasticClassifier(max(sp.stage_channels[-1]), config.n_classes, config.dropout)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = config.bn_momentum, config.bn_eps
        self.set_active(sp.max_arch())

    # ------------------------------------------------------------------ arch selection
    def set_active(self, arch: Mapping[str, Any]) -> Arch:
        sp = self.config.space
        a = sp.normalize(arch)
        w = a["w"]
        self.input_stem[0].active_out = sp.stem_mid_channels[w[0]]
        self.input_stem[2].active_out = sp.stem_channels[w[1]]
        self.stem_skipping = a["d"][0] != sp.max_depth
        for slot, block, e in zip(self.slots, self.blocks, a["e"]):
            out = slot.out_channels[w[2 + slot.stage]]
            block.active_out = out
            block.active_mid = sp.mid_channels(out, e)
        self.active_blocks = [i for i, slot in enumerate(self.slots)
                              if slot.pos < sp.base_depths[slot.stage] + a["d"][1 + slot.stage]]
        self.active_resolution = a["r"]
        self.active_arch = a
        return a

    def set_max(self) -> None:
        self.set_active(self.config.space.max_arch())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_stem[0](x)
        if not self.stem_skipping:
            x = self.input_stem[1](x)
        x = self.input_stem[2](x)
        x = self.max_pooling(x)
        for i in self.active_blocks:
            x = self.blocks[i](x)
        return self.classifier(self.global_avg_pool(x))

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def extract_static(self, arch: Mapping[str, Any]) -> ResNetSubnet:
        """The static network of ``arch``: weights and BN (affine and running statistics) sliced to the
        leading channels, as OFA's ``get_active_subnet(preserve_weight=True)`` slices them."""
        a = self.set_active(arch)
        c = self.config
        ref = self.classifier.linear.linear.weight
        s0, s1, s2 = self.input_stem
        mid = s0.active_out
        stem: list[nn.Module] = []
        conv0 = ConvLayer(c.in_channels, mid, 3, 2)
        _copy_conv(conv0.conv, s0.conv.conv, mid, c.in_channels)
        _copy_bn(conv0.bn, s0.bn.bn)
        stem.append(conv0)
        if not self.stem_skipping:
            conv1 = ConvLayer(mid, mid, 3, 1)
            _copy_conv(conv1.conv, s1.conv.conv.conv, mid, mid)
            _copy_bn(conv1.bn, s1.conv.bn.bn)
            stem.append(ResidualBlock(conv1))
        conv2 = ConvLayer(mid, s2.active_out, 3, 1)
        _copy_conv(conv2.conv, s2.conv.conv, s2.active_out, mid)
        _copy_bn(conv2.bn, s2.bn.bn)
        stem.append(conv2)
        cin = s2.active_out
        blocks, stage_of_block = [], []
        for i in self.active_blocks:
            src, slot = self.blocks[i], self.slots[i]
            m, out = src.active_mid, src.active_out
            dst = Bottleneck(cin, m, out, slot.stride, src.has_conv_downsample)
            for name, o, n_in in (("conv1", m, cin), ("conv2", m, m), ("conv3", out, m)):
                _copy_conv(getattr(dst, name).conv, getattr(src, name).conv.conv, o, n_in)
                _copy_bn(getattr(dst, name).bn, getattr(src, name).bn.bn)
            if src.has_conv_downsample:
                _copy_conv(dst.downsample.conv, src.downsample.conv.conv, out, cin)
                _copy_bn(dst.downsample.bn, src.downsample.bn.bn)
            blocks.append(dst)
            stage_of_block.append(slot.stage)
            cin = out
        classifier = LinearLayer(cin, c.n_classes)
        classifier.linear.weight.copy_(self.classifier.linear.linear.weight[:, :cin])
        classifier.linear.bias.copy_(self.classifier.linear.linear.bias)
        net = ResNetSubnet(nn.ModuleList(stem), nn.ModuleList(blocks), classifier, c.in_channels, a["r"],
                           stage_of_block)
        net = net.to(device=ref.device, dtype=ref.dtype)
        net.arch = a
        net.train(self.training)
        return net


# ================================================================================== analytic cost
def _conv_cost(cin: int, cout: int, k: int, stride: int, h: int, bn: bool = True) -> tuple[int, int, int, int]:
    """(macs, params, act_elements, out_size) of one conv at input size ``h``."""
    ho = conv_out(h, k, stride)
    return (ho * ho * cout * cin * k * k, cout * cin * k * k + (2 * cout if bn else 0),
            cin * h * h + cout * ho * ho, ho)


class ResNetCostTable:
    """Per-slot, stem and head cost arrays of one layout, so costs of any gene matrix are gathers.

    A slot's cost depends on (its input width index, its stage width index, its expand index,
    resolution): table ``(n_slots, n_w, n_w, n_e, n_r)``; the stem's on (skipped or not, ``w[0]``,
    ``w[1]``, resolution); the classifier's on the last stage's width index.
    """

    QUANTITIES = ("macs", "params", "act")

    def __init__(self, config: ResNetConfig):
        self.config = c = config
        self.space = sp = config.space
        self.slots = _slots(config)
        nb, nw, ne, nr = sp.n_blocks, len(sp.width_mult_list), len(sp.expand_list), len(sp.resolutions)
        self.shape = (nb, nw, nw, ne, nr)
        block = {q: np.zeros(self.shape, dtype=np.float64) for q in self.QUANTITIES}
        stem = {q: np.zeros((2, nw, nw, nr), dtype=np.float64) for q in self.QUANTITIES}
        head = {q: np.zeros(nw, dtype=np.float64) for q in self.QUANTITIES}
        for ri, r in enumerate(sp.resolutions):
            for wa in range(nw):  # stem: conv0 (3 -> mid, /2), the skippable conv1 (mid -> mid), conv2 (mid -> stem)
                mid = sp.stem_mid_channels[wa]
                macs0, p0, a0, h = _conv_cost(c.in_channels, mid, 3, 2, r)
                macs1, p1, a1, _ = _conv_cost(mid, mid, 3, 1, h)
                for wb in range(nw):
                    macs2, p2, a2, _ = _conv_cost(mid, sp.stem_channels[wb], 3, 1, h)
                    # index 0: conv1 skipped, 1: conv1 runs
                    for run, (mm, pp, aa) in enumerate(((macs0 + macs2, p0 + p2, max(a0, a2)),
                                                        (macs0 + macs1 + macs2, p0 + p1 + p2, max(a0, a1, a2)))):
                        stem["macs"][run, wa, wb, ri], stem["params"][run, wa, wb, ri] = mm, pp
                        stem["act"][run, wa, wb, ri] = aa
            h = conv_out(conv_out(r, 3, 2), 3, 2)  # stem conv /2, max pool /2
            for b, slot in enumerate(self.slots):
                hin = h
                for wi in range(nw):
                    cin = slot.in_channels[wi]
                    for wo in range(nw):
                        cout = slot.out_channels[wo]
                        for ei, e in enumerate(sp.expand_list):
                            m = sp.mid_channels(cout, e)
                            mac1, p1, a1, _ = _conv_cost(cin, m, 1, 1, hin)
                            mac2, p2, a2, ho = _conv_cost(m, m, 3, slot.stride, hin)
                            mac3, p3, a3, _ = _conv_cost(m, cout, 1, 1, ho)
                            macs, params, act = mac1 + mac2 + mac3, p1 + p2 + p3, max(a1, a2, a3)
                            if slot.conv_downsample:
                                hd = -(-hin // slot.stride)  # ceil-mode average pool of the stride
                                mac4, p4, a4, _ = _conv_cost(cin, cout, 1, 1, hd)
                                macs, params, act = macs + mac4, params + p4, max(act, a4)
                            idx = (b, wi, wo, ei, ri)
                            block["macs"][idx], block["params"][idx], block["act"][idx] = macs, params, act
                h = conv_out(hin, 3, slot.stride)
        for wi in range(nw):
            cin = sp.stage_channels[-1][wi]
            head["macs"][wi] = cin * c.n_classes
            head["params"][wi] = cin * c.n_classes + c.n_classes
            head["act"][wi] = cin + c.n_classes
        self.block = block
        self.stem = stem
        self.head = head
        self._flat = {q: np.append(v.ravel(), 0.0) for q, v in block.items()}  # + a zero for skipped slots
        self._stem_flat = {q: v.ravel() for q, v in stem.items()}
        self._in_col = np.array([sp.w_cols.start + s.in_gene for s in self.slots], dtype=np.intp)
        self._out_col = np.array([sp.w_cols.start + 2 + s.stage for s in self.slots], dtype=np.intp)
        strides = np.array([nw * nw * ne * nr, nw * ne * nr, ne * nr, nr], dtype=np.intp)
        self._strides = strides
        self._stage_starts = np.concatenate([[0], np.cumsum(sp.stage_slots)[:-1]]).astype(np.intp)
        self._res = np.asarray(sp.resolutions, dtype=np.float64)

    def cost_vectors(self, X: np.ndarray) -> dict[str, np.ndarray]:
        sp = self.space
        Xi = sp.canonicalize(np.asarray(X))  # round, clip, canonical: the network the row builds
        Xi = Xi.astype(np.intp, copy=False)
        n = len(Xi)
        r = Xi[:, sp.r_col]
        mask = sp.block_mask(Xi)
        st = self._strides
        idx = (np.arange(sp.n_blocks, dtype=np.intp)[None, :] * st[0] + Xi[:, self._in_col] * st[1]
               + Xi[:, self._out_col] * st[2] + Xi[:, sp.e_cols] * st[3] + r[:, None])
        idx = np.where(mask, idx, len(self._flat["macs"]) - 1)
        nw, nr = len(sp.width_mult_list), len(sp.resolutions)
        run = (Xi[:, 0] == len(sp.depth_list) - 1).astype(np.intp)
        w0, w1 = Xi[:, sp.w_cols.start], Xi[:, sp.w_cols.start + 1]
        sidx = ((run * nw + w0) * nw + w1) * nr + r
        wl = Xi[:, sp.w_cols.stop - 1]
        out: dict[str, np.ndarray] = {}
        for q in ("macs", "params"):
            per_slot = self._flat[q][idx]
            out[f"stage_{q}"] = np.add.reduceat(per_slot, self._stage_starts, axis=1) if n else np.zeros((0, sp.n_stages))
            out[f"stem_{q}"] = self._stem_flat[q][sidx]
            out[f"head_{q}"] = self.head[q][wl]
            out[q] = per_slot.sum(axis=1) + out[f"stem_{q}"] + out[f"head_{q}"]
        act = self._flat["act"][idx]
        stage_act = np.maximum.reduceat(act, self._stage_starts, axis=1) if n else np.zeros((0, sp.n_stages))
        out["stage_act"] = stage_act
        out["peak_act"] = np.maximum(np.maximum(self._stem_flat["act"][sidx], self.head["act"][wl]),
                                     stage_act.max(axis=1) if n else np.zeros(0))
        out["peak_act_bytes"] = out["peak_act"] * BYTES_PER_ELEMENT
        out["resolution"] = self._res[r]
        out["n_blocks"] = mask.sum(axis=1).astype(np.float64)
        return out


@lru_cache(maxsize=8)
def cost_table(config: ResNetConfig) -> ResNetCostTable:
    return ResNetCostTable(config)


@lru_cache(maxsize=8)
def _reference_shapes(config: ResNetConfig) -> dict[str, tuple[int, ...]]:
    """The supernet's state-dict keys and shapes (built on the meta device: no memory, no init time)."""
    with torch.device("meta"):
        net = OFAResNets(config, family=_NoFamily())
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


class _NoFamily:  # placeholder family for the meta-device build of _reference_shapes
    pass


def _ofa_respellings(key: str) -> list[str]:
    """Candidate new spellings of an old OFA-ResNet key, the renames ``OFAResNets.load_state_dict``
    applies (static-layer names from before the dynamic wrappers: ``.linear.`` -> ``.linear.linear.``,
    ``bn.`` -> ``bn.bn.``, ``conv.weight`` -> ``conv.conv.weight``)."""
    out = []
    if ".linear." in key:
        out.append(key.replace(".linear.", ".linear.linear."))
    if "bn." in key:
        out.append(key.replace("bn.", "bn.bn."))
    if "conv.weight" in key:
        out.append(key.replace("conv.weight", "conv.conv.weight"))
    return out


# ================================================================================== the family
@register_family_kind
class ResNet50Family(ConfigFamily):
    """An OFA-ResNet family from its ``ResNetConfig`` (see the module docstring)."""

    kind = "ofa_resnet"
    capabilities = frozenset()
    # ONNX node names carry the module path of the extracted subnet: ``/classifier/linear/Gemm``
    node_groups = {"classifier": "/classifier/"}
    int8_fallback_excludes = (("classifier",),)

    def __init__(self, config: ResNetConfig | None = None):
        config = ResNetConfig() if config is None else config
        super().__init__(config)

    def build(self) -> OFAResNets:
        return OFAResNets(self.config, family=self)

    def default_anchor(self) -> Arch:
        """The middle choice of every gene (canonical)."""
        sp = self._space
        mid = lambda xs: sorted(xs)[len(xs) // 2]
        arch = {"d": [mid(sp.depth_list)] * sp.n_d, "e": [mid(sp.expand_list)] * sp.n_blocks,
                "w": [len(sp.width_mult_list) // 2] * sp.n_w, "r": mid(sp.resolutions)}
        return sp.canonical(arch)

    # ------------------------------------------------------------------ cost and features
    def cost_vectors(self, X: np.ndarray) -> dict[str, np.ndarray]:
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[None, :]
        return cost_table(self.config).cost_vectors(X)

    def _analytic_names(self) -> list[str]:
        ns = self._space.n_stages
        return (["macs_m", "params_m", "peak_act_m", "resolution", "n_blocks"]
                + [f"s{s}_macs_m" for s in range(ns)] + [f"s{s}_params_m" for s in range(ns)])

    def feature_names(self) -> list[str]:
        return gene_onehot_names(self._space) + self._analytic_names()

    @property
    def n_onehot(self) -> int:
        return int((self._space.vector_upper + 1).sum())

    def featurize(self, X: np.ndarray, *, onehot: bool = True, analytic: bool = True) -> np.ndarray:
        return gene_features(self._space, X, self._analytic_block, onehot=onehot, analytic=analytic)

    def _analytic_block(self, Xi: np.ndarray) -> np.ndarray:
        ns = self._space.n_stages
        c = cost_table(self.config).cost_vectors(Xi)
        return cost_columns(np.empty((len(Xi), 5 + 2 * ns), dtype=np.float32), c, ns)

    # ------------------------------------------------------------------ layout
    def config_dict(self) -> dict:
        d = self.config.to_dict()
        sp = self._space
        d["widths"] = {"stem_mid": list(sp.stem_mid_channels), "stem": list(sp.stem_channels),
                       "stages": [list(x) for x in sp.stage_channels]}  # derived; shown, ignored on read
        return d

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> ResNet50Family:
        names = {f.name for f in dataclasses.fields(ResNetConfig)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(ResNetConfig(**kw))

    def clean_state_dict(self, sd: dict) -> dict:
        """``module.`` prefixes stripped; OFA's older key spellings (see ``_ofa_respellings``) renamed
        where the new key exists with the tensor's shape.  Other keys are kept as they are (the loader
        reports them)."""
        sd = super().clean_state_dict(sd)
        ref = _reference_shapes(self.config)
        out = {}
        for k, v in sd.items():
            if k not in ref:  # renamed only onto a key of the same shape, so another family's keys stay put
                shape = tuple(getattr(v, "shape", ()))
                k = next((c for c in _ofa_respellings(k) if ref.get(c) == shape), k)
            out[k] = v
        return out

    def describe(self) -> str:
        s = self._space
        return (f"{self.dataset}, OFA-ResNet bottlenecks {list(s.base_depths)} + d per stage, "
                f"d {list(s.depth_list)}, e {list(s.expand_list)}, w {list(s.width_mult_list)}, "
                f"r {s.resolutions[0]}-{s.resolutions[-1]}")


@register_supernet("ofa_resnet50")
def ofa_resnet50() -> ResNet50Family:
    """Once-for-All's ``OFAResNets`` (d 0/1/2, e 0.2/0.25/0.35, w 0.65/0.8/1.0, r 128-224)."""
    return ResNet50Family(ResNetConfig())


__all__ = ["ElasticBottleneck", "OFAResNets", "ResNet50Family", "ResNetConfig", "ResNetCostTable", "ResNetSpace",
           "ResNetSubnet", "cost_table", "make_divisible"]
