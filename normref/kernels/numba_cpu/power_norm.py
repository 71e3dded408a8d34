r"""PowerNorm on the Numba CPU backend: forward, exact backward and the paper's surrogate, registered as ``"numba"``.

The math (GroupScaling, the per-channel quadratic mean ``q``, warmup vs. running statistic, the exact backward, the
surrogate with its running ``ema_gz``, the padding mask) is in :mod:`normref.ops.power_norm`; this module computes
the same functions with fused passes:

* ``power_norm_forward`` and the **exact** ``power_norm_backward``, with or without ``pad_mask``, registered as op
  ``"power_norm"``;
* the paper's surrogate ``power_norm_backward_approx`` (same signature and return as the reference's, the updated
  ``ema_gz`` included), registered as op ``"power_norm_approx"`` (see "Registration" below).

Layout and passes
-----------------
``x`` ``(N, C, *spatial)`` is viewed as ``(N, C, S)``; a position is ``(n, s)``. GroupScaling's RMS runs over the
``C/G`` channels of a group at one position, which in memory are ``S`` apart, so it is computed for all ``S``
positions of a ``(sample, group)`` block at once: an elementwise (vectorized) accumulation
``acc[s] += x[n, c, s]²`` over the group's channels, then ``sc[n, k, s] = (acc[s]/(C/G) + 1e-5)^(-1/2)``, stored
(``N·G·S`` values, ``1/(C/G)`` of ``x``) in the storage dtype, as the reference's GroupScaling ``rstd``.
A ``pad_mask`` (``True`` = padding, validated by the reference's :func:`normref.ops.power_norm.position_mask`) is
kept as ``keep`` ``(N, S)`` in ``x``'s dtype, 1 at kept positions and 0 at padding (``N·S`` values, ``1/C`` of
``x``); multiplying by it is exact.

* forward pass 1 (``prange`` over a fixed number of sample chunks): ``sc`` and, per channel, the partial sums of
  ``x'² = (x·sc)²`` over **all** positions and (with a mask) over the **kept** ones (the slice times ``keep``, summed
  again in cache; lane-blocked :func:`._common.sum_squares`), chunk ``c`` owning row ``c`` of two ``(chunks, C)``
  float64 arrays; the caller sums the chunks in a fixed order: ``q = Σ_kept/m`` (``m`` kept positions, ``M = N·S``
  without a mask), and ``Σ_all x'²`` stays in the cache for the surrogate.
* forward pass 2 (``prange`` over ``(n, c)``): ``y = ((x·sc)·rstd_c)·γ + β``, ``rstd = (ψ² + eps)^(-1/2)``, at every
  position: padding is normalized and output too, as in the reference.
* backward pass 1 (sample chunks), both backwards: per channel ``Σ dy·x'`` and ``Σ dy`` over all positions
  (:func:`._common.dot_sum`) into chunk partials; then ``dγ = rstd·Σ dy x'``, ``dβ = Σ dy``.
* backward pass 2 (``prange`` over ``(n, k)`` blocks): ``dx' = r_d·(g - κ·z·Λ)`` with ``g = γ dy``, ``z = x'·rstd``,
  written into ``dx`` while ``t[s] = Σ_{c∈k} dx'·x'`` accumulates elementwise; then, over the block again (in
  cache), GroupScaling's backward ``dx = sc·(dx' - x'·t/(C/G))``. What ``r_d``, ``κ`` and ``Λ`` are:

  - exact: ``r_d = rstd``; in warmup ``Λ_c = γ_c·rstd_c·Σ dy x'/m`` (the sum over all positions, divided by the
    kept count) and ``κ = keep`` (the statistic's path reaches only kept positions), ``Λ = 0`` with a given
    statistic;
  - surrogate: ``Λ = ν = (1-α_b)·E`` (the old ``ema_gz``) at every position (``κ = 1``, padding included, as the
    reference), ``r_d = (q + eps)^(-1/2)`` (``denominator="batch"``, the code's) or ``rstd``
    (``denominator="forward"``). The new ``E = E_old + (Σ g z - ν Σ z²)/M`` needs only per-channel sums:
    ``Σ g z = γ·rstd·Σ dy x'`` from pass 1 and ``Σ z² = rstd²·Σ_all x'²`` from the forward, so the surrogate costs
    exactly the exact backward's two passes.

Memory sees the forward read ``x`` twice and write ``y``; either backward read ``x`` and ``dy`` twice and write
``dx`` (the statistic over all positions sits between the passes). A mask adds a read of ``keep`` (``1/C`` of
``x``) to forward pass 1 and backward pass 2, and one more in-cache sum per slice in forward pass 1. Without
spatial axes (``(N, C)`` input, ``S = 1``) every inner loop has length 1: correct, but slow; a channels-last kernel
would be the fast layout for that case. The sample chunks are at most ``min(N, 32)``, so a single sample (``N = 1``)
runs pass 1 on one thread. Complex input (``x``, ``dy``, ``gamma``, ``beta``, given statistics, ``ema_gz``) raises
``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.

Rounding against the reference: the per-channel sums are float64 here (the reference sums in the storage dtype),
``q`` with a mask is ``Σ_kept/m`` (the reference: ``mean_all(x'²·keep)·M/m``), and the surrogate's ``E`` update is
formed from the two sums above instead of ``mean(A·z)``; each differs from the reference only by rounding (float64:
~1e-15 relative; float32: ~1e-7, the bounds of :mod:`._common`).

Registration
------------
``register("power_norm_approx", backend, power_norm_forward, power_norm_backward_approx)`` (here and, for
``"numpy"``, in :mod:`normref.ops.power_norm`): the op ``"power_norm_approx"`` is PowerNorm whose backward is the
paper's rule. Its backward takes ``ema_gz`` (and returns the new one), so it is called as
``get_impl("power_norm_approx", cache.backend).backward(dy, cache, ema_gz, alpha_bkw=...)``, which is what
:class:`normref.nn.PowerNorm` with ``backward="approx"`` does: the surrogate runs on the backend the forward ran on,
and a backend without it raises ``NotImplementedError`` naming the ones that have it (``F.backward``, which passes no
``ema_gz``, is not the way to call it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ..._validate import as_array, check_fraction, check_ndim, check_nonempty, check_positive_float, check_stats
from ...ops.group_norm import check_groups
from ...ops.power_norm import GROUP_SCALING_EPS, position_mask
from ._common import (LANES, as_kernel_array, backward_arrays, chunk_count, dot_sum, kernel_affine, output_like,
                      present_gradients, real_affine, real_stats, sum_squares, threads_for)


class NumbaPowerNormCache(NamedTuple):
    """What both backward passes need on this backend. ``K`` = ``(1, C, 1, ...)``."""

    x: np.ndarray  # (N, C, S) the contiguous input
    x_shape: tuple[int, ...]
    scale: np.ndarray  # (N, G, S) GroupScaling's factors (mean over the group of x² + 1e-5)^-1/2, x's dtype
    rstd: np.ndarray  # (C,) float64 (ψ² + eps)^-1/2 of the statistic the forward divided by
    gamma: np.ndarray  # (C,) kernel gamma (ones when absent)
    has_gamma: bool
    has_beta: bool
    batch_q: np.ndarray  # (K) x's dtype: the batch quadratic mean of the group-scaled input (the running update)
    count: int  # m, the number of non-padding positions (M = N·S without a mask)
    batch_stats: bool  # the forward divided by batch_q (warmup)
    keep: np.ndarray  # (N, S) x's dtype, 1 = kept, 0 = padding; (0, S) without a mask
    batch_rstd: np.ndarray  # (C,) float64 (q + eps)^-1/2 of the batch statistic: the surrogate's "batch" denominator
    sumsq: np.ndarray  # (C,) float64 Σ x'² over all positions, padding included: the surrogate's Σ z² / rstd²
    backend: str = "numba"


@njit(parallel=True, fastmath=False, cache=True)
def scaling_kernel(x, groups, keep, scale, all_part, kept_part):
    """GroupScaling factors ``scale`` ``(N, G, S)``; per-chunk sums of ``(x·scale)²`` per channel ``(chunks, C)`` over
    all positions (``all_part``) and over the kept ones (``kept_part``: the same numbers when ``keep`` is empty)."""
    batch, channels, size = x.shape
    per_group = channels // groups
    masked = keep.shape[0] > 0
    chunks = all_part.shape[0]
    per_chunk = (batch + chunks - 1) // chunks
    for ch in prange(chunks):  # chunk ch owns its samples' scale[n] and row ch of the partials
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        acc, xp = np.empty(size), np.empty(size, x.dtype)
        for n in range(ch * per_chunk, min(batch, (ch + 1) * per_chunk)):
            for k in range(groups):
                acc[:] = 0.0
                for c in range(k * per_group, (k + 1) * per_group):
                    xc = x[n, c]
                    for j in range(size):  # elementwise over positions: vectorized
                        acc[j] += xc[j] * xc[j]
                sc = scale[n, k]
                for j in range(size):
                    sc[j] = 1.0 / np.sqrt(acc[j] / per_group + GROUP_SCALING_EPS)
                for c in range(k * per_group, (k + 1) * per_group):
                    xc = x[n, c]
                    for j in range(size):
                        xp[j] = xc[j] * sc[j]
                    total = sum_squares(xp, lanes[0], wide[0])
                    all_part[ch, c] += total
                    if masked:  # padding out (x'·0 = 0 exactly), summed again while the slice is in cache
                        kn = keep[n]
                        for j in range(size):
                            xp[j] *= kn[j]
                        total = sum_squares(xp, lanes[0], wide[0])
                    kept_part[ch, c] += total


@njit(parallel=True, fastmath=False, cache=True)
def apply_kernel(x, scale, rstd, gamma, beta, y):
    """``y = ((x·scale)·rstd_c)·γ_c + β_c`` on ``(N, C, S)``."""
    batch, channels, size = x.shape
    per_group = channels // scale.shape[1]
    for t in prange(batch * channels):  # iteration t owns y[n, c]
        n, c = t // channels, t % channels
        sc, xc, yc = scale[n, c // per_group], x[n, c], y[n, c]
        r, g, b = x.dtype.type(rstd[c]), gamma[c], beta[c]
        for j in range(size):
            yc[j] = ((xc[j] * sc[j]) * r) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def sums_kernel(x, dy, scale, p_part, q_part):
    """Per-chunk sums over positions of ``dy·x'`` and ``dy`` per channel, ``(chunks, C)`` float64 each (zeroed)."""
    batch, channels, size = x.shape
    per_group = channels // scale.shape[1]
    chunks = p_part.shape[0]
    per_chunk = (batch + chunks - 1) // chunks
    for ch in prange(chunks):  # chunk ch owns row ch of the partials
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        xp = np.empty(size, x.dtype)
        for n in range(ch * per_chunk, min(batch, (ch + 1) * per_chunk)):
            for c in range(channels):
                sc, xc = scale[n, c // per_group], x[n, c]
                for j in range(size):
                    xp[j] = xc[j] * sc[j]
                p, q = dot_sum(dy[n, c], xp, x.dtype.type(0), lanes, wide)
                p_part[ch, c] += p
                q_part[ch, c] += q


@njit(parallel=True, fastmath=False, cache=True)
def dx_kernel(x, dy, scale, rstd, rden, gamma, lam, keep, dx):
    """``dx' = rden·(γ dy - κ·z·Λ)`` with ``z = x'·rstd`` and ``κ = keep`` (1 when ``keep`` is empty), then
    GroupScaling's backward ``dx = sc·(dx' - x'·mean_{c∈k}(dx'·x'))``."""
    batch, channels, size = x.shape
    groups = scale.shape[1]
    per_group = channels // groups
    masked = keep.shape[0] > 0
    for t in prange(batch * groups):  # iteration t owns the block dx[n, group k]
        n, k = t // groups, t % groups
        sc = scale[n, k]
        acc = np.zeros(size)
        for c in range(k * per_group, (k + 1) * per_group):
            r, rd = x.dtype.type(rstd[c]), x.dtype.type(rden[c])
            gm, lm = gamma[c], x.dtype.type(lam[c])
            xc, dyc, dxc = x[n, c], dy[n, c], dx[n, c]
            if masked:
                kn = keep[n]
                for j in range(size):
                    xp = xc[j] * sc[j]
                    d = rd * (gm * dyc[j] - ((xp * r) * kn[j]) * lm)
                    dxc[j] = d
                    acc[j] += d * xp
            else:
                for j in range(size):
                    xp = xc[j] * sc[j]
                    d = rd * (gm * dyc[j] - (xp * r) * lm)
                    dxc[j] = d
                    acc[j] += d * xp
        mean_t = np.empty(size, x.dtype)
        for j in range(size):
            mean_t[j] = acc[j] / per_group
        for c in range(k * per_group, (k + 1) * per_group):
            xc, dxc = x[n, c], dx[n, c]
            for j in range(size):
                dxc[j] = sc[j] * (dxc[j] - (xc[j] * sc[j]) * mean_t[j])


def power_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, group_num=1, stats=None, pad_mask=None, out=None):
    """Like :func:`normref.ops.power_norm.power_norm_forward`; returns ``(y, NumbaPowerNormCache)``.

    ``pad_mask``: ``None`` or a bool array ``(N, *spatial)``, ``True`` at padding (excluded from ``q``; padding is
    still normalized and output). ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and
    dtype to write ``y`` into.
    """
    x = as_kernel_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    batch, channels = x.shape[:2]
    group_num = check_groups(group_num, channels)
    gamma, beta = real_affine(x, gamma, beta, (channels,))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    keep, count = position_mask(pad_mask, x)  # the reference's validation; count = m
    size = math.prod(x.shape[2:])
    keep = np.empty((0, size), x.dtype) if keep is None else np.ascontiguousarray(keep.reshape(batch, size))
    x3 = x.reshape(batch, channels, size)
    scale = np.empty((batch, group_num, size), x.dtype)
    parts = np.zeros((2, chunk_count(batch), channels))
    with threads_for(x.nbytes):
        scaling_kernel(x3, group_num, keep, scale, parts[0], parts[1])
    sumsq, kept_sum = parts.sum(axis=1)  # stage 2: a fixed-order sum over the chunks
    batch_q = kept_sum / count
    if stats is None:
        used = batch_q
    else:
        _, phi = real_stats(check_stats(stats, (channels,), x, need_mean=False))
        used = np.array(phi, dtype=np.float64)
    rstd = 1.0 / np.sqrt(used + eps)
    g, b = kernel_affine(x, gamma, beta, channels)
    y = output_like(x, out)
    with threads_for(x.nbytes):
        apply_kernel(x3, scale, rstd, g, b, y.reshape(x3.shape))
    stat_shape = (1, channels) + (1,) * (x.ndim - 2)
    cache = NumbaPowerNormCache(x=x3, x_shape=tuple(x.shape), scale=scale, rstd=rstd, gamma=g,
                                has_gamma=gamma is not None, has_beta=beta is not None,
                                batch_q=batch_q.astype(x.dtype).reshape(stat_shape), count=count,
                                batch_stats=stats is None, keep=keep, batch_rstd=1.0 / np.sqrt(batch_q + eps),
                                sumsq=sumsq)
    return y, cache


def _dy_sums(dy, cache: NumbaPowerNormCache, out):
    """Backward pass 1: ``(dy3, dx, Σ dy·x', Σ dy)``, the sums ``(C,)`` float64 over all positions."""
    x3 = cache.x
    dy3, dx = backward_arrays(dy, x3, cache.x_shape, out)
    parts = np.zeros((2, chunk_count(x3.shape[0]), x3.shape[1]))
    with threads_for(x3.nbytes):
        sums_kernel(x3, dy3, cache.scale, parts[0], parts[1])
    dyxp, dysum = parts.sum(axis=1)  # stage 2: a fixed-order sum over the chunks
    return dy3, dx, dyxp, dysum


def power_norm_backward(dy, cache: NumbaPowerNormCache, *, out=None):
    """Exact gradients ``(dx, dgamma, dbeta)``, like :func:`normref.ops.power_norm.power_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    x3 = cache.x
    dy3, dx, dyxp, dysum = _dy_sums(dy, cache, out)
    dgamma = dyxp * cache.rstd  # Σ dy·z
    # Λ = Σ_all g·z / m, reaching only the kept positions (κ = keep, applied in the kernel)
    lam = cache.gamma * dgamma / cache.count if cache.batch_stats else np.zeros_like(dgamma)
    with threads_for(x3.nbytes):
        dx_kernel(x3, dy3, cache.scale, cache.rstd, cache.rstd, cache.gamma, lam, cache.keep, dx.reshape(x3.shape))
    return (dx, *present_gradients(cache, dgamma, dysum))


def power_norm_backward_approx(dy, cache: NumbaPowerNormCache, ema_gz, *, alpha_bkw=0.9, denominator="batch",
                               out=None):
    """The paper's surrogate, like :func:`normref.ops.power_norm.power_norm_backward_approx` (section 4 there).

    Args:
        dy: ``(N, C, *spatial)``.
        cache: from :func:`power_norm_forward` in training.
        ema_gz: ``(C,)`` real, the code's ``E`` before this backward.
        alpha_bkw: weight of the **old** value in ``[0, 1]``.
        denominator: ``"batch"`` (``sqrt(q + eps)``, the code) or ``"forward"`` (the forward's statistic).
        out: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.

    Returns:
        ``(dx, dgamma, dbeta, new_ema_gz)``, ``new_ema_gz`` in ``ema_gz``'s dtype; nothing is mutated.
    """
    alpha_bkw = check_fraction(alpha_bkw, "alpha_bkw")
    if denominator not in ("batch", "forward"):
        raise ValueError(f"denominator must be 'batch' or 'forward', got {denominator!r}")
    x3 = cache.x
    batch, channels, size = x3.shape
    ema_gz = as_array(ema_gz, "ema_gz", allow_complex=False)
    if ema_gz.shape != (channels,):
        raise ValueError(f"ema_gz must have shape ({channels},), got {ema_gz.shape}")
    dy3, dx, dyxp, dysum = _dy_sums(dy, cache, out)
    dgamma = dyxp * cache.rstd  # Σ dy·z, exact
    nu = (1.0 - alpha_bkw) * ema_gz.astype(np.float64)  # the paper's ν: A = g - ν z
    # E ← E + mean_all(A z), mean_all(A z) = (Σ g z - ν Σ z²)/M over all positions, padding included
    e_new = ema_gz + (cache.gamma * dgamma - nu * (cache.rstd * cache.rstd) * cache.sumsq) / (batch * size)
    rden = cache.batch_rstd if denominator == "batch" else cache.rstd
    no_mask = np.empty((0, size), x3.dtype)  # the surrogate subtracts ν z at every position
    with threads_for(x3.nbytes):
        dx_kernel(x3, dy3, cache.scale, cache.rstd, rden, cache.gamma, nu, no_mask, dx.reshape(x3.shape))
    return (dx, *present_gradients(cache, dgamma, dysum), e_new.astype(ema_gz.dtype))


register("power_norm", "numba", power_norm_forward, power_norm_backward)
register("power_norm_approx", "numba", power_norm_forward, power_norm_backward_approx)
