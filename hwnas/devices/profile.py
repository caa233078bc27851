"""Profiling jobs: measure many subnets on a device into the store (resumable), or one ONNX file."""

from __future__ import annotations

import hashlib
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from hwnas.devices.backends import create_backend, fingerprint_for, get_backend_class, runtime_config
from hwnas.devices.backends.base import LocalBackend
from hwnas.devices.calibration import BURST_S, START_S, AnchorCalibration, settle
from hwnas.devices.modelfile import check_model_file, is_openvino_ir
from hwnas.devices.protocol import Measurement, ProtocolSettings
from hwnas.devices.spec import DeviceSpec, load_device
from hwnas.devices.store import Store
from hwnas.errors import DeviceUnavailableError, HwnasError, ModelFileError, StoreError

Arch = dict
# build_model(arch) -> (ONNX path or nn.Module, full input shape or None)
ModelBuilder = Callable[[Arch], tuple[Any, Sequence[int] | None]]


class ProfileError(HwnasError, ValueError):
    """A profiling request is invalid (e.g. too few samples)."""


@dataclass(frozen=True)
class ProfileEvent:
    """Progress of a profiling job, passed to the ``progress`` callback after each arch."""

    done: int
    total: int
    arch_id: str
    status: str  # "measured" | "skipped" | "failed"
    median_ms: float | None = None
    error: str | None = None
    board: str | None = None  # fleet profiling: the board that measured it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_spec(device: str | Path | DeviceSpec) -> DeviceSpec:
    return device if isinstance(device, DeviceSpec) else load_device(device)


def require_available(spec: DeviceSpec) -> None:
    reason = get_backend_class(spec.backend).unavailable_reason(spec)
    if reason:
        raise DeviceUnavailableError(f"device {spec.name!r} cannot run here: {reason}")


def visit_settings(s: ProtocolSettings, r: int) -> ProtocolSettings:
    """The protocol for visit ``r`` (0-based) of ``s.rounds``: the time cap is shared by the visits, and
    visits after the first need only a short re-warm-up (caches, branch predictors)."""
    if s.rounds <= 1:
        return s
    cap = max(s.time_cap_s / s.rounds, 0.05)
    return replace(s, time_cap_s=cap,
                   warmup_s=min(s.warmup_s, cap) if r == 0 else min(s.warmup_s, 0.05, cap))


ANCHOR_META = "anchor_ms"


def anchor_key(fp_hash: str, rc: str, spec: DeviceSpec, anchor_id: str) -> str:
    """The store ``meta`` key of the anchor's calibration for one device key."""
    return f"{ANCHOR_META}|{fp_hash}|{rc}|{spec.batch}|{spec.precision}|{anchor_id}"


def combine_rounds(visits: Sequence[Measurement]) -> Measurement:
    """One measurement from several visits of the same model: the fastest visit (lowest ``median_ms``),
    with every visit's latency in ``round_medians_ms`` and the time of all visits in ``timed_s``/``wall_s``."""
    if not visits:
        raise ProfileError("no visits to combine")
    best = min(visits, key=lambda m: m.median_ms)
    if len(visits) == 1:
        return best
    return replace(
        best,
        round_medians_ms=[float(m.median_ms) for m in visits],
        timed_s=float(sum(m.timed_s for m in visits)),
        wall_s=float(sum(m.wall_s for m in visits)),
    )


def measure_visits(backend: Any, s: ProtocolSettings) -> Measurement:
    """``s.rounds`` back-to-back visits of one loaded model, as one measurement (``combine_rounds``)."""
    return combine_rounds([backend.measure(visit_settings(s, r)) for r in range(max(int(s.rounds), 1))])


def profile_archs(
    store: Store,
    spec: DeviceSpec | str,
    archs: Iterable[tuple[str, Arch]],
    build_model: ModelBuilder,
    supernet_name: str,
    *,
    settings: ProtocolSettings | None = None,
    progress: Callable[[ProfileEvent], None] | None = None,
    delete_models: bool = False,
    chunk_size: int = 16,
    anchor: tuple[str, Arch] | None = None,
) -> dict[str, Any]:
    """Measure each ``(arch_id, arch)`` on ``spec`` and write each row to ``store`` as it goes.

    Archs already in the store for this device fingerprint, runtime config, batch and precision are
    skipped, so a killed run resumes where it stopped.  ``build_model(arch)`` returns an ONNX path
    (``ort``/``tensorrt``/``remote``) or an ``nn.Module`` (torch backends) and the full input shape
    (or ``None`` to read it from the ONNX file); with ``delete_models`` returned files are deleted
    once measured.  With ``settings.rounds`` > 1 the archs are taken in chunks of ``chunk_size``: all
    models of a chunk are loaded, each is measured ``rounds`` times in turn (interleaved, so a burst of
    interference from other tenants of the machine hits one visit, not all of them) and the fastest
    visit is stored (``combine_rounds``).  A row is written as soon as its last visit is taken, and each
    earlier visit is kept in the store until then, so a run killed at any moment loses at most the
    visit in flight; a restart resumes from the kept visits.  An arch whose model cannot be
    built or loaded (any ``HwnasError`` but an unavailable device or a store error, which stop the job)
    is reported in ``failed`` and the job goes on.

    ``anchor`` = ``(anchor_id, arch)``: a reference arch built with ``build_model`` too.  For local
    backends with ``settings.anchored`` every model is timed in blocks alternating with it (anchored
    timing, see ``run_protocol``).  The anchor's own latency is timed alone in bursts spread through
    the run (``hwnas.devices.calibration``): the first run of a store's device key (fingerprint,
    runtime config, batch, precision) calibrates it, later runs check it for drift, and every row of
    the key is on the one calibration stored (``summary["calibration"]`` says what the check did).

    Returns a summary: counts, ``wall_s`` (the whole job), ``timed_s`` (inside timed inferences),
    ``overhead`` (= wall / timed) and ``subnets_per_min``.
    """
    spec = as_spec(spec)
    require_available(spec)
    s = settings or ProtocolSettings.from_mapping(spec.protocol)
    fp = fingerprint_for(spec)
    store.add_fingerprint(fp)
    rc = runtime_config(spec)
    done = store.measured_arch_ids(fp.fp_hash, rc, spec.batch, spec.precision)
    kept = store.visits(fp.fp_hash, rc, spec.batch, spec.precision)
    todo: dict[str, Arch] = {}
    for arch_id, arch in archs:
        todo.setdefault(arch_id, arch)
    total = len(todo)
    measured, skipped, timed_s = 0, 0, 0.0
    failed: list[dict[str, str]] = []
    t0 = time.perf_counter()
    items = list(enumerate(todo.items(), start=1))
    rounds = max(int(s.rounds), 1)
    chunk = 1 if rounds == 1 else max(int(chunk_size), 1)
    pending: list[tuple[int, str, Arch]] = []

    def fail(i: int, arch_id: str, exc: Exception) -> None:
        failed.append({"arch_id": arch_id, "error": str(exc)})
        if progress:
            progress(ProfileEvent(i, total, arch_id, "failed", error=str(exc)))

    anchor_runner: Any = None
    anchor_ms: float | None = None
    calib: AnchorCalibration | None = None
    stored_cal: float | None = None
    outcome: Any = None
    outer = ExitStack()

    def open_backend(stack: ExitStack, arch: Arch) -> Any:
        """Build ``arch``'s model and load it on the device, both released when ``stack`` closes."""
        model, shape = build_model(arch)
        if delete_models and isinstance(model, (str, Path)):
            stack.callback(Path(model).unlink, missing_ok=True)
        return stack.enter_context(create_backend(spec, model=model, input_shape=shape))

    use_anchor = anchor is not None and bool(s.anchored) and issubclass(get_backend_class(spec.backend), LocalBackend)

    def start_anchor() -> None:
        """Load the anchor and start its calibration; done once, before the first chunk."""
        nonlocal anchor_runner, anchor_ms, calib, stored_cal
        assert anchor is not None
        aid, aarch = anchor
        try:
            anchor_runner = open_backend(outer, aarch)
        except (DeviceUnavailableError, StoreError):
            raise
        except HwnasError as exc:
            raise ProfileError(f"the anchor arch {aid} cannot be built or loaded: {exc}") from None
        got = store.get_meta(anchor_key(fp.fp_hash, rc, spec, aid))
        if got is None:
            same = [r for r in store.measurements(fp_hash=fp.fp_hash, supernet=supernet_name)
                    if r["runtime_config"] == rc and r["batch"] == spec.batch and r["precision"] == spec.precision]
            # rows of a first run killed before its calibration was settled are anchored (and put on
            # this run's calibration at its end); only rows measured without the anchor cannot mix
            old = [r for r in same if getattr(store.measurement(fp.fp_hash, rc, r["arch_id"], spec.batch,
                                                                spec.precision), "anchor_ratio", None) is None]
            if old:
                raise ProfileError(
                    f"store {store.path} already holds {len(old)} {supernet_name} rows for device {spec.name!r} "
                    "measured without anchored timing (an older hwnas, or anchored = 0); mixing the two would put "
                    "them on different scales: profile into a new store, or set anchored = 0 in the spec's "
                    "[protocol] table to go on without the anchor")
        calib = AnchorCalibration(anchor_runner, s.seed)
        calib.burst(START_S if got is not None else 2 * START_S)
        # rows are written with the stored calibration, or (first run of this key) the start burst's
        # estimate until the run's own estimate is settled at its end
        stored_cal = float(got) if got is not None else None
        anchor_ms = stored_cal if stored_cal is not None else calib.estimate()

    def run_chunk(group: list[tuple[int, str, Arch]]) -> None:
        if use_anchor and anchor_runner is None:
            start_anchor()
        with ExitStack() as stack:
            live: list[tuple[int, str, Arch, Any]] = []
            for i, arch_id, arch in group:
                try:
                    backend = open_backend(stack, arch)
                except (DeviceUnavailableError, StoreError):
                    raise
                except HwnasError as exc:  # this arch's model cannot be built or loaded: note it, go on
                    fail(i, arch_id, exc)
                    continue
                live.append((i, arch_id, arch, backend))
            # visits kept by a run killed between rounds count; each new visit is kept as it is taken
            visits: dict[str, dict[int, Measurement]] = {arch_id: dict(kept.get(arch_id, {}))
                                                          for _, arch_id, _, _ in live}

            def finish(i: int, arch_id: str, arch: Arch) -> None:
                nonlocal measured, timed_s
                m = combine_rounds([visits[arch_id][r] for r in sorted(visits[arch_id])])
                store.add_measurement(
                    fp.fp_hash, rc, arch_id, m, batch=spec.batch, precision=spec.precision,
                    arch=arch, supernet=supernet_name, device=spec.name,
                )  # fmt: skip
                done.add(arch_id)
                measured += 1
                timed_s += m.timed_s
                if progress:
                    progress(ProfileEvent(i, total, arch_id, "measured", median_ms=m.median_ms))

            for r in range(rounds):
                rs = visit_settings(s, r)
                # the order alternates so no model is always measured right after the same neighbour
                for i, arch_id, arch, backend in (live if r % 2 == 0 else live[::-1]):
                    if arch_id not in visits:
                        continue
                    if r not in visits[arch_id]:
                        try:
                            if anchor_runner is not None:
                                m = backend.measure(rs, anchor=anchor_runner, anchor_ms=anchor_ms)
                            else:
                                m = backend.measure(rs)
                        except (DeviceUnavailableError, StoreError):
                            raise
                        except HwnasError as exc:
                            fail(i, arch_id, exc)
                            del visits[arch_id]
                            continue
                        visits[arch_id][r] = m
                        if calib is not None and calib.due():
                            calib.burst(BURST_S)
                        if rounds > 1 and len(visits[arch_id]) < rounds:
                            store.add_visit(fp.fp_hash, rc, arch_id, r, m, batch=spec.batch, precision=spec.precision)
                    if len(visits[arch_id]) >= rounds:  # its last visit: the row is written at once
                        finish(i, arch_id, arch)
                        del visits[arch_id]

    with outer:
        for i, (arch_id, arch) in items:
            if arch_id in done:
                skipped += 1
                if progress:
                    progress(ProfileEvent(i, total, arch_id, "skipped"))
                continue
            pending.append((i, arch_id, arch))
            if len(pending) >= chunk:
                run_chunk(pending)
                pending = []
        if pending:
            run_chunk(pending)
        if calib is not None and anchor is not None:
            calib.finish()
            outcome = settle(store, anchor_key(fp.fp_hash, rc, spec, anchor[0]), calib,
                             (fp.fp_hash, rc, spec.batch, spec.precision), stored_cal, f"device {spec.name!r}")
            anchor_ms = outcome.anchor_ms
    wall = time.perf_counter() - t0
    return {
        "device": spec.name,
        "fp_hash": fp.fp_hash,
        "runtime_config": rc,
        "batch": spec.batch,
        "precision": spec.precision,
        "supernet": supernet_name,
        "store": str(store.path),
        "requested": total,
        "measured": measured,
        "skipped": skipped,
        "failed": failed,
        "wall_s": wall,
        "timed_s": timed_s,
        "overhead": wall / timed_s if timed_s > 0 else None,
        "subnets_per_min": measured / wall * 60 if wall > 0 and measured else 0.0,
        "settings": s.to_dict(),
        "anchor": {"arch_id": anchor[0], "anchor_ms": anchor_ms} if anchor is not None and anchor_ms else None,
        "calibration": outcome.to_dict() if outcome is not None else None,
        "warnings": [outcome.message] if outcome is not None and outcome.message else [],
    }


def file_arch_id(path: str | Path) -> str:
    """A store key for an arbitrary ONNX file: the hash of its bytes."""
    h = hashlib.sha1()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"file-{h.hexdigest()[:12]}"


def profile_onnx_file(
    path: str | Path,
    device: str | Path | DeviceSpec,
    *,
    settings: ProtocolSettings | None = None,
    time_cap_s: float | None = None,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    store: Store | str | Path | None = None,
) -> dict[str, Any]:
    """Measure any ONNX file (or OpenVINO IR ``.xml`` on an ``openvino`` device) on ``device``; the file is
    validated first (``ModelFileError``, one line).

    ``input_shape`` fixes dynamic dimensions: one shape (the first input's) or ``{input name: shape}``
    (trtexec's ``--shapes``); the leading (batch) dim is the spec's batch.  With ``store`` (a ``Store`` or
    a path) the result is also written, keyed by the hash of the file's bytes; a path is opened only
    after the model has loaded and run, so a model that fails leaves no new store behind.  Returns
    ``{"model", "device", "runtime_config", "measurement", "fingerprint", "settings"}``.
    """
    p = check_model_file(path)
    spec = as_spec(device)
    if is_openvino_ir(p) and spec.backend != "openvino":
        raise ModelFileError(f"{p} is an OpenVINO IR; measure it on a device with backend 'openvino' (e.g. --device "
                             f"ov-cpu-1t), not {spec.name!r} (backend {spec.backend!r}), or measure its ONNX model")
    require_available(spec)
    s = settings or ProtocolSettings.from_mapping(spec.protocol)
    s = s.replace(time_cap_s=time_cap_s)
    if isinstance(input_shape, Mapping) and spec.backend != "ort":  # only the ORT backend takes names
        if len(input_shape) != 1:
            raise ModelFileError(f"backend {spec.backend!r} takes the shape of one input; got shapes for "
                                 f"{', '.join(map(str, input_shape))}")
        input_shape = next(iter(input_shape.values()))
    with create_backend(spec, model=p, input_shape=input_shape) as backend:
        # with rounds > 1 the visits are back to back (there is nothing to interleave with)
        m = measure_visits(backend, s)
        fp = getattr(backend, "last_fingerprint", None) or backend.fingerprint()
    rc = runtime_config(spec)
    out = {
        "model": str(p),
        "device": spec.name,
        "runtime_config": rc,
        "measurement": m.to_dict(),
        "fingerprint": fp.to_dict(),
        "settings": s.to_dict(),
    }
    if store is not None:
        arch_id = file_arch_id(p)
        with ExitStack() as stack:
            st = store if isinstance(store, Store) else stack.enter_context(Store(store))
            st.add_fingerprint(fp)
            st.add_measurement(fp.fp_hash, rc, arch_id, m, batch=spec.batch, precision=spec.precision,
                               device=spec.name)
        out["arch_id"] = arch_id
    return out


def measure_anchored(store: Store, spec: DeviceSpec | str, model: Any, anchor: tuple[str, Any], *,
                     input_shape: Sequence[int] | None = None, anchor_shape: Sequence[int] | None = None,
                     settings: ProtocolSettings | None = None) -> Measurement:
    """One model (an ONNX path, or a module on torch backends) timed anchored, in new runtime sessions,
    against the calibration ``store`` holds for ``spec`` and the anchor ``(anchor_id, anchor model)``:
    the same scale as the store's rows.  Without a calibration in the store the anchor is calibrated
    here (``MIN_CALIBRATION_S`` of bursts) and nothing is written."""
    from hwnas.devices.calibration import MIN_CALIBRATION_S

    spec = as_spec(spec)
    require_available(spec)
    if not issubclass(get_backend_class(spec.backend), LocalBackend):
        raise ProfileError(f"anchored timing needs a local backend; device {spec.name!r} is {spec.backend!r}")
    s = settings or ProtocolSettings.from_mapping(spec.protocol)
    with create_backend(spec, model=anchor[1], input_shape=anchor_shape) as a, \
            create_backend(spec, model=model, input_shape=input_shape) as b:
        got = store.get_meta(anchor_key(fingerprint_for(spec).fp_hash, runtime_config(spec), spec, anchor[0]))
        if got is None:
            cal = AnchorCalibration(a, s.seed)
            cal.burst(MIN_CALIBRATION_S)
            anchor_ms = cal.estimate()
        else:
            anchor_ms = float(got)
        return b.measure(s.replace(anchored=1), anchor=a, anchor_ms=anchor_ms)


def stratified_sample(
    space: Any,
    n: int,
    rng: np.random.Generator | int | None,
    size_fn: Callable[[Arch], float],
    *,
    pool_factor: int = 5,
) -> list[tuple[str, Arch]]:
    """``n`` distinct archs spread evenly over small/medium/large (terciles of ``size_fn``).

    ``space`` is a ``SearchSpace`` (``sample``, ``min_arch``, ``max_arch``, ``arch_id``, ``canonical``).
    ``space.min_arch()`` and ``space.max_arch()`` are always included; the rest are drawn in turn from
    the three size bins of a random pool of ``pool_factor * n`` archs, deduplicated by ``arch_id``.
    Fewer than ``n`` come back only if the space has fewer distinct archs than the pool found.
    """
    if n < 2:
        raise ProfileError(f"need at least 2 samples (the smallest and the largest arch are always measured); got {n}")
    gen = np.random.default_rng(rng)
    canon: Callable[[Mapping[str, Any]], Arch] = getattr(space, "canonical", dict)
    chosen: dict[str, Arch] = {}
    for a in (space.min_arch(), space.max_arch()):
        chosen.setdefault(space.arch_id(a), canon(a))
    pool: dict[str, Arch] = {}
    for _ in range(max(pool_factor * n, 30)):
        a = space.sample(gen)
        aid = space.arch_id(a)
        if aid not in chosen:
            pool.setdefault(aid, canon(a))
    ids = list(pool)
    if ids:
        sizes = np.array([float(size_fn(pool[i])) for i in ids])
        edges = np.quantile(sizes, [1 / 3, 2 / 3])
        labels = np.digitize(sizes, edges, right=True)  # 0 small, 1 medium, 2 large
        bins = [[ids[j] for j in gen.permutation(np.flatnonzero(labels == k))] for k in range(3)]
        k = 0
        while len(chosen) < n and any(bins):
            if bins[k]:
                aid = bins[k].pop()
                chosen[aid] = pool[aid]
            k = (k + 1) % 3
    return list(chosen.items())


__all__ = ["ModelBuilder", "ProfileError", "ProfileEvent", "ProtocolSettings", "anchor_key", "as_spec", "combine_rounds",
           "file_arch_id", "measure_anchored", "measure_visits", "profile_archs", "profile_onnx_file", "require_available", "stratified_sample",
           "visit_settings"]
