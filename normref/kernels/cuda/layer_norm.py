"""LayerNorm on the CUDA backend: one block per row of ``(batch, prod(normalized_shape))``.

Same signature, validation and results as :func:`normref.ops.layer_norm.layer_norm_forward` (math there); the
kernels are the row kernels of :mod:`._rows` with elementwise parameters (``period = div = 1``).
"""

from __future__ import annotations

import numpy as np

from ..._registry import register
from ...ops.layer_norm import layer_norm_args
from ._host import CudaNormCache
from ._rows import rows_backward, rows_forward


def layer_norm_forward(x, gamma=None, beta=None, *, normalized_shape, eps=1e-5, stats=None):
    """LayerNorm over the trailing ``normalized_shape`` on the GPU: ``(y, cache)``, as the NumPy op."""
    args = layer_norm_args(x, gamma, beta, normalized_shape=normalized_shape, eps=eps, stats=stats,
                           allow_complex=False)
    x, gamma, beta, normalized_shape, eps, stats = args
    given = None if stats is None else tuple(s.reshape(-1) for s in stats)
    x_view = np.ascontiguousarray(x).reshape(-1, int(np.prod(normalized_shape)))
    y, stat_mean, stat_var, stat_rstd = rows_forward(x_view, gamma, beta, eps=eps, center=True, period=1, div=1,
                                                     given=given)
    keep = args.stat_shape
    cache = CudaNormCache(
        mean=stat_mean.astype(x.dtype).reshape(keep), var=stat_var.astype(x.dtype).reshape(keep), x_shape=x.shape,
        x_view=x_view, stat_mean=stat_mean, stat_rstd=stat_rstd, gamma=gamma, has_beta=beta is not None,
        batch_stats=stats is None, center=True, period=1, div=1,
        param_shape=None if gamma is None and beta is None else normalized_shape)
    return y.reshape(x.shape), cache


def layer_norm_backward(dy, cache: CudaNormCache):
    """``(dx, dgamma, dbeta)``, as :func:`normref.ops.layer_norm.layer_norm_backward`."""
    return rows_backward(dy, cache)


register("layer_norm", "cuda", layer_norm_forward, layer_norm_backward)
