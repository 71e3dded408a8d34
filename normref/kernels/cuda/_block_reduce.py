r"""Block reductions for the numba.cuda kernels: per-thread partials, then a shared-memory tree.

Every kernel of this backend reduces a set of values (a row, a channel) with one thread block. The pattern has two
phases.

1. **Private partials.** Thread ``t`` of a block of ``TPB`` threads visits elements ``t, t + TPB, t + 2·TPB, ...``
   (a *block-stride loop*, so any length works, including lengths not divisible by ``TPB`` and lengths smaller than
   it) and accumulates them in registers, in float64 whatever the storage dtype.
2. **Tree.** Each thread writes its partial into a shared array ``buf`` of ``TPB`` slots, then, with
   *sequential addressing*, the lower half adds the upper half:

   .. code-block:: text

       stride = TPB/2:   buf[t] += buf[t + stride]   for t < stride
       stride = TPB/4:   ...
       stride = 1:       buf[0] += buf[1]            -> buf[0] is the block's total

   ``log2(TPB)`` rounds, each followed by a barrier. Three rules make it correct:

   * the barrier (``cuda.syncthreads()``) is executed by *every* thread, so it sits outside the ``if t < stride``
     (a barrier inside a branch that some threads skip is undefined behaviour; the simulator does not detect it);
   * sequential addressing keeps the active threads contiguous (no bank conflicts, whole warps retire), unlike the
     interleaved ``t % (2·stride) == 0`` variant that the Numba documentation itself calls naive;
   * after every thread has read ``buf[0]`` there is one more barrier, so that a later reduction may reuse ``buf``.

No warp-level intrinsics (shuffles) are used: the CUDA simulator has none, and a tree over shared memory is the
portable, readable form. The order of additions is fixed by ``TPB`` and the length, so results are bitwise
reproducible from run to run (no atomics anywhere in this backend).

Mean and variance use Welford's streaming update per thread and Chan's merge in the tree (the same algorithms, and
the same names, as :func:`normref._moments.welford` and :func:`normref._moments.chan_merge`); a thread that saw no
element carries ``count = 0`` and merges as the identity. The scalar helpers are ``@numba.njit`` functions, which
numba-cuda compiles for the device when a kernel calls them and which run as ordinary CPU code under the simulator.

``TPB`` (threads per block) is a module-level power of two: 256 on a GPU, 16 under the simulator (it starts one OS
thread per CUDA thread and its barriers are slow), or the value of the environment variable ``NORMREF_CUDA_TPB`` read
at import.

Why the buffers are *dynamic* shared memory. A kernel declares one ``cuda.shared.array(0, float64)`` and slices it
into ``TPB``-slot buffers; the launch passes the size (``kernel[grid, TPB, 0, shared_bytes(k)]``). On a GPU this is
the same memory as a static ``cuda.shared.array(TPB, float64)``. Under the simulator it is not: a static shared array
is allocated lazily by the first thread that reaches the declaration, with an unlocked check-then-insert keyed by
source line (numba-cuda 0.30, ``FakeCUDAShared.array``), so two threads that interleave there can end up with two
different "shared" arrays, and the tree then reads uninitialized memory. We saw this once as a negative variance in
``normref check --backend cuda``. The dynamic buffer is allocated once per launch, before any thread starts.
"""

from __future__ import annotations

import os

import numba
from numba import cuda
from numba.core import config

SIMULATOR = bool(config.ENABLE_CUDASIM)


def _threads_per_block() -> int:
    value = os.environ.get("NORMREF_CUDA_TPB")
    if value is None:
        return 16 if SIMULATOR else 256
    tpb = int(value)
    if tpb < 2 or tpb > 1024 or tpb & (tpb - 1):
        raise ValueError(f"NORMREF_CUDA_TPB must be a power of two in [2, 1024], got {value!r}")
    return tpb


TPB = _threads_per_block()
FLOAT64_BYTES = 8


def shared_bytes(buffers: int) -> int:
    """Dynamic shared memory for ``buffers`` float64 buffers of ``TPB`` slots: the launch's 4th parameter."""
    return buffers * TPB * FLOAT64_BYTES


@numba.njit(cache=True)
def welford_push(count, mean, m2, value):
    """Fold one value into a running ``(count, mean, M2)`` (Welford 1962); ``M2 = Σ (x - mean)²``."""
    count += 1.0
    delta = value - mean
    mean += delta / count
    m2 += delta * (value - mean)
    return count, mean, m2


@numba.njit(cache=True)
def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Merge two partial ``(count, mean, M2)`` triples (Chan, Golub & LeVeque 1979); empty parts are identities."""
    count = count_a + count_b
    if count == 0.0:
        return 0.0, 0.0, 0.0
    delta = mean_b - mean_a
    weight_b = count_b / count
    return count, mean_a + delta * weight_b, m2_a + m2_b + delta * delta * count_a * weight_b


@cuda.jit(device=True)
def block_sum(buf, value):
    """The sum of ``value`` over the block's threads, returned to every thread. ``buf``: ``TPB`` shared float64."""
    t = cuda.threadIdx.x
    buf[t] = value
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if t < stride:
            buf[t] += buf[t + stride]
        cuda.syncthreads()  # every thread, every round: outside the if
        stride //= 2
    total = buf[0]
    cuda.syncthreads()  # all threads have read buf[0] before the buffer is reused
    return total


@cuda.jit(device=True)
def block_sum2(buf_a, buf_b, a, b):
    """Two block sums in one tree (the backward's ``Σ g`` and ``Σ g·x̂``): half the barriers of two calls."""
    t = cuda.threadIdx.x
    buf_a[t] = a
    buf_b[t] = b
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if t < stride:
            buf_a[t] += buf_a[t + stride]
            buf_b[t] += buf_b[t + stride]
        cuda.syncthreads()
        stride //= 2
    total_a = buf_a[0]
    total_b = buf_b[0]
    cuda.syncthreads()
    return total_a, total_b


@cuda.jit(device=True)
def block_welford(buf_count, buf_mean, buf_m2, count, mean, m2):
    """Merge every thread's Welford triple by Chan's formula in a tree; every thread gets ``(count, mean, M2)``."""
    t = cuda.threadIdx.x
    buf_count[t] = count
    buf_mean[t] = mean
    buf_m2[t] = m2
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if t < stride:
            c, mu, s = chan_merge(buf_count[t], buf_mean[t], buf_m2[t],
                                  buf_count[t + stride], buf_mean[t + stride], buf_m2[t + stride])
            buf_count[t] = c
            buf_mean[t] = mu
            buf_m2[t] = s
        cuda.syncthreads()
        stride //= 2
    count = buf_count[0]
    mean = buf_mean[0]
    m2 = buf_m2[0]
    cuda.syncthreads()
    return count, mean, m2

