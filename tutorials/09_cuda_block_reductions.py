# %% [markdown]
# # 09 · CUDA block reductions, step by step
#
# Every normalizer reduces: a mean and a variance per row (LayerNorm, RMSNorm, GroupNorm, InstanceNorm) or per
# channel (BatchNorm), and in the backward two more sums, `Σ g` and `Σ g·x̂`. On a GPU, normref's `"cuda"` backend
# gives each row or channel to **one thread block** and reduces it in two phases:
#
# 1. every thread accumulates a private partial over a block-stride loop, in registers;
# 2. the block combines the `TPB` partials in a **shared-memory tree**.
#
# This tutorial builds the tree one round at a time, checks it against NumPy and against the library's
# `block_sum`, contrasts it with the "just use atomics" version, and ends with the backend's LayerNorm.
#
# **No GPU needed.** If this machine has no usable CUDA GPU, the next cell switches on Numba's CUDA *simulator*
# (`NUMBA_ENABLE_CUDASIM=1`), which runs the same kernels on the CPU with one OS thread per CUDA thread. The
# variable only works when set *before* numba is first imported, so the cell probes for a GPU in a child process.

# %%
import os
import subprocess
import sys

if "NUMBA_ENABLE_CUDASIM" not in os.environ:
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "True":
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
print("CUDA simulator:", os.environ.get("NUMBA_ENABLE_CUDASIM") == "1")

# %%
import numpy as np  # noqa: E402  (numba must come after the environment variable)
from numba import cuda, float64  # noqa: E402

import normref  # noqa: E402
from normref import functional as F  # noqa: E402
from normref.kernels.cuda._block_reduce import TPB, block_sum, block_welford, shared_bytes, welford_push  # noqa: E402
from normref.testing.gradcheck import norm_rel_error  # noqa: E402

print("threads per block TPB =", TPB, "| backends:", normref.available_backends())

# %% [markdown]
# ## Phase 1: private partials
#
# Thread `t` visits elements `t, t + TPB, t + 2·TPB, ...`. The loop works for any length: shorter than `TPB` (some
# threads get nothing and hold 0), or not a multiple of it (some threads get one element more). With 37 values:

# %%
x = np.arange(1.0, 38.0)  # 1 + 2 + ... + 37 = 703, integers so that every step prints exactly
partials = np.array([x[t::TPB].sum() for t in range(TPB)])
print("length", x.size, "-> partials of the", TPB, "threads:", partials.astype(int))

# %% [markdown]
# ## Phase 2: the tree, with sequential addressing
#
# The partials go into a shared array `buf` of `TPB` slots. In each round the lower half of the *active* threads
# adds the upper half: `buf[t] += buf[t + stride]` for `t < stride`, with `stride = TPB/2, TPB/4, ..., 1`. After
# `log2(TPB)` rounds `buf[0]` holds the total. Three rules:
#
# * **The barrier is outside the `if`.** `cuda.syncthreads()` must be reached by every thread of the block; a barrier
#   inside `if t < stride` is undefined behaviour on hardware (and the simulator does not detect it).
# * **Sequential, not interleaved, addressing.** Active threads are `0 .. stride-1`, contiguous, so whole warps retire
#   and shared-memory banks do not conflict (the interleaved `t % (2·stride) == 0` version has both problems).
# * **A barrier before the buffer is reused**, once every thread has read `buf[0]`.
#
# The shared buffer is *dynamic* shared memory: the kernel declares `cuda.shared.array(0, float64)` and the launch
# passes its size in bytes as the 4th launch parameter (`shared_bytes(k)` = `k` buffers of `TPB` float64). On a GPU
# that is the same memory as a static `cuda.shared.array(TPB, float64)`; under the simulator it avoids a race in how
# the simulator allocates static shared arrays (details in `normref.kernels.cuda._block_reduce`).
#
# This kernel is the tree with a tracer: after every round each thread copies its slot into `trace`.

# %%
ROUNDS = TPB.bit_length()  # the partials plus log2(TPB) rounds


@cuda.jit
def traced_block_sum(values, trace):
    buf = cuda.shared.array(0, float64)[:TPB]
    t = cuda.threadIdx.x
    partial = 0.0
    for j in range(t, values.size, TPB):  # phase 1: block-stride loop
        partial += values[j]
    buf[t] = partial
    cuda.syncthreads()
    trace[0, t] = buf[t]
    stride = TPB // 2
    step = 1
    while stride > 0:  # phase 2: the tree
        if t < stride:
            buf[t] += buf[t + stride]
        cuda.syncthreads()  # every thread, every round
        trace[step, t] = buf[t]
        step += 1
        stride //= 2


trace = np.zeros((ROUNDS, TPB))
traced_block_sum[1, TPB, 0, shared_bytes(1)](x, trace)
for step, row in enumerate(trace):
    active = TPB if step == 0 else TPB >> step
    label = "partials" if step == 0 else f"stride {TPB >> step:>3}"
    print(f"{label:>10}:", " ".join(f"{v:4.0f}" for v in row[:active]))
assert trace[-1, 0] == x.sum() == 703
assert np.array_equal(trace[0], partials)

# %% [markdown]
# The library's `block_sum` (in `normref.kernels.cuda._block_reduce`, used by every kernel of the backend) is this
# tree without the tracer, plus the trailing barrier. Calling it twice in a row on the same buffer is safe because of
# that barrier:

# %%
@cuda.jit
def library_block_sum(values, out):
    buf = cuda.shared.array(0, float64)[:TPB]
    partial = 0.0
    for j in range(cuda.threadIdx.x, values.size, TPB):
        partial += values[j]
    total = block_sum(buf, partial)
    squares = 0.0
    for j in range(cuda.threadIdx.x, values.size, TPB):
        squares += values[j] * values[j]
    total_sq = block_sum(buf, squares)  # reuses buf at once
    if cuda.threadIdx.x == 0:
        out[0] = total
        out[1] = total_sq


out = np.zeros(2)
library_block_sum[1, TPB, 0, shared_bytes(1)](x, out)
print("block_sum:", out, "NumPy:", x.sum(), (x * x).sum())
assert out[0] == x.sum() and out[1] == (x * x).sum()

# %% [markdown]
# ## The atomics version, and why the backend does not use it
#
# The shortest kernel adds every thread's partial straight into one global cell with `cuda.atomic.add`. It is
# correct (an atomic add never loses an update) but:
#
# * the additions happen in whatever order the threads arrive, which changes from run to run on a GPU; floating-point
#   addition is not associative, so the **last bits of the result change from run to run**;
# * all threads contend for one address, so the adds are serialized.
#
# The tree fixes the order (it depends only on `TPB` and the length), so normref's results, parameter gradients
# included, are bitwise reproducible.

# %%
@cuda.jit
def atomic_block_sum(values, out):
    partial = 0.0
    for j in range(cuda.threadIdx.x, values.size, TPB):
        partial += values[j]
    cuda.atomic.add(out, 0, partial)  # order of arrival = order of addition


rng = np.random.default_rng(0)
noisy = rng.standard_normal(1000) * 10.0 ** rng.uniform(-4, 4, 1000)  # magnitudes over 8 decades
atomic_out = np.zeros(1)
atomic_block_sum[1, TPB](noisy, atomic_out)
tree_out = np.zeros(2)
library_block_sum[1, TPB, 0, shared_bytes(1)](noisy, tree_out)
print(f"atomics {atomic_out[0]:.17g}\ntree    {tree_out[0]:.17g}")

# The same partials added in different orders, in float32, as different arrival orders would add them:
partials32 = np.array([noisy[t::TPB].sum() for t in range(TPB)], np.float32)
orders = {float(np.add.reduce(partials32[rng.permutation(TPB)], dtype=np.float32)) for _ in range(200)}
print(f"{len(orders)} distinct float32 results from 200 orders of the same {TPB} partials")
assert len(orders) > 1

# %% [markdown]
# ## Mean and variance in one pass: Welford per thread, Chan in the tree
#
# The forward needs a mean and a variance. Instead of two trees (and two passes over `x`), each thread keeps a
# Welford triple `(count, mean, M2)` and the tree merges triples with Chan's formula, exactly as
# `normref._moments.welford` and `chan_merge` do in NumPy. Threads that saw nothing carry `count = 0` and merge as the
# identity. A large offset costs little accuracy, unlike the one-pass `E[x²] − E[x]²`, which cancels catastrophically
# even in float64:

# %%
@cuda.jit
def block_mean_var(values, out):
    shared = cuda.shared.array(0, float64)
    buf_count = shared[:TPB]
    buf_mean = shared[TPB:2 * TPB]
    buf_m2 = shared[2 * TPB:3 * TPB]
    count, mean, m2 = 0.0, 0.0, 0.0
    for j in range(cuda.threadIdx.x, values.size, TPB):
        count, mean, m2 = welford_push(count, mean, m2, values[j])
    count, mean, m2 = block_welford(buf_count, buf_mean, buf_m2, count, mean, m2)
    if cuda.threadIdx.x == 0:
        out[0] = mean
        out[1] = m2 / count


offset = 1e7 + rng.standard_normal(37)  # float64, mean 1e7, variance about 1
stats = np.zeros(2)
block_mean_var[1, TPB, 0, shared_bytes(3)](offset, stats)
naive = (offset**2).mean() - offset.mean() ** 2
for name, value in (("Welford/Chan tree", stats[1]), ("E[x²] - E[x]²", naive)):
    print(f"{name:>18}: var {value:.10f}, relative error {abs(value - offset.var()) / offset.var():.1e}")
assert abs(stats[1] - offset.var()) <= 1e-8 * offset.var() < abs(naive - offset.var())

# %% [markdown]
# ## The backend: one block per row
#
# The `"cuda"` LayerNorm runs one block per row: the Welford/Chan tree gives `μ` and `σ²`, the same block writes
# `y`; the backward's block reduces `Σ g` and `Σ g·x̂` in one tree (`block_sum2`) and writes
# `dx = rstd·(g − c₂ − x̂·c₁)`. The parameter gradients `dγ = Σ_rows dy·x̂` are a reduction *across* blocks: stage 1
# writes one partial per chunk of rows, stage 2 adds the partials in a fixed order. No atomics, so two runs agree
# to the bit. (BatchNorm's block owns a whole channel, so its parameter gradient is the block's own tree.)

# %%
x2 = 5.0 * rng.standard_normal((3, 37)) + 12.0  # 37: not a multiple of TPB
gamma, beta = 1.0 + 0.5 * rng.standard_normal(37), rng.standard_normal(37)
dy = rng.standard_normal(x2.shape)
results = {}
for backend in ("numpy", "cuda"):
    y, cache = F.forward("layer_norm", x2, gamma, beta, normalized_shape=37, backend=backend)
    results[backend] = (y, *F.backward("layer_norm", dy, cache))
for name, a, b in zip(("y", "dx", "dgamma", "dbeta"), results["cuda"], results["numpy"]):
    print(f"{name:>6}: norm-relative error cuda vs numpy {norm_rel_error(a, b):.1e}")
    assert norm_rel_error(a, b) <= 1e-12
y_again, cache_again = F.forward("layer_norm", x2, gamma, beta, normalized_shape=37, backend="cuda")
again = (y_again, *F.backward("layer_norm", dy, cache_again))
assert all(np.array_equal(a, b) for a, b in zip(results["cuda"], again))
print("two cuda runs: bitwise identical")

# %% [markdown]
# Under the simulator these kernels are checked for correctness only: it runs one block at a time and says nothing
# about speed. `tests/test_backend_cuda.py` runs the same comparisons for all five layers, in float32 and float64, and
# the gradient checker on the `"cuda"` backend (`NUMBA_ENABLE_CUDASIM=1 normref check --backend cuda`).
