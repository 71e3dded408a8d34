"""RMSNorm on the Numba CPU backend: the row-wise template without centering, registered as ``"numba"``.

The same view as LayerNorm (:mod:`.layer_norm`), ``mean := 0`` and ``var`` = the mean square. Same signature,
validation and results as :mod:`normref.ops.rms_norm` (the math is there), including ``eps=None`` = the machine
epsilon of ``x``'s dtype. Complex input raises ``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.
"""

from __future__ import annotations

import math

import numpy as np

from ..._registry import register
from ..._validate import check_nonempty, check_positive_float, check_stats
from ...ops.layer_norm import check_trailing_shape
from ._common import as_kernel_array, real_affine
from ._rowwise import run_rows_backward, run_rows_forward


def rms_norm_forward(x, gamma=None, *, normalized_shape, eps=None, stats=None, out=None):
    """Like :func:`normref.ops.rms_norm.rms_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    x = as_kernel_array(x, "x")
    normalized_shape = check_trailing_shape(x, normalized_shape)
    check_nonempty(x, "x")
    gamma, _ = real_affine(x, gamma, None, normalized_shape)
    eps = float(np.finfo(x.dtype).eps) if eps is None else check_positive_float(eps, "eps", allow_zero=True)
    lead = x.shape[:x.ndim - len(normalized_shape)]
    stat_shape = lead + (1,) * len(normalized_shape)
    given = None
    if stats is not None:
        _, mean_sq = check_stats(stats, lead, x, need_mean=False)
        given = (None, mean_sq.reshape(stat_shape))
    x2 = x.reshape(math.prod(lead), math.prod(normalized_shape))
    return run_rows_forward(x, x2, gamma, None, eps=eps, center=False, given=given, stat_shape=stat_shape,
                            out=out)


def rms_norm_backward(dy, cache, *, out=None):
    """``(dx, dgamma)``, like :func:`normref.ops.rms_norm.rms_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    dx, dgamma, _ = run_rows_backward(dy, cache, out=out)
    return dx, dgamma


register("rms_norm", "numba", rms_norm_forward, rms_norm_backward)
