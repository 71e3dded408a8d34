"""RMSNorm on the CUDA backend: LayerNorm's row kernels without centering (``center=False``).

Same signature, validation and results as :func:`normref.ops.rms_norm.rms_norm_forward` (math there), including
``eps=None`` meaning the machine epsilon of ``x``'s dtype and given statistics ``(None, mean_square)``.
"""

from __future__ import annotations

import numpy as np

from ..._registry import register
from ...ops.rms_norm import rms_norm_args
from ._host import CudaNormCache
from ._rows import rows_backward, rows_forward


def rms_norm_forward(x, gamma=None, *, normalized_shape, eps=None, stats=None):
    """RMSNorm over the trailing ``normalized_shape`` on the GPU: ``(y, cache)``, as the NumPy op."""
    args = rms_norm_args(x, gamma, normalized_shape=normalized_shape, eps=eps, stats=stats, allow_complex=False)
    x, gamma, normalized_shape, eps, stats = args
    given = None if stats is None else (np.zeros(stats[1].size), stats[1].reshape(-1))
    x_view = np.ascontiguousarray(x).reshape(-1, int(np.prod(normalized_shape)))
    y, stat_mean, stat_var, stat_rstd = rows_forward(x_view, gamma, None, eps=eps, center=False, period=1, div=1,
                                                     given=given)
    keep = args.stat_shape
    cache = CudaNormCache(
        mean=None, var=stat_var.astype(x.dtype).reshape(keep), x_shape=x.shape, x_view=x_view,
        stat_mean=stat_mean, stat_rstd=stat_rstd, gamma=gamma, has_beta=False, batch_stats=stats is None,
        center=False, period=1, div=1, param_shape=None if gamma is None else normalized_shape)
    return y.reshape(x.shape), cache


def rms_norm_backward(dy, cache: CudaNormCache):
    """``(dx, dgamma)``, as :func:`normref.ops.rms_norm.rms_norm_backward`."""
    dx, dgamma, _ = rows_backward(dy, cache)
    return dx, dgamma


register("rms_norm", "cuda", rms_norm_forward, rms_norm_backward)
