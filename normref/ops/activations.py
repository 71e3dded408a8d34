r"""Elementwise activations (ReLU, GELU exact and tanh form, SiLU, Tanh, Sigmoid) and the row-wise softmax.

Every activation maps ``x`` of any shape to ``y = f(x)`` of the same shape, so its vector-Jacobian product is the
elementwise product :math:`dx = f'(x)\,dy`. The derivatives, with :math:`\sigma(x) = 1/(1+e^{-x})`,
:math:`\Phi` the standard normal CDF and :math:`\varphi` its density:

==========  ==========================================  ===========================================================
op          forward ``f(x)``                            derivative ``f'(x)``
==========  ==========================================  ===========================================================
relu        ``x·[x > 0]``                               ``[x > 0]`` (0 at the kink, as PyTorch)
gelu        ``x·Φ(x) = ½ x erfc(−x/√2)``                ``Φ(x) + x φ(x)``
gelu tanh   ``½ x (1 + tanh u)``, ``u = √(2/π)(x + a x³)``, ``a = 0.044715``
                                                        ``½(1 + t) + ½ x (1 − t²) √(2/π)(1 + 3a x²)``, ``t = tanh u``
silu        ``x σ(x)``                                  ``σ(x) (1 + x σ(−x))``
tanh        ``tanh x``                                  ``1 − tanh² x``
sigmoid     ``σ(x)``                                    ``σ(x) σ(−x)``
==========  ==========================================  ===========================================================

Numerical choices. ``Φ(x)`` is computed as ``½ erfc(−x/√2)`` rather than PyTorch's ``½(1 + erf(x/√2))``: the two are the
same function, but the second rounds to 0 for ``x < −8.3`` while the first keeps full relative precision (it matters
only for the far tail, where GELU is ~0 anyway). ``σ`` is evaluated as ``1/(1+e^{−x})`` where ``Re x ≥ 0`` and
``e^{x}/(1+e^{x})`` elsewhere, so ``exp`` never overflows, and ``σ'`` as ``σ(x)σ(−x)`` instead of ``σ(1−σ)``, which
cancels for large ``x``. ``scipy.special.erfc`` accepts complex arguments, so every analytic activation here is
complex-step safe; ReLU and the sigmoid's branch test only the real part, so they are too (away from ``x = 0`` for
ReLU).

Softmax
-------
:func:`softmax` over an axis subtracts the row maximum of the *real part* (exact, since softmax is shift invariant,
and analytic because the shift is a constant under the complex step), with an optional boolean ``where`` mask:
masked entries get probability 0. Its VJP, used by attention and cross-entropy, is
:math:`dz = p \odot (dp - \langle dp, p\rangle)` (:func:`softmax_backward`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special

from .._registry import register
from .._validate import as_array, check_dy

GELU_TANH_COEF = 0.044715
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_APPROXIMATIONS = ("none", "tanh")


class ActivationCache(NamedTuple):
    x: np.ndarray  # the input, any shape S
    y: np.ndarray  # the output, S
    backend: str = "numpy"


def sigmoid(x):
    """The logistic function without overflow (branch on ``Re x``; complex-step safe)."""
    x = np.asarray(x)
    out = np.empty_like(x)
    pos = x.real >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _check(x):
    return as_array(x, "x")


def _backward(dy, cache, deriv):
    dy = check_dy(dy, cache.y.shape, cache.y.dtype)
    return (deriv * dy,)


def relu_forward(x):
    """``max(x, 0)`` elementwise, comparing the real part. Returns ``(y, cache)``, ``y`` shaped like ``x``."""
    x = _check(x)
    y = np.where(x.real > 0, x, np.zeros((), x.dtype))
    return y, ActivationCache(x, y)


def relu_backward(dy, cache):
    """``dx = [x > 0] dy``. Returns ``(dx,)``."""
    return _backward(dy, cache, (cache.x.real > 0).astype(cache.y.real.dtype))


class GeluCache(NamedTuple):
    x: np.ndarray  # S
    y: np.ndarray  # S
    approximate: str
    aux: np.ndarray  # S: Φ(x) (exact) or tanh u (tanh form)
    backend: str = "numpy"


def gelu_forward(x, *, approximate="none"):
    """GELU, ``x Φ(x)`` (``approximate="none"``) or its tanh approximation (``"tanh"``), as PyTorch's ``F.gelu``.

    Examples:
        >>> y, _ = gelu_forward(np.array([-1.0, 0.0, 1.0]))
        >>> np.round(y, 6).tolist()
        [-0.158655, 0.0, 0.841345]
    """
    x = _check(x)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
    if approximate == "none":
        cdf = 0.5 * special.erfc(-x / math.sqrt(2.0))
        y = x * cdf
        aux = cdf
    else:
        t = np.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_COEF * x * x * x))
        y = 0.5 * x * (1.0 + t)
        aux = t
    return y.astype(x.dtype, copy=False), GeluCache(x, y, approximate, aux.astype(x.dtype, copy=False))


def gelu_backward(dy, cache: GeluCache):
    """``dx = f'(x) dy`` with the derivative of the form used in the forward. Returns ``(dx,)``."""
    x = cache.x
    if cache.approximate == "none":
        deriv = cache.aux + x * np.exp(-0.5 * x * x) * INV_SQRT_2PI
    else:
        t = cache.aux
        deriv = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEF * x * x)
    return _backward(dy, cache, deriv)


def silu_forward(x):
    """``x σ(x)`` (a.k.a. swish). Returns ``(y, cache)``; the cache keeps ``σ(x)`` in ``y``'s place (see backward)."""
    x = _check(x)
    s = sigmoid(x)
    return x * s, ActivationCache(x, s)


def silu_backward(dy, cache):
    """``dx = σ(x)(1 + x σ(−x)) dy``. Returns ``(dx,)``."""
    s = cache.y
    return _backward(dy, cache, s * (1.0 + cache.x * sigmoid(-cache.x)))


def tanh_forward(x):
    """``tanh x``. Returns ``(y, cache)``."""
    x = _check(x)
    y = np.tanh(x)
    return y, ActivationCache(x, y)


def tanh_backward(dy, cache):
    """``dx = (1 − y²) dy``. Returns ``(dx,)``."""
    return _backward(dy, cache, 1.0 - cache.y * cache.y)


def sigmoid_forward(x):
    """``σ(x) = 1/(1 + e^{−x})`` without overflow. Returns ``(y, cache)``."""
    x = _check(x)
    y = sigmoid(x)
    return y, ActivationCache(x, y)


def sigmoid_backward(dy, cache):
    """``dx = σ(x) σ(−x) dy``. Returns ``(dx,)``."""
    return _backward(dy, cache, cache.y * sigmoid(-cache.x))


def softmax(z, axis: int = -1, where=None):
    """Softmax of ``z`` along ``axis``; entries where the boolean ``where`` is False get probability 0.

    The row maximum of ``Re z`` (over the allowed entries) is subtracted first, so ``exp`` never overflows. Every row
    must allow at least one entry.
    """
    z = np.asarray(z)
    real = z.real if where is None else np.where(where, z.real, -np.inf)
    shift = real.max(axis=axis, keepdims=True)
    if not np.all(np.isfinite(shift)):
        raise ValueError("softmax: every row needs at least one allowed, finite entry")
    shifted = z - shift
    e = np.exp(shifted) if where is None else np.where(where, np.exp(np.where(where, shifted, 0)), 0)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z, axis: int = -1):
    """``z − logsumexp(z)`` along ``axis``, with the real row maximum subtracted before ``exp``."""
    z = np.asarray(z)
    shifted = z - z.real.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax_backward(dp, p, axis: int = -1):
    """VJP of softmax: ``dz = p ⊙ (dp − Σ_axis dp ⊙ p)``; masked entries (``p = 0``) get 0."""
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))


register("relu", "numpy", relu_forward, relu_backward)
register("gelu", "numpy", gelu_forward, gelu_backward)
register("silu", "numpy", silu_forward, silu_backward)
register("tanh", "numpy", tanh_forward, tanh_backward)
register("sigmoid", "numpy", sigmoid_forward, sigmoid_backward)
