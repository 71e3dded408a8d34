r"""What every Numba CPU kernel shares: compile options, lane-split sums, and the array boundary.

Compile options
---------------
Every kernel is compiled with ``parallel=True, fastmath=False, cache=True``, spelled out at each ``@njit``:

* ``fastmath=False`` forbids the compiler from reassociating floating-point sums, so a kernel computes exactly the
  order of operations written in its source. A fastmath build would be faster on the reductions and would round
  differently; if one is ever added it gets its own backend name, so the checked path never changes silently.
* ``cache=True`` writes the compiled machine code next to the source (or to ``NUMBA_CACHE_DIR``), so only the
  first run on a machine pays the compile time (``normref bench`` reports that cold-start cost separately).
* Kernels are compiled for float32 and float64 only: parameters, statistics and gradients are passed in fixed
  dtypes (float64 for statistics and partial sums, ``x``'s dtype for ``gamma``/``beta``), so each kernel has exactly
  two signatures.

Sums in lanes
-------------
Without reassociation, ``s += v[j]`` is one long chain of dependent additions: one addition per floating-point
latency (3-4 cycles), far slower than memory. :func:`sum_lanes` and friends keep four independent partial sums
(``j ≡ 0, 1, 2, 3 (mod 4)``) and add them in a fixed order at the end. That is a different, equally exact order of
summation (it is a step towards pairwise summation), written out in the source, so the compiler may put the four
lanes in one SIMD register without any fastmath licence, and the result is the same on every run. Sums accumulate in
float64 whatever the storage dtype (:func:`normref._moments.accumulation_dtype`).

The boundary
------------
Kernels index raw, C-contiguous arrays. :func:`as_kernel_array` makes a non-contiguous input contiguous, which
**copies it** (one extra read and write of the tensor, documented in every op): a strided view would make every
inner loop a gather. Complex input, which the NumPy reference accepts for the complex step, raises ``TypeError``
here: the kernels are real-only.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from ..._validate import as_array, cast_like, check_dy, check_param

# The helpers are small and called from inside parallel loops; LLVM inlines them into each kernel.
HELPER = dict(fastmath=False, cache=True)

# A fixed number of row chunks for the two-stage parameter-gradient reduction. It does not depend on the number of
# threads, so the partial sums, and therefore dgamma and dbeta, are bitwise the same on any machine.
MAX_CHUNKS = 32

# Below this many bytes of input a kernel runs on the calling thread only. Waking the thread pool costs more than the
# work, and on a loaded machine a parallel region waits for a descheduled worker: seen here on a tiny LayerNorm,
# median 0.06 ms on one thread against a 90th percentile of 20-30 ms on two. The results do not depend on it.
PARALLEL_MIN_BYTES = 256 * 1024


@contextlib.contextmanager
def threads_for(nbytes: int):
    """Run the enclosed kernel call on one thread when the input is smaller than :data:`PARALLEL_MIN_BYTES`."""
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
def sum_lanes(v, shift):
    """``Σ_j (v[j] - shift)`` over a 1-D array, in four float64 lanes."""
    n = v.size
    a0 = a1 = a2 = a3 = 0.0
    m = n - n % 4
    for j in range(0, m, 4):
        a0 += v[j] - shift
        a1 += v[j + 1] - shift
        a2 += v[j + 2] - shift
        a3 += v[j + 3] - shift
    for j in range(m, n):
        a0 += v[j] - shift
    return (a0 + a1) + (a2 + a3)


@njit(**HELPER)
def sumsq_lanes(v, shift):
    """``Σ_j (v[j] - shift)²`` over a 1-D array, in four float64 lanes: the second pass of the two-pass variance."""
    n = v.size
    a0 = a1 = a2 = a3 = 0.0
    m = n - n % 4
    for j in range(0, m, 4):
        d0 = v[j] - shift
        d1 = v[j + 1] - shift
        d2 = v[j + 2] - shift
        d3 = v[j + 3] - shift
        a0 += d0 * d0
        a1 += d1 * d1
        a2 += d2 * d2
        a3 += d3 * d3
    for j in range(m, n):
        d = v[j] - shift
        a0 += d * d
    return (a0 + a1) + (a2 + a3)


@njit(**HELPER)
def dot_sum_lanes(dy, x, shift):
    """``(Σ_j dy[j]·(x[j] - shift), Σ_j dy[j])`` over 1-D arrays, each in four float64 lanes.

    The two sums the backward needs per normalized set (times ``rstd`` and ``gamma`` they give ``c1`` and ``c2``).
    """
    n = x.size
    p0 = p1 = p2 = p3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    m = n - n % 4
    for j in range(0, m, 4):
        p0 += dy[j] * (x[j] - shift)
        p1 += dy[j + 1] * (x[j + 1] - shift)
        p2 += dy[j + 2] * (x[j + 2] - shift)
        p3 += dy[j + 3] * (x[j + 3] - shift)
        q0 += dy[j]
        q1 += dy[j + 1]
        q2 += dy[j + 2]
        q3 += dy[j + 3]
    for j in range(m, n):
        p0 += dy[j] * (x[j] - shift)
        q0 += dy[j]
    return (p0 + p1) + (p2 + p3), (q0 + q1) + (q2 + q3)


def as_kernel_array(x, name: str) -> np.ndarray:
    """``x`` as a real, C-contiguous float32/float64 array (a copy only when ``x`` is not contiguous)."""
    return np.ascontiguousarray(as_array(x, name, allow_complex=False))


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
            raise TypeError("stats must be real on the 'numba' backend, got a complex array")
    return stats_pair


def kernel_dy(dy, x_shape, dtype) -> np.ndarray:
    """Validate ``dy`` against the forward's output like the reference, refuse complex, make it contiguous."""
    dy = check_dy(dy, x_shape, dtype)
    if dy.dtype.kind == "c":
        raise TypeError("dy must be real on the 'numba' backend, got a complex array")
    return np.ascontiguousarray(dy)


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


def parameter_gradients(cache: NumbaNormCache, dgamma64: np.ndarray, dbeta64: np.ndarray):
    """Cast the float64 parameter sums to ``x``'s dtype and the caller's parameter shape; ``None`` if absent."""
    dtype = cache.x.dtype
    dgamma = dgamma64.astype(dtype).reshape(cache.param_shape) if cache.has_gamma else None
    dbeta = dbeta64.astype(dtype).reshape(cache.param_shape) if cache.has_beta else None
    return dgamma, dbeta
