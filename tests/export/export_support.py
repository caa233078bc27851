"""Helpers shared by the export tests (a uniquely named module: test modules import it by name)."""

from __future__ import annotations

import torch


def randomize(net, seed=0):
    """Perturb every float tensor of ``net`` (BN running variances kept positive) and put it in eval mode,
    so exported subnets compute something other than the initialization's near-identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.state_dict().items():
            if p.dtype.is_floating_point:
                n = torch.randn(p.shape, generator=g) * 0.1
                p.copy_(1.0 + n.abs()) if name.endswith("running_var") else p.add_(n)
    return net.eval()
