"""The search space of OFA-style MobileNetV3 families.

An arch is Once-for-All's dict: ``{"ks": [...], "e": [...], "d": [...], "r": int}`` with one
``ks``/``e`` entry per block slot (``n_stages * max_depth``), one ``d`` per stage and an input
resolution.  ``"image_size"`` and ``"r": [int]`` are accepted as aliases because OFA's own code
spells resolution both ways.  Slots beyond a stage's depth are carried but ignored: two archs that
differ only there are the same network and get the same id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from hwnas.errors import ArchError
from hwnas.supernet.family import SearchSpace, arch_fields

Arch = dict  # {"ks": list[int], "e": list[int], "d": list[int], "r": int}


@dataclass(frozen=True)
class ArchSpace(SearchSpace):
    """The choices of one MobileNetV3 family.  Gene layout: ``ks`` choice index per block slot, ``e``
    choice index per slot, ``d`` choice index per stage, ``r`` choice index."""

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
        arch = arch_fields(arch, ("ks", "e", "d"), max(self.resolutions), optional=("wid",))  # OFA may omit r
        r = arch["r"]
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

    def gene_names(self) -> list[str]:
        nb, ns = self.n_blocks, self.n_stages
        return [f"ks[{i}]" for i in range(nb)] + [f"e[{i}]" for i in range(nb)] + [f"d[{i}]" for i in range(ns)] + ["r"]

    def gene_choices(self) -> list[tuple]:
        nb, ns = self.n_blocks, self.n_stages
        return [self.ks_list] * nb + [self.e_list] * nb + [self.d_list] * ns + [self.resolutions]

    def _ignored_slots(self, Xi: np.ndarray) -> np.ndarray:
        """``(N, n_blocks)``: block slots beyond their stage's depth."""
        nb, ns, md = self.n_blocks, self.n_stages, self.max_depth
        depth = np.asarray(self.d_list, dtype=np.int64)[Xi[:, 2 * nb : 2 * nb + ns]]  # (N, ns)
        return (np.arange(md)[None, None, :] >= depth[:, :, None]).reshape(len(Xi), nb)

    def canonicalize_ints(self, Xi: np.ndarray) -> np.ndarray:
        """Slots beyond a stage's depth get the smallest kernel and expand ratio.  Agrees row by row
        with ``encode(canonical(decode(x)))``."""
        nb = self.n_blocks
        ignored = self._ignored_slots(Xi)
        Xi[:, :nb][ignored] = int(np.argmin(self.ks_list))
        Xi[:, nb : 2 * nb][ignored] = int(np.argmin(self.e_list))
        return Xi

    def active_genes(self, Xi: np.ndarray) -> np.ndarray:
        Xi = np.asarray(Xi, dtype=np.int64)
        act = np.ones(Xi.shape, dtype=bool)
        ignored = self._ignored_slots(Xi)
        nb = self.n_blocks
        act[:, :nb] = ~ignored
        act[:, nb : 2 * nb] = ~ignored
        return act

    def encode_many(self, archs: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """``(N, L)`` int64 gene matrix of arch dicts, faster than ``encode`` per arch.

        Accepts the ``image_size`` and ``r: [int]`` aliases; an arch with a value outside the space is
        reported by ``normalize`` (the field, the index and the allowed values).
        """
        archs = list(archs)
        nb, ns = self.n_blocks, self.n_stages
        n = len(archs)
        X = np.empty((n, self.vector_length), dtype=np.int64)
        if n == 0:
            return X
        ks = np.empty((n, nb), dtype=np.float64)
        e = np.empty((n, nb), dtype=np.float64)
        d = np.empty((n, ns), dtype=np.float64)
        r = np.empty(n, dtype=np.float64)
        default_r = max(self.resolutions)
        try:
            for i, a in enumerate(archs):
                ks[i] = a["ks"]
                e[i] = a["e"]
                d[i] = a["d"]
                rv = a["r"] if "r" in a else a.get("image_size", default_r)
                r[i] = rv[0] if isinstance(rv, (list, tuple)) and len(rv) == 1 else rv
        except (KeyError, ValueError, TypeError):
            self._raise_first_bad(archs)
            raise
        for vals in (ks, e, d, r):
            bad = ~np.isfinite(vals) | (vals != np.round(vals))
            if bad.any():
                self._raise_first_bad(archs, int(np.flatnonzero(bad.reshape(n, -1).any(axis=1))[0]))
        ks, e, d, r = (v.astype(np.int64) for v in (ks, e, d, r))
        for cols, vals, allowed in ((slice(0, nb), ks, self.ks_list), (slice(nb, 2 * nb), e, self.e_list),
                                    (slice(2 * nb, 2 * nb + ns), d, self.d_list)):
            lut = _value_index(allowed)
            idx = lut[np.clip(vals, 0, len(lut) - 1)]
            idx[(vals < 0) | (vals >= len(lut))] = -1
            X[:, cols] = idx
        lut = _value_index(self.resolutions)
        ri = lut[np.clip(r, 0, len(lut) - 1)]
        ri[(r < 0) | (r >= len(lut))] = -1
        X[:, -1] = ri
        if (X < 0).any():
            self._raise_first_bad(archs, int(np.flatnonzero((X < 0).any(axis=1))[0]))
        return X

    def _raise_first_bad(self, archs: list, start: int = 0) -> None:
        for i in range(start, len(archs)):
            try:
                self.normalize(archs[i])
            except ArchError as exc:
                raise ArchError(f"arch #{i}: {exc}") from None
        raise ArchError("an arch could not be encoded")  # pragma: no cover - normalize accepts what we reject

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


def _value_index(allowed: Sequence[int]) -> np.ndarray:
    lut = np.full(max(allowed) + 1, -1, dtype=np.int64)
    for i, v in enumerate(allowed):
        lut[v] = i
    return lut


__all__ = ["Arch", "ArchSpace"]
