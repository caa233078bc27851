"""Validation of ONNX model files (and OpenVINO IR files) and uploads: one clear ``ModelFileError`` line for
a bad model."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from hwnas.errors import ModelFileError

def _onnx() -> Any | None:
    try:
        return importlib.import_module("onnx")
    except ImportError:
        return None  # onnxruntime's loader then reports malformed models


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def check_onnx_bytes(data: bytes, label: str = "upload") -> None:
    """Raise ``ModelFileError`` if ``data`` is not a well-formed ONNX model."""
    if not data:
        raise ModelFileError(f"{label} is empty, not an ONNX model")
    onnx = _onnx()
    if onnx is None:
        return
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{label} is not an ONNX model or is truncated ({_first_line(exc)})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError, and C++ errors surfaced as others
        raise ModelFileError(f"{label} is not a valid ONNX model ({_first_line(exc)})") from None


def check_onnx_file(path: str | Path) -> Path:
    """Raise ``ModelFileError`` if ``path`` is missing, empty, garbage or truncated; return it as a Path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"model file {p} does not exist")
    if not p.is_file():
        raise ModelFileError(f"model path {p} is not a file")
    if p.stat().st_size == 0:
        raise ModelFileError(f"model file {p} is empty, not an ONNX model")
    onnx = _onnx()
    if onnx is not None:
        try:  # by path: handles external data and models over 2 GB
            onnx.checker.check_model(str(p))
        except Exception as exc:  # onnx.checker.ValidationError, and C++ errors surfaced as others
            raise ModelFileError(f"model file {p} is not a valid ONNX model or is truncated ({_first_line(exc)})") from None
    return p


def is_openvino_ir(path: str | Path) -> bool:
    """An OpenVINO IR: the ``.xml`` graph of an ``.xml`` + ``.bin`` pair."""
    return Path(path).suffix.lower() == ".xml"


def check_model_file(path: str | Path) -> Path:
    """``check_onnx_file``, or for an OpenVINO IR (``.xml``) that it and its ``.bin`` weights are there and not
    empty (OpenVINO parses the IR when a backend loads it); returns the path."""
    p = Path(path).expanduser()
    if not is_openvino_ir(p):
        return check_onnx_file(p)
    if not p.exists():
        raise ModelFileError(f"model file {p} does not exist")
    if not p.is_file():
        raise ModelFileError(f"model path {p} is not a file")
    if p.stat().st_size == 0:
        raise ModelFileError(f"model file {p} is empty, not an OpenVINO IR")
    weights = p.with_suffix(".bin")
    if not weights.is_file():
        raise ModelFileError(f"OpenVINO IR {p} has no weights file {weights.name} beside it")
    return p


__all__ = ["check_model_file", "check_onnx_bytes", "check_onnx_file", "is_openvino_ir"]
