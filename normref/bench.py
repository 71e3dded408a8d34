r"""``normref bench``: time every backend against the memory-bandwidth floor, measured in the same run.

Normalization is memory-bound: per element it does a handful of flops and moves 4 (float32) or 8 bytes several
times. So the yardstick is not another library but the machine: the **bandwidth floor** is

.. math::

    t_\mathrm{floor} = \frac{\text{passes} \times \text{bytes of } x}{B_\mathrm{triad}},

with 2 passes for the forward (read ``x``, write ``y``) and 5 for forward + backward (read ``x``, write ``y``; read
``x`` and ``dy``, write ``dx``). Every statistic is a few numbers per row or channel, negligible beside these.
:math:`B_\mathrm{triad}` is the STREAM triad bandwidth ``a = b + s·c`` (2 reads, 1 write; 3 arrays' bytes per
iteration, as STREAM counts them) over all cores, on arrays much larger than the last-level cache.

What is timed, and how
----------------------
* **Allocation.** The public entry points (``normref.functional.forward``/``backward``, as a layer calls them)
  allocate their outputs, and so does PyTorch. A fresh 32 MiB array is zeroed by the kernel on first touch, an
  extra write pass the floor does not count (the ``first touch`` line measures it). The triad, like STREAM, writes
  into a preallocated array. So there are two Numba columns: ``Numba`` (allocating, the like-for-like comparison
  with NumPy and PyTorch) and ``Numba out=`` (outputs passed in with ``out=``, the like-for-like comparison with
  the triad: ``%floor`` is computed from this column, ``%floor(alloc)`` from the allocating one).
* **Numba fast.** The ``"numba-fast"`` backend (the same kernels with reassociated, register-vectorized sums;
  :mod:`normref.kernels.numba_fast`) gets the same two columns, ``Numba fast`` and ``Numba fast out=``, and
  ``%floor fast`` = floor / ``Numba fast out=``. The ratios ``xNumPy`` and ``xPyTorch`` stay relative to the
  exact ``Numba`` column.
* **Rounds.** Every row (layer, shape, pass) is measured in ``rounds`` rounds; in each round every column, the
  triad included, runs one untimed warm-up call and then ``reps_per_round`` timed calls back to back. Back to back,
  because Numba's and PyTorch's OpenMP thread pools spin-wait after a parallel region and would otherwise time each
  other's spinning; in rounds, because on a shared machine the load changes over seconds, and rounds spread that
  change over all columns alike. The triad runs in the same rounds, so **the floor of a row is measured under the
  same conditions as its kernels** (from the median triad time of that row).
* **Statistics.** Each cell is the median over all ``rounds × reps_per_round`` calls; ``noise`` is the largest
  interquartile range over median among the row's columns. The load average is printed before and after.
* **Cold start.** The first call of each Numba op compiles its kernels or loads them from Numba's on-disk cache
  (``cache=True``); that is timed separately (for each Numba backend) and never part of the medians.

PyTorch CPU (``torch.nn.functional``, its own thread pool) is timed when ``torch`` is importable; it is imported
only here, never by the package. The CUDA column appears when the ``"cuda"`` backend loads on a real GPU.

Layers
------
:data:`LAYERS` are the five standard layers (``normref bench``); :data:`SEED_LAYERS` are the other layers with a
``"numba"`` kernel (``normref bench --seed``; ``--layer NAME`` picks from both lists). A :class:`BenchLayer` makes
its op's arguments for a shape (:class:`BenchArgs`: parameters, hyperparameters, and the state a surrogate backward
takes), as its :mod:`normref.nn` layer passes them in a training step:

* **PowerNorm**, **UnifiedNorm** run past their warmups, the steady state of most of training (PowerNorm divides by
  its running statistic; Unified Norm smooths over its window and compensates the gradient). ``(approx)`` is the same
  forward followed by the paper's surrogate backward with its state (``ema_gz``; the gradient windows), called as
  the layer calls it: ``get_impl("power_norm_approx", cache.backend).backward(dy, cache, ema_gz)``.
* **RegionNormB** also reads its ``(N, 1, H, W)`` float32 mask (a hole per sample), ``1/C`` of ``x``'s bytes, in
  the forward and again in the backward: its floor is ``2 + 1/C`` and ``5 + 2/C`` passes (named in its heading).
  Every other layer's floor is 2 and 5 passes: what else it reads or keeps (parameters, statistics per channel or
  group, PowerNorm's per-position GroupScaling factor) is at most ``1/C`` of ``x`` and not counted.
* Columns: a backend without the op has no column (the seed layers have no ``"numba-fast"`` or CUDA kernels). The
  ``PyTorch`` column shows ``-`` where PyTorch has no such layer, which is every seed layer but **DyT**, timed as
  the three PyTorch ops it is, ``γ·tanh(αx) + β``. Every seed layer's ``"numba"`` op takes ``out=`` (found by
  :func:`takes_out`), so every ``out=`` column is timed.
* Not benched. Weight standardization normalizes a conv *weight* once per step (256·256·3·3 float32 = 2.25 MiB),
  which stays in the last-level cache, so a DRAM floor is not its yardstick and no ≥ 32 MiB weight is realistic.
  RN-L computes its response map (``mean_c``, ``max_c`` of ``x`` and three 7×7 convolutions) with the NumPy
  reference on every backend: at ``(32, 64, 32, 32)`` float32 its Numba forward+backward took 88 ms against RN-B's
  16 ms (one measurement, load ≈ 1), so its time would measure NumPy's convolutions, not the kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import time
from typing import Callable, NamedTuple

import numpy as np
from numba import njit, prange

from . import functional as F
from ._registry import available_backends, available_op_backends, get_impl

FWD, FWD_BWD = "fwd", "fwd+bwd"
PASSES = {FWD: 2, FWD_BWD: 5}
TRIAD = "triad"
TRIAD_MIB = 128  # per array: four times the last-level cache of the machine this was written on


class BenchArgs(NamedTuple):
    """What a layer's op takes besides ``x`` (forward) and ``dy`` (backward)."""

    params: list  # positional, after x, in the op's order
    hyper: dict  # the forward's keyword arguments
    state: tuple = ()  # positional arguments of the backward after the cache: a surrogate rule's state


@dataclasses.dataclass(frozen=True)
class BenchLayer:
    """One layer to benchmark: its op, how to make its arguments for a shape, its shapes, its PyTorch peer.

    ``make_args(shape, rng, dtype) -> BenchArgs``: the parameters and hyperparameters for ``x`` of ``shape`` (drawn
    after ``x`` and ``dy``); ``None``: ``gamma`` (and ``beta`` if ``has_beta``) of :meth:`param_shape` and ``hyper``,
    with ``normalized_shape`` set to the last axis. ``torch_fn(torch, x, params, hyper)``: the same function in
    PyTorch on tensors, for the ``PyTorch`` column (``None``: ``-``). ``passes(shape) -> {FWD: p, FWD_BWD: p}``:
    the floor's passes over ``x``'s bytes when the layer must move more than ``x``, ``y``, ``dy``, ``dx`` (``None``:
    :data:`PASSES`).
    """

    name: str
    op: str
    shapes: tuple  # small (dispatch overhead) to >= 32 MiB in float32
    quick_shapes: tuple
    hyper: dict
    has_beta: bool = True
    make_args: Callable | None = None
    torch_fn: Callable | None = None
    passes: Callable | None = None

    def param_shape(self, shape):
        return (shape[-1],) if self.op in ("layer_norm", "rms_norm") else (shape[1],)

    def args(self, shape, rng, dtype=np.float32) -> BenchArgs:
        if self.make_args is not None:
            return self.make_args(shape, rng, dtype)
        p = self.param_shape(shape)
        params = [rng.standard_normal(p, dtype=dtype)]
        if self.has_beta:
            params.append(rng.standard_normal(p, dtype=dtype))
        hyper = dict(self.hyper)
        if "normalized_shape" in hyper:
            hyper["normalized_shape"] = shape[-1]
        return BenchArgs(params, hyper)

    def floor_passes(self, shape) -> dict:
        return PASSES if self.passes is None else self.passes(shape)


# The PyTorch peers of the five standard layers (torch.nn.functional, eps as normref's default).
def _torch_layer_norm(torch, x, ps, hyper):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), ps[0], ps[1], eps=1e-5)


def _torch_rms_norm(torch, x, ps, hyper):
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), ps[0], eps=None)


def _torch_batch_norm(torch, x, ps, hyper):
    return torch.nn.functional.batch_norm(x, None, None, ps[0], ps[1], training=True, eps=1e-5)


def _torch_group_norm(torch, x, ps, hyper):
    return torch.nn.functional.group_norm(x, hyper["num_groups"], ps[0], ps[1], eps=1e-5)


def _torch_instance_norm(torch, x, ps, hyper):
    return torch.nn.functional.instance_norm(x, None, None, ps[0], ps[1], use_input_stats=True, eps=1e-5)


_ROWS = ((64, 256), (1024, 1024), (8192, 1024))  # (tokens, features): 64 KiB, 4 MiB, 32 MiB
_IMAGES = ((8, 16, 8, 8), (32, 64, 16, 16), (32, 64, 64, 64))  # (N, C, H, W): 32 KiB, 2 MiB, 32 MiB
_SEQUENCES = ((8, 64, 32), (16, 256, 128), (32, 512, 512))  # (B, C, T), channel axis 1: 64 KiB, 2 MiB, 32 MiB

LAYERS = [
    BenchLayer("LayerNorm", "layer_norm", _ROWS, ((8, 64),), {"normalized_shape": None},
               torch_fn=_torch_layer_norm),
    BenchLayer("RMSNorm", "rms_norm", _ROWS, ((8, 64),), {"normalized_shape": None}, has_beta=False,
               torch_fn=_torch_rms_norm),
    BenchLayer("BatchNorm", "batch_norm", _IMAGES, ((4, 3, 5, 5),), {}, torch_fn=_torch_batch_norm),
    BenchLayer("GroupNorm", "group_norm", _IMAGES, ((4, 8, 5, 5),), {"num_groups": 8}, torch_fn=_torch_group_norm),
    BenchLayer("InstanceNorm", "instance_norm", _IMAGES, ((4, 3, 5, 5),), {}, torch_fn=_torch_instance_norm),
]


# ----------------------------------------------------------------------------------------------------------------
# The seed layers: arguments as their layers (normref.nn) pass them in a training step


def _channel_params(shape, rng, dtype, count=2):
    """``count`` random ``(C,)`` parameters, ``C = shape[1]``."""
    return [rng.standard_normal(shape[1], dtype=dtype) for _ in range(count)]


def _power_norm_args(shape, rng, dtype, surrogate=False):
    """PowerNorm after its warmup (most of training): the forward divides by the running ``phi`` (GroupScaling
    makes the quadratic mean of ``x'`` about 1); the surrogate backward's state is ``ema_gz``."""
    phi = rng.uniform(0.8, 1.2, shape[1]).astype(dtype)
    ema_gz = 1e-3 * rng.standard_normal(shape[1]).astype(dtype)
    return BenchArgs(_channel_params(shape, rng, dtype), {"stats": (None, phi)}, (ema_gz,) if surrogate else ())


def _unified_norm_args(shape, rng, dtype, surrogate=False, window=4):
    """Unified Norm's default windows (4, 4) past warmup (4000 steps) and the compensation floor (1000): the
    forward smooths the statistic over its window; the surrogate backward compensates and uses its window."""
    from .ops.unified_norm import UnifiedNormGradState, UnifiedNormState

    channels = shape[1]
    q = 10.0  # E[x^2] of the bench's x ~ N(1, 3^2)
    state = UnifiedNormState(iters=5000, running_var=np.full(channels, q, dtype),
                             buffer_x2=(q * rng.uniform(0.9, 1.1, (window, channels))).astype(dtype), skip_counter=0)
    grad_state = UnifiedNormGradState(1e-3 * rng.standard_normal(channels).astype(dtype),
                                      1e-3 * rng.standard_normal((window, channels)).astype(dtype))
    return BenchArgs(_channel_params(shape, rng, dtype), {"state": state}, (grad_state,) if surrogate else ())


def _hole_mask(shape, rng, dtype):
    """An inpainting hole per sample: a random rectangle of half the height and width, ``(N, 1, H, W)``, 1 = hole."""
    batch, _, height, width = shape
    mask = np.zeros((batch, 1, height, width), dtype)
    for n in range(batch):
        top, left = rng.integers(0, height - height // 2 + 1), rng.integers(0, width - width // 2 + 1)
        mask[n, 0, top:top + height // 2, left:left + width // 2] = 1
    return mask


def _rn_b_args(shape, rng, dtype):
    """RN-B with the code's global bias: ``gamma_f, beta_f, gamma_b, beta_b`` and a hole mask."""
    return BenchArgs(_channel_params(shape, rng, dtype, 4), {"mask": _hole_mask(shape, rng, dtype)})


def _mask_passes(shape):
    """RN-B reads its ``(N, 1, H, W)`` mask, ``1/C`` of ``x``'s bytes, in the forward and again in the backward."""
    return {FWD: 2 + 1 / shape[1], FWD_BWD: 5 + 2 / shape[1]}


def _alpha_batch_norm_args(shape, rng, dtype):
    """Test-time BN (α-BN) with the source model's running statistics and ``w_test = 0.1``."""
    source = (rng.standard_normal(shape[1]).astype(dtype), rng.uniform(0.5, 2.0, shape[1]).astype(dtype))
    return BenchArgs(_channel_params(shape, rng, dtype), {"source_stats": source, "w_test": 0.1})


def _dyt_args(shape, rng, dtype):
    """DyT on tokens ``(..., C)`` (channels last, as it replaces LayerNorm): ``alpha (1,)`` (0.5, the default
    init), ``gamma``, ``beta`` ``(C,)``."""
    channels = shape[-1]
    return BenchArgs([np.full(1, 0.5, dtype), rng.standard_normal(channels, dtype=dtype),
                      rng.standard_normal(channels, dtype=dtype)], {"channels_last": True})


def _torch_dyt(torch, x, ps, hyper):
    """DyT is not a PyTorch layer, but it is three PyTorch ops: ``γ·tanh(αx) + β``."""
    return torch.tanh(ps[0] * x) * ps[1] + ps[2]


def _evonorm_args(shape, rng, dtype, **hyper):
    """``gamma``, ``beta``, ``v`` ``(C,)``."""
    return BenchArgs(_channel_params(shape, rng, dtype, 3), hyper)


def _batch_channel_norm_args(shape, rng, dtype, groups=8):
    """The BN stage's ``gamma, beta (C,)``, the GN stage's ``group_gamma, group_beta (G,)``."""
    params = _channel_params(shape, rng, dtype) + [rng.standard_normal(groups, dtype=dtype) for _ in range(2)]
    return BenchArgs(params, {"num_groups": groups})


# The layers with a "numba" kernel besides the standard five (none has a PyTorch layer; DyT is three PyTorch ops).
# Left out: weight standardization (it normalizes a conv weight, e.g. 256x256x3x3 = 2.25 MiB, once per step: it
# lives in the last-level cache, so a DRAM floor is not its yardstick); RN-L (see the module docstring).
SEED_LAYERS = [
    BenchLayer("PowerNorm", "power_norm", _SEQUENCES, ((4, 8, 5),), {}, make_args=_power_norm_args),
    BenchLayer("PowerNorm (approx)", "power_norm_approx", _SEQUENCES, ((4, 8, 5),), {},
               make_args=functools.partial(_power_norm_args, surrogate=True)),
    BenchLayer("UnifiedNorm", "unified_norm", _SEQUENCES, ((4, 8, 5),), {}, make_args=_unified_norm_args),
    BenchLayer("UnifiedNorm (approx)", "unified_norm_approx", _SEQUENCES, ((4, 8, 5),), {},
               make_args=functools.partial(_unified_norm_args, surrogate=True)),
    BenchLayer("RegionNormB", "rn_b", _IMAGES, ((4, 3, 6, 6),), {}, make_args=_rn_b_args, passes=_mask_passes),
    BenchLayer("AlphaBatchNorm", "alpha_batch_norm", _IMAGES, ((4, 3, 5, 5),), {}, make_args=_alpha_batch_norm_args),
    BenchLayer("DyT", "dyt", _ROWS, ((8, 64),), {}, make_args=_dyt_args, torch_fn=_torch_dyt),
    BenchLayer("EvoNormB0", "evonorm_b0", _IMAGES, ((4, 3, 5, 5),), {}, make_args=_evonorm_args),
    BenchLayer("EvoNormS0", "evonorm_s0", _IMAGES, ((4, 8, 5, 5),), {},
               make_args=functools.partial(_evonorm_args, num_groups=8)),
    BenchLayer("BatchChannelNorm", "batch_channel_norm", _IMAGES, ((4, 8, 5, 5),), {},
               make_args=_batch_channel_norm_args),
]


# ----------------------------------------------------------------------------------------------------------------
# The bandwidth yardstick


@njit(parallel=True, fastmath=False, cache=True)
def triad(a, b, c, scalar):
    """STREAM's triad ``a = b + scalar·c``, over all cores."""
    for i in prange(a.size):  # iteration i owns a[i]
        a[i] = b[i] + scalar * c[i]


_TRIAD_ARRAYS: dict = {}


def triad_arrays(mib_per_array: int = TRIAD_MIB):
    """Three float64 arrays of ``mib_per_array`` MiB, touched (so page faults are not timed), and their bytes moved.

    Made once per size and kept for the process (a benchmark run reuses them for every row).
    """
    if mib_per_array not in _TRIAD_ARRAYS:
        n = mib_per_array * 2**20 // 8
        a, b, c = np.zeros(n), np.full(n, 1.0), np.full(n, 2.0)
        triad(a, b, c, 3.0)
        _TRIAD_ARRAYS.clear()
        _TRIAD_ARRAYS[mib_per_array] = (a, b, c)
    arrays = _TRIAD_ARRAYS[mib_per_array]
    return arrays, 3 * arrays[0].nbytes


def stream_triad(mib_per_array: int = TRIAD_MIB, reps: int = 10) -> dict:
    """STREAM-triad bandwidth in bytes/s on preallocated arrays: ``{"best", "median", "mib"}``."""
    (a, b, c), moved = triad_arrays(mib_per_array)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        triad(a, b, c, 3.0)
        times.append(time.perf_counter() - start)
    return {"best": moved / min(times), "median": moved / float(np.median(times)), "mib": mib_per_array}


def first_touch_ms(mib: int = 32, reps: int = 5) -> float:
    """Median extra milliseconds a triad spends writing into a fresh array of ``mib`` MiB instead of a reused one.

    That is the price of allocating an output: the kernel maps and zeroes its pages on first touch.
    """
    n = mib * 2**20 // 8
    b, c, reused = np.full(n, 1.0), np.full(n, 2.0), np.zeros(n)
    triad(reused, b, c, 3.0)
    fresh_t, reused_t = [], []
    for _ in range(reps):
        start = time.perf_counter()
        triad(np.empty(n), b, c, 3.0)
        fresh_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        triad(reused, b, c, 3.0)
        reused_t.append(time.perf_counter() - start)
    return 1e3 * (float(np.median(fresh_t)) - float(np.median(reused_t)))


# ----------------------------------------------------------------------------------------------------------------
# Runners: one callable per (column, pass) that does the work once


def _inputs(layer: BenchLayer, shape, rng):
    x = rng.standard_normal(shape, dtype=np.float32) * 3 + 1
    dy = rng.standard_normal(shape, dtype=np.float32)
    return x, dy, layer.args(shape, rng)


def _normref_runner(layer, backend, x, dy, args, which):
    """The public entry points, as a layer calls them: outputs allocated on every call. A surrogate backward (with
    state) is looked up for the cache's backend and given its state, as :class:`normref.nn.PowerNorm` does."""
    def fwd():
        return F.forward(layer.op, x, *args.params, backend=backend, **args.hyper)

    def fwd_bwd():
        _, cache = F.forward(layer.op, x, *args.params, backend=backend, **args.hyper)
        if not args.state:
            return F.backward(layer.op, dy, cache)
        return get_impl(layer.op, cache.backend).backward(dy, cache, *args.state)

    return fwd if which == FWD else fwd_bwd


# The backend each column runs (None: not a normref backend).
COLUMN_BACKENDS = {"NumPy": "numpy", "Numba": "numba", "Numba out=": "numba", "Numba fast": "numba-fast",
                   "Numba fast out=": "numba-fast", "CUDA": "cuda", "PyTorch": None}


def takes_out(op: str, backend: str) -> bool:
    """Whether ``op``'s forward on ``backend`` accepts ``out=`` (its backward then does too)."""
    return "out" in inspect.signature(get_impl(op, backend).forward).parameters


def _numba_out_runner(layer, x, dy, args, which, backend="numba"):
    """A Numba backend's ops with preallocated outputs (``out=``): ``y`` and ``dx`` are written in place."""
    impl = get_impl(layer.op, backend)
    y, dx = np.empty_like(x), np.empty_like(x)

    def fwd():
        return impl.forward(x, *args.params, out=y, **args.hyper)

    def fwd_bwd():
        _, cache = impl.forward(x, *args.params, out=y, **args.hyper)
        return impl.backward(dy, cache, *args.state, out=dx)

    return fwd if which == FWD else fwd_bwd


def torch_module():
    """``torch`` if it can be imported, else ``None`` (never imported by the package itself)."""
    try:
        import torch
    except Exception:  # not installed, or a broken install: the column is left out
        return None
    return torch


def _torch_runner(torch, layer, x, dy, args, which):
    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    tparams = [torch.from_numpy(p) for p in args.params]

    def fwd():
        with torch.no_grad():
            return layer.torch_fn(torch, tx, tparams, args.hyper)

    leaves = [tx.detach().requires_grad_()] + [p.detach().requires_grad_() for p in tparams]

    def fwd_bwd():
        y = layer.torch_fn(torch, leaves[0], leaves[1:], args.hyper)
        return torch.autograd.grad(y, leaves, tdy)

    return fwd if which == FWD else fwd_bwd


def _cuda_usable() -> bool:
    """The CUDA column is shown only for a real GPU: the simulator would time Python, not a device."""
    return available_backends()["cuda"] is None and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0")


# ----------------------------------------------------------------------------------------------------------------
# Measurement


@dataclasses.dataclass
class Row:
    """One table row: one layer, shape and pass; ``times[column]`` = the calls' seconds (``"triad"`` included)."""

    layer: str
    shape: tuple
    which: str
    nbytes: int
    times: dict
    triad_bytes: int = 0  # bytes one triad call moves
    passes: float | None = None  # the floor's passes over x's bytes; None: PASSES[which]

    def median_ms(self, column):
        return 1e3 * float(np.median(self.times[column])) if column in self.times else math.nan

    def bandwidth(self) -> float:
        """The row's triad bandwidth in bytes/s (median over its rounds)."""
        return self.triad_bytes / float(np.median(self.times[TRIAD]))

    def floor_ms(self) -> float:
        passes = PASSES[self.which] if self.passes is None else self.passes
        return 1e3 * passes * self.nbytes / self.bandwidth()

    def noise(self):
        """The largest IQR/median over the row's columns."""
        worst = 0.0
        for ts in self.times.values():
            q1, med, q3 = np.percentile(ts, [25, 50, 75])
            worst = max(worst, (q3 - q1) / med)
        return worst


def cold_start(layer: BenchLayer, rng, backend: str = "numba") -> float:
    """Seconds for the first forward+backward of ``layer`` on ``backend`` in this process (compile or cache load)."""
    x, dy, args = _inputs(layer, layer.quick_shapes[0], rng)
    start = time.perf_counter()
    _normref_runner(layer, backend, x, dy, args, FWD_BWD)()
    return time.perf_counter() - start


def measure(layer: BenchLayer, shape, rng, *, columns, rounds: int = 3, reps_per_round: int = 3,
            triad_mib: int = TRIAD_MIB) -> list[Row]:
    """Time every column of ``columns`` and the triad for both passes, in rounds (see the module docstring).

    ``columns`` names keys of :data:`COLUMN_BACKENDS` (``"NumPy"``, ``"Numba"``, ``"Numba out="``, ...). A column
    the layer cannot run is not timed (its cells print ``-``): ``PyTorch`` without a PyTorch peer, ``out=`` for an
    op without ``out=``.
    """
    x, dy, args = _inputs(layer, shape, rng)
    torch = torch_module() if "PyTorch" in columns else None
    columns = [c for c in columns if (layer.torch_fn is not None if c == "PyTorch" else
                                      not c.endswith("out=") or takes_out(layer.op, COLUMN_BACKENDS[c]))]
    passes = layer.floor_passes(shape)
    (a, b, c), triad_bytes = triad_arrays(triad_mib)
    rows = []
    for which in (FWD, FWD_BWD):
        runners = {TRIAD: lambda: triad(a, b, c, 3.0)}
        for column in columns:
            if column == "PyTorch":
                runners[column] = _torch_runner(torch, layer, x, dy, args, which)
            elif column.endswith("out="):
                runners[column] = _numba_out_runner(layer, x, dy, args, which, COLUMN_BACKENDS[column])
            else:
                runners[column] = _normref_runner(layer, COLUMN_BACKENDS[column], x, dy, args, which)
        times = {column: [] for column in runners}
        for _ in range(rounds):
            for column, run in runners.items():
                run()  # warm-up: compiled code loaded, caches, allocator and thread pool in their steady state
                for _ in range(reps_per_round):
                    start = time.perf_counter()
                    run()
                    times[column].append(time.perf_counter() - start)
        extra = None if passes is PASSES else passes[which]
        rows.append(Row(layer.name, tuple(shape), which, x.nbytes, times, triad_bytes, extra))
    return rows


def _fmt_ms(value):
    return "-" if value != value else (f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else
                                       f"{value:.1f}")


def _share(part, whole):
    """``part / whole`` as a percentage; ``-`` when a column was not timed."""
    return "-" if part != part or whole != whole else f"{part / whole:.0%}"


def _times(slower, faster):
    """``slower / faster`` as a factor; ``-`` when a column was not timed."""
    return "-" if slower != slower or faster != faster else f"{slower / faster:.1f}x"


def format_table(rows: list[Row], columns) -> str:
    """One block per layer and shape: a line per pass with the medians, the row's floor, and the ratios.

    ``%floor`` = floor / ``Numba out=`` (preallocated, like the triad); ``%floor fast`` = floor / ``Numba fast
    out=``; ``%floor(alloc)`` = floor / ``Numba``; ``xNumPy`` and ``xPyTorch`` = their time / ``Numba`` (all three
    allocate their outputs). A column that was not timed prints ``-``; a floor of other than 2 and 5 passes is
    named in the block's heading.
    """
    head = ["pass"] + [f"{c} ms" for c in columns] + ["floor ms"]
    if "Numba out=" in columns:
        head.append("%floor")
    if "Numba fast out=" in columns:
        head.append("%floor fast")
    head += ["%floor(alloc)", "xNumPy"]
    if "PyTorch" in columns:
        head.append("xPyTorch")
    head.append("noise")
    widths = [8] + [max(9, len(h)) for h in head[1:]]
    lines = []
    for i in range(0, len(rows), 2):
        first = rows[i]
        mib = first.nbytes / 2**20
        lines.append(f"{first.layer}  x={first.shape} float32, {mib:.3g} MiB; row triad "
                     f"{first.bandwidth() / 1e9:.1f} / {rows[i + 1].bandwidth() / 1e9:.1f} GB/s (fwd / fwd+bwd)"
                     + ("" if first.passes is None else
                        f"; floor {first.passes:.3g} / {rows[i + 1].passes:.3g} passes of x"))
        lines.append("  ".join(h.rjust(w) if j else h.ljust(w) for j, (h, w) in enumerate(zip(head, widths))))
        for row in rows[i:i + 2]:
            floor = row.floor_ms()
            numba_ms = row.median_ms("Numba")
            cells = [row.which] + [_fmt_ms(row.median_ms(c)) for c in columns] + [_fmt_ms(floor)]
            if "Numba out=" in columns:
                cells.append(_share(floor, row.median_ms("Numba out=")))
            if "Numba fast out=" in columns:
                cells.append(_share(floor, row.median_ms("Numba fast out=")))
            cells += [_share(floor, numba_ms), _times(row.median_ms("NumPy"), numba_ms)]
            if "PyTorch" in columns:
                cells.append(_times(row.median_ms("PyTorch"), numba_ms))
            cells.append(f"{row.noise():.0%}")
            lines.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        lines.append("")
    return "\n".join(lines)


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # not available on this platform
        return "load average unknown"


def choose_layers(layers=None, seed=False) -> list[BenchLayer]:
    """The layers named in ``layers`` (case-insensitive, from :data:`LAYERS` and :data:`SEED_LAYERS`), plus every
    seed layer if ``seed``; neither: the five standard layers."""
    if not layers and not seed:
        return list(LAYERS)
    wanted = {n.lower() for n in layers or []}
    return ([l for l in LAYERS if l.name.lower() in wanted]
            + [l for l in SEED_LAYERS if seed or l.name.lower() in wanted])


def run_bench(*, layers=None, seed=False, quick=False, largest=False, rounds=None, reps_per_round=None,
              print_fn=print) -> list[Row]:
    """Measure and print everything; returns the rows. ``layers``, ``seed``: see :func:`choose_layers`;
    ``largest``: only each layer's largest shape."""
    import numba

    chosen = choose_layers(layers, seed)
    rounds = rounds if rounds is not None else (1 if quick else 3)
    reps_per_round = reps_per_round if reps_per_round is not None else (2 if quick else 3)
    triad_mib = 8 if quick else TRIAD_MIB
    rng = np.random.default_rng(0)
    columns = ["NumPy", "Numba", "Numba out="]
    if available_backends()["numba-fast"] is None:
        columns += ["Numba fast", "Numba fast out="]
    if _cuda_usable():
        columns.append("CUDA")
    torch = torch_module()
    if torch is not None:
        columns.append("PyTorch")

    print_fn(f"normref bench: float32; median of {rounds} rounds x {reps_per_round} calls per column; "
             f"noise = max IQR/median of a row; {_load()} at start")
    threads = f"Numba {numba.get_num_threads()} threads ({os.cpu_count()} CPUs)"
    if torch is not None:
        threads += f", PyTorch {torch.__version__} {torch.get_num_threads()} threads"
    print_fn(threads)
    glob = stream_triad(mib_per_array=triad_mib, reps=3 if quick else 10)
    print_fn(f"STREAM triad ({triad_mib} MiB per array, preallocated): best {glob['best'] / 1e9:.1f} GB/s, median "
             f"{glob['median'] / 1e9:.1f} GB/s. Each row's floor = passes x bytes(x) / its own median triad, timed "
             f"in the same rounds as its kernels (fwd: 2 passes, fwd+bwd: 5)")
    touch_mib = 8 if quick else 32
    print_fn(f"first touch: writing a fresh (just allocated) {touch_mib} MiB array costs "
             f"{first_touch_ms(touch_mib):.1f} ms more than a reused one. 'Numba', 'Numba fast', 'NumPy', 'PyTorch' "
             f"allocate y and dx on every call; the 'out=' columns and the triad do not")
    missing = [n for n, why in available_backends().items() if why is not None]
    if missing:
        print_fn(f"backends not available (columns left out): {', '.join(missing)}")
    if torch is None:
        print_fn("PyTorch not importable: column left out (pip install 'normref[bench]')")

    numba_backends = [COLUMN_BACKENDS[c] for c in ("Numba", "Numba fast") if c in columns]
    for backend in numba_backends:
        cold = [(layer.name, cold_start(layer, rng, backend)) for layer in chosen
                if backend in available_op_backends(layer.op)]
        if cold:
            print_fn(f"cold start, first {backend!r} fwd+bwd in this process (compile, or load from the on-disk "
                     "cache): " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in cold))
    print_fn("")

    rows = []
    for layer in chosen:
        implemented = available_op_backends(layer.op)
        layer_columns = [c for c in columns if c == "PyTorch" or COLUMN_BACKENDS[c] in implemented]
        shapes = layer.quick_shapes if quick else layer.shapes[-1:] if largest else layer.shapes
        for shape in shapes:
            block = measure(layer, shape, rng, columns=layer_columns, rounds=rounds, reps_per_round=reps_per_round,
                            triad_mib=triad_mib)
            print_fn(format_table(block, layer_columns))
            rows.extend(block)
    print_fn(_load() + " at end")
    return rows
