"""InstanceNorm on the Numba CPU backend: GroupNorm's row kernels with one channel per row, registered as ``"numba"``.

``x`` of shape ``(N, C, *spatial)`` is viewed as ``(N·C, S)``; row ``r`` is channel ``r mod C``. Same signature,
validation and results as :mod:`normref.ops.instance_norm` (the math is there), including given statistics per
channel ``(C,)`` (running buffers, broadcast to every instance) or per instance ``(N, C)``. Complex input raises
``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.
"""

from __future__ import annotations

import math

from ..._registry import register
from ..._validate import check_ndim, check_nonempty, check_positive_float, check_stats
from ._common import as_kernel_array, real_affine
from ._rowwise import run_rows_backward, run_rows_forward


def instance_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None, out=None):
    """Like :func:`normref.ops.instance_norm.instance_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    x = as_kernel_array(x, "x")
    check_ndim(x, "x", (3, 4, 5), "(N, C, *spatial) with 1 to 3 spatial axes")
    check_nonempty(x, "x")
    batch, channels = x.shape[:2]
    gamma, beta = real_affine(x, gamma, beta, (channels,))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    ones = (1,) * (x.ndim - 2)
    given = None
    if stats is None:
        if x[0, 0].size < 2:
            raise ValueError(f"x must hold more than 1 spatial element per channel, got input shape {x.shape}")
    else:
        shape = stats[1].shape if isinstance(stats, tuple) and len(stats) == 2 and hasattr(stats[1], "shape") else None
        per_instance = shape == (batch, channels)
        mean, var = check_stats(stats, (batch, channels) if per_instance else (channels,), x)
        lead = (batch, channels) if per_instance else (1, channels)
        given = (mean.reshape(lead + ones), var.reshape(lead + ones))
    seg = math.prod(x.shape[2:])
    return run_rows_forward(x, x.reshape(batch * channels, seg), gamma, beta, eps=eps, center=True, given=given,
                            stat_shape=(batch, channels) + ones, layout=(channels, seg), out=out)


def instance_norm_backward(dy, cache, *, out=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.instance_norm.instance_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    return run_rows_backward(dy, cache, out=out)


register("instance_norm", "numba", instance_norm_forward, instance_norm_backward)
