"""Profiling jobs: one ONNX file, a resumable list of archs, kill -9 safety, stratified sampling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from devices_onnx_models import build_convnet
from hwnas.devices import ProtocolSettings, Store, load_device, profile_archs, profile_onnx_file, stratified_sample
from hwnas.devices.backends import ModelKindError
from hwnas.devices.profile import ProfileError, visit_settings
from hwnas.errors import ModelFileError, StoreError
from hwnas.supernet.families.mbv3 import ArchSpace

HERE = Path(__file__).resolve().parent
FAST = ProtocolSettings(warmup_runs=3, warmup_s=0.01, min_runs=10, time_cap_s=0.2)


def test_profile_onnx_file(tiny_onnx: Path, tmp_path: Path) -> None:
    out = profile_onnx_file(tiny_onnx, "ort-cpu-1t", time_cap_s=0.3)
    m = out["measurement"]
    assert m["median_ms"] > 0 and m["n"] >= 30 and out["settings"]["time_cap_s"] == 0.3
    assert out["device"] == "ort-cpu-1t" and len(out["fingerprint"]["fp_hash"]) == 12
    with Store(tmp_path / "s.sqlite") as st:
        out = profile_onnx_file(tiny_onnx, load_device("ort-cpu-1t"), settings=FAST, store=st)
        rows = st.measurements()
        assert len(rows) == 1 and rows[0]["arch_id"] == out["arch_id"] and rows[0]["device"] == "ort-cpu-1t"


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "empty", "directory"])
def test_profile_onnx_file_bad_files(tmp_path: Path, medium_onnx: Path, kind: str) -> None:
    p = tmp_path / "m.onnx"
    if kind == "garbage":
        p.write_bytes(os.urandom(2048))
    elif kind == "truncated":
        data = medium_onnx.read_bytes()
        p.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "directory":
        p.mkdir()
    with pytest.raises(ModelFileError) as ei:
        profile_onnx_file(p, "ort-cpu-1t")
    msg = str(ei.value)
    assert str(p) in msg and "\n" not in msg


def test_profile_onnx_file_on_torch_device(tiny_onnx: Path) -> None:
    with pytest.raises(ModelKindError, match="`ort`"):
        profile_onnx_file(tiny_onnx, "torch-cpu")


def _models(tmp_path: Path, n: int) -> dict[str, Path]:
    d = tmp_path / "models"
    d.mkdir(exist_ok=True)
    return {f"a{i:02d}": build_convnet(d / f"a{i:02d}.onnx", channels=4 + 2 * i, size=12, seed=i) for i in range(n)}


def test_profile_archs_resumes_and_reports(tmp_path: Path) -> None:
    models = _models(tmp_path, 4)
    archs = [(aid, {"id": aid}) for aid in models]
    build = lambda arch: (models[arch["id"]], None)  # noqa: E731
    events = []
    with Store(tmp_path / "s.sqlite") as st:
        first = profile_archs(st, "ort-cpu-1t", archs[:2], build, "toy", settings=FAST, progress=events.append)
        assert first["measured"] == 2 and first["skipped"] == 0 and first["failed"] == []
        assert first["overhead"] >= 1.0 and first["subnets_per_min"] > 0 and first["timed_s"] > 0
        assert [e.status for e in events] == ["measured", "measured"] and events[-1].done == events[-1].total == 2
        second = profile_archs(st, "ort-cpu-1t", archs + archs[:1], build, "toy", settings=FAST)
        assert second["requested"] == 4 and second["skipped"] == 2 and second["measured"] == 2
        rows = st.measurements(supernet="toy")
        assert sorted(r["arch_id"] for r in rows) == sorted(models)
        assert rows[0]["arch"] == {"id": "a00"} and all(r["fp_hash"] == first["fp_hash"] for r in rows)
        third = profile_archs(st, "ort-cpu-1t", archs, build, "toy", settings=FAST)
        assert third["measured"] == 0 and third["skipped"] == 4 and third["overhead"] is None


def test_profile_archs_notes_failures_and_goes_on(tmp_path: Path) -> None:
    models = _models(tmp_path, 2)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")

    def build(arch: dict):
        return (bad if arch["id"] == "bad" else models[arch["id"]]), None

    archs = [("a00", {"id": "a00"}), ("bad", {"id": "bad"}), ("a01", {"id": "a01"})]
    with Store(tmp_path / "s.sqlite") as st:
        out = profile_archs(st, "ort-cpu-1t", archs, build, "toy", settings=FAST)
        assert out["measured"] == 2 and [f["arch_id"] for f in out["failed"]] == ["bad"]
        assert len(st.measurements()) == 2


def test_profile_archs_torch_modules_and_delete(tmp_path: Path) -> None:
    import torch

    def build(arch: dict):
        return torch.nn.Sequential(torch.nn.Conv2d(1, arch["c"], 3), torch.nn.ReLU()), (1, 1, 16, 16)

    with Store(tmp_path / "s.sqlite") as st:
        out = profile_archs(st, "torch-cpu", [("c4", {"c": 4}), ("c8", {"c": 8})], build, "toy", settings=FAST)
        assert out["measured"] == 2
    models = _models(tmp_path, 1)
    with Store(tmp_path / "t.sqlite") as st:
        profile_archs(st, "ort-cpu-1t", [("a00", {})], lambda a: (models["a00"], None), "toy", settings=FAST,
                      delete_models=True)  # fmt: skip
    assert not models["a00"].exists()


def _rows(store: Path) -> list[dict]:
    with Store(store) as st:
        return st.measurements()


def _kill9_after(cmd: list[str], n: int, settle_s: float = 0.0) -> list[str]:
    """Run the profiling child ``cmd``, kill -9 it once ``n`` archs have finished (``settle_s`` later);
    returns the arch ids it reported finished."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    finished = []
    for line in proc.stdout:
        finished.append(line.split()[1])
        if len(finished) == n:
            time.sleep(settle_s)
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    return finished


def test_kill9_mid_run_then_resume(tmp_path: Path) -> None:
    """kill -9 while profiling, restart: every arch once, nothing measured twice, nothing lost."""
    models = _models(tmp_path, 6)
    store = tmp_path / "kill.sqlite"
    cmd = [sys.executable, str(HERE / "devices_profile_child.py"), str(store), str(tmp_path / "models"), "0.25"]
    finished = _kill9_after(cmd, 2, settle_s=0.1)  # 0.1 s: now inside the third measurement
    before = {r["arch_id"]: r["created_at"] for r in _rows(store)}
    assert set(finished) <= set(before) and len(before) < len(models)

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert sum(line.startswith("skipped") for line in lines) == len(before)
    after = _rows(store)
    ids = [r["arch_id"] for r in after]
    assert sorted(ids) == sorted(models) and len(ids) == len(set(ids))
    assert all(r["created_at"] == before[r["arch_id"]] for r in after if r["arch_id"] in before)


def _kept_visits(store: Path) -> tuple[str | None, str | None, dict[str, dict[int, float]]]:
    """``(fp_hash, runtime_config, {arch_id: {round: median_ms}})`` of the visits a store keeps."""
    try:
        st = Store(store, readonly=True)
    except StoreError:  # not there yet, or the child is creating its schema right now
        return None, None, {}
    with st:
        names = {r[0] for r in st._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        row = st._conn.execute("SELECT fp_hash, runtime_config FROM visits").fetchone() if "visits" in names else None
        if row is None:
            return None, None, {}
        kept = st.visits(row[0], row[1], 1, "fp32")
    return row[0], row[1], {a: {r: m.median_ms for r, m in v.items()} for a, v in kept.items()}


def test_kill9_between_rounds_keeps_the_visits_taken(tmp_path: Path) -> None:
    """Interleaved rounds: a run killed after the first round of a chunk keeps every visit it took, and
    the restart measures only the visits missing; the kept ones are in the rows it writes."""
    models = _models(tmp_path, 4)
    store = tmp_path / "kill.sqlite"
    cmd = [sys.executable, str(HERE / "devices_profile_child.py"), str(store), str(tmp_path / "models"), "0.3", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    fp, rc, kept = None, None, {}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None and len(kept) < 3:
            fp, rc, kept = _kept_visits(store)
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    fp, rc, kept = _kept_visits(store)  # what the killed run left
    assert fp is not None and len(kept) >= 3 and all(len(v) == 1 for v in kept.values()), kept

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    with Store(store) as st:
        after = {r["arch_id"]: st.measurement(fp, rc, r["arch_id"], 1, "fp32") for r in st.measurements()}
    assert sorted(after) == sorted(models)
    assert _kept_visits(store)[2] == {}  # every row written, so no visit is kept any more
    for arch_id, v in kept.items():
        ((r, ms),) = v.items()
        assert after[arch_id].round_medians_ms[r] == ms  # the kept visit, not a new one


def _space() -> ArchSpace:
    return ArchSpace(n_stages=3, max_depth=2, ks_list=(3, 5), e_list=(2, 4), d_list=(1, 2), resolutions=(16, 24), name="toy")


def _size(arch: dict) -> float:
    """A MACs-like proxy over the active blocks (2 slots per stage)."""
    active = [s * 2 + j for s, d in enumerate(arch["d"]) for j in range(d)]
    return float(arch["r"] ** 2 * sum(arch["ks"][i] ** 2 * arch["e"][i] for i in active))


def test_stratified_sample() -> None:
    space = _space()
    picks = stratified_sample(space, 30, np.random.default_rng(0), _size)
    ids = [aid for aid, _ in picks]
    assert len(picks) == 30 and len(set(ids)) == 30
    assert space.arch_id(space.min_arch()) in ids and space.arch_id(space.max_arch()) in ids
    assert all(space.arch_id(a) == aid for aid, a in picks)
    rng = np.random.default_rng(123)
    lo, hi = np.quantile([_size(space.sample(rng)) for _ in range(3000)], [1 / 3, 2 / 3])
    sizes = np.array([_size(a) for _, a in picks[2:]])  # the 28 drawn besides min and max
    counts = [(sizes <= lo).sum(), ((sizes > lo) & (sizes <= hi)).sum(), (sizes > hi).sum()]
    assert min(counts) >= 6, counts  # about 28/3 from each tercile of the space's size distribution
    again = stratified_sample(space, 30, 0, _size)
    assert [a for a, _ in again] == ids  # seeded: reproducible


def test_stratified_sample_small_n() -> None:
    space = _space()
    picks = stratified_sample(space, 2, 0, _size)
    assert [aid for aid, _ in picks] == [space.arch_id(space.min_arch()), space.arch_id(space.max_arch())]
    from hwnas.devices.profile import ProfileError

    with pytest.raises(ProfileError):
        stratified_sample(space, 1, 0, _size)


def test_profile_archs_interleaved_rounds_keep_the_fastest_visit(tmp_path: Path) -> None:
    models = _models(tmp_path, 5)
    order: list[str] = []
    s = FAST.replace(rounds=3, time_cap_s=0.3)

    def build(arch: dict):
        return models[arch["id"]], None

    with Store(tmp_path / "r.sqlite") as st:
        out = profile_archs(st, "ort-cpu-1t", [(a, {"id": a}) for a in models], build, "toy", settings=s,
                            chunk_size=2, progress=lambda ev: order.append(ev.arch_id))
        rows = {r["arch_id"]: r for r in st.measurements()}
        full = {a: st.measurement(r["fp_hash"], r["runtime_config"], a, 1, "fp32") for a, r in rows.items()}
    assert out["measured"] == 5 and order == sorted(models)  # rows land chunk by chunk, in order
    for a, m in full.items():
        assert m is not None and len(m.round_medians_ms) == 3 and m.median_ms == min(m.round_medians_ms)
        assert rows[a]["median_ms"] == m.median_ms


def test_visit_settings_share_the_time_cap() -> None:
    s = ProtocolSettings(rounds=4, time_cap_s=2.0, warmup_s=0.2, min_timed_s=0.05)
    first, later = visit_settings(s, 0), visit_settings(s, 1)
    assert first.time_cap_s == later.time_cap_s == 0.5 and first.warmup_s == 0.2 and later.warmup_s == 0.05
    assert visit_settings(s.replace(rounds=1), 3) == s.replace(rounds=1)
    tiny = visit_settings(ProtocolSettings(rounds=3, time_cap_s=0.06, min_timed_s=0.05), 0)
    assert tiny.time_cap_s == 0.05


def test_profile_archs_anchored_calibrates_once_per_store(tmp_path: Path) -> None:
    models = _models(tmp_path, 4)
    anchor_model = build_convnet(tmp_path / "anchor.onnx", channels=8, size=12, seed=99)
    paths = {**models, "anchor": anchor_model}
    s = FAST.replace(time_cap_s=0.3)

    def build(arch: dict):
        return paths[arch["id"]], None

    archs = [(a, {"id": a}) for a in models]
    with Store(tmp_path / "a.sqlite") as st:
        profile_archs(st, "ort-cpu-1t", archs[:2], build, "toy", settings=s, anchor=("anchor", {"id": "anchor"}))
        keys = [k for k, _ in st._exec("SELECT key, value FROM meta WHERE key LIKE 'anchor_ms|%'")]
        assert len(keys) == 1 and keys[0].endswith("|anchor")
        cal = float(st.get_meta(keys[0]))
        profile_archs(st, "ort-cpu-1t", archs, build, "toy", settings=s, anchor=("anchor", {"id": "anchor"}))
        assert float(st.get_meta(keys[0])) == cal  # the second job reuses the calibration
        rows = st.measurements()
        full = [st.measurement(r["fp_hash"], r["runtime_config"], r["arch_id"], 1, "fp32") for r in rows]
    assert len(full) == 4 and anchor_model.exists()
    for m in full:
        assert m is not None and m.anchor_ms == cal and m.anchor_ratio is not None
        assert m.median_ms == pytest.approx(m.anchor_ratio * cal)
    with Store(tmp_path / "b.sqlite") as st:  # anchored=0: plain windowed timing, no calibration
        profile_archs(st, "ort-cpu-1t", archs[:1], build, "toy", settings=s.replace(anchored=0),
                      anchor=("anchor", {"id": "anchor"}))
        m = st.measurement(st.measurements()[0]["fp_hash"], st.measurements()[0]["runtime_config"], "a00", 1, "fp32")
        assert m is not None and m.anchor_ratio is None and st.get_meta(keys[0]) is None


def test_two_processes_profiling_one_store_share_one_calibration(tmp_path: Path) -> None:
    """Two anchored profiling processes started together on one store both calibrate the anchor; the
    first calibration stored is the one both scale every row by."""
    anchor_model = build_convnet(tmp_path / "anchor.onnx", channels=8, size=12, seed=99)
    store = tmp_path / "shared.sqlite"
    procs = []
    for k in range(2):
        d = tmp_path / f"m{k}"
        d.mkdir()
        for i in range(2):
            build_convnet(d / f"p{k}a{i}.onnx", channels=4 + 2 * i + k, size=12, seed=10 * k + i)
        cmd = [sys.executable, str(HERE / "devices_profile_child.py"), str(store), str(d), "0.2", "2", str(anchor_model)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with Store(store) as st:
        cal = [float(v) for k, v in st._exec("SELECT key, value FROM meta WHERE key LIKE 'anchor_ms|%'")]
        rows = st.measurements()
        used = {st.measurement(r["fp_hash"], r["runtime_config"], r["arch_id"], 1, "fp32").anchor_ms for r in rows}
    assert len(rows) == 4 and len(cal) == 1
    assert used == {cal[0]}  # every row of both processes scaled by the one stored calibration


def test_anchored_profile_refuses_a_store_of_unanchored_rows(tmp_path: Path) -> None:
    models = _models(tmp_path, 2)
    anchor_model = build_convnet(tmp_path / "anchor.onnx", channels=8, size=12, seed=99)
    paths = {**models, "anchor": anchor_model}
    s = FAST.replace(time_cap_s=0.2)
    archs = [(a, {"id": a}) for a in models]
    with Store(tmp_path / "old.sqlite") as st:
        profile_archs(st, "ort-cpu-1t", archs[:1], lambda a: (paths[a["id"]], None), "toy", settings=s.replace(anchored=0),
                      anchor=("anchor", {"id": "anchor"}))
        with pytest.raises(ProfileError, match="without anchored timing.*new store"):
            profile_archs(st, "ort-cpu-1t", archs, lambda a: (paths[a["id"]], None), "toy", settings=s,
                          anchor=("anchor", {"id": "anchor"}))
        assert [r["arch_id"] for r in st.measurements()] == ["a00"]  # nothing written


def test_kill9_before_the_first_calibration_settles_then_resume(tmp_path: Path) -> None:
    """An anchored first run killed mid-way has written rows on its start burst's provisional calibration
    and stored none; the resumed run settles one calibration and puts every row, old and new, on it."""
    models = _models(tmp_path, 6)
    anchor_model = build_convnet(tmp_path / "anchor.onnx", channels=8, size=12, seed=99)
    store = tmp_path / "kill-anchored.sqlite"
    cmd = [sys.executable, str(HERE / "devices_profile_child.py"), str(store), str(tmp_path / "models"), "0.25", "2",
           str(anchor_model)]
    finished = _kill9_after(cmd, 2)
    with Store(store) as st:
        assert [k for k, _ in st._exec("SELECT key, value FROM meta WHERE key LIKE 'anchor_ms|%'")] == []
        early = {r["arch_id"]: st.measurement(r["fp_hash"], r["runtime_config"], r["arch_id"], 1, "fp32")
                 for r in st.measurements()}
    assert set(finished) <= set(early) and all(m.anchor_ratio is not None for m in early.values())
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    with Store(store) as st:
        cal = [float(v) for k, v in st._exec("SELECT key, value FROM meta WHERE key LIKE 'anchor_ms|%'")]
        rows = {r["arch_id"]: st.measurement(r["fp_hash"], r["runtime_config"], r["arch_id"], 1, "fp32")
                for r in st.measurements()}
    assert len(cal) == 1 and sorted(rows) == sorted(models)
    for aid, m in rows.items():
        assert m.anchor_ms == cal[0] and m.median_ms == pytest.approx(m.anchor_ratio * cal[0])
        if aid in early:  # kept its ratio; only the scale moved to the settled calibration
            assert m.anchor_ratio == early[aid].anchor_ratio
