"""Every registered predictor on REAL measurements of a tiny family (see conftest), artifacts, transfer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwnas.errors import PredictorError
from hwnas.predictors import (
    create_predictor,
    list_predictors,
    load_predictor,
    read_header,
    save_predictor,
)
from hwnas.predictors.metrics import evaluate_kfold, holdout_split, kendall_tau, mape
from hwnas.predictors.lut import LatencyTable, load_table, save_table

# per-kind hyperparameters for ~24 training rows (defaults are tuned for hundreds)
PARAMS = {"mlp": {"features": "all", "n_ensemble": 3}, "xgb": {"n_estimators": 200}, "hybrid": {"n_estimators": 200}}


def make(kind: str, m):
    """An unfitted predictor of ``kind`` for the tiny family, with its table / prior where it needs one.

    The transfer prior uses no ORT-optimized whole-network measurement: it is the LUT with its offset
    fitted on the other device's networks (cross-device priors are tested in test_few_shot_transfer_*).
    """
    kw = dict(PARAMS.get(kind, {}))
    if kind in ("lut", "hybrid"):
        kw["table"] = m.table
    if kind == "transfer":
        src = m.noopt
        kw["prior"] = create_predictor("lut", supernet=m.config, table=m.table).fit(src["V"], src["y"])
    return create_predictor(kind, supernet=m.config, **kw)


@pytest.fixture(scope="module")
def split(measured):
    return holdout_split(len(measured.ort["y"]), 12, seed=0)


@pytest.mark.parametrize("kind", list_predictors("latency"))  # every kind fitted on latencies
def test_fit_predict_on_real_latencies(kind, measured, split):
    tr, te = split
    V, y = measured.ort["V"], measured.ort["y"]
    pred = make(kind, measured)
    assert pred.fit(V[tr], y[tr]) is pred
    assert pred.n_train_ == len(tr)
    p = pred.predict(V[te])
    assert p.shape == (len(te),) and np.all(np.isfinite(p)) and np.all(p > 0)
    # arch dicts and the gene matrix give the same predictions
    archs = [measured.config.space.decode(v) for v in V[te[:3]]]
    assert np.allclose(pred.predict(archs), p[:3])
    # quality: 3-fold out-of-fold predictions of all 36 subnets (steadier than a 12-subnet test set)
    m = evaluate_kfold(lambda: make(kind, measured), V, y, k=3, seed=0)
    assert m["kendall_tau"] > 0.5, (kind, m)
    assert m["rmse"] < np.std(y), (kind, m)  # better than a constant


@pytest.mark.parametrize("kind", list_predictors("latency"))  # every kind fitted on latencies
def test_artifact_roundtrip_and_refusals(kind, measured, split, tmp_path):
    tr, _ = split
    V, y = measured.ort["V"], measured.ort["y"]
    pred = make(kind, measured).fit(V[tr], y[tr])
    meta = {"device": "ort-cpu-1t", "fp_hash": measured.ort["fp_hash"], "fingerprint": measured.ort["fingerprint"],
            "metrics": {"kendall_tau": 0.9}, "supernet_hash": "abc123"}
    path = save_predictor(pred, tmp_path / "art", meta)
    assert path.name == "predictor.json" and not list(tmp_path.glob("art/.*part"))
    text = path.read_text()
    assert "pickle" not in text.lower()
    header = read_header(path)
    assert header["kind"] == kind and header["supernet"] == measured.config.name
    assert header["fp_hash"] == measured.ort["fp_hash"] and header["n_train"] == len(tr)
    assert header["fingerprint"]["fp_hash"] == measured.ort["fp_hash"]

    again = load_predictor(path, expect_supernet=measured.config.name, expect_fp_hash=measured.ort["fp_hash"],
                           expect_supernet_hash="abc123")
    assert type(again) is type(pred)
    assert np.array_equal(again.predict(V), pred.predict(V))  # bit-identical
    assert again.meta_["device"] == "ort-cpu-1t"

    with pytest.raises(PredictorError, match="supernet pred_tiny, not mbv3_fmnist"):
        load_predictor(path, expect_supernet="mbv3_fmnist")
    with pytest.raises(PredictorError, match="fingerprint"):
        load_predictor(path, expect_fp_hash="000000000000")
    with pytest.raises(PredictorError, match="weights"):
        load_predictor(path, expect_supernet_hash="other")
    d = json.loads(text)
    d["feature_version"] = 999
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(PredictorError, match="feature version 999"):
        load_predictor(bad)


def test_registered_family_layout_is_checked(tmp_path):
    """An artifact of a registered family whose layout changed since is refused, in one line."""
    from hwnas.supernet.registry import get_family

    cfg = get_family("mbv3_fmnist")
    X = np.random.default_rng(0).integers(0, cfg.space.vector_upper + 1, size=(40, cfg.space.vector_length))
    y = 0.05 + cfg.cost_vectors(X)["macs"] / 1e8  # any target: this tests the artifact, not accuracy
    path = save_predictor(create_predictor("linear").fit(X, y), tmp_path / "lin.json", {"fp_hash": "f"})
    assert np.array_equal(load_predictor(path, expect_supernet="mbv3_fmnist").predict(X),
                          create_predictor("linear").fit(X, y).predict(X))
    d = json.loads(path.read_text())
    d["supernet_config"]["stage_widths"][0] = 32
    path.write_text(json.dumps(d))
    with pytest.raises(PredictorError, match="different layout of supernet mbv3_fmnist") as exc:
        load_predictor(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(PredictorError, match="not a hwnas predictor"):
        (tmp_path / "x.json").write_text("{}")
        load_predictor(tmp_path / "x.json")
    with pytest.raises(PredictorError, match="does not exist"):
        load_predictor(tmp_path / "missing.json")


def test_unfitted_and_bad_inputs(measured):
    pred = create_predictor("xgb", supernet=measured.config)
    with pytest.raises(PredictorError, match="not fitted"):
        pred.predict(measured.ort["V"][:2])
    with pytest.raises(PredictorError, match="2 values"):
        pred.fit(measured.ort["V"][:3], [1.0, 2.0])
    with pytest.raises(KeyError, match="choose one of"):
        create_predictor("nope")


def test_lut_table(measured):
    m = measured
    entries = m.config.lut_entries()
    assert m.table.n_missing == 0 and len(m.table.values) == len(entries)
    assert len(entries) == 3 * 2 * 2 * 2 * 2 + 2 + 2  # stages x (first, rest) x ks x e x r + stems + heads
    s = m.table.sum_vectors(m.ort["V"])
    assert kendall_tau(m.ort["y"], s) > 0.5
    again = LatencyTable.from_state(json.loads(json.dumps(m.table.to_state(), default=list)), m.config)
    assert np.array_equal(again.sum_vectors(m.ort["V"]), s)
    with pytest.raises(PredictorError, match="another family"):
        LatencyTable(m.config, {"mb-bogus": 1.0})


def test_lut_file_roundtrip(measured, tmp_path):
    m = measured
    path = save_table(m.table, tmp_path / "lut.json")
    doc = json.loads(path.read_text())
    assert doc["fp_hash"] == m.ort["fp_hash"] and len(doc["entries"]) == len(m.table.values)
    assert {"key", "kind", "size", "ms"} <= set(doc["entries"][0])
    again = load_table(path, expect_supernet=m.config.name, expect_fp_hash=m.ort["fp_hash"])
    assert np.array_equal(again.values, m.table.values)
    with pytest.raises(PredictorError, match="not mbv3_fmnist"):
        load_table(path, expect_supernet="mbv3_fmnist")
    with pytest.raises(PredictorError, match="fingerprint"):
        load_table(path, expect_fp_hash="000000000000")


def test_lut_build_is_resumable(measured):
    from hwnas.devices import Store, load_device
    from hwnas.predictors.lut import build_latency_table

    from predictors_support import FAST

    with Store(measured.store_path) as store:
        table, summary = build_latency_table(measured.config, load_device("ort-cpu-1t"), store, settings=FAST)
    assert summary["measured"] == 0 and summary["skipped"] == len(table.values)
    assert np.array_equal(table.values, measured.table.values)


@pytest.mark.parametrize("n_shots", [10, 20])
def test_few_shot_transfer_beats_the_raw_prior(measured, n_shots):
    """ORT (optimized graph) prior -> ORT without graph optimizations, from 10/20 measurements."""
    src, dst = measured.ort, measured.noopt
    assert np.array_equal(src["V"], dst["V"])  # the same archs, measured in the same order
    prior = create_predictor("xgb", supernet=measured.config, n_estimators=200).fit(src["V"], src["y"])
    tr, te = holdout_split(len(dst["y"]), len(dst["y"]) - n_shots, seed=1)
    pred = create_predictor("transfer", supernet=measured.config, prior=prior).fit(dst["V"][tr], dst["y"][tr])
    p, raw = pred.predict(dst["V"][te]), prior.predict(dst["V"][te])
    # the two runtimes rank subnets differently (tau ~0.65 between them), so the ranking bar is lower here
    assert kendall_tau(dst["y"][te], p) > 0.4
    assert mape(dst["y"][te], p) < 0.8 * mape(dst["y"][te], raw)


def test_big_batch_prediction(measured):
    sp = measured.config.space
    X = np.random.default_rng(0).integers(0, sp.vector_upper + 1, size=(20_000, sp.vector_length))
    pred = make("xgb", measured).fit(measured.ort["V"], measured.ort["y"])
    out = pred.predict(X)
    assert out.shape == (20_000,) and np.all(np.isfinite(out))
