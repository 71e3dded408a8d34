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
cost cache bandwidth, not memory bandwidth; each is one vectorized loop (:mod:`._common`, "Sums in lanes"). Per row:

* forward: the corrected two-pass moments (:func:`._common.moments`: a shifted sum, then ``Σd`` and ``Σd²`` in one
  pass, never :math:`E[x^2]-E[x]^2`), then ``y = ((x - m)·rstd)·γ + β`` in the storage dtype, ``m`` = the mean
  rounded to it. Memory sees: read ``x`` once, write ``y`` once. ``mean`` and ``rstd`` (one float64 each per row)
  are stored; ``x̂`` is not: the backward recomputes it from ``x``, which it has to read anyway (bit for bit the
  ``x̂`` of the forward), and so saves writing and re-reading a tensor the size of ``x``.
* backward: the row's share of ``dgamma``/``dbeta`` (pass 1), the sums :math:`\sum g\hat x`, :math:`\sum g`
  (pass 2), then :math:`dx = \mathrm{rstd}(g - c_2 - \hat x c_1)` (pass 3). Memory sees: read ``x`` and ``dy``
  once, write ``dx``. (The three loops stay separate on purpose: one loop writing four arrays needs more
  run-time aliasing checks than LLVM's vectorizer is willing to emit, and would run scalar.)

The forward prefetches the row :data:`._common.PREFETCH_AHEAD` rows ahead (within the chunk) before working on the
current one, so that row's memory traffic overlaps this row's in-cache passes (see :mod:`._common`, "Overlapping
memory and arithmetic"). The backward does not: it streams two inputs, and prefetching both rows ahead was measured
slower (median 9.9 → 11.9 ms on the 8192×1024 float32 backward, 2 threads, interleaved rounds).

Parallel structure and the two-stage parameter reduction
--------------------------------------------------------
The forward runs ``prange`` over chunks of rows: iteration ``c`` owns its rows of ``y`` and their entries of the
statistics, so no element is written twice. The backward cannot do the same for ``dgamma``: every row adds into every
``dgamma[j]``, and ``dgamma[j] += ...`` from two threads is a data race (a lost update; tutorial 08 shows it).
So rows are split into a fixed number of contiguous chunks (:data:`MAX_CHUNKS`, independent of the thread count)
and the ``prange`` runs over chunks: chunk ``c`` owns its rows of ``dx`` and row ``c`` of ``dgamma_part``/
``dbeta_part`` (float64). The caller then sums the partials over chunks (stage 2). Each partial is a fixed
sequence of additions, so the result is deterministic, bitwise, run after run. Within a chunk the elementwise
layout adds each row's ``dy·x̂`` into a storage-dtype row buffer and flushes it into the float64 partial every
:data:`DEPTH` rows: the lanes-and-blocks scheme of :mod:`._common` with rows as the lanes' depth (float64 work
once per 16 rows instead of per row). (The mean ``m`` is rounded to the storage dtype
before ``x - m``, as the NumPy reference rounds its mean to ``x``'s dtype: the two agree even when ``|mean| ≫ std``.)
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange

from ._common import (BLOCK, DEPTH, HELPER, LANES, MAX_CHUNKS, PREFETCH_AHEAD, NumbaNormCache,  # noqa: F401
                      backward_arrays, chunk_count, dot_sum, flush_row_block, given_stats_flat, kernel_affine, moments,
                      output_like, pairwise_total, parameter_gradients, prefetch_lines, sum_squares, threads_for)


@njit(**HELPER)
def row_stats(v, center, lanes, wide):
    """``(mean, var)`` of a row in float64; with ``center=False``, ``(0, mean square)``."""
    if center:
        return moments(v, lanes, wide)
    return 0.0, sum_squares(v, lanes[0], wide[0]) / v.size


@njit(**HELPER)
def _block_gamma_sums(gamma, dy, x, m, s, lanes):
    """``lanes[0, k] = Σ_i g·x̂``, ``lanes[1, k] = Σ_i g`` over one block, ``g = γ·dy``, ``x̂ = (x - m)·s``."""
    n = x.size
    full = n - n % LANES
    p, q = lanes[0], lanes[1]
    p[:] = 0
    q[:] = 0
    for i in range(0, full, LANES):
        for k in range(LANES):
            g = gamma[i + k] * dy[i + k]
            p[k] += g * ((x[i + k] - m) * s)
            q[k] += g
    for j in range(full, n):
        g = gamma[j] * dy[j]
        p[j - full] += g * ((x[j] - m) * s)
        q[j - full] += g


@njit(**HELPER)
def gamma_sums(gamma, dy, x, m, s, lanes, wide):
    """``(Σ_j g_j·x̂_j, Σ_j g_j)`` over a row in float64, lane-blocked; ``g = γ·dy``, ``x̂ = (x - m)·s``."""
    wide[:] = 0.0
    for b in range(0, x.size, BLOCK):
        _block_gamma_sums(gamma[b:b + BLOCK], dy[b:b + BLOCK], x[b:b + BLOCK], m, s, lanes)
        for k in range(LANES):
            wide[0, k] += lanes[0, k]
            wide[1, k] += lanes[1, k]
    return pairwise_total(wide[0]), pairwise_total(wide[1])


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
    chunks = min(rows, MAX_CHUNKS)
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns its rows of y and their entries of mean, var, rstd
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        last = min(rows, (c + 1) * per_chunk)
        for r in range(c * per_chunk, last):
            if r + PREFETCH_AHEAD < last:  # overlap the memory of a later row with this row's arithmetic
                prefetch_lines(x[r + PREFETCH_AHEAD])
            xr, yr = x[r], y[r]
            if batch_stats:
                mean[r], var[r] = row_stats(xr, center, lanes, wide)
            rstd[r] = 1.0 / np.sqrt(var[r] + eps)
            m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])  # the row's constants in the storage dtype
            for j in range(n):
                yr[j] = ((xr[j] - m) * s) * gamma[j] + beta[j]


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
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        dgamma_blk, dbeta_blk = np.zeros(n, x.dtype), np.zeros(n, x.dtype)  # <= DEPTH rows, storage dtype
        first, last = c * per_chunk, min(rows, (c + 1) * per_chunk)
        for r in range(first, last):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
            for j in range(n):  # pass 1: this row's share of dgamma = Σ dy·x̂ and dbeta = Σ dy
                dgamma_blk[j] += dyr[j] * ((xr[j] - m) * s)
                dbeta_blk[j] += dyr[j]
            # into the float64 partials every DEPTH rows
            flush_row_block(r, first, last, c, dgamma_blk, dbeta_blk, dgamma_part, dbeta_part)
            c1 = c2 = x.dtype.type(0)
            if batch_stats:  # pass 2: c1 = mean(g·x̂), c2 = mean(g), g = γ·dy
                p, q = gamma_sums(gamma, dyr, xr, m, s, lanes, wide)
                c1 = x.dtype.type(p / n)
                c2 = x.dtype.type(q / n) if center else x.dtype.type(0)
            for j in range(n):  # pass 3
                dxr[j] = s * (gamma[j] * dyr[j] - c2 - ((xr[j] - m) * s) * c1)


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
    chunks = min(rows, MAX_CHUNKS)
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns its rows of y and their entries of mean, var, rstd
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        last = min(rows, (c + 1) * per_chunk)
        for r in range(c * per_chunk, last):
            if r + PREFETCH_AHEAD < last:
                prefetch_lines(x[r + PREFETCH_AHEAD])
            xr, yr = x[r], y[r]
            if batch_stats:
                mean[r], var[r] = moments(xr, lanes, wide)
            rstd[r] = 1.0 / np.sqrt(var[r] + eps)
            m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
            first = (r % groups) * segments
            for k in range(segments):
                g, b = gamma[first + k], beta[first + k]
                xs, ys = xr[k * seg:(k + 1) * seg], yr[k * seg:(k + 1) * seg]
                for j in range(seg):  # from 0: LLVM sees j >= 0, drops the negative-index check, and vectorizes
                    ys[j] = ((xs[j] - m) * s) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def segments_backward(x, dy, gamma, groups, seg, mean, rstd, batch_stats, dx, dgamma_part, dbeta_part):
    """Gradients of :func:`segments_forward`; ``dgamma_part``/``dbeta_part`` are ``(chunks, C)`` float64 (zeroed).

    Per segment one lane-blocked pass gives ``a = Σ dy·(x - m)`` and ``b = Σ dy``: then the channel's partials are
    ``a·rstd`` and ``b``, and the row's ``Σ g·x̂ = rstd·Σ_k γ_k a_k``, ``Σ g = Σ_k γ_k b_k``.
    """
    rows, n = x.shape
    segments = n // seg
    chunks = dgamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns rows [c·per_chunk, (c+1)·per_chunk) of dx and row c of the partials
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        for r in range(c * per_chunk, min(rows, (c + 1) * per_chunk)):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
            first = (r % groups) * segments
            p = q = 0.0
            for k in range(segments):
                lo, hi = k * seg, (k + 1) * seg
                a, b = dot_sum(dyr[lo:hi], xr[lo:hi], m, lanes, wide)
                dgamma_part[c, first + k] += a * rstd[r]
                dbeta_part[c, first + k] += b
                p += gamma[first + k] * a
                q += gamma[first + k] * b
            c1 = x.dtype.type(p * rstd[r] / n) if batch_stats else x.dtype.type(0)
            c2 = x.dtype.type(q / n) if batch_stats else x.dtype.type(0)
            for k in range(segments):
                g = gamma[first + k]
                xs, dys, dxs = xr[k * seg:(k + 1) * seg], dyr[k * seg:(k + 1) * seg], dxr[k * seg:(k + 1) * seg]
                for j in range(seg):
                    dxs[j] = s * (g * dys[j] - c2 - ((xs[j] - m) * s) * c1)


# ----------------------------------------------------------------------------------------------------------------
# Drivers: allocate, run a kernel, build the cache. The op modules validate and choose the view.
#
# A driver runs a *kernel set*: by default this module (the exact kernels above, backend "numba"); the
# "numba-fast" backend passes normref.kernels.numba_fast._rowwise, whose four kernels have the same signatures.
# The cache records the set's BACKEND, so normref.functional.backward runs the matching backward.

BACKEND = "numba"


def kernel_set(kernels=None):
    """The module whose ``rows_*``/``segments_*`` kernels a driver runs: ``kernels``, or this one if ``None``."""
    return sys.modules[__name__] if kernels is None else kernels


def check_cache_backend(cache, kernels) -> None:
    """Refuse a cache made by another kernel set: a backward never mixes backends (``ValueError``)."""
    if cache.backend != kernels.BACKEND:
        raise ValueError(f"this cache was made by the {cache.backend!r} backend, not {kernels.BACKEND!r}: run "
                         f"its backward with normref.functional.backward, which dispatches on cache.backend")


def run_rows_forward(x, x2, gamma, beta, *, eps, center, given, stat_shape, layout=(), out=None, kernels=None):
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
        out: ``None`` (allocate ``y``) or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
        kernels: the kernel set (see :func:`kernel_set`); ``None`` = this module's exact kernels.

    Returns:
        ``(y, cache)``: ``y`` of ``x``'s shape and dtype, a :class:`NumbaNormCache` recording the set's backend.
    """
    k = kernel_set(kernels)
    rows, n = x2.shape
    size = layout[0] * (n // layout[1]) if layout else n  # C for the per-channel affine, n for elementwise
    g, b = kernel_affine(x, gamma, beta, size)
    if given is None:
        mean, var = np.zeros(rows), np.empty(rows)
    else:
        mean, var = given_stats_flat(given[0], given[1], stat_shape)
    rstd = np.empty(rows)
    y = output_like(x, out)
    y2 = y.reshape(x2.shape)
    with threads_for(x.nbytes):
        if layout:
            k.segments_forward(x2, g, b, layout[0], layout[1], eps, given is None, mean, var, rstd, y2)
        else:
            k.rows_forward(x2, g, b, eps, center, given is None, mean, var, rstd, y2)
    if given is None:
        cache_mean = mean.astype(x.dtype).reshape(stat_shape) if center else None
        cache_var = var.astype(x.dtype).reshape(stat_shape)
    else:
        cache_mean, cache_var = (given[0] if center else None), given[1]
    param_shape = next((p.shape for p in (gamma, beta) if p is not None), None)
    cache = NumbaNormCache(mean=cache_mean, var=cache_var, x_shape=x.shape, x=x2, kernel_mean=mean, rstd=rstd,
                           gamma=g, has_gamma=gamma is not None, has_beta=beta is not None, param_shape=param_shape,
                           batch_stats=given is None, center=center, layout=tuple(layout), backend=k.BACKEND)
    return y, cache


def run_rows_backward(dy, cache: NumbaNormCache, out=None, kernels=None):
    """``(dx, dgamma, dbeta)`` for a cache from :func:`run_rows_forward` (two-stage parameter reduction).

    ``out``: ``None`` (allocate ``dx``) or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    ``kernels``: the kernel set of the forward that made ``cache`` (``ValueError`` if it is another one).
    """
    k = kernel_set(kernels)
    check_cache_backend(cache, k)
    x2 = cache.x
    dy2, dx_out = backward_arrays(dy, x2, cache.x_shape, out)
    dx = dx_out.reshape(x2.shape)
    chunks = chunk_count(x2.shape[0])
    dgamma_part = np.zeros((chunks, cache.gamma.size))  # stage 1: chunk c owns row c
    dbeta_part = np.zeros((chunks, cache.gamma.size))
    with threads_for(x2.nbytes):
        if cache.layout:
            k.segments_backward(x2, dy2, cache.gamma, cache.layout[0], cache.layout[1], cache.kernel_mean,
                                cache.rstd, cache.batch_stats, dx, dgamma_part, dbeta_part)
        else:
            k.rows_backward(x2, dy2, cache.gamma, cache.kernel_mean, cache.rstd, cache.center, cache.batch_stats,
                            dx, dgamma_part, dbeta_part)
    # stage 2: a fixed-order sum over the chunks
    dgamma, dbeta = parameter_gradients(cache, dgamma_part.sum(axis=0), dbeta_part.sum(axis=0))
    return dx_out, dgamma, dbeta
