r"""The row-wise template: one statistic per row of a ``(rows, n)`` view (LayerNorm, RMSNorm, GroupNorm, InstanceNorm).

Every per-sample normalizer is a reshape away from "normalize each row": LayerNorm and RMSNorm view ``x`` as
``(prod(batch), prod(normalized_shape))``, GroupNorm as ``(N·G, C/G·prod(spatial))``, InstanceNorm as
``(N·C, prod(spatial))``. The math is :mod:`normref.ops._normalize` with ``R`` = one row of ``n`` values.

Two affine layouts share the same statistics:

* **elementwise** (LayerNorm, RMSNorm): ``gamma[j]`` for column ``j``; :func:`rows_forward`, :func:`rows_backward`.
* **per segment** (GroupNorm, InstanceNorm): a row is ``K`` segments of ``seg`` values, one channel each;
  row ``r``, segment ``k`` is channel ``(r mod groups)·K + k``, whose ``gamma`` is a scalar over the segment;
  :func:`segments_forward`, :func:`segments_backward`.

Passes over memory
------------------
A row (a few KiB to a few hundred KiB) stays in the core's cache while it is worked on, so the passes *within* a row
cost cache bandwidth, not memory bandwidth. Per row:

* forward: mean (pass 1), :math:`\sigma^2 = \operatorname{mean}(x-\mu)^2` (pass 2, two-pass, never
  :math:`E[x^2]-E[x]^2`), then ``y`` (pass 3). Memory sees: read ``x`` once, write ``y`` once. ``mean`` and
  ``rstd`` (one float64 each per row) are stored; ``x̂`` is not: the backward recomputes it from ``x``, which it has
  to read anyway, and so saves writing and re-reading a tensor the size of ``x``.
* backward: the sums :math:`\sum g\hat x`, :math:`\sum g` and the row's parameter partials (pass 1), then
  :math:`dx = \mathrm{rstd}(g - c_2 - \hat x c_1)` (pass 2). Memory sees: read ``x`` and ``dy`` once, write ``dx``.

Parallel structure and the two-stage parameter reduction
--------------------------------------------------------
The forward runs ``prange`` over rows: iteration ``r`` owns row ``r`` of ``y`` and entry ``r`` of the statistics,
so no element is written twice. The backward cannot do the same for ``dgamma``: every row adds into every
``dgamma[j]``, and ``dgamma[j] += ...`` from two threads is a data race (a lost update; tutorial 08 shows it).
So rows are split into a fixed number of contiguous chunks (:data:`MAX_CHUNKS`, independent of the thread count)
and the ``prange`` runs over chunks: chunk ``c`` owns its rows of ``dx`` and row ``c`` of ``dgamma_part``/
``dbeta_part`` (float64). The caller then sums the partials over chunks (stage 2). Each partial is a fixed
sequence of additions, so the result is deterministic, bitwise, run after run.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import (HELPER, MAX_CHUNKS, NumbaNormCache, chunk_count, dot_sum_lanes, given_stats_flat,  # noqa: F401
                      kernel_affine, kernel_dy, parameter_gradients, sum_lanes, sumsq_lanes, threads_for)


@njit(**HELPER)
def row_moments(v, center):
    """Two-pass ``(mean, var)`` of a 1-D row in float64; with ``center=False``, ``(0, mean square)``."""
    n = v.size
    mu = sum_lanes(v, 0.0) / n if center else 0.0
    return mu, sumsq_lanes(v, mu) / n


@njit(**HELPER)
def gamma_dot_sum_lanes(gamma, dy, x, shift):
    """``(Σ_j gamma[j]·dy[j]·(x[j] - shift), Σ_j gamma[j]·dy[j])`` in four float64 lanes (``g = gamma·dy``)."""
    n = x.size
    p0 = p1 = p2 = p3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    m = n - n % 4
    for j in range(0, m, 4):
        g0 = gamma[j] * dy[j]
        g1 = gamma[j + 1] * dy[j + 1]
        g2 = gamma[j + 2] * dy[j + 2]
        g3 = gamma[j + 3] * dy[j + 3]
        p0 += g0 * (x[j] - shift)
        p1 += g1 * (x[j + 1] - shift)
        p2 += g2 * (x[j + 2] - shift)
        p3 += g3 * (x[j + 3] - shift)
        q0 += g0
        q1 += g1
        q2 += g2
        q3 += g3
    for j in range(m, n):
        g = gamma[j] * dy[j]
        p0 += g * (x[j] - shift)
        q0 += g
    return (p0 + p1) + (p2 + p3), (q0 + q1) + (q2 + q3)


@njit(parallel=True, fastmath=False, cache=True)
def rows_forward(x, gamma, beta, eps, center, batch_stats, mean, var, rstd, y):
    """Normalize each row of ``x``, elementwise affine.

    Args:
        x: ``(rows, n)`` input, C-contiguous.
        gamma, beta: ``(n,)`` in ``x``'s dtype (ones / zeros when absent).
        eps: added to the variance.
        center: subtract the mean (False: RMS normalization, ``var`` is the mean square and ``mean`` stays 0).
        batch_stats: compute ``mean``/``var`` from ``x`` (True) or read the given ones (False).
        mean, var: ``(rows,)`` float64: outputs when ``batch_stats``, inputs otherwise.
        rstd: ``(rows,)`` float64 output, ``1/sqrt(var + eps)``.
        y: ``(rows, n)`` output, ``x``'s dtype.
    """
    rows, n = x.shape
    for r in prange(rows):  # iteration r owns row r of y and entry r of mean, var, rstd
        xr = x[r]
        if batch_stats:
            mean[r], var[r] = row_moments(xr, center)
        mu = mean[r]
        s = 1.0 / np.sqrt(var[r] + eps)
        rstd[r] = s
        yr = y[r]
        for j in range(n):
            yr[j] = (xr[j] - mu) * s * gamma[j] + beta[j]


@njit(parallel=True, fastmath=False, cache=True)
def rows_backward(x, dy, gamma, mean, rstd, center, batch_stats, dx, dgamma_part, dbeta_part):
    """Gradients of :func:`rows_forward`: ``dx`` and per-chunk partial sums of ``dgamma``, ``dbeta``.

    Args:
        x, dy: ``(rows, n)``, C-contiguous, the same dtype.
        gamma: ``(n,)`` (ones when absent).
        mean, rstd: ``(rows,)`` float64 from the forward.
        center, batch_stats: as in the forward; with given statistics ``dx = rstd·g`` (no ``c1``, ``c2`` terms).
        dx: ``(rows, n)`` output.
        dgamma_part, dbeta_part: ``(chunks, n)`` float64, zero on entry; row ``c`` receives chunk ``c``'s sums of
            ``dy·x̂`` and ``dy``. The caller sums them over axis 0.
    """
    rows, n = x.shape
    chunks = dgamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns rows [c·per_chunk, (c+1)·per_chunk) of dx and row c of the partials
        dgamma_c = dgamma_part[c]
        dbeta_c = dbeta_part[c]
        for r in range(c * per_chunk, min(rows, (c + 1) * per_chunk)):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            mu, s = mean[r], rstd[r]
            for j in range(n):  # this row's share of dgamma = Σ dy·x̂ and dbeta = Σ dy
                dgamma_c[j] += dyr[j] * ((xr[j] - mu) * s)
                dbeta_c[j] += dyr[j]
            c1 = c2 = 0.0
            if batch_stats:  # c1 = mean(g·x̂), c2 = mean(g), g = gamma·dy
                p, q = gamma_dot_sum_lanes(gamma, dyr, xr, mu)
                c1 = p * s / n
                c2 = q / n if center else 0.0
            for j in range(n):
                dxr[j] = s * (gamma[j] * dyr[j] - c2 - (xr[j] - mu) * s * c1)


@njit(parallel=True, fastmath=False, cache=True)
def segments_forward(x, gamma, beta, groups, seg, eps, batch_stats, mean, var, rstd, y):
    """Normalize each row of ``x``; the affine is per segment of ``seg`` values (per channel).

    Args:
        x: ``(rows, n)``, ``n = K·seg``; row ``r``'s segment ``k`` is channel ``(r mod groups)·K + k``.
        gamma, beta: ``(groups·K,)`` = ``(C,)`` per channel (ones / zeros when absent).
        groups: rows per sample (GroupNorm: ``G``; InstanceNorm: ``C``).
        seg: values per channel in a row (``prod(spatial)``).
        eps, batch_stats, mean, var, rstd, y: as in :func:`rows_forward` (always centered).
    """
    rows, n = x.shape
    segments = n // seg
    for r in prange(rows):  # iteration r owns row r of y and entry r of mean, var, rstd
        xr = x[r]
        if batch_stats:
            mean[r], var[r] = row_moments(xr, True)
        mu = mean[r]
        s = 1.0 / np.sqrt(var[r] + eps)
        rstd[r] = s
        yr = y[r]
        first = (r % groups) * segments
        for k in range(segments):
            g, b = gamma[first + k], beta[first + k]
            for j in range(k * seg, (k + 1) * seg):
                yr[j] = (xr[j] - mu) * s * g + b


@njit(parallel=True, fastmath=False, cache=True)
def segments_backward(x, dy, gamma, groups, seg, mean, rstd, batch_stats, dx, dgamma_part, dbeta_part):
    """Gradients of :func:`segments_forward`; ``dgamma_part``/``dbeta_part`` are ``(chunks, C)`` float64 (zeroed).

    Per segment one lane-split pass gives ``a = Σ dy·(x - mean)`` and ``b = Σ dy``: then the channel's partials are
    ``a·rstd`` and ``b``, and the row's ``Σ g·x̂ = rstd·Σ_k gamma_k a_k``, ``Σ g = Σ_k gamma_k b_k``.
    """
    rows, n = x.shape
    segments = n // seg
    chunks = dgamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns rows [c·per_chunk, (c+1)·per_chunk) of dx and row c of the partials
        dgamma_c = dgamma_part[c]
        dbeta_c = dbeta_part[c]
        for r in range(c * per_chunk, min(rows, (c + 1) * per_chunk)):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            mu, s = mean[r], rstd[r]
            first = (r % groups) * segments
            p = q = 0.0
            for k in range(segments):
                lo, hi = k * seg, (k + 1) * seg
                a, b = dot_sum_lanes(dyr[lo:hi], xr[lo:hi], mu)
                dgamma_c[first + k] += a * s
                dbeta_c[first + k] += b
                p += gamma[first + k] * a
                q += gamma[first + k] * b
            c1 = p * s / n if batch_stats else 0.0
            c2 = q / n if batch_stats else 0.0
            for k in range(segments):
                g = gamma[first + k]
                for j in range(k * seg, (k + 1) * seg):
                    dxr[j] = s * (g * dyr[j] - c2 - (xr[j] - mu) * s * c1)


# ----------------------------------------------------------------------------------------------------------------
# Drivers: allocate, run a kernel, build the cache. The op modules validate and choose the view.


def run_rows_forward(x, x2, gamma, beta, *, eps, center, given, stat_shape, layout=()):
    """Forward of a row-wise op on the view ``x2`` of the validated, contiguous ``x``.

    Args:
        x: the validated input (C-contiguous, real); ``x2`` its ``(rows, n)`` view.
        gamma, beta: validated parameters of the caller's shape, or ``None``.
        eps: added to the variance.
        center: False for RMSNorm.
        given: ``None`` (batch statistics) or ``(mean, var)`` as the reference's cache would hold them
            (broadcastable to ``stat_shape``; ``mean`` may be ``None`` without centering).
        stat_shape: the reference cache's keepdims shape of ``mean``/``var``, with ``rows`` elements.
        layout: ``(groups, seg)`` for the per-channel affine (GroupNorm, InstanceNorm), ``()`` for elementwise.

    Returns:
        ``(y, cache)``: ``y`` of ``x``'s shape and dtype, a :class:`NumbaNormCache`.
    """
    rows, n = x2.shape
    size = layout[0] * (n // layout[1]) if layout else n  # C for the per-channel affine, n for elementwise
    g, b = kernel_affine(x, gamma, beta, size)
    if given is None:
        mean, var = np.zeros(rows), np.empty(rows)
    else:
        mean, var = given_stats_flat(given[0], given[1], stat_shape)
    rstd = np.empty(rows)
    y = np.empty_like(x)
    y2 = y.reshape(x2.shape)
    with threads_for(x.nbytes):
        if layout:
            segments_forward(x2, g, b, layout[0], layout[1], eps, given is None, mean, var, rstd, y2)
        else:
            rows_forward(x2, g, b, eps, center, given is None, mean, var, rstd, y2)
    if given is None:
        cache_mean = mean.astype(x.dtype).reshape(stat_shape) if center else None
        cache_var = var.astype(x.dtype).reshape(stat_shape)
    else:
        cache_mean, cache_var = (given[0] if center else None), given[1]
    param_shape = next((p.shape for p in (gamma, beta) if p is not None), None)
    cache = NumbaNormCache(mean=cache_mean, var=cache_var, x_shape=x.shape, x=x2, kernel_mean=mean, rstd=rstd,
                           gamma=g, has_gamma=gamma is not None, has_beta=beta is not None, param_shape=param_shape,
                           batch_stats=given is None, center=center, layout=tuple(layout))
    return y, cache


def run_rows_backward(dy, cache: NumbaNormCache):
    """``(dx, dgamma, dbeta)`` for a cache from :func:`run_rows_forward` (two-stage parameter reduction)."""
    x2 = cache.x
    dy2 = kernel_dy(dy, cache.x_shape, x2.dtype).reshape(x2.shape)
    dx = np.empty_like(x2)
    chunks = chunk_count(x2.shape[0])
    dgamma_part = np.zeros((chunks, cache.gamma.size))  # stage 1: chunk c owns row c
    dbeta_part = np.zeros((chunks, cache.gamma.size))
    with threads_for(x2.nbytes):
        if cache.layout:
            segments_backward(x2, dy2, cache.gamma, cache.layout[0], cache.layout[1], cache.kernel_mean, cache.rstd,
                              cache.batch_stats, dx, dgamma_part, dbeta_part)
        else:
            rows_backward(x2, dy2, cache.gamma, cache.kernel_mean, cache.rstd, cache.center, cache.batch_stats, dx,
                          dgamma_part, dbeta_part)
    # stage 2: a fixed-order sum over the chunks
    dgamma, dbeta = parameter_gradients(cache, dgamma_part.sum(axis=0), dbeta_part.sum(axis=0))
    return dx.reshape(cache.x_shape), dgamma, dbeta
