"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors, --json."""

import json
import subprocess
import sys

import pytest
import torch

from hwnas.supernet.registry import create_supernet


def hwnas(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hwnas", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_help_lists_jobs():
    r = hwnas("--help")
    assert r.returncode == 0
    for job in ("profile", "search", "export", "supernets", "devices", "run"):
        assert job in r.stdout


def test_supernets_json():
    r = hwnas("supernets", "--json")
    assert r.returncode == 0
    names = {row["name"] for row in json.loads(r.stdout)}
    assert {"mbv3_fmnist", "ofa_mbv3_w1.0", "ofa_mbv3_w1.2"} <= names


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    r = hwnas("sample", "--which", "max", "-o", d / "max.json")
    assert r.returncode == 0, r.stderr
    arch = json.loads((d / "max.json").read_text())
    bad = dict(arch, ks=list(arch["ks"]))
    bad["ks"][3] = 4
    (d / "bad.json").write_text(json.dumps(bad))
    (d / "trunc.json").write_text(json.dumps(dict(arch, ks=arch["ks"][:5])))
    torch.save(create_supernet("ofa_mbv3_w1.0", pretrained=False).state_dict(), d / "imagenet.pt")
    return d


@pytest.mark.parametrize("args, needle", [
    (["--arch", "bad.json"], "arch field 'ks[3]' = 4 is not allowed; allowed: [3, 5, 7]"),
    (["--arch", "trunc.json"], "arch field 'ks' has 5 entries"),
    (["--arch", "max.json", "--weights", "missing.pt"], "weights file missing.pt does not exist"),
    (["--arch", "max.json", "--weights", "imagenet.pt"], "pass --supernet ofa_mbv3_w1.0"),
    (["--arch", "nothere.json"], "arch file nothere.json does not exist"),
])
def test_export_bad_input_is_one_line_exit_1(files, args, needle):
    r = hwnas("export", *args, "-o", "out.onnx", cwd=files)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwnas: error: "), r.stderr
    assert needle in lines[0]
    assert not (files / "out.onnx").exists() and not (files / "out.onnx.json").exists()


def test_export_onnx_json(files):
    r = hwnas("export", "--arch", "max.json", "-o", "m.onnx", "--json", cwd=files)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["output_check"]["max_abs_err"] < 1e-4
    assert (files / "m.onnx").is_file() and json.loads((files / "m.onnx.json").read_text())["arch_id"] == m["arch_id"]


def test_devices_and_profile_errors(files):
    r = hwnas("devices", "--json")
    assert r.returncode == 0
    rows = {d["name"]: d for d in json.loads(r.stdout)}
    assert rows["ort-cpu-1t"]["available"]
    (files / "garbage.onnx").write_bytes(b"garbage")
    r = hwnas("profile", "garbage.onnx", "--store", "s.sqlite", cwd=files)
    assert r.returncode == 1 and "not a valid ONNX model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = hwnas("profile", "-d", "nope", cwd=files)
    assert r.returncode == 1 and "choose one of" in r.stderr
