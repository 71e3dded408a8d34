r"""Gradient-norm clipping over all parameters at once, as ``torch.nn.utils.clip_grad_norm_``.

The total norm is the norm of the concatenation of every gradient,

.. math::

    \|g\|_q = \Big(\sum_{\text{params}} \sum_i |g_i|^q\Big)^{1/q}, \qquad \|g\|_\infty = \max_i |g_i|,

computed in float64 whatever the gradients' dtype. Every gradient is then multiplied by the same factor

.. math::

    c = \min\!\Big(1, \frac{\text{max\_norm}}{\|g\|_q + 10^{-6}}\Big),

so the direction of the whole gradient is kept and only its length is capped (the :math:`10^{-6}` is PyTorch's; it
makes the clipped norm fall just short of ``max_norm``). Clipping per parameter would change the direction. The
gradients are replaced by new arrays in their own dtype (they are not written into).
"""

from __future__ import annotations

import numbers

import numpy as np

from .optimizer import check_model, check_real, iter_selected, make_selector

CLIP_EPS = 1e-6  # PyTorch's constant in the clip coefficient


def _norm_type(norm_type) -> float:
    if isinstance(norm_type, numbers.Real) and not isinstance(norm_type, bool) and norm_type == float("inf"):
        return float("inf")
    value = check_real(norm_type, "norm_type")
    if not value > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {value}")
    return value


def grad_norm(model, norm_type=2.0, *, params=None) -> float:
    """The total ``norm_type``-norm of the selected gradients (all by default), as a Python float.

    Examples:
        >>> import numpy as np
        >>> from normref.nn import Linear
        >>> layer = Linear(2, 1, rng=0)
        >>> layer.grads["weight"], layer.grads["bias"] = np.array([[3.0, 0.0]]), np.array([4.0])
        >>> grad_norm(layer), grad_norm(layer, np.inf)
        (5.0, 4.0)
    """
    model = check_model(model)
    q = _norm_type(norm_type)
    select = make_selector(params, model)
    grads = [np.abs(np.asarray(module.grads[key], dtype=np.float64)).ravel()
             for _, module, key in iter_selected(model, select)]
    if not grads:
        return 0.0
    flat = np.concatenate(grads)
    if flat.size == 0:
        return 0.0
    if np.isinf(q):
        return float(flat.max())
    if q == 2.0:
        return float(np.sqrt(np.dot(flat, flat)))
    return float((flat ** q).sum() ** (1.0 / q))


def clip_grad_norm(model, max_norm, norm_type=2.0, *, params=None, error_if_nonfinite=False) -> float:
    """Scale all selected gradients by ``min(1, max_norm/(total + 1e-6))``; return the total norm *before* clipping.

    Args:
        model: the :class:`~normref.nn.Module` whose ``grads`` are clipped.
        max_norm: the cap, ``> 0``.
        norm_type: ``q`` of the norm (2 by default; ``np.inf`` for the max norm).
        params: which gradients take part (see :mod:`normref.optim.optimizer`); all by default.
        error_if_nonfinite: raise ``FloatingPointError`` if the total norm is NaN or inf (otherwise the gradients
            are scaled by the NaN or zero factor, as in PyTorch).

    Examples:
        >>> import numpy as np
        >>> from normref.nn import Linear
        >>> layer = Linear(2, 1, rng=0)
        >>> layer.grads["weight"], layer.grads["bias"] = np.array([[3.0, 0.0]]), np.array([4.0])
        >>> clip_grad_norm(layer, 1.0), round(grad_norm(layer), 5)
        (5.0, 1.0)
    """
    model = check_model(model)
    max_norm = check_real(max_norm, "max_norm")
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    total = grad_norm(model, norm_type, params=params)
    if not np.isfinite(total) and error_if_nonfinite:
        raise FloatingPointError(f"the total gradient norm is {total}; cannot clip")
    raw = max_norm / (total + CLIP_EPS)        # inf total gives 0, NaN gives NaN (PyTorch's clamp keeps NaN)
    coef = raw if (raw < 1.0 or np.isnan(raw)) else 1.0
    if coef != 1.0:
        for _, module, key in iter_selected(model, make_selector(params, model)):
            g = module.grads[key]
            module.grads[key] = (g * coef).astype(g.dtype, copy=False)
    return total
