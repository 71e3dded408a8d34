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
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
from numba import njit, prange

from . import functional as F
from ._registry import available_backends, available_op_backends, get_impl

FWD, FWD_BWD = "fwd", "fwd+bwd"
PASSES = {FWD: 2, FWD_BWD: 5}
TRIAD = "triad"
TRIAD_MIB = 128  # per array: four times the last-level cache of the machine this was written on


@dataclasses.dataclass(frozen=True)
class BenchLayer:
    """One layer to benchmark: its op, how to make parameters and hyperparameters for a shape, and its shapes."""

    name: str
    op: str
    shapes: tuple  # small (dispatch overhead) to >= 32 MiB in float32
    quick_shapes: tuple
    hyper: dict
    has_beta: bool = True

    def param_shape(self, shape):
        return (shape[-1],) if self.op in ("layer_norm", "rms_norm") else (shape[1],)


LAYERS = [
    BenchLayer("LayerNorm", "layer_norm", ((64, 256), (1024, 1024), (8192, 1024)), ((8, 64),),
               {"normalized_shape": None}),
    BenchLayer("RMSNorm", "rms_norm", ((64, 256), (1024, 1024), (8192, 1024)), ((8, 64),),
               {"normalized_shape": None}, has_beta=False),
    BenchLayer("BatchNorm", "batch_norm", ((8, 16, 8, 8), (32, 64, 16, 16), (32, 64, 64, 64)), ((4, 3, 5, 5),),
               {}),
    BenchLayer("GroupNorm", "group_norm", ((8, 16, 8, 8), (32, 64, 16, 16), (32, 64, 64, 64)), ((4, 8, 5, 5),),
               {"num_groups": 8}),
    BenchLayer("InstanceNorm", "instance_norm", ((8, 16, 8, 8), (32, 64, 16, 16), (32, 64, 64, 64)),
               ((4, 3, 5, 5),), {}),
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
    p = layer.param_shape(shape)
    params = [rng.standard_normal(p, dtype=np.float32)]
    if layer.has_beta:
        params.append(rng.standard_normal(p, dtype=np.float32))
    hyper = dict(layer.hyper)
    if "normalized_shape" in hyper:
        hyper["normalized_shape"] = shape[-1]
    return x, dy, params, hyper


def _normref_runner(layer, backend, x, dy, params, hyper, which):
    """The public entry points, as a layer calls them: outputs allocated on every call."""
    def fwd():
        return F.forward(layer.op, x, *params, backend=backend, **hyper)

    def fwd_bwd():
        _, cache = F.forward(layer.op, x, *params, backend=backend, **hyper)
        return F.backward(layer.op, dy, cache)

    return fwd if which == FWD else fwd_bwd


# The backend each column runs (None: not a normref backend).
COLUMN_BACKENDS = {"NumPy": "numpy", "Numba": "numba", "Numba out=": "numba", "Numba fast": "numba-fast",
                   "Numba fast out=": "numba-fast", "CUDA": "cuda", "PyTorch": None}


def _numba_out_runner(layer, x, dy, params, hyper, which, backend="numba"):
    """A Numba backend's ops with preallocated outputs (``out=``): ``y`` and ``dx`` are written in place."""
    impl = get_impl(layer.op, backend)
    y, dx = np.empty_like(x), np.empty_like(x)

    def fwd():
        return impl.forward(x, *params, out=y, **hyper)

    def fwd_bwd():
        _, cache = impl.forward(x, *params, out=y, **hyper)
        return impl.backward(dy, cache, out=dx)

    return fwd if which == FWD else fwd_bwd


def torch_module():
    """``torch`` if it can be imported, else ``None`` (never imported by the package itself)."""
    try:
        import torch
    except Exception:  # not installed, or a broken install: the column is left out
        return None
    return torch


def _torch_runner(torch, layer, x, dy, params, hyper, which):
    tf = torch.nn.functional
    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    tparams = [torch.from_numpy(p) for p in params]

    def call(xt, ps):
        if layer.op == "layer_norm":
            return tf.layer_norm(xt, (x.shape[-1],), ps[0], ps[1], eps=1e-5)
        if layer.op == "rms_norm":
            return tf.rms_norm(xt, (x.shape[-1],), ps[0], eps=None)
        if layer.op == "batch_norm":
            return tf.batch_norm(xt, None, None, ps[0], ps[1], training=True, eps=1e-5)
        if layer.op == "group_norm":
            return tf.group_norm(xt, hyper["num_groups"], ps[0], ps[1], eps=1e-5)
        return tf.instance_norm(xt, None, None, ps[0], ps[1], use_input_stats=True, eps=1e-5)

    def fwd():
        with torch.no_grad():
            return call(tx, tparams)

    leaves = [tx.detach().requires_grad_()] + [p.detach().requires_grad_() for p in tparams]

    def fwd_bwd():
        y = call(leaves[0], leaves[1:])
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

    def median_ms(self, column):
        return 1e3 * float(np.median(self.times[column])) if column in self.times else math.nan

    def bandwidth(self) -> float:
        """The row's triad bandwidth in bytes/s (median over its rounds)."""
        return self.triad_bytes / float(np.median(self.times[TRIAD]))

    def floor_ms(self) -> float:
        return 1e3 * PASSES[self.which] * self.nbytes / self.bandwidth()

    def noise(self):
        """The largest IQR/median over the row's columns."""
        worst = 0.0
        for ts in self.times.values():
            q1, med, q3 = np.percentile(ts, [25, 50, 75])
            worst = max(worst, (q3 - q1) / med)
        return worst


def cold_start(layer: BenchLayer, rng, backend: str = "numba") -> float:
    """Seconds for the first forward+backward of ``layer`` on ``backend`` in this process (compile or cache load)."""
    x, dy, params, hyper = _inputs(layer, layer.quick_shapes[0], rng)
    start = time.perf_counter()
    _normref_runner(layer, backend, x, dy, params, hyper, FWD_BWD)()
    return time.perf_counter() - start


def measure(layer: BenchLayer, shape, rng, *, columns, rounds: int = 3, reps_per_round: int = 3,
            triad_mib: int = TRIAD_MIB) -> list[Row]:
    """Time every column of ``columns`` and the triad for both passes, in rounds (see the module docstring).

    ``columns`` names keys of :data:`COLUMN_BACKENDS` (``"NumPy"``, ``"Numba"``, ``"Numba out="``, ...).
    """
    x, dy, params, hyper = _inputs(layer, shape, rng)
    torch = torch_module() if "PyTorch" in columns else None
    (a, b, c), triad_bytes = triad_arrays(triad_mib)
    rows = []
    for which in (FWD, FWD_BWD):
        runners = {TRIAD: lambda: triad(a, b, c, 3.0)}
        for column in columns:
            if column == "PyTorch":
                runners[column] = _torch_runner(torch, layer, x, dy, params, hyper, which)
            elif column.endswith("out="):
                runners[column] = _numba_out_runner(layer, x, dy, params, hyper, which, COLUMN_BACKENDS[column])
            else:
                runners[column] = _normref_runner(layer, COLUMN_BACKENDS[column], x, dy, params, hyper, which)
        times = {column: [] for column in runners}
        for _ in range(rounds):
            for column, run in runners.items():
                run()  # warm-up: compiled code loaded, caches, allocator and thread pool in their steady state
                for _ in range(reps_per_round):
                    start = time.perf_counter()
                    run()
                    times[column].append(time.perf_counter() - start)
        rows.append(Row(layer.name, tuple(shape), which, x.nbytes, times, triad_bytes))
    return rows


def _fmt_ms(value):
    return "-" if value != value else (f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else
                                       f"{value:.1f}")


def format_table(rows: list[Row], columns) -> str:
    """One block per layer and shape: a line per pass with the medians, the row's floor, and the ratios.

    ``%floor`` = floor / ``Numba out=`` (preallocated, like the triad); ``%floor fast`` = floor / ``Numba fast
    out=``; ``%floor(alloc)`` = floor / ``Numba``; ``xNumPy`` and ``xPyTorch`` = their time / ``Numba`` (all three
    allocate their outputs).
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
                     f"{first.bandwidth() / 1e9:.1f} / {rows[i + 1].bandwidth() / 1e9:.1f} GB/s (fwd / fwd+bwd)")
        lines.append("  ".join(h.rjust(w) if j else h.ljust(w) for j, (h, w) in enumerate(zip(head, widths))))
        for row in rows[i:i + 2]:
            floor = row.floor_ms()
            numba_ms = row.median_ms("Numba")
            cells = [row.which] + [_fmt_ms(row.median_ms(c)) for c in columns] + [_fmt_ms(floor)]
            if "Numba out=" in columns:
                cells.append(f"{floor / row.median_ms('Numba out='):.0%}")
            if "Numba fast out=" in columns:
                cells.append(f"{floor / row.median_ms('Numba fast out='):.0%}")
            cells += [f"{floor / numba_ms:.0%}", f"{row.median_ms('NumPy') / numba_ms:.1f}x"]
            if "PyTorch" in columns:
                cells.append(f"{row.median_ms('PyTorch') / numba_ms:.1f}x")
            cells.append(f"{row.noise():.0%}")
            lines.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        lines.append("")
    return "\n".join(lines)


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # not available on this platform
        return "load average unknown"


def run_bench(*, layers=None, quick=False, largest=False, rounds=None, reps_per_round=None,
              print_fn=print) -> list[Row]:
    """Measure and print everything; returns the rows. ``layers``: names to keep (default all); ``largest``: only
    each layer's largest shape."""
    import numba

    chosen = [l for l in LAYERS if layers is None or l.name.lower() in {n.lower() for n in layers}]
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
        cold = [(layer.name, cold_start(layer, rng, backend)) for layer in chosen]
        print_fn(f"cold start, first {backend!r} fwd+bwd in this process (compile, or load from the on-disk cache): "
                 + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in cold))
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
