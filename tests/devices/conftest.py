"""Shared fixtures for the device tests: tiny real ONNX models and a running agent subprocess."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from devices_onnx_models import build_convnet  # noqa: E402
from devices_agent_support import start_agent, stop  # noqa: E402


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-models")


@pytest.fixture(scope="session")
def tiny_onnx(models_dir: Path) -> Path:
    """A ~30 us conv net with a dynamic batch axis."""
    return build_convnet(models_dir / "tiny.onnx", channels=8, size=16)


@pytest.fixture(scope="session")
def medium_onnx(models_dir: Path) -> Path:
    """A conv net of roughly a millisecond on one CPU thread."""
    return build_convnet(models_dir / "medium.onnx", channels=24, size=48)


@pytest.fixture(scope="module")
def agent() -> Iterator[str]:
    """A real agent subprocess with a 1 MB upload limit; yields its URL (http://127.0.0.1:PORT)."""
    proc, url = start_agent("--max-upload-mb", "1")
    try:
        yield url
    finally:
        stop(proc)


def wait_until(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
