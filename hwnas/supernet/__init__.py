"""Supernets: the family contract (``family``), the registry of families and their checkpoints
(``registry``), the families themselves (``families/``), BN recalibration, evaluation and training."""

from hwnas.supernet.registry import create_supernet, get_family, list_supernets, register_supernet

__all__ = ["create_supernet", "get_family", "list_supernets", "register_supernet"]
