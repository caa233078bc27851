"""Supernet families by name (timm's ``create_model`` pattern) and checkpoint loading.

A family module registers an entry point returning a ``SupernetFamily``::

    @register_supernet("my_family")
    def my_family() -> SupernetFamily: ...

Every module under ``hwnas/supernet/families/`` is imported on first lookup, so adding a family is
one new file there (or any module imported before use that calls ``register_supernet``).
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from hwnas.errors import CheckpointError, UnknownSupernetError

_ENTRY_POINTS: dict[str, Callable[[], Any]] = {}
_FAMILY_KINDS: dict[str, type] = {}
ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
DEFAULT_SUPERNET = "mbv3_fmnist"
_loaded = False


def register_supernet(name: str):
    """Decorator: register ``fn() -> SupernetFamily`` under ``name`` (its family class is recorded too,
    so artifacts of an unregistered layout of that class can be read back)."""

    def deco(fn: Callable[[], Any]):
        _ENTRY_POINTS[name] = fn
        get_family.cache_clear()
        return fn

    return deco


def register_family_kind(cls: type) -> type:
    """Record a family class by its ``kind`` (what artifacts store beside the layout)."""
    _FAMILY_KINDS[cls.kind] = cls
    return cls


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import hwnas.supernet.families as fams

    for mod in pkgutil.iter_modules(fams.__path__):
        importlib.import_module(f"{fams.__name__}.{mod.name}")


def list_supernets() -> list[str]:
    _load_builtin()
    return sorted(_ENTRY_POINTS)


@lru_cache(maxsize=None)
def get_family(name: str):
    """The registered family ``name`` (``UnknownSupernetError`` lists the choices)."""
    _load_builtin()
    if name not in _ENTRY_POINTS:
        raise UnknownSupernetError(f"unknown supernet {name!r}; choose one of: {', '.join(list_supernets())}")
    fam = _ENTRY_POINTS[name]()
    if fam.name != name:
        raise UnknownSupernetError(f"supernet entry point {name!r} built a family named {fam.name!r}")
    _FAMILY_KINDS.setdefault(type(fam).kind, type(fam))
    return fam


def resolve_family(obj: Any):
    """A family from a family, a registered name, or a supernet module (its ``family``)."""
    from hwnas.supernet.family import SupernetFamily

    if isinstance(obj, SupernetFamily):
        return obj
    fam = getattr(obj, "family", None)
    if isinstance(fam, SupernetFamily):
        return fam
    return get_family(str(obj))


def registered_name_or_family(family: Any) -> Any:
    """The family's registered name when the registry holds this very layout, else the family itself
    (an unregistered or modified family travels as the object)."""
    try:
        return family.name if get_family(family.name) == family else family
    except UnknownSupernetError:
        return family


def family_from_config(kind: str, config: dict):
    """Rebuild a family of class ``kind`` from its stored ``config_dict`` (an unregistered layout)."""
    _load_builtin()
    for name in list(_ENTRY_POINTS):  # instantiating the entry points records their classes
        get_family(name)
    cls = _FAMILY_KINDS.get(kind)
    if cls is None or not hasattr(cls, "from_config_dict"):
        raise UnknownSupernetError(f"family kind {kind!r} is not known here; known: {', '.join(sorted(_FAMILY_KINDS))}")
    return cls.from_config_dict(config)


def default_weights_path(name: str) -> Path | None:
    p = ZOO_DIR / f"{name}.pt"
    return p if p.is_file() else None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_supernet(name: Any, weights: str | Path | None = None, pretrained: bool = True):
    """Build a family's torch supernet by name (or from a family); load ``weights`` if given, else the
    shipped weights if any.

    ``pretrained=False`` returns freshly initialized weights (enough for latency work, which does
    not depend on weight values).
    """
    family = resolve_family(name)
    net = family.build()
    net.family = family
    net.weights_path = None
    net.weights_hash = "init"
    path = Path(weights) if weights is not None else (default_weights_path(family.name) if pretrained else None)
    if path is not None:
        load_weights(net, path)
        net.weights_path = str(path)
        net.weights_hash = file_sha256(path)[:16]
    net.eval()
    return net


def read_state_dict(path: str | Path, family: Any = None) -> dict:
    """The tensors of a checkpoint (bare or under ``"state_dict"``), loaded with ``weights_only=True``;
    key spellings are mapped to ``family``'s when given."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist; pass the path of a .pt/.pth state dict")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"weights file {p} is not a loadable PyTorch state dict ({first[:160]})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {p} does not hold a state dict (a mapping of names to tensors)")
    if family is not None:
        return resolve_family(family).clean_state_dict(obj)
    return obj


@lru_cache(maxsize=None)
def _reference_shapes(name: str) -> dict:
    import torch

    with torch.device("meta"):  # names and shapes only: no memory for the weights
        net = get_family(name).build()
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def guess_family(sd: dict) -> str | None:
    """The registered family whose parameter names and shapes match ``sd`` exactly, if any."""
    for name in list_supernets():
        fam = get_family(name)
        got = {k: tuple(v.shape) for k, v in fam.clean_state_dict(dict(sd)).items()
               if not k.endswith("num_batches_tracked")}
        if got == _reference_shapes(name):
            return name
    return None


def load_weights(net: Any, path: str | Path) -> None:
    """Load a checkpoint into ``net`` with every key accounted for, or one ``CheckpointError`` line
    naming what is missing, unexpected or mis-shaped and, when it fits another family, which."""
    raw = read_state_dict(path)
    sd = net.family.clean_state_dict(raw)
    ref = net.state_dict()
    missing = [k for k in ref if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in ref]
    shape_bad = [k for k in ref if k in sd and sd[k].shape != ref[k].shape]
    if missing or unexpected or shape_bad:
        other = guess_family(raw)
        hint = f"it matches family {other!r}: pass --supernet {other}" if other else \
            "it matches no registered family"
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shape_bad:
            k = shape_bad[0]
            detail.append(f"{len(shape_bad)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(ref[k].shape)})")
        raise CheckpointError(
            f"weights file {path} is not a {net.family.name} checkpoint: {'; '.join(detail)}; {hint}"
        )
    for k in ref:
        if k not in sd:  # num_batches_tracked absent from old checkpoints
            sd[k] = ref[k]
    net.load_state_dict({k: sd[k] for k in ref}, strict=True)


__all__ = ["DEFAULT_SUPERNET", "create_supernet", "default_weights_path", "family_from_config", "file_sha256", "registered_name_or_family",
           "get_family", "guess_family", "list_supernets", "load_weights", "read_state_dict", "register_family_kind",
           "register_supernet", "resolve_family"]
