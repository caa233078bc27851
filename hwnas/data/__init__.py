"""Datasets: Fashion-MNIST loading, the fixed splits, normalization and batching."""

from hwnas.data.fashion_mnist import (
    CLASSES,
    MEAN,
    NUM_CLASSES,
    SPLITS,
    STD,
    augment_batch,
    batches,
    load_split,
    read_idx,
    to_tensor,
)

__all__ = [
    "CLASSES",
    "MEAN",
    "NUM_CLASSES",
    "SPLITS",
    "STD",
    "augment_batch",
    "batches",
    "load_split",
    "read_idx",
    "to_tensor",
]
