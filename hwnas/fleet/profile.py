"""Fleet profiling: several boards measuring one profile at once, each held by one Ray actor.

The driver (this process) alone builds the ONNX files and alone writes the SQLite store; each board
is a Ray actor (``BoardWorker``) that asks for the board's custom resource (capacity 1), so no two
measurements share a board, and gets one subnet at a time.  Boards whose device key (fingerprint,
runtime config, batch, precision) is the same form one *group* and share its work: a subnet goes to
whichever board of the group is free.  Groups (different devices) are profiled side by side into
their own rows.

Faults: a board that answers a measurement with "unavailable" (its agent died or was killed), a
board that does not answer within the task deadline (hung, network gone), and a Ray worker that dies
(the actor process killed) each put the subnet back at the front of its group's queue, where the
next free board of the group takes it; the board is then probed with growing pauses and rejoins
when it answers again (a killed actor is restarted by Ray).  A row is written once, by the driver,
when the first result for its subnet arrives; a late answer of a board given up on is dropped.  A
group none of whose boards answers for ``board_wait_s`` is given up and its subnets left for a rerun
(resumable: measured rows are kept).  The summary lists every retry.

Remote boards (``backend = "remote"``, the agent runs the protocol on the board) measure on the
isolated scale, as ``hwnas profile --device`` on one remote board does.  A local backend in a fleet
runs on the node that declared its board and must have ``anchored = 0``: anchored timing calibrates
its reference subnet in the driver's process, which a fleet does not share with the boards.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from hwnas.devices.backends import create_backend, fingerprint_for, get_backend_class, runtime_config
from hwnas.devices.backends.base import LocalBackend
from hwnas.devices.fingerprint import Fingerprint
from hwnas.devices.profile import Arch, ProfileError, ProfileEvent, as_spec, measure_visits
from hwnas.devices.protocol import Measurement, ProtocolSettings
from hwnas.devices.spec import DeviceSpec, DeviceSpecError, load_device
from hwnas.devices.store import Store
from hwnas.errors import DeviceUnavailableError, HwnasError
from hwnas.fleet.cluster import board_resource, check_resources, ray_session, require_ray

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# build_model(spec, arch) -> (ONNX path, input shape or None), for the group of boards ``spec`` heads
GroupBuilder = Callable[[DeviceSpec, Arch], tuple[Any, Sequence[int] | None]]


# ------------------------------------------------------------------------------------- the actor
class BoardWorker:
    """One board, inside a Ray actor: reads its fingerprint, checks it answers, measures one file at a time."""

    def __init__(self, spec: DeviceSpec, env: Mapping[str, str]) -> None:
        os.environ.update(env)  # the agent token, read by the remote backend
        self.spec = spec
        self.tmp = Path(tempfile.mkdtemp(prefix="hwnas-board-"))

    def pid(self) -> int:
        return os.getpid()

    def check(self) -> str | None:
        """``None`` when the board can measure, else why not (one line)."""
        try:
            return get_backend_class(self.spec.backend).unavailable_reason(self.spec)
        except HwnasError as exc:
            return str(exc)

    def key(self) -> dict[str, Any]:
        """The board's fingerprint and runtime config, or ``{"error": ...}``."""
        try:
            return {"fingerprint": fingerprint_for(self.spec).to_dict(), "runtime_config": runtime_config(self.spec)}
        except HwnasError as exc:
            return {"error": str(exc)}

    def measure(self, arch_id: str, payload: bytes, suffix: str, input_shape: Sequence[int] | None,
                settings: Mapping[str, Any]) -> dict[str, Any]:
        """Measure the model ``payload`` (the file's bytes); errors come back as ``{"ok": False, "kind"}``
        with kind ``unavailable`` (the board: retry elsewhere) or ``model`` (this subnet: reported failed)."""
        path = self.tmp / f"{arch_id}{suffix}"
        s = ProtocolSettings.from_mapping(settings)
        t0 = time.perf_counter()
        try:
            path.write_bytes(payload)
            with create_backend(self.spec, model=path, input_shape=input_shape) as backend:
                m = measure_visits(backend, s)
                fp = getattr(backend, "last_fingerprint", None) or backend.fingerprint()
            return {"ok": True, "measurement": m.to_dict(), "fp_hash": fp.fp_hash, "pid": os.getpid(),
                    "seconds": time.perf_counter() - t0}
        except DeviceUnavailableError as exc:
            return {"ok": False, "kind": "unavailable", "error": str(exc)}
        except HwnasError as exc:
            return {"ok": False, "kind": "model", "error": str(exc)}
        except OSError as exc:  # the node's disk: the board is fine, this node is not
            return {"ok": False, "kind": "unavailable", "error": f"cannot write the model on the node: {exc}"}
        finally:
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- fleet files
def load_fleet_file(path: str | Path) -> tuple[list[DeviceSpec], str | None]:
    """A fleet file (TOML): ``devices = ["pi-1", "pi-2.toml", ...]`` (spec names or paths, relative to
    the file) and optionally ``ray_address = "HOST:6379"``.  Returns the specs and the address."""
    p = Path(path).expanduser()
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise DeviceSpecError(f"cannot read the fleet file {p}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DeviceSpecError(f"fleet file {p} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"devices", "ray_address"})
    if unknown:
        raise DeviceSpecError(f"fleet file {p}: unknown key {unknown[0]!r}; it takes devices and ray_address")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices or not all(isinstance(d, str) and d for d in devices):
        raise DeviceSpecError(f"fleet file {p}: devices must be a non-empty list of device spec names or paths")
    address = data.get("ray_address")
    if address is not None and (not isinstance(address, str) or not address):
        raise DeviceSpecError(f"fleet file {p}: ray_address must be a string such as \"10.0.0.2:6379\"")
    specs = []
    for d in devices:
        rel = p.parent / d
        specs.append(load_device(rel if d.endswith(".toml") and not Path(d).is_absolute() and rel.is_file() else d))
    return specs, address


def check_fleet(specs: Sequence[DeviceSpec]) -> list[DeviceSpec]:
    """The specs of a fleet, checked: distinct names, and backends a fleet can drive."""
    if not specs:
        raise ProfileError("a fleet needs at least one device")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ProfileError(f"device {spec.name!r} is named twice in the fleet; each board is one spec with its "
                               "own name (copy the spec file and change name and address)")
        seen.add(spec.name)
        cls = get_backend_class(spec.backend)
        if spec.backend.startswith("torch"):
            raise ProfileError(f"device {spec.name!r} (backend {spec.backend!r}) measures torch modules; a fleet "
                               "ships ONNX files to its boards: use an ort, openvino or remote device")
        if issubclass(cls, LocalBackend) and int(ProtocolSettings.from_mapping(spec.protocol).anchored):
            raise ProfileError(
                f"device {spec.name!r} (backend {spec.backend!r}) uses anchored timing, whose calibration lives in "
                "one process; profile it alone (hwnas profile --device " + spec.name + "), or set anchored = 0 "
                "in its [protocol] table to profile it on the isolated scale in a fleet")
    return list(specs)


# ------------------------------------------------------------------------------------- the driver
@dataclass
class FleetBoard:
    """The driver's view of one board."""

    spec: DeviceSpec
    actor: Any
    group: int = -1
    state: str = "idle"  # idle | busy | down | retired
    inflight: tuple[str, Any, float] | None = None  # (arch_id, object ref, deadline)
    probe: Any = None  # object ref of a check() while down
    next_probe: float = 0.0
    pause: float = 1.0
    down_since: float | None = None
    measured: int = 0
    failed: int = 0
    retried_away: int = 0
    busy_s: float = 0.0  # inside the actor's measure calls (upload, load, protocol): the board's share
    turnaround_s: float = 0.0  # from hand-out to the driver having the result
    last_error: str | None = None
    pid: int | None = None
    handed_out: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "state": self.state, "measured": self.measured, "failed": self.failed,
                "retried_away": self.retried_away, "last_error": self.last_error, "busy_s": self.busy_s,
                "turnaround_s": self.turnaround_s}


@dataclass
class _Group:
    spec: DeviceSpec  # the first board's: it names the rows' key
    fp: Fingerprint
    rc: str
    settings: ProtocolSettings
    todo: deque = field(default_factory=deque)  # (index, arch_id, arch)
    done: set = field(default_factory=set)
    taken: dict = field(default_factory=dict)  # arch_id -> (index, arch_id, arch), while on a board
    boards: list = field(default_factory=list)
    measured: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)
    unmeasured: list = field(default_factory=list)
    gave_up: str | None = None
    all_down_since: float | None = None


def profile_fleet(
    store: Store,
    specs: Sequence[DeviceSpec | str],
    archs: Iterable[tuple[str, Arch]],
    build_model: GroupBuilder,
    supernet_name: str,
    *,
    settings: ProtocolSettings | None = None,
    time_cap_s: float | None = None,
    progress: Callable[[ProfileEvent], None] | None = None,
    address: str | None = None,
    task_timeout_s: float | None = None,
    board_wait_s: float = 120.0,
    max_probe_pause_s: float = 10.0,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Profile ``archs`` on a fleet of boards (see the module docstring); rows go to ``store``.

    ``build_model(spec, arch)`` returns an ONNX path (deleted once read) for the group ``spec`` heads.
    ``settings`` (default: each group's spec protocol) with ``time_cap_s`` applied.  ``task_timeout_s``
    is how long a board may take for one subnet before it is given up on (default: 60 s plus twice the
    protocol's time); ``board_wait_s`` how long a group may have no board answering before its rest is
    left for a rerun.  ``on_start(info)`` is called once the boards are up, with the actors' pids
    (tests use it to kill one).  Returns a summary: per group (``devices``) the counts as
    ``profile_archs`` gives them, per board (``boards``) what it measured, ``retries`` (each subnet
    taken from a board, why, and which board measured it), ``unmeasured`` and Ray's start time.
    """
    ray = require_ray()
    from ray.exceptions import GetTimeoutError, RayError

    specs = check_fleet([as_spec(s) for s in specs])
    items = list(dict(archs).items())  # distinct by arch id, in order
    resources = {board_resource(s.name): 1.0 for s in specs}
    t0 = time.perf_counter()
    with ray_session(address, resources=resources) as session:
        if not session["local"]:
            check_resources(resources)
        actor_cls = ray.remote(BoardWorker)
        boards: list[FleetBoard] = []
        for spec in specs:
            env = {spec.token_env: os.environ[spec.token_env]} if spec.token_env and spec.token_env in os.environ else {}
            actor = actor_cls.options(num_cpus=0, resources={board_resource(spec.name): 1.0}, max_restarts=-1,
                                      max_task_retries=0).remote(spec, env)
            boards.append(FleetBoard(spec=spec, actor=actor))
        keys = _board_keys(ray, boards, GetTimeoutError, RayError)
        groups = _make_groups(store, boards, keys, settings, time_cap_s)
        if not groups:
            raise DeviceUnavailableError("no board of the fleet answers: " + "; ".join(
                f"{b.name}: {b.last_error}" for b in boards))
        for g in groups:
            for i, (arch_id, arch) in enumerate(items, start=1):
                if arch_id in g.done:
                    g.skipped += 1
                    if progress:
                        progress(ProfileEvent(i, len(items), arch_id, "skipped"))
                else:
                    g.todo.append((i, arch_id, arch))
        live = [b for b in boards if b.group >= 0]
        try:
            pids = dict(zip([b.name for b in live], ray.get([b.actor.pid.remote() for b in live], timeout=60)))
        except (GetTimeoutError, RayError):  # a worker that died since it answered: the scheduler retries it
            pids = {}
        for b in live:
            b.pid = pids.get(b.name)
        if on_start:
            on_start({"pids": pids, "ray": session})
        sched = _Scheduler(ray, RayError, store, groups, boards, build_model, supernet_name, progress, len(items),
                           task_timeout_s, board_wait_s, max_probe_pause_s)
        sched.run()
        start_s = session["start_s"]
    wall = time.perf_counter() - t0
    devices = []
    for g in groups:
        timed = sum(r.get("timed_s", 0.0) for r in sched.timed if r["group"] is g)
        devices.append({
            "device": g.spec.name, "boards": [b.name for b in g.boards], "fp_hash": g.fp.fp_hash,
            "runtime_config": g.rc, "batch": g.spec.batch, "precision": g.spec.precision, "supernet": supernet_name,
            "requested": len(items), "measured": g.measured, "skipped": g.skipped, "failed": g.failed,
            "unmeasured": g.unmeasured, "gave_up": g.gave_up, "timed_s": timed,
            "settings": g.settings.to_dict(),
        })  # fmt: skip
    measured = sum(g.measured for g in groups)
    return {
        "fleet": [s.name for s in specs],
        "supernet": supernet_name,
        "store": str(store.path),
        "ray": {"address": session["address"], "local": session["local"], "start_s": start_s},
        "devices": devices,
        "boards": {b.name: b.to_dict() for b in boards},
        "retries": sched.retries,
        "requested": len(items),
        "measured": measured,
        "skipped": sum(g.skipped for g in groups),
        "failed": [f for g in groups for f in g.failed],
        "unmeasured": [u for g in groups for u in g.unmeasured],
        "wall_s": wall,
        "subnets_per_min": measured / wall * 60 if wall > 0 and measured else 0.0,
        "scale": "isolated",
    }


def _board_keys(ray: Any, boards: list[FleetBoard], timeout_error: type, ray_error: type) -> list[dict | None]:
    """Each board's fingerprint and runtime config (asked of all at once); ``None`` for a board that
    does not answer, which stays out of this run."""
    refs = [b.actor.key.remote() for b in boards]
    out: list[dict | None] = []
    deadline = time.monotonic() + 90
    for b, ref in zip(boards, refs):
        try:
            k = ray.get(ref, timeout=max(deadline - time.monotonic(), 1))
        except timeout_error:
            k = {"error": "did not answer within 90 s (is its node up and does it declare the board's resource?)"}
        except ray_error as exc:
            k = {"error": f"its Ray actor failed to start: {str(exc).splitlines()[0]}"}
        if "error" in k:
            b.state, b.last_error = "retired", k["error"]
            out.append(None)
        else:
            out.append(k)
    return out


def _make_groups(store: Store, boards: list[FleetBoard], keys: list[dict | None], settings: ProtocolSettings | None,
                 time_cap_s: float | None) -> list[_Group]:
    groups: dict[tuple, _Group] = {}
    for b, k in zip(boards, keys):
        if k is None:
            continue
        fp = Fingerprint.from_dict(k["fingerprint"])
        key = (fp.fp_hash, k["runtime_config"], b.spec.batch, b.spec.precision)
        if key not in groups:
            s = settings or ProtocolSettings.from_mapping(b.spec.protocol)
            if time_cap_s is not None:
                s = s.replace(time_cap_s=time_cap_s)
            store.add_fingerprint(fp)
            groups[key] = _Group(spec=b.spec, fp=fp, rc=k["runtime_config"], settings=s,
                                 done=store.measured_arch_ids(fp.fp_hash, k["runtime_config"], b.spec.batch,
                                                              b.spec.precision))
        g = groups[key]
        b.group = list(groups).index(key)
        g.boards.append(b)
    return list(groups.values())


class _Scheduler:
    """The driver's loop: hand subnets to free boards, collect results, retry, probe boards that are down."""

    def __init__(self, ray: Any, ray_error: type, store: Store, groups: list[_Group], boards: list[FleetBoard],
                 build_model: GroupBuilder, supernet: str, progress: Callable[[ProfileEvent], None] | None,
                 total: int, task_timeout_s: float | None, board_wait_s: float, max_pause: float) -> None:
        self.ray, self.ray_error, self.store = ray, ray_error, store
        self.groups, self.boards = groups, [b for b in boards if b.group >= 0]
        self.build_model, self.supernet, self.progress, self.total = build_model, supernet, progress, total
        self.task_timeout_s, self.board_wait_s, self.max_pause = task_timeout_s, board_wait_s, max_pause
        self.payloads: dict[tuple[int, str], tuple[bytes, str, Any]] = {}  # built models not yet measured
        self.retries: list[dict[str, Any]] = []
        self.timed: list[dict[str, Any]] = []

    # -------------------------------------------------------------- helpers
    def _timeout(self, g: _Group) -> float:
        if self.task_timeout_s is not None:
            return self.task_timeout_s
        s = g.settings
        return 60.0 + 2 * (s.warmup_s + s.time_cap_s) * max(int(s.rounds), 1)

    def _payload(self, gi: int, g: _Group, arch_id: str, arch: Arch) -> tuple[bytes, str, Any]:
        key = (gi, arch_id)
        if key not in self.payloads:
            model, shape = self.build_model(g.spec, arch)
            if not isinstance(model, (str, Path)):
                raise ProfileError(f"a fleet measures ONNX files; the model builder returned {type(model).__name__}")
            p = Path(model)
            try:
                data = p.read_bytes()
            finally:
                p.unlink(missing_ok=True)
            self.payloads[key] = (data, p.suffix or ".onnx", shape)
        return self.payloads[key]

    def _down(self, b: FleetBoard, why: str) -> None:
        b.state, b.last_error, b.inflight = "down", why, None
        b.down_since = b.down_since or time.monotonic()
        b.pause = 1.0
        b.next_probe = time.monotonic() + b.pause

    def _requeue(self, b: FleetBoard, arch_id: str, why: str) -> None:
        """Put ``arch_id`` back at the front of its group's queue (its built model is kept)."""
        g = self.groups[b.group]
        g.todo.appendleft(g.taken.pop(arch_id))
        b.retried_away += 1
        self.retries.append({"arch_id": arch_id, "device": g.spec.name, "board": b.name, "reason": why,
                             "measured_by": None})

    def _event(self, i: int, arch_id: str, status: str, board: str, **kw: Any) -> None:
        if self.progress:
            self.progress(ProfileEvent(i, self.total, arch_id, status, board=board, **kw))

    # -------------------------------------------------------------- the loop
    def run(self) -> None:
        while True:
            now = time.monotonic()
            self._give_up_groups(now)
            busy = [b for b in self.boards if b.state == "busy"]
            if not busy and not any(g.todo for g in self.groups):
                return
            self._dispatch()
            self._probe(now)
            refs = [b.inflight[1] for b in self.boards if b.state == "busy" and b.inflight]
            refs += [b.probe for b in self.boards if b.state == "down" and b.probe is not None]
            if not refs:
                time.sleep(0.05)
                continue
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=0)
            if not ready and self._prefetch():  # export the next subnet while the boards measure
                continue
            if not ready:
                ready, _ = self.ray.wait(refs, num_returns=1, timeout=0.2)
            for ref in ready:
                self._collect(ref)
            self._deadlines(time.monotonic())

    def _dispatch(self) -> None:
        for b in self.boards:
            if b.state != "idle":
                continue
            g = self.groups[b.group]
            if not g.todo or g.gave_up:
                continue
            i, arch_id, arch = g.todo.popleft()
            try:
                data, suffix, shape = self._payload(b.group, g, arch_id, arch)
            except (DeviceUnavailableError, ProfileError):
                raise
            except HwnasError as exc:  # this subnet cannot be built: reported, the run goes on
                g.failed.append({"arch_id": arch_id, "error": str(exc)})
                self._event(i, arch_id, "failed", b.name, error=str(exc))
                continue
            ref = b.actor.measure.remote(arch_id, data, suffix, shape, g.settings.to_dict())
            g.taken[arch_id] = (i, arch_id, arch)
            b.state, b.inflight = "busy", (arch_id, ref, time.monotonic() + self._timeout(g))
            b.handed_out = time.monotonic()

    def _prefetch(self) -> bool:
        """Build the model of one queued subnet ahead (at most one per board of its group); whether
        one was built.  A subnet that cannot be built is left for ``_dispatch`` to report."""
        for gi, g in enumerate(self.groups):
            if g.gave_up:
                continue
            ahead = sum(1 for (k, _) in self.payloads if k == gi) - len(g.taken)
            if ahead >= len(g.boards):
                continue
            for _, arch_id, arch in g.todo:
                if (gi, arch_id) not in self.payloads:
                    try:
                        self._payload(gi, g, arch_id, arch)
                    except ProfileError:
                        raise
                    except HwnasError:
                        return False
                    return True
        return False

    def _collect(self, ref: Any) -> None:
        b = next((x for x in self.boards if x.inflight and x.inflight[1] == ref), None)
        if b is None:  # a probe
            b = next(x for x in self.boards if x.probe == ref)
            b.probe = None
            try:
                why = self.ray.get(ref)
            except self.ray_error as exc:
                why = f"its Ray actor is not back: {str(exc).splitlines()[0]}"
            if why is None:
                b.state, b.down_since, b.last_error = "idle", None, None
            else:
                b.last_error = why
                b.pause = min(b.pause * 2, self.max_pause)
                b.next_probe = time.monotonic() + b.pause
            return
        arch_id = b.inflight[0]
        g = self.groups[b.group]
        try:
            res = self.ray.get(ref)
        except self.ray_error as exc:  # the actor's worker died (killed, out of memory, node lost)
            why = f"Ray worker died: {str(exc).splitlines()[0][:200]}"
            self._requeue(b, arch_id, why)
            self._down(b, why)
            return
        if res["ok"] and res["fp_hash"] != g.fp.fp_hash:
            res = {"ok": False, "kind": "unavailable",
                   "error": f"the board's fingerprint changed during the run ({res['fp_hash']} != {g.fp.fp_hash})"}
            b.state = "retired"
        if not res["ok"] and res["kind"] == "unavailable":
            self._requeue(b, arch_id, res["error"])
            if b.state != "retired":
                self._down(b, res["error"])
            else:
                b.inflight, b.last_error = None, res["error"]
            return
        i, _, arch = g.taken.pop(arch_id)
        self.payloads.pop((b.group, arch_id), None)
        b.state, b.inflight = "idle", None
        if not res["ok"]:  # the subnet itself: reported failed, not retried
            b.failed += 1
            g.failed.append({"arch_id": arch_id, "error": res["error"]})
            self._event(i, arch_id, "failed", b.name, error=res["error"])
            return
        if arch_id in g.done:  # an answer for a subnet already written (cannot happen with one in flight)
            return
        m = Measurement.from_dict(res["measurement"])
        self.store.add_measurement(g.fp.fp_hash, g.rc, arch_id, m, batch=g.spec.batch, precision=g.spec.precision,
                                   arch=arch, supernet=self.supernet, device=b.name)
        g.done.add(arch_id)
        g.measured += 1
        b.measured += 1
        b.busy_s += res["seconds"]
        b.turnaround_s += time.monotonic() - b.handed_out
        self.timed.append({"group": g, "timed_s": m.timed_s})
        for r in self.retries:
            if r["arch_id"] == arch_id and r["device"] == g.spec.name and r["measured_by"] is None:
                r["measured_by"] = b.name
        self._event(i, arch_id, "measured", b.name, median_ms=m.median_ms)

    def _deadlines(self, now: float) -> None:
        for b in self.boards:
            if b.state == "busy" and b.inflight and now > b.inflight[2]:
                arch_id, ref, _ = b.inflight
                why = f"no answer within {self._timeout(self.groups[b.group]):g} s"
                self._requeue(b, arch_id, why)
                self.ray.kill(b.actor, no_restart=False)  # frees the board's slot; Ray starts the actor again
                self._down(b, why)

    def _probe(self, now: float) -> None:
        for b in self.boards:
            if b.state == "down" and b.probe is None and now >= b.next_probe:
                b.probe = b.actor.check.remote()

    def _give_up_groups(self, now: float) -> None:
        for g in self.groups:
            if g.gave_up or not (g.todo or g.taken):
                continue
            live = [b for b in g.boards if b.state in ("idle", "busy")]
            if live:
                g.all_down_since = None
                continue
            g.all_down_since = g.all_down_since or now
            if now - g.all_down_since >= self.board_wait_s or all(b.state == "retired" for b in g.boards):
                errors = "; ".join(f"{b.name}: {b.last_error}" for b in g.boards)
                g.gave_up = f"no board answered for {self.board_wait_s:g} s ({errors})"
                g.unmeasured = [aid for _, aid, _ in g.todo]
                g.todo.clear()


__all__ = ["BoardWorker", "FleetBoard", "GroupBuilder", "check_fleet", "load_fleet_file", "profile_fleet"]
