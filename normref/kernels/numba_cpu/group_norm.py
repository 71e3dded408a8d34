"""GroupNorm on the Numba CPU backend: the row-wise template with a per-channel affine, registered as ``"numba"``.

``x`` of shape ``(N, C, *spatial)`` is viewed as ``(N·G, C/G·S)`` rows (``S = prod(spatial)``); row ``r`` holds
the ``C/G`` channels of group ``r mod G``, ``S`` values each, and the affine is a scalar per such segment. Same
signature, validation and results as :mod:`normref.ops.group_norm` (the math is there). Complex input raises
``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first. Without spatial axes (``S = 1``) each segment is
one value: correct, but the per-segment loops are short and slow.
"""

from __future__ import annotations

import math

import numpy as np

from ..._registry import register
from ...ops.group_norm import group_norm_args
from ._rowwise import run_rows_backward, run_rows_forward


def group_norm_forward(x, gamma=None, beta=None, *, num_groups, eps=1e-5, stats=None, out=None, kernels=None):
    """Like :func:`normref.ops.group_norm.group_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    a = group_norm_args(x, gamma, beta, num_groups=num_groups, eps=eps, stats=stats, allow_complex=False)
    x, num_groups = np.ascontiguousarray(a.x), a.num_groups
    batch, channels = x.shape[:2]
    seg = math.prod(x.shape[2:])
    x2 = x.reshape(batch * num_groups, (channels // num_groups) * seg)
    return run_rows_forward(x, x2, a.gamma, a.beta, eps=a.eps, center=True, given=a.stats, stat_shape=a.stat_shape,
                            layout=(num_groups, seg), out=out, kernels=kernels)


def group_norm_backward(dy, cache, *, out=None, kernels=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.group_norm.group_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    ``kernels``: the kernel module (``None``: the exact ones; ``"numba-fast"`` registers this function with
    :mod:`normref.kernels.numba_fast`'s).
    """
    return run_rows_backward(dy, cache, out=out, kernels=kernels)


register("group_norm", "numba", group_norm_forward, group_norm_backward)
