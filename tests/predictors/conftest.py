"""Shared fixtures: a tiny MobileNetV3 family measured for real on ONNX Runtime (1 thread, graph
optimizations on) and on ONNX Runtime with graph optimizations off (a second "device" for transfer:
unfused BN/activations give it another cost profile), plus its layer-wise LUT, cached for the session.

The family is small so that exporting and measuring ~36 subnets and ~50 LUT entries stays within
tens of seconds; its latencies still span several-fold (resolution 16/32, expand 3/6, kernel 3/7,
depth 1/2).  Predictors train on ``min_ms``, the statistic least disturbed by a busy machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hwnas.devices import Store, load_device, profile_archs
from hwnas.supernet.families.mbv3 import MBv3Config, MobileNetV3Family
from predictors_support import FAST, NOOPT_DEVICE, STAT

N_ARCHS = 36

TINY = MobileNetV3Family(MBv3Config(
    name="pred_tiny",
    in_channels=1,
    n_classes=10,
    first_conv_width=16,
    first_conv_stride=1,
    first_block_width=16,
    stage_widths=(24, 48, 96),
    stage_strides=(2, 2, 2),
    stage_acts=("relu", "h_swish", "h_swish"),
    stage_se=(False, True, False),
    final_expand_width=128,
    feature_mix_width=256,
    ks_list=(3, 7),
    e_list=(3, 6),
    d_list=(1, 2),
    resolutions=(16, 32),
    dropout=0.0,
    mean=(0.5,),
    std=(0.5,),
    dataset="none",
))


def sample_archs(space, n: int, seed: int = 0) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    out = {space.arch_id(a): space.canonical(a) for a in (space.min_arch(), space.max_arch())}
    while len(out) < n:
        a = space.sample(rng)
        out.setdefault(space.arch_id(a), space.canonical(a))
    return list(out.items())


class Measured:
    """What the session fixture measured: gene matrices and medians of both devices, and the LUT."""

    def __init__(self, store_path: Path, config: MobileNetV3Family, archs, ort: dict, noopt: dict, table):
        self.store_path = store_path
        self.config = config
        self.archs = archs
        self.ort = ort
        self.noopt = noopt
        self.table = table


@pytest.fixture(scope="session")
def tiny_config() -> MobileNetV3Family:
    return TINY


@pytest.fixture(scope="session")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Measured:
    import torch

    from hwnas.jobs import supernet_model_builder
    from hwnas.predictors.jobs import load_latency_data
    from hwnas.predictors.lut import build_latency_table

    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("pred")
    store_path = work / "measurements.sqlite"
    net = TINY.build().eval()
    archs = sample_archs(net.space, N_ARCHS)
    ort_spec = load_device("ort-cpu-1t")
    with Store(store_path) as store:
        build = supernet_model_builder(net, "ort", work / "onnx")  # the second device reuses the files
        s1 = profile_archs(store, ort_spec, archs, build, TINY.name, settings=FAST)
        s2 = profile_archs(store, NOOPT_DEVICE, archs, build, TINY.name, settings=FAST, delete_models=True)
        assert not s1["failed"] and not s2["failed"], (s1["failed"], s2["failed"])
        table, _ = build_latency_table(TINY, ort_spec, store, settings=FAST, workdir=work)
    ort = load_latency_data(store_path, "ort-cpu-1t", TINY, stat=STAT)
    noopt = load_latency_data(store_path, NOOPT_DEVICE.name, TINY, stat=STAT)
    return Measured(store_path, TINY, archs, ort, noopt, table)
