"""Shared fixtures: the mbv3_fmnist space, a session store, a real ort-cpu-1t measure callback,
and TEST-FIXTURE predictors (see search_fixtures.py) fit on real measurements."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_fixtures import MacsAccuracyProxy, RidgeLatency, make_refit  # noqa: E402
from search_settings import FAST  # noqa: E402

from hwnas.devices import Store  # noqa: E402
from hwnas.jobs import anchor_of, supernet_model_builder  # noqa: E402
from hwnas.archsearch import device_measure, encode_archs  # noqa: E402
from hwnas.archsearch.measure import device_confirm  # noqa: E402
from hwnas.supernet.registry import create_supernet, get_family  # noqa: E402

SUPERNET = "mbv3_fmnist"
DEVICE = "ort-cpu-1t"
# short protocol: these subnets run in 0.05-0.7 ms, so 0.1 s of timed runs is hundreds of runs
N_TRAIN = 10  # real measurements behind the latency fixture (each costs ~1 s: mostly ONNX export)


@pytest.fixture(scope="session")
def config():
    return get_family(SUPERNET).config


@pytest.fixture(scope="session")
def space(config):
    return config.space


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("search-store") / "measurements.sqlite") as st:
        yield st


@pytest.fixture(scope="session")
def measure_calls():
    return []


@pytest.fixture(scope="session")
def ort_measure(store, space, tmp_path_factory, measure_calls):
    """The real measure callback: profile_archs on ort-cpu-1t into the session store."""
    net = create_supernet(SUPERNET, pretrained=False)
    build = supernet_model_builder(net, "ort", tmp_path_factory.mktemp("search-onnx"))
    inner = device_measure(store, DEVICE, build, SUPERNET, space, settings=FAST)

    def measure(archs):
        measure_calls.append([space.arch_id(a) for a in archs])
        return inner(archs)

    return measure


@pytest.fixture(scope="session")
def ort_confirm(store, tmp_path_factory):
    """The real confirm callback: a fresh ORT session, anchored timing against the family's anchor."""
    net = create_supernet(SUPERNET, pretrained=False)
    build = supernet_model_builder(net, "ort", tmp_path_factory.mktemp("confirm-onnx"))
    return device_confirm(store, DEVICE, build, anchor_of(net.family), settings=FAST)


@pytest.fixture(scope="session")
def latency_data(space, ort_measure):
    """(X, y): N_TRAIN real archs (smallest, largest, random) and their measured median ms."""
    rng = np.random.default_rng(123)
    archs = [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(N_TRAIN - 2)]
    y = np.asarray(ort_measure(archs), dtype=float)
    assert np.all(np.isfinite(y)) and np.all(y > 0)
    return encode_archs(space, archs), y


@pytest.fixture(scope="session")
def predict_latency(config, latency_data):
    X, y = latency_data
    return RidgeLatency(config).fit(X, y)


@pytest.fixture(scope="session")
def refit_latency(config, latency_data):
    return make_refit(config, *latency_data)


@pytest.fixture(scope="session")
def predict_accuracy(config):
    return MacsAccuracyProxy(config)
