"""Latency and accuracy predictors: features, predictors by name, metrics, portable artifacts, jobs.

    from hwnas.predictors import create_predictor, featurize_vectors, save_predictor, load_predictor
    pred = create_predictor("xgb", supernet="mbv3_fmnist").fit(X_int, latency_ms)
    pred.predict(population_genes)   # (N, L) integer gene matrix, as the search holds it

xgboost and scikit-learn are imported only when a predictor that uses them is fitted or loaded.
"""

from hwnas.predictors.artifacts import load_predictor, read_header, save_predictor
from hwnas.predictors.base import (
    DEFAULT_SUPERNET,
    Predictor,
    UnknownPredictorError,
    create_predictor,
    get_predictor_class,
    list_predictors,
    register_predictor,
)
from hwnas.predictors.features import (
    FEATURE_VERSION,
    as_vectors,
    encode_archs,
    feature_names,
    featurize,
    featurize_vectors,
)
from hwnas.predictors.jobs import eval_job, fit_job, load_accuracy_data, load_latency_data, predict_job
from hwnas.predictors.lut import LatencyTable, build_latency_table, load_table, save_table
from hwnas.predictors.metrics import (
    evaluate_holdout,
    evaluate_kfold,
    holdout_split,
    kendall_tau,
    learning_curve,
    mape,
    regression_metrics,
    rmse,
    within,
)

__all__ = [
    "DEFAULT_SUPERNET",
    "FEATURE_VERSION",
    "LatencyTable",
    "Predictor",
    "UnknownPredictorError",
    "as_vectors",
    "build_latency_table",
    "create_predictor",
    "encode_archs",
    "eval_job",
    "evaluate_holdout",
    "evaluate_kfold",
    "feature_names",
    "featurize",
    "featurize_vectors",
    "fit_job",
    "get_predictor_class",
    "holdout_split",
    "kendall_tau",
    "learning_curve",
    "list_predictors",
    "load_accuracy_data",
    "load_latency_data",
    "load_predictor",
    "load_table",
    "mape",
    "predict_job",
    "read_header",
    "regression_metrics",
    "register_predictor",
    "rmse",
    "save_predictor",
    "save_table",
    "within",
]
