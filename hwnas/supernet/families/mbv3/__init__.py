"""The OFA-MobileNetV3 families: elastic kernel size, expand ratio, depth and resolution.

One implementation of the family contract (``hwnas.supernet.family``) built from an ``MBv3Config``:
Once-for-All's ImageNet layouts ``ofa_mbv3_w1.0`` and ``ofa_mbv3_w1.2`` (their published state dicts
load key for key) and ``mbv3_fmnist``, the small 28x28 family trained here for Fashion-MNIST.
Arch files are OFA's own ``{"ks": [...], "e": [...], "d": [...], "r": int}``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from hwnas.supernet.families.mbv3 import cost as _cost
from hwnas.supernet.families.mbv3 import features as _features
from hwnas.supernet.families.mbv3 import lut as _lut
from hwnas.supernet.families.mbv3.model import MBv3Config, MBv3Subnet, OFAMobileNetV3, ofa_imagenet_config
from hwnas.supernet.families.mbv3.space import ArchSpace
from hwnas.supernet.family import ConfigFamily
from hwnas.supernet.registry import register_supernet


class MobileNetV3Family(ConfigFamily):
    """A MobileNetV3 family from its ``MBv3Config`` (see the module docstring)."""

    kind = "ofa_mbv3"
    capabilities = frozenset({"lut"})
    # ONNX node names carry the module path: the SE gates live under ``.../se/...``
    node_groups = {"se": "/se/", "first_conv": "/first_conv/", "classifier": "/classifier/"}
    # the squeeze-excite gates (a multiplicative path whose small sigmoid outputs lose the most to a
    # per-tensor scale) and the classifier (the logits themselves), then the first conv too
    int8_fallback_excludes = (("se", "classifier"), ("se", "classifier", "first_conv"))

    def build(self) -> OFAMobileNetV3:
        return OFAMobileNetV3(self.config, family=self)

    def default_anchor(self) -> dict:
        """The middle choice of every gene."""
        sp = self._space
        mid = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        arch = {"ks": [mid(sp.ks_list)] * sp.n_blocks, "e": [mid(sp.e_list)] * sp.n_blocks,
                "d": [mid(sp.d_list)] * sp.n_stages, "r": mid(sp.resolutions)}
        return sp.canonical(arch)

    def cost_vectors(self, X: np.ndarray) -> dict[str, np.ndarray]:
        return _cost.cost_table(self.config).cost_vectors(X)

    def feature_names(self) -> list[str]:
        return _features.feature_names(self.config)

    @property
    def n_onehot(self) -> int:
        return _features.n_onehot(self.config)

    def featurize(self, X: np.ndarray, *, onehot: bool = True, analytic: bool = True) -> np.ndarray:
        return _features.featurize_vectors(self.config, X, onehot=onehot, analytic=analytic)

    def config_dict(self) -> dict:
        import json

        return json.loads(json.dumps(self.config.to_dict()))  # tuples -> lists, as stored in artifacts

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "MobileNetV3Family":
        from dataclasses import fields

        names = {f.name for f in fields(MBv3Config)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names and k != "extra"}
        return cls(MBv3Config(**kw))

    def clean_state_dict(self, sd: dict) -> dict:
        """OFA spells the block's inner layer ``.mobile_inverted_conv.`` in older checkpoints."""
        return {k.replace(".mobile_inverted_conv.", ".conv."): v for k, v in super().clean_state_dict(sd).items()}

    def describe(self) -> str:
        s = self._space
        return (f"{self.dataset}, {s.n_stages} stages x {s.max_depth} blocks, ks {list(s.ks_list)}, "
                f"e {list(s.e_list)}, d {list(s.d_list)}, r {s.resolutions[0]}-{s.resolutions[-1]}")

    # ------------------------------------------------------------------ the "lut" capability
    def lut_entries(self) -> list[dict]:
        return _lut.lut_index(self.config).entries

    def lut_entry_module(self, entry: Mapping[str, Any]) -> tuple[Any, tuple[int, ...]]:
        return _lut.entry_module(self.config, entry)

    def lut_usage(self, X: np.ndarray) -> np.ndarray:
        return _lut.lut_usage(self.config, X)


@register_supernet("ofa_mbv3_w1.0")
def ofa_mbv3_w10() -> MobileNetV3Family:
    """Once-for-All's ``OFAMobileNetV3`` (width 1.0; ks 3/5/7, e 3/4/6, d 2/3/4, r 128-224)."""
    return MobileNetV3Family(ofa_imagenet_config(1.0))


@register_supernet("ofa_mbv3_w1.2")
def ofa_mbv3_w12() -> MobileNetV3Family:
    """Once-for-All's ``OFAMobileNetV3`` (width 1.2; r 160-224)."""
    return MobileNetV3Family(ofa_imagenet_config(1.2))


@register_supernet("mbv3_fmnist")
def mbv3_fmnist() -> MobileNetV3Family:
    """Small family for 1-channel 28x28 images (Fashion-MNIST); trains on a 2-core CPU.

    At r=28 the feature maps go 28 -> 14 -> 7 -> 7 -> 4; resolutions 20/24/28 trade accuracy
    for latency, as do kernel 3/5/7, expand 2/3/4 and depth 1/2/3 per stage.
    """
    return MobileNetV3Family(MBv3Config(
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
    ))


__all__ = ["ArchSpace", "MBv3Config", "MBv3Subnet", "MobileNetV3Family", "OFAMobileNetV3"]
