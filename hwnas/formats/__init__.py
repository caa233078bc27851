"""Export formats by name: one module per format (``onnx``, ``onnx_int8``, ``openvino``, ``tensorrt``,
``best``), shared helpers in ``common``, the torch -> ONNX step in ``onnx_export``.

A format module registers its exporter::

    @register_format("my-format", precisions=("fp32",))
    def export_my_format(arch, out, supernet, weights=None, *, batch=1, command=None, device=None,
                         progress=None, **options) -> dict:   # the manifest, with "path" and "manifest"

Every module in this package is imported on first lookup, so a new format is one new file here.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from hwnas.errors import ExportError, UnknownNameError


class UnknownFormatError(UnknownNameError):
    pass


@dataclass(frozen=True)
class ExportFormat:
    name: str
    exporter: Callable[..., dict]
    precisions: tuple[str, ...]
    description: str = ""


_FORMATS: dict[str, ExportFormat] = {}
_loaded = False


def register_format(name: str, precisions: tuple[str, ...] = ("fp32",)):
    """Decorator: register an exporter function under ``name``."""

    def deco(fn: Callable[..., dict]) -> Callable[..., dict]:
        doc = (fn.__doc__ or "").strip().splitlines()
        _FORMATS[name] = ExportFormat(name, fn, tuple(precisions), doc[0] if doc else "")
        return fn

    return deco


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("common", "onnx_export"):
            importlib.import_module(f"{__name__}.{mod.name}")


def list_formats() -> list[str]:
    _load_builtin()
    return sorted(_FORMATS)


def get_format(name: str) -> ExportFormat:
    _load_builtin()
    if name not in _FORMATS:
        raise UnknownFormatError(f"unknown format {name!r}; choose one of: {', '.join(list_formats())}")
    return _FORMATS[name]


def export_subnet(arch: Mapping[str, Any], out: str | Path, supernet: Any, weights: str | None = None,
                  fmt: str = "onnx", batch: int = 1, **options: Any) -> dict:
    """Export ``arch`` in format ``fmt``, verified; writes ``out`` and its manifest ``out.json`` (plus any
    files the format documents) or nothing at all.  Returns the manifest (with ``path`` and ``manifest``).

    ``options`` go to the format's exporter (``dynamic_batch``, ``optimize``, ``tolerance``, ``device``,
    ``calibration``, ``time_cap_s``, ``progress``, ``command`` for all; ``precision`` where a format has
    several, e.g. ``tensorrt``).
    """
    f = get_format(fmt)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch must be a positive int; got {batch!r}")
    precision = options.get("precision")
    if precision is not None and precision not in f.precisions:
        raise ExportError(f"precision {precision!r} does not apply to --format {fmt} (it is {', '.join(f.precisions)}); "
                          "--fp16/--int8 choose the precision of --format tensorrt")
    if len(f.precisions) == 1:
        options.pop("precision", None)
    return f.exporter(arch, out, supernet, weights, batch=batch, **options)


__all__ = ["ExportFormat", "UnknownFormatError", "export_subnet", "get_format", "list_formats", "register_format"]
