"""The family contract: everything the rest of hwnas knows about a supernet family.

A family is registered by name (``hwnas.supernet.registry.register_supernet``) and provides

* its **search space** (:class:`SearchSpace`): validation with errors naming the field, index and
  allowed values; a stable short arch id; encode/decode to the integer gene matrix the search and
  the predictors hold; vectorized canonicalization (genes without effect set to a fixed choice, so
  they never split duplicates); random / min / max archs; the arch file format (a JSON object);
* the **torch supernet** (:class:`SupernetModule`): ``set_active(arch)`` and ``extract(arch)``, a
  standalone deployable module, with the normalization recalibration the family needs applied by
  default (BN recalibration for CNNs), so nobody gets the un-recalibrated subnet by accident;
* the **input** each arch takes (``input_shape(arch)``, channels, normalization, dataset name);
* a **default anchor** arch for anchored timing;
* **vectorized predictor features**: the gene one-hot and analytic costs (``cost_vectors``:
  ``macs``, ``params``, ``peak_act`` per arch, plus per-group figures), with ``macs_m`` the first
  analytic feature column;
* **export and training hints**: ``node_groups`` and ``int8_fallback_excludes`` (what INT8 may keep in
  FP32), ``int8_modes`` (static QDQ and/or dynamic int8 MatMul), ``train_defaults`` (the recipe);
* **optional capabilities** (``capabilities``), checked where they are used with :meth:`require`:
  ``"lut"`` (a block lookup table: ``lut_entries``, ``lut_entry_module``, ``lut_usage``).

Nothing outside a family's own module knows its genes.  Adding a family is one module under
``hwnas/supernet/families/`` (found and imported by the registry) or any module that calls
``register_supernet`` before use.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, ABCMeta, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, NoReturn, Sequence

import numpy as np
import torch
from torch import nn

from hwnas.errors import ArchError, DataError, HwnasError

Arch = dict


class CapabilityError(HwnasError, ValueError):
    """A family lacks an optional capability a command needs (the message names the family, the
    capability and the capabilities it has)."""


# ---------------------------------------------------------------------------------- search space
class SearchSpace(ABC):
    """The genes of one family.  Genes are choice indices ``0..vector_upper[i]`` in a fixed layout."""

    name: str = ""

    @abstractmethod
    def normalize(self, arch: Mapping[str, Any]) -> Arch:
        """A validated copy of ``arch`` in the family's own format, or ``ArchError`` naming the bad field."""

    @property
    @abstractmethod
    def vector_upper(self) -> np.ndarray:
        """Inclusive upper bound of each gene (the lower bound is 0)."""

    @abstractmethod
    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        """The int64 gene vector of ``arch`` (validated)."""

    @abstractmethod
    def decode(self, vec: Iterable[int]) -> Arch:
        """The arch of a gene vector (clipped into range: any integer vector maps to a valid arch)."""

    @abstractmethod
    def sample(self, rng: np.random.Generator | int | None = None) -> Arch: ...

    @abstractmethod
    def min_arch(self) -> Arch: ...

    @abstractmethod
    def max_arch(self) -> Arch: ...

    @abstractmethod
    def arch_id(self, arch: Mapping[str, Any]) -> str:
        """A short stable id, equal for archs that build the same network (a database key and a file name)."""

    @abstractmethod
    def to_dict(self) -> dict:
        """The space's choices as JSON (shown by ``hwnas supernets``)."""

    @abstractmethod
    def gene_names(self) -> list[str]:
        """One name per gene column (e.g. ``ks[3]``)."""

    @abstractmethod
    def gene_choices(self) -> list[tuple]:
        """The allowed values of each gene column, in index order."""

    # ------------------------------------------------------------------ concrete helpers
    @property
    def vector_length(self) -> int:
        return int(len(self.vector_upper))

    def active_genes(self, Xi: np.ndarray) -> np.ndarray:
        """Boolean ``(N, L)``: which genes of each canonical row change the network (default: all)."""
        return np.ones(np.shape(Xi), dtype=bool)

    def canonicalize_ints(self, Xi: np.ndarray) -> np.ndarray:
        """Set genes without effect to a fixed choice (in place allowed); rows already clipped ints."""
        return Xi

    def canonicalize(self, X: np.ndarray) -> np.ndarray:
        """Round, clip to ``[0, vector_upper]`` and canonicalize a gene matrix (or one vector).

        Two rows that build the same network become equal, so duplicate elimination on genes works.
        """
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            return self.canonicalize(X[None, :])[0]
        if X.ndim != 2 or X.shape[1] != self.vector_length:
            raise ArchError(f"gene matrix has shape {X.shape}; space {self.name!r} needs (N, {self.vector_length})")
        Xi = np.clip(np.rint(X), 0, self.vector_upper).astype(np.int64)
        return self.canonicalize_ints(Xi)

    def canonical(self, arch: Mapping[str, Any]) -> Arch:
        """The normalized arch with its genes without effect at their fixed choice."""
        return self.decode(self.canonicalize(self.encode(arch)[None, :])[0])

    def encode_many(self, archs: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """``(N, L)`` int64 gene matrix of arch dicts; a bad arch is ``ArchError`` ``arch #i: ...``."""
        rows = []
        for i, a in enumerate(archs):
            try:
                rows.append(self.encode(a))
            except ArchError as exc:
                raise ArchError(f"arch #{i}: {exc}") from None
        if not rows:
            return np.zeros((0, self.vector_length), dtype=np.int64)
        return np.stack(rows).astype(np.int64)

    def decode_many(self, X: np.ndarray) -> list[Arch]:
        return [self.decode(x) for x in self.canonicalize(np.atleast_2d(X))]

    def digest(self, arch: Mapping[str, Any]) -> str:
        """An 8-hex digest of the canonical arch (what long ids fall back to)."""
        return hashlib.sha1(json.dumps(self.canonical(arch), sort_keys=True).encode()).hexdigest()[:8]


def resolution_aliases(arch: Mapping[str, Any], default: int) -> dict:
    """A copy of an OFA-format arch with its resolution under ``r``: OFA's code also spells it
    ``image_size``, and its archs often omit it (then ``default``, the largest)."""
    arch = dict(arch)
    if "r" not in arch and "image_size" in arch:
        arch["r"] = arch.pop("image_size")
    else:
        arch.pop("image_size", None)
    arch.setdefault("r", default)
    return arch


def arch_fields(arch: Any, required: Sequence[str], default_r: int, optional: Sequence[str] = ()) -> dict:
    """The common first checks of an arch dict: a JSON object, OFA's resolution aliases resolved
    (:func:`resolution_aliases`), no field of ``required`` missing, none unknown, and ``r`` one value
    (OFA's ``"r": [224]`` unwrapped); ``ArchError`` names the field.  The values are checked by the space."""
    keys = ", ".join([*required, "r"])
    if not isinstance(arch, Mapping):
        raise ArchError(f"arch must be a JSON object with keys {keys}; got {type(arch).__name__}")
    arch = resolution_aliases(arch, default_r)
    missing = [k for k in required if k not in arch]
    if missing:
        raise ArchError(f"arch is missing field(s) {', '.join(missing)}; expected keys {keys}")
    unknown = sorted(map(str, set(arch) - {*required, "r", *optional}))
    if unknown:
        raise ArchError(f"arch has unknown field(s) {', '.join(unknown)}; expected keys {keys}")
    r = arch["r"]
    if isinstance(r, (list, tuple)):
        if len(r) != 1:
            raise ArchError(f"arch field 'r' must be one int (or a list of one); got {list(r)}")
        arch["r"] = r[0]
    return arch


# ---------------------------------------------------------------------------------- one-hot helper
def gene_onehot(space: SearchSpace, Xi: np.ndarray) -> np.ndarray:
    """float32 one-hot of every gene of canonical rows ``Xi``, zero where a gene has no effect.

    Column order: gene by gene, each gene's choices in index order (names: :func:`gene_onehot_names`).
    """
    Xi = np.asarray(Xi, dtype=np.int64)
    sizes = space.vector_upper.astype(np.int64) + 1
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n = len(Xi)
    out = np.zeros((n, int(sizes.sum()) + 1), dtype=np.float32)  # + a scratch column for inactive genes
    active = space.active_genes(Xi)
    cols = np.where(active, offsets[None, :] + Xi, out.shape[1] - 1)
    out[np.arange(n)[:, None], cols] = 1.0
    return out[:, :-1]


def gene_onehot_names(space: SearchSpace) -> list[str]:
    return [f"{g}={v}" for g, ch in zip(space.gene_names(), space.gene_choices()) for v in ch]


_FEATURE_CHUNK = 32768  # rows per block when featurizing huge populations (bounds temporary memory)


def cost_columns(out: np.ndarray, c: Mapping[str, np.ndarray], n_stages: int) -> np.ndarray:
    """Fill ``out`` (``(N, 5 + 2 * n_stages)``) with the analytic cost layout of the CNN families: MACs,
    params and peak activations (millions), resolution, blocks that run, then MACs and params per stage
    (millions), from ``cost_vectors`` output ``c``; returns ``out``."""
    ns = n_stages
    out[:, 0] = c["macs"] / 1e6
    out[:, 1] = c["params"] / 1e6
    out[:, 2] = c["peak_act"] / 1e6
    out[:, 3] = c["resolution"]
    out[:, 4] = c["n_blocks"]
    out[:, 5:5 + ns] = c["stage_macs"] / 1e6
    out[:, 5 + ns:5 + 2 * ns] = c["stage_params"] / 1e6
    return out


def gene_features(space: SearchSpace, X: np.ndarray, analytic_block: Any, *, onehot: bool = True,
                  analytic: bool = True) -> np.ndarray:
    """float32 predictor features of gene rows: :func:`gene_onehot` of the canonical rows, then
    ``analytic_block(Xi)`` (an ``(N, K)`` array of analytic costs); in blocks of rows for huge populations."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if len(X) > _FEATURE_CHUNK:
        return np.concatenate([gene_features(space, X[i:i + _FEATURE_CHUNK], analytic_block, onehot=onehot,
                                             analytic=analytic) for i in range(0, len(X), _FEATURE_CHUNK)])
    Xi = space.canonicalize(X)  # features of the network a row builds, whatever its ignored genes hold
    parts = []
    if onehot:
        parts.append(gene_onehot(space, Xi))
    if analytic:
        parts.append(np.asarray(analytic_block(Xi), dtype=np.float32))
    if not parts:
        return np.zeros((len(Xi), 0), dtype=np.float32)
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------- the family
class SupernetFamily(ABC):
    """One registered family: see the module docstring.  Instances compare by their layout."""

    name: str
    in_channels: int
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str  # the data layer's name for the family's data ("fashion-mnist", "imagenet", ...)
    #: the class of family, stored in artifacts beside the layout (``config_dict``)
    kind: ClassVar[str] = ""
    #: optional capabilities this family provides, e.g. {"lut"}
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: export: names of node groups that can be kept in FP32 -> a substring of their ONNX node names
    node_groups: ClassVar[Mapping[str, str]] = {}
    #: export: groups kept in FP32, in order, when full INT8 quantization loses too much agreement
    int8_fallback_excludes: ClassVar[tuple[tuple[str, ...], ...]] = (("classifier",),)
    #: export: the INT8 schemes worth building for this family, preferred first: ``"static"`` (QDQ with
    #: calibrated activation scales: convolutions) and/or ``"dynamic"`` (int8 MatMul with activation
    #: scales computed at run time: transformers); ``--format best`` builds the candidates of each
    int8_modes: ClassVar[tuple[str, ...]] = ("static",)
    #: training: the recipe's defaults that differ from ``TrainConfig``'s (e.g. AdamW for a transformer)
    train_defaults: ClassVar[Mapping[str, Any]] = {}

    # ------------------------------------------------------------------ required
    @property
    @abstractmethod
    def space(self) -> SearchSpace: ...

    @abstractmethod
    def build(self) -> "SupernetModule":
        """A freshly initialized torch supernet (weights are loaded by the registry)."""

    @abstractmethod
    def input_shape(self, arch: Mapping[str, Any]) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input of ``arch``."""

    @abstractmethod
    def default_anchor(self) -> Arch:
        """The reference arch of anchored timing (a mid-sized subnet)."""

    @abstractmethod
    def cost_vectors(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Analytic costs (float64) of every row of the gene matrix: at least ``macs``, ``params``, ``peak_act``."""

    @abstractmethod
    def feature_names(self) -> list[str]: ...

    @property
    @abstractmethod
    def n_onehot(self) -> int:
        """Number of leading one-hot feature columns; ``macs_m`` is the column right after them."""

    @abstractmethod
    def featurize(self, X: np.ndarray, *, onehot: bool = True, analytic: bool = True) -> np.ndarray:
        """float32 features of canonical gene rows (one-hot block, then the analytic block)."""

    @abstractmethod
    def config_dict(self) -> dict:
        """The layout as JSON values: artifacts store it and refuse to load against another."""

    # ------------------------------------------------------------------ defaults
    def arch_cost(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """``cost_vectors`` of one arch, as ints (lists for per-group figures)."""
        out = self.cost_vectors(self.space.canonicalize(self.space.encode(arch)[None, :]))
        return {k: [int(round(x)) for x in v[0]] if np.ndim(v) == 2 else int(round(float(v[0])))
                for k, v in out.items()}

    def resolution(self, arch: Mapping[str, Any]) -> int:
        return int(self.input_shape(arch)[-1])

    @property
    def crop_ratio(self) -> float:
        """The evaluation transform's center crop (``hwnas.data.images``): ImageNet families resize the
        shorter side to ``ceil(r / 0.875)`` and crop ``r`` (Once-for-All's and timm's eval transform);
        others resize to ``r x r`` (1.0)."""
        return 0.875 if self.dataset == "imagenet" else 1.0

    def clean_state_dict(self, sd: dict) -> dict:
        """Map a checkpoint's key spellings to this family's (default: strip ``module.``)."""
        return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}

    def recalibrate(self, subnet: Any, batches: Sequence[Any]) -> Any:
        """The normalization recalibration ``extract`` applies (default: BatchNorm statistics)."""
        from hwnas.supernet.bn import recalibrate_bn

        return recalibrate_bn(subnet, batches)

    def describe(self) -> str:
        """One line for ``hwnas supernets``."""
        return json.dumps(self.space.to_dict())

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str, what: str = "") -> None:
        if capability not in self.capabilities:
            have = ", ".join(sorted(self.capabilities)) or "none"
            raise CapabilityError(f"supernet {self.name} has no {capability!r} capability{f' ({what})' if what else ''}; "
                                  f"its capabilities: {have}")

    # the "lut" capability: families that declare it override these three
    def lut_entries(self) -> list[dict]:
        """Distinct LUT entries (dicts with a unique readable ``key``)."""
        self._undeclared("lut", "lut_entries")

    def lut_entry_module(self, entry: Mapping[str, Any]) -> tuple[Any, tuple[int, ...]]:
        """A static module for one entry and its input shape ``(C, H, W)``."""
        self._undeclared("lut", "lut_entry_module")

    def lut_usage(self, X: np.ndarray) -> np.ndarray:
        """``(N, K)`` int64 entry indices each arch's network sums (``-1`` pads unused positions)."""
        self._undeclared("lut", "lut_usage")

    def _undeclared(self, capability: str, method: str) -> NoReturn:
        """``CapabilityError`` for a family without ``capability``; a family that declares it but did not
        write ``method`` is a bug in that family (``TypeError``, not a user error)."""
        self.require(capability)
        raise TypeError(f"{type(self).__name__} declares the {capability!r} capability but does not implement "
                        f"{method}()")

    # ------------------------------------------------------------------ identity
    def _identity(self) -> str:
        return json.dumps([type(self).__name__, self.config_dict()], sort_keys=True, default=str)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SupernetFamily) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ConfigFamily(SupernetFamily):
    """A family built from a frozen config dataclass holding ``name``, ``in_channels``, ``n_classes``,
    ``mean``, ``std``, ``dataset`` and a ``space`` property, for OFA-format archs whose resolution is
    ``r`` (square inputs)."""

    def __init__(self, config: Any):
        self.config = config
        self.name = config.name
        self.in_channels = config.in_channels
        self.n_classes = config.n_classes
        self.mean = tuple(config.mean)
        self.std = tuple(config.std)
        self.dataset = config.dataset
        self._space = config.space

    @property
    def space(self) -> SearchSpace:
        return self._space

    def input_shape(self, arch: Mapping[str, Any]) -> tuple[int, int, int]:
        r = self._space.normalize(arch)["r"]
        return (self.in_channels, r, r)


# ---------------------------------------------------------------------------------- the torch side
class SupernetModule(nn.Module, metaclass=ABCMeta):
    """Base class of every family's torch supernet: ``set_active``, ``extract_static`` and the shared
    ``extract`` (with recalibration); ``family``, ``weights_path`` and ``weights_hash`` are set by the
    registry's ``create_supernet``."""

    family: SupernetFamily
    weights_path: str | None = None
    weights_hash: str = "init"

    @property
    def space(self) -> SearchSpace:
        return self.family.space

    @abstractmethod
    def set_active(self, arch: Mapping[str, Any]) -> Arch:
        """Select the subnet ``arch`` inside the supernet; returns the normalized arch."""

    @abstractmethod
    def extract_static(self, arch: Mapping[str, Any]) -> nn.Module:
        """The standalone module of normalized ``arch`` with the supernet's own normalization statistics."""

    def extract(self, arch: Mapping[str, Any], *, calibration: Any = "auto", batch_size: int = 500) -> nn.Module:
        """A standalone deployable module of ``arch``, in eval mode.

        ``calibration``: ``"auto"`` (default) recalibrates normalization statistics on the family's
        shipped calibration images when the weights are trained (untrained ``init`` weights are left
        as they are: their statistics carry nothing, and latency work does not need it); a tensor,
        a list of batches or a path (a directory with ``calib.npz`` or an ``.npz`` file) gives the
        images; ``None`` skips recalibration (the raw weight-sharing statistics, for latency work).
        ``subnet.recalibrated`` says which happened.  Trained weights with no calibration images are
        an error, so an un-recalibrated subnet is never returned by accident.
        """
        a = self.space.normalize(arch)
        with torch.no_grad():
            sub = self.extract_static(a)
        done = False
        auto = isinstance(calibration, str) and calibration == "auto"
        if calibration is not None and not (auto and self.weights_hash == "init"):
            batches = self._calibration_batches(a, calibration, batch_size)
            with torch.no_grad():
                self.family.recalibrate(sub, batches)
            done = True
        sub.eval()
        sub.recalibrated = done
        return sub

    def _calibration_batches(self, arch: Arch, calibration: Any, batch_size: int) -> list:
        if isinstance(calibration, torch.Tensor):
            return list(calibration.split(batch_size))
        if isinstance(calibration, (list, tuple)):
            return list(calibration)
        from hwnas.data.calibration import load_calibration

        source = None if (isinstance(calibration, str) and calibration == "auto") else calibration
        x = load_calibration(self.family, self.family.resolution(arch), source)
        if x is None:
            raise DataError(f"supernet {self.family.name} has trained weights but no shipped calibration images to "
                            f"recalibrate its normalization on: pass images (--data DIR: an image folder, train/val folders or an "
                            f".npz), or calibration=None (--calibration none) to keep the weight-sharing statistics")
        return list(x.split(batch_size))


# ---------------------------------------------------------------------------------- arch files
def load_arch_file(path: str | Path) -> dict:
    """Read an arch JSON file.  Accepts a bare arch or ``{"arch": {...}, ...}`` (our best.json)."""
    p = Path(path)
    if not p.is_file():
        raise ArchError(f"arch file {p} does not exist; pass a JSON file holding an arch object "
                        "(hwnas sample -o arch.json writes one)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ArchError(f"arch file {p} is not valid JSON ({str(exc).split(';')[0][:120]}); fix the file") from None
    if isinstance(data, dict) and "arch" in data and isinstance(data["arch"], dict):
        data = data["arch"]
    return data


def parse_arch(text_or_path: str | Mapping[str, Any]) -> dict:
    """An arch given on the command line: a path to a JSON file or inline JSON (or already a dict)."""
    if isinstance(text_or_path, Mapping):
        return dict(text_or_path)
    s = str(text_or_path).strip()
    if s.startswith("{"):
        try:
            data = json.loads(s)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise ArchError(f"inline arch is not valid JSON ({str(exc).split(';')[0][:120]})") from None
        if isinstance(data, dict) and "arch" in data and isinstance(data["arch"], dict):
            data = data["arch"]
        return data
    return load_arch_file(s)


__all__ = ["Arch", "CapabilityError", "ConfigFamily", "SearchSpace", "SupernetFamily", "SupernetModule", "arch_fields",
           "cost_columns",
           "gene_features", "gene_onehot", "gene_onehot_names", "load_arch_file", "parse_arch", "resolution_aliases"]
