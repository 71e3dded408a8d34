r"""``normref bench``: time every backend against the memory-bandwidth floor, measured in the same run.

Normalization is memory-bound: per element it does a handful of flops and moves 4 (float32) or 8 bytes several
times. So the yardstick is not another library but the machine: the **bandwidth floor** is

.. math::

    t_\mathrm{floor} = \frac{\text{passes} \times \text{bytes of } x}{B_\mathrm{triad}},

with 2 passes for the forward (read ``x``, write ``y``) and 5 for forward + backward (read ``x``, write ``y``; read
``x`` and ``dy``, write ``dx``). Every statistic is a few numbers per row or channel, negligible beside these.
:math:`B_\mathrm{triad}` is the STREAM triad bandwidth ``a = b + s·c`` (2 reads, 1 write; 3 arrays' bytes per
iteration, as STREAM counts them), measured at the start of the run with arrays much larger than the last-level cache
and all cores, reporting the best repetition as STREAM does. A kernel at the floor moves each byte once at the speed
a simple streaming loop achieves; "floor/Numba" is the fraction of that reached.

What is timed: the public entry points, ``normref.functional.forward`` and ``backward``, as a layer calls them,
output allocation included (for every backend alike). Each column's repetitions run back to back after a warm-up
call: interleaving them would be fairer to a changing machine load, but Numba's and PyTorch's OpenMP thread pools
then spin-wait against each other, and both columns measured that fight (tens of ms on a tiny input, seen here).
The table shows the median and, as ``noise``, the largest interquartile range over median among the row's columns.
The first call of each Numba op is timed separately: it compiles the kernels, or loads them from Numba's on-disk
cache (``cache=True``), and that cold start is not part of the medians.

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
from ._registry import available_backends, available_op_backends

FWD, FWD_BWD = "fwd", "fwd+bwd"
PASSES = {FWD: 2, FWD_BWD: 5}


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


def stream_triad(mib_per_array: int = 128, reps: int = 10) -> dict:
    """STREAM-triad bandwidth in bytes/s: ``a = b + s·c`` on three float64 arrays of ``mib_per_array`` MiB each.

    Returns ``{"best": ..., "median": ..., "mib": ...}``; the floor uses ``best`` (STREAM's convention).
    """
    n = mib_per_array * 2**20 // 8
    a, b, c = np.zeros(n), np.full(n, 1.0), np.full(n, 2.0)  # touched, so page faults are not timed
    triad(a, b, c, 3.0)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        triad(a, b, c, 3.0)
        times.append(time.perf_counter() - start)
    moved = 3 * a.nbytes
    return {"best": moved / min(times), "median": moved / float(np.median(times)), "mib": mib_per_array}


# ----------------------------------------------------------------------------------------------------------------
# Runners: one callable per (backend, pass) that does the work once


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
    def fwd():
        return F.forward(layer.op, x, *params, backend=backend, **hyper)

    def fwd_bwd():
        _, cache = F.forward(layer.op, x, *params, backend=backend, **hyper)
        return F.backward(layer.op, dy, cache)

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
    """One table row: one layer, shape and pass; ``times[column]`` = the repetitions in seconds."""

    layer: str
    shape: tuple
    which: str
    nbytes: int
    times: dict

    def median_ms(self, column):
        return 1e3 * float(np.median(self.times[column])) if column in self.times else math.nan

    def noise(self):
        """The largest IQR/median over the row's columns."""
        worst = 0.0
        for ts in self.times.values():
            q1, med, q3 = np.percentile(ts, [25, 50, 75])
            worst = max(worst, (q3 - q1) / med)
        return worst


def cold_start(layer: BenchLayer, rng) -> float:
    """Seconds for the first Numba forward+backward of ``layer`` in this process (compile or cache load)."""
    x, dy, params, hyper = _inputs(layer, layer.quick_shapes[0], rng)
    start = time.perf_counter()
    _normref_runner(layer, "numba", x, dy, params, hyper, FWD_BWD)()
    return time.perf_counter() - start


def measure(layer: BenchLayer, shape, reps: int, rng, *, columns) -> list[Row]:
    """Time every column of ``columns`` for both passes, ``reps`` times back to back after one warm-up each."""
    x, dy, params, hyper = _inputs(layer, shape, rng)
    torch = torch_module() if "PyTorch" in columns else None
    rows = []
    for which in (FWD, FWD_BWD):
        runners = {}
        for column in columns:
            if column == "PyTorch":
                runners[column] = _torch_runner(torch, layer, x, dy, params, hyper, which)
            else:
                runners[column] = _normref_runner(layer, column.lower(), x, dy, params, hyper, which)
        times = {}
        for column, run in runners.items():
            run()  # warm-up: compiled code loaded, caches and allocator in their steady state
            times[column] = []
            for _ in range(reps):
                start = time.perf_counter()
                run()
                times[column].append(time.perf_counter() - start)
        rows.append(Row(layer.name, tuple(shape), which, x.nbytes, times))
    return rows


def _fmt_ms(value):
    return "-" if value != value else (f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else
                                       f"{value:.1f}")


def format_table(rows: list[Row], columns, bandwidth: float) -> str:
    """One block per layer and shape: a line per pass with the times, the floor and the ratios."""
    head = ["pass"] + [f"{c} ms" for c in columns] + ["floor ms", "floor/Numba", "NumPy/Numba"]
    if "PyTorch" in columns:
        head.append("PyTorch/Numba")
    head.append("noise")
    widths = [8] + [max(10, len(h)) for h in head[1:]]
    lines = []
    for i in range(0, len(rows), 2):
        first = rows[i]
        mib = first.nbytes / 2**20
        lines.append(f"{first.layer}  x={first.shape} float32, {mib:.3g} MiB")
        lines.append("  ".join(h.rjust(w) if j else h.ljust(w) for j, (h, w) in enumerate(zip(head, widths))))
        for row in rows[i:i + 2]:
            floor = 1e3 * PASSES[row.which] * row.nbytes / bandwidth
            numba_ms = row.median_ms("Numba")
            cells = [row.which] + [_fmt_ms(row.median_ms(c)) for c in columns] + [
                _fmt_ms(floor), f"{floor / numba_ms:.0%}", f"{row.median_ms('NumPy') / numba_ms:.1f}x"]
            if "PyTorch" in columns:
                cells.append(f"{row.median_ms('PyTorch') / numba_ms:.1f}x")
            cells.append(f"{row.noise():.0%}")
            lines.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        lines.append("")
    return "\n".join(lines)


def run_bench(*, layers=None, quick=False, reps=None, print_fn=print) -> list[Row]:
    """Measure and print everything; returns the rows. ``layers``: names to keep (default all)."""
    chosen = [l for l in LAYERS if layers is None or l.name.lower() in {n.lower() for n in layers}]
    reps = reps if reps is not None else (3 if quick else 9)
    rng = np.random.default_rng(0)
    columns = ["NumPy", "Numba"]
    if _cuda_usable():
        columns.append("CUDA")
    if torch_module() is not None:
        columns.append("PyTorch")

    triad = stream_triad(mib_per_array=8 if quick else 128, reps=3 if quick else 10)
    print_fn(f"normref bench: float32; median of {reps} repetitions; noise = max IQR/median of a row")
    print_fn(f"STREAM triad ({triad['mib']} MiB per array, {os.cpu_count()} CPUs): best {triad['best'] / 1e9:.1f} "
             f"GB/s, median {triad['median'] / 1e9:.1f} GB/s; floor = passes x bytes(x) / best "
             f"(fwd: 2 passes, fwd+bwd: 5)")
    missing = [n for n, why in available_backends().items() if why is not None]
    if missing:
        print_fn(f"backends not available (columns left out): {', '.join(missing)}")
    if "PyTorch" not in columns:
        print_fn("PyTorch not importable: column left out (pip install 'normref[bench]')")

    cold = [(layer.name, cold_start(layer, rng)) for layer in chosen]
    print_fn("cold start, first Numba fwd+bwd in this process (compile, or load from the on-disk cache): "
             + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in cold))
    print_fn("")

    rows = []
    for layer in chosen:
        implemented = available_op_backends(layer.op)
        layer_columns = [c for c in columns if c == "PyTorch" or c.lower() in implemented]
        for shape in (layer.quick_shapes if quick else layer.shapes):
            block = measure(layer, shape, reps, rng, columns=layer_columns)
            print_fn(format_table(block, layer_columns, triad["best"]))
            rows.extend(block)
    return rows
