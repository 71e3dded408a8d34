r"""What every Numba CPU kernel shares: compile options, the lane-blocked sums, and the array boundary.

Compile options
---------------
Every kernel is compiled with ``parallel=True, fastmath=False, cache=True``, spelled out at each ``@njit``:

* ``fastmath=False`` forbids the compiler from reassociating floating-point sums or contracting ``a*b + c`` into
  an FMA, so a kernel computes exactly the operations written in its source, in that order, and its results are
  bitwise reproducible. A fastmath build would round differently; it would get its own backend name.
* ``cache=True`` writes the compiled machine code to Numba's on-disk cache, so only the first run on a machine pays
  the compile time (``normref bench`` reports that cold start separately).
* Kernels are compiled for float32 and float64. Per-row and per-channel statistics are float64 (``mean``,
  ``rstd``); elementwise work (``x̂``, ``y``, ``dx``) runs in the storage dtype.

Sums in lanes and blocks
------------------------
Without reassociation, ``s += v[j]`` is one chain of dependent additions, one per floating-point latency (3-4
cycles): several times slower than memory. (Numba also leaves LLVM's SLP vectorizer off by default,
``NUMBA_SLP_VECTORIZE=0``, so hand-unrolled scalar lanes ``a0 += ...; a1 += ...`` stay scalar.) The sums here are
instead written as an *elementwise* loop over an array of :data:`LANES` partial sums::

    for i in range(0, m, LANES):          # the values, LANES at a time
        for k in range(LANES):            # lane k adds values k, k + LANES, k + 2·LANES, ...
            lanes[k] += v[i + k] - shift

The inner loop carries no dependence from one ``k`` to the next, so LLVM's loop vectorizer turns it into a few
SIMD additions (8 float32 or 4 float64 per AVX2 instruction) with no licence to reorder anything: lane ``k`` adds
its values in index order, vectorized or not, so the result is the same on every run, thread count and CPU.
The lane array lives in memory, not in registers, so :data:`LANES` is 64 (not the 32 that would suffice to hide
the addition latency): the per-pass cost of loading, storing and alias-checking the lanes is then spread over
twice the values, which halved the forward's time per value (measured; see the constant).

The lanes hold the *storage* dtype, which for float32 input is 8 values per instruction instead of 4, but limits
the depth: a lane takes at most :data:`DEPTH` values, then the block's lanes are added (converted exactly) into
float64 lanes, and at the end of the vector the float64 lanes are summed pairwise (:func:`pairwise_total`).
Statistics of float64 input are float64 throughout.

**Error bound** (u = unit roundoff of the storage dtype, 2⁻²⁴ ≈ 6.0e-8 for float32, 2⁻⁵³ for float64;
Higham, *Accuracy and Stability of Numerical Algorithms*, §4.2). A sum of terms ``t_j`` (each already rounded once,
relative error ≤ u) accumulated this way satisfies

.. math::

    \Bigl|\widehat{\textstyle\sum_j t_j} - \textstyle\sum_j t_j\Bigr|
    \le \bigl((D - 1)\,u + u + (\lceil n/B\rceil + \log_2 L)\,u_{64}\bigr) \textstyle\sum_j |t_j|
    \approx D\,u \textstyle\sum_j |t_j|,

with ``D = DEPTH = 16``, ``L = LANES``, ``B = L·D``: ≤ 9.6e-7 Σ|t| in float32 (the float64 stages add ~1e-16 per
level). NumPy's own float32 sums (pairwise, blocks of 8, used by the reference backward for ``c1``, ``c2``,
``dgamma``) have a bound of the same kind, ``(log2(n/8) + 8)u Σ|t|``. Where the bound lands in each result:

* **mean** (corrected two-pass, :func:`moments`): pass 1 gives ``μ₁ = K + Σ(x - K)/n`` with ``K = x[0]``; pass 2
  sums ``d = x - m`` and ``d²`` with ``m = μ₁`` rounded to storage, and returns ``μ = m + Σd/n`` and
  ``σ² = Σd²/n - (Σd/n)²`` (Björck's corrected two-pass formula; exact in exact arithmetic for any ``m``).
  Because ``m`` is already within ``D·u(σ + |K - μ|)`` of ``μ``, ``Σ|d| ≤ n(σ + |m - μ|)``, so
  ``|μ̂ - μ| ≤ 2D·u·σ``: an error of at most ~2e-6 in ``x̂ = (x - μ)/σ``, **independent of the offset** ``|μ|/σ``
  (a float32 row ``1000 + 0.01·N(0,1)`` keeps its statistics to a few 1e-7 relative, tested).
* **variance**: terms ``d² ≥ 0`` do not cancel, so ``|σ̂² - σ²| ≤ (D + 2)u σ²``: ``rstd`` to ~6e-7 relative.
* **c1, c2** (``mean(g·x̂)``, ``mean(g)`` of the backward): absolute error ≤ ``D·u·mean|g|`` and
  ``D·u·mean|g·x̂|``, so ``dx = rstd(g - c2 - x̂·c1)`` is off by ≤ ~2e-6 of ``rstd·max|g|``.
* **dgamma, dbeta** (sums over rows of the chunk, the same blocking across rows: ≤ ``D`` rows in the storage dtype,
  then float64): error ≤ ``(D + 2)u Σ_rows|dy·x̂|``.

The float32 tests see 1e-7 to 1e-6 norm-relative error against the float64 reference, under the 1e-5 tolerance;
float64 sees ~1e-15 (tolerance 1e-12).

Short vectors (at most :data:`LANES` values, e.g. a 5×5 GroupNorm segment) skip the lanes: one float64 chain.

Overlapping memory and arithmetic: software prefetch
----------------------------------------------------
A kernel reads a row (or slice) from memory once and then works on it in L1/L2 for one or two more passes. During
those in-cache passes a core issues no memory requests of its own, and one core alone cannot saturate the memory
system here (a one-thread copy moves about half of what two threads move), so the time of a row is its memory time
*plus* its arithmetic time. :func:`prefetch_lines` asks for the next rows' cache lines before the arithmetic on the
current one starts (LLVM's ``llvm.prefetch``: a hint, it changes no value), so the two overlap. Measured on the
8192×1024 float32 LayerNorm forward, 2 threads, 40 interleaved rounds: median 5.59 → 4.59 ms (a copy of the same
array: 3.19 ms).

The boundary
------------
Kernels index raw, C-contiguous arrays. :func:`as_kernel_array` makes a non-contiguous input contiguous, which
**copies it** (one extra read and write of the tensor, documented in every op): a strided view would make every
inner loop a gather. Complex input, which the NumPy reference accepts for the complex step, raises ``TypeError``
here: the kernels are real-only. Outputs can be passed in (``out=`` on every forward and backward): a fresh
32 MiB array costs a page-zeroing pass in the kernel on first touch (about 3-4 ms here), more than a third of the
bandwidth floor of a forward pass; a caller that reuses buffers skips it.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..._validate import as_array, cast_like, check_dy, check_param

# The helpers are small and called from inside parallel loops; LLVM inlines them into each kernel.
HELPER = dict(fastmath=False, cache=True)

# Independent partial sums per reduction: 8 AVX2 registers of float32 (16 of float64). 64 rather than 32: the
# lanes live in memory (LLVM cannot prove they do not alias the input), so each pass of the inner loop pays a
# fixed cost (runtime alias check, loads and stores of the lanes) that 64 values amortize better than 32. Measured
# on one thread, data in cache, 64x1024 float32: LayerNorm forward 1.19 -> 0.55 ns/value, RMSNorm forward
# 0.89 -> 0.38, LayerNorm backward 0.80 -> 0.66 (128 lanes was no faster than 64; 8 named scalar float32
# accumulators, tried for the moments, compiled to scalar code and were slower than either).
LANES = 64
# Values added into one lane in the storage dtype before the block is flushed into float64 (the error bound's D).
DEPTH = 16
BLOCK = LANES * DEPTH

# A fixed number of row chunks for the two-stage parameter-gradient reduction. It does not depend on the number of
# threads, so the partial sums, and therefore dgamma and dbeta, are bitwise the same on any machine.
MAX_CHUNKS = 32

# Below this many bytes of input a kernel runs on the calling thread only. Waking the thread pool costs more than the
# work, and on a loaded machine a parallel region waits for a descheduled worker: seen here on a tiny LayerNorm,
# median 0.06 ms on one thread against a 90th percentile of 20-30 ms on two. The results do not depend on it.
PARALLEL_MIN_BYTES = 256 * 1024


# How many rows (slices) ahead a kernel prefetches: 1 was measurably worse than 2; 4 no better than 2.
PREFETCH_AHEAD = 2
# Bytes per cache line (x86-64 and most ARM cores): one prefetch per line.
CACHE_LINE = 64


@intrinsic
def prefetch(typingctx, array, index):
    """``prefetch(a, i)``: hint the CPU to load the cache line holding ``a[i]`` (1-D ``a``) for reading.

    Emits ``llvm.prefetch(ptr, rw=0 (read), locality=3 (keep in all levels), cache=1 (data))``. A hint only:
    it cannot fault, even past the end of the array, and changes no result.
    """
    if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]], wraparound=False,
                                           boundscheck=False)
        i32 = ir.IntType(32)
        byte_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer.type,
                                                                                            i32, i32, i32]),
                                              "llvm.prefetch.p0")
        builder.call(hint, [byte_pointer, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@njit(**HELPER)
def prefetch_lines(v):
    """Prefetch every cache line of the contiguous 1-D ``v`` (see "Overlapping memory and arithmetic")."""
    step = max(1, CACHE_LINE // v.itemsize)
    for i in range(0, v.size, step):
        prefetch(v, i)


@contextlib.contextmanager
def threads_for(nbytes: int):
    """Run the enclosed kernel call on one thread when the input is smaller than :data:`PARALLEL_MIN_BYTES`.

    (Numba's default static split of the ``prange`` iterations is kept: dynamic scheduling,
    ``numba.set_parallel_chunksize(1)``, was measured here under load and was no better, 28-40 ms against 32 ms
    for a LayerNorm forward+backward on 32 MiB, so it is not worth the extra state.)
    """
    if nbytes >= PARALLEL_MIN_BYTES:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@njit(**HELPER)
def pairwise_total(wide):
    """Sum the float64 lanes pairwise, in place: ``wide[k] += wide[k + w]`` for ``w = LANES/2, ..., 1``."""
    w = LANES // 2
    while w:
        for k in range(w):
            wide[k] += wide[k + w]
        w //= 2
    return wide[0]


@njit(**HELPER)
def _block_sums(v, shift, lanes):
    """``lanes[0, k] = Σ_i d[i·L + k]`` and ``lanes[1, k] = Σ_i d[i·L + k]²``, ``d = v - shift``; ``v.size ≤ BLOCK``."""
    n = v.size
    m = n - n % LANES
    s1, s2 = lanes[0], lanes[1]
    s1[:] = 0
    s2[:] = 0
    for i in range(0, m, LANES):
        for k in range(LANES):  # elementwise in k: vectorized, and lane k's order of additions is fixed
            d = v[i + k] - shift
            s1[k] += d
            s2[k] += d * d
    for j in range(m, n):
        d = v[j] - shift
        s1[j - m] += d
        s2[j - m] += d * d


@njit(**HELPER)
def _block_sum(v, shift, lanes):
    """``lanes[k] = Σ_i (v[i·L + k] - shift)`` over one block (``v.size ≤ BLOCK``)."""
    n = v.size
    m = n - n % LANES
    lanes[:] = 0
    for i in range(0, m, LANES):
        for k in range(LANES):
            lanes[k] += v[i + k] - shift
    for j in range(m, n):
        lanes[j - m] += v[j] - shift


@njit(**HELPER)
def _block_sumsq(v, lanes):
    """``lanes[k] = Σ_i v[i·L + k]²`` over one block (``v.size ≤ BLOCK``)."""
    n = v.size
    m = n - n % LANES
    lanes[:] = 0
    for i in range(0, m, LANES):
        for k in range(LANES):
            lanes[k] += v[i + k] * v[i + k]
    for j in range(m, n):
        lanes[j - m] += v[j] * v[j]


@njit(**HELPER)
def sum_shifted(v, shift, lanes, wide):
    """``Σ_j (v[j] - shift)`` in float64, lane-blocked (``lanes``/``wide``: scratch rows from the kernel)."""
    if v.size <= LANES:
        t = 0.0
        for j in range(v.size):
            t += v[j] - shift
        return t
    wide[:] = 0.0
    for b in range(0, v.size, BLOCK):
        _block_sum(v[b:b + BLOCK], shift, lanes)
        for k in range(LANES):
            wide[k] += lanes[k]
    return pairwise_total(wide)


@njit(**HELPER)
def sum_squares(v, lanes, wide):
    """``Σ_j v[j]²`` in float64, lane-blocked: RMSNorm's mean square (no shift, nothing to cancel)."""
    if v.size <= LANES:
        t = 0.0
        for j in range(v.size):
            t += v[j] * v[j]
        return t
    wide[:] = 0.0
    for b in range(0, v.size, BLOCK):
        _block_sumsq(v[b:b + BLOCK], lanes)
        for k in range(LANES):
            wide[k] += lanes[k]
    return pairwise_total(wide)


@njit(**HELPER)
def moments(v, lanes, wide):
    """``(mean, var)`` of a 1-D vector, float64: the corrected two-pass algorithm (see the module docstring).

    Pass 1: ``μ₁ = K + Σ(v - K)/n`` with ``K = v[0]``. Pass 2, with ``m = μ₁`` rounded to the storage dtype:
    ``S₁ = Σ(v - m)``, ``S₂ = Σ(v - m)²``; ``mean = m + S₁/n``, ``var = S₂/n - (S₁/n)²``. No ``E[x²] - E[x]²``:
    ``S₁/n`` is the small correction ``mean - m``, whose square is far below ``S₂/n``.
    """
    m, c, var = moment_parts(v, lanes, wide)
    return m + c, var


@njit(**HELPER)
def moment_parts(v, lanes, wide):
    """:func:`moments` in parts, ``(m, c, var)`` with ``mean = m + c``: the first pass's mean ``m`` (a
    storage-dtype value, as float64) and the small correction ``c = S₁/n`` kept apart, so a caller can form
    ``mean - m'`` for a nearby ``m'`` as ``(m - m') + c``, exact in its large part (BatchChannelNorm does)."""
    n = v.size
    shift = v[0]
    m = v.dtype.type(shift + sum_shifted(v, shift, lanes[0], wide[0]) / n)
    if n <= LANES:
        s1 = s2 = 0.0
        for j in range(n):
            d = v[j] - m
            s1 += d
            s2 += d * d
    else:
        wide[:] = 0.0
        for b in range(0, n, BLOCK):
            _block_sums(v[b:b + BLOCK], m, lanes)
            for k in range(LANES):
                wide[0, k] += lanes[0, k]
                wide[1, k] += lanes[1, k]
        s1, s2 = pairwise_total(wide[0]), pairwise_total(wide[1])
    c = s1 / n
    return float(m), c, max(s2 / n - c * c, 0.0)


@njit(**HELPER)
def flush_row_block(r, first, last, c, dgamma_blk, dbeta_blk, dgamma_part, dbeta_part):
    """Every :data:`DEPTH` rows of a chunk (and at its last row ``last - 1``), add the storage-dtype row buffers
    ``dgamma_blk``, ``dbeta_blk`` into row ``c`` of the float64 partials and zero them: the row-wise backward's
    blocking of ``Σ_rows dy·x̂`` and ``Σ_rows dy`` (the error bound's ``D`` rows per block)."""
    if (r - first) % DEPTH == DEPTH - 1 or r == last - 1:
        for j in range(dgamma_blk.size):
            dgamma_part[c, j] += dgamma_blk[j]
            dbeta_part[c, j] += dbeta_blk[j]
        dgamma_blk[:] = 0
        dbeta_blk[:] = 0


@njit(**HELPER)
def _block_dot_sum(dy, x, shift, lanes):
    """``lanes[0, k] = Σ_i dy·(x - shift)``, ``lanes[1, k] = Σ_i dy`` over one block (lane ``k``: ``i·L + k``)."""
    n = x.size
    m = n - n % LANES
    p, q = lanes[0], lanes[1]
    p[:] = 0
    q[:] = 0
    for i in range(0, m, LANES):
        for k in range(LANES):
            p[k] += dy[i + k] * (x[i + k] - shift)
            q[k] += dy[i + k]
    for j in range(m, n):
        p[j - m] += dy[j] * (x[j] - shift)
        q[j - m] += dy[j]


@njit(**HELPER)
def dot_sum(dy, x, shift, lanes, wide):
    """``(Σ_j dy[j]·(x[j] - shift), Σ_j dy[j])`` in float64, lane-blocked.

    The two sums the backward needs per normalized set with a scalar ``gamma`` (BatchNorm's channel, a GroupNorm
    segment): times ``rstd`` and ``gamma`` they give ``dgamma``, ``dbeta``, ``c1`` and ``c2``.
    """
    if x.size <= LANES:
        p = q = 0.0
        for j in range(x.size):
            p += dy[j] * (x[j] - shift)
            q += dy[j]
        return p, q
    wide[:] = 0.0
    for b in range(0, x.size, BLOCK):
        _block_dot_sum(dy[b:b + BLOCK], x[b:b + BLOCK], shift, lanes)
        for k in range(LANES):
            wide[0, k] += lanes[0, k]
            wide[1, k] += lanes[1, k]
    return pairwise_total(wide[0]), pairwise_total(wide[1])


def as_kernel_array(x, name: str) -> np.ndarray:
    """``x`` as a real, C-contiguous float32/float64 array (a copy only when ``x`` is not contiguous)."""
    return np.ascontiguousarray(as_array(x, name, allow_complex=False))


def output_like(x: np.ndarray, out, shape: tuple[int, ...] | None = None, inputs=()) -> np.ndarray:
    """A fresh output like ``x`` (``out=None``), or ``out`` checked: an ndarray of ``shape`` (default ``x.shape``),
    ``x``'s dtype, C-contiguous, writeable, overlapping neither ``x`` nor ``inputs`` (else ``TypeError``/
    ``ValueError``)."""
    shape = x.shape if shape is None else tuple(shape)
    if out is None:
        return np.empty(shape, x.dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape or out.dtype != x.dtype:
        raise ValueError(f"out must have shape {shape} and dtype {x.dtype}, got {out.shape} {out.dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be C-contiguous and writeable")
    if any(np.may_share_memory(out, a) for a in (x,) + tuple(inputs)):
        raise ValueError("out must not overlap the inputs")
    return out


def real_affine(x: np.ndarray, gamma, beta, shape: tuple[int, ...]):
    """Validate ``(gamma, beta)`` like the reference, refuse complex, cast to ``x``'s dtype (``None`` stays)."""
    gamma = cast_like(x, check_param(gamma, "gamma", shape, allow_complex=False))
    beta = cast_like(x, check_param(beta, "beta", shape, allow_complex=False))
    return gamma, beta


def kernel_affine(x: np.ndarray, gamma, beta, size: int):
    """The affine as the kernels take it: flat ``(size,)`` arrays; an absent ``gamma`` is ones, ``beta`` zeros.

    ``v·1`` and ``v + 0`` are exact, so the identity affine changes no bit of ``y``; it saves a branch in every inner
    loop. (The gradients of an absent parameter are computed and dropped.)
    """
    g = np.ones(size, x.dtype) if gamma is None else np.ascontiguousarray(gamma).reshape(size)
    b = np.zeros(size, x.dtype) if beta is None else np.ascontiguousarray(beta).reshape(size)
    return g, b


def real_stats(stats_pair):
    """Refuse complex given statistics (the reference's ``check_stats`` has already checked shapes)."""
    for s in stats_pair:
        if s is not None and np.iscomplexobj(s):
            raise TypeError("stats must be real on the Numba backends ('numba', 'numba-fast'), got a complex array")
    return stats_pair


def kernel_dy(dy, x_shape, dtype) -> np.ndarray:
    """Validate ``dy`` against the forward's output like the reference, refuse complex, make it contiguous."""
    dy = check_dy(dy, x_shape, dtype)
    if dy.dtype.kind == "c":
        raise TypeError("dy must be real on the Numba backends ('numba', 'numba-fast'), got a complex array")
    return np.ascontiguousarray(dy)


def backward_arrays(dy, x_view: np.ndarray, x_shape: tuple[int, ...], out=None):
    """``(dy_view, dx)`` for a backward: ``dy`` checked against the forward's output (:func:`kernel_dy`) and viewed
    like the kernel's ``x_view``; ``dx`` fresh, or ``out`` checked (:func:`output_like`: ``x_shape``, C-contiguous,
    overlapping neither the input nor ``dy``)."""
    dy_view = kernel_dy(dy, x_shape, x_view.dtype).reshape(x_view.shape)
    return dy_view, output_like(x_view, out, x_shape, inputs=(dy_view,))


def chunk_count(rows: int) -> int:
    """How many row chunks the backward's partial sums use: ``min(rows, MAX_CHUNKS)``, fixed by the shape alone."""
    return max(1, min(rows, MAX_CHUNKS))


class NumbaNormCache(NamedTuple):
    """What a Numba backward needs: the input and two numbers per statistic, not ``x̂`` (recomputed in-cache).

    ``mean``, ``var`` and ``x_shape`` mean what they mean in :class:`normref.ops._normalize.NormalizeCache` (same
    shapes and dtype), so ``batch_norm_batch_stats``/``instance_norm_batch_stats`` read either cache. ``x`` is a
    reference to the contiguous input (a copy only if the input was not contiguous): modifying the input in place
    between forward and backward changes the gradient, as it would in PyTorch without its version check.
    """

    mean: np.ndarray | None  # keepdims shape in the op's view, x's dtype; None without centering (RMSNorm)
    var: np.ndarray  # same shape: the variance used (the mean square for RMSNorm)
    x_shape: tuple[int, ...]  # the caller's shape of x (and of dy, dx)
    x: np.ndarray  # the kernel's view of x: (rows, n) row-wise or (N, C, S) column-wise
    kernel_mean: np.ndarray  # (statistics,) float64; zeros for RMSNorm
    rstd: np.ndarray  # (statistics,) float64, 1/sqrt(var + eps)
    gamma: np.ndarray  # the kernel's flat gamma (ones when absent)
    has_gamma: bool
    has_beta: bool
    param_shape: tuple[int, ...] | None  # the caller's shape of gamma and beta
    batch_stats: bool  # statistics came from x (the gradient flows through them)
    center: bool  # False for RMSNorm
    layout: tuple  # (groups, seg) for the per-segment row kernels; () otherwise
    backend: str = "numba"


def given_stats_flat(mean, var, stat_shape: tuple[int, ...]):
    """Given statistics as the kernels take them: broadcast to ``stat_shape``, then flat float64 arrays.

    ``mean=None`` (RMSNorm) gives zeros. Complex statistics raise ``TypeError``.
    """
    real_stats((mean, var))
    flat_var = np.array(np.broadcast_to(var, stat_shape), dtype=np.float64).reshape(-1)
    flat_mean = (np.zeros(flat_var.size) if mean is None
                 else np.array(np.broadcast_to(mean, stat_shape), dtype=np.float64).reshape(-1))
    return flat_mean, flat_var


def present_gradients(cache, dgamma64: np.ndarray, dbeta64: np.ndarray):
    """``(dgamma, dbeta)`` cast to ``cache.x``'s dtype, each ``None`` where the cache says the parameter is absent
    (``cache.has_gamma``, ``cache.has_beta``): for kernels whose parameters are already in the caller's shape."""
    dtype = cache.x.dtype
    return (dgamma64.astype(dtype) if cache.has_gamma else None, dbeta64.astype(dtype) if cache.has_beta else None)


def parameter_gradients(cache: NumbaNormCache, dgamma64: np.ndarray, dbeta64: np.ndarray):
    """Cast the float64 parameter sums to ``x``'s dtype and the caller's parameter shape; ``None`` if absent."""
    dtype = cache.x.dtype
    dgamma = dgamma64.astype(dtype).reshape(cache.param_shape) if cache.has_gamma else None
    dbeta = dbeta64.astype(dtype).reshape(cache.param_shape) if cache.has_beta else None
    return dgamma, dbeta
