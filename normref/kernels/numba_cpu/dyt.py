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

The float32 ``tanh``: vectorized (:mod:`._tanh`)
------------------------------------------------
Numba lowers ``np.tanh`` to LLVM's ``llvm.tanh`` intrinsic; without Intel SVML (not installed here: ``numba -s``
reports ``SVML Operational: False``) LLVM scalarizes it into calls to the C library's ``tanhf``/``tanh``, about
20 ns each, and a loop around a call is not vectorized: the float32 forward was *slower* than the NumPy reference,
whose own float32 ``tanh`` is SIMD. For float32 the forward therefore computes ``t`` with
:func:`._tanh.tanh_f32` (through :func:`._tanh.tanh_storage`, chosen at compile time): an odd rational function
of degree 11/10 on ``|x|`` clamped to ``c = 9.010914`` (the smallest float32 whose ``tanh`` rounds to 1),
evaluated in float64 by Horner's rule and rounded once; within 0.5006 ulp of the exact ``tanh`` over every float32
(exhaustive sweep), monotonic, odd bit for bit, ``±inf → ±1``, ``NaN → NaN``. Only ``abs``, a select, ``+``,
``×``, ``÷`` and ``copysign``, so the loop compiles to AVX2 code (``vdivpd %ymm``, no call; checked with
``dyt_forward_kernel.inspect_asm``). float64 keeps ``np.tanh`` (the C library's ``tanh``, ~20 ns a value).

Measured on 8192×1024 float32 (32 MiB, α = 0.8, γ and β given), 2 threads, 41 interleaved rounds, medians (p10 -
p90), timing each call of the public ``dyt_forward`` (which allocates ``y`` and ``t``) with ``time.perf_counter``:

==========================================  ========================
forward                                     median (p10 - p90)
==========================================  ========================
this backend, ``tanh_f32``                  16.8 ms (15.0 - 18.1)
this backend, ``np.tanh`` (before)          125.7 ms (115.1 - 128.3)
NumPy reference (:mod:`normref.ops.dyt`)    50.8 ms (48.5 - 69.4)
the same rational in float32 arithmetic     13.8 ms (13.2 - 15.3)
``np.copy(x)``                              7.0 ms (6.7 - 8.4)
==========================================  ========================

7.5× faster than before and 3× faster than NumPy. The float32-arithmetic variant (4.6-7 ulp, not monotonic;
:mod:`._tanh` explains) would save another 3 ms; the forward kernel alone, with ``y`` and ``t`` preallocated and
already touched, takes 9.8 ms, the rest of the 16.8 ms is the first touch of the two fresh 32 MiB outputs.
Results agree with the NumPy reference to 4.8e-7 absolute (the same as with ``np.tanh``).

Store ``t`` or recompute it? (decision: store)
----------------------------------------------
Storing ``t`` costs one more write of the array's size in the forward and a tensor the size of ``x`` in the
cache (the NumPy reference's cache holds one too); recomputing costs a second ``tanh`` per value in the backward.
Kernels alone on 8192×1024 float32, outputs preallocated, 2 threads, 41 interleaved rounds, medians (the
recomputing backward fills a ``BLOCK``-sized scratch with ``tanh`` before the piece's loops; its results are bitwise
the same):

=====================  =========  ==========  =======
variant                forward    backward    total
=====================  =========  ==========  =======
store ``t``            9.8 ms     8.8 ms      18.6 ms
recompute ``t``        9.5 ms     13.0 ms     22.5 ms
=====================  =========  ==========  =======

So storing still wins with the vectorized ``tanh``, by less than with ``np.tanh`` (there, 180 against 318 ms
forward + backward: the recomputation was a second 150 ms of ``tanhf`` calls). On float64 (``np.tanh``), the
forward is one C-library call per value: 4096×1024 forward 62 ms against NumPy's 101 ms, backward 7.8 against
75 ms (2 threads, measured before the float32 change, which does not touch the float64 code).

Accuracy of the ``tanh``
------------------------
float32: :mod:`._tanh` (≤ 0.5006 ulp). NumPy's SIMD float32 ``tanh`` reaches 1.37 ulp (every 7th float32 in
``[0, c]``); on those values the two are bitwise equal on 97 % and never more than 1 ulp apart. float64: the C
library's ``tanh`` (glibc here), measured on 7 M values from ``N(0, s²)``, ``s`` from 1e-6 to 100, against a
long-double ``tanh``: at most 2.2 ulp (NumPy's: 1.2 ulp); the two agree to 2.2e-16 norm-relative.
``tests/test_backend_numba_seed.py`` checks the agreement with NumPy (≤ 1e-5 float32, ≤ 1e-12 float64, and within
4 ulp elementwise), ``tests/test_tanh32.py`` the float32 ``tanh`` itself.

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
from ._common import (BLOCK, LANES, MAX_CHUNKS, chunk_count, dot_sum, flush_row_block, kernel_affine, kernel_dy,
                      output_like, sum_shifted, threads_for)
from ._tanh import tanh_storage


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
    """``t = tanh(α·x)``, ``y = t·γ + β`` on the ``(rows, n)`` view (``tanh``: :func:`._tanh.tanh_f32` for float32,
    vectorized; ``np.tanh`` for float64).

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
                tr[j] = tanh_storage(alpha * xr[j])
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
            if per_column:  # flush into float64 every DEPTH rows
                flush_row_block(r, first, last, c, dgamma_blk, dbeta_blk, dgamma_part, dbeta_part)


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
