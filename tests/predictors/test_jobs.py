"""fit_job / eval_job / predict_job over a real store (the tiny family's measurements, see conftest)."""

from __future__ import annotations

import numpy as np
import pytest

from hwnas.devices import Store
from hwnas.errors import PredictorError
from hwnas.predictors import eval_job, fit_job, load_predictor, predict_job

from predictors_support import NOOPT_DEVICE, STAT


def test_fit_and_eval_latency(measured, tmp_path):
    out = tmp_path / "xgb.json"
    res = fit_job(measured.store_path, "ort-cpu-1t", measured.config, kind="xgb", out=out, holdout=0.25,
                  params={"n_estimators": 200}, stat=STAT)
    assert res["kind"] == "xgb" and res["n_test"] == 9 and res["n_train"] == 27
    m = res["metrics"]
    assert {"rmse", "mape", "within_5", "within_10", "kendall_tau", "linear_macs", "rmse_constant"} <= set(m)
    assert m["kendall_tau"] > 0.5 and m["rmse"] < m["rmse_constant"]
    ev = eval_job(measured.store_path, out)
    assert ev["n_eval"] == 9 and ev["n_skipped_train"] == 27
    assert ev["metrics"]["kendall_tau"] == pytest.approx(m["kendall_tau"])
    assert eval_job(measured.store_path, out, include_train=True)["n_eval"] == 36
    pred = load_predictor(out)
    assert pred.meta_["fp_hash"] == measured.ort["fp_hash"] and len(pred.meta_["train_arch_ids"]) == 27
    archs = [measured.config.space.decode(v) for v in measured.ort["V"][:4]]
    assert np.array_equal(predict_job(out, archs), pred.predict(measured.ort["V"][:4]))


def test_fit_lut_and_transfer_jobs(measured, tmp_path):
    res = fit_job(measured.store_path, "ort-cpu-1t", measured.config, kind="lut", build_lut=False, holdout=0.25,
                  stat=STAT)
    assert res["metrics"]["kendall_tau"] > 0.5
    prior = tmp_path / "ort.json"
    fit_job(measured.store_path, "ort-cpu-1t", measured.config, kind="xgb", out=prior, holdout=0.25, stat=STAT)
    res = fit_job(measured.store_path, NOOPT_DEVICE.name, measured.config, kind="transfer", prior=prior,
                  max_train=12, holdout=0.5, out=tmp_path / "tr.json", stat=STAT)
    # 18 held-out sub-millisecond timings of another runtime: a loose bound, so machine noise cannot flake it
    assert res["n_train"] == 12 and res["n_test"] == 18 and res["metrics"]["kendall_tau"] > 0.1
    tr = load_predictor(tmp_path / "tr.json")
    assert tr.meta_["device"] == NOOPT_DEVICE.name and tr.prior.meta_["device"] == "ort-cpu-1t"
    assert eval_job(measured.store_path, tmp_path / "tr.json")["n_eval"] == 36 - 12


def test_job_errors(measured, tmp_path):
    with pytest.raises(PredictorError, match="no pred_tiny measurements of device ort-cpu"):
        fit_job(measured.store_path, "ort-cpu", measured.config)
    with pytest.raises(PredictorError, match="needs prior"):
        fit_job(measured.store_path, "ort-cpu-1t", measured.config, kind="transfer")
    with pytest.raises(PredictorError, match="does not predict accuracy"):
        fit_job(measured.store_path, None, measured.config, target="accuracy", kind="lut", supernet_hash="h0")
    with pytest.raises(PredictorError, match="does not exist"):
        fit_job(tmp_path / "none.sqlite", "ort-cpu-1t", measured.config)


def test_fit_accuracy_job(measured, tmp_path):
    """The accuracy path end to end: rows in the store's accuracies table, kind chosen by CV.

    The tiny family has no trained weights, so its 'accuracies' are a smooth function of size plus
    noise written for this test; the real figures come from ``bench/bench_predictors.py``.
    """
    store_path = tmp_path / "acc.sqlite"
    sp = measured.config.space
    rng = np.random.default_rng(0)
    archs = [sp.canonical(sp.sample(rng)) for _ in range(80)]
    V = np.stack([sp.encode(a) for a in archs])
    acc = 0.80 + 0.02 * np.log(measured.config.cost_vectors(V)["macs"] / 1e5) + rng.normal(0, 0.002, len(V))
    with Store(store_path) as store:
        for a, y in zip(archs, acc):
            store.add_accuracy("h0", sp.arch_id(a), "val", float(y), 1000, arch=a, supernet=measured.config.name)
    res = fit_job(store_path, None, measured.config, target="accuracy", kind="auto", supernet_hash="h0",
                  out=tmp_path / "acc.json", params={"mlp": {"n_ensemble": 1, "hidden": (32,), "max_iter": 200}, "xgb": {"n_estimators": 100}})
    assert res["kind"] in ("mlp", "xgb") and set(res["selection"]["cv"]) == {"mlp", "xgb"}
    assert res["metrics"]["kendall_tau"] > 0.5 and "mape" not in res["metrics"]
    ev = eval_job(store_path, tmp_path / "acc.json")
    assert ev["target"] == "accuracy" and ev["n_eval"] == res["n_test"]
    with pytest.raises(PredictorError, match="weights"):
        load_predictor(tmp_path / "acc.json", expect_supernet_hash="other")
    # the default kind for accuracy: trees on the one-hot encoding
    res = fit_job(store_path, None, measured.config, target="accuracy", supernet_hash="h0",
                  params={"xgb": {"n_estimators": 100}})
    assert res["kind"] == "xgb" and "selection" not in res and res["metrics"]["kendall_tau"] > 0.5
