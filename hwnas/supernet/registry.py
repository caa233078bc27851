"""Supernet families by name (timm's ``create_model`` pattern) and weight loading."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch

from hwnas.errors import CheckpointError, UnknownSupernetError
from hwnas.supernet.ofa_mbv3 import MBv3Config, OFAMobileNetV3, ofa_imagenet_config

_FAMILIES: dict[str, Callable[[], MBv3Config]] = {}
ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
DEFAULT_SUPERNET = "mbv3_fmnist"


def register_supernet(name: str):
    def deco(fn: Callable[[], MBv3Config]):
        _FAMILIES[name] = fn
        return fn

    return deco


def list_supernets() -> list[str]:
    return sorted(_FAMILIES)


def get_config(name: str) -> MBv3Config:
    if name not in _FAMILIES:
        raise UnknownSupernetError(f"unknown supernet {name!r}; choose one of: {', '.join(list_supernets())}")
    return _FAMILIES[name]()


@register_supernet("ofa_mbv3_w1.0")
def _ofa_w10() -> MBv3Config:
    return ofa_imagenet_config(1.0)


@register_supernet("ofa_mbv3_w1.2")
def _ofa_w12() -> MBv3Config:
    return ofa_imagenet_config(1.2)


@register_supernet("mbv3_fmnist")
def _fmnist() -> MBv3Config:
    """Small family for 1-channel 28x28 images (Fashion-MNIST); trains on a 2-core CPU.

    At r=28 the feature maps go 28 -> 14 -> 7 -> 7 -> 4; resolutions 20/24/28 trade accuracy
    for latency, as do kernel 3/5/7, expand 2/3/4 and depth 1/2/3 per stage.
    """
    return MBv3Config(
        name="mbv3_fmnist",
        in_channels=1,
        n_classes=10,
        first_conv_width=16,
        first_conv_stride=1,
        first_block_width=16,
        stage_widths=(24, 40, 64, 96),
        stage_strides=(2, 2, 1, 2),
        stage_acts=("relu", "relu", "h_swish", "h_swish"),
        stage_se=(False, True, False, True),
        final_expand_width=256,
        feature_mix_width=512,
        ks_list=(3, 5, 7),
        e_list=(2, 3, 4),
        d_list=(1, 2, 3),
        resolutions=(20, 24, 28),
        dropout=0.1,
        mean=(0.28618128,),
        std=(0.35307522,),
        dataset="fashion-mnist",
    )


def default_weights_path(name: str) -> Path | None:
    p = ZOO_DIR / f"{name}.pt"
    return p if p.is_file() else None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_supernet(name: str, weights: str | Path | None = None, pretrained: bool = True) -> OFAMobileNetV3:
    """Build a family by name; load ``weights`` if given, else the shipped weights if any.

    ``pretrained=False`` returns freshly initialized weights (enough for latency work, which does
    not depend on weight values).
    """
    cfg = get_config(name)
    net = OFAMobileNetV3(cfg)
    net.weights_path = None  # type: ignore[attr-defined]
    net.weights_hash = "init"  # type: ignore[attr-defined]
    path = Path(weights) if weights is not None else (default_weights_path(name) if pretrained else None)
    if path is not None:
        load_weights(net, path)
        net.weights_path = str(path)  # type: ignore[attr-defined]
        net.weights_hash = file_sha256(path)[:16]  # type: ignore[attr-defined]
    net.eval()
    return net


def _clean_state_dict(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        k = k.replace(".mobile_inverted_conv.", ".conv.")
        out[k] = v
    return out


def read_state_dict(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist; pass the path of a .pt/.pth state dict")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"weights file {p} is not a loadable PyTorch state dict ({first[:160]})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {p} does not hold a state dict (a mapping of names to tensors)")
    return _clean_state_dict(obj)


def guess_family(sd: dict) -> str | None:
    """The registered family whose parameter names and shapes match ``sd`` exactly, if any."""
    for name in list_supernets():
        ref = OFAMobileNetV3(get_config(name)).state_dict()
        keys = {k for k in ref if not k.endswith("num_batches_tracked")}
        got = {k for k in sd if not k.endswith("num_batches_tracked")}
        if keys == got and all(ref[k].shape == sd[k].shape for k in keys):
            return name
    return None


def load_weights(net: OFAMobileNetV3, path: str | Path) -> None:
    sd = read_state_dict(path)
    ref = net.state_dict()
    missing = [k for k in ref if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in ref]
    shape_bad = [k for k in ref if k in sd and sd[k].shape != ref[k].shape]
    if missing or unexpected or shape_bad:
        other = guess_family(sd)
        hint = f"it matches family {other!r}: pass --supernet {other}" if other else \
            "it matches no registered family"
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shape_bad:
            k = shape_bad[0]
            detail.append(f"{len(shape_bad)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(ref[k].shape)})")
        raise CheckpointError(
            f"weights file {path} is not a {net.config.name} checkpoint: {'; '.join(detail)}; {hint}"
        )
    for k in ref:
        if k not in sd:  # num_batches_tracked absent from old checkpoints
            sd[k] = ref[k]
    net.load_state_dict({k: sd[k] for k in ref}, strict=True)
