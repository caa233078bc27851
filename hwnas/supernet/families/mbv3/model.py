"""The OFA-MobileNetV3 supernet family: elastic kernel size, expand ratio, depth and resolution.

One class builds every member from an ``MBv3Config``: Once-for-All's ImageNet layouts
(``ofa_mbv3_w1.0``, ``ofa_mbv3_w1.2``) and our small 28x28 family for Fashion-MNIST.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from hwnas.supernet.families.mbv3.layers import (
    ConvLayer,
    DynamicMBConvLayer,
    LinearLayer,
    MBConvLayer,
    ResidualBlock,
    make_divisible,
)
from hwnas.supernet.families.mbv3.space import ArchSpace
from hwnas.supernet.family import SupernetModule


@dataclass(frozen=True)
class MBv3Config:
    name: str
    in_channels: int
    n_classes: int
    first_conv_width: int
    first_conv_stride: int
    first_block_width: int
    stage_widths: tuple[int, ...]
    stage_strides: tuple[int, ...]
    stage_acts: tuple[str, ...]
    stage_se: tuple[bool, ...]
    final_expand_width: int
    feature_mix_width: int
    ks_list: tuple[int, ...] = (3, 5, 7)
    e_list: tuple[int, ...] = (3, 4, 6)
    d_list: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = (224,)
    dropout: float = 0.1
    # input normalization (per channel), recorded in export manifests
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    dataset: str = "imagenet"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def space(self) -> ArchSpace:
        return ArchSpace(
            n_stages=len(self.stage_widths),
            max_depth=max(self.d_list),
            ks_list=tuple(sorted(self.ks_list)),
            e_list=tuple(sorted(self.e_list)),
            d_list=tuple(sorted(self.d_list)),
            resolutions=tuple(sorted(self.resolutions)),
            name=self.name,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def ofa_imagenet_config(width_mult: float) -> MBv3Config:
    """Once-for-All's ``OFAMobileNetV3`` layout (ks 3/5/7, e 3/4/6, d 2/3/4, 1000 classes)."""
    base = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
    widths = [make_divisible(b * width_mult, 8) for b in base[:-2]]
    res = tuple(range(128, 225, 4)) if width_mult == 1.0 else tuple(range(160, 225, 4))
    return MBv3Config(
        name=f"ofa_mbv3_w{width_mult}",
        in_channels=3,
        n_classes=1000,
        first_conv_width=widths[0],
        first_conv_stride=2,
        first_block_width=widths[1],
        stage_widths=tuple(widths[2:]),
        stage_strides=(2, 2, 2, 1, 2),
        stage_acts=("relu", "relu", "h_swish", "h_swish", "h_swish"),
        stage_se=(False, True, False, True, True),
        final_expand_width=make_divisible(base[-2] * width_mult, 8),
        feature_mix_width=make_divisible(base[-1] * width_mult, 8),
        resolutions=res,
    )


class OFAMobileNetV3(SupernetModule):
    """Weight-sharing supernet.  ``set_active(arch)`` selects a subnet; ``extract(arch)`` copies it out
    (BN recalibrated, see ``SupernetModule.extract``)."""

    def __init__(self, config: MBv3Config, family=None):
        super().__init__()
        if family is None:
            from hwnas.supernet.families.mbv3 import MobileNetV3Family

            family = MobileNetV3Family(config)
        self.family = family
        self.config = config
        c = config
        self.first_conv = ConvLayer(c.in_channels, c.first_conv_width, 3, c.first_conv_stride, "h_swish")
        first = MBConvLayer(c.first_conv_width, c.first_block_width, 3, 1, None, "relu", False)
        blocks: list[nn.Module] = [ResidualBlock(first, c.first_conv_width == c.first_block_width)]
        self.block_group_info: list[list[int]] = []
        feature = c.first_block_width
        for width, stride, act, se in zip(c.stage_widths, c.stage_strides, c.stage_acts, c.stage_se):
            idx = []
            for i in range(self.space.max_depth):
                s = stride if i == 0 else 1
                layer = DynamicMBConvLayer(feature, width, list(c.ks_list), list(c.e_list), s, act, se)
                idx.append(len(blocks))
                blocks.append(ResidualBlock(layer, s == 1 and feature == width))
                feature = width
            self.block_group_info.append(idx)
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = ConvLayer(feature, c.final_expand_width, 1, 1, "h_swish")
        self.feature_mix_layer = ConvLayer(c.final_expand_width, c.feature_mix_width, 1, 1, "h_swish",
                                           use_bn=False, bias=False)
        self.classifier = LinearLayer(c.feature_mix_width, c.n_classes, c.dropout)
        self.runtime_depth = [max(c.d_list)] * len(c.stage_widths)
        self.active_resolution = max(c.resolutions)

    # ------------------------------------------------------------------ arch selection
    def set_active(self, arch: Mapping[str, Any]) -> dict:
        a = self.space.normalize(arch)
        for stage, idx in enumerate(self.block_group_info):
            for j, b in enumerate(idx):
                layer = self.blocks[b].conv
                layer.active_kernel_size = a["ks"][stage * self.space.max_depth + j]
                layer.active_expand_ratio = a["e"][stage * self.space.max_depth + j]
        self.runtime_depth = list(a["d"])
        self.active_resolution = a["r"]
        return a

    def set_max(self) -> None:
        self.set_active(self.space.max_arch())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        x = self.blocks[0](x)
        for stage, idx in enumerate(self.block_group_info):
            for b in idx[: self.runtime_depth[stage]]:
                x = self.blocks[b](x)
        x = self.final_expand_layer(x)
        x = x.mean((2, 3), keepdim=True)
        x = self.feature_mix_layer(x)
        return self.classifier(torch.flatten(x, 1))

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def extract_static(self, arch: Mapping[str, Any]) -> "MBv3Subnet":
        """A standalone static network computing what this supernet computes with ``arch`` active."""
        a = self.set_active(arch)
        c = self.config
        first_conv = ConvLayer(c.in_channels, c.first_conv_width, 3, c.first_conv_stride, "h_swish")
        first_conv.load_state_dict(self.first_conv.state_dict())
        blocks: list[nn.Module] = [_copy_module(self.blocks[0])]
        feature = c.first_block_width
        for stage, idx in enumerate(self.block_group_info):
            for b in idx[: a["d"][stage]]:
                res = self.blocks[b]
                sub = res.conv.active_subnet(feature)
                blocks.append(ResidualBlock(sub, res.shortcut is not None))
                feature = res.conv.out_ch
        final = _copy_module(self.final_expand_layer)
        mix = _copy_module(self.feature_mix_layer)
        classifier = LinearLayer(c.feature_mix_width, c.n_classes, 0.0)
        classifier.linear.load_state_dict(self.classifier.linear.state_dict())
        net = MBv3Subnet(first_conv, nn.ModuleList(blocks), final, mix, classifier,
                         in_channels=c.in_channels, resolution=a["r"])
        net.arch = a
        net.train(self.training)
        return net


class MBv3Subnet(nn.Module):
    """A static MobileNetV3 (what ``extract`` returns): plain convs, exportable to ONNX."""

    def __init__(self, first_conv: nn.Module, blocks: nn.ModuleList, final_expand_layer: nn.Module,
                 feature_mix_layer: nn.Module, classifier: nn.Module, in_channels: int, resolution: int):
        super().__init__()
        self.first_conv = first_conv
        self.blocks = blocks
        self.final_expand_layer = final_expand_layer
        self.feature_mix_layer = feature_mix_layer
        self.classifier = classifier
        self.in_channels = in_channels
        self.resolution = resolution
        self.arch: dict = {}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        x = x.mean((2, 3), keepdim=True)
        x = self.feature_mix_layer(x)
        return self.classifier(torch.flatten(x, 1))


def _copy_module(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)
