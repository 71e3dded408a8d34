r"""Batch-Channel Normalization (Qiao, Wang, Liu, Shen & Yuille, arXiv:1903.10520).

Input ``x`` of shape ``(N, C, *spatial)``. BCN is two normalizations in a row, each with its own affine:

.. math::

    y_1 = \gamma_c\,\frac{x - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} + \beta_c
    \quad(\text{BatchNorm stage, per channel}),\qquad
    y = a_k\,\frac{y_1 - \mu_{nk}(y_1)}{\sqrt{\sigma^2_{nk}(y_1) + \epsilon}} + b_k
    \quad(\text{GroupNorm stage, per sample and group}).

The GroupNorm stage's affine ``(a, b)`` = ``(group_gamma, group_beta)`` has one value **per group**, shape
``(G,)``: the official ``BCNorm`` stores it as ``(1, G, 1)`` and applies it to the ``(1, N·G, -1)`` view. This is
the difference from ``GroupNorm``, whose affine is per channel. The ImageNet models use ``G = 32``; both stages use
``eps = 1e-5`` (the official BN stage hard-codes it; one ``eps`` serves both here).

The BN stage's statistics are either

* the batch's (training, as ``nn.BatchNorm2d``): exact gradient through them; in eval the running statistics
  (PyTorch's EMA, ``momentum = 0.1``, unbiased variance), or
* the **estimated statistics** ``(μ̂, σ̂²)`` of the paper's micro-batch variant (official ``EstBN``), used in both
  training and eval. Each training step first updates them without gradient (:func:`estbn_update`), then normalizes
  with the *updated* values:

  .. math::

      m_B = \operatorname{mean}_{N,spatial} x,\quad v' = \operatorname{mean}_{N,spatial}(x - \hat\mu_{old})^2
      = \sigma^2_B + (m_B - \hat\mu_{old})^2,\quad
      \hat\mu \leftarrow (1-r)\hat\mu + r\,m_B,\quad \hat\sigma^2 \leftarrow (1-r)\hat\sigma^2 + r\,v'.

  ``r`` is the *moving speed* (official buffer ``estbn_moving_speed``, initialized to 0 and never set by any public
  script; the paper's value was not found). The layer's default ``r = 0.01`` is a choice, not the paper's.
  The backward treats ``μ̂, σ̂²`` as constants (**stop-gradient**): it is the exact gradient of the
  *frozen-statistics* function ``x ↦ BCN(x; μ̂, σ̂²)``, and differs from finite differences of the training forward
  by ``O(r)``. Pass the updated estimates as ``stats=`` to this op.

Backward
--------
Exact composition, reusing the two ops: the GN stage is :func:`group_norm_backward` with the per-group ``a`` tied to
a per-channel ``γ`` (``a`` repeated ``C/G`` times), so ``da_k = Σ_{c∈k} dγ_c = Σ_{n, c∈k, spatial} dy·ŷ_2``
(the gradient of a tied parameter is the sum over its copies); its ``dy_1`` then goes through
:func:`batch_norm_backward` (batch statistics: :math:`\mathrm{rstd}(g - c_2 - \hat x c_1)`; given statistics:
:math:`\mathrm{rstd}\,g`).

Relation to InstanceNorm (tested). With ``N = 1``, batch statistics and ``G = C``, the BN stage normalizes each
channel over its spatial positions, i.e. it *is* IN: :math:`y_1 = \gamma\hat x + \beta` with
:math:`\hat x = \mathrm{IN}_\epsilon(x)`. The GN stage is then IN of :math:`y_1`; ``β`` cancels in its centering, and
:math:`\operatorname{var}(y_1) = \gamma^2 v/(v+\epsilon)`, so

.. math::

    y_2 = \frac{\gamma\,(x-\mu)}{\sqrt{\gamma^2 v + \epsilon(v + \epsilon)}} .

With ``γ = 1`` (any ``β``) the denominator is :math:`\sqrt{(1+\epsilon)v + \epsilon^2}`, so
:math:`y_2 = \mathrm{IN}_{\epsilon'}(x)/\sqrt{1+\epsilon}` exactly, InstanceNorm with the smaller
:math:`\epsilon' = \epsilon^2/(1+\epsilon)`; and with ``eps = 0``, :math:`y_2 = \operatorname{sign}(\gamma)\,
\mathrm{IN}_0(x)` for any ``γ ≠ 0``. After the group affine (per channel when ``G = C``): ``BCN(x) = a ⊙ that + b``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._moments import mean_var
from .._registry import register
from .._validate import (as_array, cast_like, check_fraction, check_ndim, check_nonempty, check_param)
from .batch_norm import batch_norm_backward, batch_norm_forward
from .group_norm import check_groups, group_norm_backward, group_norm_forward


class BCNCache(NamedTuple):
    bn: object  # the BatchNorm stage's cache (NormalizeCache over (N, C, *spatial))
    gn: object  # the GroupNorm stage's cache (NormalizeCache over (N, G, C/G, *spatial))
    num_groups: int
    has_group_gamma: bool
    has_group_beta: bool
    backend: str = "numpy"


def batch_channel_norm_forward(x, gamma=None, beta=None, group_gamma=None, group_beta=None, *, num_groups, eps=1e-5,
                               stats=None):
    """Batch-Channel Normalization: BatchNorm (per-channel affine), then GroupNorm (per-group affine).

    Args:
        x: ``(N, C, *spatial)``, 0 to 3 spatial axes.
        gamma, beta: ``(C,)`` or ``None``: the BN stage's affine.
        group_gamma, group_beta: ``(G,)`` or ``None``: the GN stage's per-group affine.
        num_groups: ``G``, dividing ``C``.
        eps: both stages' eps, inside the square root.
        stats: ``None`` for batch statistics in the BN stage; ``(mean, var)``, each ``(C,)``, for running
            statistics (eval) or EstBN's estimated statistics (stop-gradient).

    Returns:
        ``(y, cache)``: ``y`` like ``x``.

    Examples:
        >>> x = np.random.default_rng(0).normal(4.0, 3.0, size=(2, 6, 5))
        >>> y, _ = batch_channel_norm_forward(x, num_groups=3)
        >>> bool(np.allclose(y.reshape(2, 3, -1).mean(axis=2), 0))
        True
    """
    x = as_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    num_channels = x.shape[1]
    num_groups = check_groups(num_groups, num_channels)
    group_gamma = cast_like(x, check_param(group_gamma, "group_gamma", (num_groups,)))
    group_beta = cast_like(x, check_param(group_beta, "group_beta", (num_groups,)))
    y1, bn_cache = batch_norm_forward(x, gamma, beta, eps=eps, stats=stats)
    per_group = num_channels // num_groups
    # The per-group affine is a per-channel affine with tied values (each repeated C/G times).
    tied_gamma = None if group_gamma is None else np.repeat(group_gamma, per_group)
    tied_beta = None if group_beta is None else np.repeat(group_beta, per_group)
    y, gn_cache = group_norm_forward(y1, tied_gamma, tied_beta, num_groups=num_groups, eps=eps)
    return y, BCNCache(bn_cache, gn_cache, num_groups, group_gamma is not None, group_beta is not None)


def batch_channel_norm_backward(dy, cache: BCNCache):
    """Exact gradients of :func:`batch_channel_norm_forward` (stop-gradient through given ``stats``).

    Returns:
        ``(dx, dgamma, dbeta, dgroup_gamma, dgroup_beta)``: ``dx`` like ``x``; ``(C,)``, ``(C,)``, ``(G,)``,
        ``(G,)``, each ``None`` where the forward had no such parameter.
    """
    dy1, dtied_gamma, dtied_beta = group_norm_backward(dy, cache.gn)
    groups = cache.num_groups
    dgroup_gamma = dtied_gamma.reshape(groups, -1).sum(axis=1) if cache.has_group_gamma else None
    dgroup_beta = dtied_beta.reshape(groups, -1).sum(axis=1) if cache.has_group_beta else None
    dx, dgamma, dbeta = batch_norm_backward(dy1, cache.bn)
    return dx, dgamma, dbeta, dgroup_gamma, dgroup_beta


def estbn_update(est_mean, est_var, x, *, moving_speed):
    """EstBN's estimated-statistics update (official ``EstBN.forward``, done under ``no_grad`` before normalizing).

    Args:
        est_mean, est_var: ``(C,)`` the current estimates ``μ̂``, ``σ̂²``.
        x: ``(N, C, *spatial)`` the training batch.
        moving_speed: ``r`` in ``[0, 1]``, the weight of the new batch.

    Returns:
        ``(new_mean, new_var)``, each ``(C,)``, in the estimates' dtype; the inputs are not modified. ``new_var``
        uses the second moment around the **old** ``μ̂``, ``σ²_B + (m_B - μ̂_old)²``, as the official code does.
    """
    x = as_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    num_channels = x.shape[1]
    est_mean = check_param(est_mean, "est_mean", (num_channels,))
    est_var = check_param(est_var, "est_var", (num_channels,))
    if est_mean is None or est_var is None:
        raise TypeError("est_mean and est_var must be arrays of shape (C,), got None")
    r = check_fraction(moving_speed, "moving_speed")
    axes = (0,) + tuple(range(2, x.ndim))
    batch_mean, batch_var = mean_var(x, axes)
    batch_mean, batch_var = batch_mean.reshape(num_channels), batch_var.reshape(num_channels)
    shift = batch_mean - est_mean
    second_moment = batch_var + shift * shift  # mean((x - μ̂_old)²), without a second pass over x
    new_mean = (1.0 - r) * est_mean + r * batch_mean
    new_var = (1.0 - r) * est_var + r * second_moment
    dtype = np.result_type(est_mean.dtype, new_mean.dtype) if np.iscomplexobj(new_mean) else est_mean.dtype
    return new_mean.astype(dtype, copy=False), new_var.astype(dtype, copy=False)


register("batch_channel_norm", "numpy", batch_channel_norm_forward, batch_channel_norm_backward)
