"""Static and elastic layers of the OFA-MobileNetV3 family.

Module and parameter names follow Once-for-All's so that its published state dicts load key for
key (``blocks.3.conv.depth_conv.conv.7to5_matrix`` and so on).  The code is our own.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.supernet.distributed import batch_norm


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    min_val = divisor if min_val is None else min_val
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def build_activation(name: str | None) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "h_swish":
        return nn.Hardswish(inplace=True)
    if name is None or name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


def sub_filter_start_end(kernel_size: int, sub_kernel_size: int) -> tuple[int, int]:
    center = kernel_size // 2
    dev = sub_kernel_size // 2
    return center - dev, center + dev + 1


# ---------------------------------------------------------------------------------- static layers
class ConvLayer(nn.Module):
    """conv -> bn -> act, named as OFA names them."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, act: str | None = "relu",
                 use_bn: bool = True, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=bias)
        self.bn = nn.BatchNorm2d(out_ch) if use_bn else None
        self.act = build_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class LinearLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear(x)


class SEModule(nn.Module):
    REDUCTION = 4

    def __init__(self, channel: int):
        super().__init__()
        mid = make_divisible(channel // self.REDUCTION, 8)
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(channel, mid, 1, 1, 0, bias=True)),
            ("relu", nn.ReLU(inplace=True)),
            ("expand", nn.Conv2d(mid, channel, 1, 1, 0, bias=True)),
            ("h_sigmoid", nn.Hardsigmoid(inplace=True)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class MBConvLayer(nn.Module):
    """Static inverted-residual block: 1x1 expand -> kxk depthwise (+SE) -> 1x1 project."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, mid_ch: int | None,
                 act: str, use_se: bool):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        if mid_ch is None:  # expand ratio 1
            self.inverted_bottleneck = None
            mid_ch = in_ch
        else:
            self.inverted_bottleneck = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(in_ch, mid_ch, 1, 1, 0, bias=False)),
                ("bn", nn.BatchNorm2d(mid_ch)),
                ("act", build_activation(act)),
            ]))
        dw = [
            ("conv", nn.Conv2d(mid_ch, mid_ch, kernel_size, stride, kernel_size // 2, groups=mid_ch, bias=False)),
            ("bn", nn.BatchNorm2d(mid_ch)),
            ("act", build_activation(act)),
        ]
        if use_se:
            dw.append(("se", SEModule(mid_ch)))
        self.depth_conv = nn.Sequential(OrderedDict(dw))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(mid_ch, out_ch, 1, 1, 0, bias=False)),
            ("bn", nn.BatchNorm2d(out_ch)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class ResidualBlock(nn.Module):
    def __init__(self, conv: nn.Module, shortcut: bool):
        super().__init__()
        self.conv = conv
        self.shortcut = nn.Identity() if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.conv(x)
        return self.conv(x) + self.shortcut(x)


# ---------------------------------------------------------------------------------- elastic layers
class DynamicConv2d(nn.Module):
    """1x1 conv whose input and output widths are sliced from the largest."""

    def __init__(self, max_in: int, max_out: int):
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, 1, 0, bias=False)
        self.active_out_channel = max_out

    def active_weight(self, in_ch: int, out_ch: int) -> torch.Tensor:
        return self.conv.weight[:out_ch, :in_ch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.active_weight(x.size(1), self.active_out_channel))


class DynamicSeparableConv2d(nn.Module):
    """Depthwise conv with elastic kernel size.

    Smaller kernels are the centre of the larger one passed through learned linear transforms
    (7x7 -> 5x5 -> 3x3), stored as ``{src}to{dst}_matrix`` parameters as in Once-for-All.
    """

    def __init__(self, max_ch: int, ks_list: list[int], stride: int):
        super().__init__()
        self.ks_set = sorted(set(ks_list))
        self.stride = stride
        self.conv = nn.Conv2d(max_ch, max_ch, max(self.ks_set), stride, groups=max_ch, bias=False)
        for i in range(len(self.ks_set) - 1):
            small, big = self.ks_set[i], self.ks_set[i + 1]
            self.register_parameter(f"{big}to{small}_matrix", nn.Parameter(torch.eye(small * small)))
        self.active_kernel_size = max(self.ks_set)

    def active_filter(self, channels: int, kernel_size: int) -> torch.Tensor:
        max_ks = max(self.ks_set)
        filt = self.conv.weight[:channels]
        if kernel_size == max_ks:
            return filt
        for i in range(len(self.ks_set) - 1, 0, -1):
            src = self.ks_set[i]
            if src <= kernel_size:
                break
            dst = self.ks_set[i - 1]
            s, e = sub_filter_start_end(src, dst)
            centre = filt[:, :, s:e, s:e].contiguous()
            flat = centre.view(-1, dst * dst)
            filt = F.linear(flat, getattr(self, f"{src}to{dst}_matrix")).view(channels, 1, dst, dst)
        return filt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ch, ks = x.size(1), self.active_kernel_size
        return F.conv2d(x, self.active_filter(ch, ks), None, self.stride, ks // 2, 1, ch)


class DynamicBatchNorm2d(nn.Module):
    def __init__(self, max_features: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, bn = x.size(1), self.bn
        if c == bn.num_features:
            return bn(x)
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if self.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked += 1
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        use_batch = self.training or not bn.track_running_stats
        return batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                          use_batch, momentum, bn.eps)


class DynamicSE(nn.Module):
    def __init__(self, max_ch: int):
        super().__init__()
        mid = make_divisible(max_ch // SEModule.REDUCTION, 8)
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(max_ch, mid, 1, 1, 0, bias=True)),
            ("relu", nn.ReLU(inplace=True)),
            ("expand", nn.Conv2d(mid, max_ch, 1, 1, 0, bias=True)),
            ("h_sigmoid", nn.Hardsigmoid(inplace=True)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.size(1)
        mid = make_divisible(c // SEModule.REDUCTION, 8)
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, self.fc.reduce.weight[:mid, :c], self.fc.reduce.bias[:mid]))
        y = F.hardsigmoid(F.conv2d(y, self.fc.expand.weight[:c, :mid], self.fc.expand.bias[:c]))
        return x * y


class DynamicMBConvLayer(nn.Module):
    def __init__(self, max_in: int, out_ch: int, ks_list: list[int], e_list: list[int], stride: int,
                 act: str, use_se: bool):
        super().__init__()
        self.max_in, self.out_ch = max_in, out_ch
        self.ks_list, self.e_list = list(ks_list), list(e_list)
        self.stride, self.act, self.use_se = stride, act, use_se
        max_mid = make_divisible(round(max_in * max(e_list)), 8)
        self.inverted_bottleneck = nn.Sequential(OrderedDict([
            ("conv", DynamicConv2d(max_in, max_mid)),
            ("bn", DynamicBatchNorm2d(max_mid)),
            ("act", build_activation(act)),
        ]))
        dw = [
            ("conv", DynamicSeparableConv2d(max_mid, ks_list, stride)),
            ("bn", DynamicBatchNorm2d(max_mid)),
            ("act", build_activation(act)),
        ]
        if use_se:
            dw.append(("se", DynamicSE(max_mid)))
        self.depth_conv = nn.Sequential(OrderedDict(dw))
        self.point_linear = nn.Sequential(OrderedDict([
            ("conv", DynamicConv2d(max_mid, out_ch)),
            ("bn", DynamicBatchNorm2d(out_ch)),
        ]))
        self.active_kernel_size = max(ks_list)
        self.active_expand_ratio = max(e_list)

    @staticmethod
    def mid_channels(in_ch: int, expand_ratio: int) -> int:
        return make_divisible(round(in_ch * expand_ratio), 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inverted_bottleneck.conv.active_out_channel = self.mid_channels(x.size(1), self.active_expand_ratio)
        self.depth_conv.conv.active_kernel_size = self.active_kernel_size
        self.point_linear.conv.active_out_channel = self.out_ch
        return self.point_linear(self.depth_conv(self.inverted_bottleneck(x)))

    @torch.no_grad()
    def active_subnet(self, in_ch: int) -> MBConvLayer:
        """A static copy with the active kernel size and expand ratio, weights sliced/transformed."""
        ks, mid = self.active_kernel_size, self.mid_channels(in_ch, self.active_expand_ratio)
        sub = MBConvLayer(in_ch, self.out_ch, ks, self.stride, mid, self.act, self.use_se)
        sub.inverted_bottleneck.conv.weight.copy_(self.inverted_bottleneck.conv.active_weight(in_ch, mid))
        _copy_bn(sub.inverted_bottleneck.bn, self.inverted_bottleneck.bn.bn, mid)
        sub.depth_conv.conv.weight.copy_(self.depth_conv.conv.active_filter(mid, ks))
        _copy_bn(sub.depth_conv.bn, self.depth_conv.bn.bn, mid)
        if self.use_se:
            se_mid = make_divisible(mid // SEModule.REDUCTION, 8)
            src, dst = self.depth_conv.se.fc, sub.depth_conv.se.fc
            dst.reduce.weight.copy_(src.reduce.weight[:se_mid, :mid])
            dst.reduce.bias.copy_(src.reduce.bias[:se_mid])
            dst.expand.weight.copy_(src.expand.weight[:mid, :se_mid])
            dst.expand.bias.copy_(src.expand.bias[:mid])
        sub.point_linear.conv.weight.copy_(self.point_linear.conv.active_weight(mid, self.out_ch))
        _copy_bn(sub.point_linear.bn, self.point_linear.bn.bn, self.out_ch)
        return sub


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, c: int) -> None:
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.eps, dst.momentum = src.eps, src.momentum
    if src.num_batches_tracked is not None and dst.num_batches_tracked is not None:
        dst.num_batches_tracked.copy_(src.num_batches_tracked)
