r"""Power Normalization (Shen, Yao, Gholami, Mahoney & Keutzer, ICML 2020, arXiv:2003.07845).

PowerNorm is BatchNorm for transformers without centering: each channel is divided by a *quadratic mean*
(no mean is subtracted anywhere), the batch statistic is replaced by a running one after a warmup, and the
backward pass is replaced by an "approximate backpropagation" with its own running statistic. This module follows
the official code (``sIncerass/powernorm``, ``fairseq/modules/norms/mask_powernorm.py``: ``GroupScaling1D``,
``PowerFunction``, ``MaskPowerNorm``) line by line; the deviations are listed at the end.

Layout and shapes
-----------------
``x`` is channel-first, ``(N, C, *spatial)`` with 0 to 3 spatial axes (channel axis 1). A *position* is one index
``p = (n, *spatial)``; one statistic per channel runs over the positions. A sequence is a batch of positions:

* fairseq's ``(T, B, C)``: pass ``x.transpose(1, 2, 0)``, shape ``(B, C, T)``, and transpose the output back
  with ``y.transpose(2, 0, 1)``;
* ``(B, T, C)``: pass ``x.transpose(0, 2, 1)``.

``pad_mask`` (optional) has the shape of a position index, ``(N, *spatial)`` (``(B, T)`` for a sequence), ``True``
at padding. Padding is excluded from the statistic but is still normalized and output (as in the code). ``m`` is the
number of non-padding positions, ``M`` the number of all positions.

1. GroupScaling (code, and the paper's appendix "implementation details"; not in the algorithm box)
--------------------------------------------------------------------------------------------------
Every position is first divided by the RMS of its own group of ``C/G`` channels, without affine, in training *and*
evaluation. Its epsilon is fixed at ``1e-5`` (:data:`GROUP_SCALING_EPS`), independent of ``eps``:

.. math::

    s_{p,k} = \Bigl(\operatorname{mean}_{c\in k} x_{p,c}^2 + 10^{-5}\Bigr)^{-1/2},\qquad x'_{p,c} = x_{p,c}\,s_{p,k}.

(Evidence that it is in the paper at all: the maintainer's reply in sIncerass/powernorm#8, "we include the
GroupScaling and mentioned that in the implementation details section (Appendix)"; the appendix itself could not be
read.) This is a per-position group RMSNorm; it runs on the shared primitive (:mod:`normref.ops._normalize`, view
``(N, G, C/G, *spatial)``, no centering), whose exact backward is :math:`dx = s\,(g' - x'\operatorname{mean}_{c\in
k}(g' x'))`.

2. Forward (training step :math:`t`, counted from 1)
----------------------------------------------------
.. math::

    q_c = \frac1m\sum_{p\ \text{not pad}} x'^2_{p,c},\qquad
    z = \frac{x'}{\sqrt{\psi^2 + \epsilon}},\quad
    \psi^2 = \begin{cases} q & t \le T_w \ (\text{warmup: batch statistic}) \\
                           \varphi_{t-1} & t > T_w \ (\text{running statistic, before this step's update})
             \end{cases},\qquad
    y = \gamma z + \beta .

Evaluation: :math:`\psi^2 = \varphi`. In this module the choice is data: ``stats=None`` normalizes by ``q``,
``stats=(None, phi)`` by ``phi``; the layer (:class:`normref.nn.PowerNorm`) picks by ``t`` and the mode.

Running quadratic mean (:func:`update_running_phi`, a pure function applied after the forward):

.. math::

    \text{if } t < T_w:\ \varphi \leftarrow \varphi\,\tfrac{t-1}{t} + q/t \quad(\text{cumulative average}),\qquad
    \varphi \leftarrow \alpha_f\,\varphi + (1-\alpha_f)\,q \quad(\text{every step}).

:math:`\alpha_f` (``alpha_fwd``, 0.9) weighs the **old** value, the opposite of PyTorch's BatchNorm ``momentum``
(which weighs the new batch); hence the distinct name. Note ``t <= T_w`` for the forward but ``t < T_w`` for the
cumulative step, as in the code. At ``t = 1`` both updates give :math:`\varphi = q`.

3. Exact backward (:func:`power_norm_backward`)
-----------------------------------------------
With :math:`g = \gamma\,dy` and :math:`\mathrm{rstd} = (\psi^2+\epsilon)^{-1/2}`:

* after warmup and in evaluation :math:`\psi^2` is a constant, so :math:`dx' = \mathrm{rstd}\,g`;
* in warmup :math:`\psi^2 = q(x')` and :math:`\partial q_c/\partial x'_{p,c} = 2x'_{p,c}\,\kappa_p/m`, with
  :math:`\kappa_p = 0` at padding and 1 elsewhere. The path through ``rstd`` gives
  :math:`\partial L/\partial q = -\tfrac12\mathrm{rstd}^2\sum_p g z` (the sum over **all** positions: padding is
  still normalized), so

  .. math::

      dx' = \mathrm{rstd}\,\bigl(g - \kappa\, z\,\Lambda\bigr),\qquad
      \Lambda_c = \frac1m \sum_{\text{all } p} g_{p,c} z_{p,c} .

  Without padding this is the RMS form of the primitive's fused formula. The primitive's statistic has no mask,
  so the primitive supplies the frozen-statistic part :math:`\mathrm{rstd}\,g` and the parameter gradients, and
  this module adds the :math:`\Lambda` path.

Then GroupScaling's exact backward maps :math:`dx'` to :math:`dx`. :math:`d\gamma = \sum_p dy\,z`,
:math:`d\beta = \sum_p dy`. Finite differences check this (``tests/test_power_norm.py``, ``normref check``).

4. The paper's approximate backpropagation (:func:`power_norm_backward_approx`), a surrogate
-------------------------------------------------------------------------------------------
The backward keeps its own running statistic, the code's buffer ``ema_gz`` (:math:`E`, init 0), and updates it
*inside* the backward (here: returns the new value). With :math:`\alpha_b` = ``alpha_bkw`` (0.9, weight on the old
value):

.. math::

    A = g - (1-\alpha_b)\,E\,z,\qquad E \leftarrow E + \operatorname{mean}_{\text{all } p}(A\,z),\qquad
    dx' = A\,(q + \epsilon)^{-1/2} .

Writing :math:`\nu = (1-\alpha_b)E`, :math:`\Gamma = \operatorname{mean}_p z^2` and
:math:`\Lambda' = \operatorname{mean}_p (g z)`, this is the paper's rule
:math:`A = g - \nu_{t-1}z,\ \nu_t = \nu_{t-1}(1-(1-\alpha_b)\Gamma) + (1-\alpha_b)\Lambda'` (the same rule, rescaled;
the paper's form is quoted in sIncerass/powernorm issue #3, the paper body could not be read). Everything else is
exact: :math:`d\gamma`, :math:`d\beta` and GroupScaling's backward.

**What is surrogate, and how it relates to the exact gradient** (``normalizers.md`` §1.4):

* In warmup the forward divides by the batch :math:`q`; the exact gradient subtracts :math:`z\Lambda` with the
  *current* :math:`\Lambda`; the surrogate subtracts :math:`z\nu_{t-1}`, a lagged running estimate of it. No value
  of :math:`\alpha_b` removes the lag. With :math:`\alpha_b = 0`, no padding and :math:`\epsilon = 0`
  (so :math:`\Gamma = 1`) the update is :math:`\nu_t = \Lambda_t` exactly, so the surrogate equals the exact
  gradient whenever the current :math:`\Lambda` equals the previous one, e.g. the second backward through the same
  cache (gradient accumulation). With :math:`\alpha_b = 1`, :math:`\nu \equiv 0` and the surrogate is the
  stop-gradient (frozen :math:`q`) gradient :math:`g/\sqrt{q+\epsilon}`. Both statements are tested.
* After warmup the forward divides by the constant :math:`\varphi_{t-1}`, whose exact gradient is
  :math:`g/\sqrt{\varphi+\epsilon}`; the **code** divides by the *batch* :math:`\sqrt{q+\epsilon}` instead. The paper's
  algorithm, as recalled (not verifiable here: only the abstract and a GitHub issue could be read), divides by the
  running statistic. Decision: ``denominator="batch"`` (the default) follows the code, bit for bit;
  ``denominator="forward"`` divides by whatever the forward divided by (the paper-recalled form). With
  ``denominator="forward"`` and :math:`\alpha_b = 1` the surrogate equals the exact gradient after warmup (tested).

Deviations from the official code
---------------------------------
* ``affine=False`` is honoured (the official layer always applies its affine): ``gamma``/``beta`` may be ``None``.
* Any ``(N, C, *spatial)`` input, not only ``(T, B, C)``; the sequence layouts map as above.
* The unused ``gz`` of the code is not computed; ``denominator="forward"`` is an addition.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .._moments import mean_square
from .._registry import register
from .._validate import (as_array, check_affine, check_fraction, check_ndim, check_nonempty, check_positive_float,
                         check_stats)
from ._normalize import NormalizeCache, normalize_backward, normalize_forward
from .group_norm import check_groups

GROUP_SCALING_EPS = 1e-5  # the official GroupScaling1D's eps, fixed and independent of the layer's eps


class PowerNormCache(NamedTuple):
    """What both backward passes need. ``S`` = ``(N, C, *spatial)``, ``K`` = ``(1, C, 1, ...)``."""

    scaling: NormalizeCache  # GroupScaling's cache, view (N, G, C/G, *spatial)
    norm: NormalizeCache  # the per-channel normalization, statistic held fixed: xhat = z (S), rstd (K), affine
    batch_q: np.ndarray  # (K) quadratic mean of the group-scaled input over non-padding positions
    batch_rstd: np.ndarray  # (K) (batch_q + eps)^-1/2, the code's backward denominator
    keep: np.ndarray | None  # (N, 1, *spatial) 1 at non-padding positions, 0 at padding; None without a mask
    count: int  # m, the number of non-padding positions
    batch_stats: bool  # True: the forward divided by batch_q (warmup); False: by given statistics
    backend: str = "numpy"


def check_count(value, name: str) -> int:
    """Validate a step count such as ``warmup_iters``: an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def position_mask(pad_mask, x: np.ndarray):
    """Validate ``pad_mask`` (``True`` = padding) against ``x`` ``(N, C, *spatial)``.

    Returns:
        ``(keep, count)``: ``keep`` of shape ``(N, 1, *spatial)`` in ``x``'s real dtype (1 = kept), or ``None``
        without a mask; ``count`` the number of kept positions.
    """
    positions = (x.shape[0],) + x.shape[2:]
    if pad_mask is None:
        return None, int(np.prod(positions))
    if not isinstance(pad_mask, np.ndarray) or pad_mask.dtype != np.bool_:
        raise TypeError(f"pad_mask must be a boolean numpy.ndarray (True = padding), got "
                        f"{getattr(pad_mask, 'dtype', type(pad_mask).__name__)}")
    if pad_mask.shape != positions:
        raise ValueError(f"pad_mask must have the shape of the positions (N, *spatial) = {positions}, "
                         f"got {pad_mask.shape}")
    count = int((~pad_mask).sum())
    if count == 0:
        raise ValueError("pad_mask marks every position as padding: the statistic would be empty")
    keep = (~pad_mask).astype(np.empty(0, x.dtype).real.dtype)
    return np.expand_dims(keep, 1), count


def masked_mean_square(x: np.ndarray, keep, count: int) -> np.ndarray:
    """Per-channel mean of ``x**2`` over the kept positions, shape ``(1, C, 1, ...)`` (``mean_square`` underneath)."""
    axes = (0,) + tuple(range(2, x.ndim))
    if keep is None:
        return mean_square(x, axes)
    total = x.size // x.shape[1]
    return mean_square(x * keep, axes) * (total / count)


def power_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, group_num=1, stats=None, pad_mask=None):
    """GroupScaling, then division of each channel by the batch quadratic mean (``stats=None``) or a given one.

    Args:
        x: ``(N, C, *spatial)``, 0 to 3 spatial axes, float32/float64 (complex for the complex step).
        gamma, beta: ``(C,)`` or ``None``.
        eps: added to the quadratic mean inside the square root.
        group_num: ``G``, the number of channel groups of GroupScaling (dividing ``C``).
        stats: ``None`` (warmup: divide by the batch statistic ``q``) or ``(None, phi)`` with ``phi`` ``(C,)``
            (after warmup and in evaluation: the running quadratic mean).
        pad_mask: ``None`` or a bool array ``(N, *spatial)``, ``True`` at padding positions.

    Returns:
        ``(y, cache)``: ``y`` like ``x`` in ``x``'s dtype; ``cache.batch_q`` feeds :func:`update_running_phi`.

    Examples:
        >>> x = np.random.default_rng(0).normal(size=(64, 4))
        >>> y, cache = power_norm_forward(x, group_num=2)
        >>> bool(np.allclose((y ** 2).mean(axis=0), 1, atol=1e-4))
        True
    """
    x = as_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    n, num_channels = x.shape[:2]
    spatial = x.shape[2:]
    group_num = check_groups(group_num, num_channels)
    gamma, beta = check_affine(x, gamma, beta, (num_channels,))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    keep, count = position_mask(pad_mask, x)
    # GroupScaling: a per-position RMS normalization over each group's channels, without affine.
    view = x.reshape((n, group_num, num_channels // group_num) + spatial)
    x_scaled, scaling = normalize_forward(view, None, None, reduce_axes=(2,), param_view_shape=(1,) * view.ndim,
                                          eps=GROUP_SCALING_EPS, center=False, x_shape=x.shape)
    x_scaled = x_scaled.reshape(x.shape)
    stat_shape = (1, num_channels) + (1,) * len(spatial)
    batch_q = masked_mean_square(x_scaled, keep, count)
    if stats is None:
        used = batch_q
    else:
        _, phi = check_stats(stats, (num_channels,), x, need_mean=False)
        used = phi.reshape(stat_shape)
    # The statistic is passed as given so that the primitive never recomputes it without the mask; the path
    # through the batch statistic (warmup) is added in power_norm_backward.
    y, norm = normalize_forward(x_scaled, gamma, beta, reduce_axes=(0,) + tuple(range(2, x.ndim)),
                                param_view_shape=stat_shape, eps=eps, center=False, stats=(None, used))
    cache = PowerNormCache(scaling=scaling, norm=norm, batch_q=batch_q, batch_rstd=1.0 / np.sqrt(batch_q + eps),
                           keep=keep, count=count, batch_stats=stats is None)
    return y, cache


def _finish(dx_scaled, cache: PowerNormCache):
    """GroupScaling's exact backward: ``dx'`` (S) to ``dx`` (S)."""
    dx, _, _ = normalize_backward(dx_scaled, cache.scaling)
    return dx


def power_norm_backward(dy, cache: PowerNormCache):
    """Exact gradients of :func:`power_norm_forward` (section 3 of the module docstring).

    Returns:
        ``(dx, dgamma, dbeta)``: ``dx`` like ``x``; ``dgamma``, ``dbeta`` ``(C,)`` or ``None``.
    """
    norm = cache.norm
    dx_scaled, dgamma, dbeta = normalize_backward(dy, norm)  # rstd·g: the statistic held fixed
    if cache.batch_stats:  # warmup: add the path through q
        dy = np.asarray(dy).reshape(norm.xhat.shape)
        g = dy if norm.gamma_b is None else dy * norm.gamma_b
        lam = (g * norm.xhat).sum(axis=norm.reduce_axes, keepdims=True) / cache.count  # Λ (K)
        z_kept = norm.xhat if cache.keep is None else norm.xhat * cache.keep
        dx_scaled = dx_scaled - norm.rstd * z_kept * lam
    return _finish(dx_scaled, cache), dgamma, dbeta


def power_norm_backward_approx(dy, cache: PowerNormCache, ema_gz, *, alpha_bkw=0.9, denominator="batch"):
    """The paper's approximate backpropagation (section 4), a surrogate gradient with its own running statistic.

    Args:
        dy: ``(N, C, *spatial)``.
        cache: from :func:`power_norm_forward` in training.
        ema_gz: ``(C,)`` the code's ``E`` before this backward (``nu = (1 - alpha_bkw) * E``; init 0).
        alpha_bkw: weight of the **old** value in ``[0, 1]`` (0.9 in the code).
        denominator: ``"batch"`` (the code: ``sqrt(q + eps)`` always) or ``"forward"`` (the statistic the forward
            divided by: the paper-recalled form).

    Returns:
        ``(dx, dgamma, dbeta, new_ema_gz)``; nothing is mutated.
    """
    norm = cache.norm
    alpha_bkw = check_fraction(alpha_bkw, "alpha_bkw")
    if denominator not in ("batch", "forward"):
        raise ValueError(f"denominator must be 'batch' or 'forward', got {denominator!r}")
    num_channels = cache.norm.xhat.shape[1]
    ema_gz = as_array(ema_gz, "ema_gz")
    if ema_gz.shape != (num_channels,):
        raise ValueError(f"ema_gz must have shape ({num_channels},), got {ema_gz.shape}")
    _, dgamma, dbeta = normalize_backward(dy, norm)  # exact parameter gradients (dx of this call is unused)
    dy = np.asarray(dy).reshape(norm.xhat.shape)
    z, axes = norm.xhat, norm.reduce_axes
    g = dy if norm.gamma_b is None else dy * norm.gamma_b
    e_old = ema_gz.reshape(cache.batch_q.shape)
    a = g - (1.0 - alpha_bkw) * e_old * z
    e_new = e_old + (a * z).mean(axis=axes, keepdims=True)  # mean over all positions, padding included
    rstd = cache.batch_rstd if denominator == "batch" else norm.rstd
    e_new = e_new.reshape(num_channels)
    if not np.iscomplexobj(e_new):
        e_new = e_new.astype(ema_gz.dtype, copy=False)  # the buffer keeps its dtype
    return _finish(rstd * a, cache), dgamma, dbeta, e_new


def update_running_phi(running_phi, batch_q, *, step, alpha_fwd=0.9, warmup_iters=10000):
    """The running quadratic mean after training step ``step`` (counted from 1), section 2.

    Args:
        running_phi: ``(C,)`` before the step.
        batch_q: ``(C,)`` or ``(1, C, 1, ...)``, the step's batch statistic (``cache.batch_q``).
        step: ``t >= 1``, the step just taken.
        alpha_fwd: weight of the **old** value.
        warmup_iters: ``T_w``; the cumulative average runs for ``t < T_w``.

    Returns:
        The new ``(C,)`` array; nothing is mutated.
    """
    alpha_fwd = check_fraction(alpha_fwd, "alpha_fwd")
    step = check_count(step, "step")
    if step < 1:
        raise ValueError(f"step must be >= 1 (the counter is incremented before use), got {step}")
    q = np.asarray(batch_q).reshape(np.shape(running_phi))
    phi = running_phi
    if step < warmup_iters:
        phi = phi * ((step - 1) / step) + q / step
    phi = alpha_fwd * phi + (1.0 - alpha_fwd) * q
    dtype = np.result_type(running_phi.dtype, q.dtype) if np.iscomplexobj(q) else running_phi.dtype
    return np.asarray(phi).astype(dtype, copy=False)


register("power_norm", "numpy", power_norm_forward, power_norm_backward)
# PowerNorm whose backward is the surrogate: called as get_impl(...).backward(dy, cache, ema_gz, alpha_bkw=...), so
# that normref.nn.PowerNorm(backward="approx") runs it on the backend the forward ran on.
register("power_norm_approx", "numpy", power_norm_forward, power_norm_backward_approx)
