r"""Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization", CVPR 2025, arXiv:2503.10622).

An elementwise drop-in replacement for LayerNorm: no statistics at all.

.. math::

    y = \gamma \odot \tanh(\alpha\,x) + \beta ,

with ``α`` **one learnable scalar** per layer (stored with shape ``(1,)`` as in the official ``DynamicTanh``,
init ``alpha_init_value = 0.5``) and ``γ``, ``β`` **per channel** of shape ``(C,)`` (init 1 and 0). Which axis is
the channel follows the official ``channels_last`` flag: ``True`` (default, the transformer case where DyT replaces
``LayerNorm(C)`` on the last dim) uses ``x.shape[-1]``; ``False`` (ConvNeXt-style NCHW) uses axis 1.
The LLaMA variant of the paper drops ``β`` (``beta=None`` here). Train and eval are the same.

Backward (exact). With :math:`t = \tanh(\alpha x)` and :math:`g = \gamma\,dy`:

.. math::

    dx = \alpha\,g\,(1 - t^2),\qquad d\alpha = \textstyle\sum g\,x\,(1 - t^2),\qquad
    d\gamma = \sum dy\,t,\qquad d\beta = \sum dy ,

the sums running over every axis but the channel axis (all axes for ``dα``). ``tanh`` is analytic, so the op is
complex-step safe.

Relation (tested): for small :math:`|\alpha x|`, :math:`\tanh z = z - z^3/3 + O(z^5)`, so
:math:`|y - (\gamma\alpha x + \beta)| \le |\gamma|\,|\alpha x|^3/3`: DyT is nearly linear, the identity map when
``γα = 1`` and ``β = 0``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import as_array, cast_like, check_affine, check_dy, check_nonempty, check_param


class DyTArgs(NamedTuple):
    """The validated arguments of :func:`dyt_forward` (shared by every backend)."""

    x: np.ndarray  # the input, as an array
    alpha: np.ndarray  # (1,), cast to x's dtype
    gamma: np.ndarray | None  # (C,), cast to x's dtype
    beta: np.ndarray | None  # (C,), cast to x's dtype
    channel_axis: int  # the axis gamma and beta live on (non-negative)


def dyt_args(x, alpha, gamma, beta, *, channels_last, allow_complex=True) -> DyTArgs:
    """Validate the arguments of :func:`dyt_forward` (see it for their meaning).

    ``allow_complex=False`` (the compiled backends) refuses complex ``x`` and parameters with a ``TypeError``
    naming the argument.
    """
    x = as_array(x, "x", allow_complex=allow_complex)
    check_nonempty(x, "x")
    if x.ndim < (1 if channels_last else 2):
        raise ValueError(f"x must have at least {1 if channels_last else 2} axes for channels_last="
                         f"{bool(channels_last)}, got shape {x.shape}")
    if alpha is None:
        raise TypeError("alpha must be an array of shape (1,), got None (DyT without alpha is not DyT)")
    alpha = cast_like(x, check_param(alpha, "alpha", (1,), allow_complex=allow_complex))
    axis = x.ndim - 1 if channels_last else 1
    gamma, beta = check_affine(x, gamma, beta, (x.shape[axis],), allow_complex=allow_complex)
    return DyTArgs(x, alpha, gamma, beta, axis)


class DyTCache(NamedTuple):
    x: np.ndarray  # (X) the input
    t: np.ndarray  # (X) tanh(alpha x)
    alpha: np.ndarray  # (1,)
    gamma_b: np.ndarray | None  # gamma broadcast against x
    has_beta: bool
    channel_axis: int  # the axis gamma and beta live on (non-negative)
    backend: str = "numpy"


def dyt_forward(x, alpha, gamma=None, beta=None, *, channels_last=True):
    """Dynamic Tanh ``y = γ·tanh(α·x) + β``.

    Args:
        x: ``(..., C)`` when ``channels_last`` (at least 1 axis), else ``(N, C, *spatial)`` (at least 2 axes).
        alpha: ``(1,)``, the learnable scalar.
        gamma, beta: ``(C,)`` or ``None``.
        channels_last: whether the channel axis is the last one (True) or axis 1.

    Returns:
        ``(y, cache)``: ``y`` like ``x``.

    Examples:
        >>> x = np.linspace(-0.01, 0.01, 5)[None, :]
        >>> y, _ = dyt_forward(x, np.array([0.5]))
        >>> bool(np.allclose(y, 0.5 * x, atol=1e-7))
        True
    """
    x, alpha, gamma, beta, axis = dyt_args(x, alpha, gamma, beta, channels_last=channels_last)
    bshape = tuple(x.shape[axis] if i == axis else 1 for i in range(x.ndim))
    t = np.tanh(alpha[0] * x)
    gamma_b = None if gamma is None else gamma.reshape(bshape)
    y = t if gamma_b is None else t * gamma_b
    y = y if beta is None else y + beta.reshape(bshape)
    return y, DyTCache(x, t, alpha, gamma_b, beta is not None, axis)


def dyt_backward(dy, cache: DyTCache):
    """Exact gradients: ``(dx, dalpha, dgamma, dbeta)``; ``dalpha`` ``(1,)``, ``dgamma``/``dbeta`` ``(C,)`` or None."""
    x, t = cache.x, cache.t
    dy = check_dy(dy, x.shape, x.dtype)
    g = dy if cache.gamma_b is None else dy * cache.gamma_b
    dtanh = 1.0 - t * t
    dx = cache.alpha[0] * g * dtanh
    dalpha = np.atleast_1d((g * x * dtanh).sum())
    others = tuple(i for i in range(x.ndim) if i != cache.channel_axis)
    dgamma = None if cache.gamma_b is None else (dy * t).sum(axis=others)
    dbeta = dy.sum(axis=others) if cache.has_beta else None
    return dx, dalpha, dgamma, dbeta


register("dyt", "numpy", dyt_forward, dyt_backward)
