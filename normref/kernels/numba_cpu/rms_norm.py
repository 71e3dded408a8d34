"""RMSNorm on the Numba CPU backend: the row-wise template without centering, registered as ``"numba"``.

The same view as LayerNorm (:mod:`.layer_norm`), ``mean := 0`` and ``var`` = the mean square. Same signature,
validation and results as :mod:`normref.ops.rms_norm` (the math is there), including ``eps=None`` = the machine
epsilon of ``x``'s dtype. Complex input raises ``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.
"""

from __future__ import annotations

import math

import numpy as np

from ..._registry import register
from ...ops.rms_norm import rms_norm_args
from ._rowwise import run_rows_backward, run_rows_forward


def rms_norm_forward(x, gamma=None, *, normalized_shape, eps=None, stats=None, out=None, kernels=None):
    """Like :func:`normref.ops.rms_norm.rms_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    a = rms_norm_args(x, gamma, normalized_shape=normalized_shape, eps=eps, stats=stats, allow_complex=False)
    x = np.ascontiguousarray(a.x)
    x2 = x.reshape(-1, math.prod(a.normalized_shape))
    return run_rows_forward(x, x2, a.gamma, None, eps=a.eps, center=False, given=a.stats, stat_shape=a.stat_shape,
                            out=out, kernels=kernels)


def rms_norm_backward(dy, cache, *, out=None, kernels=None):
    """``(dx, dgamma)``, like :func:`normref.ops.rms_norm.rms_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    dx, dgamma, _ = run_rows_backward(dy, cache, out=out, kernels=kernels)
    return dx, dgamma


register("rms_norm", "numba", rms_norm_forward, rms_norm_backward)
