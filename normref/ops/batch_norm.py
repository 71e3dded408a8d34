r"""Batch Normalization (Ioffe & Szegedy, 2015, arXiv:1502.03167).

Input ``x`` of shape ``(N, C, *spatial)`` with 0 to 3 spatial axes. One statistic per channel ``c`` over the set
``R = (n, *spatial)`` of ``m = N·prod(spatial)`` values.

Forward, with batch statistics (training)
-----------------------------------------
.. math::

    \mu_c = \operatorname{mean}_R x, \quad \sigma_c^2 = \operatorname{mean}_R (x-\mu_c)^2 \;(\text{biased}),\quad
    \mathrm{rstd}_c = (\sigma_c^2+\epsilon)^{-1/2},\quad \hat x = (x-\mu_c)\,\mathrm{rstd}_c,\quad
    y = \gamma_c \hat x + \beta_c .

Forward with given statistics (evaluation): the same with :math:`(\mu_c, \sigma^2_c)` = the running buffers,
constants with respect to ``x``. The running buffers are updated by the separate pure function
:func:`normref.ops.running_stats.update_running_stats` (PyTorch semantics: ``momentum`` weighs the new batch,
the stored variance is unbiased, :math:`\sigma^2 m/(m-1)`).

Backward: the staged graph
--------------------------
The forward as a chain of named nodes (the shapes are for a 2-D input ``(N, C)``; a spatial input is the same with
``R`` covering more axes):

====  ==================================  ==================================================================
node  value                                local gradient (``d·`` is ∂L/∂·)
====  ==================================  ==================================================================
1     ``mu = mean_R x``          (C)        ``dx += dmu / m``
2     ``xc = x - mu``            (N, C)     ``dx += dxc``;  ``dmu = -sum_R dxc``
3     ``var = mean_R xc**2``     (C)        ``dxc += 2 xc dvar / m``
4     ``rstd = (var+eps)**-0.5`` (C)        ``dvar = -0.5 rstd**3 drstd``
5     ``xhat = xc * rstd``       (N, C)     ``dxc += rstd dxhat``;  ``drstd = sum_R xc dxhat``
6     ``y = gamma xhat + beta``  (N, C)     ``dxhat = gamma dy``;  ``dgamma = sum_R dy xhat``;  ``dbeta = sum_R dy``
====  ==================================  ==================================================================

:func:`batch_norm_backward_staged` runs exactly these steps in reverse. Substituting them into one another, with
``g = gamma·dy`` and using :math:`\sum_R x_c = 0` (so the path through ``mu`` into ``var`` cancels), collapses to the
fused formula used by :func:`batch_norm_backward`:

.. math::

    dx = \mathrm{rstd}\,\bigl(g - \operatorname{mean}_R g - \hat x\,\operatorname{mean}_R(g\hat x)\bigr)
       = \mathrm{rstd}\,(g - c_2 - \hat x\,c_1).

Two consequences worth knowing. (i) ``dx`` is orthogonal to ``1`` and to ``xhat`` over each channel when ``gamma``
is constant: shifting or rescaling a channel does not change the output. (ii) Under a *sum* loss (``dy = 1``) with any
``gamma``, ``g`` is constant per channel, so ``dx`` is identically zero: a gradient test with ``dy = 1`` can never
fail. normref's checks always use random ``dy``.

With given statistics the graph keeps only node 6 and the affine part of node 5: ``dx = rstd·g``.

Deviations: none from PyTorch's ``BatchNorm{1,2,3}d``; BatchNorm in training with one value per channel raises,
as PyTorch does (the variance would be 0 and the output identically ``beta``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import as_array, check_affine, check_ndim, check_nonempty, check_positive_float, check_stats
from .._registry import register
from ._normalize import NormalizeCache, normalize_backward, normalize_forward

BatchNormCache = NormalizeCache


class BatchNormArgs(NamedTuple):
    """The validated arguments of a BatchNorm forward, as every backend takes them."""

    x: np.ndarray  # (N, C, *spatial)
    gamma: np.ndarray | None  # (C,), cast to x's dtype
    beta: np.ndarray | None  # (C,), cast to x's dtype
    eps: float
    stats: tuple[np.ndarray, np.ndarray] | None  # given (mean, var), each stat_shape; None = batch statistics

    @property
    def stat_shape(self) -> tuple[int, ...]:
        """The keepdims shape of the statistics, ``(1, C, 1, ...)``."""
        return (1, self.x.shape[1]) + (1,) * (self.x.ndim - 2)


def batch_norm_args(x, gamma, beta, *, eps, stats, allow_complex=True) -> BatchNormArgs:
    """Validate the arguments of :func:`batch_norm_forward` (shared by every backend; see it for their meaning).

    Training (``stats=None``) needs more than one value per channel. ``allow_complex=False`` (the compiled
    backends) refuses complex ``x``, parameters and statistics with a ``TypeError`` naming the argument.
    """
    x = as_array(x, "x", allow_complex=allow_complex)
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    num_channels = x.shape[1]
    gamma, beta = check_affine(x, gamma, beta, (num_channels,), allow_complex=allow_complex)
    args = BatchNormArgs(x, gamma, beta, check_positive_float(eps, "eps", allow_zero=True), None)
    if stats is None:
        if x.size // num_channels < 2:
            raise ValueError(f"x must hold more than 1 value per channel when training (batch statistics), got "
                             f"input shape {x.shape}; use stats=(running_mean, running_var) to normalize one sample")
        return args
    return args._replace(stats=check_stats(stats, (num_channels,), x, view_shape=args.stat_shape,
                                           allow_complex=allow_complex))


def batch_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None):
    """Batch normalization of ``x`` per channel (axis 1) over the batch and spatial axes.

    Args:
        x: ``(N, C, *spatial)``, 0 to 3 spatial axes, float32/float64 (complex allowed for the complex step).
        gamma, beta: ``(C,)`` or ``None`` (no scale / no shift).
        eps: added to the variance inside the square root.
        stats: ``None`` to use batch statistics (training), or ``(mean, var)``, each ``(C,)``, to normalize with
            given statistics (evaluation with running buffers).

    Returns:
        ``(y, cache)``: ``y`` of shape ``(N, C, *spatial)`` in ``x``'s dtype; ``cache`` for the backward, whose
        ``mean``/``var`` fields (shape ``(1, C, 1, ...)``) feed ``update_running_stats``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> y, _ = batch_norm_forward(3 * rng.standard_normal((64, 4)) + 7)
        >>> bool(np.allclose(y.mean(axis=0), 0) and np.allclose(y.var(axis=0), 1, atol=1e-4))
        True
    """
    a = batch_norm_args(x, gamma, beta, eps=eps, stats=stats)
    return normalize_forward(a.x, a.gamma, a.beta, reduce_axes=(0,) + tuple(range(2, a.x.ndim)),
                             param_view_shape=a.stat_shape, eps=a.eps, center=True, stats=a.stats)


def batch_norm_backward(dy, cache: BatchNormCache):
    """Exact gradients of :func:`batch_norm_forward` by the fused formula.

    Args:
        dy: ``(N, C, *spatial)`` upstream gradient.
        cache: from the forward.

    Returns:
        ``(dx, dgamma, dbeta)``: ``dx`` like ``x``; ``dgamma``, ``dbeta`` of shape ``(C,)`` or ``None``.
    """
    return normalize_backward(dy, cache)


def batch_norm_backward_staged(dy, cache: BatchNormCache):
    """The same gradients, node by node through the staged graph of the module docstring (for teaching and tests).

    Only batch statistics with an affine ``gamma`` are supported: it is the derivation, not a second implementation.
    """
    if not cache.batch_stats or cache.gamma_b is None:
        raise ValueError("batch_norm_backward_staged needs a cache from a training forward with gamma")
    axes, xhat, rstd = cache.reduce_axes, cache.xhat, cache.rstd
    dy = np.asarray(dy).reshape(xhat.shape)
    m = xhat.size // rstd.size
    xc = xhat / rstd  # node 2's output, recovered from the cache
    # node 6: y = gamma * xhat + beta
    dxhat = cache.gamma_b * dy
    # node 5: xhat = xc * rstd
    dxc = rstd * dxhat
    drstd = (xc * dxhat).sum(axis=axes, keepdims=True)
    # node 4: rstd = (var + eps) ** -0.5
    dvar = -0.5 * rstd**3 * drstd
    # node 3: var = mean_R xc**2
    dxc = dxc + 2.0 * xc * dvar / m
    # node 2: xc = x - mu
    dx = dxc.copy()
    dmu = -dxc.sum(axis=axes, keepdims=True)
    # node 1: mu = mean_R x
    dx = dx + dmu / m
    return dx.reshape(cache.x_shape)


def batch_norm_batch_stats(cache: BatchNormCache):
    """The batch statistics a training forward used: ``(mean (C,), biased var (C,), m)``, ``m`` values per channel."""
    num_channels = cache.x_shape[1]
    return (cache.mean.reshape(num_channels), cache.var.reshape(num_channels),
            int(np.prod(cache.x_shape)) // num_channels)


register("batch_norm", "numpy", batch_norm_forward, batch_norm_backward)
