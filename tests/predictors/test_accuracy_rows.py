"""User-supplied (arch, accuracy) rows: CSV and JSON files read with ``read_accuracy_rows``, fitted with
``fit_job(rows=...)`` / ``hwnas.fit_predictor`` / ``hwnas predictor fit --rows``, and one line for every
bad file.

The rows are a known function of the arch: a monotone function of the family's MACs plus small noise,
so a fitted predictor has to rank the held-out rows well (Kendall tau well above 0).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hwnas.errors import DataError, HwnasError, PredictorError
from hwnas.predictors import holdout_split, load_predictor
from hwnas.predictors.jobs import fit_job
from hwnas.predictors.rows import read_accuracy_rows
from hwnas.supernet.registry import get_family

FAM = "ofa_mbv3_w1.0"
NO_STORE = "/nonexistent/store.sqlite"  # rows files replace the store: it is never read
FAST_XGB = {"features": "all"}  # the one-hot plus analytic features (MACs among them)


def make_rows(n: int = 200, seed: int = 0, family: str = FAM) -> tuple[list[dict], np.ndarray]:
    fam = get_family(family)
    sp = fam.space
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    while len(archs) < n:
        a = sp.canonical(sp.sample(rng))
        if sp.arch_id(a) not in seen:
            seen.add(sp.arch_id(a))
            archs.append(a)
    macs = fam.cost_vectors(sp.canonicalize(sp.encode_many(archs)))["macs"]
    z = np.log(macs)
    acc = 0.6 + 0.2 * (z - z.min()) / np.ptp(z) + rng.normal(0.0, 0.004, n)
    return archs, acc


def write_csv(path: Path, archs, acc, col: str = "accuracy", scale: float = 1.0) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch_id", "arch", col, "latency_ms"])
        for i, (a, y) in enumerate(zip(archs, acc)):
            w.writerow([f"a{i}", json.dumps(a), repr(float(y) * scale), "1.0"])
    return path


@pytest.fixture(scope="module")
def rows():
    return make_rows()


# ---------------------------------------------------------------------------------- reading
def test_csv_percent_rows_read_as_fractions(tmp_path, rows):
    archs, acc = rows
    V, y, info = read_accuracy_rows(write_csv(tmp_path / "r.csv", archs, acc, col="top1", scale=100.0), FAM)
    sp = get_family(FAM).space
    np.testing.assert_array_equal(V, sp.canonicalize(sp.encode_many(archs)))
    np.testing.assert_allclose(y, acc, rtol=0, atol=1e-12)
    assert info["percent"] and "percentages" in info["note"] and info["accuracy_column"] == "top1"
    assert info["format"] == "csv" and info["n_rows"] == info["n_archs"] == len(archs)
    assert info["arch_ids"] == [sp.arch_id(a) for a in archs]


@pytest.mark.parametrize("shape", ["list", "rows", "inline_fields", "ofa_spelling"])
def test_json_rows(tmp_path, rows, shape):
    archs, acc = rows
    archs, acc = archs[:20], acc[:20]
    if shape == "inline_fields":
        data = [{**a, "acc": float(y)} for a, y in zip(archs, acc)]
    elif shape == "ofa_spelling":  # OFA's own dicts: resolution as image_size
        data = [{"arch": {"ks": a["ks"], "e": a["e"], "d": a["d"], "image_size": a["r"]}, "accuracy": float(y)}
                for a, y in zip(archs, acc)]
    else:
        data = [{"arch": a, "accuracy": float(y), "latency_ms": 3.0} for a, y in zip(archs, acc)]
    if shape == "rows":
        data = {"rows": data, "source": "my eval"}
    p = tmp_path / "rows.json"
    p.write_text(json.dumps(data))
    _, y, info = read_accuracy_rows(p, FAM)
    assert info["format"] == "json" and not info["percent"] and len(y) == 20
    np.testing.assert_array_equal(y, acc)


def test_csv_with_one_column_per_arch_field_and_merged_duplicates(tmp_path, rows):
    archs, acc = rows
    p = tmp_path / "fields.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ks", "e", "d", "r", "Accuracy"])
        for a, y in list(zip(archs[:10], acc[:10])) + [(archs[3], acc[3])]:
            w.writerow([json.dumps(a["ks"]), json.dumps(a["e"]), json.dumps(a["d"]), a["r"], float(y)])
    _, y, info = read_accuracy_rows(p, FAM)
    assert len(y) == 10 and info["n_rows"] == 11 and info["n_merged"] == 1 and "merged" in info["note"]


def _bad_cases(tmp_path: Path, archs, acc) -> dict[str, tuple[Path, str]]:
    a0 = json.dumps(archs[0])
    bad_arch = dict(archs[1], ks=[4] + archs[1]["ks"][1:])
    # two spellings of one network: they differ only in a block slot beyond its stage's depth
    shallow = dict(archs[0], d=[2] * 5)
    twin = dict(shallow, ks=list(shallow["ks"]))
    twin["ks"][3] = 7 if twin["ks"][3] != 7 else 5
    cases: dict[str, tuple[str, str, str]] = {
        "outside_space": ("csv", (f'arch,accuracy\n"{a0.replace(chr(34), 2 * chr(34))}",0.7\n'
                                  f'"{json.dumps(bad_arch).replace(chr(34), 2 * chr(34))}",0.7\n'),
                          r"row 2 \(line 3\): arch field 'ks\[0\]' = 4 is not allowed"),
        "missing_accuracy": ("json", json.dumps([{"arch": archs[0], "accuracy": 0.7}, {"arch": archs[1]}]),
                             "row 2: has no accuracy"),
        "empty_accuracy": ("csv", f'arch,accuracy\n"{a0.replace(chr(34), 2 * chr(34))}",\n', "row 1.*accuracy missing"),
        "non_numeric": ("json", json.dumps([{"arch": archs[0], "accuracy": "high"}]), "row 1: accuracy 'high' is not a number"),
        "bool_accuracy": ("json", json.dumps([{"arch": archs[0], "accuracy": True}]), "row 1: accuracy True is not a number"),
        "nan": ("csv", f'arch,accuracy\n"{a0.replace(chr(34), 2 * chr(34))}",nan\n', "row 1.*accuracy is nan"),
        "negative": ("json", json.dumps([{"arch": archs[0], "accuracy": -0.1}]), r"row 1: accuracy -0.1 is outside \[0, 1\]"),
        "mixed_scales": ("json", json.dumps([{"arch": archs[0], "accuracy": 0.71}, {"arch": archs[1], "accuracy": 72.5}]),
                         "row 2: accuracy 72.5 is outside.*row 1 has 0.71"),
        "duplicate": ("json", json.dumps([{"arch": shallow, "accuracy": 0.7}, {"arch": archs[2], "accuracy": 0.6},
                                          {"arch": twin, "accuracy": 0.72}]),
                      "row 3: repeats the arch of row 1.*0.72 vs 0.7"),
        "empty_file": ("csv", "", "is empty"),
        "header_only": ("csv", "arch,accuracy\n", "has no rows"),
        "empty_json_list": ("json", "[]", "has no rows"),
        "no_accuracy_column": ("csv", f'arch,loss\n"{a0.replace(chr(34), 2 * chr(34))}",0.7\n', "line 1: .*no accuracy column"),
        "no_arch_column": ("csv", "name,accuracy\nx,0.7\n", "line 1: .*no 'arch' column"),
        "unquoted_json": ("csv", f"arch,accuracy\n{a0},0.7\n", "row 1 \\(line 2\\): has more fields.*quote the arch JSON"),
        "bad_arch_json": ("csv", 'arch,accuracy\n"{ks: 3}",0.7\n', "row 1 \\(line 2\\): the arch is not valid JSON"),
        "bad_json_file": ("json", '[{"arch": {}, "accuracy": 0.7},', "line 1: is not valid JSON"),
        "json_not_a_list": ("json", '{"arch": {}}', "holds a JSON dict"),
        "arch_not_object": ("json", json.dumps([{"arch": [1, 2], "accuracy": 0.7}]), "row 1: arch must be a JSON object"),
    }
    out = {}
    for name, (ext, text, match) in cases.items():
        p = tmp_path / f"{name}.{ext}"
        p.write_text(text)
        out[name] = (p, match)
    out["missing_file"] = (tmp_path / "nope.csv", "does not exist")
    (tmp_path / "latin1.csv").write_bytes("arch,accuracy\n\xe9\n".encode("latin-1"))
    out["not_utf8"] = (tmp_path / "latin1.csv", "is not UTF-8")
    return out


BAD = ["outside_space", "missing_accuracy", "empty_accuracy", "non_numeric", "bool_accuracy", "nan", "negative",
       "mixed_scales", "duplicate", "empty_file", "header_only", "empty_json_list", "no_accuracy_column",
       "no_arch_column", "unquoted_json", "bad_arch_json", "bad_json_file", "json_not_a_list", "arch_not_object",
       "missing_file", "not_utf8"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, rows):
    return _bad_cases(tmp_path_factory.mktemp("bad_rows"), *rows)


@pytest.mark.parametrize("name", BAD)
def test_bad_rows_file_is_one_line(bad, name):
    path, match = bad[name]
    with pytest.raises(DataError, match=match) as e:
        read_accuracy_rows(path, FAM)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg


# ---------------------------------------------------------------------------------- fitting
def test_fit_job_on_csv_rows_ranks_held_out_rows(tmp_path, rows):
    archs, acc = rows
    p = write_csv(tmp_path / "r.csv", archs, 100 * acc, col="top1")
    res = fit_job(NO_STORE, supernet=FAM, target="accuracy", kind="xgb", rows=p, out=tmp_path / "acc.json",
                  params=FAST_XGB)
    assert res["n_rows"] == 200 and res["n_test"] == 40 and res["n_train"] == 160
    m = res["metrics"]
    assert m["n"] == 40 and m["kendall_tau"] > 0.6 and m["rmse"] < 0.5 * m["rmse_constant"]
    assert "mape" not in m  # accuracy metrics, as for the store's rows
    assert res["rows"] == str(p) and res["rows_info"]["percent"]
    # the same seeded split as store rows: the artifact lists the train split's arch ids
    sp = get_family(FAM).space
    tr, te = holdout_split(200, 0.2, 0)
    pred = load_predictor(res["out"], expect_supernet=FAM, expect_target="accuracy")
    assert pred.meta_["train_arch_ids"] == [sp.arch_id(archs[i]) for i in tr]
    assert pred.meta_["supernet_hash"] is None and str(p) in pred.meta_["notes"]
    held = [archs[i] for i in te]
    assert np.isclose(np.sqrt(np.mean((pred.predict(held) - acc[te]) ** 2)), m["rmse"], rtol=1e-9)


def test_fit_predictor_passes_rows_through(tmp_path, rows):
    import hwnas

    archs, acc = rows
    p = tmp_path / "r.json"
    p.write_text(json.dumps([{"arch": a, "accuracy": float(y)} for a, y in zip(archs, acc)]))
    r = hwnas.fit_predictor(NO_STORE, target="accuracy", supernet=FAM, kind="mlp", rows=p,
                            params={"n_ensemble": 1, "max_iter": 200})
    assert r.kind == "mlp" and r.n_test == 40 and r.metrics["kendall_tau"] > 0.6
    assert r["rows_info"]["format"] == "json"


def test_rows_are_for_accuracy_only(tmp_path, rows):
    p = write_csv(tmp_path / "r.csv", *rows)
    with pytest.raises(PredictorError, match="rows files hold \\(arch, accuracy\\) rows"):
        fit_job(NO_STORE, device="ort-cpu-1t", supernet=FAM, target="latency", rows=p)
    with pytest.raises(PredictorError, match="at least 5"):
        fit_job(NO_STORE, supernet=FAM, target="accuracy", rows=write_csv(tmp_path / "few.csv", rows[0][:3], rows[1][:3]))
    with pytest.raises(PredictorError, match="cannot be fitted"):
        fit_job(NO_STORE, supernet=FAM, target="accuracy", kind="ofa_mlp", rows=p)


def test_rows_of_another_family_are_refused(tmp_path):
    archs, acc = make_rows(10, family="mbv3_fmnist")
    with pytest.raises(HwnasError, match=r"row 1 \(line 2\): arch field 'ks' has 12 entries"):
        fit_job(NO_STORE, supernet=FAM, target="accuracy", rows=write_csv(tmp_path / "fm.csv", archs, acc))


# ---------------------------------------------------------------------------------- the CLI
def hwnas_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hwnas", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_predictor_fit_rows(tmp_path, rows, bad):
    archs, acc = make_rows(250, seed=1)
    p = write_csv(tmp_path / "rows.csv", archs, acc, scale=100.0)
    out = tmp_path / "out.json"
    r = hwnas_cli("predictor", "fit", "--target", "accuracy", "--rows", p, "--supernet", FAM, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["kind"] == "xgb" and res["n_test"] == 50 and res["metrics"]["kendall_tau"] > 0.4
    assert res["rows_info"]["percent"] and out.is_file()
    assert load_predictor(out, expect_supernet=FAM).predict(archs[:3]).shape == (3,)
    r = hwnas_cli("predictor", "fit", "--target", "accuracy", "--rows", bad["duplicate"][0], "--supernet", FAM,
                  "-o", tmp_path / "bad.json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("hwnas: error: rows file")
    assert "row 3" in r.stderr and not (tmp_path / "bad.json").exists()
