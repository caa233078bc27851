import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def _write_idx(path: Path, arr: np.ndarray, magic: int, gz: bool) -> Path:
    """Write ``arr`` (uint8) as an IDX file with the given magic number."""
    data = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in arr.shape)
    data += np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def write_idx():
    return _write_idx
