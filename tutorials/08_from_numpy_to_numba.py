# %% [markdown]
# # 08 · From NumPy to Numba: fusion, passes over memory, and a reduction without races
#
# The NumPy reference (`normref.ops`) is written for reading: one array expression per line of the derivation.
# Each expression is a full pass over memory, and a normalization layer does only a few flops per element, so its
# speed is set by **how many times the tensor crosses the memory bus**, not by arithmetic.
#
# This tutorial counts those passes, shows how the `"numba"` backend fuses them (`normref.kernels.numba_cpu`),
# why its parameter gradients need a *two-stage* reduction, and what the `"numba-fast"` backend trades for speed by
# letting the compiler reorder its sums. Run it with `QUICK=1` for tiny shapes.

# %%
import inspect
import os

import numpy as np

from normref import functional as F
from normref.bench import LAYERS, format_table, measure, stream_triad
from normref.kernels.numba_cpu import _rowwise
from normref.testing.gradcheck import norm_rel_error

QUICK = os.environ.get("QUICK", "0") not in ("", "0")
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Passes over memory
#
# Count what the reference LayerNorm forward reads and writes, for `x` of shape `(rows, n)`:
#
# | step (NumPy) | reads | writes |
# |---|---|---|
# | `mean = x.mean(axis)` | x | – |
# | `centered = x - mean` | x | tmp |
# | `(centered * centered).mean(axis)` | tmp (twice) | tmp2 |
# | `xhat = (x - mean) * rstd` | x, tmp3 | tmp3, xhat |
# | `xhat * gamma + beta` | xhat, tmp4 | tmp4, y |
#
# About a dozen tensor-sized passes. The least any forward can do is **two**: read `x`, write `y`. The backward
# needs `x` (or `xhat`) and `dy` and writes `dx`: three more. So the *bandwidth floor* of forward + backward is
# five passes at the machine's streaming bandwidth, which `normref bench` measures with the STREAM triad.
#
# ## 2. Fusion: one row at a time, in cache
#
# The row-wise template views `x` as `(rows, n)` and gives each chunk of rows to one `prange` iteration. A row is a
# few KiB, so it stays in the core's cache while the kernel makes its passes over it (a shifted sum, then `Σd` and
# `Σd²` for the corrected two-pass variance, then `y`). Memory sees one read of `x` and one write of `y`. Here is the
# kernel, exactly as the backend runs it:
# %%
print(inspect.getsource(_rowwise.rows_forward))

# %% [markdown]
# Two details. First, the sums. With `fastmath=False` the compiler may not reorder `s += v[j]`, and one dependent
# chain of additions runs at one addition per 3–4 cycles, slower than memory. So every sum is written as an
# *elementwise* loop over an array of 64 partial sums, `lanes[k] += v[i + k] - shift`: lane `k` adds values
# `k, k + 64, k + 128, ...` in order. That loop has no dependence between lanes, so LLVM vectorizes it (8 float32
# lanes per AVX2 instruction) without any licence to reorder, and the result is the same bits on every run. For
# float32 input the lanes are float32 but hold at most 16 values each before they are flushed into float64 lanes,
# which bounds the rounding error by about `16·u·Σ|t|` (u = 6e-8; the derivation is in
# `normref/kernels/numba_cpu/_common.py`). Second, the variance is the *corrected* two-pass formula, never
# `E[x²] - E[x]²`, which cancels catastrophically when `|mean| ≫ std`:

# %%
from normref.kernels.numba_cpu import _common  # noqa: E402

print(inspect.getsource(_common._block_sums))
print(inspect.getsource(_common.moments))

# %% [markdown]
# The backward stores no `xhat`: it recomputes `(x - mean)·rstd` from `x`, which it must read anyway, instead of
# writing and re-reading a tensor the size of `x`. The kernels agree with the reference:

# %%
shape = (37, 64) if QUICK else (512, 768)
x = (5 * rng.standard_normal(shape) + 12).astype(np.float32)
gamma, beta = rng.standard_normal(shape[-1:]).astype(np.float32), rng.standard_normal(shape[-1:]).astype(np.float32)
dy = rng.standard_normal(shape).astype(np.float32)
for backend in ("numpy", "numba"):
    y, cache = F.forward("layer_norm", x, gamma, beta, normalized_shape=shape[-1], backend=backend)
    grads = F.backward("layer_norm", dy, cache)
    if backend == "numpy":
        ref = (y,) + tuple(grads)
    else:
        errors = [norm_rel_error(a, b) for a, b in zip((y,) + tuple(grads), ref)]
        print("float32, numba vs numpy, norm-relative error of y, dx, dgamma, dbeta:",
              ", ".join(f"{e:.1e}" for e in errors))
        assert max(errors) <= 1e-5

# %% [markdown]
# ## 3. The parameter gradients: why a naive `prange` races
#
# `dgamma[j] = Σ_rows dy[r, j]·xhat[r, j]` sums *across* rows, but the backward runs rows in parallel. The obvious
# kernel lets every iteration add into the shared `dgamma`:

# %%
from numba import njit, prange  # noqa: E402


@njit(parallel=True, fastmath=False)
def dgamma_racy(dy, xhat, dgamma):
    for r in prange(dy.shape[0]):  # WRONG: every iteration writes every dgamma[j]
        for j in range(dy.shape[1]):
            dgamma[j] += dy[r, j] * xhat[r, j]


# %% [markdown]
# `dgamma[j] += v` is a load, an add and a store. When two threads load the same `dgamma[j]`, add their own `v`
# and store, one of the two additions is lost. With `dy = xhat = 1` the exact answer is the row count, so every
# lost update is visible (Numba's `prange` recognizes scalar reductions, not element updates of a shared array):

# %%
rows, n = (20_000, 16) if QUICK else (200_000, 16)
ones = np.ones((rows, n))
for trial in range(5):
    dgamma = np.zeros(n)
    dgamma_racy(ones, ones, dgamma)
    print(f"run {trial}: dgamma[0] = {dgamma[0]:.0f} (exact {rows}), lost updates over all j: "
          f"{int(rows * n - dgamma.sum())}")

# %% [markdown]
# Whether updates are lost, and how many, depends on how the threads happen to interleave: on an idle multi-core
# machine nearly every run loses some; under heavy load the threads may happen not to overlap. Either way the
# result is not a function of the input. (With real data the lost terms are also different numbers each time.)
#
# ## 4. The two-stage reduction
#
# The fix gives every written location exactly one owner. Stage 1 splits the rows into a **fixed** number of
# contiguous chunks (32, whatever the thread count) and runs `prange` over chunks: chunk `c` adds its rows into row
# `c` of a `(chunks, n)` float64 partial buffer, which no other iteration touches (through a float32 row buffer
# flushed every 16 rows: the same lanes-and-blocks idea, with rows as the depth). Stage 2 sums the partials over
# chunks, in order. No locks, no atomics, and the same bits on every run and any thread count:
# %%
print(inspect.getsource(_rowwise.rows_backward))

# %%
shape = (301, 33)
x, dy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
runs = [F.backward("layer_norm", dy, F.forward("layer_norm", x, np.ones(33, np.float32), None, normalized_shape=33,
                                                backend="numba")[1])[1] for _ in range(3)]
identical = all(np.array_equal(runs[0], r) for r in runs)
print("dgamma bitwise identical over 3 runs:", identical)
assert identical

# %% [markdown]
# BatchNorm needs no partial buffer: its template (`_colwise`) runs `prange` over *channels*, and the iteration for
# channel `c` owns `dgamma[c]` and `dbeta[c]` outright. Its statistics come from a two-pass `(mean, M2)` per
# contiguous slice `x[n, c, :]`, merged across `n` with Chan's formula: one memory pass, no cancellation.
#
# ## 5. Measured
#
# The same measurement as `normref bench`, for LayerNorm: NumPy, Numba as a layer calls it (allocating `y` and `dx`),
# Numba with preallocated outputs (`out=`), PyTorch when installed, and the STREAM triad that sets the floor, all
# timed in the same rounds so that a busy machine slows them alike. With `QUICK=1` the shape is tiny, so the times
# are dispatch overhead, not bandwidth; the README shows the full run and the targets.

# %%
triad = stream_triad(mib_per_array=8 if QUICK else 128, reps=3 if QUICK else 10)
print(f"STREAM triad: {triad['best'] / 1e9:.1f} GB/s (best of the repetitions)")
layer = next(l for l in LAYERS if l.name == "LayerNorm")
bench_shape = layer.quick_shapes[0] if QUICK else (8192, 1024)
columns = ["NumPy", "Numba", "Numba out=", "Numba fast", "Numba fast out="]
try:
    import torch  # noqa: F401

    columns.append("PyTorch")
except ImportError:
    pass
rows = measure(layer, bench_shape, rng, columns=columns, rounds=1 if QUICK else 3, reps_per_round=2 if QUICK else 3,
               triad_mib=8 if QUICK else 128)
print(format_table(rows, columns))

# %% [markdown]
# ## 6. A second backend: letting the compiler reorder the sums
#
# The lanes of section 2 are the price of `fastmath=False`: the partial sums live in an array in memory, loaded and
# stored every 64 values, and on this machine that arithmetic does not hide behind memory traffic. If the compiler
# may *reassociate* (LLVM's `reassoc` flag), a plain `t += v[j]` vectorizes by itself, with the partial sums in
# SIMD registers. The `"numba-fast"` backend (`normref.kernels.numba_fast`) is exactly that: the same ops, views,
# drivers and two-stage reduction, with sums written as plain loops in float32 blocks of 256 values, flushed into
# float64. Its name is separate so that the checked `"numba"` path never changes silently:

# %%
from normref.kernels.numba_fast import _sums  # noqa: E402

print(inspect.getsource(_sums.centered_sums))

# %% [markdown]
# What it costs: the order of a reassociated sum is whatever the vectorizer picks for this CPU (its vector width),
# so another CPU or compiler version may round differently in the last bits. The error bound does not depend on the
# order (at most `255·u·Σ|t|` per float32 block, whatever the order; about `13·u·Σ|t|` with the AVX2 order, like the
# exact backend's `16·u`), and on one machine the compiled order is fixed, so runs stay bitwise repeatable on any
# number of threads. Only the sums get the licence: the elementwise code (`(x - m)·s`) is compiled without
# `reassoc`, which would allow `x·s - m·s` and catastrophic cancellation when `|mean| ≫ std`. And not
# `nnan`/`ninf`, so a NaN in `x` still propagates as in the reference. The two backends agree with the reference
# to float32 accuracy, and not bitwise with each other:

# %%
shape = (37, 1100) if QUICK else (512, 1100)
x = (1000 + 0.01 * rng.standard_normal(shape)).astype(np.float32)  # far from zero: |mean|/std = 1e5
gamma, beta = rng.standard_normal(shape[-1:]).astype(np.float32), rng.standard_normal(shape[-1:]).astype(np.float32)
dy = rng.standard_normal(shape).astype(np.float32)
results = {}
for backend in ("numpy", "numba", "numba-fast"):
    y, cache = F.forward("layer_norm", x, gamma, beta, normalized_shape=shape[-1], backend=backend)
    results[backend] = (y,) + tuple(F.backward("layer_norm", dy, cache))
for backend in ("numba", "numba-fast"):
    errors = [norm_rel_error(a, b) for a, b in zip(results[backend], results["numpy"])]
    print(f"{backend:>10} vs numpy, y, dx, dgamma, dbeta:", ", ".join(f"{e:.1e}" for e in errors))
    assert max(errors) <= 1e-5
print("numba and numba-fast bitwise equal:", all(np.array_equal(a, b) for a, b in
                                                  zip(results["numba"], results["numba-fast"])))
again = F.forward("layer_norm", x, gamma, beta, normalized_shape=shape[-1], backend="numba-fast")[0]
assert np.array_equal(again, results["numba-fast"][0])  # repeatable on this machine

# %% [markdown]
# What it buys, per value on one thread with the data in cache (the kernels alone, no allocation; a busy machine
# makes these numbers move, so they are medians of interleaved repetitions and are printed, not asserted). At
# 32 MiB, memory hides part of the gain: the `Numba fast` columns of the table in section 5 and of `normref bench`.

# %%
import time  # noqa: E402

import numba  # noqa: E402

from normref.kernels.numba_fast import _rowwise as fast_rowwise  # noqa: E402

rows, n = (64, 1024) if QUICK else (256, 1024)
x = rng.standard_normal((rows, n)).astype(np.float32)
y, mean, var, rstd = np.empty_like(x), np.zeros(rows), np.zeros(rows), np.zeros(rows)
ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)  # gamma, beta
kernels = {"numba": _rowwise.rows_forward, "numba-fast": fast_rowwise.rows_forward}
times = {name: [] for name in kernels}
previous = numba.get_num_threads()
numba.set_num_threads(1)
try:
    for _ in range(20 if QUICK else 200):
        for name, kernel in kernels.items():
            start = time.perf_counter()
            kernel(x, ones, zeros, 1e-5, True, True, mean, var, rstd, y)
            times[name].append(time.perf_counter() - start)
finally:
    numba.set_num_threads(previous)
for name, ts in times.items():
    print(f"LayerNorm forward kernel, {name:>10}: {1e9 * np.median(ts) / x.size:.2f} ns/value (one thread)")

# %% [markdown]
# ## 7. Compilation: once per signature, ahead of time, on every core
#
# A kernel is compiled the first time it meets a new *signature*: the dtypes, dimensions and layouts of its
# arguments. float32 and float64 are two compilations, and so would be a strided `(N, C)` view against a
# contiguous array, which is one reason the drivers make their inputs contiguous before calling a kernel. With
# `cache=True` the machine code goes to disk (`NUMBA_CACHE_DIR`, else `__pycache__`), and later processes load it
# in milliseconds. Each kernel's dispatcher counts both:

# %%
for kernel in (_rowwise.rows_forward, fast_rowwise.rows_forward):
    print(f"{kernel.py_func.__module__}.{kernel.__name__}: {len(kernel.signatures)} signature(s) in this process; "
          f"compiled here {sum(kernel.stats.cache_misses.values())}, "
          f"loaded from the disk cache {sum(kernel.stats.cache_hits.values())}")

# %% [markdown]
# Compiling every kernel of both backends in both dtypes takes about three minutes of one core, and Numba compiles
# on one core. `normref compile` runs every layer's forward and backward once per backend and dtype, one op per
# task, on one worker process per core, so the cache is full before the first real call (about 90 s on this 2-core
# machine; CI runs it first). The workers share one cache, and Numba's cache is not safe for two processes saving
# two signatures of one function at the same instant, so each worker holds a lock file around every save.
