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

from typing import NamedTuple

import numpy as np

from .._validate import as_array, check_affine, check_nonempty, check_positive_float, check_stats
from .._registry import register
from ._normalize import NormalizeCache, normalize_backward, normalize_forward
from .layer_norm import check_trailing_shape

RMSNormCache = NormalizeCache


class RMSNormArgs(NamedTuple):
    """The validated arguments of an RMSNorm forward, as every backend takes them."""

    x: np.ndarray  # (*batch, *normalized_shape)
    gamma: np.ndarray | None  # normalized_shape, cast to x's dtype
    normalized_shape: tuple[int, ...]
    eps: float  # eps=None already resolved to the machine epsilon of x's dtype
    stats: tuple[None, np.ndarray] | None  # given (None, mean_square), mean_square stat_shape; None = from x

    @property
    def stat_shape(self) -> tuple[int, ...]:
        """The keepdims shape of the statistic, ``(*batch, 1, ...)``."""
        k = len(self.normalized_shape)
        return self.x.shape[:self.x.ndim - k] + (1,) * k


def rms_norm_args(x, gamma, *, normalized_shape, eps, stats, allow_complex=True) -> RMSNormArgs:
    """Validate the arguments of :func:`rms_norm_forward` (shared by every backend; see it for their meaning).

    ``allow_complex=False`` (the compiled backends) refuses complex arrays with a ``TypeError`` naming the argument.
    """
    x = as_array(x, "x", allow_complex=allow_complex)
    normalized_shape = check_trailing_shape(x, normalized_shape)
    check_nonempty(x, "x")
    gamma, _ = check_affine(x, gamma, None, normalized_shape, allow_complex=allow_complex)
    eps = float(np.finfo(x.dtype).eps) if eps is None else check_positive_float(eps, "eps", allow_zero=True)
    args = RMSNormArgs(x, gamma, normalized_shape, eps, None)
    if stats is None:
        return args
    return args._replace(stats=check_stats(stats, x.shape[:x.ndim - len(normalized_shape)], x, need_mean=False,
                                           view_shape=args.stat_shape, allow_complex=allow_complex))


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
    a = rms_norm_args(x, gamma, normalized_shape=normalized_shape, eps=eps, stats=stats)
    lead = a.x.ndim - len(a.normalized_shape)
    return normalize_forward(a.x, a.gamma, None, reduce_axes=tuple(range(lead, a.x.ndim)),
                             param_view_shape=(1,) * lead + a.normalized_shape, eps=a.eps, center=False,
                             stats=a.stats)


def rms_norm_backward(dy, cache: RMSNormCache):
    """Exact gradients of :func:`rms_norm_forward`: ``(dx, dgamma)``, ``dgamma`` of ``normalized_shape`` or None."""
    dx, dgamma, _ = normalize_backward(dy, cache)
    return dx, dgamma


register("rms_norm", "numpy", rms_norm_forward, rms_norm_backward)
