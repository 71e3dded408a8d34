r"""PowerNorm's exact path on the Numba CPU backend, registered as ``"numba"``.

The math (GroupScaling, the per-channel quadratic mean ``q``, warmup vs. running statistic, the exact backward) is in
:mod:`normref.ops.power_norm`. This backend implements ``power_norm_forward`` and the **exact**
``power_norm_backward`` without a ``pad_mask``:

* ``pad_mask`` is not supported here: a non-``None`` mask raises ``NotImplementedError`` (use ``backend="numpy"``).
* The paper's surrogate, ``power_norm_backward_approx``, exists only on the numpy backend;
  :class:`normref.nn.PowerNorm` with ``backward="approx"`` refuses a cache from this backend with
  ``NotImplementedError`` (its exact backward and its eval backward run here).

Layout and passes
-----------------
``x`` ``(N, C, *spatial)`` is viewed as ``(N, C, S)``; a position is ``(n, s)``. GroupScaling's RMS runs over the
``C/G`` channels of a group at one position, which in memory are ``S`` apart, so it is computed for all ``S``
positions of a ``(sample, group)`` block at once: an elementwise (vectorized) accumulation
``acc[s] += x[n, c, s]²`` over the group's channels, then ``sc[n, k, s] = (acc[s]/(C/G) + 1e-5)^(-1/2)``, stored
(``N·G·S`` values, ``1/(C/G)`` of ``x``) in the storage dtype, as the reference's GroupScaling ``rstd``.

* forward pass 1 (``prange`` over a fixed number of sample chunks): ``sc`` and the per-channel partial sums of
  ``x'² = (x·sc)²`` (lane-blocked :func:`._common.sum_squares`), chunk ``c`` owning row ``c`` of a
  ``(chunks, C)`` float64 array; the caller sums the chunks in a fixed order: ``q = Σ/M`` (``M = N·S``).
* forward pass 2 (``prange`` over ``(n, c)``): ``y = ((x·sc)·rstd_c)·γ + β``, ``rstd = (ψ² + eps)^(-1/2)``.
* backward pass 1 (sample chunks): per channel ``Σ dy·x'`` and ``Σ dy`` (:func:`._common.dot_sum`) into chunk
  partials; then ``dγ = rstd·Σ dy x'``, ``dβ = Σ dy`` and, in warmup, ``Λ_c = γ_c·rstd_c·Σ dy x'/M``.
* backward pass 2 (``prange`` over ``(n, k)`` blocks): ``dx' = rstd·(g - z·Λ)`` (``Λ = 0`` with a given
  statistic), written into ``dx`` while ``t[s] = Σ_{c∈k} dx'·x'`` accumulates elementwise; then, over the block
  again (in cache), GroupScaling's backward ``dx = sc·(dx' - x'·t/(C/G))``.

Memory sees the forward read ``x`` twice and write ``y``; the backward read ``x`` and ``dy`` twice and write ``dx``
(the statistic over all positions sits between the passes). Without spatial axes (``(N, C)`` input, ``S = 1``)
every inner loop has length 1: correct, but slow; a channels-last kernel would be the fast layout for that case.
The sample chunks are at most ``min(N, 32)``, so a single sample (``N = 1``) runs pass 1 on one thread.
Complex input raises ``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ..._validate import check_ndim, check_nonempty, check_positive_float, check_stats
from ...ops.group_norm import check_groups
from ...ops.power_norm import GROUP_SCALING_EPS
from ._common import (LANES, as_kernel_array, chunk_count, dot_sum, kernel_affine, kernel_dy, output_like,
                      real_affine, real_stats, sum_squares, threads_for)


class NumbaPowerNormCache(NamedTuple):
    """What the exact backward needs on this backend. ``K`` = ``(1, C, 1, ...)``."""

    x: np.ndarray  # (N, C, S) the contiguous input
    x_shape: tuple[int, ...]
    scale: np.ndarray  # (N, G, S) GroupScaling's factors (mean over the group of x² + 1e-5)^-1/2, x's dtype
    rstd: np.ndarray  # (C,) float64 (ψ² + eps)^-1/2 of the statistic the forward divided by
    gamma: np.ndarray  # (C,) kernel gamma (ones when absent)
    has_gamma: bool
    has_beta: bool
    batch_q: np.ndarray  # (K) x's dtype: the batch quadratic mean of the group-scaled input (the running update)
    count: int  # M = N·S positions
    batch_stats: bool  # the forward divided by batch_q (warmup)
    backend: str = "numba"


@njit(parallel=True, fastmath=False, cache=True)
def scaling_kernel(x, groups, scale, q_part):
    """GroupScaling factors ``scale`` ``(N, G, S)`` and per-chunk sums of ``(x·scale)²`` per channel ``(chunks, C)``."""
    batch, channels, size = x.shape
    per_group = channels // groups
    chunks = q_part.shape[0]
    per_chunk = (batch + chunks - 1) // chunks
    for ch in prange(chunks):  # chunk ch owns its samples' scale[n] and row ch of q_part
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
                    q_part[ch, c] += sum_squares(xp, lanes[0], wide[0])


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
def dx_kernel(x, dy, scale, rstd, gamma, lam, dx):
    """``dx' = rstd·(γ dy - z·Λ)``, then GroupScaling's backward ``dx = sc·(dx' - x'·mean_{c∈k}(dx'·x'))``."""
    batch, channels, size = x.shape
    groups = scale.shape[1]
    per_group = channels // groups
    for t in prange(batch * groups):  # iteration t owns the block dx[n, group k]
        n, k = t // groups, t % groups
        sc = scale[n, k]
        acc = np.zeros(size)
        for c in range(k * per_group, (k + 1) * per_group):
            r, gm, lm = x.dtype.type(rstd[c]), gamma[c], x.dtype.type(lam[c])
            xc, dyc, dxc = x[n, c], dy[n, c], dx[n, c]
            for j in range(size):
                xp = xc[j] * sc[j]
                d = r * (gm * dyc[j] - (xp * r) * lm)
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
    """Like :func:`normref.ops.power_norm.power_norm_forward` without ``pad_mask``; a ``NumbaPowerNormCache``.

    ``pad_mask`` must be ``None`` here (``NotImplementedError`` otherwise: the numpy backend supports it).
    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    if pad_mask is not None:
        raise NotImplementedError("pad_mask is not supported on the 'numba' backend; use backend='numpy' for "
                                  "PowerNorm with padding")
    x = as_kernel_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    batch, channels = x.shape[:2]
    group_num = check_groups(group_num, channels)
    gamma, beta = real_affine(x, gamma, beta, (channels,))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    size = math.prod(x.shape[2:])
    x3 = x.reshape(batch, channels, size)
    scale = np.empty((batch, group_num, size), x.dtype)
    q_part = np.zeros((chunk_count(batch), channels))
    with threads_for(x.nbytes):
        scaling_kernel(x3, group_num, scale, q_part)
    count = batch * size
    batch_q = q_part.sum(axis=0) / count  # stage 2: a fixed-order sum over the chunks
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
                                batch_stats=stats is None)
    return y, cache


def power_norm_backward(dy, cache: NumbaPowerNormCache, *, out=None):
    """Exact gradients ``(dx, dgamma, dbeta)``, like :func:`normref.ops.power_norm.power_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    x3 = cache.x
    dy3 = kernel_dy(dy, cache.x_shape, x3.dtype).reshape(x3.shape)
    dx = output_like(x3, out, cache.x_shape, inputs=(dy3,))
    chunks = chunk_count(x3.shape[0])
    parts = np.zeros((2, chunks, x3.shape[1]))
    with threads_for(x3.nbytes):
        sums_kernel(x3, dy3, cache.scale, parts[0], parts[1])
    dyxp, dysum = parts.sum(axis=1)  # stage 2: a fixed-order sum over the chunks
    dgamma = dyxp * cache.rstd  # Σ dy·z
    lam = cache.gamma * dgamma / cache.count if cache.batch_stats else np.zeros_like(dgamma)  # Λ = mean(g·z)
    with threads_for(x3.nbytes):
        dx_kernel(x3, dy3, cache.scale, cache.rstd, cache.gamma, lam, dx.reshape(x3.shape))
    dtype = x3.dtype
    return (dx, dgamma.astype(dtype) if cache.has_gamma else None, dysum.astype(dtype) if cache.has_beta else None)


register("power_norm", "numba", power_norm_forward, power_norm_backward)
