r"""Group Normalization (Wu & He, 2018, arXiv:1803.08494).

Input ``x`` of shape ``(N, C, *spatial)``. The ``C`` channels are split into ``G = num_groups`` contiguous groups of
``C/G``; one statistic per sample ``n`` and group ``k`` over the set ``R = (channels of k, *spatial)``:

.. math::

    \mu_{nk} = \operatorname{mean}_R x,\quad \sigma^2_{nk} = \operatorname{mean}_R (x-\mu_{nk})^2,\quad
    \hat x = (x-\mu_{nk})(\sigma^2_{nk}+\epsilon)^{-1/2},\quad y = \gamma_c\hat x + \beta_c .

The affine is *per channel*, finer than the statistics. Bookkeeping: view ``x`` as ``(N, G, C/G, *spatial)``, reduce
over axes ``2..``, and view ``gamma`` as ``(1, G, C/G, 1, ...)``; the primitive's fused backward then applies
unchanged (:mod:`normref.ops._normalize`): :math:`dx = \mathrm{rstd}(g - c_2 - \hat x c_1)` with ``g = gamma·dy`` and
means over ``R``; :math:`d\gamma_c = \sum_{n,spatial} dy\,\hat x`.

``G = 1`` is LayerNorm over ``(C, *spatial)`` with a per-channel affine; ``G = C`` is InstanceNorm.
Given statistics: ``stats=(mean, var)`` each of shape ``(N, G)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import (as_array, check_affine, check_ndim, check_nonempty, check_positive_float,
                         check_positive_int, check_stats)
from .._registry import register
from ._normalize import NormalizeCache, normalize_backward, normalize_forward

GroupNormCache = NormalizeCache


def check_groups(num_groups, num_channels) -> int:
    """Validate that ``num_groups`` is a positive int dividing ``num_channels``."""
    num_groups = check_positive_int(num_groups, "num_groups")
    if num_channels % num_groups:
        raise ValueError(f"num_groups must divide the number of channels, got num_groups={num_groups} "
                         f"for {num_channels} channels")
    return num_groups


class GroupNormArgs(NamedTuple):
    """The validated arguments of a GroupNorm forward, as every backend takes them."""

    x: np.ndarray  # (N, C, *spatial)
    gamma: np.ndarray | None  # (C,), cast to x's dtype
    beta: np.ndarray | None  # (C,), cast to x's dtype
    num_groups: int
    eps: float
    stats: tuple[np.ndarray, np.ndarray] | None  # given (mean, var), each stat_shape; None = statistics of x

    @property
    def stat_shape(self) -> tuple[int, ...]:
        """The keepdims shape of the statistics in the ``(N, G, C/G, *spatial)`` view: ``(N, G, 1, ...)``."""
        return (self.x.shape[0], self.num_groups) + (1,) * (self.x.ndim - 1)


def group_norm_args(x, gamma, beta, *, num_groups, eps, stats, allow_complex=True) -> GroupNormArgs:
    """Validate the arguments of :func:`group_norm_forward` (shared by every backend; see it for their meaning).

    ``allow_complex=False`` (the compiled backends) refuses complex arrays with a ``TypeError`` naming the argument.
    """
    x = as_array(x, "x", allow_complex=allow_complex)
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    num_groups = check_groups(num_groups, x.shape[1])
    gamma, beta = check_affine(x, gamma, beta, (x.shape[1],), allow_complex=allow_complex)
    args = GroupNormArgs(x, gamma, beta, num_groups, check_positive_float(eps, "eps", allow_zero=True), None)
    if stats is None:
        return args
    return args._replace(stats=check_stats(stats, (x.shape[0], num_groups), x, view_shape=args.stat_shape,
                                           allow_complex=allow_complex))


def group_norm_forward(x, gamma=None, beta=None, *, num_groups, eps=1e-5, stats=None):
    """Group normalization of ``x`` per sample over groups of channels and the spatial axes.

    Args:
        x: ``(N, C, *spatial)`` with 0 to 3 spatial axes.
        gamma, beta: ``(C,)`` or ``None``.
        num_groups: ``G``, dividing ``C``.
        eps: added to the variance inside the square root.
        stats: ``None`` (statistics of ``x``) or ``(mean, var)``, each ``(N, G)``.

    Returns:
        ``(y, cache)``: ``y`` like ``x``; the cache's view is ``(N, G, C/G, *spatial)``.
    """
    a = group_norm_args(x, gamma, beta, num_groups=num_groups, eps=eps, stats=stats)
    x, num_groups = a.x, a.num_groups
    n, num_channels = x.shape[:2]
    spatial = x.shape[2:]
    view = x.reshape((n, num_groups, num_channels // num_groups) + spatial)
    y, cache = normalize_forward(view, a.gamma, a.beta, reduce_axes=tuple(range(2, view.ndim)),
                                 param_view_shape=(1, num_groups, num_channels // num_groups) + (1,) * len(spatial),
                                 eps=a.eps, center=True, stats=a.stats, x_shape=x.shape)
    return y.reshape(x.shape), cache


def group_norm_backward(dy, cache: GroupNormCache):
    """Exact gradients of :func:`group_norm_forward`: ``(dx, dgamma, dbeta)``, parameters ``(C,)``."""
    return normalize_backward(dy, cache)


register("group_norm", "numpy", group_norm_forward, group_norm_backward)
