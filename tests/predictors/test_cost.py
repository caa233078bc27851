"""Analytic cost vs what hooks count on the extracted torch module (MACs, params, activations exactly equal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hwnas.supernet.registry import get_family


def hook_count(module: nn.Module, input_shape) -> tuple[int, int, int]:
    """(MACs of every Conv2d/Linear, parameters, largest input+output elements of any of them)."""
    macs, peak = 0, 0

    def hook(m, inputs, out):
        nonlocal macs, peak
        if isinstance(m, nn.Conv2d):
            macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs += m.in_features * m.out_features * (out.numel() // m.out_features)
        peak = max(peak, inputs[0].numel() + out.numel())

    hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(torch.zeros(1, *input_shape))
    for h in hs:
        h.remove()
    return macs, sum(p.numel() for p in module.parameters()), peak


@pytest.fixture(scope="module", params=["mbv3_fmnist", "ofa_mbv3_w1.0", "tiny"])
def family(request, tiny_config):
    cfg = tiny_config if request.param == "tiny" else get_family(request.param)
    return cfg, cfg.build().eval()


def test_cost_matches_hooks(family):
    cfg, net = family
    sp = net.space
    archs = [sp.min_arch(), sp.max_arch()] + [sp.sample(s) for s in range(3)]
    for a in archs[2:]:
        a["r"] = min(sp.resolutions)  # keep the big family's forward passes cheap
    for a in archs:
        sub = net.extract(a, calibration=None).eval()
        macs, params, peak = hook_count(sub, cfg.input_shape(a))
        c = cfg.arch_cost(a)
        assert (c["macs"], c["params"], c["peak_act"]) == (macs, params, peak), a
        assert c["macs"] == c["stem_macs"] + sum(c["stage_macs"]) + c["head_macs"]
        assert c["params"] == c["stem_params"] + sum(c["stage_params"]) + c["head_params"]
        assert c["peak_act_bytes"] == 4 * c["peak_act"]
        assert c["resolution"] == sp.normalize(a)["r"]
        assert c["n_blocks"] == sum(sp.normalize(a)["d"])


def test_vectorized_equals_per_arch(family):
    cfg, net = family
    sp = net.space
    archs = [sp.sample(s) for s in range(50)]
    X = np.stack([sp.encode(a) for a in archs])
    vec = cfg.cost_vectors(X)
    for i, a in enumerate(archs):
        one = cfg.arch_cost(a)
        assert vec["macs"][i] == one["macs"] and vec["params"][i] == one["params"]
        assert list(vec["stage_macs"][i]) == one["stage_macs"]


def test_cost_by_name_and_ignored_slots():
    cfg = get_family("mbv3_fmnist")
    sp = cfg.space
    a = sp.min_arch()
    b = dict(a, ks=[7] * sp.n_blocks)  # all stages at depth 1: only slot 0 of each stage is used
    b["ks"] = [a["ks"][i] if i % sp.max_depth == 0 else 7 for i in range(sp.n_blocks)]
    assert get_family("mbv3_fmnist").arch_cost(a) == cfg.arch_cost(b)
    assert cfg.arch_cost(sp.max_arch())["macs"] > cfg.arch_cost(a)["macs"]
