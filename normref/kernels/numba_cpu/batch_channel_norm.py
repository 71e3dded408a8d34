r"""Batch-Channel Normalization on the Numba CPU backend: the BatchNorm and GroupNorm stages fused, as ``"numba"``.

The math, shapes and the stop-gradient through given (EstBN or running) statistics are in
:mod:`normref.ops.batch_channel_norm`. Here ``x`` of shape ``(N, C, *spatial)`` has two views: ``(N, C, S)`` for the
BatchNorm (BN) stage's per-channel statistics, and the GroupNorm (GN) stage's ``(N·G, K·S)`` rows (``K = C/G``,
``S = prod(spatial)``): row ``r`` is sample ``r // G``, group ``r mod G``, i.e. the ``K`` contiguous channel slices
``x[n, gK:(g+1)K, :]``. The kernels reuse the templates' helpers (:func:`._common.moments`'s passes,
:func:`._colwise.chan_merge_equal`, :func:`._common.dot_sum`): no new kind of reduction.

Forward: the GN statistics from the BN pass, ``y`` in one sweep
---------------------------------------------------------------
On channel ``c`` the intermediate :math:`y_1 = ((x - m_c)\,s_c)\,\gamma_c + \beta_c` (``m_c``, ``s_c`` the BN mean
and rstd rounded to the storage dtype) is an affine function of ``x``. The BN statistics pass already computes each
slice ``x[n, c, :]``'s corrected two-pass moments ``(μ_nc, M2_nc)`` before Chan-merging them over ``n``
(:func:`bn_statistics`, bitwise :func:`._colwise.channel_moments`); it keeps them, ``(N, C)`` float64. The slice's
moments of ``y₁`` then follow without touching ``y₁``: ``mean = (μ_nc - m_c)·s_c·γ_c + β_c``,
``M2 = (s_c·γ_c)²·M2_nc``, and the GN row's ``(mean, var)`` is their Chan merge over the row's ``K`` slices
(:func:`bcn_forward`). No :math:`E[x^2]-E[x]^2` anywhere: every ``M2`` is a sum of squared deviations from the
two-pass moments. One care: ``μ_nc - m_c`` is formed as ``(shift - m_c) + correction`` from the slice's two-pass
parts (:func:`._common.moment_parts`), the first difference exact when ``|μ| ≫ σ`` (Sterbenz), so the GN statistics do
not lose ``u·|μ|/σ`` at an offset (tested at 1e5 σ against the composition, to ≤ 16 eps). The output sweep then
reads ``x`` once and writes ``y = ((y₁ - m_r)·s_r)·a + b``, ``y₁`` computed per value with the BN kernel's own
expression and never stored. Against the two-kernel composition (GN moments of the *rounded* ``y₁``), ``y`` and
every gradient agree to a few eps (observed ≤ 6.3 eps, float32 and float64).

Backward: two sweeps
--------------------
The backward needs, per GN row, the GN sums :math:`\sum dy\,(y_1 - m_r)` and :math:`\sum dy` (per channel, for the
tied ``dgroup_gamma``/``dgroup_beta`` and the row's ``c₁``, ``c₂``); then :math:`dy_1 = s_r(a\,dy - c_2 - \hat y\,c_1)`;
then, per channel, the BN sums :math:`\sum dy_1 (x - m_c)` and :math:`\sum dy_1` over the whole batch. Two kernels:

* **sums** (``prange`` over fixed chunks of rows): rebuild the row's ``y₁`` into a per-thread buffer (``K·S``
  values, 128 KiB for the benchmark's float32 ``(32, 64, 64, 64)``, ``G = 8``: in L2), take the GN segment sums
  (:func:`dot_sum`), turn the buffer into ``dy₁`` in place, take each channel slice's BN sums (:func:`dot_sum`) into
  ``(N, C)`` float64 partials. Slice ``(n, c)`` lies in exactly one row, so each partial has one writer; the driver
  adds them over ``n`` in order, as the BN kernel did. The GN parameter partials are per chunk, as in
  :func:`._rowwise.segments_backward` (deterministic on any thread count).
* **dx** (``prange`` over rows): one elementwise loop per channel slice rebuilds ``x̂_c``, ``y₁``, ``dy₁`` (the row's
  ``c₁``, ``c₂`` are stored, in the storage dtype) and writes :math:`dx = s_c(\gamma_c\,dy_1 - C_2 - \hat x_c C_1)`.

Recomputing ``dy₁`` (a few flops per value) is cheaper than writing it and reading it back (two passes). No
software prefetch: prefetching ``x`` and ``dy`` two rows ahead in the sums kernel measured no faster (13.3–14.9
against 13.3–13.9 ms on one thread, float32 ``(32, 64, 64, 64)``). The backward's sums stay on the buffer of
``y₁``, not on slice moments: ``Σ dy·(y₁ - m_r)`` expanded into sums over ``x`` would cancel.
``dgroup_gamma``/``dgroup_beta`` are the per-channel float64 sums of the tied copies added over the ``K`` channels
of each group in float64, then rounded once (the composition rounded the per-channel sums first; the difference is
one rounding of the storage dtype).

Passes over memory (``x``-sized arrays read or written; the floor is 2 forward, 5 forward+backward)
---------------------------------------------------------------------------------------------------
* before (BN kernel, then GN kernel on a stored ``y₁``): forward 5 (read ``x`` for the BN statistics, read ``x`` and
  write ``y₁``, read ``y₁`` and write ``y``), backward 7 (GN: read ``y₁``, ``dy``, write ``dy₁``; BN: read ``x``,
  ``dy₁`` for the sums and again for ``dx``, write ``dx``; the second reads partly from L3), and two fresh 32 MiB
  intermediates per step (``y₁``, ``dy₁``: a page-zeroing first touch each, even with ``out=``).
* after: forward 3 (read ``x`` for the BN and GN statistics; read ``x``, write ``y``), backward 5 (read ``x``,
  ``dy`` for the sums; read them again and write ``dx``), no intermediate arrays: 8 passes for the floor's 5
  forward+backward. The extra ``x`` read of the forward and the second ``x``, ``dy`` read of the backward are
  inherent to a batch statistic: every value of a channel is needed before any output of it can be written. In
  cache, the forward went from six sweeps per value (statistics; ``y₁``, the GN moments' two passes, ``y``) to
  three (the statistics' two, ``y``).

Measured (float32 ``(32, 64, 64, 64)``, ``G = 8``; ``y``, ``dx`` preallocated, the composition allocating its
``y₁``, ``dy₁``; medians of 30 interleaved rounds, 2026-11-23, load average 1.4–1.6 from other work): forward
15.3 → 6.6 ms and forward+backward 30.7 → 20.0 ms on 2 threads; 23.6 → 10.0 and 45.6 → 27.4 ms on one.

Complex input raises ``TypeError`` (the NumPy reference takes it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ..._validate import cast_like, check_param
from ...ops.batch_norm import batch_norm_args
from ...ops.group_norm import check_groups
from ._colwise import chan_merge_equal
from ._common import (HELPER, LANES, NumbaNormCache, backward_arrays, chunk_count, dot_sum, given_stats_flat,
                      kernel_affine, moment_parts, output_like, parameter_gradients, threads_for)


class NumbaBCNCache(NamedTuple):
    """What the fused backward needs: the BN stage's :class:`._common.NumbaNormCache` (``x``, its statistics, for
    :func:`normref.ops.batch_norm.batch_norm_batch_stats` too), the BN ``beta`` and the GN stage's row statistics,
    not ``y₁`` (rebuilt from ``x``)."""

    bn: NumbaNormCache  # the BN stage over the (N, C, S) view; bn.x is that view of x
    bn_beta: np.ndarray  # (C,) the BN stage's kernel beta (zeros when absent)
    gn_mean: np.ndarray  # (N·G,) float64, the GN stage's row means
    gn_rstd: np.ndarray  # (N·G,) float64
    group_gamma: np.ndarray  # (G,) kernel affine of the GN stage (ones / zeros when absent)
    group_beta: np.ndarray
    num_groups: int
    has_group_gamma: bool
    has_group_beta: bool
    backend: str = "numba"


@njit(parallel=True, fastmath=False, cache=True)
def bn_statistics(x, eps, batch_stats, mean, var, rstd, slice_shift, slice_corr, slice_m2):
    """The BN stage's statistics of the ``(N, C, S)`` ``x``, and each slice's moments for the GN stage.

    As :func:`._colwise.channel_moments` (bitwise: the same per-slice two-pass moments, Chan-merged in the same
    order), keeping each slice's moments in ``(N, C)`` float64 arrays: its shift ``m`` (``slice_shift``), the
    correction ``c`` with ``mean = m + c`` (``slice_corr``) and ``M2`` (:func:`._common.moment_parts`); with given
    statistics (``batch_stats`` False) only the slice moments are kept.
    """
    batch, channels, size = x.shape
    for c in prange(channels):  # iteration c owns mean[c], var[c], rstd[c] and column c of the slice moments
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        count, mu, m2 = 0.0, 0.0, 0.0
        for i in range(batch):
            m_i, c_i, var_i = moment_parts(x[i, c], lanes, wide)
            slice_shift[i, c], slice_corr[i, c], slice_m2[i, c] = m_i, c_i, var_i * size
            count, mu, m2 = chan_merge_equal(count, mu, m2, float(size), m_i + c_i, var_i * size)
        if batch_stats:
            mean[c], var[c] = mu, m2 / count
        rstd[c] = 1.0 / np.sqrt(var[c] + eps)


@njit(**HELPER)
def bn_stage_row(xr, gamma, beta, bn_mean, bn_rstd, first, seg, out):
    """``out`` = the BN stage's output ``y₁`` for one GN row ``xr`` (``K`` slices of ``seg`` values, channels
    ``first, ..., first + K - 1``), with the BN kernel's expression ``((x - m)·s)·γ + β``."""
    for k in range(xr.size // seg):
        c = first + k
        m, s = xr.dtype.type(bn_mean[c]), xr.dtype.type(bn_rstd[c])
        g, b = gamma[c], beta[c]
        xs, ys = xr[k * seg:(k + 1) * seg], out[k * seg:(k + 1) * seg]
        for j in range(seg):
            ys[j] = ((xs[j] - m) * s) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def bcn_forward(x, gamma, beta, bn_mean, bn_rstd, slice_shift, slice_corr, slice_m2, group_gamma, group_beta,
                groups, seg, eps, mean, var, rstd, y):
    """The GN stage's statistics from the slice moments, then ``y`` from ``x`` in one elementwise sweep.

    Row ``r`` = sample ``n``, group ``g``; its slice ``k`` is channel ``c = gK + k``, on which
    ``y₁ = (x - m_c)·s_c·γ_c + β_c`` (``m_c``, ``s_c`` as rounded for the kernel) is affine in ``x``: the slice's
    moments of ``y₁`` are ``mean = (μ_nc - m_c)·s_c·γ_c + β_c``, ``M2 = (s_c·γ_c)²·M2_nc``, Chan-merged over the
    ``K`` slices in float64. ``μ_nc - m_c`` is formed as ``(shift - m_c) + correction`` (:func:`._common.moment_parts`),
    the first difference exact for ``|μ| ≫ σ`` (Sterbenz), so the statistics do not degrade with the offset.

    Args:
        x: ``(N·G, K·S)`` rows, C-contiguous; ``y`` the same shape (output).
        gamma, beta: ``(C,)`` the BN stage's affine; ``bn_mean``, ``bn_rstd``: ``(C,)`` float64 its statistics.
        slice_shift, slice_corr, slice_m2: ``(N, C)`` float64 from :func:`bn_statistics`.
        group_gamma, group_beta: ``(G,)`` the GN stage's per-group affine.
        groups, seg: ``G`` and ``S``.
        eps: the GN stage's eps.
        mean, var, rstd: ``(N·G,)`` float64 outputs.
    """
    rows, n = x.shape
    segments = n // seg
    for r in prange(rows):  # iteration r owns row r of y and mean[r], var[r], rstd[r]
        group, sample = r % groups, r // groups
        first = group * segments
        count, mu, m2 = 0.0, 0.0, 0.0
        for k in range(segments):
            c = first + k
            m, s = x.dtype.type(bn_mean[c]), x.dtype.type(bn_rstd[c])
            scale = float(s) * float(gamma[c])
            mu_k = ((slice_shift[sample, c] - float(m)) + slice_corr[sample, c]) * scale + float(beta[c])
            count, mu, m2 = chan_merge_equal(count, mu, m2, float(seg), mu_k, scale * scale * slice_m2[sample, c])
        mean[r], var[r] = mu, m2 / count
        rstd[r] = 1.0 / np.sqrt(var[r] + eps)
        mr, sr = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
        a, bb = group_gamma[group], group_beta[group]
        xr, yr = x[r], y[r]
        for k in range(segments):
            c = first + k
            m, s = x.dtype.type(bn_mean[c]), x.dtype.type(bn_rstd[c])
            g, b = gamma[c], beta[c]
            xs, ys = xr[k * seg:(k + 1) * seg], yr[k * seg:(k + 1) * seg]
            for j in range(seg):
                ys[j] = ((((xs[j] - m) * s) * g + b - mr) * sr) * a + bb


@njit(parallel=True, fastmath=False, cache=True)
def bcn_backward_sums(x, dy, gamma, beta, bn_mean, bn_rstd, group_gamma, groups, seg, mean, rstd, c1, c2,
                      dtied_gamma_part, dtied_beta_part, bn_p, bn_q):
    """Pass 1 of the backward: the GN stage's sums per row and the BN stage's sums per channel slice.

    Args:
        x, dy: ``(N·G, K·S)`` rows; gamma, beta, bn_mean, bn_rstd, group_gamma, groups, seg: as in the forward.
        mean, rstd: ``(N·G,)`` float64, the GN row statistics of the forward.
        c1, c2: ``(N·G,)`` storage-dtype outputs: the row's ``mean(g·ŷ)`` and ``mean(g)``, ``g = a·dy``.
        dtied_gamma_part, dtied_beta_part: ``(chunks, C)`` float64, zero on entry: chunk ``c``'s sums of
            ``dy·ŷ`` and ``dy`` per channel (the tied copies of the group affine).
        bn_p, bn_q: ``(N, C)`` float64 outputs: ``Σ dy₁·(x - m_c)`` and ``Σ dy₁`` over slice ``x[n, c, :]``.
    """
    rows, n = x.shape
    segments = n // seg
    chunks = dtied_gamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns its rows' c1, c2, their slices' bn_p, bn_q, and row c of the partials
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        buf = np.empty(n, x.dtype)  # y1 of the row, then dy1
        for r in range(c * per_chunk, min(rows, (c + 1) * per_chunk)):
            xr, dyr = x[r], dy[r]
            group, sample = r % groups, r // groups
            first = group * segments
            bn_stage_row(xr, gamma, beta, bn_mean, bn_rstd, first, seg, buf)
            m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
            a = group_gamma[group]
            p = q = 0.0
            for k in range(segments):  # the GN stage's sums, per channel (segments_backward's)
                lo, hi = k * seg, (k + 1) * seg
                u, v = dot_sum(dyr[lo:hi], buf[lo:hi], m, lanes, wide)
                dtied_gamma_part[c, first + k] += u * rstd[r]
                dtied_beta_part[c, first + k] += v
                p += a * u
                q += a * v
            c1r, c2r = x.dtype.type(p * rstd[r] / n), x.dtype.type(q / n)
            c1[r], c2[r] = c1r, c2r
            for j in range(n):  # dy1, in place of y1
                buf[j] = s * (a * dyr[j] - c2r - ((buf[j] - m) * s) * c1r)
            for k in range(segments):  # the BN stage's sums over slice (sample, first + k)
                lo, hi = k * seg, (k + 1) * seg
                u, v = dot_sum(buf[lo:hi], xr[lo:hi], x.dtype.type(bn_mean[first + k]), lanes, wide)
                bn_p[sample, first + k] = u
                bn_q[sample, first + k] = v


@njit(parallel=True, fastmath=False, cache=True)
def bcn_backward_dx(x, dy, gamma, beta, bn_mean, bn_rstd, bn_c1, bn_c2, group_gamma, groups, seg, mean, rstd,
                    c1, c2, dx):
    """Pass 2 of the backward: ``dx`` from ``x`` and ``dy``, rebuilding ``x̂``, ``y₁`` and ``dy₁`` per value.

    ``bn_c1``, ``bn_c2``: ``(C,)`` in the storage dtype, the BN stage's ``mean(g·x̂)``, ``mean(g)`` (zeros with
    given statistics); ``c1``, ``c2``: the GN rows' from :func:`bcn_backward_sums`; the rest as there.
    """
    rows, n = x.shape
    segments = n // seg
    for r in prange(rows):  # iteration r owns row r of dx
        xr, dyr, dxr = x[r], dy[r], dx[r]
        group = r % groups
        first = group * segments
        m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
        a, c1r, c2r = group_gamma[group], c1[r], c2[r]
        for k in range(segments):
            ch = first + k
            mc, sc = x.dtype.type(bn_mean[ch]), x.dtype.type(bn_rstd[ch])
            g, b, k1, k2 = gamma[ch], beta[ch], bn_c1[ch], bn_c2[ch]
            xs, dys, dxs = xr[k * seg:(k + 1) * seg], dyr[k * seg:(k + 1) * seg], dxr[k * seg:(k + 1) * seg]
            for j in range(seg):
                xhat = (xs[j] - mc) * sc
                dy1 = s * (a * dys[j] - c2r - ((xhat * g + b - m) * s) * c1r)
                dxs[j] = sc * (g * dy1 - k2 - xhat * k1)


def batch_channel_norm_forward(x, gamma=None, beta=None, group_gamma=None, group_beta=None, *, num_groups, eps=1e-5,
                               stats=None, out=None):
    """Like :func:`normref.ops.batch_channel_norm.batch_channel_norm_forward`; the cache records ``"numba"``.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    a = batch_norm_args(x, gamma, beta, eps=eps, stats=stats, allow_complex=False)
    x = np.ascontiguousarray(a.x)
    batch, channels = x.shape[:2]
    num_groups = check_groups(num_groups, channels)
    group_gamma = cast_like(x, check_param(group_gamma, "group_gamma", (num_groups,), allow_complex=False))
    group_beta = cast_like(x, check_param(group_beta, "group_beta", (num_groups,), allow_complex=False))
    seg = math.prod(x.shape[2:])
    x3 = x.reshape(batch, channels, seg)
    x2 = x.reshape(batch * num_groups, (channels // num_groups) * seg)
    g, b = kernel_affine(x, a.gamma, a.beta, channels)
    gg, gb = kernel_affine(x, group_gamma, group_beta, num_groups)
    given = a.stats
    if given is None:
        bn_mean, bn_var = np.empty(channels), np.empty(channels)
    else:
        bn_mean, bn_var = given_stats_flat(given[0], given[1], a.stat_shape)
    bn_rstd = np.empty(channels)
    rows = x2.shape[0]
    mean, var, rstd = np.empty(rows), np.empty(rows), np.empty(rows)
    y = output_like(x, out)
    slice_shift, slice_corr, slice_m2 = (np.empty((batch, channels)) for _ in range(3))
    with threads_for(x.nbytes):
        bn_statistics(x3, a.eps, given is None, bn_mean, bn_var, bn_rstd, slice_shift, slice_corr, slice_m2)
        bcn_forward(x2, g, b, bn_mean, bn_rstd, slice_shift, slice_corr, slice_m2, gg, gb, num_groups, seg, a.eps,
                    mean, var, rstd, y.reshape(x2.shape))
    if given is None:
        cache_mean = bn_mean.astype(x.dtype).reshape(a.stat_shape)
        cache_var = bn_var.astype(x.dtype).reshape(a.stat_shape)
    else:
        cache_mean, cache_var = given
    param_shape = next((p.shape for p in (a.gamma, a.beta) if p is not None), None)
    bn = NumbaNormCache(mean=cache_mean, var=cache_var, x_shape=x.shape, x=x3, kernel_mean=bn_mean, rstd=bn_rstd,
                        gamma=g, has_gamma=a.gamma is not None, has_beta=a.beta is not None, param_shape=param_shape,
                        batch_stats=given is None, center=True, layout=(), backend="numba")
    return y, NumbaBCNCache(bn, b, mean, rstd, gg, gb, num_groups, group_gamma is not None, group_beta is not None)


def batch_channel_norm_backward(dy, cache: NumbaBCNCache, *, out=None):
    """``(dx, dgamma, dbeta, dgroup_gamma, dgroup_beta)``, like the reference's backward.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    if cache.backend != "numba":
        raise ValueError(f"this cache was made by the {cache.backend!r} backend, not 'numba': run its backward with "
                         f"normref.functional.backward, which dispatches on cache.backend")
    bn, groups = cache.bn, cache.num_groups
    x3 = bn.x
    batch, channels, seg = x3.shape
    x2 = x3.reshape(batch * groups, (channels // groups) * seg)
    dy3, dx_out = backward_arrays(dy, x3, bn.x_shape, out)
    dy2 = dy3.reshape(x2.shape)
    rows = x2.shape[0]
    chunks = chunk_count(rows)
    c1, c2 = np.empty(rows, x3.dtype), np.empty(rows, x3.dtype)
    dtied_gamma_part, dtied_beta_part = np.zeros((chunks, channels)), np.zeros((chunks, channels))
    bn_p, bn_q = np.empty((batch, channels)), np.empty((batch, channels))
    with threads_for(x3.nbytes):
        bcn_backward_sums(x2, dy2, bn.gamma, cache.bn_beta, bn.kernel_mean, bn.rstd, cache.group_gamma, groups, seg,
                          cache.gn_mean, cache.gn_rstd, c1, c2, dtied_gamma_part, dtied_beta_part, bn_p, bn_q)
        p, q = bn_p.sum(axis=0), bn_q.sum(axis=0)  # over the batch, in order, per channel
        count = batch * seg
        if bn.batch_stats:  # the BN stage's c1 = mean(g·x̂), c2 = mean(g), g = γ·dy1
            gamma64 = bn.gamma.astype(np.float64)
            bn_c1, bn_c2 = (gamma64 * p * bn.rstd / count).astype(x3.dtype), (gamma64 * q / count).astype(x3.dtype)
        else:
            bn_c1 = bn_c2 = np.zeros(channels, x3.dtype)
        bcn_backward_dx(x2, dy2, bn.gamma, cache.bn_beta, bn.kernel_mean, bn.rstd, bn_c1, bn_c2, cache.group_gamma,
                        groups, seg, cache.gn_mean, cache.gn_rstd, c1, c2, dx_out.reshape(x2.shape))
    dgamma, dbeta = parameter_gradients(bn, p * bn.rstd, q)
    dtype = x3.dtype
    dgroup_gamma = (dtied_gamma_part.sum(axis=0).reshape(groups, -1).sum(axis=1).astype(dtype)
                    if cache.has_group_gamma else None)
    dgroup_beta = (dtied_beta_part.sum(axis=0).reshape(groups, -1).sum(axis=1).astype(dtype)
                   if cache.has_group_beta else None)
    return dx_out, dgamma, dbeta, dgroup_gamma, dgroup_beta


register("batch_channel_norm", "numba", batch_channel_norm_forward, batch_channel_norm_backward)
