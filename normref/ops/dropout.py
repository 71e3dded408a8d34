r"""Dropout (Srivastava et al. 2014), inverted scaling as in PyTorch.

Forward in training, with a keep-mask :math:`M \in \{0, 1\}` of ``x``'s shape drawn i.i.d. with
:math:`P(M = 1) = 1 - p`:

.. math::

    y = \frac{M \odot x}{1 - p}, \qquad E[y] = x ,

and in evaluation :math:`y = x`. For a *fixed* mask the forward is linear (a diagonal map), so

.. math::

    dx = \frac{M \odot dy}{1 - p}  \quad(\text{train}), \qquad dx = dy \quad(\text{eval}).

The op is pure: the mask is data, passed in like BatchNorm's ``stats``. Randomness lives in
:func:`dropout_mask`, a *counter-based* draw: the mask for ``(seed, step)`` comes from
``numpy.random.default_rng([seed, step])``, so the same pair always gives the same mask. The layer
(:class:`normref.nn.Dropout`) keeps ``seed`` and ``step`` in its buffers and advances ``step`` after every training
forward; restoring the buffers (as the gradient checker does before every probe, or loading a checkpoint) replays
the same mask. ``p = 1`` drops everything (``y = 0``, as PyTorch). Shapes: ``x``, ``mask``, ``y``, ``dy``, ``dx`` all
``S``, any shape.

Complex step: linear in ``x`` for a fixed mask, hence analytic.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import as_array, check_dy, check_fraction


class DropoutCache(NamedTuple):
    scale: np.ndarray | None  # (S) M/(1−p) in x's real dtype, or None in eval (identity)
    shape: tuple
    dtype: np.dtype
    backend: str = "numpy"


def dropout_mask(shape, p: float, seed: int, step: int) -> np.ndarray:
    """The keep-mask (``True`` = kept, probability ``1 − p``) for the counter pair ``(seed, step)``; ``shape`` bool."""
    p = check_fraction(p, "p")
    rng = np.random.default_rng([int(seed), int(step)])
    return rng.random(tuple(shape)) >= p


def dropout_forward(x, *, p=0.5, mask=None):
    """Inverted dropout with a given keep-mask, or the identity when ``mask`` is ``None`` (evaluation).

    Args:
        x: any shape ``S``.
        p: drop probability in ``[0, 1]``.
        mask: boolean ``S`` (``True`` keeps the entry), e.g. from :func:`dropout_mask`; ``None`` for eval.

    Returns:
        ``(y, cache)``, ``y`` of shape ``S`` in ``x``'s dtype.

    Examples:
        >>> y, _ = dropout_forward(np.ones(4), p=0.5, mask=np.array([True, False, True, False]))
        >>> y.tolist()
        [2.0, 0.0, 2.0, 0.0]
    """
    x = as_array(x, "x")
    p = check_fraction(p, "p")
    if mask is None:
        return x.copy(), DropoutCache(None, x.shape, x.dtype)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array, got {mask.dtype}")
    if mask.shape != x.shape:
        raise ValueError(f"mask must have the shape of x, {x.shape}, got {mask.shape}")
    real_dtype = np.empty(0, x.dtype).real.dtype
    scale = (mask / (1.0 - p)).astype(real_dtype) if p < 1.0 else np.zeros(x.shape, real_dtype)
    return x * scale, DropoutCache(scale, x.shape, x.dtype)


def dropout_backward(dy, cache: DropoutCache):
    """``dx = M dy / (1 − p)`` (train) or ``dy`` (eval). Returns ``(dx,)``."""
    dy = check_dy(dy, cache.shape, cache.dtype)
    return (dy.copy() if cache.scale is None else dy * cache.scale,)


register("dropout", "numpy", dropout_forward, dropout_backward)
