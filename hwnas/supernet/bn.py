"""Batch-norm recalibration of an extracted subnet.

Weight sharing leaves the supernet's running BN statistics describing a mix of subnets, so each
subnet's statistics are re-estimated on real training images before it is evaluated or exported
(Once-for-All recalibrates on 2,000 training images; so do we, from ``hwnas/resources/calibration_data/``).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every BatchNorm's running stats and re-estimate them as an exact average over ``batches``.

    Uses cumulative averaging (``momentum=None``), so the result does not depend on batch order
    beyond float rounding, and the same batches always give the same statistics.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = net.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.eval()
    for m in bns:
        m.train()
    seen = 0
    for x in batches:
        if isinstance(x, (tuple, list)):
            x = x[0]
        net(x)
        seen += x.shape[0]
    if seen == 0:
        raise ValueError("BN recalibration got no batches")
    for m, (mom, _) in zip(bns, saved):
        m.momentum = 0.1 if mom is None else mom
    net.train(was_training)
    return net
