"""Search outputs: CSV/JSON fronts, best.json readable by load_arch_file, the PNG, the table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hwnas.archsearch import closed_loop_search, encode_archs, format_table, write_outputs
from hwnas.supernet.family import load_arch_file
from search_fixtures import RidgeLatency


@pytest.fixture(scope="module")
def result(space, config, predict_accuracy, latency_data):
    X, y = latency_data
    pred = RidgeLatency(config).fit(X, y)
    device = lambda archs: list(pred(encode_archs(space, archs)) * 1.1)  # noqa: E731
    return closed_loop_search(space, predict_accuracy, pred, None, device, float(np.quantile(y, 0.5)),
                              rounds=2, pop_size=16, n_gen=6, n_verify=4, seed=0, device="ort-cpu-1t")


def test_write_outputs(result, tmp_path, space) -> None:
    paths = write_outputs(result, tmp_path / "out")
    names = {p.split("/")[-1] for p in paths.values()}
    assert names == {"front.csv", "front.json", "measured.csv", "result.json", "best.json", "summary.txt", "pareto.png"}
    assert not list((tmp_path / "out").glob("*.part"))  # atomic: no temp files left

    with open(paths["front_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.front)
    assert {"arch_id", "predicted_accuracy", "predicted_latency_ms", "measured_latency_ms", "chosen", "arch"} <= set(rows[0])
    for row, p in zip(rows, result.front):
        assert row["arch_id"] == p.arch_id == space.arch_id(json.loads(row["arch"]))
        assert float(row["predicted_latency_ms"]) == pytest.approx(p.predicted_latency_ms)
    fj = json.loads(open(paths["front_json"]).read())
    assert fj["budget_ms"] == result.budget_ms and len(fj["front"]) == len(result.front)
    assert any(r["measured_latency_ms"] is not None for r in fj["front"])

    best = json.loads(open(paths["best_json"]).read())
    assert best["arch_id"] == result.best.arch_id and best["supernet"] == "mbv3_fmnist"
    assert best["measured_latency_ms"] <= best["budget_ms"]
    arch = load_arch_file(paths["best_json"])
    assert space.arch_id(space.normalize(arch)) == result.best.arch_id

    png = open(paths["plot"], "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    res = json.loads(open(paths["result_json"]).read())
    assert res["best"]["arch_id"] == result.best.arch_id and len(res["rounds"]) == 2
    with open(paths["measured_csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(result.measured)

    # rewriting over existing outputs works
    write_outputs(result, tmp_path / "out", plot=False)


def test_format_table(result) -> None:
    text = format_table(result)
    assert result.best.arch_id in text and "budget" in text and "ms" in text
    assert len(text.splitlines()) < 40
