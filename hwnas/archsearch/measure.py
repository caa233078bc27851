"""The ``measure`` callback of the closed loop, on a real device through ``profile_archs`` and a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from hwnas.archsearch.loop import MeasureFn
from hwnas.supernet.family import SearchSpace


def device_measure(
    store: Any,
    spec: Any,
    build_model: Callable[[dict], tuple[Any, Any]],
    supernet_name: str,
    space: SearchSpace,
    *,
    settings: Any = None,
    progress: Callable[[Any], None] | None = None,
    delete_models: bool = True,
    anchor: tuple[str, dict] | None = None,
    warn: Callable[[str], None] | None = None,
) -> MeasureFn:
    """A ``measure(archs) -> [median ms]`` that profiles archs on ``spec`` into ``store``.

    Archs already in the store for this device fingerprint and runtime config are not measured
    again (``profile_archs`` resumes), so the smallest arch is timed once per device.  An arch whose
    model fails to build comes back as nan and the search goes on without it.  ``build_model`` is
    ``hwnas.jobs.supernet_model_builder(net, spec.backend, workdir)`` or any
    ``arch -> (onnx path | nn.Module, input shape | None)``.  ``anchor`` (``hwnas.jobs.anchor_of(family)``)
    turns on anchored timing, as ``hwnas profile`` does, so the checks match the profiled rows; ``warn``
    receives what the anchor's drift check has to say (``profile_archs``'s ``warnings``).
    """
    from hwnas.devices import load_device, profile_archs
    from hwnas.devices.spec import DeviceSpec

    spec = spec if isinstance(spec, DeviceSpec) else load_device(spec)

    def measure(archs: list[dict]) -> list[float]:
        pairs = [(space.arch_id(a), space.canonical(a)) for a in archs]
        summary = profile_archs(
            store, spec, pairs, build_model, supernet_name,
            settings=settings, progress=progress, delete_models=delete_models, anchor=anchor,
        )  # fmt: skip
        for w in summary.get("warnings") or []:
            if warn is not None:
                warn(w)
        out = []
        for aid, _ in pairs:
            m = store.measurement(summary["fp_hash"], summary["runtime_config"], aid, summary["batch"], summary["precision"])
            out.append(float(m.median_ms) if m is not None else float("nan"))
        return out

    return measure


CONFIRM_TIMED_S = 1.0  # timed phase of a confirmation: about 5x a profiling measurement, for a tight interval


def device_confirm(
    store: Any,
    spec: Any,
    build_model: Callable[[dict], tuple[Any, Any]],
    anchor: tuple[str, dict],
    *,
    settings: Any = None,
) -> Callable[[dict], tuple[float, float, float]]:
    """A ``confirm(arch) -> (latency, ci_low, ci_high)`` for ``closed_loop_search``: the arch's model is
    built again and loaded in a new runtime session, then timed anchored against the store's
    calibration for ``CONFIRM_TIMED_S`` (the 95% interval is that of the median block ratio, times the
    calibration), so the answer does not rest on the one measurement that picked it."""
    from hwnas.devices import load_device
    from hwnas.devices.profile import measure_anchored
    from hwnas.devices.protocol import ProtocolSettings
    from hwnas.devices.spec import DeviceSpec

    spec = spec if isinstance(spec, DeviceSpec) else load_device(spec)
    s = settings or ProtocolSettings.from_mapping(spec.protocol)
    s = s.replace(min_timed_s=max(s.min_timed_s, CONFIRM_TIMED_S), time_cap_s=max(s.time_cap_s, 2 * CONFIRM_TIMED_S))

    def confirm(arch: dict) -> tuple[float, float, float]:
        amodel, ashape = build_model(anchor[1])
        model, shape = build_model(arch)
        try:
            m = measure_anchored(store, spec, model, (anchor[0], amodel), input_shape=shape, anchor_shape=ashape,
                                 settings=s)
        finally:
            for f in (amodel, model):
                if isinstance(f, (str, Path)):
                    Path(f).unlink(missing_ok=True)
        return float(m.median_ms), float(m.ci_low_ms), float(m.ci_high_ms)

    return confirm


__all__ = ["device_confirm", "device_measure"]
