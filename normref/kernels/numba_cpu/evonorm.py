r"""EvoNorm-B0 and EvoNorm-S0 on the Numba CPU backend, registered as ``"numba"``.

The math, the exact backward and the decisions (biased variances, ``eps`` inside the roots, a tie of the max goes to
the batch branch, ``v = None`` = affine only) are in :mod:`normref.ops.evonorm`; these kernels compute the same
functions with the two templates of this backend. Notation: ``g = γ·dy``, ``S = prod(spatial)``.

EvoNorm-S0: the row-wise template with a per-channel parameter (GroupNorm's layout)
----------------------------------------------------------------------------------
``x`` ``(N, C, *spatial)`` is viewed as ``(N·G, C/G·S)`` rows; row ``r`` is sample ``r // G``, group ``r mod G``,
made of ``C/G`` channel segments of ``S`` values. **Forward**, per row: the corrected two-pass moments
(:func:`._common.moments`), ``rstd = 1/sqrt(var + eps)``, then ``y = ((x·σ(vx))·rstd)·γ + β`` per segment (one
sigmoid per value). **Backward**, ``prange`` over a fixed number of row chunks; per row two passes:

1. per segment ``k``, in pieces of :data:`._common.BLOCK` values, one loop computes ``σ = σ(v x)`` once per value
   and writes

   * ``dx ← (g·rstd)(σ + v x σ(1-σ))``, the part of ``dx`` through ``u = xσ`` (complete unless the std is a batch
     statistic),
   * the piece's terms ``u = xσ`` and ``w = dy·x²σ(1-σ)`` into two ``BLOCK``-sized scratch rows (in L1);

   then the lane-blocked sums of :mod:`._common` give ``(A, B) = (Σ dy·u, Σ dy)`` (:func:`._common.dot_sum` with
   shift 0) and ``D = Σ w`` (:func:`._common.sum_shifted` with shift 0), added into float64 per segment. They give
   ``dγ_k ⊇ A·rstd``, ``dβ_k ⊇ B``, ``dv_k ⊇ γ_k·D·rstd`` (chunk ``c``'s float64 partial rows, the two-stage
   deterministic reduction of :mod:`._rowwise`) and the group's ``Σ g·u = Σ_k γ_k A_k``;
2. batch statistics only: ``dx -= (x - μ)·coef``, ``coef = rstd³·Σ_group(g u)/M_g`` (``M_g = C/G·S``), the term
   through the group std; no sigmoid, and the row is still in cache when it fits in L2 (the bench's rows: 32 768
   values, 384 KB of ``x``, ``dy``, ``dx``). With a given std (``stats=``) pass 1 is the whole backward.

``dx = (T) - (x - μ)·coef`` is evaluated as before, ``T`` rounded to the storage dtype first in either case, so
the split changes no bit.

Store σ or recompute it? (decision: recompute, once per backward)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The old backward recomputed σ in each of its two passes (``dx`` needs the group sum first); pass 1 above writes the
``σ``-dependent part of ``dx`` right away, so one sigmoid per value suffices. Storing ``σ`` instead would save that
one (vectorized) sigmoid: on the same 32 MiB, :mod:`.dyt` measured its equivalent (one vectorized ``tanh`` per value
in the backward) at 4.2 ms of kernel time (13.0 against 8.8 ms). Storing costs a third 32 MiB stream in the forward
(``σ``, which ``out=`` cannot cover: a fresh array every call, whose first touch the bench measures at 3–31 ms on
this machine, see the README), a fourth in the backward, and an ``x``-sized tensor in the cache. Not measured
as a kernel here; by those numbers storing would win by less than its own first touch, so ``σ`` is recomputed.

The float32 sigmoid without ``exp``: ``σ(z) = ½ + ½·tanh(z/2)``
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
``1/(1 + exp(-z))`` compiles to one C-library ``expf`` call per value (no SVML here; :mod:`.dyt` explains), and a
loop around a call is not vectorized: the old S0 spent most of its time there (one call per value in the forward,
two in the backward). For float32, :func:`sigmoid_storage` computes ``h = z/2`` (exact in float64), ``t`` =
:func:`._tanh.tanh_f32_wide` ``(h)`` (the rational ``tanh`` of :mod:`._tanh` **before** its rounding to float32:
``t = tanh h·(1 + δ)``, ``|δ| ≤ 3.72e-11``), ``σ = ½ + ½·t`` in float64, rounded once to float32; for
``h < -c`` (``c = 9.0109``, the clamp of :mod:`._tanh`, i.e. ``z < -18.02``) it returns 0. All of it is ``+``,
``×``, one ``÷``, selects and conversions: the loops compile to AVX2 code (``vdivpd %ymm``, no call). float64
keeps ``1/(1 + exp(-z))`` with the C library's ``exp``.

*Error analysis.* For ``h ≥ -c`` the float64 value is off by ``½·|t - tanh h| ≤ ½·3.72e-11 ≈ 1.9e-11``
**absolute** (plus float64 rounding, ~1e-16), then rounded to float32: ``1.9e-11/(σ·2⁻²⁴)`` ulp on top of the
rounding's half ulp, negligible for ``σ ≥ 0.05`` (≤ 0.006 ulp), about 1 ulp at ``σ ≈ 3e-4`` (``z ≈ -8``), and
growing like ``1/σ`` below, as ``σ(z) ≈ e^z`` shrinks and the absolute error does not. The ``tanh`` is clamped
at ``c`` (its fit is only valid there), which would leave ``σ`` at a plateau ``σ(-2c) = 1.49e-8`` for every
``z < -2c``; sending those to 0 bounds the absolute error by ``σ(-2c) = 1.49e-8 ≈ 2⁻²⁶`` and makes it shrink with
``e^z`` (and gives ``σ(-inf) = 0``, as the exact sigmoid).
Measured against a long-double sigmoid on every 101st float32 in ``[-40, 40]`` (2.2e7 values):

=====================  ================  ===================  ==========================
``z``                  max abs error     max error, ulp of σ  NumPy float32 ``1/(1+e^-z)``
=====================  ================  ===================  ==========================
``[-4, 40)``           2.98e-8 (at σ≈1)  0.506                3.2 ulp
``[-8, -4)``           9.4e-10           1.02                 2.8 ulp
``[-12, -8)``          3.3e-11           18.8                 2.6 ulp
``[-16, -12)``         1.9e-11           1400                 2.5 ulp
``[-18.02, -16)``      1.9e-11           1.0e4                3.4 ulp
``(-40, -18.02)``      1.49e-8 (the 0)   σ itself (100 %)     2.8 ulp
=====================  ================  ===================  ==========================

Monotonic non-decreasing over the sweep; ``σ(±0) = ½``, ``σ(inf) = 1``, ``σ(-inf) = 0``, ``σ(NaN) = NaN``.
*Why it is acceptable for S0.* What enters the output is ``u = x·σ(v x)``, and ``y = γ·u·rstd + β``: an absolute
error ``ε ≤ 2⁻²⁶`` in ``σ`` changes ``u`` by at most ``|x|·2⁻²⁶``, a quarter of float32's unit roundoff relative to
``|x|``, i.e. less than the rounding every float32 value of the input scale already carries (``x·σ`` itself is
rounded with relative error ``2⁻²⁴``). The values whose ``σ`` loses its relative accuracy (``v x < -8``) are those
the layer switches off, whose contribution ``|x|σ`` is below ``3.4e-4·|x|``; the norm-relative error of ``y``
(tested ≤ 1e-5) is therefore unchanged unless *every* value of the tensor is switched off (all ``v x < -8``: a dead
layer, ``y ≈ β``), where the tiny ``γxσ/s`` is correct only to ``1.5e-8·|γ x|/s`` absolute. The backward's
``σ(1-σ)`` (in ``dx``, ``dv``) has the same absolute error bound. float64 is unaffected (the C library's ``exp``).

EvoNorm-B0: the column-wise template (BatchNorm's layout)
---------------------------------------------------------
``x`` is viewed as ``(N, C, S)`` and ``prange`` runs over channels: iteration ``c`` owns channel ``c``, its batch
statistic ``L_c``, its ``N`` instance statistics ``(μ_nc, s_nc)``, its slices of ``y`` and ``dx`` and the entries
``dγ_c``, ``dβ_c``, ``dv_c`` (no partial buffers needed). **Forward**: per slice the two-pass moments give
``μ_nc`` and ``s_nc``; the slices are merged with Chan's formula into the batch variance (one read of the channel,
as in :mod:`._colwise`), then ``d = max(L, v x + s)`` and ``y = (x/d)·γ + β``.

**Backward.** With ``m_R = [R > L]`` (``R = v x + s``), ``q = 1/d`` and ``a = -g x/d² = -(g·(x q))·q``, the
reference's

.. math::

    dx = g\,q + m_R\,v\,a + (x - \mu_{nc})\,\frac{\sum_{slice} m_R a}{S\,s_{nc}}
         + (x - \mu_c)\,\frac{\sum_{channel} (1 - m_R)\,a}{N S L},\quad
    dv = \sum m_R\,a\,x,\quad d\gamma = \sum dy\,x q,\quad d\beta = \sum dy

is computed in three passes per channel, each sum lane-blocked (:mod:`._common`):

1. per slice ``(n, c)``, in pieces of ``BLOCK`` values, one loop with **one division per value** (``q``; the old
   backward had four: ``g x/d²`` and ``x/d`` in its first pass, ``g x/d²`` and ``g/d`` in its second) writes
   ``dx ← g q + m_R v a`` and three scratch rows of the piece (in L1): ``m_R a``, ``(1 - m_R) a`` (selects,
   exact) and ``x q``. Then ``dot_sum(m_R a, x, 0)`` gives ``(Σ m_R a x, Σ m_R a)`` (``dv`` and the slice's
   sum), ``dot_sum(dy, x q, 0)`` gives ``(Σ dy x q, Σ dy)`` (``dγ``, ``dβ``), and
   ``sum_shifted((1 - m_R) a, 0)`` the channel's ``Σ m_L a`` (batch statistics only);
2. per slice, right after its pieces (the slice, 16 KB of ``x`` and of ``dx`` here, still in L1/L2):
   ``dx += (x - μ_nc)·coef_nc`` with ``coef_nc = Σ_slice m_R a/(S s_nc)`` (one division per slice);
3. batch statistics only, once ``Σ_channel m_L a`` is known: ``dx += (x - μ_c)·coef_c``,
   ``coef_c = Σ m_L a/(N S L)`` (one division per channel); the channel (``N·S`` values, 512 KB of ``x`` and of
   ``dx`` here) is read again from L2/L3.

``dx`` is summed left to right in the storage dtype as in one expression (each partial value is rounded to the
storage dtype either way), so splitting it over passes changes no bit; ``x·q`` for ``x/d`` and ``g·q`` for ``g/d``
do (≤ 1 ulp each, within the tolerances).

Accuracy and determinism
------------------------
Every sum of the backward (both layers) is lane-blocked: storage-dtype lanes of depth :data:`._common.DEPTH`,
flushed into float64, summed pairwise; the error bound of :mod:`._common` applies to each, ``≤ (D + 2)u Σ|terms|``
(≈ 1e-6 relative to ``Σ|terms|`` in float32; the old float64 chains were tighter, but these are the bounds the
BatchNorm and GroupNorm kernels already meet). Lane ``k``'s order of additions is fixed, and the number of row chunks
depends on the shape alone, so results are bitwise the same on any thread count (tested). The statistics (means,
stds, ``rstd``) are float64 per row / channel / slice; the elementwise work runs in the storage dtype. A near-tie
``R ≈ L`` may select the other branch than the reference when the two round differently; the output is continuous
there, the gradient is not (see the reference's docstring). Complex input raises ``TypeError``; a non-contiguous
``x`` or ``dy`` is copied first.

Measured
--------
``x`` ``(32, 64, 64, 64)`` float32 (32 MiB), ``γ``, ``β``, ``v`` random, outputs preallocated (``out=``), 2
threads; the old kernels (before this rewrite: ``exp`` per value, scalar float64 sum chains, four divisions per
value in B0's backward) and the new ones timed **interleaved in the same rounds** (21 rounds, medians, ms), since the
shared 2-core machine was loaded throughout (run B: another process held one of the two cores):

=====================  =============  =============  ==============================
kernel call            run A (G=32)   run B (G=8)    note
=====================  =============  =============  ==============================
B0 backward            41.5 → 9.8     87.5 → 24.0    4.2× / 3.6×
S0 forward             35.3 → 11.9    44.0 → 26.6    3.0× / 1.7×
S0 backward            46.6 → 14.7    107.8 → 33.0   3.2× / 3.3×
B0 forward (same)      5.3 / 4.8      11.3 / 13.7    code unchanged: the noise level
``np.copyto`` (2 pass) 7.0            9.4            the memory yardstick
=====================  =============  =============  ==============================

Run A, against ``np.copyto`` (two passes of 32 MiB, 7.0 ms): B0's backward (three passes: ``x``, ``dy`` read,
``dx`` written) takes 1.4 copies, near its floor of 1.5; S0's forward 1.7 copies (floor 1) and backward 2.1 (floor
1.5): S0 is still bound by its sigmoid (4 float64 lanes per AVX2 instruction, one ``vdivpd``), as DyT is by its
``tanh``. Software prefetch (:func:`._common.prefetch_lines`, a later row / slice of ``x`` and ``dy``) was tried
in all three kernels and left out: 0–2 ms better in one interleaved run, no difference in the next.
``normref bench --layer EvoNormS0 --layer EvoNormB0 --largest`` (README, "Seed layers"; S0 with ``G = 8``),
``out=`` column: before (load average 0.5) B0 forward+backward 42.3 ms (22 % of the floor), S0 forward 28.4 ms
(14 %) and forward+backward 95.9 ms (11 %); after, five runs with another process on one of the two cores, S0
forward 12.6–32.0 ms, forward+backward 30–72 ms, B0 forward+backward 16–48 ms (B0's unchanged forward: 6–16 ms,
the spread of the machine); the run shown in the README: S0 12.6 / 30.4 ms (28 % / 26 %), B0 39.6 ms (32 %).

Accuracy against the NumPy reference, ``(8, 16, 32, 32)``, ``y`` and every gradient, worst norm-relative error
before → after: float32 B0 1.6e-7 → 1.9e-7, S0 1.7e-7 → 1.9e-7; float64 B0 3.5e-15 → 3.5e-16, S0 1.1e-15 →
8.3e-16 (tolerances 1e-5 and 1e-12).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..._registry import register
from ..._validate import cast_like, check_ndim, check_nonempty, check_param, check_positive_float, check_stats
from ...ops import evonorm as reference
from ...ops.group_norm import check_groups
from ._colwise import chan_merge_equal
from ._common import (BLOCK, LANES, as_kernel_array, backward_arrays, chunk_count, dot_sum, kernel_affine, kernel_dy,
                      moments, output_like, real_affine, real_stats, sum_shifted, threads_for)
from ._tanh import CLAMP, tanh_f32_wide


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
    """The reference's validation, real only; returns contiguous ``x`` and ``v``, cast parameters."""
    x = as_kernel_array(x, "x")
    check_ndim(x, "x", (3, 4, 5), "(N, C, *spatial) with 1 to 3 spatial axes")
    check_nonempty(x, "x")
    num_channels = x.shape[1]
    gamma, beta = real_affine(x, gamma, beta, (num_channels,))
    v = cast_like(x, check_param(v, "v", (num_channels,), allow_complex=False))
    if v is not None:  # a strided v would compile the kernels a second time, for a non-contiguous layout
        v = np.ascontiguousarray(v)
    return x, gamma, beta, v, (1, num_channels) + (1,) * (x.ndim - 2)


def _affine_only(x, gamma, beta, bshape):
    """``v = None``: ``y = γx + β`` (no normalization); the reference's elementwise NumPy, recorded as ``"numba"``."""
    y, cache = reference._affine_only(x, gamma, beta, bshape)
    return y, cache._replace(backend="numba")


# ---------------------------------------------------------------------------------------------------------------
# EvoNorm-S0


def sigmoid_storage(z):
    """``σ(z) = 1/(1 + e^{-z})`` in the storage dtype, for use inside the kernels; chosen at compile time:
    float32 ``½ + ½·tanh(z/2)`` through :func:`._tanh.tanh_f32_wide` (vectorizable, module docstring), float64
    ``1/(1 + exp(-z))`` (the C library's ``exp``)."""
    return 1.0 / (1.0 + np.exp(-z))


@overload(sigmoid_storage, inline="always")
def _sigmoid_storage_overload(z):
    if z == types.float32:
        def sigmoid_f32(z):
            h = np.float64(z) * 0.5  # exact
            # h < -c: σ(z) < σ(-2c) = 1.49e-8, sent to 0 (the clamped tanh would leave a plateau at 1.49e-8)
            return np.float32(0.0 if h < -CLAMP else 0.5 + 0.5 * tanh_f32_wide(h))
        return sigmoid_f32
    return lambda z: 1.0 / (1.0 + np.exp(-z))


@njit(parallel=True, fastmath=False, cache=True)
def s0_forward_kernel(x, gamma, beta, v, groups, seg, eps, batch_stats, mean, var, rstd, y):
    """EvoNorm-S0 on rows ``(N·G, C/G·S)``; ``gamma``, ``beta``, ``v`` ``(C,)``; ``mean``, ``var``, ``rstd`` ``(N·G,)``
    float64 (``mean``, ``var`` outputs when ``batch_stats``, ``var`` given otherwise)."""
    rows, n = x.shape
    segments = n // seg
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
                sig = sigmoid_storage(vv * xs[j])
                ys[j] = ((xs[j] * sig) * s) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def s0_backward_kernel(x, dy, gamma, v, groups, seg, mean, rstd, batch_stats, dx, dgamma_part, dbeta_part,
                       dv_part):
    """Gradients of :func:`s0_forward_kernel`; the ``*_part`` arrays are ``(chunks, C)`` float64, zero on entry.

    Pass 1 (per piece of a segment, one sigmoid per value): ``dx`` without its group-std term, and the lane-blocked
    ``Σ dy·u``, ``Σ dy``, ``Σ dy·x²σ(1-σ)``; pass 2 (batch statistics only, no sigmoid): ``dx -= (x - μ)·coef``.
    """
    rows, n = x.shape
    segments = n // seg
    chunks = dgamma_part.shape[0]
    per_chunk = (rows + chunks - 1) // chunks
    one, zero = x.dtype.type(1), x.dtype.type(0)
    for c in prange(chunks):  # chunk c owns its rows of dx and row c of the partials
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        u, w = np.empty(min(seg, BLOCK), x.dtype), np.empty(min(seg, BLOCK), x.dtype)  # a piece's terms
        for r in range(c * per_chunk, min(rows, (c + 1) * per_chunk)):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            first = (r % groups) * segments
            s = x.dtype.type(rstd[r])
            gu = 0.0  # Σ over the group of g·u, g = γ·dy, u = x·σ
            for k in range(segments):
                vv, gm = v[first + k], gamma[first + k]
                a = b = d = 0.0
                for lo in range(k * seg, (k + 1) * seg, BLOCK):
                    hi = min((k + 1) * seg, lo + BLOCK)
                    xs, dys, dxs, us, ws = xr[lo:hi], dyr[lo:hi], dxr[lo:hi], u[:hi - lo], w[:hi - lo]
                    for j in range(hi - lo):
                        sig = sigmoid_storage(vv * xs[j])
                        t = sig * (one - sig)
                        us[j] = xs[j] * sig
                        ws[j] = dys[j] * (xs[j] * xs[j] * t)
                        dxs[j] = ((gm * dys[j]) * s) * (sig + vv * xs[j] * t)
                    p, q = dot_sum(dys, us, zero, lanes, wide)  # Σ dy·u, Σ dy over the piece
                    a += p
                    b += q
                    d += sum_shifted(ws, zero, lanes[0], wide[0])  # Σ dy·x²σ(1-σ)
                dgamma_part[c, first + k] += a * rstd[r]
                dbeta_part[c, first + k] += b
                dv_part[c, first + k] += gamma[first + k] * d * rstd[r]
                gu += gamma[first + k] * a
            if batch_stats:  # the group std's term, in cache for rows up to L2's size
                coef = x.dtype.type(gu * rstd[r] ** 3 / n)
                m = x.dtype.type(mean[r])
                for j in range(n):
                    dxr[j] -= (xr[j] - m) * coef


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
    dy2, dx = backward_arrays(dy, x2, cache.x_shape, out)
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
def b0_backward_kernel(x, dy, gamma, v, batch_mean, big_l, mean_i, std_i, batch_stats, dx, dgamma, dbeta, dv):
    """Gradients of :func:`b0_forward_kernel`: ``dx`` and float64 ``dgamma``, ``dbeta``, ``dv`` ``(C,)`` (passes:
    module docstring)."""
    batch, channels, size = x.shape
    one, zero = x.dtype.type(1), x.dtype.type(0)
    width = min(size, BLOCK)
    for c in prange(channels):  # iteration c owns channel c: dx[:, c, :] and entry c of every output
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        # a piece's terms: m_R·a, m_L·a, x/d (a = -g x/d²)
        a_r, a_l, x_d = np.empty(width, x.dtype), np.empty(width, x.dtype), np.empty(width, x.dtype)
        lc, vv, gm = x.dtype.type(big_l[c]), v[c], gamma[c]
        sum_l = dvc = dgc = dbc = 0.0
        for i in range(batch):
            s = x.dtype.type(std_i[i, c])
            sum_r = 0.0
            for lo in range(0, size, BLOCK):
                hi = min(size, lo + BLOCK)
                xs, dys, dxs = x[i, c, lo:hi], dy[i, c, lo:hi], dx[i, c, lo:hi]
                ar, al, xd = a_r[:hi - lo], a_l[:hi - lo], x_d[:hi - lo]
                for j in range(hi - lo):  # pass 1: one division per value
                    r = vv * xs[j] + s
                    right = r > lc  # a tie goes to the batch branch
                    q = one / (r if right else lc)
                    g = gm * dys[j]
                    xd[j] = xs[j] * q
                    a = -(g * xd[j]) * q
                    ar[j] = a if right else zero
                    al[j] = zero if right else a
                    dxs[j] = g * q + (vv * a if right else zero)
                p, t = dot_sum(ar, xs, zero, lanes, wide)  # Σ m_R a x, Σ m_R a
                dvc += p
                sum_r += t
                p, t = dot_sum(dys, xd, zero, lanes, wide)  # Σ dy x/d, Σ dy
                dgc += p
                dbc += t
                if batch_stats:
                    sum_l += sum_shifted(al, zero, lanes[0], wide[0])  # Σ m_L a
            coef_i = x.dtype.type(sum_r / (size * std_i[i, c]))  # the slice, still in cache: the instance term
            mi = x.dtype.type(mean_i[i, c])
            xs, dxs = x[i, c], dx[i, c]
            for j in range(size):
                dxs[j] += (xs[j] - mi) * coef_i
        dgamma[c], dbeta[c], dv[c] = dgc, dbc, dvc
        if batch_stats:  # pass 2: the batch term, once Σ m_L a over the channel is known
            coef_b = x.dtype.type(sum_l / (batch * size * big_l[c]))
            mb = x.dtype.type(batch_mean[c])
            for i in range(batch):
                xs, dxs = x[i, c], dx[i, c]
                for j in range(size):
                    dxs[j] += (xs[j] - mb) * coef_b


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
    dy3, dx = backward_arrays(dy, x3, cache.x_shape, out)
    channels = x3.shape[1]
    dgamma, dbeta, dv = np.empty(channels), np.empty(channels), np.empty(channels)
    with threads_for(x3.nbytes):
        b0_backward_kernel(x3, dy3, cache.gamma, cache.v, cache.batch_mean, cache.batch_std, cache.mean, cache.std,
                           cache.batch_stats, dx.reshape(x3.shape), dgamma, dbeta, dv)
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
