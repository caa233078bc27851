"""The predictor registry and the scikit-learn-style base class.

A predictor maps archs to a number (latency in ms, or accuracy).  ``X`` is the integer gene matrix
the search holds (``space.encode`` rows, shape ``(N, L)``), or a list of arch dicts; predictors
featurize it themselves (``hwnas.predictors.features``), so a saved predictor carries the feature
version it was trained with.  Hyperparameters live in ``__init__`` (stored unchanged), ``fit(X, y)``
returns ``self``, learned attributes end in ``_``, ``predict(X)`` works on batches.

Subclasses implement ``_fit(V, y)`` / ``_predict(V)`` on gene matrices, and ``_get_state()`` /
``_set_state(state)`` for the artifact: a JSON-able dict whose numpy arrays are stored losslessly
(``hwnas.predictors.artifacts``).  No pickles.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import numpy as np

from hwnas.errors import PredictorError, UnknownNameError
from hwnas.predictors.features import as_vectors, featurize_vectors, resolve_config
from hwnas.supernet.family import SupernetFamily

DEFAULT_SUPERNET = "mbv3_fmnist"
TARGETS = ("latency", "accuracy")

_REGISTRY: dict[str, type["Predictor"]] = {}
P = TypeVar("P", bound=type["Predictor"])


class UnknownPredictorError(UnknownNameError):
    pass


def register_predictor(name: str) -> Callable[[P], P]:
    """Class decorator adding a predictor kind to the registry under ``name``."""

    def deco(cls: P) -> P:
        cls.kind = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    import hwnas.predictors.accuracy  # noqa: F401
    import hwnas.predictors.latency  # noqa: F401
    import hwnas.predictors.lut  # noqa: F401
    import hwnas.predictors.ofa_mlp  # noqa: F401


def list_predictors(target: str | None = None) -> list[str]:
    """Registered kinds, optionally only those suited to ``target`` ('latency' or 'accuracy')."""
    _load_builtin()
    return sorted(k for k, c in _REGISTRY.items() if target is None or target in c.targets)


def get_predictor_class(name: str) -> type["Predictor"]:
    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownPredictorError(f"unknown predictor kind {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_predictor(name: str, **params: Any) -> "Predictor":
    return get_predictor_class(name)(**params)


class Predictor(ABC):
    """Base class: see the module docstring."""

    kind: ClassVar[str] = ""
    targets: ClassVar[tuple[str, ...]] = ("latency",)
    # hyperparameters that are objects with their own state (a LUT, a prior predictor), not JSON values
    object_params: ClassVar[tuple[str, ...]] = ()
    PREDICT_CHUNK: ClassVar[int] = 262_144

    supernet: Any

    # ------------------------------------------------------------------ sklearn protocol
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> "Predictor":
        names = set(self._param_names())
        for k, v in params.items():
            if k not in names:
                raise ValueError(f"{type(self).__name__} has no hyperparameter {k!r}; it has {', '.join(sorted(names))}")
            setattr(self, k, v)
        return self

    def clone(self) -> "Predictor":
        """An unfitted copy with the same hyperparameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        def short(v: Any) -> str:
            if isinstance(v, SupernetFamily):
                return repr(v.name)
            if isinstance(v, (Predictor, np.ndarray)) or hasattr(v, "to_state"):
                return type(v).__name__
            return repr(v)

        args = ", ".join(f"{k}={short(v)}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ the family
    @property
    def family(self) -> SupernetFamily:
        return resolve_config(self.supernet)

    @property
    def config(self) -> SupernetFamily:  # the family (older name)
        return self.family

    @property
    def supernet_name(self) -> str:
        return self.config.name

    def vectors(self, X: Any) -> np.ndarray:
        """The gene matrix of ``X`` (a gene matrix, an arch dict or a list of arch dicts)."""
        return as_vectors(self.config, X)

    def features(self, X: Any) -> np.ndarray:
        return featurize_vectors(self.config, self.vectors(X))

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X: Any, y: Any) -> "Predictor":
        V = self.vectors(X)
        y = np.asarray(y, dtype=np.float64).ravel()
        if len(V) != len(y):
            raise PredictorError(f"X has {len(V)} archs but y has {len(y)} values")
        if len(y) == 0:
            raise PredictorError("cannot fit a predictor on zero samples")
        if not np.all(np.isfinite(y)):
            raise PredictorError("y holds NaN or infinite values")
        self._fit(V, y)
        self.n_train_ = int(len(y))
        return self

    def predict(self, X: Any) -> np.ndarray:
        self._check_fitted()
        V = self.vectors(X)
        if len(V) == 0:
            return np.zeros(0)
        if len(V) > self.PREDICT_CHUNK:  # bounds the memory of the feature matrix for huge populations
            return np.concatenate([np.asarray(self._predict(V[i:i + self.PREDICT_CHUNK]), dtype=np.float64)
                                   for i in range(0, len(V), self.PREDICT_CHUNK)])
        return np.asarray(self._predict(V), dtype=np.float64)

    def predict_one(self, arch: Mapping[str, Any]) -> float:
        return float(self.predict([arch])[0])

    def is_fitted(self) -> bool:
        return hasattr(self, "n_train_")

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise PredictorError(f"{type(self).__name__} is not fitted; call fit(X, y) first")

    @abstractmethod
    def _fit(self, V: np.ndarray, y: np.ndarray) -> None:
        """Fit on gene vectors ``V`` and targets ``y`` (already validated)."""

    @abstractmethod
    def _predict(self, V: np.ndarray) -> np.ndarray:
        """Predictions for gene vectors ``V``."""

    # ------------------------------------------------------------------ artifact state
    @abstractmethod
    def _get_state(self) -> dict[str, Any]:
        """Learned state (JSON values and numpy arrays) beyond ``n_train_``."""

    @abstractmethod
    def _set_state(self, state: Mapping[str, Any]) -> None:
        """Restore what ``_get_state`` returned."""


# ---------------------------------------------------------------------------------- helpers
def log_target(y: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log":
        if np.any(y <= 0):
            raise PredictorError("target_transform='log' needs positive targets; use target_transform='none'")
        return np.log(y)
    if transform == "none":
        return y
    raise PredictorError(f"target_transform must be 'log' or 'none'; got {transform!r}")


def inv_target(z: np.ndarray, transform: str) -> np.ndarray:
    return np.exp(z) if transform == "log" else z


__all__ = [
    "DEFAULT_SUPERNET",
    "Predictor",
    "TARGETS",
    "UnknownPredictorError",
    "create_predictor",
    "get_predictor_class",
    "inv_target",
    "list_predictors",
    "log_target",
    "register_predictor",
]
