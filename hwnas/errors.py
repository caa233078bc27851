"""One root exception for everything the user can get wrong.

User errors subclass ``HwnasError`` *and* a fitting built-in, so callers can catch
either.  Internal bugs are never ``HwnasError``: they surface as ordinary exceptions
with a traceback.
"""

from __future__ import annotations


class HwnasError(Exception):
    """Root of every error caused by user input or the environment."""


class ArchError(HwnasError, ValueError):
    """An architecture dict is malformed or outside the search space."""


class UnknownNameError(HwnasError, KeyError):
    """A registry lookup failed; the message lists the valid choices."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownSupernetError(UnknownNameError):
    pass


class UnknownDeviceError(UnknownNameError):
    pass


class UnknownBackendError(UnknownNameError):
    pass


class CheckpointError(HwnasError, ValueError):
    """A weights file is missing, unreadable or belongs to another family."""


class ExportError(HwnasError, RuntimeError):
    """Export or its output check failed."""


class ModelFileError(HwnasError, ValueError):
    """An ONNX model file is missing, truncated or malformed."""


class DeviceUnavailableError(HwnasError, RuntimeError):
    """A backend cannot run here (missing library, no GPU, unreachable agent)."""


class DataError(HwnasError, ValueError):
    """A dataset file is missing or malformed."""


class StoreError(HwnasError, RuntimeError):
    """The measurement store is unreadable or belongs to something else."""


class PredictorError(HwnasError, ValueError):
    """A predictor artifact is malformed or does not match the space/device."""


class SearchError(HwnasError, ValueError):
    """A search request cannot be satisfied (e.g. a budget below the fastest subnet)."""


class OutputError(HwnasError, OSError):
    """An output file cannot be written (missing or unwritable location, disk full)."""


class DistributedError(HwnasError, RuntimeError):
    """Multi-process training could not start, or one of its workers failed."""


class OptionValueError(HwnasError, ValueError):
    """A number given on the command line (or to a job) is not finite or outside its range."""
