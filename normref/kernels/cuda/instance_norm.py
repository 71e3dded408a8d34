"""InstanceNorm on the CUDA backend: one block per (sample, channel) row of ``(N·C, S)``.

Same signature, validation and results as :func:`normref.ops.instance_norm.instance_norm_forward` (math there). The
parameters are per channel: in the row layout of :mod:`._rows`, ``period = C`` and ``div = S``, and the parameter
gradients go through per-(sample, channel) partials summed over the samples.
"""

from __future__ import annotations

import numpy as np

from ..._registry import register
from ..._validate import check_affine, check_ndim, check_nonempty, check_positive_float, check_stats
from ._host import CudaNormCache, real_array, real_param
from ._rows import rows_backward, rows_forward


def instance_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None):
    """InstanceNorm per sample and channel on the GPU: ``(y, cache)``, as the NumPy op."""
    x = real_array(x, "x")
    check_ndim(x, "x", (3, 4, 5), "(N, C, *spatial) with 1 to 3 spatial axes")
    check_nonempty(x, "x")
    n, num_channels = x.shape[:2]
    gamma, beta = check_affine(x, real_param(gamma, "gamma"), real_param(beta, "beta"), (num_channels,))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    spatial_ones = (1,) * (x.ndim - 2)
    given, keep = None, (n, num_channels) + spatial_ones
    if stats is None:
        if x[0, 0].size < 2:
            raise ValueError(f"x must hold more than 1 spatial element per channel, got input shape {x.shape}")
    else:
        shape = stats[1].shape if isinstance(stats, tuple) and len(stats) == 2 and hasattr(stats[1], "shape") else None
        per_instance = shape == (n, num_channels)
        mean, var = check_stats(stats, (n, num_channels) if per_instance else (num_channels,), x)
        if per_instance:
            given = (mean.reshape(-1), var.reshape(-1))
        else:  # running statistics (C,): the same for every sample
            given = (np.tile(mean, n), np.tile(var, n))
            keep = (1, num_channels) + spatial_ones
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
