"""InstanceNorm on the Numba CPU backend: GroupNorm's row kernels with one channel per row, registered as ``"numba"``.

``x`` of shape ``(N, C, *spatial)`` is viewed as ``(N·C, S)``; row ``r`` is channel ``r mod C``. Same signature,
validation and results as :mod:`normref.ops.instance_norm` (the math is there), including given statistics per
channel ``(C,)`` (running buffers, broadcast to every instance) or per instance ``(N, C)``. Complex input raises
``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.
"""

from __future__ import annotations

import math

import numpy as np

from ..._registry import register
from ...ops.instance_norm import instance_norm_args
from ._rowwise import run_rows_backward, run_rows_forward


def instance_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None, out=None, kernels=None):
    """Like :func:`normref.ops.instance_norm.instance_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    a = instance_norm_args(x, gamma, beta, eps=eps, stats=stats, allow_complex=False)
    x = np.ascontiguousarray(a.x)
    batch, channels = x.shape[:2]
    seg = math.prod(x.shape[2:])
    return run_rows_forward(x, x.reshape(batch * channels, seg), a.gamma, a.beta, eps=a.eps, center=True,
                            given=a.stats, stat_shape=a.stat_shape, layout=(channels, seg), out=out,
                            kernels=kernels)


def instance_norm_backward(dy, cache, *, out=None, kernels=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.instance_norm.instance_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    return run_rows_backward(dy, cache, out=out, kernels=kernels)


register("instance_norm", "numba", instance_norm_forward, instance_norm_backward)
