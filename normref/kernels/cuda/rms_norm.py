"""RMSNorm on the CUDA backend: LayerNorm's row kernels without centering (``center=False``).

Same signature, validation and results as :func:`normref.ops.rms_norm.rms_norm_forward` (math there), including
``eps=None`` meaning the machine epsilon of ``x``'s dtype and given statistics ``(None, mean_square)``.
"""

from __future__ import annotations

import numpy as np

from ..._registry import register
from ..._validate import check_affine, check_nonempty, check_positive_float, check_stats
from ...ops.layer_norm import check_trailing_shape
from ._host import CudaNormCache, real_array, real_param
from ._rows import rows_backward, rows_forward


def rms_norm_forward(x, gamma=None, *, normalized_shape, eps=None, stats=None):
    """RMSNorm over the trailing ``normalized_shape`` on the GPU: ``(y, cache)``, as the NumPy op."""
    x = real_array(x, "x")
    normalized_shape = check_trailing_shape(x, normalized_shape)
    check_nonempty(x, "x")
    gamma, _ = check_affine(x, real_param(gamma, "gamma"), None, normalized_shape)
    eps = float(np.finfo(x.dtype).eps) if eps is None else check_positive_float(eps, "eps", allow_zero=True)
    batch = x.shape[:x.ndim - len(normalized_shape)]
    given = None
    if stats is not None:
        _, mean_sq = check_stats(stats, batch, x, need_mean=False)
        given = (np.zeros(mean_sq.size), mean_sq.reshape(-1))
    rows = int(np.prod(batch))
    x_view = np.ascontiguousarray(x).reshape(rows, -1)
    y, stat_mean, stat_var, stat_rstd = rows_forward(x_view, gamma, None, eps=eps, center=False, period=1, div=1,
                                                     given=given)
    keep = batch + (1,) * len(normalized_shape)
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
