"""Architecture encoding for OFA-style MobileNetV3 spaces.

An arch is Once-for-All's dict: ``{"ks": [...], "e": [...], "d": [...], "r": int}`` with one
``ks``/``e`` entry per block slot (``n_stages * max_depth``), one ``d`` per stage and an input
resolution.  ``"image_size"`` and ``"r": [int]`` are accepted as aliases because OFA's own code
spells resolution both ways.  Slots beyond a stage's depth are carried but ignored: two archs that
differ only there are the same network and get the same id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from hwnas.errors import ArchError

Arch = dict  # {"ks": list[int], "e": list[int], "d": list[int], "r": int}


@dataclass(frozen=True)
class ArchSpace:
    """The choices of one supernet family."""

    n_stages: int
    max_depth: int
    ks_list: tuple[int, ...]
    e_list: tuple[int, ...]
    d_list: tuple[int, ...]
    resolutions: tuple[int, ...]
    name: str = ""

    @property
    def n_blocks(self) -> int:
        return self.n_stages * self.max_depth

    # ------------------------------------------------------------------ validation
    def normalize(self, arch: Mapping[str, Any]) -> Arch:
        """Return a canonical copy of ``arch`` or raise ``ArchError`` naming the bad field."""
        if not isinstance(arch, Mapping):
            raise ArchError(f"arch must be a JSON object with keys ks, e, d, r; got {type(arch).__name__}")
        arch = dict(arch)
        if "r" not in arch and "image_size" in arch:
            arch["r"] = arch.pop("image_size")
        else:
            arch.pop("image_size", None)
        if "r" not in arch:
            arch["r"] = max(self.resolutions)  # OFA's archs often omit it; the largest is its default
        missing = [k for k in ("ks", "e", "d") if k not in arch]
        if missing:
            raise ArchError(f"arch is missing field(s) {', '.join(missing)}; expected keys ks, e, d, r")
        unknown = sorted(set(arch) - {"ks", "e", "d", "r", "wid"})
        if unknown:
            raise ArchError(f"arch has unknown field(s) {', '.join(unknown)}; expected keys ks, e, d, r")
        r = arch["r"]
        if isinstance(r, (list, tuple)):
            if len(r) != 1:
                raise ArchError(f"arch field 'r' must be one int (or a list of one); got {list(r)}")
            r = r[0]
        out: Arch = {}
        for key, n, allowed in (
            ("ks", self.n_blocks, self.ks_list),
            ("e", self.n_blocks, self.e_list),
            ("d", self.n_stages, self.d_list),
        ):
            val = arch[key]
            if not isinstance(val, (list, tuple)):
                raise ArchError(f"arch field '{key}' must be a list of {n} ints; got {val!r}")
            if len(val) != n:
                raise ArchError(
                    f"arch field '{key}' has {len(val)} entries; this space ({self.name}) needs {n}"
                )
            vals = []
            for i, v in enumerate(val):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) and not (
                    isinstance(v, float) and v.is_integer()
                ):
                    raise ArchError(f"arch field '{key}[{i}]' = {v!r} is not an int; allowed: {list(allowed)}")
                v = int(v)
                if v not in allowed:
                    raise ArchError(f"arch field '{key}[{i}]' = {v} is not allowed; allowed: {list(allowed)}")
                vals.append(v)
            out[key] = vals
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise ArchError(f"arch field 'r' = {r!r} is not an int; allowed: {list(self.resolutions)}")
        if int(r) not in self.resolutions:
            raise ArchError(f"arch field 'r' = {r} is not allowed; allowed: {list(self.resolutions)}")
        out["r"] = int(r)
        return out

    def canonical(self, arch: Mapping[str, Any]) -> Arch:
        """Normalized arch with the ignored slots (beyond each stage's depth) set to the minimum."""
        a = self.normalize(arch)
        ks, e = list(a["ks"]), list(a["e"])
        for s, d in enumerate(a["d"]):
            for j in range(d, self.max_depth):
                ks[s * self.max_depth + j] = min(self.ks_list)
                e[s * self.max_depth + j] = min(self.e_list)
        return {"ks": ks, "e": e, "d": list(a["d"]), "r": a["r"]}

    def arch_id(self, arch: Mapping[str, Any]) -> str:
        """A short stable id: equal for archs that build the same network."""
        a = self.canonical(arch)
        parts = []
        for s, d in enumerate(a["d"]):
            blocks = [
                f"{a['ks'][s * self.max_depth + j]}{a['e'][s * self.max_depth + j]}" for j in range(d)
            ]
            parts.append("".join(blocks))
        readable = f"r{a['r']}-" + "_".join(parts)
        digest = hashlib.sha1(json.dumps(a, sort_keys=True).encode()).hexdigest()[:8]
        # the readable part can be long for big spaces; the digest keeps ids unique and short
        return readable if len(readable) <= 40 else f"r{a['r']}-{digest}"

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator | int | None = None) -> Arch:
        rng = np.random.default_rng(rng)
        return {
            "ks": [int(x) for x in rng.choice(self.ks_list, self.n_blocks)],
            "e": [int(x) for x in rng.choice(self.e_list, self.n_blocks)],
            "d": [int(x) for x in rng.choice(self.d_list, self.n_stages)],
            "r": int(rng.choice(self.resolutions)),
        }

    def min_arch(self) -> Arch:
        return {
            "ks": [min(self.ks_list)] * self.n_blocks,
            "e": [min(self.e_list)] * self.n_blocks,
            "d": [min(self.d_list)] * self.n_stages,
            "r": min(self.resolutions),
        }

    def max_arch(self) -> Arch:
        return {
            "ks": [max(self.ks_list)] * self.n_blocks,
            "e": [max(self.e_list)] * self.n_blocks,
            "d": [max(self.d_list)] * self.n_stages,
            "r": max(self.resolutions),
        }

    # ------------------------------------------------------------------ integer vector
    @property
    def vector_length(self) -> int:
        return 2 * self.n_blocks + self.n_stages + 1

    @property
    def vector_upper(self) -> np.ndarray:
        """Inclusive upper bound of each gene (lower bound is 0): genes are choice indices."""
        return np.array(
            [len(self.ks_list) - 1] * self.n_blocks
            + [len(self.e_list) - 1] * self.n_blocks
            + [len(self.d_list) - 1] * self.n_stages
            + [len(self.resolutions) - 1],
            dtype=np.int64,
        )

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        a = self.normalize(arch)
        return np.array(
            [self.ks_list.index(v) for v in a["ks"]]
            + [self.e_list.index(v) for v in a["e"]]
            + [self.d_list.index(v) for v in a["d"]]
            + [self.resolutions.index(a["r"])],
            dtype=np.int64,
        )

    def decode(self, vec: Iterable[int]) -> Arch:
        v = np.asarray(list(vec), dtype=np.int64)
        if v.shape != (self.vector_length,):
            raise ArchError(f"arch vector must have {self.vector_length} genes; got shape {v.shape}")
        v = np.clip(v, 0, self.vector_upper)  # repair: any integer vector maps to a valid arch
        nb, ns = self.n_blocks, self.n_stages
        return {
            "ks": [self.ks_list[i] for i in v[:nb]],
            "e": [self.e_list[i] for i in v[nb : 2 * nb]],
            "d": [self.d_list[i] for i in v[2 * nb : 2 * nb + ns]],
            "r": self.resolutions[v[-1]],
        }

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "n_stages": self.n_stages,
            "max_depth": self.max_depth,
            "ks_list": list(self.ks_list),
            "e_list": list(self.e_list),
            "d_list": list(self.d_list),
            "resolutions": list(self.resolutions),
        }


def load_arch_file(path: str | Path) -> dict:
    """Read an arch JSON file.  Accepts a bare arch or ``{"arch": {...}, ...}`` (our best.json)."""
    p = Path(path)
    if not p.is_file():
        raise ArchError(f"arch file {p} does not exist; pass a JSON file like {{\"ks\": [...], \"e\": [...], \"d\": [...], \"r\": 28}}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchError(f"arch file {p} is not valid JSON ({exc}); fix the file") from None
    if isinstance(data, dict) and "arch" in data and isinstance(data["arch"], dict):
        data = data["arch"]
    return data


def parse_arch(text_or_path: str) -> dict:
    """An arch given on the command line: a path to a JSON file or inline JSON."""
    s = text_or_path.strip()
    if s.startswith("{"):
        try:
            data = json.loads(s)
        except json.JSONDecodeError as exc:
            raise ArchError(f"inline arch is not valid JSON ({exc})") from None
        if isinstance(data, dict) and "arch" in data and isinstance(data["arch"], dict):
            data = data["arch"]
        return data
    return load_arch_file(s)


__all__ = ["Arch", "ArchSpace", "load_arch_file", "parse_arch", "field"]
