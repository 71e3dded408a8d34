"""InstanceNorm on the CUDA backend: one block per (sample, channel) row of ``(N·C, S)``.

Same signature, validation and results as :func:`normref.ops.instance_norm.instance_norm_forward` (math there). The
parameters are per channel: in the row layout of :mod:`._rows`, ``period = C`` and ``div = S``, and the parameter
gradients go through per-(sample, channel) partials summed over the samples.
"""

from __future__ import annotations

import numpy as np

from ..._registry import register
from ...ops.instance_norm import instance_norm_args
from ._host import CudaNormCache
from ._rows import rows_backward, rows_forward


def instance_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None):
    """InstanceNorm per sample and channel on the GPU: ``(y, cache)``, as the NumPy op."""
    args = instance_norm_args(x, gamma, beta, eps=eps, stats=stats, allow_complex=False)
    x, gamma, beta, eps, stats = args
    n, num_channels = x.shape[:2]
    given, keep = None, args.stat_shape
    if stats is not None:  # per instance (N, C, 1, ...) or running statistics (1, C, 1, ...), the same for every n
        given = tuple(np.broadcast_to(s, keep).reshape(-1) for s in stats)
        keep = stats[1].shape
    x_view = np.ascontiguousarray(x).reshape(n * num_channels, -1)
    spatial_size = x_view.shape[1]
    y, stat_mean, stat_var, stat_rstd = rows_forward(x_view, gamma, beta, eps=eps, center=True,
                                                     period=num_channels, div=spatial_size, given=given)
    exposed = slice(None) if keep[0] == n else slice(0, num_channels)  # given (C,) stats: one copy, not N
    cache = CudaNormCache(
        mean=stat_mean[exposed].astype(x.dtype).reshape(keep), var=stat_var[exposed].astype(x.dtype).reshape(keep),
        x_shape=x.shape, x_view=x_view, stat_mean=stat_mean, stat_rstd=stat_rstd, gamma=gamma,
        has_beta=beta is not None, batch_stats=stats is None, center=True, period=num_channels, div=spatial_size,
        param_shape=None if gamma is None and beta is None else (num_channels,))
    return y.reshape(x.shape), cache


def instance_norm_backward(dy, cache: CudaNormCache):
    """``(dx, dgamma, dbeta)``, as :func:`normref.ops.instance_norm.instance_norm_backward`."""
    return rows_backward(dy, cache)


register("instance_norm", "cuda", instance_norm_forward, instance_norm_backward)
