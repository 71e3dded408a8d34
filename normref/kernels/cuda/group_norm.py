"""GroupNorm on the CUDA backend: one block per (sample, group) row of ``(N·G, (C/G)·S)``.

Same signature, validation and results as :func:`normref.ops.group_norm.group_norm_forward` (math there). The
statistics are per group but the parameters per channel: in the row layout of :mod:`._rows`, ``period = G`` and
``div = S``; the parameter gradients go through per-(sample, channel) partials summed over the samples.
"""

from __future__ import annotations

import numpy as np

from ..._registry import register
from ...ops.group_norm import group_norm_args
from ._host import CudaNormCache
from ._rows import rows_backward, rows_forward


def group_norm_forward(x, gamma=None, beta=None, *, num_groups, eps=1e-5, stats=None):
    """GroupNorm per sample and group of channels on the GPU: ``(y, cache)``, as the NumPy op."""
    args = group_norm_args(x, gamma, beta, num_groups=num_groups, eps=eps, stats=stats, allow_complex=False)
    x, gamma, beta, num_groups, eps, stats = args
    n, num_channels = x.shape[:2]
    given = None if stats is None else tuple(s.reshape(-1) for s in stats)
    x_view = np.ascontiguousarray(x).reshape(n * num_groups, -1)
    spatial_size = int(np.prod(x.shape[2:]))
    y, stat_mean, stat_var, stat_rstd = rows_forward(x_view, gamma, beta, eps=eps, center=True,
                                                     period=num_groups, div=spatial_size, given=given)
    keep = args.stat_shape  # the NumPy cache's view is (N, G, C/G, *spatial)
    cache = CudaNormCache(
        mean=stat_mean.astype(x.dtype).reshape(keep), var=stat_var.astype(x.dtype).reshape(keep), x_shape=x.shape,
        x_view=x_view, stat_mean=stat_mean, stat_rstd=stat_rstd, gamma=gamma, has_beta=beta is not None,
        batch_stats=stats is None, center=True, period=num_groups, div=spatial_size,
        param_shape=None if gamma is None and beta is None else (num_channels,))
    return y.reshape(x.shape), cache


def group_norm_backward(dy, cache: CudaNormCache):
    """``(dx, dgamma, dbeta)``, as :func:`normref.ops.group_norm.group_norm_backward`."""
    return rows_backward(dy, cache)


register("group_norm", "cuda", group_norm_forward, group_norm_backward)
