r"""Region Normalization (RN-B, RN-L) on the Numba CPU backend, registered as ``"numba"``.

The math and the sources are in :mod:`normref.ops.region_norm`; the symbols below are its symbols.

Layout: column-wise, like BatchNorm
-----------------------------------
RN's statistics are per **channel and region, pooled over the batch and the region's pixels** (the reference code
is "BN-style"; :mod:`normref.ops.region_norm`), not per (sample, channel). ``x`` is viewed as ``(N, C, S)``,
``S = prod(spatial)``; the mask as ``w (N, S)`` in ``x``'s dtype, 1 on region ``f`` (``M = 1``, holes) and 0 on
region ``b``, the same for every channel. Channel ``c`` is ``N`` contiguous slices ``x[n, c, :]``, each split by
``w[n]`` into its two regions. ``prange`` runs over channels as in :mod:`._colwise`: iteration ``c`` owns channel
``c`` entirely (both regions' statistics, its slices of ``y`` and ``dx``, its entries of the parameter gradients),
so no location is written by two iterations.

Forward: both regions' moments in one sweep per pass
----------------------------------------------------
Per slice, :func:`region_sums` walks the slice once per pass and keeps both regions' sums side by side; a value
enters the sums of its own region only (a select on ``w``, not a product: ``0·inf`` would let a non-finite value
of one region poison the other's statistics, which the reference keeps apart). The corrected two-pass moments of
:func:`._common.moments`, per region ``r``:

1. shifted sums ``Σ_{S_r}(x - K_r)``, ``K_r`` = the slice's first value in region ``r``; ``μ₁ = K_r + Σ/n_r``,
   rounded to the storage dtype: ``m_r``;
2. ``S₁ = Σ_{S_r}(x - m_r)`` and ``S₂ = Σ_{S_r}(x - m_r)²`` (four sums in one pass); the slice's region mean is
   ``m_r + S₁/n_r`` and its ``M2 = S₂ - S₁²/n_r`` (never :math:`E[x^2]-E[x]^2`; ``S₁/n_r`` is the small correction).

The slices are folded per region with Chan's merge (:func:`._colwise.chan_merge_equal`), skipping a slice with no
pixel of that region. Then :math:`\sigma^2_{rc} = M2/|S_r|`, :math:`\rho_{rc} = 1/\sqrt{\sigma^2_{rc} +
\epsilon_r}` with the reference's effective :math:`\epsilon_r = \epsilon P/|S_r|`, and a second sweep writes
``y = ((x - m_r)·ρ_r)·a_r + b_r`` with the constants of the pixel's region (``m_r`` rounded to the storage dtype,
as the reference rounds its mean). The sums are lane-blocked as in :mod:`._common` (``LANES`` storage-dtype
partial sums, at most ``DEPTH`` values deep, flushed into float64 lanes, summed by :func:`._common.pairwise_total`):
its error bound, ``≤ (D + 2)u Σ|terms|`` per sum, holds for each region's sums. ``mean``, ``var``, ``rstd`` are
float64.

**An empty region** (``|S_r| = 0``, e.g. an all-zero or all-one mask) behaves as in the reference: it has no pixel,
so it writes nothing in ``y``; its statistics are not defined (stored as ``mean = var = rstd = 0``, never read); its
parameter gradients are zero (the reference's ``dgamma``, ``dbeta`` of a region without pixels), and its ``c1``,
``c2`` below are not formed (they would be ``0/0``). A single-pixel region has ``σ² = 0`` and ``x̂ = 0`` there.

Backward: four sums per slice, then an elementwise ``dx``
---------------------------------------------------------
For region ``r`` of channel ``c`` (``n_r = |S_r|`` values, scale ``a_r = 1 + γ_r``, bias ``b_r``), the forward is
:math:`\hat x = (x - \mu_r)\rho_r`, :math:`y = a_r\hat x + b_r`: the shared normalize primitive on region ``r``'s
values, whose exact backward (:mod:`normref.ops._normalize`, region by region in :mod:`normref.ops.region_norm`) is,
with :math:`g = a_r\,dy`,

.. math::

    dx = \rho_r\bigl(g - \operatorname{mean}_{S_r} g - \hat x\,\operatorname{mean}_{S_r}(g\hat x)\bigr).

One read of ``x`` and ``dy`` per slice gives, by :func:`region_sums` (float64, lane-blocked as above),

.. math::

    P_r = \textstyle\sum_{S_r} dy\,(x - m_r),\qquad Q_r = \sum_{S_r} dy\qquad (r = f, b),

and since :math:`\hat x = (x - m_r)\rho_r` (the forward's rounded mean):

.. math::

    \sum_{S_r} dy\,\hat x = \rho_r P_r,\qquad c_{1r} = \operatorname{mean}_{S_r}(g\hat x) = a_r\rho_r P_r/n_r,\qquad
    c_{2r} = \operatorname{mean}_{S_r} g = a_r Q_r/n_r,\qquad dx = \rho_r\bigl(a_r\,dy - c_{2r} - \hat x\,c_{1r}\bigr).

RN-B's parameters: :math:`d\gamma_r = \rho_r P_r` (the scale is :math:`1 + \gamma_r`), and :math:`d\beta_r = Q_r`
(``regionwise_bias=True``, the paper) or :math:`d\beta_f = d\beta_b = Q_f + Q_b` (the code's global bias); both
combined by the reference's own :func:`normref.ops.region_norm.rn_b_param_grads`.

**Determinism.** Iteration ``c`` owns channel ``c`` and both regions' gradient entries, so there is nothing to
reduce across iterations: the parameter gradients come from a fixed sequence of additions (each slice's lanes in
the storage dtype flushed into float64 every ``DEPTH`` values, summed pairwise, then the slices added in sample
order in float64), the same on any number of threads, bitwise (tested on 1 and 2 threads). The row-chunk partials
of :mod:`._rowwise` (the "two-stage" reduction) are for layouts where several iterations add into one parameter
entry; here none does.

RN-L: the response map stays NumPy
----------------------------------
RN-L's mask and pixel affine come from three small ``same`` convolutions on ``(N, 1 or 2, H, W)`` maps and a
sigmoid: ``O(N·H·W·k²)`` work against the normalization's ``O(N·C·H·W)`` passes. They are computed by the
reference's own functions (:func:`normref.ops.region_norm.rn_l_response_forward` and
:func:`~normref.ops.region_norm.rn_l_response_backward`); the kernels above do the region normalization with an
identity affine (``x̂``), and the pixel affine ``y = x̂·(1 + γ_s) + β_s``, ``dγ_s = Σ_c dy·x̂``, ``dβ_s = Σ_c dy``,
``g = dy·(1 + γ_s)`` are NumPy expressions (deterministic) around them. The results agree with the reference (the
same tolerances as RN-B, tested); the cache holds ``x̂``, as the reference's does, and the mask for
:func:`normref.ops.region_norm.rn_l_mask`.

Performance
-----------
Measured on ``(32, 64, 64, 64)`` float32 (32 MiB), a random mask with 30 % holes, all four parameters given,
2 threads (2-core machine, load average ~1.3 from other work), 21 interleaved rounds of every column, medians,
each call timed with ``time.perf_counter`` through ``normref.functional`` (which allocates ``y`` and ``dx``):

==================================  =========  ==========  =============================
column                              forward    backward    total (p10 - p90)
==================================  =========  ==========  =============================
this backend                        11.3 ms    9.9 ms      21.5 ms (19.7 - 23.1)
this backend, ``out=`` given        7.0 ms     6.5 ms      14.0 ms (12.9 - 15.9)
NumPy reference                     182.9 ms   186.4 ms    367.4 ms (352.8 - 419.7)
BatchNorm on ``"numba"`` (same x)   8.8 ms     9.6 ms      18.4 ms (17.1 - 19.5)
``np.copyto`` of the array          5.4 ms
==================================  =========  ==========  =============================

17× the reference, whose time goes into gathering and scattering each region's positions (``rows[:, idx]``);
within 20 % of BatchNorm's kernels, which have one region and no mask to read. The first touch of the freshly
allocated outputs costs about 4 ms per output (the ``out=`` row). Writing pass 1 as two selects into
temporaries before the additions (``df = v - K_f if inside else 0``; ``a[k] += df``) mattered: with the select
written inside the ``+=`` that pass took 1.11 instead of 0.26 ns per value (one thread, 4096 values in cache).

Same signatures, validation (:func:`normref.ops.region_norm.rn_b_args`, :func:`~normref.ops.region_norm.rn_l_args`)
and results as the reference, within rounding. Complex input raises ``TypeError``; a non-contiguous ``x`` or
``dy`` is copied first. ``out=`` on every forward and backward.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ...ops.region_norm import (ConvCache, rn_b_args, rn_b_param_grads, rn_b_region_affine, rn_l_args,
                                rn_l_response_backward, rn_l_response_forward)
from ._colwise import chan_merge_equal
from ._common import BLOCK, HELPER, LANES, backward_arrays, kernel_dy, output_like, pairwise_total, threads_for
from ._rowwise import check_cache_backend

BACKEND = "numba"

# What region_sums adds over a slice (one compiled helper, the choice hoisted out of the inner loops).
SHIFTED = 0  # Σ_f (x - K_f), Σ_b (x - K_b)                                    (pass 1 of the moments)
MOMENTS = 1  # Σ_f d, Σ_f d², Σ_b d, Σ_b d², d = x - m_r                       (pass 2)
DOTS = 2  # Σ_f dy·(x - m_f), Σ_f dy, Σ_b dy·(x - m_b), Σ_b dy                (the backward)


@njit(**HELPER)
def _block_region_sums(kind, v, u, w, shift_f, shift_b, lanes):
    """One block (``v.size ≤ BLOCK``) of :func:`region_sums` into the storage-dtype ``lanes (4, LANES)``.

    Lane ``k`` adds the values ``i·LANES + k`` in index order; a value enters only its own region's sums (select on
    ``w != 0``). ``u`` is ``dy`` for ``DOTS`` (unused otherwise).
    """
    n = v.size
    full = n - n % LANES
    zero = v.dtype.type(0)
    a, b, c, d = lanes[0], lanes[1], lanes[2], lanes[3]
    a[:] = 0
    b[:] = 0
    c[:] = 0
    d[:] = 0
    if kind == SHIFTED:
        for i in range(0, full, LANES):
            for k in range(LANES):  # elementwise in k: vectorized, each lane's order of additions fixed
                inside = w[i + k] != zero
                df = v[i + k] - shift_f if inside else zero
                db = zero if inside else v[i + k] - shift_b
                a[k] += df
                c[k] += db
        for j in range(full, n):
            inside = w[j] != zero
            df = v[j] - shift_f if inside else zero
            db = zero if inside else v[j] - shift_b
            a[j - full] += df
            c[j - full] += db
    elif kind == MOMENTS:
        for i in range(0, full, LANES):
            for k in range(LANES):
                inside = w[i + k] != zero
                df = v[i + k] - shift_f if inside else zero
                db = zero if inside else v[i + k] - shift_b
                a[k] += df
                b[k] += df * df
                c[k] += db
                d[k] += db * db
        for j in range(full, n):
            inside = w[j] != zero
            df = v[j] - shift_f if inside else zero
            db = zero if inside else v[j] - shift_b
            a[j - full] += df
            b[j - full] += df * df
            c[j - full] += db
            d[j - full] += db * db
    else:
        for i in range(0, full, LANES):
            for k in range(LANES):
                inside = w[i + k] != zero
                gf = u[i + k] if inside else zero
                gb = zero if inside else u[i + k]
                a[k] += gf * (v[i + k] - shift_f)
                b[k] += gf
                c[k] += gb * (v[i + k] - shift_b)
                d[k] += gb
        for j in range(full, n):
            inside = w[j] != zero
            gf = u[j] if inside else zero
            gb = zero if inside else u[j]
            a[j - full] += gf * (v[j] - shift_f)
            b[j - full] += gf
            c[j - full] += gb * (v[j] - shift_b)
            d[j - full] += gb


@njit(**HELPER)
def region_sums(kind, v, u, w, shift_f, shift_b, lanes, wide):
    """Four float64 sums over the slice ``v`` (mask ``w``, ``dy`` = ``u``), both regions at once (``kind``: see
    :data:`SHIFTED`, :data:`MOMENTS`, :data:`DOTS`). ``lanes (4, LANES)`` storage dtype and ``wide (4, LANES)``
    float64 are scratch: the :mod:`._common` scheme, one block of ``DEPTH`` values per lane, then float64."""
    wide[:] = 0.0
    for lo in range(0, v.size, BLOCK):
        hi = min(v.size, lo + BLOCK)
        _block_region_sums(kind, v[lo:hi], u[lo:hi], w[lo:hi], shift_f, shift_b, lanes)
        for r in range(4):
            for k in range(LANES):
                wide[r, k] += lanes[r, k]
    return pairwise_total(wide[0]), pairwise_total(wide[1]), pairwise_total(wide[2]), pairwise_total(wide[3])


@njit(**HELPER)
def _merge_slice(count, mean, m2, n, shift, s1, s2):
    """Fold one slice's region (``n`` values, moments about ``shift``: ``S₁``, ``S₂``) into ``(count, mean, M2)``."""
    if n == 0.0:
        return count, mean, m2
    c = s1 / n
    return chan_merge_equal(count, mean, m2, n, shift + c, max(s2 - s1 * c, 0.0))


@njit(parallel=True, fastmath=False, cache=True)
def region_forward_kernel(x, w, first, counts, scale, bias, eps, mean, var, rstd, y):
    """Two-region normalization of each channel (module docstring).

    Args:
        x: ``(N, C, S)``, C-contiguous.
        w: ``(N, S)`` mask in ``x``'s dtype, 1 = region f, 0 = region b.
        first: ``(N, 2)`` int64, index of the first pixel of region f / b in sample ``n`` (any, if it has none).
        counts: ``(N, 2)`` float64, pixels of region f / b in sample ``n``.
        scale, bias: ``(C, 2)`` in ``x``'s dtype, the affine of region f (column 0) and b (column 1).
        eps: ``(2,)`` float64, the effective epsilon of each region.
        mean, var, rstd: ``(C, 2)`` float64 outputs (0 for an empty region).
        y: ``(N, C, S)`` output.
    """
    batch, channels, size = x.shape
    for c in prange(channels):  # iteration c owns channel c: its statistics and y[:, c, :]
        lanes, wide = np.empty((4, LANES), x.dtype), np.empty((4, LANES))
        zero = x.dtype.type(0)
        nf = mf = m2f = nb = mb = m2b = 0.0
        for i in range(batch):
            v, wi = x[i, c], w[i]
            cf, cb = counts[i, 0], counts[i, 1]
            kf = v[first[i, 0]] if cf > 0 else zero
            kb = v[first[i, 1]] if cb > 0 else zero
            sf, _, sb, _ = region_sums(SHIFTED, v, v, wi, kf, kb, lanes, wide)
            pf = x.dtype.type(kf + sf / cf) if cf > 0 else zero  # pass-1 means, rounded to the storage dtype
            pb = x.dtype.type(kb + sb / cb) if cb > 0 else zero
            s1f, s2f, s1b, s2b = region_sums(MOMENTS, v, v, wi, pf, pb, lanes, wide)
            nf, mf, m2f = _merge_slice(nf, mf, m2f, cf, pf, s1f, s2f)
            nb, mb, m2b = _merge_slice(nb, mb, m2b, cb, pb, s1b, s2b)
        for r, n, mu, m2 in ((0, nf, mf, m2f), (1, nb, mb, m2b)):
            if n > 0:
                mean[c, r], var[c, r] = mu, m2 / n
                rstd[c, r] = 1.0 / np.sqrt(var[c, r] + eps[r])
            else:
                mean[c, r] = var[c, r] = rstd[c, r] = 0.0
        m_f, m_b = x.dtype.type(mean[c, 0]), x.dtype.type(mean[c, 1])
        s_f, s_b = x.dtype.type(rstd[c, 0]), x.dtype.type(rstd[c, 1])
        g_f, g_b, b_f, b_b = scale[c, 0], scale[c, 1], bias[c, 0], bias[c, 1]
        for i in range(batch):
            v, wi, out = x[i, c], w[i], y[i, c]
            for j in range(size):
                inside = wi[j] != zero
                m = m_f if inside else m_b
                s = s_f if inside else s_b
                g = g_f if inside else g_b
                b = b_f if inside else b_b
                out[j] = ((v[j] - m) * s) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def region_backward_kernel(x, dy, w, totals, scale, mean, rstd, dx, dscale, dbias):
    """Gradients of :func:`region_forward_kernel` (module docstring).

    Args:
        x, dy: ``(N, C, S)``, C-contiguous, one dtype.
        w: ``(N, S)`` mask, as in the forward.
        totals: ``(2,)`` float64, ``|S_f|`` and ``|S_b|``.
        scale: ``(C, 2)`` the forward's scales ``a_r``.
        mean, rstd: ``(C, 2)`` float64 from the forward.
        dx: ``(N, C, S)`` output.
        dscale, dbias: ``(C, 2)`` float64 outputs, ``ρ_r P_r`` and ``Q_r``.
    """
    batch, channels, size = x.shape
    for c in prange(channels):  # iteration c owns channel c: dx[:, c, :], dscale[c], dbias[c]
        lanes, wide = np.empty((4, LANES), x.dtype), np.empty((4, LANES))
        zero = x.dtype.type(0)
        m_f, m_b = x.dtype.type(mean[c, 0]), x.dtype.type(mean[c, 1])  # as the forward rounded them
        pf = qf = pb = qb = 0.0
        for i in range(batch):
            a, b, e, d = region_sums(DOTS, x[i, c], dy[i, c], w[i], m_f, m_b, lanes, wide)
            pf += a
            qf += b
            pb += e
            qb += d
        dscale[c, 0], dscale[c, 1] = pf * rstd[c, 0], pb * rstd[c, 1]
        dbias[c, 0], dbias[c, 1] = qf, qb
        g_f, g_b = scale[c, 0], scale[c, 1]
        c1f = c2f = c1b = c2b = zero
        if totals[0] > 0:  # an empty region has no pixel to use c1, c2 (0/0)
            c1f = x.dtype.type(g_f * dscale[c, 0] / totals[0])  # mean(g·x̂)
            c2f = x.dtype.type(g_f * qf / totals[0])  # mean(g)
        if totals[1] > 0:
            c1b = x.dtype.type(g_b * dscale[c, 1] / totals[1])
            c2b = x.dtype.type(g_b * qb / totals[1])
        s_f, s_b = x.dtype.type(rstd[c, 0]), x.dtype.type(rstd[c, 1])
        for i in range(batch):
            v, d, wi, out = x[i, c], dy[i, c], w[i], dx[i, c]
            for j in range(size):
                inside = wi[j] != zero
                m = m_f if inside else m_b
                s = s_f if inside else s_b
                g = g_f if inside else g_b
                c1 = c1f if inside else c1b
                c2 = c2f if inside else c2b
                out[j] = s * (g * d[j] - c2 - ((v[j] - m) * s) * c1)


# ----------------------------------------------------------------------------------------------------------------
# Drivers: the region normalization of a validated x, with per-region affine (C,) arrays or None.

class NumbaRegionCache(NamedTuple):
    """What the region backward needs; statistics are float64 ``(C, 2)``, column 0 = region f (``M = 1``)."""

    x: np.ndarray  # (N, C, S) view of the contiguous input
    w: np.ndarray  # (N, S) mask in x's dtype
    totals: np.ndarray  # (2,) float64 |S_f|, |S_b|
    mean: np.ndarray  # (C, 2) float64 (0 for an empty region)
    var: np.ndarray  # (C, 2) float64, biased
    rstd: np.ndarray  # (C, 2) float64, 1/sqrt(var + eps_r)
    scale: np.ndarray  # (C, 2) x's dtype, the kernel's scales (ones when absent)
    x_shape: tuple[int, ...]  # the caller's shape of x
    backend: str = "numba"


def run_region_forward(x, mask, scales=(None, None), biases=(None, None), *, eps, out=None):
    """Region normalization of the contiguous, real ``x (N, C, *spatial)`` with the validated ``mask
    (N, 1, *spatial)``, like :func:`normref.ops.region_norm.region_normalize_forward`. Returns ``(y, cache)``."""
    batch, channels = x.shape[:2]
    x3 = x.reshape(batch, channels, -1)
    w = np.ascontiguousarray(mask.reshape(batch, -1), dtype=x.dtype)
    inside = w != 0
    counts = np.stack([inside.sum(axis=1), (~inside).sum(axis=1)], axis=1).astype(np.float64)
    first = np.stack([np.argmax(inside, axis=1), np.argmax(~inside, axis=1)], axis=1).astype(np.int64)
    totals = counts.sum(axis=0)
    positions = float(w.size)
    eps_r = np.array([eps * positions / t if t > 0 else eps for t in totals])  # the code's effective epsilon
    scale = np.stack([np.ones(channels, x.dtype) if a is None else a for a in scales], axis=1).astype(x.dtype)
    bias = np.stack([np.zeros(channels, x.dtype) if b is None else b for b in biases], axis=1).astype(x.dtype)
    mean, var, rstd = np.empty((channels, 2)), np.empty((channels, 2)), np.empty((channels, 2))
    y = output_like(x, out)
    with threads_for(x.nbytes):
        region_forward_kernel(x3, w, first, counts, scale, bias, eps_r, mean, var, rstd, y.reshape(x3.shape))
    return y, NumbaRegionCache(x3, w, totals, mean, var, rstd, scale, tuple(x.shape))


def run_region_backward(dy, cache: NumbaRegionCache, out=None):
    """``(dx, (dscale_f, dbias_f), (dscale_b, dbias_b))`` in ``x``'s dtype, ``(None, None)`` for an empty region, like
    :func:`normref.ops.region_norm.region_normalize_backward`."""
    check_cache_backend(cache, sys.modules[__name__])
    x3 = cache.x
    dy3, dx = backward_arrays(dy, x3, cache.x_shape, out)
    channels = x3.shape[1]
    dscale, dbias = np.empty((channels, 2)), np.empty((channels, 2))
    with threads_for(x3.nbytes):
        region_backward_kernel(x3, dy3, cache.w, cache.totals, cache.scale, cache.mean, cache.rstd,
                               dx.reshape(x3.shape), dscale, dbias)
    grads = tuple((dscale[:, r].astype(x3.dtype), dbias[:, r].astype(x3.dtype)) if cache.totals[r] > 0
                  else (None, None) for r in range(2))
    return dx, grads[0], grads[1]


# ----------------------------------------------------------------------------------------------------------------
# RN-B

class NumbaRNBCache(NamedTuple):
    """``has_params`` and ``regionwise_bias`` mean what they mean in :class:`normref.ops.region_norm.RNBCache`."""

    region: NumbaRegionCache
    has_params: tuple[bool, bool, bool, bool]
    regionwise_bias: bool
    backend: str = "numba"


def rn_b_forward(x, gamma_f=None, beta_f=None, gamma_b=None, beta_b=None, *, mask, eps=1e-5,
                 regionwise_bias=False, stats=None, out=None):
    """Like :func:`normref.ops.region_norm.rn_b_forward`; the cache is a :class:`NumbaRNBCache`.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    a = rn_b_args(x, gamma_f, beta_f, gamma_b, beta_b, mask=mask, eps=eps, stats=stats, allow_complex=False)
    x = np.ascontiguousarray(a.x)
    scales, biases = rn_b_region_affine(a.params, regionwise_bias)
    y, region = run_region_forward(x, a.mask, scales, biases, eps=a.eps, out=out)
    return y, NumbaRNBCache(region, tuple(p is not None for p in a.params), bool(regionwise_bias))


def rn_b_backward(dy, cache: NumbaRNBCache, *, out=None):
    """``(dx, dgamma_f, dbeta_f, dgamma_b, dbeta_b)``, like :func:`normref.ops.region_norm.rn_b_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    dx, grads_f, grads_b = run_region_backward(dy, cache.region, out=out)
    return (dx,) + rn_b_param_grads(grads_f, grads_b, cache.has_params, cache.regionwise_bias,
                                    cache.region.x_shape[1], dx.dtype)


# ----------------------------------------------------------------------------------------------------------------
# RN-L

class NumbaRNLCache(NamedTuple):
    """The fields of :class:`normref.ops.region_norm.RNLCache` (the region cache is the Numba one) and the mask."""

    region: NumbaRegionCache
    xhat: np.ndarray  # (N, C, H, W)
    scale: np.ndarray  # (N, 1, H, W) = 1 + gamma_s
    s: np.ndarray  # (N, 1, H, W) the response map
    argmax: np.ndarray  # (N, 1, H, W)
    conv_sa: ConvCache
    conv_gamma: ConvCache
    conv_beta: ConvCache
    mask: np.ndarray  # (N, 1, H, W) float64, 1 where s >= threshold
    backend: str = "numba"


def rn_l_forward(x, w_sa, w_gamma, b_gamma=None, w_beta=None, b_beta=None, *, threshold=0.8, eps=1e-5,
                 stats=None, out=None):
    """Like :func:`normref.ops.region_norm.rn_l_forward`: the response map in NumPy (the reference's functions), the
    region normalization on the kernels (module docstring). ``out``: as in :func:`rn_b_forward`."""
    a = rn_l_args(x, w_sa, w_gamma, b_gamma, w_beta, b_beta, threshold=threshold, eps=eps, stats=stats,
                  allow_complex=False)
    x = np.ascontiguousarray(a.x)
    r = rn_l_response_forward(x, *a.params)
    mask = (r.s >= a.threshold).astype(np.float64)  # detached, as in the reference
    y = output_like(x, out)
    xhat, region = run_region_forward(x, mask, eps=a.eps)
    scale = 1.0 + r.gamma_s
    np.multiply(xhat, scale, out=y)
    y += r.beta_s
    return y, NumbaRNLCache(region, xhat, scale, r.s, r.argmax, r.conv_sa, r.conv_gamma, r.conv_beta, mask)


def rn_l_backward(dy, cache: NumbaRNLCache, *, out=None):
    """``(dx, dw_sa, dw_gamma, db_gamma, dw_beta, db_beta)``, like :func:`normref.ops.region_norm.rn_l_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    dy = kernel_dy(dy, cache.region.x_shape, cache.xhat.dtype)
    dx_out = output_like(cache.xhat, out, inputs=(dy, cache.region.x))
    dgamma_s = (dy * cache.xhat).sum(axis=1, keepdims=True)  # node 1: y = xhat·(1 + gamma_s) + beta_s
    dbeta_s = dy.sum(axis=1, keepdims=True)
    dx, _, _ = run_region_backward(dy * cache.scale, cache.region)  # node 2: the region normalization
    dx, *dparams = rn_l_response_backward(dx, dgamma_s, dbeta_s, cache)  # nodes 3-5: the response map
    np.copyto(dx_out, dx)
    return (dx_out, *dparams)


register("rn_b", "numba", rn_b_forward, rn_b_backward)
register("rn_l", "numba", rn_l_forward, rn_l_backward)

