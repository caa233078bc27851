"""The ``measure`` callback of the closed loop, on a real device through ``profile_archs`` and a store."""

from __future__ import annotations

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
) -> MeasureFn:
    """A ``measure(archs) -> [median ms]`` that profiles archs on ``spec`` into ``store``.

    Archs already in the store for this device fingerprint and runtime config are not measured
    again (``profile_archs`` resumes), so the smallest arch is timed once per device.  An arch whose
    model fails to build comes back as nan and the search goes on without it.  ``build_model`` is
    ``hwnas.jobs.supernet_model_builder(net, spec.backend, workdir)`` or any
    ``arch -> (onnx path | nn.Module, input shape | None)``.  ``anchor`` (``hwnas.jobs.anchor_of(family)``)
    turns on anchored timing, as ``hwnas profile`` does, so the checks match the profiled rows.
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
        out = []
        for aid, _ in pairs:
            m = store.measurement(summary["fp_hash"], summary["runtime_config"], aid, summary["batch"], summary["precision"])
            out.append(float(m.median_ms) if m is not None else float("nan"))
        return out

    return measure


__all__ = ["device_measure"]
