"""The main job end to end on a small sample (slow: profiles, searches, quantizes for real)."""

import json
from pathlib import Path

import pytest

import hwnas


@pytest.mark.slow
def test_main_job_small_and_rerun_reuses_measurements(tmp_path):
    s = hwnas.run(tmp_path, samples=12, rounds=1, time_cap_s=0.2, log=lambda m: None)
    b = s["best"]
    # the answer was confirmed in a fresh session, and the shipped file timed on the same anchored scale:
    # the same graph (export only recalibrates BN), so the two agree
    assert b["confirmed_ci95_ms"][0] <= b["confirmed_latency_ms"] <= b["confirmed_ci95_ms"][1]
    assert b["confirmed_within_budget"] == (b["confirmed_ci95_ms"][1] <= s["budget_ms"])
    sh = b["shipped_onnx"]
    assert sh["scale"] == "anchored" and sh["file"] == s["files"]["onnx"]
    assert 0.85 < sh["median_ms"] / b["confirmed_latency_ms"] < 1.15
    assert sh["at_current_speed_ms"] == pytest.approx(sh["anchor_ratio"] * sh["anchor_now_ms"])
    for key in ("onnx", "engine", "engine_manifest", "plot", "best_json", "front_csv"):
        assert Path(s["files"][key]).is_file(), key
    assert json.loads((tmp_path / "summary.json").read_text())["budget_ms"] == s["budget_ms"]
    again = hwnas.run(tmp_path, samples=12, rounds=1, time_cap_s=0.2, log=lambda m: None)
    assert again["profile"]["measured"] == 0 and again["profile"]["skipped"] == 12
