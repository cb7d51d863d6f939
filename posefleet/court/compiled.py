"""What the court's compiled kernels share (numba): their options, the one array layout they are called with, and
the small helpers more than one of them uses. A kernel is compiled once per signature and cached on disk, so the
numpy-facing functions hand every kernel contiguous float64 arrays: one signature, loaded once."""

from __future__ import annotations

import numpy as np
from numba import njit

# numpy's float semantics (x / 0 is inf, not an exception); compiled once and cached next to the module
KERNEL = {"cache": True, "nogil": True, "error_model": "numpy"}


def f64(a: np.ndarray) -> np.ndarray:
    """``a`` as the kernels take it: C-contiguous float64 (a copy only where it is not already)."""
    return np.ascontiguousarray(a, dtype=np.float64)


@njit(**KERNEL)
def median_of_finite(values, buffer):
    """The median of ``values``' finite entries (NaN where none), sorted into ``buffer`` by insertion (a few
    dozen numbers: loops compile in a fraction of the time numpy's sort and masks take)."""
    n = 0
    for x in values:
        if np.isfinite(x):
            i = n
            while i > 0 and buffer[i - 1] > x:
                buffer[i] = buffer[i - 1]
                i -= 1
            buffer[i] = x
            n += 1
    return np.nan if n == 0 else (buffer[(n - 1) // 2] + buffer[n // 2]) / 2
