"""The one atomic writer: files appear whole or not at all, with the mode the umask asks for."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from hwnas.errors import HwnasError, OutputError
from hwnas.io import atomic_output, atomic_outputs, atomic_write_bytes, atomic_write_json, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".part"))


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mode_follows_umask(tmp_path, umask, mask, want):
    umask(mask)
    p = atomic_write_text(tmp_path / "a.txt", "hello")
    assert p.read_text() == "hello" and mode(p) == want
    with atomic_output(tmp_path / "b.bin") as tmp:  # a writer that fills the temp file itself
        tmp.write_bytes(b"\0\1")
    assert mode(tmp_path / "b.bin") == want
    with atomic_outputs(tmp_path / "c", tmp_path / "d") as (tc, td):
        tc.write_text("c")
        td.write_text("d")
    assert mode(tmp_path / "c") == mode(tmp_path / "d") == want


def test_umask_is_left_as_it_was(tmp_path, umask):
    umask(0o027)
    atomic_write_bytes(tmp_path / "x", b"x")
    assert os.umask(0o027) == 0o027


def test_json_and_parents(tmp_path):
    p = atomic_write_json(tmp_path / "new" / "dir" / "x.json", {"a": 1}, indent=2)
    assert json.loads(p.read_text()) == {"a": 1} and p.read_text().endswith("\n")


def test_temp_file_is_beside_the_target(tmp_path):
    with atomic_output(tmp_path / "model.onnx") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp.name.endswith(".part")
        assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_leaves_target_untouched(tmp_path, exc):
    target = tmp_path / "out.json"
    with pytest.raises(exc):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise exc()
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(exc):
        with atomic_output(target) as tmp:
            tmp.write_text("new")
            raise exc()
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_outputs_all_or_nothing(tmp_path):
    paths = [tmp_path / "model.onnx", tmp_path / "sub" / "model.onnx.json"]
    with pytest.raises(ValueError):
        with atomic_outputs(*paths) as tmps:
            tmps[0].write_bytes(b"model")
            tmps[1].write_text("{}")
            raise ValueError("check failed")
    assert not paths[0].exists() and not paths[1].exists()
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub") == []
    with atomic_outputs(*paths) as tmps:
        for t in tmps:
            t.write_text("ok")
    assert [p.read_text() for p in paths] == ["ok", "ok"]


def test_outputs_failure_when_a_later_location_is_unusable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where a directory is needed
    with pytest.raises(OutputError):
        with atomic_outputs(tmp_path / "a.txt", blocker / "b.txt"):
            pytest.fail("the block must not run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_directory_is_a_clean_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    targets = [blocker / "x.json"]  # a parent that is a file: fails for root too
    if os.geteuid() != 0:  # root may write into a 0555 directory
        ro.chmod(0o555)
        targets.append(ro / "x.json")
    with pytest.raises(OutputError, match=re.escape(f"{blocker} is not a directory")):
        atomic_write_text(blocker / "x.txt", "x")
    try:
        for target in targets:
            with pytest.raises(OutputError) as info:
                atomic_write_json(target, {"a": 1})
            msg = str(info.value)
            assert str(target) in msg and "\n" not in msg and "writable" in msg
            assert isinstance(info.value, HwnasError) and isinstance(info.value, OSError)
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_exported_predictor_artifact_honours_umask(tmp_path, umask):
    from hwnas.predictors import load_predictor, save_predictor
    from hwnas.resources import shipped_predictors_dir

    pred = load_predictor(shipped_predictors_dir("mbv3_fmnist") / "ort-cpu-1t.xgb.json")
    umask(0o022)
    p = save_predictor(pred, tmp_path / "xgb.json")
    assert mode(p) == 0o644 and leftovers(tmp_path) == []
    umask(0o077)
    p = save_predictor(pred, tmp_path / "xgb2.json")
    assert mode(p) == 0o600


def _tiny_search_result():
    from hwnas.archsearch.loop import FrontPoint, MeasuredPoint, RoundStats, SearchResult

    arch = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 28}
    mp = MeasuredPoint("a1", arch, 0.2, 0.21, 0.9, 1, "near-budget", 0.91)
    rs = RoundStats(1, 100, 1.0, 100.0, 1, True, 1, 0.5, 1.0, 2.0, 0.1, "a1", 0.2, 0.91)
    return SearchResult("mbv3_fmnist", "ort-cpu-1t", 0.25, mp, "evaluated", 0.1,
                        (FrontPoint("a1", arch, 0.9, 0.21, {}, 0.2),), (mp,), (rs,), ("accuracy", "latency"),
                        2.0, 1.0, 0.5, 100, 100.0)


def test_search_outputs_honour_umask_and_appear_together(tmp_path, umask, monkeypatch):
    from hwnas.archsearch import output

    umask(0o022)
    paths = output.write_outputs(_tiny_search_result(), tmp_path / "out")
    assert len(paths) == 7 and all(mode(Path(p)) == 0o644 for p in paths.values())
    assert leftovers(tmp_path / "out") == []

    def fail(*args):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(output, "_save_plot", fail)
    with pytest.raises(RuntimeError):
        output.write_outputs(_tiny_search_result(), tmp_path / "again")
    assert not (tmp_path / "again").exists() or list((tmp_path / "again").iterdir()) == []


def test_job_tempdir_removes_what_killed_jobs_left(tmp_path, monkeypatch):
    """A scratch directory of a job whose process is gone (kill -9) is removed by the next job of that
    kind; one of a live process, another prefix, or a name without a pid is left alone."""
    import subprocess
    import sys
    import tempfile

    from hwnas.io import job_tempdir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited, so no process has this pid (unless the OS reused it at once)
    stale = tmp_path / f"hwnas-profile-{dead_pid}-abcd"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.onnx").write_bytes(b"x")
    live = tmp_path / f"hwnas-profile-{os.getppid()}-efgh"
    other = tmp_path / f"hwnas-search-{dead_pid}-ijkl"
    odd = tmp_path / "hwnas-profile-notapid"
    for d in (live, other, odd):
        d.mkdir()
    with job_tempdir("hwnas-profile-") as d:
        assert d.is_dir() and d.parent == tmp_path and d.name.startswith(f"hwnas-profile-{os.getpid()}-")
        (d / "m.onnx").write_bytes(b"y")
        assert not stale.exists() and live.exists() and other.exists() and odd.exists()
    assert not d.exists()
    with pytest.raises(RuntimeError), job_tempdir("hwnas-profile-") as d2:  # removed on an error too
        raise RuntimeError("boom")
    assert not d2.exists()
