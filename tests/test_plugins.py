"""Plug-ins through the registries, with no change to hwnas: a throwaway predictor kind and a throwaway
device backend, each defined here and used by the jobs as they are.

The backend is real: ONNX's own reference runtime (``onnx.reference.ReferenceEvaluator``, pure numpy),
a different runtime from ONNX Runtime; the predictor is a real ridge regression on the family's features.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import pytest

import hwnas
from hwnas.devices.backends import LocalBackend, list_backends, register_backend
from hwnas.devices.protocol import InputSpec
from hwnas.devices.spec import DeviceSpec
from hwnas.predictors import Predictor, create_predictor, list_predictors, load_predictor, register_predictor, save_predictor
from hwnas.predictors.base import DEFAULT_SUPERNET


@register_predictor("throwaway_ridge")
class ThrowawayRidge(Predictor):
    """Ridge regression of log latency on the family's features (one-hot + analytic)."""

    targets = ("latency", "accuracy")

    def __init__(self, supernet: Any = DEFAULT_SUPERNET, alpha: float = 1.0):
        self.supernet = supernet
        self.alpha = alpha

    def _fit(self, V: np.ndarray, y: np.ndarray) -> None:
        F = self.features(V).astype(np.float64)
        self.mu_, self.sd_ = F.mean(0), F.std(0) + 1e-9
        Z = np.c_[np.ones(len(F)), (F - self.mu_) / self.sd_]
        reg = self.alpha * np.eye(Z.shape[1])
        reg[0, 0] = 0.0
        self.w_ = np.linalg.solve(Z.T @ Z + reg, Z.T @ np.log(y))

    def _predict(self, V: np.ndarray) -> np.ndarray:
        F = self.features(V).astype(np.float64)
        return np.exp(np.c_[np.ones(len(F)), (F - self.mu_) / self.sd_] @ self.w_)

    def _get_state(self) -> dict[str, Any]:
        return {"mu": self.mu_, "sd": self.sd_, "w": self.w_}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.mu_, self.sd_, self.w_ = (np.asarray(state[k], dtype=np.float64) for k in ("mu", "sd", "w"))


@register_backend("onnx-reference")
class OnnxReferenceBackend(LocalBackend):
    """ONNX's reference evaluator: slow, pure numpy, but a second, independent runtime."""

    def _activate(self) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(self.model))
        self._ev = ReferenceEvaluator(model)
        inp = model.graph.input[0]
        dims = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
        self._specs = [InputSpec(inp.name, dims)]
        self._feeds_staged: dict = {}

    def _deactivate(self) -> None:
        self._ev = None

    def input_specs(self) -> list[InputSpec]:
        self._require_active()
        return list(self._specs)

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> None:
        self._feeds_staged = self._feeds(inputs)

    def time_once(self) -> int:
        t0 = time.perf_counter_ns()
        self._ev.run(None, self._feeds_staged)
        return time.perf_counter_ns() - t0

    def infer(self, x):
        return np.asarray(self._ev.run(None, self._feeds(x))[0])


QUICK = {"warmup_runs": 1, "warmup_s": 0.0, "min_runs": 3, "windows": 1, "min_timed_s": 0.0, "time_cap_s": 0.3,
         "anchored": 0}


def test_throwaway_predictor_kind_fits_saves_loads_and_drives_a_search(tmp_path):
    assert "throwaway_ridge" in list_predictors("latency")
    fam = hwnas.create_supernet("mbv3_fmnist", pretrained=False).family
    sp = fam.space
    X = sp.canonicalize(np.random.default_rng(0).integers(0, sp.vector_upper + 1, size=(60, sp.vector_length)))
    y = 0.05 + fam.cost_vectors(X)["macs"] / 1e8  # a target with structure; this tests the plumbing
    pred = create_predictor("throwaway_ridge", supernet="mbv3_fmnist", alpha=0.1).fit(X, y)
    path = save_predictor(pred, tmp_path / "ridge.json", {"fp_hash": "f", "device": "nowhere"})
    again = load_predictor(path)
    assert type(again) is ThrowawayRidge and np.array_equal(again.predict(X), pred.predict(X))
    res = hwnas.predict(path, sp.max_arch())
    assert res.unit == "ms" and res.values[0] == pytest.approx(float(pred.predict([sp.max_arch()])[0]))
    from hwnas.archsearch import search_front

    front = search_front(sp, lambda V: -np.log(again.predict(V)), again.predict, pop_size=16, n_gen=3, seed=0)
    assert len(front.X) >= 1


def test_throwaway_backend_profiles_through_the_job(tmp_path):
    assert "onnx-reference" in list_backends()
    spec = DeviceSpec(name="onnx-ref-1t", backend="onnx-reference", protocol=QUICK)
    store = tmp_path / "store.sqlite"
    prof = hwnas.profile(spec, "mbv3_fmnist", samples=3, store=store, time_cap_s=0.3)
    assert prof.measured == 3 and not prof.failed and prof.device == "onnx-ref-1t"
    from hwnas.devices import Store

    with Store(store) as st:
        rows = [r for r in st.measurements() if r["device"] == "onnx-ref-1t"]
    assert len(rows) == 3 and all(r["median_ms"] > 0 for r in rows)
    # the same file on ONNX Runtime agrees in its outputs: two runtimes, one model
    net = hwnas.create_supernet("mbv3_fmnist")
    arch = net.space.min_arch()
    from hwnas.jobs import supernet_model_builder

    path, _ = supernet_model_builder(net, "ort", tmp_path / "m")(arch)
    x = np.random.default_rng(0).standard_normal((1, *net.family.input_shape(arch))).astype(np.float32)
    from hwnas.devices import create_backend

    from hwnas.devices import load_device

    with create_backend(spec, model=path) as ref, create_backend(load_device("ort-cpu-1t"), model=path) as ort:
        assert np.abs(ref.infer(x) - ort.infer(x)).max() < 1e-4


def test_a_missing_capability_is_one_clear_error(tmp_path):
    """ofa_resnet50 declares no lookup table: asking for one names the family and what it has."""
    from hwnas.supernet.family import CapabilityError
    from hwnas.supernet.registry import get_family

    fam = get_family("ofa_resnet50")
    assert not fam.has("lut") and get_family("mbv3_fmnist").has("lut")
    with pytest.raises(CapabilityError, match=r"supernet ofa_resnet50 has no 'lut' capability.*its capabilities: none"):
        fam.lut_entries()
    from hwnas.predictors.lut import LatencyTable

    with pytest.raises(CapabilityError, match="no 'lut' capability"):
        LatencyTable("ofa_resnet50", {})
