r"""Dynamic Tanh on the Numba CPU backend, registered as ``"numba"``. The math: :mod:`normref.ops.dyt`.

``y = γ·tanh(α·x) + β`` with one scalar ``α`` and per-channel ``γ``, ``β``; the backward

.. math::

    dx = \alpha\,g\,(1 - t^2),\qquad d\alpha = \textstyle\sum_{\text{all}} g\,x\,(1 - t^2),\qquad
    d\gamma_c = \sum dy\,t,\qquad d\beta_c = \sum dy,\qquad t = \tanh(\alpha x),\ g = \gamma\,dy .

Layout
------
``x`` is viewed as ``(rows, n)``, one of two layouts chosen by where the channel axis is:

* **per column** (the channel axis is the last non-trivial one: ``channels_last=True``, or an ``(N, C)`` input,
  or ``(N, C, 1, ...)``): ``x.reshape(-1, C)``, ``γ[j]`` for column ``j`` (LayerNorm's layout in :mod:`._rowwise`);
* **per row** (``channels_last=False`` with spatial axes): ``x.reshape(N·C, S)``, row ``r`` is channel
  ``r mod C`` with a scalar ``γ`` (InstanceNorm's layout).

Forward: ``prange`` over a fixed number of row chunks (:func:`._common.chunk_count`); chunk ``k`` owns its rows of
``y`` and ``t``. One pass over memory: read ``x``, write ``y`` and ``t``. (A single row is one chunk: DyT on one
very long row, e.g. ``(1, 10**7)`` channels-last, runs on one thread.)

Backward: ``prange`` over the same chunks; each row is processed in pieces of :data:`._common.BLOCK` values. Per
piece one loop writes ``dx = (α·g)(1 - t²)`` and the terms ``w = (g·x)(1 - t²)`` of ``dα`` (into a piece-sized
scratch in cache), then

* ``dα``: the piece's ``Σ w`` by :func:`._common.sum_shifted` (lanes in the storage dtype, flushed into float64
  every :data:`._common.DEPTH` values, summed pairwise), added into chunk ``k``'s float64 partial;
* per-row layout: ``(Σ dy·t, Σ dy)`` by :func:`._common.dot_sum`, added into chunk ``k``'s float64 partial row at
  the row's channel;
* per-column layout: ``dy·t`` and ``dy`` added elementwise into a storage-dtype row buffer, flushed into chunk
  ``k``'s float64 partial row every ``DEPTH`` rows (:mod:`._rowwise`'s scheme).

Stage 2 sums the ``(chunks,)`` and ``(chunks, C)`` partials over the chunks in a fixed order: the number of chunks
depends on the shape alone, so ``dα``, ``dγ``, ``dβ`` are bitwise the same on any number of threads (tested). The
error bound of :mod:`._common` applies to each sum: ≤ ``(D + 2)u Σ|terms|``, ``u`` the storage dtype's roundoff.

Store ``t`` or recompute it? (decision: store)
----------------------------------------------
``tanh`` dominates the cost, not memory. Numba lowers ``np.tanh`` to LLVM's ``llvm.tanh`` intrinsic; without
Intel SVML (not installed here: ``numba -s`` reports ``SVML Operational: False``) LLVM scalarizes it into calls to
the C library's ``tanhf``/``tanh``, about 20 ns each on this machine (8 M float32 values: 165 ms on one thread;
NumPy's own SIMD float32 ``tanh`` takes 42 ms). Measured on 8192×1024 float32 (32 MiB), 2 threads, 15 interleaved
rounds, medians, ``out=`` given (the forward and backward below, and a variant of both that keeps no ``t`` and
calls ``np.tanh`` again in the backward):

=====================  =========  ==========  ======
variant                forward    backward    total
=====================  =========  ==========  ======
store ``t``            164 ms     16 ms       180 ms
recompute ``t``        152 ms     166 ms      318 ms
=====================  =========  ==========  ======

(a copy of the array: 5-10 ms; an earlier run under more load from other processes on the shared 2-core machine:
198 / 22 ms and 191 / 204 ms). Storing ``t`` costs one more 32 MiB write in the forward (within noise next to the
``tanh`` calls) and a tensor the size of ``x`` in the cache, which the NumPy reference's cache holds too; it saves a
second ``tanh`` per value in the backward. So the forward stores ``t``. The consequence worth knowing: on float32
this backend's forward is *slower* than the NumPy reference's, whose ``np.tanh`` is vectorized (same run, medians of
11: 121 ms against 54 ms on 8192×1024; backward 9.6 ms against 78 ms); on float64, where NumPy's ``tanh`` is not
faster than the C library's, the two threads win (4096×1024: forward 62 ms against 101 ms, backward 7.8 against
75 ms).

Accuracy of ``np.tanh`` in Numba
--------------------------------
The C library's ``tanhf``/``tanh`` (glibc here), measured on 7 M values from ``N(0, s²)``, ``s`` from 1e-6 to 100,
against a long-double ``tanh``: at most 2.2 ulp in float32 and in float64 (NumPy's: 1.4 and 1.2 ulp). The two agree
to 1.2e-7 (float32) and 2.2e-16 (float64) norm-relative, bit for bit on 72 % of the values; ``tanh(±inf) = ±1``.
``tests/test_backend_numba_seed.py`` checks the agreement (≤ 1e-5 float32, ≤ 1e-12 float64).

Same signature, validation (:func:`normref.ops.dyt.dyt_args`) and results as :func:`normref.ops.dyt.dyt_forward`
and :func:`normref.ops.dyt.dyt_backward`, within rounding. Complex input raises ``TypeError``; a non-contiguous
``x`` or ``dy`` is copied to a contiguous array first. ``out=`` on both functions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ...ops.dyt import dyt_args
from ._common import (BLOCK, DEPTH, LANES, MAX_CHUNKS, chunk_count, dot_sum, kernel_affine, kernel_dy, output_like,
                      sum_shifted, threads_for)


class NumbaDyTCache(NamedTuple):
    """What the Numba DyT backward needs (``x``, ``t`` and ``alpha`` mean what they mean in
    :class:`normref.ops.dyt.DyTCache`, in the kernel's ``(rows, n)`` view)."""

    x: np.ndarray  # (rows, n) view of the contiguous input
    t: np.ndarray  # (rows, n) tanh(alpha x), x's dtype
    alpha: np.ndarray  # (1,), x's dtype
    gamma: np.ndarray  # (C,) the kernel's gamma (ones when absent)
    has_gamma: bool
    has_beta: bool
    channel_axis: int  # the caller's channel axis (non-negative)
    x_shape: tuple[int, ...]  # the caller's shape of x (and of dy, dx)
    per_column: bool  # layout: gamma per column (True) or per row (False); module docstring
    backend: str = "numba"


@njit(parallel=True, fastmath=False, cache=True)
def dyt_forward_kernel(x, alpha, gamma, beta, per_column, t, y):
    """``t = tanh(α·x)``, ``y = t·γ + β`` on the ``(rows, n)`` view.

    Args:
        x: ``(rows, n)``, C-contiguous.
        alpha: the scalar ``α`` in ``x``'s dtype.
        gamma, beta: ``(C,)`` in ``x``'s dtype (ones / zeros when absent: ``t·1 + 0`` is exactly ``t``).
        per_column: ``γ[j]`` for column ``j`` (``n = C``), else ``γ[r mod C]`` for row ``r``.
        t, y: ``(rows, n)`` outputs.
    """
    rows, n = x.shape
    channels = gamma.size
    chunks = min(rows, MAX_CHUNKS)  # the split does not change any value of y or t
    per_chunk = (rows + chunks - 1) // chunks
    for c in prange(chunks):  # chunk c owns its rows of t and y
        for r in range(c * per_chunk, min(rows, (c + 1) * per_chunk)):
            xr, tr, yr = x[r], t[r], y[r]
            for j in range(n):
                tr[j] = np.tanh(alpha * xr[j])
            if per_column:
                for j in range(n):
                    yr[j] = tr[j] * gamma[j] + beta[j]
            else:
                g, b = gamma[r % channels], beta[r % channels]
                for j in range(n):
                    yr[j] = tr[j] * g + b


@njit(parallel=True, fastmath=False, cache=True)
def dyt_backward_kernel(x, t, dy, alpha, gamma, per_column, dx, dalpha_part, dgamma_part, dbeta_part):
    """Gradients of :func:`dyt_forward_kernel`: ``dx`` and per-chunk float64 partial sums (module docstring).

    Args:
        x, t, dy: ``(rows, n)``, C-contiguous, one dtype.
        alpha, gamma, per_column: as in the forward.
        dx: ``(rows, n)`` output.
        dalpha_part: ``(chunks,)`` float64, zero on entry: chunk ``c``'s ``Σ γ·dy·x·(1 - t²)``.
        dgamma_part, dbeta_part: ``(chunks, C)`` float64, zero on entry: chunk ``c``'s ``Σ dy·t``, ``Σ dy``.
    """
    rows, n = x.shape
    channels = gamma.size
    chunks = dgamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    one, zero = x.dtype.type(1), x.dtype.type(0)
    for c in prange(chunks):  # chunk c owns its rows of dx and entry / row c of the partials
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        w = np.empty(min(n, BLOCK), x.dtype)  # the piece's terms of dalpha
        width = n if per_column else 0
        dgamma_blk, dbeta_blk = np.zeros(width, x.dtype), np.zeros(width, x.dtype)  # <= DEPTH rows
        first, last = c * per_chunk, min(rows, (c + 1) * per_chunk)
        for r in range(first, last):
            for lo in range(0, n, BLOCK):
                hi = min(n, lo + BLOCK)
                xs, ts, dys, dxs, ws = x[r, lo:hi], t[r, lo:hi], dy[r, lo:hi], dx[r, lo:hi], w[:hi - lo]
                if per_column:
                    gs = gamma[lo:hi]
                    for j in range(hi - lo):
                        g = gs[j] * dys[j]
                        d = one - ts[j] * ts[j]
                        dxs[j] = (alpha * g) * d
                        ws[j] = (g * xs[j]) * d
                    pg, pb = dgamma_blk[lo:hi], dbeta_blk[lo:hi]
                    for j in range(hi - lo):
                        pg[j] += dys[j] * ts[j]
                        pb[j] += dys[j]
                else:
                    gc = gamma[r % channels]
                    for j in range(hi - lo):
                        g = gc * dys[j]
                        d = one - ts[j] * ts[j]
                        dxs[j] = (alpha * g) * d
                        ws[j] = (g * xs[j]) * d
                    p, q = dot_sum(dys, ts, zero, lanes, wide)  # Σ dy·t, Σ dy over the piece
                    dgamma_part[c, r % channels] += p
                    dbeta_part[c, r % channels] += q
                dalpha_part[c] += sum_shifted(ws, zero, lanes[0], wide[0])
            if per_column and ((r - first) % DEPTH == DEPTH - 1 or r == last - 1):  # flush into float64
                for j in range(n):
                    dgamma_part[c, j] += dgamma_blk[j]
                    dbeta_part[c, j] += dbeta_blk[j]
                dgamma_blk[:] = 0
                dbeta_blk[:] = 0


def dyt_forward(x, alpha, gamma=None, beta=None, *, channels_last=True, out=None):
    """Like :func:`normref.ops.dyt.dyt_forward`; the cache is a :class:`NumbaDyTCache`.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    a = dyt_args(x, alpha, gamma, beta, channels_last=channels_last, allow_complex=False)
    x = np.ascontiguousarray(a.x)
    axis = a.channel_axis
    channels = x.shape[axis]
    per_column = math.prod(x.shape[axis + 1:]) == 1
    x2 = x.reshape(-1, channels) if per_column else x.reshape(-1, math.prod(x.shape[axis + 1:]))
    g, b = kernel_affine(x, a.gamma, a.beta, channels)
    y = output_like(x, out)
    t = np.empty_like(x2)
    with threads_for(x.nbytes):
        dyt_forward_kernel(x2, a.alpha[0], g, b, per_column, t, y.reshape(x2.shape))
    return y, NumbaDyTCache(x2, t, a.alpha, g, a.gamma is not None, a.beta is not None, axis, x.shape, per_column)


def dyt_backward(dy, cache: NumbaDyTCache, *, out=None):
    """``(dx, dalpha, dgamma, dbeta)``, like :func:`normref.ops.dyt.dyt_backward` (two-stage reductions).

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    x2 = cache.x
    dy2 = kernel_dy(dy, cache.x_shape, x2.dtype).reshape(x2.shape)
    dx = output_like(x2, out, cache.x_shape, inputs=(dy2, cache.t))
    chunks = chunk_count(x2.shape[0])
    dalpha_part = np.zeros(chunks)  # stage 1: chunk c owns entry c / row c
    dgamma_part, dbeta_part = np.zeros((chunks, cache.gamma.size)), np.zeros((chunks, cache.gamma.size))
    with threads_for(x2.nbytes):
        dyt_backward_kernel(x2, cache.t, dy2, cache.alpha[0], cache.gamma, cache.per_column, dx.reshape(x2.shape),
                            dalpha_part, dgamma_part, dbeta_part)
    dtype = x2.dtype  # stage 2: fixed-order sums over the chunks
    dalpha = np.array([dalpha_part.sum()], dtype)
    dgamma = dgamma_part.sum(axis=0).astype(dtype) if cache.has_gamma else None
    dbeta = dbeta_part.sum(axis=0).astype(dtype) if cache.has_beta else None
    return dx, dalpha, dgamma, dbeta


register("dyt", "numba", dyt_forward, dyt_backward)
