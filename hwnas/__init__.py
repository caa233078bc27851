"""hwnas: hardware-aware deployment of weight-sharing supernets.

Profile a device, search for a latency target, export a verified engine::

    import hwnas
    hwnas.profile("ort-cpu-1t", samples=100)
    found = hwnas.search("ort-cpu-1t", latency="0.25ms")
    hwnas.export(found.best_arch, "best.int8.onnx", format="onnx-int8")

The jobs live in ``hwnas.jobs`` and are imported on first use, so ``import hwnas`` stays light (the
edge agent needs only numpy and onnxruntime).
"""

__version__ = "0.1.0"

from hwnas.errors import HwnasError  # noqa: E402

_JOBS = ("profile", "profile_model", "fit_predictor", "predict", "search", "export", "run", "create_supernet")


def __getattr__(name: str):
    if name in _JOBS:
        import hwnas.jobs

        return getattr(hwnas.jobs, name)
    if name == "list_supernets":
        from hwnas.supernet.registry import list_supernets

        return list_supernets
    raise AttributeError(f"module 'hwnas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_JOBS, "list_supernets"])


__all__ = ["HwnasError", "__version__", *_JOBS, "list_supernets"]
