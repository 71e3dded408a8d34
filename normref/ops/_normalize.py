r"""The normalize primitive: standardize over some axes, then an optional affine. BN/LN/GN/IN/RMSNorm are all this.

Notation (the same symbols appear in every op, kernel and tutorial). Let :math:`R` be the reduced set of one
statistic, :math:`m = |R|`, and :math:`\operatorname{mean}_R` the mean over it.

Forward
-------
.. math::

    \mu = \operatorname{mean}_R x,\quad \sigma^2 = \operatorname{mean}_R (x-\mu)^2,\quad
    \mathrm{rstd} = (\sigma^2 + \epsilon)^{-1/2},\quad \hat x = (x - \mu)\,\mathrm{rstd},\quad
    y = \gamma \hat x + \beta .

Without centering (RMSNorm) :math:`\mu := 0` and :math:`\sigma^2 := \operatorname{mean}_R x^2`, the mean square.
With *given* statistics (``stats=(mean, var)``: BatchNorm in eval, or any frozen-statistics function) :math:`\mu` and
:math:`\sigma^2` are constants and do not depend on :math:`x`.

Backward
--------
Write :math:`g = \gamma\,dy` (:math:`g = dy` without affine) and define, per reduced set,

.. math::

    c_1 = \operatorname{mean}_R (g\,\hat x), \qquad c_2 = \operatorname{mean}_R g .

With batch statistics the staged graph gives
:math:`\partial\sigma^2/\partial x_i = 2(x_i-\mu)/m` (the term through :math:`\mu` vanishes because
:math:`\sum_i (x_i-\mu) = 0`), :math:`\partial \mathrm{rstd}/\partial\sigma^2 = -\tfrac12 \mathrm{rstd}^3` and
:math:`\partial \mu/\partial x_i = 1/m`; summing the three paths into :math:`\hat x` yields the fused formula

.. math::

    dx = \mathrm{rstd}\,\bigl(g - c_2 - \hat x\, c_1\bigr)
    \qquad\text{(centered)},\qquad
    dx = \mathrm{rstd}\,\bigl(g - \hat x\, c_1\bigr) \qquad\text{(RMS, no centering)} .

With given statistics the only path is the affine one: :math:`dx = \mathrm{rstd}\,g`.
The parameter gradients sum over every axis along which :math:`\gamma` is broadcast:

.. math::

    d\gamma = \textstyle\sum dy\,\hat x, \qquad d\beta = \sum dy .

Tutorial ``01_batchnorm`` derives each step and checks it numerically.

Views
-----
Ops hand this primitive a *view* of ``x`` in which the reduced set is a set of whole axes: BatchNorm passes
``(N, C, *spatial)`` and reduces over all but axis 1; GroupNorm passes ``(N, G, C/G, *spatial)`` and reduces over
axes 2 onwards, while its per-channel ``gamma`` is shaped ``(1, G, C/G, 1, ...)`` in the same view. ``x_shape`` and
``param_shape`` record how to map ``dx`` and ``dgamma`` back.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._moments import mean_square, mean_var
from .._validate import check_dy


class NormalizeCache(NamedTuple):
    """What the backward pass needs. ``V`` is the view's shape; ``K`` is ``V`` with the reduced axes set to 1."""

    xhat: np.ndarray  # (V) the normalized input
    rstd: np.ndarray  # (K), or broadcastable to V: 1/sqrt(var + eps)
    mean: np.ndarray | None  # (K) mean used in the forward; None without centering
    var: np.ndarray  # (K) variance used (the mean square without centering)
    gamma_b: np.ndarray | None  # gamma reshaped to broadcast against V, or None without affine
    has_beta: bool  # whether a beta was added (so that dbeta is an array, not None)
    reduce_axes: tuple[int, ...]  # axes of V that one statistic reduces over
    param_axes: tuple[int, ...]  # axes of V along which gamma and beta are broadcast
    center: bool  # False for RMS normalization
    batch_stats: bool  # True: statistics came from x and the gradient flows through them
    x_shape: tuple[int, ...]  # the caller's shape of x; dx is reshaped to it
    param_shape: tuple[int, ...] | None  # the caller's shape of gamma and beta
    backend: str = "numpy"  # the backend that made this cache; backward never mixes backends


def normalize_forward(x_view, gamma, beta, *, reduce_axes, param_view_shape, eps, center=True, stats=None,
                      x_shape=None):
    """Standardize ``x_view`` over ``reduce_axes`` (or with the given ``stats``), then apply the affine.

    Args:
        x_view: ``(V)`` the input in a view where each statistic covers whole axes.
        gamma, beta: ``None`` or arrays of the caller's parameter shape ``P`` (already validated).
        reduce_axes: axes of ``V`` reduced by one statistic.
        param_view_shape: the shape ``P`` takes in the view, broadcastable to ``V`` (same ndim as ``V``).
        eps: added to the variance inside the square root.
        center: subtract the mean (``False``: RMS normalization, ``var`` is the mean square).
        stats: ``None`` for batch statistics, or ``(mean, var)`` broadcastable to ``K`` (``mean`` is ignored, and
            may be ``None``, when ``center`` is false).
        x_shape: the caller's shape of ``x``, stored so that the backward can reshape ``dx``.

    Returns:
        ``(y_view, cache)``: ``y_view`` of shape ``V``; ``cache`` a :class:`NormalizeCache`.
    """
    if stats is None:
        if center:
            mean, var = mean_var(x_view, reduce_axes)
        else:
            mean, var = None, mean_square(x_view, reduce_axes)
    else:
        mean, var = stats
        mean = mean if center else None
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x_view - mean) * rstd if center else x_view * rstd
    gamma_b = None if gamma is None else gamma.reshape(param_view_shape)
    y = xhat if gamma_b is None else xhat * gamma_b
    if beta is not None:
        y = y + beta.reshape(param_view_shape)
    param_shape = next((p.shape for p in (gamma, beta) if p is not None), None)
    cache = NormalizeCache(
        xhat=xhat, rstd=rstd, mean=mean, var=var, gamma_b=gamma_b, has_beta=beta is not None,
        reduce_axes=tuple(reduce_axes),
        param_axes=tuple(i for i, size in enumerate(param_view_shape) if size == 1),
        center=center, batch_stats=stats is None,
        x_shape=tuple(x_view.shape if x_shape is None else x_shape), param_shape=param_shape,
    )
    return y, cache


def normalize_backward(dy, cache: NormalizeCache):
    """Gradients of :func:`normalize_forward` (the fused formula in the module docstring).

    Args:
        dy: upstream gradient, of the caller's shape ``x_shape``.
        cache: from :func:`normalize_forward`.

    Returns:
        ``(dx, dgamma, dbeta)``: ``dx`` of shape ``x_shape``; ``dgamma``/``dbeta`` of ``param_shape``, or ``None``
        where the forward had no gamma/beta.
    """
    xhat, rstd, axes = cache.xhat, cache.rstd, cache.reduce_axes
    dy = check_dy(dy, cache.x_shape, xhat.dtype).reshape(xhat.shape)
    g = dy if cache.gamma_b is None else dy * cache.gamma_b
    if cache.batch_stats:
        c1 = (g * xhat).mean(axis=axes, keepdims=True)
        if cache.center:
            c2 = g.mean(axis=axes, keepdims=True)
            dx = rstd * (g - c2 - xhat * c1)
        else:
            dx = rstd * (g - xhat * c1)
    else:
        dx = rstd * g
    dgamma = None if cache.gamma_b is None else (dy * xhat).sum(axis=cache.param_axes).reshape(cache.param_shape)
    dbeta = dy.sum(axis=cache.param_axes).reshape(cache.param_shape) if cache.has_beta else None
    return dx.reshape(cache.x_shape), dgamma, dbeta
