"""BatchNorm on the Numba CPU backend: the column-wise template (:mod:`._colwise`), registered as ``"numba"``.

Same signature, validation and results as :mod:`normref.ops.batch_norm` (the math is there), within rounding:
statistics and parameter gradients accumulate in float64 for float32 input. Complex input raises ``TypeError``;
a non-contiguous ``x`` or ``dy`` is copied to a contiguous array first.
"""

from __future__ import annotations

from ..._registry import register
from ..._validate import check_ndim, check_nonempty, check_positive_float, check_stats
from ._colwise import run_channels_backward, run_channels_forward
from ._common import as_kernel_array, real_affine


def batch_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None, out=None):
    """Like :func:`normref.ops.batch_norm.batch_norm_forward`; the cache is a ``NumbaNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    x = as_kernel_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    channels = x.shape[1]
    gamma, beta = real_affine(x, gamma, beta, (channels,))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    stat_shape = (1, channels) + (1,) * (x.ndim - 2)
    if stats is None:
        if x.size // channels < 2:
            raise ValueError(f"x must hold more than 1 value per channel when training (batch statistics), got "
                             f"input shape {x.shape}; use stats=(running_mean, running_var) to normalize one sample")
        given = None
    else:
        mean, var = check_stats(stats, (channels,), x)
        given = (mean.reshape(stat_shape), var.reshape(stat_shape))
    return run_channels_forward(x, gamma, beta, eps=eps, given=given, stat_shape=stat_shape, out=out)


def batch_norm_backward(dy, cache, *, out=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.batch_norm.batch_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    return run_channels_backward(dy, cache, out=out)


register("batch_norm", "numba", batch_norm_forward, batch_norm_backward)
