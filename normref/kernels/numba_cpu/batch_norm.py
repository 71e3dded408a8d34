"""BatchNorm on the Numba CPU backend: the column-wise template (:mod:`._colwise`), registered as ``"numba"``.

Same signature, validation and results as :mod:`normref.ops.batch_norm` (the math is there), within rounding:
statistics and parameter gradients accumulate in float64 for float32 input. Complex input raises ``TypeError``;
a non-contiguous ``x`` or ``dy`` is copied to a contiguous array first.
"""

from __future__ import annotations

import numpy as np

from ..._registry import register
from ...ops.batch_norm import batch_norm_args
from ._colwise import run_channels_backward, run_channels_forward


def batch_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None, out=None, kernels=None):
    """Like :func:`normref.ops.batch_norm.batch_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    a = batch_norm_args(x, gamma, beta, eps=eps, stats=stats, allow_complex=False)
    return run_channels_forward(np.ascontiguousarray(a.x), a.gamma, a.beta, eps=a.eps, given=a.stats,
                                stat_shape=a.stat_shape, out=out, kernels=kernels)


def batch_norm_backward(dy, cache, *, out=None, kernels=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.batch_norm.batch_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    return run_channels_backward(dy, cache, out=out, kernels=kernels)


register("batch_norm", "numba", batch_norm_forward, batch_norm_backward)
