"""LayerNorm on the Numba CPU backend: the row-wise template (:mod:`._rowwise`), registered as ``"numba"``.

``x`` of shape ``(*batch, *normalized_shape)`` is viewed as ``(prod(batch), prod(normalized_shape))``; ``gamma`` and
``beta`` are elementwise along a row. Same signature, validation and results as :mod:`normref.ops.layer_norm` (the
math is there). Complex input raises ``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.
"""

from __future__ import annotations

import math

from ..._registry import register
from ..._validate import check_nonempty, check_positive_float, check_stats
from ...ops.layer_norm import check_trailing_shape
from ._common import as_kernel_array, real_affine
from ._rowwise import run_rows_backward, run_rows_forward


def layer_norm_forward(x, gamma=None, beta=None, *, normalized_shape, eps=1e-5, stats=None, out=None):
    """Like :func:`normref.ops.layer_norm.layer_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    x = as_kernel_array(x, "x")
    normalized_shape = check_trailing_shape(x, normalized_shape)
    check_nonempty(x, "x")
    gamma, beta = real_affine(x, gamma, beta, normalized_shape)
    eps = check_positive_float(eps, "eps", allow_zero=True)
    lead = x.shape[:x.ndim - len(normalized_shape)]
    stat_shape = lead + (1,) * len(normalized_shape)
    given = None
    if stats is not None:
        mean, var = check_stats(stats, lead, x)
        given = (mean.reshape(stat_shape), var.reshape(stat_shape))
    x2 = x.reshape(math.prod(lead), math.prod(normalized_shape))
    return run_rows_forward(x, x2, gamma, beta, eps=eps, center=True, given=given, stat_shape=stat_shape,
                            out=out)


def layer_norm_backward(dy, cache, *, out=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.layer_norm.layer_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    return run_rows_backward(dy, cache, out=out)


register("layer_norm", "numba", layer_norm_forward, layer_norm_backward)
