r"""Linear (fully connected) map, PyTorch's ``F.linear``: :math:`y = x W^\top + b`.

Shapes: ``x`` is ``(*, I)`` with any number of leading axes ``*`` (flattened to ``M`` rows below), ``W`` is ``(O, I)``
(PyTorch's ``weight`` layout: one row per output feature), ``b`` is ``(O,)`` or ``None``; ``y`` is ``(*, O)``.

Forward
-------
.. math::

    y_{m o} = \sum_i x_{m i} W_{o i} + b_o .

Backward
--------
``y`` is linear in each of ``x``, ``W``, ``b``, so each vector-Jacobian product is the map's transpose applied to
``dy`` (``(M, O)``):

.. math::

    dx_{m i} = \sum_o dy_{m o} W_{o i} \;\;(dx = dy\,W,\ (M, I)),\qquad
    dW_{o i} = \sum_m dy_{m o} x_{m i} \;\;(dW = dy^\top x,\ (O, I)),\qquad
    db_o = \sum_m dy_{m o} \;\;((O,)).

The weight gradient sums over *every* leading axis, since the same ``W`` is applied to every row.

Complex step: the forward is a polynomial without conjugation, so it is analytic in ``x``, ``W`` and ``b``.
Deviations from PyTorch: none.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import as_array, cast_like, check_dy, check_nonempty, check_param


class LinearCache(NamedTuple):
    x: np.ndarray  # (*, I) the input
    weight: np.ndarray  # (O, I) the weight as used (cast to x's dtype)
    has_bias: bool
    y_shape: tuple  # (*, O)
    dtype: np.dtype  # the output's dtype
    backend: str = "numpy"


def linear_forward(x, weight, bias=None):
    """``y = x @ weight.T + bias``.

    Args:
        x: ``(*, I)``, at least 1-D, float or complex.
        weight: ``(O, I)``.
        bias: ``(O,)`` or ``None``.

    Returns:
        ``(y, cache)`` with ``y`` of shape ``(*, O)`` in ``x``'s dtype (complex if a parameter is complex).

    Examples:
        >>> y, _ = linear_forward(np.ones((2, 3)), np.arange(6.0).reshape(2, 3), np.array([0.5, -0.5]))
        >>> y.tolist()
        [[3.5, 11.5], [3.5, 11.5]]
    """
    x = as_array(x, "x")
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension (*, in_features), got shape {x.shape}")
    check_nonempty(x, "x")
    weight = as_array(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight must have 2 dimensions (out_features, in_features), got shape {weight.shape}")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]} features (last axis, shape {x.shape}) but weight expects "
                         f"in_features={weight.shape[1]} (weight shape {weight.shape})")
    weight = cast_like(x, weight)
    bias = cast_like(x, check_param(bias, "bias", (weight.shape[0],)))
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y, LinearCache(x, weight, bias is not None, y.shape, y.dtype)


def linear_backward(dy, cache: LinearCache):
    """Gradients of :func:`linear_forward`.

    Returns:
        ``(dx, dweight, dbias)``: ``(*, I)``, ``(O, I)``, ``(O,)`` (``None`` without bias).
    """
    dy = check_dy(dy, cache.y_shape, cache.dtype)
    x2 = cache.x.reshape(-1, cache.x.shape[-1])  # (M, I)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (M, O)
    dx = dy @ cache.weight  # (*, I)
    dweight = dy2.T @ x2  # (O, I)
    dbias = dy2.sum(axis=0) if cache.has_bias else None  # (O,)
    return dx, dweight, dbias


register("linear", "numpy", linear_forward, linear_backward)
