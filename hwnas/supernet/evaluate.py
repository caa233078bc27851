"""Subnet accuracy: extract, recalibrate BN on the calibration images, top-1 on a split.

The batch job reuses work across archs: each split and the calibration set are decoded and
resized once per resolution, and only the subnet-specific part (extraction, BN statistics,
the forward passes) is repeated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from hwnas.supernet.family import SupernetModule


@dataclass
class EvalData:
    """Image tensors of one split and of the calibration set, cached per resolution."""

    split: str
    images: Any
    labels: torch.Tensor
    calib_images: Any
    batch_size: int = 500

    def __post_init__(self) -> None:
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def load(cls, split: str = "val", data_dir: str | None = None, batch_size: int = 500) -> "EvalData":
        from hwnas.data.fashion_mnist import load_split

        imgs, labels = load_split(split, data_dir)
        calib, _ = load_split("calib", data_dir)
        return cls(split, imgs, torch.as_tensor(labels), calib, batch_size)

    def tensors(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        if resolution not in self._cache:
            from hwnas.data.fashion_mnist import to_tensor

            self._cache[resolution] = (
                to_tensor(self.images, resolution).contiguous(memory_format=torch.channels_last),
                to_tensor(self.calib_images, resolution).contiguous(memory_format=torch.channels_last),
            )
        return self._cache[resolution]


@torch.no_grad()
def prepare_subnet(supernet: SupernetModule, arch: Mapping[str, Any], calib: torch.Tensor,
                   batch_size: int = 500) -> torch.nn.Module:
    """Extract ``arch`` with its normalization recalibrated on ``calib`` (already at the arch's resolution)."""
    net = supernet.extract(arch, calibration=calib.split(batch_size)).to(memory_format=torch.channels_last)
    return net.eval()


@torch.no_grad()
def top1(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
         n_outputs: int | None = None) -> float:
    """Top-1 of ``net``; ``n_outputs``: score only the first outputs (a dataset with fewer classes)."""
    net.eval()
    correct = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        logits = net(xb)
        if n_outputs:
            logits = logits[:, :n_outputs]
        correct += int((logits.argmax(1) == yb).sum())
    return correct / len(y)


def evaluate_arch(supernet: SupernetModule, arch: Mapping[str, Any], data: Any) -> float:
    """Top-1 of ``arch`` on ``data`` (``EvalData`` or a user ``ImageDataset``), BN recalibrated on its
    calibration images."""
    a = supernet.space.normalize(arch)
    x, calib = data.tensors(supernet.family.resolution(a))
    net = prepare_subnet(supernet, a, calib, data.batch_size)
    return top1(net, x, data.labels, data.batch_size, getattr(data, "n_outputs", None))


def evaluate_many(supernet: SupernetModule, archs: Iterable[Mapping[str, Any]], data: EvalData,
                  on_result: Callable[[dict, float, float], None] | None = None) -> list[float]:
    """Evaluate archs in turn; ``on_result(arch, accuracy, seconds)`` is called after each (to store it)."""
    out = []
    for arch in archs:
        t = time.perf_counter()
        acc = evaluate_arch(supernet, arch, data)
        out.append(acc)
        if on_result is not None:
            on_result(dict(arch), acc, time.perf_counter() - t)
    return out
