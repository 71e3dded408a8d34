r"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers",
NeurIPS 2020, arXiv:2004.02967).

Input ``x`` of shape ``(N, C, *spatial)``; ``v``, ``γ``, ``β`` per channel ``(C,)``. Both layers fuse the
normalization with the activation. Every variance is **biased** and ``eps`` is **inside** the square root, as in the
TF reference (``tensorflow/tpu``, ``models/official/resnet/resnet_model.py``). Variances come from
:func:`normref._moments.mean_var`.

EvoNorm-B0 (batch-dependent)
----------------------------
.. math::

    L_c = \sqrt{\operatorname{var}_{N,spatial}(x) + \epsilon},\quad
    s_{nc} = \sqrt{\operatorname{var}_{spatial}(x) + \epsilon},\quad R = v\,x + s,\quad
    d = \max(L, R),\quad y = \gamma\,\frac{x}{d} + \beta .

``L`` is the batch std per channel, ``R`` an elementwise term (``v·x`` plus the instance std). In eval ``L`` is
``sqrt(running_var + eps)``, a constant: pass ``stats=(None, running_var)``. The running variance is updated by the
pure :func:`evonorm_b0_update_running_var`, with ``momentum`` in PyTorch's sense (weight of the **new** batch,
0.1). TF writes the same EMA as ``decay = 0.9``, the weight of the *old* value (``mv -= (1 - 0.9)(mv - var)``);
``momentum = 1 - decay``. TF stores the biased variance; timm stores the unbiased one (``n/(n-1)``, ``n =
N·prod(spatial)``). The layer follows the library convention, unbiased (``unbiased=False`` gives TF's). The
``max`` branches on real parts, so complex-step probes keep the real branch. Its derivative is undefined on ties
``R = L``; TF sends the whole gradient to the first argument there, recent PyTorch splits it in half. Here a tie goes
to ``L`` (``R > L`` selects ``R``). Tests avoid ties.

EvoNorm-S0 (sample-dependent)
-----------------------------
.. math::

    \sigma = \operatorname{sigmoid}(v\,x),\quad u = x\,\sigma\ (\text{= swish when } v = 1),\quad
    s_{nk} = \sqrt{\operatorname{var}_{(c \in k), spatial}(x) + \epsilon},\quad y = \gamma\,\frac{u}{s} + \beta ,

with ``s`` the std of group ``k`` of sample ``n`` (``G`` contiguous groups of ``C/G`` channels). No running
statistics. Group count: the TF reference starts at ``num_groups = 32`` and decrements it until it divides ``C``;
timm asserts divisibility. **Decision:** the op takes an explicit ``num_groups`` that must divide ``C`` (a
``ValueError`` otherwise, like ``GroupNorm``), and :func:`default_groups` applies TF's rule; the layer uses it when
``num_groups=None`` (its default), so an explicitly requested ``G`` is never silently changed.

Relation (tested): with ``v = 0``, ``σ = 1/2`` and S0 is ``(γ/2)·x/s + β``: GroupNorm *without centering*, i.e.
``group_norm_forward(x, γ/2, β, stats=(0, var_group(x)))``; on input whose groups have zero mean it equals ordinary
GroupNorm with ``γ/2``.

``v = None`` means "no nonlinearity" (TF ``nonlinearity=False``, timm ``apply_act=False``): **no normalization at
all**, ``y = γx + β``, for both B0 and S0.

Defaults: ``eps = 1e-5`` (TF); timm's ``EvoNorm2dB0`` uses 1e-3. ``v`` and ``γ`` init 1, ``β`` init 0.

Backward (exact; ``g = γ ⊙ dy``)
--------------------------------
B0. From ``y = γx/d``: ``dx = g/d`` directly, and ``dd = a = -g x/d²``. The ``max`` routes ``a`` to the active
branch, ``m_R = [R > L]``, ``m_L = 1 - m_R``. Through ``R = v x + s``: ``dx += m_R v a``,
``dv_c = Σ_{n,spatial} m_R a x``, ``ds_{nc} = Σ_{spatial} m_R a``; through the instance std,
``∂s/∂x = (x - μ_{nc})/(M_s s)``; through ``L`` (training only), ``dL_c = Σ_{n,spatial} m_L a`` and
``∂L/∂x = (x - μ_c)/(M_B L)``. Altogether

.. math::

    dx = \frac{g}{d} + m_R\,v\,a + \frac{x-\mu_{nc}}{M_s\,s}\sum_{spatial} m_R\,a
         + \frac{x-\mu_c}{M_B\,L}\sum_{N,spatial} m_L\,a ,

with ``M_s = prod(spatial)``, ``M_B = N·prod(spatial)``; ``dγ = Σ dy·x/d``, ``dβ = Σ dy``.

S0. From ``y = γu/s``: ``du = g/s`` and ``ds = -Σ_{group} g u/s²``; ``∂u/∂x = σ + v x σ(1-σ)``,
``∂u/∂v = x² σ(1-σ)``, ``∂s/∂x = (x - μ_{nk})/(M_g s)`` with ``M_g = (C/G)·prod(spatial)``:

.. math::

    dx = \frac{g}{s}\bigl(\sigma + v x\,\sigma(1-\sigma)\bigr)
         - \frac{x - \mu_{nk}}{M_g\,s}\sum_{group}\frac{g\,u}{s^2},\qquad
    dv_c = \sum_{N,spatial}\frac{g}{s}\,x^2\sigma(1-\sigma),\qquad d\gamma = \sum dy\,\frac{u}{s}.

Given statistics freeze ``L`` (B0: ``stats=(None, var)`` of shape ``(C,)``) or ``s`` (S0: ``stats=(None, var)`` of
shape ``(N, G)``), dropping the corresponding term.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._moments import mean_var
from .._registry import register
from .._validate import (as_array, cast_like, check_affine, check_dy, check_ndim, check_nonempty, check_param,
                         check_positive_float, check_positive_int, check_stats)
from .group_norm import check_groups
from .running_stats import RunningStats, update_running_stats


class EvoNormCache(NamedTuple):
    """Shared by B0 and S0; fields a variant does not use are ``None``. ``X`` is the input's shape."""

    kind: str  # "b0", "s0" or "affine" (v = None: y = gamma x + beta)
    x: np.ndarray  # (X) the input (S0: viewed as (N, G, C/G, *spatial))
    d: np.ndarray | None  # B0: (X) the denominator max(L, R); S0: (N, G, 1, ...) the group std s
    mask_r: np.ndarray | None  # B0: (X) where the instance branch R is active
    centered_b: np.ndarray | None  # B0 training: (X) (x - mean_c)/(M_B L), the batch-std derivative
    centered_i: np.ndarray | None  # B0: (X) (x - mean_nc)/(M_s s); S0: (view) (x - mean_nk)/(M_g s)
    sig: np.ndarray | None  # S0: (view) sigmoid(v x)
    v_b: np.ndarray | None  # (1, C, 1, ...) or the S0 view's broadcast shape
    gamma_b: np.ndarray | None
    has_beta: bool
    batch_stats: bool
    x_shape: tuple[int, ...]
    batch_var: np.ndarray | None = None  # B0 training: (C,) the biased batch variance, for the running update
    backend: str = "numpy"


def default_groups(num_channels: int, num_groups: int = 32) -> int:
    """TF's rule: start at ``num_groups`` (32) and decrement until it divides ``num_channels``."""
    num_channels = check_positive_int(num_channels, "num_channels")
    groups = min(check_positive_int(num_groups, "num_groups"), num_channels)
    while num_channels % groups:
        groups -= 1
    return groups


def _prepare(x, gamma, beta, v):
    x = as_array(x, "x")
    check_ndim(x, "x", (3, 4, 5), "(N, C, *spatial) with 1 to 3 spatial axes")
    check_nonempty(x, "x")
    num_channels = x.shape[1]
    gamma, beta = check_affine(x, gamma, beta, (num_channels,))
    v = cast_like(x, check_param(v, "v", (num_channels,)))
    return x, gamma, beta, v, (1, num_channels) + (1,) * (x.ndim - 2)


def _affine_only(x, gamma, beta, bshape):
    """``v = None``: the layer is just its affine (no normalization), as in TF and timm."""
    gamma_b = None if gamma is None else gamma.reshape(bshape)
    y = x if gamma_b is None else x * gamma_b
    y = y if beta is None else y + beta.reshape(bshape)
    return y, EvoNormCache("affine", x, None, None, None, None, None, None, gamma_b, beta is not None, False,
                           tuple(x.shape))


def evonorm_b0_forward(x, gamma=None, beta=None, v=None, *, eps=1e-5, stats=None):
    """EvoNorm-B0: ``y = γ·x / max(sqrt(var_batch + eps), v·x + sqrt(var_instance + eps)) + β``.

    Args:
        x: ``(N, C, *spatial)``, 1 to 3 spatial axes.
        gamma, beta, v: ``(C,)`` or ``None`` (``v=None``: affine only, no normalization).
        eps: inside both square roots.
        stats: ``None`` (batch variance, training) or ``(None, running_var)`` with ``running_var`` ``(C,)`` (eval).

    Returns:
        ``(y, cache)``; ``cache.x``'s batch variance for the running update is in :func:`evonorm_b0_batch_var`.
    """
    x, gamma, beta, v, bshape = _prepare(x, gamma, beta, v)
    eps = check_positive_float(eps, "eps", allow_zero=True)
    if v is None:
        return _affine_only(x, gamma, beta, bshape)
    spatial_axes = tuple(range(2, x.ndim))
    if stats is None:
        if x.size // x.shape[1] < 2:
            raise ValueError(f"x must hold more than 1 value per channel for batch statistics, got shape {x.shape}")
        mean_b, var_b = mean_var(x, (0,) + spatial_axes)
    else:
        _, var_b = check_stats(stats, (x.shape[1],), x, need_mean=False)
        var_b = var_b.reshape(bshape)
    mean_i, var_i = mean_var(x, spatial_axes)
    big_l = np.sqrt(var_b + eps)  # (1, C, 1, ...)
    s = np.sqrt(var_i + eps)  # (N, C, 1, ...)
    v_b = v.reshape(bshape)
    r = v_b * x + s
    mask_r = r.real > big_l.real  # a tie goes to the batch branch
    d = np.where(mask_r, r, big_l)
    gamma_b = None if gamma is None else gamma.reshape(bshape)
    y = x / d
    y = y if gamma_b is None else y * gamma_b
    y = y if beta is None else y + beta.reshape(bshape)
    m_s, m_b = x[0, 0].size, x.size // x.shape[1]
    centered_b = (x - mean_b) / (m_b * big_l) if stats is None else None
    cache = EvoNormCache("b0", x, d, mask_r, centered_b, (x - mean_i) / (m_s * s), None, v_b, gamma_b,
                         beta is not None, stats is None, tuple(x.shape),
                         batch_var=var_b.reshape(x.shape[1]) if stats is None else None)
    return y, cache


def evonorm_b0_batch_var(cache: EvoNormCache):
    """The biased batch variance ``(C,)`` a training forward used, and the count ``m = N·prod(spatial)``."""
    if cache.kind != "b0" or cache.batch_var is None:
        raise ValueError("evonorm_b0_batch_var needs the cache of an EvoNorm-B0 forward with batch statistics")
    return cache.batch_var, cache.x.size // cache.x.shape[1]


def evonorm_b0_update_running_var(running_var, num_batches_tracked, cache: EvoNormCache, *, momentum=0.1,
                                  unbiased=True):
    """The running variance after one training batch: ``(1 - momentum)·rv + momentum·var_B`` (PyTorch sense).

    ``momentum = 1 - decay`` of the TF reference (decay 0.9). ``unbiased`` stores ``var_B·m/(m-1)`` (timm and the
    library convention); ``False`` stores the biased variance (TF). Returns ``(new_running_var, tracked + 1)``.
    """
    var, count = evonorm_b0_batch_var(cache)
    zeros = np.zeros_like(running_var)
    new = update_running_stats(RunningStats(zeros, running_var, num_batches_tracked), np.zeros_like(var), var, count,
                               momentum=momentum, unbiased=unbiased)
    return new.running_var, new.num_batches_tracked


def evonorm_s0_forward(x, gamma=None, beta=None, v=None, *, num_groups, eps=1e-5, stats=None):
    """EvoNorm-S0: ``y = γ·x·sigmoid(v·x) / sqrt(var_group + eps) + β``.

    Args:
        x: ``(N, C, *spatial)``, 1 to 3 spatial axes.
        gamma, beta, v: ``(C,)`` or ``None`` (``v=None``: affine only, no normalization).
        num_groups: ``G``, dividing ``C`` (see :func:`default_groups` for TF's 32-and-decrement rule).
        eps: inside the square root.
        stats: ``None`` or ``(None, var)`` with ``var`` of shape ``(N, G)`` (frozen group variances).

    Returns:
        ``(y, cache)``: ``y`` like ``x``.

    Examples:
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 3, 3))
        >>> y0, _ = evonorm_s0_forward(x, v=np.zeros(4), num_groups=2)   # v = 0: x / (2 std_group)
        >>> std = x.reshape(2, 2, -1).std(axis=2)
        >>> bool(np.allclose(y0.reshape(2, 2, -1), x.reshape(2, 2, -1) / (2 * np.sqrt(std[..., None]**2 + 1e-5))))
        True
    """
    x, gamma, beta, v, bshape = _prepare(x, gamma, beta, v)
    num_groups = check_groups(num_groups, x.shape[1])
    eps = check_positive_float(eps, "eps", allow_zero=True)
    if v is None:
        return _affine_only(x, gamma, beta, bshape)
    n, num_channels = x.shape[:2]
    view = x.reshape((n, num_groups, num_channels // num_groups) + x.shape[2:])
    vshape = (1, num_groups, num_channels // num_groups) + (1,) * (x.ndim - 2)
    axes = tuple(range(2, view.ndim))
    mean_g, var_g = mean_var(view, axes)
    if stats is not None:
        _, var_g = check_stats(stats, (n, num_groups), x, need_mean=False)
        var_g = var_g.reshape((n, num_groups) + (1,) * (view.ndim - 2))
    s = np.sqrt(var_g + eps)
    v_b = v.reshape(vshape)
    sig = 1.0 / (1.0 + np.exp(-(v_b * view)))
    y = view * sig / s
    gamma_b = None if gamma is None else gamma.reshape(vshape)
    y = y if gamma_b is None else y * gamma_b
    y = y if beta is None else y + beta.reshape(vshape)
    m_g = view[0, 0].size
    centered = (view - mean_g) / (m_g * s) if stats is None else None
    cache = EvoNormCache("s0", view, s, None, None, centered, sig, v_b, gamma_b, beta is not None, stats is None,
                         tuple(x.shape))
    return y.reshape(x.shape), cache


def evonorm_backward(dy, cache: EvoNormCache):
    """Exact gradients of EvoNorm-B0 or -S0: ``(dx, dgamma, dbeta, dv)``, each parameter ``(C,)`` or ``None``."""
    x = cache.x
    dy = check_dy(dy, cache.x_shape, x.dtype).reshape(x.shape)
    g = dy if cache.gamma_b is None else dy * cache.gamma_b
    param_axes = (0,) + tuple(range(2, x.ndim)) if cache.kind != "s0" else (0,) + tuple(range(3, x.ndim))
    channels = cache.x_shape[1]
    dv = None
    if cache.kind == "affine":
        dx, normalized = g, x
    elif cache.kind == "b0":
        d, mask_r = cache.d, cache.mask_r
        a = -g * x / (d * d)
        a_r = np.where(mask_r, a, 0.0)
        spatial = tuple(range(2, x.ndim))
        dx = g / d + cache.v_b * a_r + cache.centered_i * a_r.sum(axis=spatial, keepdims=True)
        if cache.batch_stats:
            a_l = a - a_r
            dx = dx + cache.centered_b * a_l.sum(axis=(0,) + spatial, keepdims=True)
        dv = (a_r * x).sum(axis=param_axes)
        normalized = x / d
    else:  # s0
        s, sig = cache.d, cache.sig
        u = x * sig
        du = g / s
        dsig = sig * (1.0 - sig)
        dx = du * (sig + cache.v_b * x * dsig)
        if cache.batch_stats:
            group_axes = tuple(range(2, x.ndim))
            dx = dx - cache.centered_i * (g * u / (s * s)).sum(axis=group_axes, keepdims=True)
        dv = (du * x * x * dsig).sum(axis=param_axes).reshape(channels)
        normalized = u / s
    dgamma = None if cache.gamma_b is None else (dy * normalized).sum(axis=param_axes).reshape(channels)
    dbeta = dy.sum(axis=param_axes).reshape(channels) if cache.has_beta else None
    return dx.reshape(cache.x_shape), dgamma, dbeta, dv


evonorm_b0_backward = evonorm_s0_backward = evonorm_backward

register("evonorm_b0", "numpy", evonorm_b0_forward, evonorm_b0_backward)
register("evonorm_s0", "numpy", evonorm_s0_forward, evonorm_s0_backward)
