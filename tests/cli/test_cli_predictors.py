"""``hwnas predictor predict`` and ``hwnas search`` driven by given predictor artifacts, as a user runs them."""

import json
import subprocess
import sys

import numpy as np

from hwnas.predictors import load_predictor
from hwnas.resources import shipped_predictors_dir

SHIPPED = shipped_predictors_dir("mbv3_fmnist")


def hwnas(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hwnas", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_predictor_predict_matches_the_artifact(tmp_path):
    r = hwnas("sample", "--which", "random", "--seed", "3", "-o", tmp_path / "a.json")
    assert r.returncode == 0, r.stderr
    arch = json.loads((tmp_path / "a.json").read_text())
    for name, unit in (("ort-cpu-1t.xgb.json", "ms"), ("ort-cpu-1t-b8.transfer.json", "ms"), ("accuracy.json", "top-1")):
        r = hwnas("predictor", "predict", SHIPPED / name, "--arch", tmp_path / "a.json", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        want = float(load_predictor(SHIPPED / name).predict([arch])[0])
        assert out["unit"] == unit and np.isclose(out["values"][0], want, rtol=0, atol=1e-12)
    r = hwnas("predictor", "predict", SHIPPED / "accuracy.json", "--arch", tmp_path / "a.json")
    assert r.returncode == 0 and "predicted accuracy" in r.stdout and "% top-1" in r.stdout


def test_search_with_given_predictors_and_no_profile(tmp_path):
    """A shipped latency predictor drives the search on a store with no rows yet; the loop measures
    its candidates on the device and, in the second round, corrects the predictor on them (transfer fit)."""
    out = tmp_path / "search"
    r = hwnas("search", "--device", "ort-cpu-1t", "--store", tmp_path / "store.sqlite", "--rounds", "2",
              "--latency-predictor", SHIPPED / "ort-cpu-1t.xgb.json", "--accuracy-predictor",
              SHIPPED / "accuracy.json", "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["latency_predictor"]["source"].endswith("ort-cpu-1t.xgb.json")
    assert res["best"]["measured_latency_ms"] <= res["budget_ms"] and res["archs_predicted"] > 1000
    assert (out / "best.json").is_file() and (out / "pareto.png").is_file()
    assert not (out / "predictors").exists()  # nothing was fitted, so nothing to keep


def test_search_refuses_a_predictor_of_another_family_and_writes_nothing(tmp_path):
    out = tmp_path / "search"
    r = hwnas("search", "--supernet", "ofa_mbv3_w1.0", "--store", tmp_path / "store.sqlite",
              "--latency-predictor", SHIPPED / "ort-cpu-1t.xgb.json", "--accuracy-predictor",
              SHIPPED / "accuracy.json", "-o", out)
    assert r.returncode == 1
    assert r.stderr.startswith("hwnas: error:") and len(r.stderr.strip().splitlines()) == 1
    assert "mbv3_fmnist" in r.stderr and "ofa_mbv3_w1.0" in r.stderr
    assert not out.exists()
