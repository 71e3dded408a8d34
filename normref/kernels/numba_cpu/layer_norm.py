"""LayerNorm on the Numba CPU backend: the row-wise template (:mod:`._rowwise`), registered as ``"numba"``.

``x`` of shape ``(*batch, *normalized_shape)`` is viewed as ``(prod(batch), prod(normalized_shape))``; ``gamma`` and
``beta`` are elementwise along a row. Same signature, validation and results as :mod:`normref.ops.layer_norm` (the
math is there). Complex input raises ``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.
"""

from __future__ import annotations

import math

import numpy as np

from ..._registry import register
from ...ops.layer_norm import layer_norm_args
from ._rowwise import run_rows_backward, run_rows_forward


def layer_norm_forward(x, gamma=None, beta=None, *, normalized_shape, eps=1e-5, stats=None, out=None, kernels=None):
    """Like :func:`normref.ops.layer_norm.layer_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    a = layer_norm_args(x, gamma, beta, normalized_shape=normalized_shape, eps=eps, stats=stats, allow_complex=False)
    x = np.ascontiguousarray(a.x)
    x2 = x.reshape(-1, math.prod(a.normalized_shape))
    return run_rows_forward(x, x2, a.gamma, a.beta, eps=a.eps, center=True, given=a.stats, stat_shape=a.stat_shape,
                            out=out, kernels=kernels)


def layer_norm_backward(dy, cache, *, out=None, kernels=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.layer_norm.layer_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    return run_rows_backward(dy, cache, out=out, kernels=kernels)


register("layer_norm", "numba", layer_norm_forward, layer_norm_backward)
