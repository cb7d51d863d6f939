"""What the court's compiled kernels share (numba): their options and the one array layout they are called with. A
kernel is compiled once per signature and cached on disk, so the numpy-facing functions hand every kernel
contiguous float64 arrays: one signature, loaded once."""

from __future__ import annotations

import numpy as np

# numpy's float semantics (x / 0 is inf, not an exception); compiled once and cached next to the module
KERNEL = {"cache": True, "nogil": True, "error_model": "numpy"}


def f64(a: np.ndarray) -> np.ndarray:
    """``a`` as the kernels take it: C-contiguous float64 (a copy only where it is not already)."""
    return np.ascontiguousarray(a, dtype=np.float64)
