"""An elastic vision transformer family (AutoFormer / ElasticViT style) for 1-channel 28x28 images.

Layout of ``vit_fmnist``: a fixed convolutional stem (3x3 stride 2, 3x3, then a 3x3 stride-2 conv
to the embedding width: ElasticViT and LeViT put convolutions before attention, which a plain
patchify ViT lacks on small data), a learned position embedding on the token grid, ``d``
pre-norm transformer layers (multi-head self-attention with a fixed head width, then a GELU MLP),
mean pooling over the tokens, LayerNorm and a linear classifier.

Elastic choices (all weights sliced from the largest, AutoFormer's weight entanglement):

* ``e``: embedding width, one for the whole network;
* ``d``: number of transformer layers (the first ``d`` run);
* ``h[i]``: number of attention heads of layer ``i`` (head width fixed, so the q/k/v width is
  ``h * head_dim``);
* ``m[i]``: MLP ratio of layer ``i`` (hidden width ``m * e``);
* ``r``: input resolution; the stem's stride 4 turns it into a ``g x g`` token grid
  (r 20/24/28 -> 25/36/49 tokens), the position embedding is resized to that grid.

Arch files are ``{"e": int, "d": int, "h": [..], "m": [..], "r": int}`` with one ``h``/``m`` entry per
layer slot; entries beyond ``d`` are carried but ignored (same network, same id).  The extracted
subnet is static: sliced weights, the position embedding of its grid as a constant, the attention
scale folded into the query weights, tokens as one 2-D matrix (every projection a plain Gemm), and two
Reshapes, one Split and three Transposes per layer in ONNX.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.errors import ArchError
from hwnas.supernet.distributed import batch_norm
from hwnas.supernet.family import ConfigFamily, SearchSpace, SupernetModule, arch_fields, gene_features, gene_onehot_names
from hwnas.supernet.registry import register_family_kind, register_supernet

Arch = dict


def _conv_out(size: int, k: int = 3, stride: int = 2, pad: int = 1) -> int:
    return (size + 2 * pad - k) // stride + 1


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and (isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer()))


# ================================================================================== search space
@dataclass(frozen=True)
class ViTSpace(SearchSpace):
    """Genes: ``e`` index, ``d`` index, ``h`` index per layer slot, ``m`` index per slot, ``r`` index."""

    embed_list: tuple[int, ...]
    depth_list: tuple[int, ...]
    heads_list: tuple[int, ...]
    mlp_list: tuple[int, ...]
    resolutions: tuple[int, ...]
    name: str = ""

    @property
    def max_depth(self) -> int:
        return max(self.depth_list)

    @property
    def h_cols(self) -> slice:
        return slice(2, 2 + self.max_depth)

    @property
    def m_cols(self) -> slice:
        return slice(2 + self.max_depth, 2 + 2 * self.max_depth)

    @property
    def r_col(self) -> int:
        return 2 + 2 * self.max_depth

    # ------------------------------------------------------------------ validation
    def normalize(self, arch: Mapping[str, Any]) -> Arch:
        arch = arch_fields(arch, ("e", "d", "h", "m"), max(self.resolutions))
        out: Arch = {}
        for key, allowed, v in (("e", self.embed_list, arch["e"]), ("d", self.depth_list, arch["d"]),
                                ("r", self.resolutions, arch["r"])):
            if not _is_int(v):
                raise ArchError(f"arch field '{key}' = {v!r} is not an int; allowed: {list(allowed)}")
            if int(v) not in allowed:
                raise ArchError(f"arch field '{key}' = {int(v)} is not allowed; allowed: {list(allowed)}")
            out[key] = int(v)
        for key, allowed in (("h", self.heads_list), ("m", self.mlp_list)):
            val = arch[key]
            if not isinstance(val, (list, tuple)):
                raise ArchError(f"arch field '{key}' must be a list of {self.max_depth} ints; got {val!r}")
            if len(val) != self.max_depth:
                raise ArchError(f"arch field '{key}' has {len(val)} entries; this space ({self.name}) needs "
                                f"{self.max_depth} (one per layer slot)")
            vals = []
            for i, v in enumerate(val):
                if not _is_int(v):
                    raise ArchError(f"arch field '{key}[{i}]' = {v!r} is not an int; allowed: {list(allowed)}")
                if int(v) not in allowed:
                    raise ArchError(f"arch field '{key}[{i}]' = {int(v)} is not allowed; allowed: {list(allowed)}")
                vals.append(int(v))
            out[key] = vals
        return {"e": out["e"], "d": out["d"], "h": out["h"], "m": out["m"], "r": out["r"]}

    # ------------------------------------------------------------------ genes
    @property
    def vector_upper(self) -> np.ndarray:
        L = self.max_depth
        return np.array([len(self.embed_list) - 1, len(self.depth_list) - 1] + [len(self.heads_list) - 1] * L
                        + [len(self.mlp_list) - 1] * L + [len(self.resolutions) - 1], dtype=np.int64)

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        a = self.normalize(arch)
        return np.array([self.embed_list.index(a["e"]), self.depth_list.index(a["d"])]
                        + [self.heads_list.index(v) for v in a["h"]] + [self.mlp_list.index(v) for v in a["m"]]
                        + [self.resolutions.index(a["r"])], dtype=np.int64)

    def decode(self, vec: Iterable[int]) -> Arch:
        v = np.clip(np.rint(np.asarray(list(vec), dtype=float)), 0, self.vector_upper).astype(np.int64)
        if len(v) != self.vector_length:
            raise ArchError(f"gene vector has {len(v)} entries; space {self.name!r} needs {self.vector_length}")
        return {"e": self.embed_list[v[0]], "d": self.depth_list[v[1]],
                "h": [self.heads_list[i] for i in v[self.h_cols]], "m": [self.mlp_list[i] for i in v[self.m_cols]],
                "r": self.resolutions[v[self.r_col]]}

    def gene_names(self) -> list[str]:
        L = self.max_depth
        return ["e", "d"] + [f"h[{i}]" for i in range(L)] + [f"m[{i}]" for i in range(L)] + ["r"]

    def gene_choices(self) -> list[tuple]:
        L = self.max_depth
        return ([tuple(self.embed_list), tuple(self.depth_list)] + [tuple(self.heads_list)] * L
                + [tuple(self.mlp_list)] * L + [tuple(self.resolutions)])

    def layer_mask(self, Xi: np.ndarray) -> np.ndarray:
        """Boolean ``(N, max_depth)``: which layer slots run."""
        depth = np.asarray(self.depth_list)[Xi[:, 1]]
        return np.arange(self.max_depth)[None, :] < depth[:, None]

    def canonicalize_ints(self, Xi: np.ndarray) -> np.ndarray:
        off = ~self.layer_mask(Xi)
        Xi[:, self.h_cols] = np.where(off, 0, Xi[:, self.h_cols])
        Xi[:, self.m_cols] = np.where(off, 0, Xi[:, self.m_cols])
        return Xi

    def active_genes(self, Xi: np.ndarray) -> np.ndarray:
        act = np.ones(np.shape(Xi), dtype=bool)
        mask = self.layer_mask(np.asarray(Xi))
        act[:, self.h_cols] = mask
        act[:, self.m_cols] = mask
        return act

    def sample(self, rng: np.random.Generator | int | None = None) -> Arch:
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        vec = [int(rng.integers(0, u + 1)) for u in self.vector_upper]
        return self.canonical(self.decode(vec))

    def min_arch(self) -> Arch:
        return self.decode(np.zeros(self.vector_length, dtype=np.int64))

    def max_arch(self) -> Arch:
        return self.decode(self.vector_upper)

    def arch_id(self, arch: Mapping[str, Any]) -> str:
        """``r28-e128-d6-444444_444444``: resolution, width, depth, heads and MLP ratios of the layers that run."""
        a = self.canonical(arch)
        d = a["d"]
        if max(self.heads_list) > 9 or max(self.mlp_list) > 9:
            return f"r{a['r']}-e{a['e']}-d{d}-{self.digest(a)}"
        return f"r{a['r']}-e{a['e']}-d{d}-{''.join(map(str, a['h'][:d]))}_{''.join(map(str, a['m'][:d]))}"

    def to_dict(self) -> dict:
        return {"e": list(self.embed_list), "d": list(self.depth_list), "h": list(self.heads_list),
                "m": list(self.mlp_list), "r": list(self.resolutions), "layer_slots": self.max_depth}


# ================================================================================== the layout
@dataclass(frozen=True)
class ViTConfig:
    name: str = "vit_fmnist"
    in_channels: int = 1
    n_classes: int = 10
    stem_widths: tuple[int, ...] = (32, 64)
    embed_list: tuple[int, ...] = (64, 96, 128)
    depth_list: tuple[int, ...] = (2, 3, 4, 5, 6)
    heads_list: tuple[int, ...] = (2, 3, 4)
    head_dim: int = 32
    mlp_list: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = (20, 24, 28)
    dropout: float = 0.0
    mean: tuple[float, ...] = (0.28618128,)
    std: tuple[float, ...] = (0.35307522,)
    dataset: str = "fashion-mnist"

    @property
    def space(self) -> ViTSpace:
        return _space_of(self)

    @property
    def max_embed(self) -> int:
        return max(self.embed_list)

    @property
    def max_qkv(self) -> int:
        return max(self.heads_list) * self.head_dim

    def grid(self, r: int) -> int:
        """Token grid side at input resolution ``r`` (two stride-2 3x3 convs)."""
        return _conv_out(_conv_out(r))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@lru_cache(maxsize=32)
def _space_of(cfg: ViTConfig) -> ViTSpace:
    return ViTSpace(embed_list=tuple(cfg.embed_list), depth_list=tuple(cfg.depth_list),
                    heads_list=tuple(cfg.heads_list), mlp_list=tuple(cfg.mlp_list),
                    resolutions=tuple(cfg.resolutions), name=cfg.name)


# ================================================================================== supernet layers
def _stem(cfg: ViTConfig) -> nn.Sequential:
    c1, c2 = cfg.stem_widths
    return nn.Sequential(nn.Conv2d(cfg.in_channels, c1, 3, 2, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
                         nn.Conv2d(c1, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True))


class ElasticLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor, e: int) -> torch.Tensor:  # type: ignore[override]
        return F.layer_norm(x, (e,), self.weight[:e], self.bias[:e], self.eps)


class ElasticLinear(nn.Linear):
    def forward(self, x: torch.Tensor, out_f: int, in_f: int) -> torch.Tensor:  # type: ignore[override]
        return F.linear(x, self.weight[:out_f, :in_f], self.bias[:out_f])


class ElasticAttention(nn.Module):
    """Multi-head self-attention whose q/k/v weights are laid out ``(3, heads * head_dim, embed)`` so the
    first ``h`` heads of each are one slice."""

    def __init__(self, max_embed: int, max_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.qkv = nn.Linear(max_embed, 3 * max_heads * head_dim)
        self.proj = nn.Linear(max_heads * head_dim, max_embed)
        self.max_qkv = max_heads * head_dim

    def qkv_weights(self, e: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.qkv.weight.view(3, self.max_qkv, -1)[:, : h * self.head_dim, :e].reshape(-1, e)
        b = self.qkv.bias.view(3, self.max_qkv)[:, : h * self.head_dim].reshape(-1)
        return w, b

    def forward(self, x: torch.Tensor, e: int, h: int) -> torch.Tensor:
        B, N, _ = x.shape
        w, b = self.qkv_weights(e, h)
        qkv = F.linear(x, w, b).reshape(B, N, 3, h, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.head_dim ** -0.5) @ k.transpose(-2, -1), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(B, N, h * self.head_dim)
        return F.linear(y, self.proj.weight[:e, : h * self.head_dim], self.proj.bias[:e])


class ElasticBlock(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        E = cfg.max_embed
        self.norm1 = ElasticLayerNorm(E)
        self.attn = ElasticAttention(E, max(cfg.heads_list), cfg.head_dim)
        self.norm2 = ElasticLayerNorm(E)
        self.fc1 = ElasticLinear(E, max(cfg.mlp_list) * E)
        self.fc2 = ElasticLinear(max(cfg.mlp_list) * E, E)

    def forward(self, x: torch.Tensor, e: int, h: int, m: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, e), e, h)
        y = F.gelu(self.fc1(self.norm2(x, e), m * e, e))
        return x + self.fc2(y, e, m * e)


def _resize_pos(pos: torch.Tensor, g: int) -> torch.Tensor:
    if pos.shape[-1] == g:
        return pos
    return F.interpolate(pos, size=(g, g), mode="bilinear", align_corners=False, antialias=True)


class ElasticViT(SupernetModule):
    """The weight-sharing supernet of a ``ViTConfig``."""

    def __init__(self, config: ViTConfig, family: "ViTFamily | None" = None):
        super().__init__()
        self.config = config
        if family is not None:
            self.family = family
        cfg = config
        E = cfg.max_embed
        self.stem = _stem(cfg)
        self.embed = nn.Conv2d(cfg.stem_widths[-1], E, 3, 2, 1, bias=False)
        self.embed_bn = nn.BatchNorm2d(E)
        g = cfg.grid(max(cfg.resolutions))
        self.pos_embed = nn.Parameter(torch.zeros(1, E, g, g))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList([ElasticBlock(cfg) for _ in range(cfg.space.max_depth)])
        self.norm = ElasticLayerNorm(E)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = ElasticLinear(E, cfg.n_classes)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                nn.init.zeros_(mod.bias)
        self._active = cfg.space.max_arch()

    def set_active(self, arch: Mapping[str, Any]) -> Arch:
        self._active = self.space.normalize(arch)
        return self._active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._active
        e = a["e"]
        x = self.stem(x)
        x = batch_norm(F.conv2d(x, self.embed.weight[:e], None, 2, 1),
                       self.embed_bn.running_mean[:e], self.embed_bn.running_var[:e], self.embed_bn.weight[:e],
                       self.embed_bn.bias[:e], self.training or not self.embed_bn.track_running_stats,
                       self.embed_bn.momentum, self.embed_bn.eps)
        x = x + _resize_pos(self.pos_embed[:, :e], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        for i in range(a["d"]):
            x = self.blocks[i](x, e, a["h"][i], a["m"][i])
        x = self.norm(x.mean(1), e)
        return self.head(self.dropout(x), self.config.n_classes, e)

    @torch.no_grad()
    def extract_static(self, arch: Mapping[str, Any]) -> "ViTSubnet":
        a = self.space.normalize(arch)
        cfg, e = self.config, a["e"]
        stem = _stem(cfg)
        stem.load_state_dict(self.stem.state_dict())
        embed = nn.Conv2d(cfg.stem_widths[-1], e, 3, 2, 1, bias=False)
        embed.weight.copy_(self.embed.weight[:e])
        bn = nn.BatchNorm2d(e)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(self.embed_bn, name)[:e])
        bn.num_batches_tracked.copy_(self.embed_bn.num_batches_tracked)
        g = cfg.grid(a["r"])
        pos = _resize_pos(self.pos_embed[:, :e], g).clone()
        blocks = []
        for i in range(a["d"]):
            src: ElasticBlock = self.blocks[i]
            h, m = a["h"][i], a["m"][i]
            blk = ViTLayer(e, h, cfg.head_dim, m * e, g * g)
            blk.norm1.weight.copy_(src.norm1.weight[:e])
            blk.norm1.bias.copy_(src.norm1.bias[:e])
            blk.norm1.eps = src.norm1.eps
            w, b = src.attn.qkv_weights(e, h)
            w, b = w.clone(), b.clone()
            qd = h * cfg.head_dim
            w[:qd] *= cfg.head_dim ** -0.5  # the attention scale folded into the query projection
            b[:qd] *= cfg.head_dim ** -0.5
            blk.qkv.weight.copy_(w)
            blk.qkv.bias.copy_(b)
            blk.proj.weight.copy_(src.attn.proj.weight[:e, :qd])
            blk.proj.bias.copy_(src.attn.proj.bias[:e])
            blk.norm2.weight.copy_(src.norm2.weight[:e])
            blk.norm2.bias.copy_(src.norm2.bias[:e])
            blk.norm2.eps = src.norm2.eps
            blk.fc1.weight.copy_(src.fc1.weight[: m * e, :e])
            blk.fc1.bias.copy_(src.fc1.bias[: m * e])
            blk.fc2.weight.copy_(src.fc2.weight[:e, : m * e])
            blk.fc2.bias.copy_(src.fc2.bias[:e])
            blocks.append(blk)
        norm = nn.LayerNorm(e, eps=self.norm.eps)
        norm.weight.copy_(self.norm.weight[:e])
        norm.bias.copy_(self.norm.bias[:e])
        head = nn.Linear(e, cfg.n_classes)
        head.weight.copy_(self.head.weight[:, :e])
        head.bias.copy_(self.head.bias)
        sub = ViTSubnet(stem, embed, bn, pos, nn.ModuleList(blocks), norm, head,
                        input_shape=(cfg.in_channels, a["r"], a["r"]))
        sub.arch = a
        return sub


# ================================================================================== the static subnet
class ViTLayer(nn.Module):
    """One static pre-norm transformer layer on the ``(batch * tokens, e)`` token matrix.

    Shapes are Python ints, so ONNX gets constant Reshapes and no Shape/Gather; the token matrix is 2-D,
    so every projection is one Gemm that ONNX Runtime runs without reshaping around it.
    """

    def __init__(self, e: int, h: int, head_dim: int, hidden: int, n_tokens: int):
        super().__init__()
        self.h, self.head_dim, self.n_tokens = h, head_dim, n_tokens
        self.norm1 = nn.LayerNorm(e)
        self.qkv = nn.Linear(e, 3 * h * head_dim)
        self.proj = nn.Linear(h * head_dim, e)
        self.norm2 = nn.LayerNorm(e)
        self.fc1 = nn.Linear(e, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, h, dh = self.n_tokens, self.h, self.head_dim
        qkv = self.qkv(self.norm1(x)).reshape(-1, N, 3 * h, dh).transpose(1, 2)  # (B, 3h, N, dh)
        q, k, v = qkv.split(h, dim=1)  # query already scaled (folded into its weights)
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(-1, h * dh)
        x = x + self.proj(y)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViTSubnet(nn.Module):
    """A standalone subnet: stem, token embedding (+ position constant), layers, pooled head."""

    def __init__(self, stem: nn.Module, embed: nn.Conv2d, embed_bn: nn.BatchNorm2d, pos: torch.Tensor,
                 blocks: nn.ModuleList, norm: nn.LayerNorm, head: nn.Linear, input_shape: tuple[int, int, int]):
        super().__init__()
        self.stem, self.embed, self.embed_bn = stem, embed, embed_bn
        self.register_buffer("pos_embed", pos)
        self.blocks, self.norm, self.head = blocks, norm, head
        self._input_shape = tuple(input_shape)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_bn(self.embed(self.stem(x))) + self.pos_embed
        e = self.pos_embed.shape[1]
        n = self.pos_embed.shape[2] * self.pos_embed.shape[3]
        x = x.reshape(-1, e, n).transpose(1, 2).reshape(-1, e)  # the (batch * tokens, e) token matrix
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x.reshape(-1, n, e).mean(1)))


# ================================================================================== analytic cost
class ViTCostTable:
    """MACs, parameters and peak activation elements of every arch, vectorized over gene rows."""

    def __init__(self, cfg: ViTConfig):
        self.cfg = cfg
        sp = cfg.space
        self.embed = np.asarray(sp.embed_list, dtype=np.float64)
        self.depth = np.asarray(sp.depth_list, dtype=np.int64)
        self.heads = np.asarray(sp.heads_list, dtype=np.float64)
        self.mlp = np.asarray(sp.mlp_list, dtype=np.float64)
        self.res = np.asarray(sp.resolutions, dtype=np.float64)
        self.h1 = np.asarray([_conv_out(r) for r in sp.resolutions], dtype=np.float64)  # stem grid
        self.g = np.asarray([cfg.grid(r) for r in sp.resolutions], dtype=np.float64)

    def cost_vectors(self, X: np.ndarray) -> dict[str, np.ndarray]:
        cfg, sp = self.cfg, self.cfg.space
        X = np.asarray(X, dtype=np.int64)
        if X.ndim == 1:
            X = X[None, :]
        e = self.embed[X[:, 0]]
        d = self.depth[X[:, 1]]
        mask = sp.layer_mask(X).astype(np.float64)
        h = self.heads[X[:, sp.h_cols]] * mask
        m = self.mlp[X[:, sp.m_cols]] * mask
        h1 = self.h1[X[:, sp.r_col]]
        g = self.g[X[:, sp.r_col]]
        N = g * g
        c1, c2 = cfg.stem_widths
        cin, dh, ncls = cfg.in_channels, cfg.head_dim, cfg.n_classes
        stem_macs = h1 * h1 * 9 * (cin * c1 + c1 * c2) + N * 9 * c2 * e
        stem_params = 9 * (cin * c1 + c1 * c2) + 2 * (c1 + c2) + 9 * c2 * e + 2 * e + N * e
        q = h * dh  # per-layer q/k/v width (0 where the layer is off)
        qkv_macs = (N[:, None] * e[:, None] * 3 * q)
        attn_macs = 2 * N[:, None] ** 2 * q
        proj_macs = N[:, None] * q * e[:, None]
        mlp_macs = 2 * N[:, None] * e[:, None] ** 2 * m
        layer_macs = qkv_macs + attn_macs + proj_macs + mlp_macs
        layer_params = (mask * 4 * e[:, None] + (e[:, None] + 1) * 3 * q + (q + 1) * e[:, None] * mask
                        + (e[:, None] + 1) * m * e[:, None] + (m * e[:, None] + 1) * e[:, None] * mask)
        head_macs = e * ncls
        head_params = 2 * e + (e + 1) * ncls
        macs = stem_macs + layer_macs.sum(1) + head_macs
        params = stem_params + layer_params.sum(1) + head_params
        peak = np.maximum.reduce([h1 * h1 * c2, (N[:, None] * 3 * q).max(1), (h * N[:, None] ** 2).max(1),
                                  (N[:, None] * m * e[:, None]).max(1)])
        return {"macs": macs, "params": params, "peak_act": peak, "resolution": self.res[X[:, sp.r_col]],
                "tokens": N, "embed": e, "depth": d.astype(np.float64),
                "attn_macs": (qkv_macs + attn_macs + proj_macs).sum(1), "mlp_macs": mlp_macs.sum(1),
                "softmax_elems": (h * N[:, None] ** 2).sum(1), "layer_macs": layer_macs}


@lru_cache(maxsize=8)
def cost_table(cfg: ViTConfig) -> ViTCostTable:
    return ViTCostTable(cfg)


# ================================================================================== the family
_ANALYTIC = ["macs_m", "params_m", "peak_act_m", "resolution", "tokens", "embed", "depth", "attn_macs_m",
             "mlp_macs_m", "softmax_k"]


@register_family_kind
class ViTFamily(ConfigFamily):
    """An elastic ViT family from its ``ViTConfig`` (see the module docstring)."""

    kind = "elastic_vit"
    capabilities = frozenset()
    # ONNX node names carry the module path of the extracted subnet: ``/head/Gemm``, ``/stem/stem.0/Conv``
    node_groups = {"classifier": "/head/", "stem": "/stem/", "softmax": "Softmax"}
    int8_fallback_excludes = (("classifier",), ("classifier", "stem"))
    #: MatMul-heavy: ONNX Runtime's dynamic quantization (int8 MatMul, activations quantized at run
    #: time) is the INT8 engine that pays off here; static QDQ barely beats FP32 on transformers
    int8_modes = ("dynamic", "static")
    #: training recipe defaults (``hwnas supernet train``): transformers want AdamW, not SGD
    train_defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_steps": 200,
                      "label_smoothing": 0.1}

    def __init__(self, config: ViTConfig | None = None):
        super().__init__(ViTConfig() if config is None else config)

    def build(self) -> ElasticViT:
        return ElasticViT(self.config, family=self)

    def default_anchor(self) -> Arch:
        """The middle choice of every gene (canonical)."""
        sp = self._space
        mid = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        L = sp.max_depth
        return sp.canonical({"e": mid(sp.embed_list), "d": mid(sp.depth_list), "h": [mid(sp.heads_list)] * L,
                             "m": [mid(sp.mlp_list)] * L, "r": mid(sp.resolutions)})

    def cost_vectors(self, X: np.ndarray) -> dict[str, np.ndarray]:
        c = cost_table(self.config).cost_vectors(self._space.canonicalize(np.atleast_2d(X)))
        c.pop("layer_macs")
        return c

    def feature_names(self) -> list[str]:
        return gene_onehot_names(self._space) + list(_ANALYTIC)

    @property
    def n_onehot(self) -> int:
        return int((self._space.vector_upper + 1).sum())

    def featurize(self, X: np.ndarray, *, onehot: bool = True, analytic: bool = True) -> np.ndarray:
        return gene_features(self._space, X, self._analytic_block, onehot=onehot, analytic=analytic)

    def _analytic_block(self, Xi: np.ndarray) -> np.ndarray:
        c = cost_table(self.config).cost_vectors(Xi)
        return np.stack([c["macs"] / 1e6, c["params"] / 1e6, c["peak_act"] / 1e6, c["resolution"], c["tokens"],
                         c["embed"], c["depth"], c["attn_macs"] / 1e6, c["mlp_macs"] / 1e6,
                         c["softmax_elems"] / 1e3], axis=1)

    def config_dict(self) -> dict:
        return self.config.to_dict()

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "ViTFamily":
        names = {f.name for f in dataclasses.fields(ViTConfig)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(ViTConfig(**kw))

    def describe(self) -> str:
        s = self._space
        return (f"{self.dataset}, conv stem + elastic ViT: e {list(s.embed_list)}, d {list(s.depth_list)}, "
                f"heads {list(s.heads_list)} x {self.config.head_dim}, mlp {list(s.mlp_list)}, "
                f"r {s.resolutions[0]}-{s.resolutions[-1]} ({self.config.grid(s.resolutions[0]) ** 2}-"
                f"{self.config.grid(s.resolutions[-1]) ** 2} tokens)")


@register_supernet("vit_fmnist")
def vit_fmnist() -> ViTFamily:
    """Elastic ViT for 1-channel 28x28 images (Fashion-MNIST); trains on a 2-core CPU in about an hour."""
    return ViTFamily(ViTConfig())


__all__ = ["ElasticViT", "ViTConfig", "ViTCostTable", "ViTFamily", "ViTLayer", "ViTSpace", "ViTSubnet", "cost_table"]
