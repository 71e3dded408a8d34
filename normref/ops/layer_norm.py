r"""Layer Normalization (Ba, Kiros & Hinton, 2016, arXiv:1607.06450).

Input ``x`` of shape ``(*batch, *normalized_shape)``. One statistic per leading index over the trailing
``normalized_shape`` (the set ``R``, ``m = prod(normalized_shape)`` values):

.. math::

    \mu = \operatorname{mean}_R x,\quad \sigma^2 = \operatorname{mean}_R (x-\mu)^2,\quad
    \hat x = (x-\mu)(\sigma^2+\epsilon)^{-1/2},\quad y = \gamma\odot\hat x + \beta ,

with ``gamma`` and ``beta`` of shape ``normalized_shape``: *elementwise*, not per channel. The backward is the
primitive's fused formula with means over ``R`` (:mod:`normref.ops._normalize`):
:math:`dx = \mathrm{rstd}(g - c_2 - \hat x c_1)`, :math:`d\gamma = \sum_{batch} dy\odot\hat x`,
:math:`d\beta = \sum_{batch} dy`.

Train and eval are the same computation (no running statistics); ``stats=(mean, var)`` of shape ``batch`` gives the
frozen-statistics function, whose gradient is ``rstd·g``.

Deviations: none from PyTorch's ``LayerNorm`` (``bias=False`` there is ``beta=None`` here).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import (as_array, check_affine, check_nonempty, check_positive_float, check_shape_tuple,
                         check_stats)
from .._registry import register
from ._normalize import NormalizeCache, normalize_backward, normalize_forward

LayerNormCache = NormalizeCache


def check_trailing_shape(x, normalized_shape) -> tuple[int, ...]:
    """Validate that ``x`` ends with ``normalized_shape`` (shared by LayerNorm and RMSNorm)."""
    normalized_shape = check_shape_tuple(normalized_shape, "normalized_shape")
    k = len(normalized_shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != normalized_shape:
        raise ValueError(f"x must end with the dimensions normalized_shape={normalized_shape}, got shape {x.shape}")
    return normalized_shape


class LayerNormArgs(NamedTuple):
    """The validated arguments of a LayerNorm forward, as every backend takes them."""

    x: np.ndarray  # (*batch, *normalized_shape)
    gamma: np.ndarray | None  # normalized_shape, cast to x's dtype
    beta: np.ndarray | None  # normalized_shape, cast to x's dtype
    normalized_shape: tuple[int, ...]
    eps: float
    stats: tuple[np.ndarray, np.ndarray] | None  # given (mean, var), each stat_shape; None = statistics of x

    @property
    def stat_shape(self) -> tuple[int, ...]:
        """The keepdims shape of the statistics, ``(*batch, 1, ...)``."""
        k = len(self.normalized_shape)
        return self.x.shape[:self.x.ndim - k] + (1,) * k


def layer_norm_args(x, gamma, beta, *, normalized_shape, eps, stats, allow_complex=True) -> LayerNormArgs:
    """Validate the arguments of :func:`layer_norm_forward` (shared by every backend; see it for their meaning).

    ``allow_complex=False`` (the compiled backends) refuses complex arrays with a ``TypeError`` naming the argument.
    """
    x = as_array(x, "x", allow_complex=allow_complex)
    normalized_shape = check_trailing_shape(x, normalized_shape)
    check_nonempty(x, "x")
    gamma, beta = check_affine(x, gamma, beta, normalized_shape, allow_complex=allow_complex)
    args = LayerNormArgs(x, gamma, beta, normalized_shape, check_positive_float(eps, "eps", allow_zero=True), None)
    if stats is None:
        return args
    return args._replace(stats=check_stats(stats, x.shape[:x.ndim - len(normalized_shape)], x,
                                           view_shape=args.stat_shape, allow_complex=allow_complex))


def layer_norm_forward(x, gamma=None, beta=None, *, normalized_shape, eps=1e-5, stats=None):
    """Layer normalization of ``x`` over its trailing ``normalized_shape``.

    Args:
        x: ``(*batch, *normalized_shape)``.
        gamma, beta: ``normalized_shape`` or ``None``.
        normalized_shape: an int or a tuple of ints, the trailing dims to normalize over.
        eps: added to the variance inside the square root.
        stats: ``None`` (statistics of ``x``), or ``(mean, var)``, each of shape ``batch``.

    Returns:
        ``(y, cache)``: ``y`` like ``x``.

    Examples:
        >>> x = np.arange(12.0).reshape(3, 4) ** 2
        >>> y, _ = layer_norm_forward(x, normalized_shape=4)
        >>> bool(np.allclose(y.mean(axis=1), 0) and np.allclose(y.var(axis=1), 1, atol=1e-4))
        True
    """
    a = layer_norm_args(x, gamma, beta, normalized_shape=normalized_shape, eps=eps, stats=stats)
    lead = a.x.ndim - len(a.normalized_shape)
    return normalize_forward(a.x, a.gamma, a.beta, reduce_axes=tuple(range(lead, a.x.ndim)),
                             param_view_shape=(1,) * lead + a.normalized_shape, eps=a.eps, center=True, stats=a.stats)


def layer_norm_backward(dy, cache: LayerNormCache):
    """Exact gradients of :func:`layer_norm_forward`: ``(dx, dgamma, dbeta)``, parameters ``normalized_shape``."""
    return normalize_backward(dy, cache)


register("layer_norm", "numpy", layer_norm_forward, layer_norm_backward)
