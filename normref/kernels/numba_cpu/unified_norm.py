r"""Unified Normalization on the Numba CPU backend: forward, exact backward and the paper's surrogate, as ``"numba"``.

The math (the batch quadratic mean ``q``, the forward window and its geometric mean, the outlier filter, the gradient
compensation ``r``, the exact backward through this step's ``q``, the surrogate with its windowed backward statistic)
is in :mod:`normref.ops.unified_norm`; this module computes the same functions with fused passes:

* ``unified_norm_forward`` and the **exact** ``unified_norm_backward``, with or without ``pad_mask``, in every mode
  (stateless batch statistics, a training step in warmup, a smoothed step, an outlier step, evaluation), registered
  as op ``"unified_norm"``;
* the code's surrogate ``unified_norm_backward_approx`` (same signature and return as the reference's, the new
  :class:`~normref.ops.unified_norm.UnifiedNormGradState` included), registered as op ``"unified_norm_approx"``,
  which :class:`normref.nn.UnifiedNorm` with ``backward="approx"`` looks up for the backend its forward ran on (the
  pattern of :mod:`.power_norm`).

What stays NumPy, shared with the reference
-------------------------------------------
Everything that is O(C) or O(W·C) is the reference's own code, called from here: the validation
(:func:`~normref.ops.unified_norm.unified_norm_args`, the padding mask included), the step's statistic, ``w``, ``r``
and the new window (:func:`~normref.ops.unified_norm.step_statistic`: warmup, geometric mean, outlier filter), the
forward state update (:func:`~normref.ops.unified_norm.update_state`, which reads ``iters``, ``sigma2``,
``buffer_x2`` and ``outlier`` from either backend's cache), and the surrogate's window and EMA
(:func:`~normref.ops.unified_norm.gradient_statistic`). So the state handling is the reference's by construction,
and only the O(N·C·S) passes are kernels.

Layout and passes
-----------------
``x`` ``(N, C, *spatial)`` is viewed as ``N·C`` rows of length ``S`` (row ``n·C + c`` is sample ``n``, channel
``c``). A ``pad_mask`` (``True`` = padding) is kept as ``keep`` ``(N, S)`` in ``x``'s dtype, 1 at kept positions and
0 at padding (``1/C`` of ``x``); multiplying by it is exact. Reductions run over a fixed number of **row chunks**
(``min(N·C, 32)``, :func:`._common.chunk_count`), chunk ``k`` owning row ``k`` of ``(chunks, C)`` float64 partials,
which the caller then sums over the chunks in a fixed order (two-stage, so bitwise the same on any thread count);
within a row the sums are :mod:`._common`'s lane-blocked ones (float32 blocks flushed into float64).
Elementwise passes are ``prange`` over rows.

* **forward pass 1** (chunks; training steps and stateless calls only): ``Σ_s (x·κ)²`` per row
  (:func:`._common.sum_squares`; with a mask the row times ``keep`` is formed in a scratch row first), so
  ``q = Σ_kept x² / m``. Evaluation divides by the given statistic and skips this pass (its cache has
  ``batch_q = None``).
* then, in NumPy, :func:`~normref.ops.unified_norm.step_statistic`: ``σ²``, ``w``, ``r``, the window;
  ``rstd = (σ² + ε)^(-1/2)`` ``(C,)`` float64.
* **forward pass 2** (rows): ``y = (x·rstd)·γ + β``, at every position (padding is normalized and output too, as in
  the reference).
* **backward pass 1** (chunks), both backwards: ``P_c = Σ_p dy·x`` and ``Q_c = Σ_p dy`` over all positions
  (:func:`._common.dot_sum`); ``dβ = Q``.
* **backward pass 2** (rows): ``dx = a_c·dy − b_c·κ·x``, with the per-channel coefficients below computed in float64
  and rounded once to the storage dtype.

So the forward reads ``x`` twice and writes ``y`` (evaluation: reads ``x`` once); either backward reads ``x`` and
``dy`` twice and writes ``dx``; a mask adds a read of ``keep`` (``1/C`` of ``x``) to forward pass 1 and the exact
backward's pass 2. The surrogate costs exactly the exact backward's passes: its statistic
``λ = mean_all(ĝ z)`` is ``r γ rstd P / M``, per channel, from pass 1.

Coefficients, in the reference's symbols
----------------------------------------
With ``z = x·rstd``, ``g = γ dy``, ``P = Σ_{all p} dy·x`` (so ``Σ g z = γ·rstd·P``), ``m`` the kept count and
``M = N·S`` all positions:

* exact (:func:`unified_norm_backward`): ``dx = rstd·(g − w κ z Σ g z / m)``, so
  ``a = rstd·γ``, ``b = w·γ·rstd³·P/m``, ``κ = keep`` (the statistic's path reaches only kept positions);
  ``w = 1`` (warmup, window 1, outlier step, stateless), ``σ²/(W_f q)`` (geometric mean), ``0`` (evaluation:
  ``b = 0``). ``dγ = rstd·P``.
* surrogate (:func:`unified_norm_backward_approx`): ``ĝ = r γ dy``, ``λ = r γ rstd P / M`` (all positions,
  padding included, as the code), ``s`` = what :func:`~normref.ops.unified_norm.gradient_statistic` returns (``λ̄``
  on a skipped step, the updated ``E`` otherwise), ``dx = rstd·(ĝ − s z)``: ``a = rstd·r·γ``, ``b = rstd²·s``,
  ``κ = 1``. ``dγ = Σ dy r z = r·rstd·P``.

An absent ``γ`` is ones (exact); its gradient is computed and dropped. Complex input (``x``, ``dy``, ``γ``, ``β``,
given statistics, the state's arrays, ``grad_state``) raises ``TypeError``; a non-contiguous ``x`` or ``dy`` is copied
first. Without spatial axes (``(N, C)`` input, ``S = 1``) every row has length 1: correct but slow (a channels-last
kernel would be the fast layout there; the code's ``(B, T, C)`` passed as ``x.transpose(0, 2, 1)`` is copied to
``(B, C, T)`` once by the boundary).

Rounding against the reference: the sums are float64 here (the reference sums in the storage dtype), ``q`` with a
mask is ``Σ_kept/m`` (the reference: ``mean_all(x²·keep)·M/m``), ``rstd`` is float64 from ``σ²`` in the storage
dtype (the reference: in the storage dtype), ``λ`` is formed from ``P`` instead of ``mean(ĝ z)``, and ``dx`` from
the two coefficients instead of ``rstd·(g − …)``. Each differs from the reference only by rounding (float64: ~1e-15
relative; float32: ~1e-7, the bounds of :mod:`._common`); the tests hold them to 1e-12 and 1e-5.

Measured
--------
32 MiB of float32, ``x`` ``(32, 256, 1024)``, ``γ`` and ``β`` given, a smoothed training step past warmup
(``W_f = 4``, geometric mean, ``r ≠ 1``), timing each call of the public functions (fresh ``y`` and ``dx``) with
``time.perf_counter``, 41 interleaved rounds, medians (p10 - p90). The 2-core machine was shared (load average
1.2 - 1.6 during the runs: another process held about one core), which is why two threads were no faster than one:

==========================================  =========================  =========================
                                            2 threads                  1 thread
==========================================  =========================  =========================
NumPy reference, forward                    43.3 ms (39.2 - 47.0)      40.2 ms (37.5 - 43.6)
NumPy, forward + exact backward             124.2 ms (117.9 - 140.8)   128.1 ms (116.7 - 167.5)
NumPy, forward + surrogate backward         194.6 ms (171.2 - 269.8)   190.7 ms (177.6 - 274.7)
this backend, forward                       19.6 ms (16.4 - 25.3)      10.7 ms (9.6 - 12.6)
this backend, forward + exact backward      44.3 ms (36.0 - 48.1)      25.8 ms (23.8 - 28.4)
this backend, forward + surrogate backward  41.6 ms (36.8 - 48.1)      26.4 ms (24.2 - 30.3)
``np.copy(x)``                              11.2 ms (9.6 - 15.6)       5.7 ms (5.1 - 6.4)
==========================================  =========================  =========================

So 2.8× (exact) and 4.7× (surrogate) faster than NumPy on two threads under that load, 5.0× and 7.2× on one. An
earlier 2-thread run at load 0.4 gave forward 14.2 ms (p10 6.8), forward + exact backward 37.1 ms (p10 17.3):
bimodal, a parallel region waiting for a descheduled worker (:mod:`._common`, ``PARALLEL_MIN_BYTES``). The kernels
alone, outputs preallocated and touched, 1 thread, medians: forward pass 1 2.7 ms, pass 2 4.2 ms, backward pass 1
5.3 ms, pass 2 5.8 ms, against 5.0 ms for ``np.copyto`` of the array: each pass is at the memory's pace, so the
remaining cost of a call is its passes (two reads of ``x`` in the forward, two of ``x`` and ``dy`` in the backward)
and the first touch of the fresh outputs; ``out=`` skips the latter.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ..._validate import check_fraction
from ...ops.unified_norm import (UnifiedNormState, check_grad_state, gradient_statistic, step_statistic,
                                 unified_norm_args)
from ._common import (LANES, backward_arrays, chunk_count, dot_sum, kernel_affine, output_like, present_gradients,
                      sum_squares, threads_for)



class NumbaUnifiedNormCache(NamedTuple):
    """What both backwards and :func:`normref.ops.unified_norm.update_state` need. ``K`` = ``(1, C, 1, ...)``."""

    x: np.ndarray  # (N·C, S) the contiguous input, rows n·C + c
    x_shape: tuple[int, ...]
    rstd: np.ndarray  # (C,) float64 (σ² + ε)^-1/2 of the statistic the forward divided by
    gamma: np.ndarray  # (C,) kernel gamma (ones when absent)
    has_gamma: bool
    has_beta: bool
    sigma2: np.ndarray  # (K) x's dtype: the statistic used (update_state folds it into running_var)
    batch_q: np.ndarray | None  # (K) x's dtype: the batch quadratic mean over kept positions; None in evaluation
    keep: np.ndarray  # (N, S) x's dtype, 1 = kept, 0 = padding; (0, S) without a mask
    count: int  # m, the number of non-padding positions
    stat_weight: np.ndarray  # (C,) float64 w = dσ²/dq (zeros in evaluation)
    iters: int | None  # t of this training step; None for a stateless call or evaluation
    skip: bool
    outlier: bool
    r: np.ndarray  # (C,) float64 gradient compensation
    buffer_x2: np.ndarray | None  # (W_f, C) the forward window after this step
    warmup_iters: int
    backend: str = "numba"


@njit(parallel=True, fastmath=False, cache=True)
def sumsq_kernel(x, channels, keep, part):
    """``part[k, c] += Σ_s (x[row, s]·κ)²`` over the rows of chunk ``k`` (row ``n·C + c``; ``κ = keep[n]``, or 1
    when ``keep`` is empty); ``part`` ``(chunks, C)`` float64, zeroed by the caller."""
    rows, size = x.shape
    masked = keep.shape[0] > 0
    chunks = part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    for k in prange(chunks):  # chunk k owns row k of the partials
        lanes, wide = np.empty(LANES, x.dtype), np.empty(LANES)
        xk = np.empty(size if masked else 0, x.dtype)
        for row in range(k * per_chunk, min(rows, (k + 1) * per_chunk)):
            c = row % channels
            xr = x[row]
            if masked:  # padding out (x·0 = 0 exactly), then the same lane-blocked sum
                kn = keep[row // channels]
                for j in range(size):
                    xk[j] = xr[j] * kn[j]
                part[k, c] += sum_squares(xk, lanes, wide)
            else:
                part[k, c] += sum_squares(xr, lanes, wide)


@njit(parallel=True, fastmath=False, cache=True)
def apply_kernel(x, channels, rstd, gamma, beta, y):
    """``y = (x·rstd_c)·γ_c + β_c`` on the ``(N·C, S)`` rows."""
    rows, size = x.shape
    for row in prange(rows):  # iteration row owns y[row]
        c = row % channels
        r, g, b = x.dtype.type(rstd[c]), gamma[c], beta[c]
        xr, yr = x[row], y[row]
        for j in range(size):
            yr[j] = (xr[j] * r) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def sums_kernel(x, dy, channels, p_part, q_part):
    """Per-chunk sums over positions of ``dy·x`` and ``dy`` per channel, ``(chunks, C)`` float64 each (zeroed)."""
    rows = x.shape[0]
    chunks = p_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    for k in prange(chunks):  # chunk k owns row k of the partials
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        for row in range(k * per_chunk, min(rows, (k + 1) * per_chunk)):
            c = row % channels
            p, q = dot_sum(dy[row], x[row], x.dtype.type(0), lanes, wide)
            p_part[k, c] += p
            q_part[k, c] += q


@njit(parallel=True, fastmath=False, cache=True)
def dx_kernel(x, dy, channels, a, b, keep, dx):
    """``dx = a_c·dy − b_c·(x·κ)`` on the rows (``κ = keep[n]``, or 1 when ``keep`` is empty); ``a``, ``b`` float64,
    rounded once to the storage dtype."""
    rows, size = x.shape
    masked = keep.shape[0] > 0
    for row in prange(rows):  # iteration row owns dx[row]
        c = row % channels
        ac, bc = x.dtype.type(a[c]), x.dtype.type(b[c])
        xr, dyr, dxr = x[row], dy[row], dx[row]
        if masked:
            kn = keep[row // channels]
            for j in range(size):
                dxr[j] = ac * dyr[j] - bc * (xr[j] * kn[j])
        else:
            for j in range(size):
                dxr[j] = ac * dyr[j] - bc * xr[j]


def _real_state(state) -> None:
    """Refuse a complex forward state (the reference accepts one for the complex step)."""
    if isinstance(state, UnifiedNormState):
        for name in ("running_var", "buffer_x2"):
            if np.iscomplexobj(getattr(state, name)):
                raise TypeError(f"state.{name} must be real on the Numba backends ('numba', 'numba-fast'), got a "
                                f"complex array")


def unified_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, state=None, warmup_iters=4000,
                         outlier_filtration=False, compensation_floor=1000, stats=None, pad_mask=None, out=None):
    """Like :func:`normref.ops.unified_norm.unified_norm_forward`; returns ``(y, NumbaUnifiedNormCache)``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    The new forward state is :func:`normref.ops.unified_norm.update_state` of ``state`` and the cache, as there.
    """
    a = unified_norm_args(x, gamma, beta, eps=eps, warmup_iters=warmup_iters,
                          compensation_floor=compensation_floor, pad_mask=pad_mask, allow_complex=False)
    _real_state(state)
    x = np.ascontiguousarray(a.x)
    batch, channels = x.shape[:2]
    size = math.prod(x.shape[2:])
    keep = np.empty((0, size), x.dtype) if a.keep is None else np.ascontiguousarray(a.keep.reshape(batch, size))
    x2 = x.reshape(batch * channels, size)
    q = None
    if stats is None:  # evaluation divides by the given statistic: no pass over x for q
        part = np.zeros((chunk_count(x2.shape[0]), channels))
        with threads_for(x.nbytes):
            sumsq_kernel(x2, channels, keep, part)
        q = (part.sum(axis=0) / a.count).astype(x.dtype)  # stage 2: a fixed-order sum over the chunks
    step = step_statistic(x, q, state=state, stats=stats, eps=a.eps, warmup_iters=a.warmup_iters,
                          outlier_filtration=outlier_filtration, compensation_floor=a.compensation_floor,
                          allow_complex=False)
    rstd = 1.0 / np.sqrt(step.sigma2.astype(np.float64) + a.eps)
    g, b = kernel_affine(x, a.gamma, a.beta, channels)
    y = output_like(x, out)
    with threads_for(x.nbytes):
        apply_kernel(x2, channels, rstd, g, b, y.reshape(x2.shape))
    stat_shape = (1, channels) + (1,) * (x.ndim - 2)
    weight = np.array(np.broadcast_to(step.stat_weight, (channels,)), dtype=np.float64)
    cache = NumbaUnifiedNormCache(
        x=x2, x_shape=tuple(x.shape), rstd=rstd, gamma=g, has_gamma=a.gamma is not None, has_beta=a.beta is not None,
        sigma2=step.sigma2.reshape(stat_shape), batch_q=None if q is None else q.reshape(stat_shape), keep=keep,
        count=a.count, stat_weight=weight, iters=step.iters, skip=step.skip, outlier=step.outlier,
        r=step.r.astype(np.float64), buffer_x2=step.buffer_x2, warmup_iters=a.warmup_iters)
    return y, cache


def _dy_sums(dy, cache: NumbaUnifiedNormCache, out):
    """Backward pass 1: ``(dy2, dx, P, Q)`` with ``P = Σ dy·x``, ``Q = Σ dy`` ``(C,)`` float64 over all positions."""
    x2 = cache.x
    channels = cache.rstd.size
    dy2, dx = backward_arrays(dy, x2, cache.x_shape, out)
    parts = np.zeros((2, chunk_count(x2.shape[0]), channels))
    with threads_for(x2.nbytes):
        sums_kernel(x2, dy2, channels, parts[0], parts[1])
    p, q = parts.sum(axis=1)  # stage 2: a fixed-order sum over the chunks
    return dy2, dx, p, q


def unified_norm_backward(dy, cache: NumbaUnifiedNormCache, *, out=None):
    """Exact gradients ``(dx, dgamma, dbeta)``, like :func:`normref.ops.unified_norm.unified_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    x2 = cache.x
    dy2, dx, p, q = _dy_sums(dy, cache, out)
    rstd, gamma = cache.rstd, cache.gamma
    a = rstd * gamma  # dx = rstd·(g − w κ z Σ g z / m), Σ g z = γ·rstd·P
    b = cache.stat_weight * gamma * rstd ** 3 * p / cache.count
    with threads_for(x2.nbytes):
        dx_kernel(x2, dy2, rstd.size, a, b, cache.keep, dx.reshape(x2.shape))
    return (dx, *present_gradients(cache, rstd * p, q))


def unified_norm_backward_approx(dy, cache: NumbaUnifiedNormCache, grad_state, *, momentum=0.9, out=None):
    """The code's gradient rule (a surrogate), like :func:`normref.ops.unified_norm.unified_norm_backward_approx`.

    Args:
        dy: ``(N, C, *spatial)``.
        cache: from a training step of :func:`unified_norm_forward` (``state`` given).
        grad_state: real ``(ema_gz (C,), buffer_gz (W_b, C))`` before this backward.
        momentum: weight of the **old** value of ``ema_gz``.
        out: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.

    Returns:
        ``(dx, dgamma, dbeta, new_grad_state)``; nothing is mutated.
    """
    momentum = check_fraction(momentum, "momentum")
    if cache.iters is None:
        raise ValueError("the approximate backward needs a cache from a training step (state given)")
    x2 = cache.x
    channels = cache.rstd.size
    grad_state = check_grad_state(grad_state, channels, allow_complex=False)
    dy2, dx, p, q = _dy_sums(dy, cache, out)
    rstd, gamma = cache.rstd, cache.gamma
    rz = cache.r * rstd
    lam = gamma * rz * p / (x2.size // channels)  # mean over all positions of ĝ z = r γ rstd P / M
    subtract, new_state = gradient_statistic(lam, grad_state, iters=cache.iters, skip=cache.skip,
                                             warmup_iters=cache.warmup_iters, momentum=momentum)
    a = rz * gamma  # dx = rstd·(ĝ − s z)
    b = rstd * rstd * subtract
    no_mask = np.empty((0, x2.shape[1]), x2.dtype)  # the rule subtracts s z at every position
    with threads_for(x2.nbytes):
        dx_kernel(x2, dy2, channels, a, b, no_mask, dx.reshape(x2.shape))
    return (dx, *present_gradients(cache, rz * p, q), new_state)


register("unified_norm", "numba", unified_norm_forward, unified_norm_backward)
register("unified_norm_approx", "numba", unified_norm_forward, unified_norm_backward_approx)
