r"""The row-wise kernels of ``"numba-fast"``: LayerNorm, RMSNorm (:func:`rows_forward`, :func:`rows_backward`) and
GroupNorm, InstanceNorm (:func:`segments_forward`, :func:`segments_backward`).

Same signatures, views and parallel structure as :mod:`normref.kernels.numba_cpu._rowwise` (read its docstring for
the layouts and the two-stage parameter reduction); the drivers there run these kernels when given this module as
``kernels``. What differs:

* the sums are the plain loops of :mod:`._sums` (reassociated, vectorized in registers) instead of lane arrays;
* the forward runs ``prange`` over rows (no per-chunk lane buffers to allocate);
* the row backward makes two passes over a row instead of three: one reduction for :math:`\sum g(x - m)`,
  :math:`\sum g`, then one elementwise loop that writes ``dx`` *and* adds the row into the ``dgamma``/``dbeta``
  block buffers. Measured on one thread, 256×1024 float32 in cache, one chunk, interleaved runs: 0.47 ns/value
  against 0.54 for the same two sums followed by separate ``dx`` and ``dgamma`` loops (the fused loop vectorizes:
  it writes three arrays, within LLVM's run-time alias checks). Adding each row straight into the float64
  partials instead of the float32 block buffer was slower, 0.66 ns/value (twice the bytes, and conversions).

The kernels themselves are compiled with ``fastmath={"contract"}`` only, never ``reassoc`` (see :mod:`._sums`,
"What must not be reassociated"): ``((x - m)·s)·γ + β`` becomes one subtraction, one multiplication and one FMA.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..numba_cpu._common import flush_row_block
from ._sums import dot_sums, gamma_dot_sums, moments, sum_squares

BACKEND = "numba-fast"
# Contraction only: a*b + c as one FMA (rounded once, never less accurate). No reassociation outside the sums.
KERNEL = dict(parallel=True, fastmath={"contract"}, cache=True)


@njit(**KERNEL)
def rows_forward(x, gamma, beta, eps, center, batch_stats, mean, var, rstd, y):
    """Normalize each row of ``x``, elementwise affine; the arguments are those of the exact ``rows_forward``."""
    rows, n = x.shape
    for r in prange(rows):  # iteration r owns row r of y and entry r of mean, var, rstd
        xr, yr = x[r], y[r]
        if batch_stats:
            if center:
                mean[r], var[r] = moments(xr)
            else:
                var[r] = sum_squares(xr) / n  # mean stays 0 (zeros from the driver)
        rstd[r] = 1.0 / np.sqrt(var[r] + eps)
        m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])  # the row's constants in the storage dtype
        for j in range(n):
            yr[j] = ((xr[j] - m) * s) * gamma[j] + beta[j]


@njit(**KERNEL)
def rows_backward(x, dy, gamma, mean, rstd, center, batch_stats, dx, dgamma_part, dbeta_part):
    """Gradients of :func:`rows_forward`: ``dx`` and per-chunk partial sums of ``dgamma``, ``dbeta``.

    The arguments are those of the exact ``rows_backward``: ``dgamma_part``, ``dbeta_part`` are ``(chunks, n)``
    float64, zero on entry, row ``c`` owned by chunk ``c``; the caller sums them over axis 0.
    """
    rows, n = x.shape
    chunks = dgamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns rows [c·per_chunk, (c+1)·per_chunk) of dx and row c of the partials
        dgamma_blk, dbeta_blk = np.zeros(n, x.dtype), np.zeros(n, x.dtype)  # <= DEPTH rows, storage dtype
        first, last = c * per_chunk, min(rows, (c + 1) * per_chunk)
        for r in range(first, last):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
            c1 = c2 = x.dtype.type(0)
            if batch_stats:  # pass 1: c1 = mean(g·x̂) = rstd·mean(g·(x - m)), c2 = mean(g), g = γ·dy
                p, q = gamma_dot_sums(gamma, dyr, xr, m)
                c1 = x.dtype.type(p * rstd[r] / n)
                c2 = x.dtype.type(q / n) if center else x.dtype.type(0)
            for j in range(n):  # pass 2: dx, and this row's share of dgamma = Σ dy·x̂, dbeta = Σ dy
                xhat = (xr[j] - m) * s
                dxr[j] = s * (gamma[j] * dyr[j] - c2 - xhat * c1)
                dgamma_blk[j] += dyr[j] * xhat
                dbeta_blk[j] += dyr[j]
            # into the float64 partials every DEPTH rows
            flush_row_block(r, first, last, c, dgamma_blk, dbeta_blk, dgamma_part, dbeta_part)


@njit(**KERNEL)
def segments_forward(x, gamma, beta, groups, seg, eps, batch_stats, mean, var, rstd, y):
    """Normalize each row; the affine is per segment of ``seg`` values. Arguments as the exact ``segments_forward``."""
    rows, n = x.shape
    segments = n // seg
    for r in prange(rows):  # iteration r owns row r of y and entry r of mean, var, rstd
        xr, yr = x[r], y[r]
        if batch_stats:
            mean[r], var[r] = moments(xr)
        rstd[r] = 1.0 / np.sqrt(var[r] + eps)
        m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
        first = (r % groups) * segments
        for k in range(segments):
            g, b = gamma[first + k], beta[first + k]
            xs, ys = xr[k * seg:(k + 1) * seg], yr[k * seg:(k + 1) * seg]
            for j in range(seg):
                ys[j] = ((xs[j] - m) * s) * g + b


@njit(**KERNEL)
def segments_backward(x, dy, gamma, groups, seg, mean, rstd, batch_stats, dx, dgamma_part, dbeta_part):
    """Gradients of :func:`segments_forward`; arguments as the exact ``segments_backward``.

    Per segment one reduction gives ``a = Σ dy·(x - m)`` and ``b = Σ dy``: the channel's partials are ``a·rstd``
    and ``b``, and the row's ``Σ g·x̂ = rstd·Σ_k γ_k a_k``, ``Σ g = Σ_k γ_k b_k``.
    """
    rows, n = x.shape
    segments = n // seg
    chunks = dgamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns rows [c·per_chunk, (c+1)·per_chunk) of dx and row c of the partials
        for r in range(c * per_chunk, min(rows, (c + 1) * per_chunk)):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            m, s = x.dtype.type(mean[r]), x.dtype.type(rstd[r])
            first = (r % groups) * segments
            p = q = 0.0
            for k in range(segments):
                lo, hi = k * seg, (k + 1) * seg
                a, b = dot_sums(dyr[lo:hi], xr[lo:hi], m)
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
