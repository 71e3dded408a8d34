"""GroupNorm on the Numba CPU backend: the row-wise template with a per-channel affine, registered as ``"numba"``.

``x`` of shape ``(N, C, *spatial)`` is viewed as ``(N·G, C/G·S)`` rows (``S = prod(spatial)``); row ``r`` holds
the ``C/G`` channels of group ``r mod G``, ``S`` values each, and the affine is a scalar per such segment. Same
signature, validation and results as :mod:`normref.ops.group_norm` (the math is there). Complex input raises
``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first. Without spatial axes (``S = 1``) each segment is
one value: correct, but the per-segment loops are short and slow.
"""

from __future__ import annotations

import math

from ..._registry import register
from ..._validate import check_ndim, check_nonempty, check_positive_float, check_stats
from ...ops.group_norm import check_groups
from ._common import as_kernel_array, real_affine
from ._rowwise import run_rows_backward, run_rows_forward


def group_norm_forward(x, gamma=None, beta=None, *, num_groups, eps=1e-5, stats=None, out=None):
    """Like :func:`normref.ops.group_norm.group_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    x = as_kernel_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    batch, channels = x.shape[:2]
    num_groups = check_groups(num_groups, channels)
    gamma, beta = real_affine(x, gamma, beta, (channels,))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    seg = math.prod(x.shape[2:])
    # the reference's view is (N, G, C/G, *spatial); its statistics keep (N, G) and set the rest to 1
    stat_shape = (batch, num_groups) + (1,) * (x.ndim - 1)
    given = None
    if stats is not None:
        mean, var = check_stats(stats, (batch, num_groups), x)
        given = (mean.reshape(stat_shape), var.reshape(stat_shape))
    x2 = x.reshape(batch * num_groups, (channels // num_groups) * seg)
    return run_rows_forward(x, x2, gamma, beta, eps=eps, center=True, given=given, stat_shape=stat_shape,
                            layout=(num_groups, seg), out=out)


def group_norm_backward(dy, cache, *, out=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.group_norm.group_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    return run_rows_backward(dy, cache, out=out)


register("group_norm", "numba", group_norm_forward, group_norm_backward)
