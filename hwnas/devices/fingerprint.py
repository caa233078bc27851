"""Device fingerprints: what a latency number depends on, and a short stable hash of it.

The hash covers the hardware (CPU model, cores, usable CPUs, frequency governor; GPU backends add the
GPU they run on to the runtime fields), the OS family and machine type, the Python minor version, the version of the runtime library the backend uses and
the runtime settings (backend, execution provider, threads, batch, precision).  The hostname, kernel
release and unrelated library versions are recorded but not hashed, so moving to an identical box or
upgrading numpy does not invalidate measurements.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

HASH_LEN = 12
# hashed host fields; runtime fields are hashed in full (see ``make_fingerprint``)
HOST_HASHED = (
    "cpu_model",
    "physical_cores",
    "logical_cores",
    "usable_cpus",
    "governor",
    "os",
    "machine",
    "python",
)
# which library's version matters for which backend
BACKEND_LIBS = {
    "ort": ("onnxruntime",),
    "torch-cpu": ("torch",),
    "torch-cuda": ("torch",),
    "tensorrt": ("tensorrt",),
    "openvino": ("openvino",),
}
_DISTS = {
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11"),
    "openvino": ("openvino",),
}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _cpuinfo() -> tuple[str, int | None]:
    """CPU model name and physical core count from /proc/cpuinfo (x86 and ARM spellings)."""
    text = _read("/proc/cpuinfo") or ""
    model = None
    cores: set[tuple[str, str]] = set()
    phys, core = "0", None
    for line in text.splitlines() + [""]:
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key in ("model name", "Model", "Hardware", "cpu model") and not model and val:
            model = val
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
        elif not line.strip():
            if core is not None:
                cores.add((phys, core))
            phys, core = "0", None
    if not model:
        model = (_read("/proc/device-tree/model") or "").rstrip("\x00") or platform.processor() or platform.machine()
    return model, len(cores) or None


def _lib_versions() -> dict[str, str]:
    out = {}
    for lib, dists in _DISTS.items():
        for d in dists:
            try:
                out[lib] = metadata.version(d)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def _gpus() -> list[str]:
    """GPU names from nvidia-smi (no CUDA library is imported)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        res = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


@lru_cache(maxsize=1)
def host_info() -> dict[str, Any]:
    """Facts about this machine that latency depends on (cached for the process)."""
    model, physical = _cpuinfo()
    logical = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    gpus = _gpus()
    return {
        "cpu_model": model,
        "physical_cores": physical or logical,
        "logical_cores": logical,
        "usable_cpus": usable,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "os": platform.system(),
        "os_release": platform.release(),
        "machine": platform.machine(),
        "python": ".".join(platform.python_version_tuple()[:2]),
        "python_full": platform.python_version(),
        "libs": _lib_versions(),
        "gpu": ", ".join(gpus) or None,
        "hostname": platform.node(),
    }


@dataclass(frozen=True)
class Fingerprint:
    """Everything recorded about a device + runtime, and the hash of the latency-relevant part."""

    fp_hash: str
    host: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"fp_hash": self.fp_hash, "host": dict(self.host), "runtime": dict(self.runtime)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        return cls(fp_hash=str(data["fp_hash"]), host=dict(data.get("host", {})), runtime=dict(data.get("runtime", {})))


def make_fingerprint(runtime: Mapping[str, Any], host: Mapping[str, Any] | None = None) -> Fingerprint:
    """Fingerprint of ``runtime`` (backend, provider, threads, batch, precision, ...) on ``host``.

    ``runtime`` must hold ``backend``; all its fields are hashed, together with the host fields in
    ``HOST_HASHED`` and the version of the backend's runtime library.
    """
    h = dict(host if host is not None else host_info())
    rt = dict(runtime)
    libs = h.get("libs", {})
    hashed = {k: h.get(k) for k in HOST_HASHED}
    hashed["runtime"] = rt
    hashed["lib_versions"] = {lib: libs.get(lib) for lib in BACKEND_LIBS.get(str(rt.get("backend")), ())}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()
    return Fingerprint(fp_hash=digest[:HASH_LEN], host=h, runtime=rt)


__all__ = ["Fingerprint", "HOST_HASHED", "host_info", "make_fingerprint"]
