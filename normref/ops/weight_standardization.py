r"""Weight Standardization (Qiao et al. 2019) and Scaled Weight Standardization (Brock, De & Smith 2021).

Both reparameterize a weight tensor ``w`` of shape ``(O, I_1, ..., I_k)`` (a dense ``(O, I)`` or a conv
``(O, C_in/groups, kh, kw)``) row by row: row ``i`` is the *fan-in* ``w_i = w[i].ravel()`` of ``I = prod(I_1..I_k)``
values, the weights feeding output unit ``i``. The layer that owns the weight (a conv, a dense layer) then uses
``ŵ`` instead of ``w``; its ordinary weight gradient ``dŵ`` is the upstream gradient of this op.

Forward
-------
Per row, with the biased moments of :mod:`normref._moments` (:math:`\mu_i`, :math:`v_i = \operatorname{mean}(w_i -
\mu_i)^2`), an estimator factor :math:`c` (1, or :math:`I/(I-1)` for the unbiased variance) and a fan-in factor
:math:`N` (1 for WS, :math:`I` for scaled WS):

.. math::

    \hat w_i = s_i\,\frac{w_i - \mu_i}{D(v_i)},\qquad s_i = \mathrm{gain}_i\cdot\gamma_{act}
    \quad(\text{1 when there is no gain}),

where the denominator :math:`D` depends on where ``eps`` goes (``eps_mode``):

=========== ================================================ =================================================
eps_mode    :math:`D(v)`                                      :math:`k = d(D^2)/dv`
=========== ================================================ =================================================
"inside"    :math:`\sqrt{N(c\,v + \epsilon)}`                 :math:`N c`
"outside"   :math:`\sqrt N\,(\sqrt{c\,v} + \epsilon)`         :math:`N c\,(\sqrt{cv}+\epsilon)/\sqrt{cv}`
"floor"     :math:`\sqrt{\max(N c\,v,\ \epsilon)}`            :math:`N c` above the floor, 0 on it
=========== ================================================ =================================================

Variants, as read in each reference code base (the repositories named below):

* **WS default here: biased variance, eps inside, eps = 1e-5.** Chosen because it is the one smooth everywhere (the
  std is not differentiable at 0; ``sqrt(v + eps)`` is) and because it is *exactly* LayerNorm over the fan-in
  without affine, i.e. train-mode BatchNorm of ``w`` viewed as ``(1, O, I)`` (timm's ``StdConv2d`` computes it that
  way). The tests check both identities.
* ``WS_VARIANTS["paper"]``: biased std, eps outside, ``(w - μ)/(σ + ε)``. This is the paper's formula as restated by
  Papers-with-Code (the paper body itself was not readable here; medium confidence).
* ``WS_VARIANTS["official"]``: the authors' PyTorch code (``pytorch-classification/models/layers.py``):
  ``torch.std`` is **unbiased**, eps outside, ``(w - μ)/(std_u + 1e-5)``.
* ``WS_VARIANTS["bcn_repo"]``: the BCN repository's ImageNet code: unbiased, eps inside, ``sqrt(var_u + 1e-5)``.
* ``WS_VARIANTS["timm"]``: timm ``StdConv2d``: biased, eps inside, eps = 1e-6.

Scaled WS (NF-ResNets / NFNets): :math:`N = I`, so that :math:`\|\hat w_i\| = s_i` and a unit-variance input gives
unit-variance pre-activations. A learnable per-output ``gain`` (init 1) multiplies the row.

* **Default here: DeepMind's** ``nfnets/base.py``: ``eps_mode="floor"``, ``eps = 1e-4`` as a floor on ``N·v``
  (not added to it), biased variance.
* timm's ``ScaledStdConv2d``: ``eps_mode="inside"``, ``eps = 1e-6`` added to ``v`` (so ``N·eps`` is added to ``N·v``).
* ``gamma`` is the nonlinearity gain :math:`\gamma_{act}`. DeepMind multiplies the *activation* by it; timm folds
  it into the next conv's weight (``gamma=`` here). Because the conv is linear both give the same network when one
  conv consumes the activation. The values DeepMind uses are in :data:`NF_GAMMA`. They are empirical (measured on
  random Gaussian inputs), e.g. ReLU 1.7139588594436646, while the analytic value
  :math:`(\tfrac12(1 - 1/\pi))^{-1/2} = 1.7128585504` differs in the 4th digit.

The floor and the eps-outside std branch on the *real part* of ``N·c·v``, so complex-step probes stay on the same
branch: the op is complex-step safe away from the floor's kink.

Backward
--------
Let :math:`a = w_i - \mu_i`, :math:`\hat u = a/D` (the standardized row before the scale) and
:math:`g = s_i\,d\hat w`. Nodes, in reverse: :math:`\hat u = a/D` gives :math:`da = g/D` and
:math:`dD = -\sum g\,a/D^2`; :math:`D = D(v)` gives :math:`dv = D'(v)\,dD`; :math:`v = \operatorname{mean}a^2` gives
:math:`da \mathrel{+}= 2a\,dv/I`; and :math:`a = w - \mu` gives :math:`dw = da - \operatorname{mean}(da)`
(:math:`\sum a = 0`, so the :math:`v` path contributes nothing to the mean). Collecting, with
:math:`a = D\hat u`:

.. math::

    dw = \frac{1}{D}\Bigl(g - \operatorname{mean}g - k\,\operatorname{mean}(g\,\hat u)\,\hat u\Bigr),\qquad
    k = 2DD'(v) = \frac{d(D^2)}{dv},\qquad d\,\mathrm{gain}_i = \gamma_{act}\sum_j d\hat w_{ij}\,\hat u_{ij}.

For the default (:math:`k = 1`) this is the normalize primitive's fused formula of :mod:`normref.ops._normalize`
(``c2 = mean g``, ``c1 = mean(g û)``); the variants only change the scalar ``k``, which is why this module carries
its own backward rather than calling the primitive (the primitive has no ``k``). The test suite checks that the
default equals ``layer_norm_backward`` on the ``(O, I)`` view.

**Projection identity** (the WS paper's "gradient is projected" argument). With :math:`k = 1`, ``eps = 0`` and
:math:`s = 1`, :math:`\hat u` has mean 0 and :math:`\|\hat u\|^2 = I`, so :math:`dw = \tfrac1\sigma P\,d\hat w` with
:math:`P` the orthogonal projector that removes the components along :math:`\mathbf 1` and along :math:`\hat u`:

.. math::

    \|dw\|^2 = \frac{1}{\sigma^2}\Bigl(\|d\hat w\|^2 - \tfrac1I\langle \mathbf 1, d\hat w\rangle^2
    - \tfrac1I\langle \hat u, d\hat w\rangle^2\Bigr),\qquad \langle dw,\mathbf 1\rangle = \langle dw,\hat u\rangle = 0.

Given statistics (``stats=(mean, var)``, each ``(O,)``; ``var`` is the biased variance, to which ``c`` and ``N``
still apply) freeze :math:`\mu` and :math:`v`: then :math:`dw = g/D`.

Papers: Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization", arXiv:1903.10520. Brock, De & Smith, "Characterizing signal propagation to close the performance
gap in unnormalized ResNets", ICLR 2021, arXiv:2101.08692 (and NFNets, arXiv:2102.06171).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._moments import mean_var
from .._registry import register
from .._validate import (as_array, cast_like, check_dy, check_ndim, check_nonempty, check_param,
                         check_positive_float, check_stats)

EPS_MODES = ("inside", "outside", "floor")

# Named WS variants (keyword arguments for weight_standardization_forward / the layer). See the module docstring.
WS_VARIANTS = {
    "default": dict(unbiased=False, eps_mode="inside", eps=1e-5),
    "paper": dict(unbiased=False, eps_mode="outside", eps=1e-5),
    "official": dict(unbiased=True, eps_mode="outside", eps=1e-5),
    "bcn_repo": dict(unbiased=True, eps_mode="inside", eps=1e-5),
    "timm": dict(unbiased=False, eps_mode="inside", eps=1e-6),
}

# Nonlinearity gains gamma_act of DeepMind's nfnets/base.py (empirical: Var(act(z)) ** -0.5 for z ~ N(0, 1)).
NF_GAMMA = {
    "identity": 1.0,
    "relu": 1.7139588594436646,
    "gelu": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "tanh": 1.5939117670059204,
    "elu": 1.2716004848480225,
    "leaky_relu": 1.70590341091156,
    "sigmoid": 4.803835391998291,
    "softplus": 1.9203323125839233,
}


class WSCache(NamedTuple):
    """What the backward needs. ``O`` output units, ``I`` fan-in."""

    uhat: np.ndarray  # (O, I) standardized rows before the scale: (w - mean) / D
    rden: np.ndarray  # (O, 1) 1 / D
    k: np.ndarray  # (O, 1) d(D^2)/dv; 0 where the statistics are frozen or the floor is active
    scale: np.ndarray | None  # (O, 1) gain * gamma_act, or None when it is 1
    has_gain: bool  # whether a gain was given (so dgain is an array)
    gamma_act: float  # the fixed nonlinearity gain
    batch_stats: bool  # statistics computed from w (gradient flows through them)
    w_shape: tuple[int, ...]  # the caller's weight shape
    backend: str = "numpy"


def _check_eps_mode(eps_mode) -> str:
    if eps_mode not in EPS_MODES:
        raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
    return eps_mode


def _standardize(w, gain, *, eps, unbiased, eps_mode, fan_in_scale, gamma_act, stats):
    """The shared forward of WS and scaled WS (arguments as in the public functions)."""
    w = as_array(w, "w")
    check_ndim(w, "w", (2, 3, 4, 5), "(O, I) or (O, C_in/groups, *kernel)")
    check_nonempty(w, "w")
    out, fan_in = w.shape[0], int(np.prod(w.shape[1:]))
    if fan_in < 2:
        raise ValueError(f"w must have a fan-in of at least 2 values per output unit (standardizing one value "
                         f"gives 0), got shape {w.shape}")
    gain = cast_like(w, check_param(gain, "gain", (out,)))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    eps_mode = _check_eps_mode(eps_mode)
    if isinstance(gamma_act, bool) or not isinstance(gamma_act, (int, float)) or not np.isfinite(gamma_act):
        raise TypeError(f"gamma must be a finite real number, got {gamma_act!r}")
    rows = w.reshape(out, fan_in)
    c = fan_in / (fan_in - 1) if unbiased else 1.0
    n = float(fan_in) if fan_in_scale else 1.0
    if stats is None:
        mean, var = mean_var(rows, (1,))
    else:
        mean, var = check_stats(stats, (out,), w)
        mean, var = mean.reshape(out, 1), var.reshape(out, 1)
    centered = rows - mean
    cv = c * var
    if eps_mode == "inside":
        den = np.sqrt(n * (cv + eps))
        k = np.full_like(den, n * c)
    elif eps_mode == "outside":
        std = np.sqrt(cv)
        den = math.sqrt(n) * (std + eps)
        # k = N c (std + eps)/std; its term k·mean(g û)·û vanishes as std -> 0 (û ~ std/eps), so 0 is the limit.
        positive = std.real > 0
        k = np.where(positive, n * c * (std + eps) / np.where(positive, std, 1.0), 0.0)
    else:  # "floor": DeepMind's rsqrt(max(N·var, eps)), branching on the real part (complex-step safe)
        above = (n * cv).real > eps
        den = np.sqrt(np.where(above, n * cv, eps))
        k = np.where(above, n * c, 0.0)
    den = den.astype(rows.dtype, copy=False)  # float32 weights stay float32
    k = np.asarray(k, dtype=den.dtype)  # float32 stays float32 (the floor branch builds k from Python floats)
    rden = 1.0 / den
    uhat = centered * rden
    scale = None
    if gain is not None or gamma_act != 1.0:
        scale = (np.ones((out, 1), rows.dtype) if gain is None else gain.reshape(out, 1)) * gamma_act
    y = uhat if scale is None else uhat * scale
    if stats is not None:
        k = np.zeros_like(k)
    cache = WSCache(uhat=uhat, rden=rden, k=k, scale=scale,
                    has_gain=gain is not None, gamma_act=float(gamma_act), batch_stats=stats is None,
                    w_shape=tuple(w.shape))
    return y.reshape(w.shape), cache


def weight_standardization_forward(w, gain=None, *, eps=1e-5, unbiased=False, eps_mode="inside", stats=None):
    """Weight Standardization: standardize each output unit's fan-in.

    Args:
        w: ``(O, I)`` or ``(O, C_in/groups, *kernel)``, float32/float64 (complex for the complex step).
        gain: ``(O,)`` optional per-output scale (plain WS has none: ``None``).
        eps: see ``eps_mode``.
        unbiased: use the unbiased variance ``v·I/(I-1)`` (the official PyTorch code's ``torch.std``).
        eps_mode: ``"inside"`` (``sqrt(var + eps)``, default), ``"outside"`` (``std + eps``) or ``"floor"``
            (``sqrt(max(var, eps))``).
        stats: ``None`` (statistics of ``w``) or ``(mean, var)``, each ``(O,)``, to freeze them.

    Returns:
        ``(w_hat, cache)``: ``w_hat`` of ``w``'s shape and dtype.

    Examples:
        >>> w = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 3, 3, 3))
        >>> w_hat, _ = weight_standardization_forward(w)
        >>> rows = w_hat.reshape(4, -1)
        >>> bool(np.allclose(rows.mean(axis=1), 0) and np.allclose(rows.var(axis=1), 1, atol=1e-4))
        True
    """
    return _standardize(w, gain, eps=eps, unbiased=unbiased, eps_mode=eps_mode, fan_in_scale=False,
                        gamma_act=1.0, stats=stats)


def scaled_weight_standardization_forward(w, gain=None, *, eps=None, eps_mode="floor", gamma=1.0, unbiased=False,
                                          stats=None):
    """Scaled Weight Standardization (NF-ResNets): ``gain·gamma·(w - mean)/sqrt(N·var)`` per output unit.

    Args:
        w: ``(O, I)`` or ``(O, C_in/groups, *kernel)``.
        gain: ``(O,)`` learnable per-output gain, or ``None``.
        eps: ``None`` = 1e-4 for ``"floor"`` (DeepMind), 1e-6 otherwise (timm).
        eps_mode: ``"floor"`` (``max(N·var, eps)``, DeepMind), ``"inside"`` (``N·(var + eps)``, timm) or
            ``"outside"`` (``sqrt(N)·(std + eps)``, older timm).
        gamma: fixed nonlinearity gain folded into the weight (see :data:`NF_GAMMA`; DeepMind applies it to the
            activation instead, which is equivalent).
        unbiased, stats: as in :func:`weight_standardization_forward`.

    Returns:
        ``(w_hat, cache)``; each row of ``w_hat`` has norm ``|gain·gamma|`` (up to eps).

    Examples:
        >>> w = np.random.default_rng(0).normal(size=(8, 16))
        >>> w_hat, _ = scaled_weight_standardization_forward(w)
        >>> bool(np.allclose(np.linalg.norm(w_hat, axis=1), 1.0))
        True
    """
    eps = (1e-4 if _check_eps_mode(eps_mode) == "floor" else 1e-6) if eps is None else eps
    return _standardize(w, gain, eps=eps, unbiased=unbiased, eps_mode=eps_mode, fan_in_scale=True,
                        gamma_act=gamma, stats=stats)


def weight_standardization_backward(dy, cache: WSCache):
    """Exact gradients of either forward: ``(dw, dgain)``; ``dgain`` is ``None`` without a gain.

    Args:
        dy: ``dŵ``, of the weight's shape (the owning layer's ordinary weight gradient).
        cache: from the forward.

    Returns:
        ``dw`` of ``w``'s shape; ``dgain`` of shape ``(O,)`` or ``None``.
    """
    uhat, rden = cache.uhat, cache.rden
    dy = check_dy(dy, cache.w_shape, uhat.dtype).reshape(uhat.shape)
    g = dy if cache.scale is None else dy * cache.scale
    if cache.batch_stats:
        c2 = g.mean(axis=1, keepdims=True)
        c1 = (g * uhat).mean(axis=1, keepdims=True)
        dw = rden * (g - c2 - cache.k * c1 * uhat)
    else:
        dw = rden * g
    dgain = (dy * uhat).sum(axis=1) * cache.gamma_act if cache.has_gain else None
    return dw.reshape(cache.w_shape), dgain


scaled_weight_standardization_backward = weight_standardization_backward

register("weight_standardization", "numpy", weight_standardization_forward, weight_standardization_backward)
register("scaled_weight_standardization", "numpy", scaled_weight_standardization_forward,
         scaled_weight_standardization_backward)
