r"""Weight Normalization (Salimans & Kingma, NeurIPS 2016, arXiv:1602.07868).

A reparameterization of a weight: direction ``v`` and length ``g`` are learned separately. For ``dim = 0`` (the
default, PyTorch's ``weight_norm``) each output unit's row ``v_i = v[i].ravel()`` is normalized over all the other
axes:

.. math::

    n_i = \|v_i\| = \sqrt{\textstyle\sum_j v_{ij}\,v_{ij}},\qquad \hat v_i = v_i / n_i,\qquad w_i = g_i\,\hat v_i .

``dim`` may be any axis (the norm runs over all the others) or ``None`` (one norm over the whole tensor, ``g`` a
scalar of shape ``()``). ``g=None`` gives the bare direction ``v/‖v‖``. The norm is written ``sqrt(sum(v*v))``,
never ``abs``, so the op is the analytic continuation of the real one and complex-step safe. There is no ``eps``
(PyTorch has none either); a zero row is an error.

Backward. Nodes: ``w = g v̂`` gives ``dg_i = Σ_j dw_ij v̂_ij`` and ``dv̂ = g dw``; ``v̂ = v/n`` gives
``dv = dv̂/n - v Σ_j(dv̂ v)/n³``. Collecting:

.. math::

    dv_i = \frac{g_i}{n_i}\bigl(dw_i - \hat v_i\,\langle \hat v_i, dw_i\rangle\bigr),\qquad
    dg_i = \langle \hat v_i, dw_i\rangle .

The gradient for ``v`` is ``dw`` with its component along ``v`` removed (scaled by ``g/‖v‖``): ``⟨dv_i, v_i⟩ = 0``,
so plain gradient descent only grows ``‖v‖`` (the paper's section 2.1). PyTorch initializes ``g = ‖v‖`` so that
``w = v`` at the start; the layer's :meth:`~normref.nn.WeightNorm.init_from` does the same.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._moments import accumulation_dtype
from .._registry import register
from .._validate import as_array, cast_like, check_dy, check_nonempty, check_param


class WeightNormCache(NamedTuple):
    vhat: np.ndarray  # (R, J) the unit rows, R = v.shape[dim] (1 for dim=None), J the rest
    rnorm: np.ndarray  # (R, 1) 1/‖v_i‖
    g: np.ndarray | None  # (R, 1) or None
    dim: int | None
    v_shape: tuple[int, ...]
    backend: str = "numpy"


def _rows(v, dim):
    """Move ``dim`` to the front and flatten the rest: ``(R, J)``."""
    if dim is None:
        return v.reshape(1, -1)
    return np.moveaxis(v, dim, 0).reshape(v.shape[dim], -1)


def weight_norm_forward(v, g=None, *, dim=0):
    """Weight normalization ``w = g·v/‖v‖`` with the norm over every axis except ``dim``.

    Args:
        v: the direction, any shape with at least one axis, float32/float64 (complex for the complex step).
        g: ``(v.shape[dim],)``, or ``()`` when ``dim is None``; ``None`` for the unit direction.
        dim: the axis kept (0, the output axis, by default; negative counts from the end), or ``None``.

    Returns:
        ``(w, cache)``: ``w`` of ``v``'s shape and dtype.

    Examples:
        >>> v = np.random.default_rng(0).normal(size=(3, 2, 2))
        >>> w, _ = weight_norm_forward(v, np.array([1.0, 2.0, 3.0]))
        >>> np.round(np.sqrt((w ** 2).sum(axis=(1, 2))), 12)
        array([1., 2., 3.])
    """
    v = as_array(v, "v")
    check_nonempty(v, "v")
    if v.ndim == 0:
        raise ValueError("v must have at least one axis, got a 0-d array")
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim must be an int or None, got {type(dim).__name__}")
        if not -v.ndim <= dim < v.ndim:
            raise ValueError(f"dim must be in [{-v.ndim}, {v.ndim}) for v of shape {v.shape}, got {dim}")
        dim = int(dim) % v.ndim
    g_shape = () if dim is None else (v.shape[dim],)
    g = cast_like(v, check_param(g, "g", g_shape))
    rows = _rows(v, dim)
    sq = (rows * rows).sum(axis=1, keepdims=True, dtype=accumulation_dtype(v.dtype)).astype(v.dtype, copy=False)
    if np.any(sq.real == 0):
        raise ValueError("v has a row of zeros: its direction v/‖v‖ is undefined (weight_norm has no eps)")
    rnorm = 1.0 / np.sqrt(sq)
    vhat = rows * rnorm
    g_b = None if g is None else g.reshape(-1, 1)
    w_rows = vhat if g_b is None else vhat * g_b
    if dim is None:
        w = w_rows.reshape(v.shape)
    else:
        moved = np.moveaxis(v, dim, 0).shape
        w = np.moveaxis(w_rows.reshape(moved), 0, dim)
    return w, WeightNormCache(vhat, rnorm, g_b, dim, tuple(v.shape))


def weight_norm_backward(dw, cache: WeightNormCache):
    """Exact gradients: ``(dv, dg)``; ``dv`` like ``v``, ``dg`` like ``g`` (``None`` without ``g``)."""
    vhat = cache.vhat
    dw = check_dy(dw, cache.v_shape, vhat.dtype)
    rows = _rows(dw, cache.dim)
    proj = (rows * vhat).sum(axis=1, keepdims=True)  # <v̂_i, dw_i>
    scale = cache.rnorm if cache.g is None else cache.g * cache.rnorm
    dv_rows = scale * (rows - vhat * proj)
    if cache.dim is None:
        dv = dv_rows.reshape(cache.v_shape)
    else:
        moved = (cache.v_shape[cache.dim],) + tuple(s for i, s in enumerate(cache.v_shape) if i != cache.dim)
        dv = np.moveaxis(dv_rows.reshape(moved), 0, cache.dim)
    dg = None
    if cache.g is not None:
        dg = proj.reshape(()) if cache.dim is None else proj.reshape(-1)
    return dv, dg


register("weight_norm", "numpy", weight_norm_forward, weight_norm_backward)
