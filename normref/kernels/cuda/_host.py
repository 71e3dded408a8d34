"""Host side of the CUDA backend: the cache type, input checks for real arrays, and device transfers.

The backend takes and returns host NumPy arrays, exactly like the reference ops: each call copies its inputs to the
device, launches the kernels and copies the results back. (Keeping tensors on the device between calls would be the
next step for speed; it would not change any kernel.) Statistics live in float64 on the device and are cast to the
input's dtype only where the cache exposes them, as the reference does.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import cuda

from ..._validate import as_array, check_dy


class CudaNormCache(NamedTuple):
    """What the CUDA backward needs, plus the fields the layers read from any cache.

    ``mean``/``var`` have the shape of the NumPy cache's keepdims statistics (``(1, C, 1, ...)`` for BatchNorm,
    ``(N, C, 1, ...)`` for InstanceNorm, ...), so ``batch_norm_batch_stats`` and ``instance_norm_batch_stats`` work
    on either backend. The rest is the kernels' own view of the problem.
    """

    mean: np.ndarray | None  # (K) x's dtype; None without centering (RMSNorm)
    var: np.ndarray  # (K) x's dtype; the mean square without centering
    x_shape: tuple[int, ...]  # the caller's shape of x
    x_view: np.ndarray  # x as the kernels see it, C-contiguous: (rows, m), or (N, C, S) for BatchNorm
    stat_mean: np.ndarray  # (statistics,) float64: the mean each row/channel was normalized with (0 for RMS)
    stat_rstd: np.ndarray  # (statistics,) float64: 1/sqrt(var + eps)
    gamma: np.ndarray | None  # the caller's gamma, x's dtype, flattened
    has_beta: bool
    batch_stats: bool  # statistics came from x: the gradient flows through them
    center: bool  # False for RMSNorm
    period: int  # rows per sample in the row layout (1 for LayerNorm, C for InstanceNorm, G for GroupNorm)
    div: int  # elements per parameter within a sample's flattened row block (1: elementwise; S: per channel)
    param_shape: tuple[int, ...] | None
    backend: str = "cuda"


def real_array(value, name: str) -> np.ndarray:
    """``value`` as a float32/float64 array: the compiled backends refuse complex input (no complex step here)."""
    return as_array(value, name, allow_complex=False)


def real_dy(dy, cache: CudaNormCache) -> np.ndarray:
    """Validate ``dy`` against the forward, cast to x's dtype, and give it the kernels' contiguous view."""
    dy = check_dy(real_array(dy, "dy"), cache.x_shape, cache.x_view.dtype)
    return np.ascontiguousarray(dy).reshape(cache.x_view.shape)


def device_param(param, dtype) -> object:
    """A device copy of an optional parameter; a 1-element dummy when it is absent (the kernel gets a flag too)."""
    host = np.zeros(1, dtype) if param is None else np.ascontiguousarray(param, dtype=dtype).reshape(-1)
    return cuda.to_device(host)


def rstd_of(var: np.ndarray, eps: float) -> np.ndarray:
    """``1/sqrt(var + eps)`` in float64, for given statistics."""
    return 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
