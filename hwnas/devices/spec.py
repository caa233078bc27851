"""Device specs: one TOML file per device; the reference ones ship in ``hwnas/resources/devices/``.

A spec says which backend measures on the device, with which options (threads, execution provider,
graph optimization level, precision, ...), at which batch size, and for remote devices how to reach
the agent (``address``) and which environment variable holds its token (``token_env``)::

    name = "ort-cpu-1t"
    backend = "ort"
    batch = 1
    precision = "fp32"
    [options]
    provider = "CPUExecutionProvider"
    intra_op_threads = 1
    [protocol]          # optional overrides of the measurement protocol
    time_cap_s = 3.0

Specs are looked up in ``$HWNAS_DEVICES_DIR`` (one or more directories separated by ``os.pathsep``)
first, then in ``./devices`` (the current directory's, if there is one), then in the shipped ones;
the first file named ``<name>.toml`` wins.  A path to a ``.toml`` file works too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hwnas.errors import HwnasError, UnknownDeviceError
from hwnas.resources import shipped_devices_dir

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEVICES_ENV = "HWNAS_DEVICES_DIR"
LOCAL_DEVICES_DIR = Path("devices")  # relative: the current directory's, looked up at each call
SHIPPED_DEVICES_DIR = shipped_devices_dir()
_TOP_KEYS = {"name", "description", "backend", "batch", "precision", "options", "protocol", "address", "token_env"}


class DeviceSpecError(HwnasError, ValueError):
    """A device spec file is malformed."""


def _kind(v: Any) -> str:
    """How a TOML value's type reads in a message: ``'4' (a string)``."""
    if isinstance(v, bool):
        t = "a boolean"
    elif isinstance(v, int):
        t = "an integer"
    elif isinstance(v, float):
        t = "a float"
    elif isinstance(v, str):
        t = "a string"
    elif isinstance(v, Mapping):
        t = "a table"
    elif isinstance(v, (list, tuple)):
        t = "an array"
    else:
        t = f"a {type(v).__name__}"
    text = repr(v)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({t})"


@dataclass(frozen=True)
class DeviceSpec:
    """What runs the measurements on one device and how."""

    name: str
    backend: str
    description: str = ""
    batch: int = 1
    precision: str = "fp32"
    options: Mapping[str, Any] = field(default_factory=dict)
    protocol: Mapping[str, Any] = field(default_factory=dict)
    address: str | None = None
    token_env: str | None = None
    source: str | None = None  # the file it was read from

    def __post_init__(self) -> None:
        where = f" in {self.source}" if self.source else ""
        if not self.name or not isinstance(self.name, str):
            raise DeviceSpecError(f"device spec{where} needs a non-empty string 'name'; got {_kind(self.name)}")
        if not isinstance(self.backend, str) or not self.backend:
            raise DeviceSpecError(f"device spec {self.name!r}{where} needs a string 'backend'; got {_kind(self.backend)}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise DeviceSpecError(f"device spec {self.name!r}{where}: 'batch' must be a positive integer; "
                                  f"got {_kind(self.batch)}")
        for key in ("description", "address", "token_env"):
            v = getattr(self, key)
            if not (isinstance(v, str) or (v is None and key != "description")):
                raise DeviceSpecError(f"device spec {self.name!r}{where}: {key!r} must be a string; got {_kind(v)}")
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise DeviceSpecError(
                f"device spec {self.name!r}{where}: 'precision' = {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        for key in ("options", "protocol"):
            if not isinstance(getattr(self, key), Mapping):
                raise DeviceSpecError(f"device spec {self.name!r}{where}: [{key}] must be a table; "
                                      f"got {_kind(getattr(self, key))}")
        if self.backend == "remote" and not (self.address and self.token_env):
            raise DeviceSpecError(f"remote device spec {self.name!r}{where} needs 'address' and 'token_env'")

    def __hash__(self) -> int:  # options/protocol are dicts; hash the canonical JSON instead
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    @property
    def is_remote(self) -> bool:
        return self.backend == "remote"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "backend": self.backend,
            "description": self.description,
            "batch": self.batch,
            "precision": self.precision,
            "options": dict(self.options),
            "protocol": dict(self.protocol),
        }
        if self.address is not None:
            out["address"] = self.address
        if self.token_env is not None:
            out["token_env"] = self.token_env
        if self.source is not None:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> DeviceSpec:
        where = f" in {source}" if source else ""
        unknown = sorted(set(data) - _TOP_KEYS - {"source"})
        if unknown:
            raise DeviceSpecError(
                f"device spec{where} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}"
            )
        return cls(
            name=data.get("name", ""),
            backend=data.get("backend", ""),
            description=data.get("description", ""),
            batch=data.get("batch", 1),
            precision=data.get("precision", "fp32"),
            options=_table(data.get("options", {})),
            protocol=_table(data.get("protocol", {})),
            address=data.get("address"),
            token_env=data.get("token_env"),
            source=source if source is not None else data.get("source"),
        )


def _table(v: Any) -> Any:
    """A TOML table as a plain dict; anything else is passed on for ``DeviceSpec`` to refuse by name."""
    return dict(v) if isinstance(v, Mapping) else v


def check_option_types(spec: DeviceSpec, defaults: Mapping[str, Any]) -> None:
    """Each option the spec sets must have its default's type (ints may stand for floats, never booleans)."""
    where = f" in {spec.source}" if spec.source else ""
    for key, value in spec.options.items():
        default = defaults.get(key)
        if default is None:
            continue
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        elif isinstance(default, str):
            ok, want = isinstance(value, str), "a string"
        elif isinstance(default, Mapping):
            ok, want = isinstance(value, Mapping), "a table"
        elif isinstance(default, (list, tuple)):
            ok, want = isinstance(value, list), "an array"
        else:
            continue
        if not ok:
            raise DeviceSpecError(f"device spec {spec.name!r}{where}: option {key!r} must be {want}; got {_kind(value)}")


@dataclass(frozen=True)
class DeviceInfo:
    """A spec plus whether it can run on this machine, and if not, why."""

    spec: DeviceSpec
    available: bool
    reason: str = ""
    invalid: bool = False  # the spec file itself is malformed (``reason`` says how)

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "available": self.available, "reason": self.reason, "invalid": self.invalid}


def device_dirs() -> list[Path]:
    """Directories searched for ``<name>.toml``, first match wins: ``$HWNAS_DEVICES_DIR``, ``./devices``
    (if it exists), then the shipped specs."""
    dirs = [Path(p).expanduser() for p in os.environ.get(DEVICES_ENV, "").split(os.pathsep) if p]
    local = LOCAL_DEVICES_DIR.absolute()
    if local.is_dir() and local.resolve() != SHIPPED_DEVICES_DIR.resolve():
        dirs.append(local)
    dirs.append(SHIPPED_DEVICES_DIR)
    return dirs


def _spec_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in device_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return found


def load_spec_file(path: str | Path) -> DeviceSpec:
    """Read and validate one spec file (the name defaults to the file's stem)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise DeviceSpecError(f"device spec {p} is a directory, not a .toml file")
    if not p.is_file():
        raise DeviceSpecError(f"device spec file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeviceSpecError(f"device spec {p} cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())
        raise DeviceSpecError(f"device spec {p} is not valid TOML ({why})") from None
    data.setdefault("name", p.stem)
    if data["name"] != p.stem:
        raise DeviceSpecError(f"device spec {p} says name = {data['name']!r}; the name must match the file name ({p.stem!r})")
    spec = DeviceSpec.from_dict(data, source=str(p))
    from hwnas.devices.backends import get_backend_class
    from hwnas.devices.protocol import ProtocolError, ProtocolSettings

    cls = get_backend_class(spec.backend)
    check_option_types(spec, cls.option_defaults)  # a wrong-typed option names itself, before a backend uses it
    cls.resolve_options(spec)  # unknown backend / option -> clear error
    try:
        ProtocolSettings.from_mapping(spec.protocol)
    except ProtocolError as exc:
        raise DeviceSpecError(f"device spec {p}: [protocol] {exc}") from None
    return spec


def device_names() -> list[str]:
    return sorted(_spec_files())


def load_device(name_or_path: str | Path) -> DeviceSpec:
    """A spec by name (``ort-cpu-1t``) or by path to a ``.toml`` file."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if s.endswith(".toml") or os.sep in s or (os.altsep and os.altsep in s):
        if not p.is_file():
            raise UnknownDeviceError(
                f"device spec file {p} does not exist; known devices: {', '.join(device_names()) or '(none)'}"
            )
        return load_spec_file(p)
    files = _spec_files()
    if s not in files:
        raise UnknownDeviceError(
            f"unknown device {s!r}; choose one of: {', '.join(sorted(files)) or '(none found)'}"
            f" (or pass a path to a .toml spec; specs are read from {', '.join(str(d) for d in device_dirs())})"
        )
    return load_spec_file(files[s])


def device_status(spec: DeviceSpec) -> DeviceInfo:
    """Whether ``spec`` can run here; cheap (no model is loaded, remote agents get a 1 s health check)."""
    from hwnas.devices.backends import get_backend_class

    try:
        reason = get_backend_class(spec.backend).unavailable_reason(spec)
    except HwnasError as exc:
        reason = str(exc)
    return DeviceInfo(spec=spec, available=reason is None, reason=reason or "")


def list_devices() -> list[DeviceInfo]:
    """Every known device spec, each saying whether it can run here and if not, why.

    A malformed spec file is listed as unavailable with the parse error as its reason, so one bad file
    does not hide the others.
    """
    out: list[DeviceInfo] = []
    for name, path in sorted(_spec_files().items()):
        try:
            spec = load_spec_file(path)
        except HwnasError as exc:
            reason = " ".join(str(exc).split())  # one line, whatever the parser said
            out.append(DeviceInfo(DeviceSpec(name=name, backend="invalid", source=str(path)), False, reason,
                                  invalid=True))
            continue
        out.append(device_status(spec))
    return out


__all__ = [
    "DEVICES_ENV",
    "DeviceInfo",
    "DeviceSpec",
    "DeviceSpecError",
    "PRECISIONS",
    "SHIPPED_DEVICES_DIR",
    "check_option_types",
    "device_dirs",
    "device_names",
    "device_status",
    "list_devices",
    "load_device",
    "load_spec_file",
]
