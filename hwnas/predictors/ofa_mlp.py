"""Once-for-All's trained accuracy predictors, read from their ``.pth`` files and run in numpy.

OFA ships two MLP accuracy predictors for its MobileNetV3 spaces; both take a one-hot encoding of
the arch in which the kernel size and expand ratio of every block slot beyond its stage's depth are
all zero:

* ``encoding="arch_encoder"``: ``ofa.nas.accuracy_predictor.AccuracyPredictor`` over a
  ``MobileNetArchEncoder``: ``n_layers`` Linear+ReLU layers (400 units), a bias-free Linear to one
  output, plus a scalar ``base_acc``.  Features: the resolution one-hot over the encoder's
  ``image_size_list``, then per block slot the kernel one-hot (``ks_list`` order), then per block slot
  the expand-ratio one-hot.  State-dict keys ``layers.{i}.0.weight/bias``, ``layers.{n}.weight``,
  ``base_acc``.
* ``encoding="tutorial"``: ``ofa.tutorial.AccuracyPredictor`` (the 128-input MLP of OFA's tutorial
  notebook): kernel one-hots (20 slots x 3 of 3/5/7), expand one-hots (20 x 3 of 3/4/6), then an
  8-bin resolution one-hot at ``(r - 112) // 16``; keys ``0.weight`` ... ``6.bias``.

Both predict top-1 as a fraction (OFA trains them on accuracy / 100), as everything in hwnas does.

    pred = load_ofa_accuracy_predictor("acc_predictor.pth", "ofa_mbv3_w1.0")
    pred.predict(population)          # gene matrix or arch dicts
    save_predictor(pred, "acc.json")  # an ordinary hwnas artifact; load_predictor gives it back

``load_predictor`` reads a ``.pth``/``.pt``/``.tar`` path through ``load_ofa_accuracy_predictor`` too.
Such a predictor cannot be fitted: fit ``mlp`` or ``xgb`` on your own rows instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hwnas.errors import HwnasError, PredictorError
from hwnas.predictors.base import DEFAULT_SUPERNET, Predictor, register_predictor

ENCODINGS = ("arch_encoder", "tutorial")
TORCH_SUFFIXES = (".pth", ".pt", ".tar")

# the tutorial predictor's fixed layout (ofa/tutorial/accuracy_predictor.py: spec2feats)
_TUT_KS = (3, 5, 7)
_TUT_E = (3, 4, 6)
_TUT_BLOCKS, _TUT_DEPTH, _TUT_R0, _TUT_RSTEP, _TUT_RBINS = 20, 4, 112, 16, 8


class _Encoding:
    """Where each gene choice of a space lands in OFA's feature vector (``n_in`` wide)."""

    def __init__(self, n_in: int, r_cols: np.ndarray, k_cols: np.ndarray, e_cols: np.ndarray, describe: str):
        self.n_in = n_in
        self.r_cols = r_cols  # (n_resolutions,)
        self.k_cols = k_cols  # (n_blocks, n_ks)
        self.e_cols = e_cols  # (n_blocks, n_e)
        self.describe = describe


def _space_lists(family: Any) -> tuple[Any, int, int, int]:
    """The family's space if it is an OFA MobileNetV3-style space (ks/e/d per slot, one resolution)."""
    sp = family.space
    need = ("ks_list", "e_list", "d_list", "resolutions", "n_stages", "max_depth")
    missing = [a for a in need if not hasattr(sp, a)]
    if missing:
        raise PredictorError(f"supernet {family.name} has no OFA MobileNetV3 search space (its space lacks "
                             f"{', '.join(missing)}); OFA's accuracy predictors encode kernel size, expand ratio, "
                             f"depth and resolution lists: use an mlp or xgb predictor fitted for {family.name}")
    ns, md = int(sp.n_stages), int(sp.max_depth)
    nb = ns * md
    want = ([f"ks[{i}]" for i in range(nb)] + [f"e[{i}]" for i in range(nb)] + [f"d[{i}]" for i in range(ns)]
            + ["r"])
    if list(sp.gene_names()) != want or md != max(sp.d_list):
        raise PredictorError(f"supernet {family.name}'s genes are not laid out as OFA's MobileNetV3 archs "
                             f"(ks and e per block slot, {md} slots per stage, d per stage, r); OFA's accuracy "
                             f"predictors do not apply to it")
    return sp, nb, ns, md


def build_encoding(family: Any, encoding: str = "arch_encoder",
                   image_sizes: Sequence[int] | None = None) -> _Encoding:
    """OFA's feature layout over ``family``'s space (``PredictorError`` when it does not apply)."""
    sp, nb, ns, md = _space_lists(family)
    ks, es, rs = list(sp.ks_list), list(sp.e_list), list(sp.resolutions)
    if encoding == "arch_encoder":
        sizes = [int(r) for r in (image_sizes if image_sizes is not None else rs)]
        lost = [r for r in rs if r not in sizes]
        if lost:
            raise PredictorError(f"image_sizes {sizes} lack resolution(s) {lost} of supernet {family.name}; "
                                 f"pass the encoder's whole image_size_list")
        nr, nk, ne = len(sizes), len(ks), len(es)
        blocks = np.arange(nb)[:, None]
        k_cols = nr + blocks * nk + np.arange(nk)[None, :]
        e_cols = nr + nb * nk + blocks * ne + np.arange(ne)[None, :]
        r_cols = np.array([sizes.index(r) for r in rs], dtype=np.int64)
        desc = (f"OFA's MobileNetArchEncoder over {family.name}: {nr} image sizes {_span(sizes)}, {nb} block "
                f"slots x ({nk} kernel sizes + {ne} expand ratios)")
        return _Encoding(nr + nb * (nk + ne), r_cols, k_cols, e_cols, desc)
    if encoding == "tutorial":
        bad = []
        if (nb, md) != (_TUT_BLOCKS, _TUT_DEPTH):
            bad.append(f"{ns} stages of {md} slots, not 5 of 4")
        if not set(ks) <= set(_TUT_KS):
            bad.append(f"kernel sizes {ks} not within {list(_TUT_KS)}")
        if not set(es) <= set(_TUT_E):
            bad.append(f"expand ratios {es} not within {list(_TUT_E)}")
        if not all(_TUT_R0 <= r < _TUT_R0 + _TUT_RSTEP * _TUT_RBINS for r in rs):
            bad.append(f"resolutions {_span(rs)} not within 112-239")
        if bad:
            raise PredictorError(f"OFA's tutorial accuracy predictor does not apply to supernet {family.name} "
                                 f"({'; '.join(bad)})")
        blocks = np.arange(nb)[:, None]
        k_cols = blocks * 3 + np.array([_TUT_KS.index(k) for k in ks])[None, :]
        e_cols = nb * 3 + blocks * 3 + np.array([_TUT_E.index(e) for e in es])[None, :]
        r_cols = np.array([nb * 6 + (r - _TUT_R0) // _TUT_RSTEP for r in rs], dtype=np.int64)
        desc = f"OFA's tutorial encoding over {family.name}: 20 x 3 kernel, 20 x 3 expand, 8 resolution bins"
        return _Encoding(nb * 6 + _TUT_RBINS, r_cols, k_cols, e_cols, desc)
    raise PredictorError(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")


def _span(xs: Sequence[int]) -> str:
    xs = list(xs)
    return f"{xs[0]}-{xs[-1]}" if len(xs) > 1 else str(xs[0])


@register_predictor("ofa_mlp")
class OFAAccuracyMLP(Predictor):
    """A trained Once-for-All accuracy MLP (see the module docstring) with a vectorized numpy forward.

    ``encoding``: ``arch_encoder`` (``ofa.nas``'s MobileNetArchEncoder) or ``tutorial``.  ``image_sizes``:
    the encoder's ``image_size_list`` when it was not the family's resolutions (``arch_encoder`` only).
    The weights are kept as in the file (float32); the forward runs in float64.
    """

    targets = ("accuracy",)
    CHUNK = 8192  # rows per forward pass: bounds the (rows x hidden) activations

    def __init__(self, supernet: Any = DEFAULT_SUPERNET, encoding: str = "arch_encoder",
                 image_sizes: Sequence[int] | None = None):
        self.supernet = supernet
        self.encoding = encoding
        self.image_sizes = image_sizes

    # ------------------------------------------------------------------ no fitting
    def fit(self, X: Any, y: Any) -> OFAAccuracyMLP:
        raise PredictorError("an ofa_mlp predictor holds the weights of a trained Once-for-All AccuracyPredictor "
                             "and cannot be fitted; fit an 'mlp' or 'xgb' accuracy predictor instead (hwnas "
                             "predictor fit --target accuracy --kind mlp), or pass the OFA .pth file as it is "
                             "(--accuracy-predictor FILE.pth)")

    def _fit(self, V: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - fit() refuses first
        self.fit(V, y)

    # ------------------------------------------------------------------ encoding and forward
    def _enc(self) -> _Encoding:
        key = (self.config, self.encoding, None if self.image_sizes is None else tuple(self.image_sizes))
        cached = getattr(self, "_enc_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, build_encoding(self.config, self.encoding, self.image_sizes))
            self._enc_cache = cached
        return cached[1]

    def encode_features(self, V: np.ndarray) -> np.ndarray:
        """OFA's float64 feature matrix ``(N, n_in)`` of canonical gene rows ``V``."""
        enc = self._enc()
        sp = self.config.space
        V = np.clip(np.asarray(V, dtype=np.int64), 0, sp.vector_upper)
        nb = enc.k_cols.shape[0]
        n = len(V)
        active = sp.active_genes(V)[:, :nb]
        X = np.zeros((n, enc.n_in + 1))  # + a scratch column for the slots beyond each stage's depth
        rows = np.arange(n)[:, None]
        slots = np.arange(nb)[None, :]
        X[rows, np.where(active, enc.k_cols[slots, V[:, :nb]], enc.n_in)] = 1.0
        X[rows, np.where(active, enc.e_cols[slots, V[:, nb:2 * nb]], enc.n_in)] = 1.0
        X[np.arange(n), enc.r_cols[V[:, -1]]] = 1.0
        return X[:, :enc.n_in]

    def _predict(self, V: np.ndarray) -> np.ndarray:
        if self.w64_[0].shape[0] != self._enc().n_in:
            raise PredictorError(f"this ofa_mlp predictor takes {self.w64_[0].shape[0]} inputs but "
                                 f"{self._enc().describe} gives {self._enc().n_in}")
        out = np.empty(len(V))
        last = len(self.w64_) - 1
        for s in range(0, len(V), self.CHUNK):
            h = self.encode_features(V[s:s + self.CHUNK])
            for j, (w, b) in enumerate(zip(self.w64_, self.b64_)):
                h = h @ w
                h += b
                if j < last:
                    np.maximum(h, 0.0, out=h)
            out[s:s + self.CHUNK] = h[:, 0] + self.base_acc_
        return out

    # ------------------------------------------------------------------ state
    def _set_weights(self, weights: list[np.ndarray], biases: list[np.ndarray], base_acc: float) -> None:
        """``weights[j]`` of shape (in, out), float32 as stored; ``biases[j]`` (out,)."""
        self.weights_ = [np.asarray(w, dtype=np.float32) for w in weights]
        self.biases_ = [np.asarray(b, dtype=np.float32) for b in biases]
        self.base_acc_ = float(base_acc)
        self.w64_ = [w.astype(np.float64) for w in self.weights_]
        self.b64_ = [b.astype(np.float64) for b in self.biases_]

    def _get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"n_layers": len(self.weights_), "base_acc": self.base_acc_}
        for j, (w, b) in enumerate(zip(self.weights_, self.biases_)):
            state[f"w{j}"] = w
            state[f"b{j}"] = b
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        n = int(state["n_layers"])
        ws = [np.asarray(state[f"w{j}"]) for j in range(n)]
        bs = [np.asarray(state[f"b{j}"]) for j in range(n)]
        for j, (w, b) in enumerate(zip(ws, bs)):
            if w.ndim != 2 or b.shape != (w.shape[1],) or (j and w.shape[0] != ws[j - 1].shape[1]):
                raise ValueError(f"layer {j} has weight {w.shape} and bias {b.shape}")
        if ws[-1].shape[1] != 1:
            raise ValueError(f"the last layer has {ws[-1].shape[1]} outputs, not 1")
        self._set_weights(ws, bs, float(state["base_acc"]))


# ---------------------------------------------------------------------------------- reading OFA's files
def _read_torch(p: Path) -> dict:
    import torch

    if not p.is_file():
        raise PredictorError(f"OFA accuracy predictor file {p} does not exist; pass the .pth file OFA's "
                             f"AccuracyPredictor was saved to")
    with open(p, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise PredictorError(f"{p} is not a PyTorch file (it does not start like one: {head!r}); pass the .pth "
                             f"file torch.save wrote OFA's AccuracyPredictor state dict to")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or truncated file
        text = str(exc).strip()
        if "weights only load failed" in text.lower():
            raise PredictorError(f"{p} holds pickled Python objects, not only tensors (torch.save of a whole "
                                 f"model?), which hwnas does not unpickle; save the state dict instead: "
                                 f"torch.save(predictor.state_dict(), path)") from None
        first = text.splitlines()[0].split(". ")[0] if text else ""
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise PredictorError(f"{p} is a damaged, truncated or unsafe PyTorch file ({first[:160]}); pass the state "
                             f"dict of OFA's AccuracyPredictor saved with torch.save") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PredictorError(f"{p} does not hold a state dict (a mapping of names to tensors, bare or under "
                             f"'state_dict'); pass the file torch.save(AccuracyPredictor.state_dict()) wrote")
    sd = {}
    for k, v in obj.items():
        k = str(k)
        sd[k.removeprefix("module.")] = v
    return sd


def _layers(sd: Mapping[str, Any]) -> tuple[str, list[tuple[str, str | None]]] | None:
    """``(encoding, [(weight key, bias key or None), ...])`` when ``sd``'s keys are one of OFA's layouts."""
    keys = set(sd)
    m = [int(x.group(1)) for x in map(re.compile(r"layers\.(\d+)\.0\.weight$").match, keys) if x]
    n = len(m)
    if n:
        want = ({f"layers.{i}.0.weight" for i in range(n)} | {f"layers.{i}.0.bias" for i in range(n)}
                | {f"layers.{n}.weight", "base_acc"})
        if keys == want:
            return "arch_encoder", [(f"layers.{i}.0.weight", f"layers.{i}.0.bias") for i in range(n)] + [
                (f"layers.{n}.weight", None)]
    idx = sorted(int(x.group(1)) for x in map(re.compile(r"(\d+)\.weight$").match, keys) if x)
    if (len(idx) >= 2 and idx == list(range(0, 2 * len(idx), 2))
            and keys == {f"{i}.weight" for i in idx} | {f"{i}.bias" for i in idx}):
        return "tutorial", [(f"{i}.weight", f"{i}.bias") for i in idx]
    return None


def load_ofa_accuracy_predictor(path: str | Path, supernet: Any, *,
                                image_sizes: Sequence[int] | None = None) -> OFAAccuracyMLP:
    """An ``ofa_mlp`` predictor of ``supernet`` from OFA's saved AccuracyPredictor (``.pth``).

    Reads the state dict with ``torch.load(weights_only=True)``, bare or under ``"state_dict"`` (a
    DataParallel ``module.`` prefix is dropped), recognizes ``ofa.nas``'s and the tutorial's layouts by
    their keys and checks every shape against OFA's encoding of ``supernet``'s space.  Every bad file is
    one ``PredictorError`` line.  ``image_sizes``: the encoder's ``image_size_list`` if it was not the
    family's resolutions.
    """
    import torch

    from hwnas.predictors.features import resolve_config

    family = resolve_config(supernet)
    p = Path(path).expanduser()
    sd = _read_torch(p)
    layout = _layers(sd)
    if layout is None:
        found = ", ".join(sorted(sd)[:6]) + (", ..." if len(sd) > 6 else "")
        raise PredictorError(f"{p} holds tensors {found}, not an OFA AccuracyPredictor (keys layers.0.0.weight, "
                             f"..., layers.3.weight, base_acc; or the tutorial's 0.weight, ..., 6.bias); pass the "
                             f"state dict of ofa.nas.accuracy_predictor.AccuracyPredictor")
    encoding, keys = layout
    if encoding == "tutorial" and image_sizes is not None:
        raise PredictorError(f"{p} is OFA's tutorial accuracy predictor, whose resolution bins are fixed; "
                             f"image_sizes applies to the arch_encoder layout only")
    enc = build_encoding(family, encoding, image_sizes)
    weights, biases = [], []
    prev = enc.n_in
    for j, (wk, bk) in enumerate(keys):
        w = sd[wk]
        last = j == len(keys) - 1
        if not w.dtype.is_floating_point or w.ndim != 2:
            raise PredictorError(f"{p}: {wk} is a {w.ndim}-d {str(w.dtype).replace('torch.', '')} tensor; OFA's "
                                 f"Linear weights are 2-d floats; the file is not an intact AccuracyPredictor")
        if j == 0 and w.shape[1] != enc.n_in:
            raise PredictorError(_width_message(p, w.shape[1], enc, family, encoding))
        if w.shape[1] != prev or (last and w.shape[0] != 1):
            want = f"({1 if last else 'H'}, {prev})"
            raise PredictorError(f"{p}: {wk} has shape {tuple(w.shape)}, expected {want} after the layer before; "
                                 f"the file is not an intact AccuracyPredictor")
        b = sd[bk] if bk is not None else torch.zeros(w.shape[0])
        if b.shape != (w.shape[0],) or not b.dtype.is_floating_point:
            raise PredictorError(f"{p}: {bk} has shape {tuple(b.shape)}, expected ({w.shape[0]},) for {wk}")
        weights.append(w.detach().to(torch.float32).numpy().T.copy())
        biases.append(b.detach().to(torch.float32).numpy().copy())
        prev = w.shape[0]
    base = sd.get("base_acc", torch.zeros(1))
    if base.numel() != 1 or not base.dtype.is_floating_point:
        raise PredictorError(f"{p}: base_acc has shape {tuple(base.shape)}, expected (1,)")
    if not all(np.isfinite(a).all() for a in (*weights, *biases)) or not np.isfinite(float(base)):
        raise PredictorError(f"{p} holds NaN or infinite weights; the predictor is broken, retrain or re-download it")
    from hwnas.supernet.registry import registered_name_or_family

    pred = OFAAccuracyMLP(supernet=registered_name_or_family(family), encoding=encoding,
                          image_sizes=None if image_sizes is None else [int(r) for r in image_sizes])
    pred._set_weights(weights, biases, float(base.to(torch.float64)))
    pred.n_train_ = 0  # unknown: OFA's file does not say
    pred.meta_ = {"kind": pred.kind, "target": "accuracy", "supernet": family.name, "supernet_hash": None,
                  "device": None, "fp_hash": None, "fingerprint": None, "stat": None, "n_train": None,
                  "metrics": {}, "train_arch_ids": None, "feature_version": None, "created_at": None,
                  "notes": f"Once-for-All AccuracyPredictor ({encoding} encoding) read from {p}"}
    return pred


def _width_message(p: Path, width: int, enc: _Encoding, family: Any, encoding: str) -> str:
    msg = (f"{p}: its first layer takes {width} inputs, but {enc.describe} gives {enc.n_in}; it is a "
           f"predictor of another space")
    matches = _families_of_width(width, encoding)
    if matches:
        msg += f" (it has the width of OFA's encoding of {', '.join(matches)})"
    sp = family.space
    nb, nk, ne = sp.n_stages * sp.max_depth, len(sp.ks_list), len(sp.e_list)
    nr = width - nb * (nk + ne)
    same_blocks = all(_blocks_of(m) == (nb, nk, ne) for m in matches)
    if encoding == "arch_encoder" and nr > len(sp.resolutions) and same_blocks:
        msg += (f"; if it was trained for {family.name} with an encoder of {nr} image sizes, load it with "
                f"hwnas.predictors.ofa_mlp.load_ofa_accuracy_predictor(path, {family.name!r}, image_sizes=[...]) and "
                f"save_predictor it")
    else:
        msg += f"; use an accuracy predictor of {family.name}"
    return msg


def _families_of_width(width: int, encoding: str) -> list[str]:
    from hwnas.supernet.registry import get_family, list_supernets

    out = []
    for name in list_supernets():
        try:
            if build_encoding(get_family(name), encoding).n_in == width:
                out.append(name)
        except HwnasError:  # a family OFA's encoding does not apply to
            pass
    return out


def _blocks_of(name: str) -> tuple[int, int, int]:
    from hwnas.supernet.registry import get_family

    sp = get_family(name).space
    return sp.n_stages * sp.max_depth, len(sp.ks_list), len(sp.e_list)


def is_torch_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in TORCH_SUFFIXES


__all__ = [
    "ENCODINGS",
    "TORCH_SUFFIXES",
    "OFAAccuracyMLP",
    "build_encoding",
    "is_torch_path",
    "load_ofa_accuracy_predictor",
]
