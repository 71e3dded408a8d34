r"""Root Mean Square Layer Normalization (Zhang & Sennrich, 2019, arXiv:1910.07467).

LayerNorm without centering and without bias. Over the trailing ``normalized_shape`` (the set ``R``):

.. math::

    \nu = \operatorname{mean}_R x^2,\quad \mathrm{rstd} = (\nu + \epsilon)^{-1/2},\quad
    \hat x = x\,\mathrm{rstd},\quad y = \gamma\odot\hat x .

Backward. With :math:`g = \gamma\odot dy`, the only statistic is :math:`\nu` and
:math:`\partial\nu/\partial x_i = 2x_i/m`, so

.. math::

    dx = \mathrm{rstd}\,\bigl(g - \hat x\,\operatorname{mean}_R(g\,\hat x)\bigr) = \mathrm{rstd}\,(g - \hat x\,c_1),
    \qquad d\gamma = \textstyle\sum_{batch} dy\odot\hat x .

It is the primitive's fused formula with the :math:`c_2` (mean) term dropped. On rows that already have zero mean,
RMSNorm equals LayerNorm without bias.

``eps=None`` means the machine epsilon of ``x``'s dtype (PyTorch's convention; many model codebases hard-code
``1e-6`` instead). Given statistics are ``stats=(None, mean_square)`` with ``mean_square`` of shape ``batch``.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_array, check_affine, check_nonempty, check_positive_float, check_stats
from .._registry import register
from ._normalize import NormalizeCache, normalize_backward, normalize_forward
from .layer_norm import check_trailing_shape

RMSNormCache = NormalizeCache


def rms_norm_forward(x, gamma=None, *, normalized_shape, eps=None, stats=None):
    """RMS normalization of ``x`` over its trailing ``normalized_shape``.

    Args:
        x: ``(*batch, *normalized_shape)``.
        gamma: ``normalized_shape`` or ``None``.
        normalized_shape: an int or a tuple of ints.
        eps: added to the mean square inside the square root; ``None`` = ``np.finfo(x.dtype).eps``.
        stats: ``None``, or ``(None, mean_square)`` with ``mean_square`` of shape ``batch``.

    Returns:
        ``(y, cache)``: ``y`` like ``x``.
    """
    x = as_array(x, "x")
    normalized_shape = check_trailing_shape(x, normalized_shape)
    check_nonempty(x, "x")
    gamma, _ = check_affine(x, gamma, None, normalized_shape)
    eps = float(np.finfo(x.dtype).eps) if eps is None else check_positive_float(eps, "eps", allow_zero=True)
    lead = x.ndim - len(normalized_shape)
    if stats is not None:
        _, mean_sq = check_stats(stats, x.shape[:lead], x, need_mean=False)
        stats = (None, mean_sq.reshape(mean_sq.shape + (1,) * len(normalized_shape)))
    return normalize_forward(x, gamma, None, reduce_axes=tuple(range(lead, x.ndim)),
                             param_view_shape=(1,) * lead + normalized_shape, eps=eps, center=False, stats=stats)


def rms_norm_backward(dy, cache: RMSNormCache):
    """Exact gradients of :func:`rms_norm_forward`: ``(dx, dgamma)``, ``dgamma`` of ``normalized_shape`` or None."""
    dx, dgamma, _ = normalize_backward(dy, cache)
    return dx, dgamma


register("rms_norm", "numpy", rms_norm_forward, rms_norm_backward)
