r"""Unified Normalization (Yang, Xie, Jiang, Zhao, Zhang & Huang, ACM MM 2022, arXiv:2208.01313).

UN, like PowerNorm, divides each channel by a quadratic mean (no centering) and replaces both the forward statistic
and the backward's statistic by smoothed estimates, so that a transformer can use batch statistics (and fold them
into the previous linear layer at inference). This module follows the official code
(``hikvision-research/Unified-Normalization``, ``unified_normalization.py``: ``UN2dFunction``, ``UN1d``); the
paper body could not be read (only its abstract, which names "fluctuation smoothing" of the activation *and
gradient* statistics and "adaptive outlier filtration"). The gradient compensation ``r``, its 1000-iteration floor,
the clip range ``[1/5, 5]``, the threshold ``rho·W_f`` and the any-channel rule are therefore recorded as code-level
details.

Layout: ``x`` is ``(N, C, *spatial)``, channel axis 1 (the code's ``(B, T, C)`` is passed as
``x.transpose(0, 2, 1)``); ``pad_mask`` ``(N, *spatial)``, ``True`` = padding, excluded from the statistic.
``m`` is the number of non-padding positions.

State
-----
Forward side (:class:`UnifiedNormState`): the step counter :math:`t`, ``running_var`` :math:`v` ``(C,)`` (init 1;
despite the name, a running quadratic mean), the forward window ``buffer_x2`` :math:`Q` ``(W_f, C)`` (init 0) and
``skip_counter``. Backward side (:class:`UnifiedNormGradState`): ``ema_gz`` :math:`E` ``(C,)`` (init 0) and the
backward window ``buffer_gz`` :math:`B` ``(W_b, C)`` (init 0). ``momentum`` :math:`\mu` (0.9) weighs the **old**
value in both EMAs, the opposite of PyTorch's BatchNorm ``momentum``.

Forward, training step :math:`t` (counted from 1)
--------------------------------------------------
.. math::

    q = \operatorname{mean}_{\text{non-pad}} x^2,\qquad
    \rho = \operatorname{var}^u\bigl(\sqrt{Q}\bigr)\ \text{(one scalar over all } W_f C \text{ entries, before the
    insert)},\qquad Q[t \bmod W_f] \leftarrow q .

*Adaptive outlier filtration* (only when enabled and :math:`t \ge T_w`): with the arithmetic and geometric means of
the window, :math:`\mathrm{AM}_c = \operatorname{mean}_j Q_{jc}`, :math:`\mathrm{GM}_c = \exp\operatorname{mean}_j
\log Q_{jc}`, the step is an *outlier* if :math:`\mathrm{AM}_c - \mathrm{GM}_c > \rho\,W_f` for **any** channel;
then :math:`Q[t \bmod W_f] \leftarrow v` and the step is skipped (``skip_counter`` += 1). The step is also "skipped"
(no smoothing) when :math:`W_f = 1`.

*Fluctuation smoothing*:

.. math::

    \sigma^2 = \begin{cases} q & t \le W_f \text{ or } t < T_w \text{ or skip} \\
                             \mathrm{GM}_j(Q_{j}) = \exp\operatorname{mean}_j\log Q_j & \text{otherwise}
               \end{cases},\qquad
    z = \frac{x}{\sqrt{\sigma^2+\epsilon}},\qquad y = \gamma z + \beta .

*Gradient compensation* (backward only): :math:`r = \sqrt{\sigma^2+\epsilon}/\sqrt{v+\epsilon}` (``v`` before the
update), clipped to :math:`[1/5, 5]`, and :math:`r = 1` while :math:`t \le \max(F, T_w)` or on a skipped step, with
the code's floor :math:`F = 1000` exposed as ``compensation_floor``. Then (:func:`update_state`)
:math:`v \leftarrow \mu v + (1-\mu)\sigma^2`.

Evaluation: :math:`z = x/\sqrt{v+\epsilon}`.

Exact backward (:func:`unified_norm_backward`)
-----------------------------------------------
The forward output depends on ``x`` only through :math:`\sigma^2`, and :math:`\sigma^2` depends on ``x`` only
through this step's :math:`q` (``rho``, ``v`` and the other window entries come from earlier steps; the skip
decision is piecewise constant; ``r`` does not enter the forward). Let :math:`w = \partial\sigma^2/\partial q` (per
channel): :math:`w = 1` when :math:`\sigma^2 = q`; :math:`w = \sigma^2/(W_f\,q)` when :math:`\sigma^2` is the
geometric mean (the current :math:`q` is one of its :math:`W_f` factors, :math:`\sigma^2 \propto q^{1/W_f}`); and
:math:`w = 0` for given statistics (eval). With :math:`g = \gamma\,dy`,
:math:`\mathrm{rstd} = (\sigma^2+\epsilon)^{-1/2}`,
:math:`\partial L/\partial\sigma^2 = -\tfrac12\mathrm{rstd}^2\sum_p g z` and
:math:`\partial q/\partial x_p = 2x_p\kappa_p/m` (:math:`\kappa` = 0 at padding), the chain rule gives

.. math::

    dx = \mathrm{rstd}\,\Bigl(g - w\,\kappa\,z\,\frac1m\sum_{\text{all }p} g z\Bigr),\qquad
    d\gamma = \textstyle\sum_p dy\,z,\qquad d\beta = \sum_p dy .

So the exact gradient is available in every configuration, not only for :math:`W_f = 1`; finite differences check
it in warmup, on smoothed steps and on outlier steps (away from the filter's threshold, where the forward jumps).

The paper's gradient rule (:func:`unified_norm_backward_approx`), a surrogate
---------------------------------------------------------------------------
.. math::

    \hat g = r\,\gamma\,dy,\quad \lambda = \operatorname{mean}_{\text{all }p}(\hat g z),\quad
    B[t \bmod W_b] \leftarrow \begin{cases} E & \text{skip} \\ \lambda & \text{else}\end{cases},\quad
    \bar\lambda = \begin{cases} \lambda & t \le W_b \text{ or } t < T_w \text{ or skip} \\
                                \operatorname{mean}_j B_j & \text{else}\end{cases},

.. math::

    E \leftarrow \mu E + (1-\mu)\bar\lambda,\qquad
    A = \begin{cases}\hat g - \bar\lambda z & \text{skip} \\ \hat g - E z & \text{else (the updated } E)\end{cases},
    \qquad dx = \mathrm{rstd}\,A,\quad d\gamma = \textstyle\sum_p dy\,r z,\quad d\beta = \sum_p dy .

What is surrogate: the forward's :math:`\sigma^2` depends on ``x`` (through :math:`q`), and the rule replaces the
current :math:`w\lambda` by the EMA/window estimate :math:`E`; with :math:`r \ne 1` it also rescales :math:`\hat g`
and :math:`d\gamma` (the forward used :math:`z`, not :math:`rz`). With :math:`W_f = 1` (always skipped, :math:`r = 1`)
and no padding, :math:`A = g - z\operatorname{mean}(gz)`, which **is** the exact gradient (tested). With padding the
code's mean runs over all positions while the statistic counts only non-padding ones, so even then it differs.

Deviations from the official code
---------------------------------
* ``affine=False`` is honoured; any ``(N, C, *spatial)`` input.
* With :math:`W_f C < 2` the unbiased ``rho`` is undefined (the code gets NaN and never filters); the filter is then
  not run. With :math:`W_f = 1` it could never fire (AM = GM).
* ``compensation_floor`` exposes the code's hard-coded 1000.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._moments import mean_var
from .._registry import register
from .._validate import (as_array, cast_like, check_affine, check_fraction, check_ndim, check_nonempty,
                         check_positive_float, check_stats)
from ._normalize import NormalizeCache, normalize_backward, normalize_forward
from .power_norm import check_count, masked_mean_square, position_mask

R_CLIP = (0.2, 5.0)  # the code's clamp of the gradient compensation r


class UnifiedNormState(NamedTuple):
    """The forward-side buffers (the code's names)."""

    iters: int  # steps taken
    running_var: np.ndarray  # (C,) running quadratic mean, init 1
    buffer_x2: np.ndarray  # (W_f, C) the forward window of batch statistics, init 0
    skip_counter: int  # number of outlier steps


class UnifiedNormGradState(NamedTuple):
    """The backward-side buffers of the surrogate."""

    ema_gz: np.ndarray  # (C,) init 0
    buffer_gz: np.ndarray  # (W_b, C) init 0


class UnifiedNormCache(NamedTuple):
    """What the backward passes and :func:`update_state` need. ``K`` = ``(1, C, 1, ...)``."""

    norm: NormalizeCache  # normalization with sigma^2 as a given statistic: xhat = z, rstd (K), affine
    batch_q: np.ndarray  # (K) quadratic mean over non-padding positions
    keep: np.ndarray | None  # (N, 1, *spatial) 1 = non-padding, or None
    count: int  # m
    stat_weight: np.ndarray | float  # w = d sigma^2 / d q: 1, sigma^2/(W_f q) (K), or 0 (given statistics)
    iters: int | None  # t of this training step; None for a stateless call
    skip: bool  # no smoothing this step (W_f = 1 or an outlier)
    outlier: bool  # the filter fired
    r: np.ndarray  # (K) gradient compensation
    buffer_x2: np.ndarray | None  # (W_f, C) the forward window after this step
    warmup_iters: int
    backend: str = "numpy"

    @property
    def sigma2(self) -> np.ndarray:
        """(K) the statistic the forward divided by (what :func:`update_state` folds in; every backend's cache has
        it)."""
        return self.norm.var


def initial_state(num_features: int, window_size: int, dtype=np.float64) -> UnifiedNormState:
    """The code's initial forward buffers."""
    return UnifiedNormState(0, np.ones(num_features, dtype), np.zeros((window_size, num_features), dtype), 0)


def initial_grad_state(num_features: int, window_size: int, dtype=np.float64) -> UnifiedNormGradState:
    """The code's initial backward buffers."""
    return UnifiedNormGradState(np.zeros(num_features, dtype), np.zeros((window_size, num_features), dtype))


def _check_state(state, num_channels: int) -> UnifiedNormState:
    if not isinstance(state, UnifiedNormState):
        raise TypeError(f"state must be a UnifiedNormState or None, got {type(state).__name__}")
    running_var = as_array(state.running_var, "state.running_var")
    window = as_array(state.buffer_x2, "state.buffer_x2")
    if running_var.shape != (num_channels,):
        raise ValueError(f"state.running_var must have shape ({num_channels},), got {running_var.shape}")
    if window.ndim != 2 or window.shape[1] != num_channels or window.shape[0] < 1:
        raise ValueError(f"state.buffer_x2 must have shape (window, {num_channels}), got {window.shape}")
    return state._replace(iters=check_count(state.iters, "state.iters"), running_var=running_var,
                          buffer_x2=window)


def _geometric_mean(window):
    """``exp(mean_j log Q_j)`` per channel: the code's numerically safe geometric mean of the window."""
    return np.exp(np.log(window).mean(axis=0))


def _is_outlier(window_before, window_after) -> bool:
    """The adaptive outlier filter: AM - GM > rho·W_f for any channel (decided on real parts)."""
    size = window_before.shape[0]
    if size < 2 or window_before.size < 2:
        return False
    flat = np.sqrt(window_before.real).reshape(-1)
    _, var = mean_var(flat, (0,))
    rho = float(var[0]) * flat.size / (flat.size - 1)  # unbiased, one scalar over all entries
    real = window_after.real
    return bool(np.any(real.mean(axis=0) - _geometric_mean(real) > rho * size))


class UnifiedNormArgs(NamedTuple):
    """The validated arguments of :func:`unified_norm_forward` (shared by every backend)."""

    x: np.ndarray  # (N, C, *spatial), as an array
    gamma: np.ndarray | None  # (C,), cast to x's dtype
    beta: np.ndarray | None  # (C,), cast to x's dtype
    eps: float
    warmup_iters: int
    compensation_floor: int
    keep: np.ndarray | None  # (N, 1, *spatial) 1 = non-padding, or None
    count: int  # m, the number of non-padding positions


def unified_norm_args(x, gamma, beta, *, eps, warmup_iters, compensation_floor, pad_mask,
                      allow_complex=True) -> UnifiedNormArgs:
    """Validate the arguments of :func:`unified_norm_forward` (see it for their meaning).

    ``allow_complex=False`` (the compiled backends) refuses complex ``x`` and parameters with a ``TypeError``
    naming the argument.
    """
    x = as_array(x, "x", allow_complex=allow_complex)
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    gamma, beta = check_affine(x, gamma, beta, (x.shape[1],), allow_complex=allow_complex)
    eps = check_positive_float(eps, "eps", allow_zero=True)
    warmup_iters = check_count(warmup_iters, "warmup_iters")
    compensation_floor = check_count(compensation_floor, "compensation_floor")
    keep, count = position_mask(pad_mask, x)
    return UnifiedNormArgs(x, gamma, beta, eps, warmup_iters, compensation_floor, keep, count)


class UnifiedNormStep(NamedTuple):
    """The statistic one forward divides by, and the step's bookkeeping (:func:`step_statistic`)."""

    sigma2: np.ndarray  # (C,) in x's dtype: the statistic used
    stat_weight: np.ndarray | float  # w = d sigma^2 / d q: 1.0, (C,) sigma^2/(W_f q) in x's dtype, or 0.0
    r: np.ndarray  # (C,) real: the gradient compensation
    iters: int | None  # t of this training step; None for a stateless call
    skip: bool
    outlier: bool
    buffer_x2: np.ndarray | None  # (W_f, C) the forward window after this step


def step_statistic(x, q, *, state, stats, eps, warmup_iters, outlier_filtration, compensation_floor,
                   allow_complex=True) -> UnifiedNormStep:
    """From this batch's quadratic mean ``q`` ``(C,)`` (unused with ``stats``): the statistic ``sigma^2`` of a
    training step (``state``), of evaluation (``stats``) or of a stateless call, with ``w``, ``r`` and the new
    window (the O(C) part of the forward, shared by every backend; the module docstring has the rules)."""
    num_channels = x.shape[1]  # q is not read in evaluation (it may be None there)
    ones = np.ones(num_channels, np.empty(0, x.dtype).real.dtype)
    t, skip, outlier, window = None, True, False, None
    if stats is not None:
        if state is not None:
            raise ValueError("pass either state (a training step) or stats (evaluation), not both")
        _, var = check_stats(stats, (num_channels,), x, need_mean=False, allow_complex=allow_complex)
        sigma2, weight, r = var, 0.0, ones
    elif state is None:
        sigma2, weight, r = q, 1.0, ones
    else:
        state = _check_state(state, num_channels)
        t = state.iters + 1
        size = state.buffer_x2.shape[0]
        skip = size <= 1
        before = state.buffer_x2
        window = before.astype(np.result_type(before.dtype, q.dtype), copy=True)
        window[t % size] = q
        if outlier_filtration and t >= warmup_iters and _is_outlier(before, window):
            window[t % size] = state.running_var
            skip = outlier = True
        if t <= size or t < warmup_iters or skip:
            sigma2, weight = q, 1.0
        else:
            sigma2 = _geometric_mean(window)
            weight = cast_like(x, sigma2 / (size * q))
        if t <= max(compensation_floor, warmup_iters) or skip:
            r = ones
        else:  # a backward-only quantity: taken from real parts so a complex-step probe cannot reach the clip
            ratio = np.sqrt(sigma2.real + eps) / np.sqrt(state.running_var.real + eps)
            r = np.clip(ratio, *R_CLIP).astype(ones.dtype)
    sigma2 = cast_like(x, np.asarray(sigma2))  # the float64 window must not promote float32 input
    return UnifiedNormStep(sigma2, weight, r, t, skip, outlier, window)


def unified_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, state=None, warmup_iters=4000,
                         outlier_filtration=False, compensation_floor=1000, stats=None, pad_mask=None):
    """One UN forward: a training step (``state`` given), evaluation (``stats``), or plain batch statistics.

    Args:
        x: ``(N, C, *spatial)``.
        gamma, beta: ``(C,)`` or ``None``.
        eps: added inside the square root.
        state: a :class:`UnifiedNormState` before this step (training), or ``None``.
        warmup_iters: ``T_w`` (keep ``T_w >= W_f``; the layer enforces it).
        outlier_filtration: run the adaptive outlier filter (the repo: False for NLP, True for vision).
        compensation_floor: ``r = 1`` while ``t <= max(compensation_floor, T_w)`` (the code's 1000).
        stats: ``(None, running_var)`` for evaluation (then ``state`` must be ``None``).
        pad_mask: ``None`` or bool ``(N, *spatial)``, ``True`` = padding.

    Returns:
        ``(y, cache)``; the new forward state is :func:`update_state` of ``state`` and ``cache``.

    Examples:
        >>> x = np.random.default_rng(0).normal(size=(32, 3, 4))
        >>> y, cache = unified_norm_forward(x, state=initial_state(3, 2), warmup_iters=2)
        >>> cache.iters, cache.stat_weight, bool(np.allclose((y ** 2).mean(axis=(0, 2)), 1, atol=1e-4))
        (1, 1.0, True)
    """
    x, gamma, beta, eps, warmup_iters, compensation_floor, keep, count = unified_norm_args(
        x, gamma, beta, eps=eps, warmup_iters=warmup_iters, compensation_floor=compensation_floor,
        pad_mask=pad_mask)
    num_channels = x.shape[1]
    stat_shape = (1, num_channels) + (1,) * (x.ndim - 2)
    batch_q = masked_mean_square(x, keep, count)
    step = step_statistic(x, batch_q.reshape(num_channels), state=state, stats=stats, eps=eps,
                          warmup_iters=warmup_iters, outlier_filtration=outlier_filtration,
                          compensation_floor=compensation_floor)
    weight = step.stat_weight if isinstance(step.stat_weight, float) else step.stat_weight.reshape(stat_shape)
    y, norm = normalize_forward(x, gamma, beta, reduce_axes=(0,) + tuple(range(2, x.ndim)),
                                param_view_shape=stat_shape, eps=eps, center=False,
                                stats=(None, step.sigma2.reshape(stat_shape)))
    cache = UnifiedNormCache(norm=norm, batch_q=batch_q, keep=keep, count=count, stat_weight=weight,
                             iters=step.iters, skip=step.skip, outlier=step.outlier, r=step.r.reshape(stat_shape),
                             buffer_x2=step.buffer_x2, warmup_iters=warmup_iters)
    return y, cache


def update_state(state: UnifiedNormState, cache: UnifiedNormCache, *, momentum=0.9) -> UnifiedNormState:
    """The forward buffers after the training step that made ``cache`` (any backend's: it reads ``iters``,
    ``sigma2``, ``buffer_x2`` and ``outlier``); ``momentum`` weighs the **old** value."""
    momentum = check_fraction(momentum, "momentum")
    if cache.iters is None:
        raise ValueError("cache is not from a training step (unified_norm_forward was called without state)")
    sigma2 = cache.sigma2.reshape(-1)
    running_var = momentum * state.running_var + (1.0 - momentum) * sigma2
    if not np.iscomplexobj(running_var):
        running_var = running_var.astype(state.running_var.dtype, copy=False)
    return UnifiedNormState(cache.iters, running_var, cache.buffer_x2, state.skip_counter + int(cache.outlier))


def unified_norm_backward(dy, cache: UnifiedNormCache):
    """Exact gradients of :func:`unified_norm_forward` as computed: ``(dx, dgamma, dbeta)``."""
    norm = cache.norm
    dx, dgamma, dbeta = normalize_backward(dy, norm)  # rstd·g: sigma^2 held fixed
    if np.any(cache.stat_weight != 0.0):  # add the path through this step's q
        dy = np.asarray(dy).reshape(norm.xhat.shape)
        g = dy if norm.gamma_b is None else dy * norm.gamma_b
        lam = (g * norm.xhat).sum(axis=norm.reduce_axes, keepdims=True) / cache.count
        z_kept = norm.xhat if cache.keep is None else norm.xhat * cache.keep
        dx = dx - norm.rstd * cache.stat_weight * z_kept * lam
    return dx, dgamma, dbeta


def unified_norm_backward_approx(dy, cache: UnifiedNormCache, grad_state: UnifiedNormGradState, *, momentum=0.9):
    """The code's gradient rule (a surrogate) with its windowed statistics; returns the new backward state.

    Args:
        dy: ``(N, C, *spatial)``.
        cache: from a training step of :func:`unified_norm_forward` (``state`` given).
        grad_state: ``(ema_gz (C,), buffer_gz (W_b, C))`` before this backward.
        momentum: weight of the **old** value of ``ema_gz``.

    Returns:
        ``(dx, dgamma, dbeta, new_grad_state)``; nothing is mutated.
    """
    momentum = check_fraction(momentum, "momentum")
    if cache.iters is None:
        raise ValueError("the approximate backward needs a cache from a training step (state given)")
    norm = cache.norm
    num_channels = norm.xhat.shape[1]
    grad_state = check_grad_state(grad_state, num_channels)
    dy = as_array(dy, "dy")
    _, _, dbeta = normalize_backward(dy, norm)
    dy = dy.reshape(norm.xhat.shape)
    z, axes = norm.xhat, norm.reduce_axes
    g = (dy if norm.gamma_b is None else dy * norm.gamma_b) * cache.r  # gradient compensation
    lam = (g * z).mean(axis=axes).reshape(num_channels)  # over all positions, padding included
    subtract, new_state = gradient_statistic(lam, grad_state, iters=cache.iters, skip=cache.skip,
                                             warmup_iters=cache.warmup_iters, momentum=momentum)
    a = g - subtract.reshape(cache.batch_q.shape) * z
    dgamma = None if norm.gamma_b is None else (dy * cache.r * z).sum(axis=norm.param_axes).reshape(num_channels)
    dx = (norm.rstd * a).astype(z.dtype, copy=False)  # float64 state must not promote float32 input
    return dx, dgamma, dbeta, new_state


def check_grad_state(grad_state, num_channels: int, *, allow_complex=True) -> UnifiedNormGradState:
    """Validate the surrogate's backward state: ``ema_gz`` ``(C,)`` and ``buffer_gz`` ``(W_b, C)``, as arrays."""
    if not isinstance(grad_state, UnifiedNormGradState):
        raise TypeError(f"grad_state must be a UnifiedNormGradState, got {type(grad_state).__name__}")
    ema_gz = as_array(grad_state.ema_gz, "ema_gz", allow_complex=allow_complex)
    window = as_array(grad_state.buffer_gz, "buffer_gz", allow_complex=allow_complex)
    if ema_gz.shape != (num_channels,) or window.ndim != 2 or window.shape[1] != num_channels:
        raise ValueError(f"grad_state must hold ema_gz ({num_channels},) and buffer_gz (window, {num_channels}), "
                         f"got {ema_gz.shape} and {window.shape}")
    return UnifiedNormGradState(ema_gz, window)


def gradient_statistic(lam, grad_state: UnifiedNormGradState, *, iters: int, skip: bool, warmup_iters: int,
                       momentum: float):
    """The surrogate's O(C) bookkeeping, shared by every backend: from this step's ``lambda`` ``(C,)``, what the
    rule subtracts (``lambda_bar`` on a skipped step, the updated ``E`` otherwise) and the new backward state (in
    ``ema_gz``'s dtype unless complex). ``grad_state`` is validated (:func:`check_grad_state`); nothing is mutated."""
    ema_gz, window = grad_state
    t, size = iters, window.shape[0]
    window = window.astype(np.result_type(window.dtype, lam.dtype), copy=True)
    window[t % size] = ema_gz if skip else lam
    if t <= size or t < warmup_iters or skip:
        lam_bar = lam
    else:
        lam_bar = window.mean(axis=0)
    ema_new = momentum * ema_gz + (1.0 - momentum) * lam_bar
    subtract = lam_bar if skip else ema_new
    if not np.iscomplexobj(ema_new):
        ema_new, window = ema_new.astype(ema_gz.dtype, copy=False), window.astype(ema_gz.dtype, copy=False)
    return subtract, UnifiedNormGradState(ema_new, window)


register("unified_norm", "numpy", unified_norm_forward, unified_norm_backward)
# UN whose backward is the surrogate: called as get_impl(...).backward(dy, cache, grad_state, momentum=...), so that
# normref.nn.UnifiedNorm(backward="approx") runs it on the backend the forward ran on.
register("unified_norm_approx", "numpy", unified_norm_forward, unified_norm_backward_approx)
