r"""Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016, arXiv:1607.08022).

Input ``x`` of shape ``(N, C, *spatial)`` with 1 to 3 spatial axes. One statistic per sample ``n`` and channel ``c``
over the spatial set ``R = spatial`` of ``m = prod(spatial)`` values:

.. math::

    \mu_{nc} = \operatorname{mean}_R x,\quad \sigma^2_{nc} = \operatorname{mean}_R (x-\mu_{nc})^2,\quad
    \hat x = (x-\mu_{nc})(\sigma^2_{nc}+\epsilon)^{-1/2},\quad y = \gamma_c\hat x + \beta_c .

It is GroupNorm with one channel per group, and BatchNorm applied to each sample on its own. The backward is the
primitive's fused formula with means over ``R`` (see :mod:`normref.ops._normalize`):
:math:`dx = \mathrm{rstd}(g - c_2 - \hat x c_1)`, :math:`d\gamma_c = \sum_{n,R} dy\,\hat x`,
:math:`d\beta_c = \sum_{n,R} dy`.

Given statistics are either per channel ``(C,)`` (PyTorch's running buffers, used in eval when
``track_running_stats=True``) or per instance ``(N, C)``. With running buffers, PyTorch updates them from the batch
average of the per-instance means and of the per-instance *unbiased* variances; :func:`instance_norm_batch_stats`
returns exactly those averages.

Deviations from PyTorch's ``InstanceNorm{1,2,3}d`` (2.13), both in the running buffers only, decided against
copying them (checked in ``tests/test_torch_oracle.py``): PyTorch never increments ``num_batches_tracked`` for
InstanceNorm, and it passes ``momentum=None`` on as ``0.0``, so its buffers then never move from mean 0, variance 1.
normref's layer follows BatchNorm's documented convention for both: it counts the training batches, and
``momentum=None`` is the cumulative average. With a numeric momentum the buffers agree with PyTorch's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import as_array, check_affine, check_ndim, check_nonempty, check_positive_float, check_stats
from .._registry import register
from ._normalize import NormalizeCache, normalize_backward, normalize_forward

InstanceNormCache = NormalizeCache


class InstanceNormArgs(NamedTuple):
    """The validated arguments of an InstanceNorm forward, as every backend takes them."""

    x: np.ndarray  # (N, C, *spatial)
    gamma: np.ndarray | None  # (C,), cast to x's dtype
    beta: np.ndarray | None  # (C,), cast to x's dtype
    eps: float
    # given (mean, var), each (N, C, 1, ...) per instance or (1, C, 1, ...) per channel; None = statistics of x
    stats: tuple[np.ndarray, np.ndarray] | None

    @property
    def stat_shape(self) -> tuple[int, ...]:
        """The keepdims shape of per-instance statistics, ``(N, C, 1, ...)``."""
        return self.x.shape[:2] + (1,) * (self.x.ndim - 2)


def instance_norm_args(x, gamma, beta, *, eps, stats, allow_complex=True) -> InstanceNormArgs:
    """Validate the arguments of :func:`instance_norm_forward` (shared by every backend; see it for their meaning).

    Given statistics of shape ``(N, C)`` are per instance, any other shape is checked against ``(C,)`` (per
    channel, broadcast to every sample). Without them each instance needs more than one spatial element.
    ``allow_complex=False`` (the compiled backends) refuses complex arrays with a ``TypeError`` naming the argument.
    """
    x = as_array(x, "x", allow_complex=allow_complex)
    check_ndim(x, "x", (3, 4, 5), "(N, C, *spatial) with 1 to 3 spatial axes")
    check_nonempty(x, "x")
    n, num_channels = x.shape[:2]
    gamma, beta = check_affine(x, gamma, beta, (num_channels,), allow_complex=allow_complex)
    args = InstanceNormArgs(x, gamma, beta, check_positive_float(eps, "eps", allow_zero=True), None)
    if stats is None:
        if x[0, 0].size < 2:
            raise ValueError(f"x must hold more than 1 spatial element per channel, got input shape {x.shape}")
        return args
    shape = stats[1].shape if isinstance(stats, tuple) and len(stats) == 2 and hasattr(stats[1], "shape") else None
    per_instance = shape == (n, num_channels)
    view_shape = (n if per_instance else 1, num_channels) + (1,) * (x.ndim - 2)
    return args._replace(stats=check_stats(stats, (n, num_channels) if per_instance else (num_channels,), x,
                                           view_shape=view_shape, allow_complex=allow_complex))


def instance_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None):
    """Instance normalization of ``x`` per sample and channel over the spatial axes.

    Args:
        x: ``(N, C, *spatial)``, 1 to 3 spatial axes.
        gamma, beta: ``(C,)`` or ``None``.
        eps: added to the variance inside the square root.
        stats: ``None`` (per-instance statistics of ``x``), or ``(mean, var)`` each ``(C,)`` or each ``(N, C)``.

    Returns:
        ``(y, cache)``: ``y`` like ``x``; the cache's ``mean``/``var`` have shape ``(N, C, 1, ...)``.
    """
    a = instance_norm_args(x, gamma, beta, eps=eps, stats=stats)
    return normalize_forward(a.x, a.gamma, a.beta, reduce_axes=tuple(range(2, a.x.ndim)),
                             param_view_shape=(1, a.x.shape[1]) + (1,) * (a.x.ndim - 2), eps=a.eps, center=True,
                             stats=a.stats)


def instance_norm_backward(dy, cache: InstanceNormCache):
    """Exact gradients of :func:`instance_norm_forward`: ``(dx, dgamma, dbeta)``, ``dgamma``/``dbeta`` ``(C,)``."""
    return normalize_backward(dy, cache)


def instance_norm_batch_stats(cache: InstanceNormCache):
    """The per-channel batch averages PyTorch feeds its running buffers: ``(mean (C,), biased var (C,), m)``.

    ``m`` is the number of values per instance, for the unbiased correction ``m/(m-1)`` applied by
    ``update_running_stats``; the average of unbiased variances equals the corrected average of biased ones.
    """
    lead = tuple(cache.x_shape[:2])
    mean = cache.mean.reshape(lead).mean(axis=0)
    var = cache.var.reshape(lead).mean(axis=0)
    return mean, var, int(np.prod(cache.x_shape[2:]))


register("instance_norm", "numpy", instance_norm_forward, instance_norm_backward)
