"""hwnas: hardware-aware deployment of weight-sharing supernets.

Profile a device, search for a latency target, export a verified engine.
"""

__version__ = "0.1.0"

from hwnas.errors import HwnasError  # noqa: E402

__all__ = ["HwnasError", "__version__"]
