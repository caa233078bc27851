"""Fleet profiling on a real local Ray instance with real agents on loopback (``hwnas.fleet``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from devices_agent_support import TOKEN, free_port, start_agent, stop
from devices_onnx_models import build_convnet
from hwnas.devices.profile import ProfileError
from hwnas.devices.spec import DeviceSpecError, load_device
from hwnas.devices.store import Store

ray = pytest.importorskip("ray")

from hwnas.fleet import board_resource, load_fleet_file, profile_fleet  # noqa: E402
from hwnas.fleet.cluster import LOCAL_NODE_IP  # noqa: E402

TOKEN_ENV = "HWNAS_TEST_FLEET_TOKEN"
BOARDS = ("board-0", "board-1", "board-2")
# 40 distinct tiny conv nets: ~10-40 us each, a 0.1 s time cap, so a subnet takes ~0.15 s on a board
ARCHS = [(f"c{4 + i % 8}-s{8 + 2 * (i // 8)}", {"c": 4 + i % 8, "s": 8 + 2 * (i // 8)}) for i in range(40)]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray instance for the module, declaring the boards' resources (as `ray start` would)."""
    ray.init(num_cpus=2, resources={board_resource(b): 1 for b in BOARDS}, include_dashboard=False,
             log_to_driver=False, _node_ip_address=LOCAL_NODE_IP)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture()
def agents() -> Iterator[list]:
    procs = [start_agent() for _ in range(2)]
    try:
        yield procs
    finally:
        for p, _ in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
            stop(p)


def board_spec(tmp: Path, name: str, url: str, threads: int = 1):
    f = tmp / f"{name}.toml"
    f.write_text(f'name = "{name}"\nbackend = "remote"\naddress = "{urlsplit(url).netloc}"\ntoken_env = "{TOKEN_ENV}"\n'
                 f'[options]\nintra_op_threads = {threads}\n[protocol]\ntime_cap_s = 0.1\nwarmup_s = 0.02\nmin_runs = 10\n')
    return load_device(f)


def builder(tmp: Path):
    n = [0]

    def build(spec, arch):
        n[0] += 1
        return build_convnet(tmp / f"m{n[0]}.onnx", channels=arch["c"], size=arch["s"], batch=1), None

    build.calls = n
    return build


def run(tmp, specs, *, archs=ARCHS, after=None, at=20, **kw):
    """Profile ``archs`` on ``specs`` into a new store; ``after(info)`` runs once ``at`` rows are written."""
    state = {"n": 0, "info": None}

    def progress(ev):
        if ev.status == "measured":
            state["n"] += 1
            if after and state["n"] == at:
                after(state["info"])

    def on_start(info):
        state["info"] = info

    with Store(tmp / "store.sqlite") as st:
        out = profile_fleet(st, specs, archs, builder(tmp), "tiny", progress=progress, on_start=on_start, **kw)
        rows = st.measurements()
    return out, rows


def check_all_once(out, rows, n=len(ARCHS)):
    ids = [r["arch_id"] for r in rows]
    assert len(ids) == n and len(set(ids)) == n  # all present, none twice
    assert set(ids) == {a for a, _ in ARCHS[:n]}
    assert out["measured"] == n and not out["unmeasured"] and not out["failed"]
    by_board = Counter(r["device"] for r in rows)
    assert {b: v["measured"] for b, v in out["boards"].items() if v["measured"]} == dict(by_board)
    return by_board


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def test_two_boards_share_one_profile(ray_local, agents, tmp_path: Path) -> None:
    specs = [board_spec(tmp_path, BOARDS[k], url) for k, (_, url) in enumerate(agents)]
    out, rows = run(tmp_path, specs)
    by_board = check_all_once(out, rows)
    # one device kind (same fingerprint and runtime config): one group, both boards took part
    assert len(out["devices"]) == 1 and out["devices"][0]["boards"] == list(BOARDS[:2])
    assert by_board[BOARDS[0]] >= 5 and by_board[BOARDS[1]] >= 5, by_board
    assert out["retries"] == []
    assert all(json.loads(json.dumps(r["arch"])) == dict(ARCHS_D[r["arch_id"]]) for r in rows)
    # a rerun resumes: nothing measured again
    again, rows2 = run(tmp_path, specs)
    assert again["measured"] == 0 and again["skipped"] == len(ARCHS) and len(rows2) == len(ARCHS)


ARCHS_D = dict(ARCHS)


def test_agent_killed_halfway(ray_local, agents, tmp_path: Path) -> None:
    specs = [board_spec(tmp_path, BOARDS[k], url) for k, (_, url) in enumerate(agents)]
    killed = agents[0][0]
    out, rows = run(tmp_path, specs, after=lambda info: killed.kill(), at=20, board_wait_s=30)
    by_board = check_all_once(out, rows)
    retried = [r for r in out["retries"] if r["board"] == BOARDS[0]]
    assert retried, out["retries"]  # the subnet it held (or was handed next) went to the other board
    assert all(r["measured_by"] == BOARDS[1] for r in retried)
    assert all("not reachable" in r["reason"] for r in retried)
    assert out["boards"][BOARDS[0]]["state"] == "down" and by_board[BOARDS[1]] > 20


def test_ray_worker_killed(ray_local, agents, tmp_path: Path) -> None:
    specs = [board_spec(tmp_path, BOARDS[k], url) for k, (_, url) in enumerate(agents)]
    def kill_actor(info):
        os.kill(info["pids"][BOARDS[0]], signal.SIGKILL)

    out, rows = run(tmp_path, specs, archs=ARCHS[:20], after=kill_actor, at=5, max_probe_pause_s=0.5)
    check_all_once(out, rows, n=20)
    retried = [r for r in out["retries"] if r["board"] == BOARDS[0]]
    assert retried and all("Ray worker died" in r["reason"] for r in retried)
    assert all(r["measured_by"] for r in retried)
    # whether Ray's restart of the actor lands before the other board finishes is a race here; the
    # lone-board test below shows the board coming back


def test_board_that_stops_answering(ray_local, agents, tmp_path: Path) -> None:
    specs = [board_spec(tmp_path, BOARDS[k], url) for k, (_, url) in enumerate(agents)]
    frozen = agents[0][0]
    out, rows = run(tmp_path, specs, archs=ARCHS[:20], after=lambda info: os.kill(frozen.pid, signal.SIGSTOP), at=5,
                    task_timeout_s=2.0, board_wait_s=30)
    check_all_once(out, rows, n=20)
    retried = [r for r in out["retries"] if r["board"] == BOARDS[0]]
    assert retried and all("no answer within 2 s" in r["reason"] for r in retried), out["retries"]
    assert out["boards"][BOARDS[0]]["state"] == "down"


def test_different_devices_get_their_own_rows(ray_local, agents, tmp_path: Path) -> None:
    # same agent machine, other runtime config (threads): another device key, profiled side by side
    specs = [board_spec(tmp_path, BOARDS[0], agents[0][1], threads=1),
             board_spec(tmp_path, BOARDS[1], agents[1][1], threads=2)]
    out, rows = run(tmp_path, specs, archs=ARCHS[:8])
    assert len(out["devices"]) == 2
    for g, b in zip(out["devices"], BOARDS):
        mine = [r for r in rows if r["runtime_config"] == g["runtime_config"]]
        assert g["measured"] == 8 and len({r["arch_id"] for r in mine}) == 8 and {r["device"] for r in mine} == {b}


def test_board_down_at_start_is_left_out(ray_local, agents, tmp_path: Path) -> None:
    specs = [board_spec(tmp_path, BOARDS[0], agents[0][1]),
             board_spec(tmp_path, BOARDS[2], f"http://127.0.0.1:{free_port()}")]
    out, rows = run(tmp_path, specs, archs=ARCHS[:4])
    assert out["measured"] == 4 and out["boards"][BOARDS[2]]["group"] == -1
    assert "not reachable" in out["boards"][BOARDS[2]]["last_error"]


def test_fleet_refuses_what_it_cannot_drive(tmp_path: Path) -> None:
    s = board_spec(tmp_path, "dup", "http://127.0.0.1:1")
    with Store(tmp_path / "s.sqlite") as st:
        with pytest.raises(ProfileError, match="named twice"):
            profile_fleet(st, [s, s], ARCHS[:2], builder(tmp_path), "tiny")
        with pytest.raises(ProfileError, match="anchored = 0"):
            profile_fleet(st, ["ort-cpu-1t"], ARCHS[:2], builder(tmp_path), "tiny")
        with pytest.raises(ProfileError, match="torch modules"):
            profile_fleet(st, ["torch-cpu"], ARCHS[:2], builder(tmp_path), "tiny")


def test_fleet_file(tmp_path: Path) -> None:
    board_spec(tmp_path, "pi-1", "http://127.0.0.1:9")
    (tmp_path / "fleet.toml").write_text('devices = ["pi-1.toml", "ort-cpu-1t"]\nray_address = "10.0.0.2:6379"\n')
    specs, address = load_fleet_file(tmp_path / "fleet.toml")
    assert [s.name for s in specs] == ["pi-1", "ort-cpu-1t"] and address == "10.0.0.2:6379"
    for text, msg in [("devices = []", "non-empty list"), ("device = ['a']", "unknown key 'device'"),
                      ("devices = [", "not valid TOML")]:
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(DeviceSpecError, match=msg):
            load_fleet_file(tmp_path / "bad.toml")


def test_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    # in a process of its own (this module's driver is connected); nothing listens on the port
    cmd = [sys.executable, "-m", "hwnas", "profile", "--device", "edge-rpi", "--device", "b.toml", "--samples", "2",
           "--ray-address", f"127.0.0.1:{free_port()}"]
    board_spec(tmp_path, "b", "http://127.0.0.1:9")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 1 and "cannot reach the Ray cluster at 127.0.0.1" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_cli_fleet_without_ray_says_what_to_install(tmp_path: Path) -> None:
    # Ray made unimportable: the fleet fails with one line; importing hwnas and its CLI still work
    code = ("import sys; sys.modules['ray'] = None\n"
            "from hwnas.cli.main import main\n"
            "sys.argv = ['hwnas', 'profile', '--device', 'edge-rpi', '--device', 'ort-cpu-1t', '--samples', '2']\n"
            "sys.exit(main())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "pip install 'hwnas[ray]'" in p.stderr and "Traceback" not in p.stderr


def test_cli_profiles_a_fleet_on_a_local_ray(agents, tmp_path: Path) -> None:
    """`hwnas profile --fleet FILE` end to end: a local Ray instance of its own, the shipped supernet."""
    for k, (_, url) in enumerate(agents):
        board_spec(tmp_path, BOARDS[k], url)
    (tmp_path / "fleet.toml").write_text(f'devices = ["{BOARDS[0]}.toml", "{BOARDS[1]}.toml"]\n')
    env = {**os.environ, TOKEN_ENV: TOKEN}
    env.pop("HWNAS_RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "hwnas", "profile", "--fleet", "fleet.toml", "--samples", "6", "--time-cap", "0.1",
           "--store", "s.sqlite", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["measured"] == 6 and out["ray"]["local"] and out["ray"]["start_s"] > 0
    assert sum(b["measured"] for b in out["boards"].values()) == 6
    with Store(tmp_path / "s.sqlite") as st:
        rows = st.measurements()
    assert len({r["arch_id"] for r in rows}) == 6 and {r["supernet"] for r in rows} == {"mbv3_fmnist"}


def test_lone_board_waits_for_its_worker_to_come_back(ray_local, agents, tmp_path: Path) -> None:
    # no other board of its kind: the subnet waits for Ray to restart the board's actor
    spec = board_spec(tmp_path, BOARDS[0], agents[0][1])
    out, rows = run(tmp_path, [spec], archs=ARCHS[:6], after=lambda info: os.kill(info["pids"][BOARDS[0]],
                                                                                    signal.SIGKILL), at=2,
                    max_probe_pause_s=0.5)
    check_all_once(out, rows, n=6)
    assert [r["measured_by"] for r in out["retries"]] == [BOARDS[0]]
