"""Fingerprints: recorded facts and a hash that tracks exactly what latency depends on."""

from __future__ import annotations

import os

from hwnas.devices import host_info, load_device, make_fingerprint
from hwnas.devices.backends import fingerprint_for
from hwnas.devices.spec import DeviceSpec


def test_host_info_fields() -> None:
    h = host_info()
    assert h["cpu_model"] and isinstance(h["cpu_model"], str)
    assert h["logical_cores"] == os.cpu_count()
    assert 1 <= h["physical_cores"] <= h["logical_cores"]
    assert 1 <= h["usable_cpus"] <= h["logical_cores"]
    assert h["os"] and h["python"].count(".") == 1
    assert "numpy" in h["libs"] and "onnxruntime" in h["libs"]
    assert "governor" in h and "gpu" in h


def test_spec_fingerprint_is_stable_and_sensitive() -> None:
    a = fingerprint_for(load_device("ort-cpu-1t"))
    assert a.fp_hash == fingerprint_for(load_device("ort-cpu-1t")).fp_hash
    assert len(a.fp_hash) == 12
    assert a.runtime["intra_op_threads"] == 1 and a.runtime["provider"] == "CPUExecutionProvider"
    assert a.runtime["batch"] == 1 and a.runtime["precision"] == "fp32" and a.runtime["backend"] == "ort"
    assert fingerprint_for(load_device("ort-cpu")).fp_hash != a.fp_hash  # threads differ
    b4 = DeviceSpec(name="x", backend="ort", batch=4, options=dict(load_device("ort-cpu-1t").options))
    assert fingerprint_for(b4).fp_hash != a.fp_hash
    assert a.to_dict()["fp_hash"] == a.fp_hash


def test_hash_ignores_hostname_but_not_hardware() -> None:
    rt = {"backend": "ort", "threads": 1}
    h = dict(host_info())
    base = make_fingerprint(rt, h).fp_hash
    assert make_fingerprint(rt, {**h, "hostname": "other-box", "os_release": "9.9"}).fp_hash == base
    assert make_fingerprint(rt, {**h, "libs": {**h["libs"], "numpy": "0.0"}}).fp_hash == base
    assert make_fingerprint(rt, {**h, "cpu_model": "Other CPU"}).fp_hash != base
    assert make_fingerprint(rt, {**h, "libs": {**h["libs"], "onnxruntime": "0.0"}}).fp_hash != base
