r"""EvoNorm-B0 and EvoNorm-S0 on the Numba CPU backend, registered as ``"numba"``.

The math, the exact backward and the decisions (biased variances, ``eps`` inside the roots, a tie of the max goes to
the batch branch, ``v = None`` = affine only) are in :mod:`normref.ops.evonorm`; these kernels compute the same
functions with the two templates of this backend.

EvoNorm-S0: the row-wise template with a per-channel parameter (GroupNorm's layout)
----------------------------------------------------------------------------------
``x`` ``(N, C, *spatial)`` is viewed as ``(N·G, C/G·S)`` rows, ``S = prod(spatial)``; row ``r`` is sample ``r // G``,
group ``r mod G``, made of ``C/G`` channel segments of ``S`` values. Forward, per row: the corrected two-pass moments
(:func:`._common.moments`), ``rstd = 1/sqrt(var + eps)``, then ``y = ((x·σ(vx))·rstd)·γ + β`` per segment. Backward,
``prange`` over a fixed number of row chunks: per segment one pass gives ``A = Σ dy·u``, ``B = Σ dy`` and
``D = Σ dy·x²σ(1-σ)`` (``u = xσ``), so ``dγ_c ⊇ A·rstd``, ``dβ_c ⊇ B``, ``dv_c ⊇ γ_c·D·rstd`` go into chunk ``c``'s
float64 partial rows (the two-stage deterministic reduction of :mod:`._rowwise`), and the row's
``Σ_group g·u = Σ_k γ_k A_k``; a second pass writes
``dx = (g·rstd)(σ + v x σ(1-σ)) - (x - μ)·rstd³·Σ_group(g u)/M_g``. The sigmoid is recomputed in each pass (no
``σ`` tensor is stored).

EvoNorm-B0: the column-wise template (BatchNorm's layout)
---------------------------------------------------------
``x`` is viewed as ``(N, C, S)`` and ``prange`` runs over channels: iteration ``c`` owns channel ``c``, its batch
statistic ``L_c``, its ``N`` instance statistics ``(μ_nc, s_nc)``, its slices of ``y`` and ``dx`` and the entries
``dγ_c``, ``dβ_c``, ``dv_c`` (no partial buffers needed). Forward: per slice the two-pass moments give ``μ_nc`` and
``s_nc``; the slices are merged with Chan's formula into the batch variance (one read of the channel, as in
:mod:`._colwise`), then ``d = max(L, v x + s)`` and ``y = (x/d)·γ + β``. Backward: pass 1 accumulates, per slice,
``Σ m_R a`` (``a = -g x/d²``, ``m_R = [v x + s > L]``) and, over the channel, ``Σ m_L a``, ``dv = Σ m_R a x``,
``dγ = Σ dy x/d``, ``dβ = Σ dy``; pass 2 writes
``dx = g/d + m_R v a + (x - μ_nc)/(S s_nc)·Σ_slice m_R a + (x - μ_c)/(N S L)·Σ_channel m_L a``.

Sums of more than one term per element (B0's, S0's backward) accumulate in one float64 chain per quantity: exact
enough (float64 accumulation of storage-dtype terms, an error ≤ ``n·u₆₄·Σ|t|``), not vectorized (the max and
the sigmoid keep these loops compute-bound anyway). The statistics (means, stds, ``rstd``) are float64 per row /
channel / slice; the elementwise work runs in the storage dtype. A near-tie ``R ≈ L`` may select the other branch
than the reference when the two round differently; the output is continuous there, the gradient is not (see the
reference's docstring). Complex input raises ``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ..._validate import cast_like, check_ndim, check_nonempty, check_param, check_positive_float, check_stats
from ...ops import evonorm as reference
from ...ops.group_norm import check_groups
from ._colwise import chan_merge_equal
from ._common import (LANES, as_kernel_array, chunk_count, kernel_affine, kernel_dy, moments, output_like,
                      real_affine, real_stats, threads_for)


class NumbaEvoNormCache(NamedTuple):
    """Shared by B0 and S0 on this backend. ``kind``, ``x``, ``batch_var`` mean what they mean in
    :class:`normref.ops.evonorm.EvoNormCache` (``x.size // x.shape[1]`` is the per-channel count, so
    :func:`normref.ops.evonorm.evonorm_b0_update_running_var` reads this cache too)."""

    kind: str  # "b0" or "s0"
    x: np.ndarray  # B0: (N, C, S); S0: (N·G, C/G·S) rows
    x_shape: tuple[int, ...]
    gamma: np.ndarray  # (C,) kernel gamma (ones when absent)
    v: np.ndarray  # (C,)
    mean: np.ndarray  # B0: (N, C) instance means; S0: (N·G,) group means; float64
    std: np.ndarray  # B0: (N, C) instance stds s; S0: (N·G,) rstd = 1/s; float64
    batch_mean: np.ndarray | None  # B0 training: (C,) float64
    batch_std: np.ndarray | None  # B0: (C,) float64 L (from the batch or the given variance)
    batch_var: np.ndarray | None  # B0 training: (C,) biased batch variance, x's dtype (the running update)
    has_gamma: bool
    has_beta: bool
    batch_stats: bool
    num_groups: int  # S0: G; B0: 0
    backend: str = "numba"


def _prepare(x, gamma, beta, v):
    """The reference's validation, real only; returns contiguous ``x``, cast parameters."""
    x = as_kernel_array(x, "x")
    check_ndim(x, "x", (3, 4, 5), "(N, C, *spatial) with 1 to 3 spatial axes")
    check_nonempty(x, "x")
    num_channels = x.shape[1]
    gamma, beta = real_affine(x, gamma, beta, (num_channels,))
    v = cast_like(x, check_param(v, "v", (num_channels,), allow_complex=False))
    return x, gamma, beta, v, (1, num_channels) + (1,) * (x.ndim - 2)


def _affine_only(x, gamma, beta, bshape):
    """``v = None``: ``y = γx + β`` (no normalization); the reference's elementwise NumPy, recorded as ``"numba"``."""
    y, cache = reference._affine_only(x, gamma, beta, bshape)
    return y, cache._replace(backend="numba")


# ---------------------------------------------------------------------------------------------------------------
# EvoNorm-S0


@njit(parallel=True, fastmath=False, cache=True)
def s0_forward_kernel(x, gamma, beta, v, groups, seg, eps, batch_stats, mean, var, rstd, y):
    """EvoNorm-S0 on rows ``(N·G, C/G·S)``; ``gamma``, ``beta``, ``v`` ``(C,)``; ``mean``, ``var``, ``rstd`` ``(N·G,)``
    float64 (``mean``, ``var`` outputs when ``batch_stats``, ``var`` given otherwise)."""
    rows, n = x.shape
    segments = n // seg
    one = x.dtype.type(1)
    for r in prange(rows):  # iteration r owns row r of y and entry r of the statistics
        xr, yr = x[r], y[r]
        if batch_stats:
            lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
            mean[r], var[r] = moments(xr, lanes, wide)
        rstd[r] = 1.0 / np.sqrt(var[r] + eps)
        s = x.dtype.type(rstd[r])
        first = (r % groups) * segments
        for k in range(segments):
            vv, g, b = v[first + k], gamma[first + k], beta[first + k]
            xs, ys = xr[k * seg:(k + 1) * seg], yr[k * seg:(k + 1) * seg]
            for j in range(seg):
                sig = one / (one + np.exp(-(vv * xs[j])))
                ys[j] = ((xs[j] * sig) * s) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def s0_backward_kernel(x, dy, gamma, v, groups, seg, mean, rstd, batch_stats, dx, dgamma_part, dbeta_part,
                       dv_part):
    """Gradients of :func:`s0_forward_kernel`; the ``*_part`` arrays are ``(chunks, C)`` float64, zero on entry."""
    rows, n = x.shape
    segments = n // seg
    chunks = dgamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    one = x.dtype.type(1)
    for c in prange(chunks):  # chunk c owns its rows of dx and row c of the partials
        for r in range(c * per_chunk, min(rows, (c + 1) * per_chunk)):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            first = (r % groups) * segments
            gu = 0.0  # Σ over the group of g·u, g = γ·dy, u = x·σ
            for k in range(segments):
                vv = v[first + k]
                xs, dys = xr[k * seg:(k + 1) * seg], dyr[k * seg:(k + 1) * seg]
                a = b = d = 0.0
                for j in range(seg):
                    sig = one / (one + np.exp(-(vv * xs[j])))
                    a += dys[j] * (xs[j] * sig)
                    b += dys[j]
                    d += dys[j] * (xs[j] * xs[j] * (sig * (one - sig)))
                dgamma_part[c, first + k] += a * rstd[r]
                dbeta_part[c, first + k] += b
                dv_part[c, first + k] += gamma[first + k] * d * rstd[r]
                gu += gamma[first + k] * a
            s = x.dtype.type(rstd[r])
            m = x.dtype.type(mean[r])
            coef = x.dtype.type(gu * rstd[r] ** 3 / n) if batch_stats else x.dtype.type(0)
            for k in range(segments):
                vv, gm = v[first + k], gamma[first + k]
                xs, dys = xr[k * seg:(k + 1) * seg], dyr[k * seg:(k + 1) * seg]
                dxs = dxr[k * seg:(k + 1) * seg]
                for j in range(seg):
                    sig = one / (one + np.exp(-(vv * xs[j])))
                    dxs[j] = ((gm * dys[j]) * s) * (sig + vv * xs[j] * (sig * (one - sig))) - (xs[j] - m) * coef


def evonorm_s0_forward(x, gamma=None, beta=None, v=None, *, num_groups, eps=1e-5, stats=None, out=None):
    """Like :func:`normref.ops.evonorm.evonorm_s0_forward`; the cache is a ``NumbaEvoNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    x, gamma, beta, v, bshape = _prepare(x, gamma, beta, v)
    num_groups = check_groups(num_groups, x.shape[1])
    eps = check_positive_float(eps, "eps", allow_zero=True)
    if v is None:
        return _affine_only(x, gamma, beta, bshape)
    batch, channels = x.shape[:2]
    seg = math.prod(x.shape[2:])
    rows = batch * num_groups
    mean, var = np.zeros(rows), np.empty(rows)
    if stats is not None:
        _, given = real_stats(check_stats(stats, (batch, num_groups), x, need_mean=False))
        var = np.array(given, dtype=np.float64).reshape(rows)
    g, b = kernel_affine(x, gamma, beta, channels)
    rstd = np.empty(rows)
    x2 = x.reshape(rows, (channels // num_groups) * seg)
    y = output_like(x, out)
    with threads_for(x.nbytes):
        s0_forward_kernel(x2, g, b, v, num_groups, seg, eps, stats is None, mean, var, rstd, y.reshape(x2.shape))
    cache = NumbaEvoNormCache("s0", x2, tuple(x.shape), g, v, mean, rstd, None, None, None, gamma is not None,
                              beta is not None, stats is None, num_groups)
    return y, cache


def _s0_backward(dy, cache, out):
    x2 = cache.x
    channels = cache.x_shape[1]
    seg = math.prod(cache.x_shape[2:])
    dy2 = kernel_dy(dy, cache.x_shape, x2.dtype).reshape(x2.shape)
    dx = output_like(x2, out, cache.x_shape, inputs=(dy2,))
    chunks = chunk_count(x2.shape[0])
    parts = np.zeros((3, chunks, channels))  # stage 1: chunk c owns row c of each
    with threads_for(x2.nbytes):
        s0_backward_kernel(x2, dy2, cache.gamma, cache.v, cache.num_groups, seg, cache.mean, cache.std,
                           cache.batch_stats, dx.reshape(x2.shape), parts[0], parts[1], parts[2])
    dgamma, dbeta, dv = parts.sum(axis=1).astype(x2.dtype)  # stage 2: a fixed-order sum over the chunks
    return dx, dgamma, dbeta, dv


# ---------------------------------------------------------------------------------------------------------------
# EvoNorm-B0


@njit(parallel=True, fastmath=False, cache=True)
def b0_forward_kernel(x, gamma, beta, v, eps, batch_stats, batch_mean, batch_var, big_l, mean_i, std_i, y):
    """EvoNorm-B0 on ``(N, C, S)``. ``batch_mean``, ``batch_var``, ``big_l`` ``(C,)`` and ``mean_i``, ``std_i``
    ``(N, C)`` are float64 (``batch_var`` is given when not ``batch_stats``)."""
    batch, channels, size = x.shape
    for c in prange(channels):  # iteration c owns channel c: its statistics and y[:, c, :]
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        count, mu, m2 = 0.0, 0.0, 0.0
        for i in range(batch):
            mu_i, var_i = moments(x[i, c], lanes, wide)
            mean_i[i, c] = mu_i
            std_i[i, c] = np.sqrt(var_i + eps)
            count, mu, m2 = chan_merge_equal(count, mu, m2, float(size), mu_i, var_i * size)
        if batch_stats:
            batch_mean[c] = mu
            batch_var[c] = m2 / count
        big_l[c] = np.sqrt(batch_var[c] + eps)
        lc, vv, g, b = x.dtype.type(big_l[c]), v[c], gamma[c], beta[c]
        for i in range(batch):
            s = x.dtype.type(std_i[i, c])
            xs, ys = x[i, c], y[i, c]
            for j in range(size):
                r = vv * xs[j] + s
                d = r if r > lc else lc  # a tie goes to the batch branch
                ys[j] = (xs[j] / d) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def b0_backward_kernel(x, dy, gamma, v, batch_mean, big_l, mean_i, std_i, batch_stats, dx, dgamma, dbeta, dv,
                       sum_r):
    """Gradients of :func:`b0_forward_kernel`: ``dx`` and float64 ``dgamma``, ``dbeta``, ``dv`` ``(C,)``;
    ``sum_r`` ``(N, C)`` float64 scratch (``Σ_slice m_R a``, entry ``[n, c]`` written by iteration ``c``)."""
    batch, channels, size = x.shape
    for c in prange(channels):  # iteration c owns channel c: dx[:, c, :] and entry c of every output
        lc, vv, gm = x.dtype.type(big_l[c]), v[c], gamma[c]
        sum_l = dvc = dgc = dbc = 0.0
        for i in range(batch):
            s = x.dtype.type(std_i[i, c])
            xs, dys = x[i, c], dy[i, c]
            sr = 0.0
            for j in range(size):
                r = vv * xs[j] + s
                d = r if r > lc else lc
                a = -(gm * dys[j]) * xs[j] / (d * d)
                if r > lc:
                    sr += a
                    dvc += a * xs[j]
                else:
                    sum_l += a
                dgc += dys[j] * (xs[j] / d)
                dbc += dys[j]
            sum_r[i, c] = sr
        dgamma[c], dbeta[c], dv[c] = dgc, dbc, dvc
        coef_b = x.dtype.type(sum_l / (batch * size * big_l[c])) if batch_stats else x.dtype.type(0)
        mb = x.dtype.type(batch_mean[c])
        for i in range(batch):
            s = x.dtype.type(std_i[i, c])
            coef_i = x.dtype.type(sum_r[i, c] / (size * std_i[i, c]))
            mi = x.dtype.type(mean_i[i, c])
            xs, dys, dxs = x[i, c], dy[i, c], dx[i, c]
            for j in range(size):
                r = vv * xs[j] + s
                d = r if r > lc else lc
                g = gm * dys[j]
                a = -g * xs[j] / (d * d)
                through_r = vv * a if r > lc else x.dtype.type(0)
                dxs[j] = g / d + through_r + (xs[j] - mi) * coef_i + (xs[j] - mb) * coef_b


def evonorm_b0_forward(x, gamma=None, beta=None, v=None, *, eps=1e-5, stats=None, out=None):
    """Like :func:`normref.ops.evonorm.evonorm_b0_forward`; the cache is a ``NumbaEvoNormCache``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    x, gamma, beta, v, bshape = _prepare(x, gamma, beta, v)
    eps = check_positive_float(eps, "eps", allow_zero=True)
    if v is None:
        return _affine_only(x, gamma, beta, bshape)
    batch, channels = x.shape[:2]
    x3 = x.reshape(batch, channels, -1)
    batch_mean, batch_var = np.zeros(channels), np.empty(channels)
    if stats is None:
        if x.size // channels < 2:
            raise ValueError(f"x must hold more than 1 value per channel for batch statistics, got shape {x.shape}")
    else:
        _, given = real_stats(check_stats(stats, (channels,), x, need_mean=False))
        batch_var = np.array(given, dtype=np.float64)
    g, b = kernel_affine(x, gamma, beta, channels)
    big_l, mean_i, std_i = np.empty(channels), np.empty((batch, channels)), np.empty((batch, channels))
    y = output_like(x, out)
    with threads_for(x.nbytes):
        b0_forward_kernel(x3, g, b, v, eps, stats is None, batch_mean, batch_var, big_l, mean_i, std_i,
                          y.reshape(x3.shape))
    cache = NumbaEvoNormCache("b0", x3, tuple(x.shape), g, v, mean_i, std_i, batch_mean, big_l,
                              batch_var.astype(x.dtype) if stats is None else None, gamma is not None,
                              beta is not None, stats is None, 0)
    return y, cache


def _b0_backward(dy, cache, out):
    x3 = cache.x
    dy3 = kernel_dy(dy, cache.x_shape, x3.dtype).reshape(x3.shape)
    dx = output_like(x3, out, cache.x_shape, inputs=(dy3,))
    batch, channels = x3.shape[:2]
    dgamma, dbeta, dv = np.empty(channels), np.empty(channels), np.empty(channels)
    with threads_for(x3.nbytes):
        b0_backward_kernel(x3, dy3, cache.gamma, cache.v, cache.batch_mean, cache.batch_std, cache.mean, cache.std,
                           cache.batch_stats, dx.reshape(x3.shape), dgamma, dbeta, dv, np.empty((batch, channels)))
    return dx, dgamma.astype(x3.dtype), dbeta.astype(x3.dtype), dv.astype(x3.dtype)


def evonorm_backward(dy, cache, *, out=None):
    """Exact gradients ``(dx, dgamma, dbeta, dv)`` of either forward, like :func:`normref.ops.evonorm.evonorm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into
    (not for ``v = None``, whose backward is the reference's NumPy).
    """
    if cache.kind == "affine":
        if out is not None:
            raise ValueError("out is not supported for the affine-only (v=None) EvoNorm")
        kernel_dy(dy, cache.x_shape, cache.x.dtype)  # refuses complex dy
        return reference.evonorm_backward(dy, cache)
    dx, dgamma, dbeta, dv = (_b0_backward if cache.kind == "b0" else _s0_backward)(dy, cache, out)
    return dx, (dgamma if cache.has_gamma else None), (dbeta if cache.has_beta else None), dv


evonorm_b0_backward = evonorm_s0_backward = evonorm_backward

register("evonorm_b0", "numba", evonorm_b0_forward, evonorm_b0_backward)
register("evonorm_s0", "numba", evonorm_s0_forward, evonorm_s0_backward)
