"""The main job end to end on a small sample (slow: profiles, searches, quantizes for real)."""

import json
from pathlib import Path

import pytest

import hwnas


@pytest.mark.slow
def test_main_job_small_and_rerun_reuses_measurements(tmp_path):
    s = hwnas.run(tmp_path, samples=12, rounds=1, time_cap_s=0.2, log=lambda m: None)
    assert s["best"]["measured_latency_ms"] <= s["budget_ms"]
    for key in ("onnx", "engine", "engine_manifest", "plot", "best_json", "front_csv"):
        assert Path(s["files"][key]).is_file(), key
    assert json.loads((tmp_path / "summary.json").read_text())["budget_ms"] == s["budget_ms"]
    again = hwnas.run(tmp_path, samples=12, rounds=1, time_cap_s=0.2, log=lambda m: None)
    assert again["profile"]["measured"] == 0 and again["profile"]["skipped"] == 12
