"""Backend registry: ``ort``, ``torch-cpu``, ``torch-cuda``, ``tensorrt``, ``openvino`` and ``remote``.

Heavy libraries (onnxruntime, torch, tensorrt, openvino) are imported only when a backend is used or checked.
"""

from hwnas.devices.backends.base import (
    Backend,
    LocalBackend,
    ModelKindError,
    create_backend,
    fingerprint_for,
    get_backend_class,
    list_backends,
    register_backend,
    resolve_shape,
    runtime_config,
)

__all__ = [
    "Backend",
    "LocalBackend",
    "ModelKindError",
    "create_backend",
    "fingerprint_for",
    "get_backend_class",
    "list_backends",
    "register_backend",
    "resolve_shape",
    "runtime_config",
]
