"""Time a filter-normalized 2D surface of a small digits CNN: ``python -m normref.landscape.benchmark``.

The model is ``Conv(1->8, 3x3) -> BN -> ReLU -> MaxPool(2) -> Conv(8->16, 3x3) -> BN -> ReLU -> MaxPool(2) ->
Flatten -> Linear(64->10)`` (1,946 parameters), evaluated in eval mode with its running statistics
(``bn="running"``, chunks of 256) on the 1,797 scikit-learn digits when ``normref.data`` and scikit-learn are
available, else on 1,797 synthetic 8x8 images (the timing depends only on the shapes). The weights are the initial
ones after one pass that sets the running statistics: a surface costs the same at any weights.

It reports the wall time of a ``size x size`` surface on ``--workers`` processes (default 2: the README's number)
and, with ``--speedup SIZE``, the time of a smaller surface on 1 worker (in-process, one BLAS thread) and on 2
worker processes, and their ratio.

BLAS threads: by default every evaluating process uses one (the worker processes always did; the in-process run with
``--workers 1`` is limited for the duration of the surface and restored after). ``--blas-threads N`` uses ``N``
instead, everywhere (``surface(..., blas_threads=N)``, see :mod:`normref.landscape.engine`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from ..nn import BatchNorm, Conv2d, CrossEntropyLoss, Flatten, Linear, MaxPool2d, ReLU, Sequential
from .directions import random_directions
from .objective import Objective
from .surfaces import surface
from ..threads import check_blas_threads


def digits_cnn(seed=0) -> Sequential:
    return Sequential(Conv2d(1, 8, 3, padding=1, rng=seed), BatchNorm(8), ReLU(), MaxPool2d(2),
                      Conv2d(8, 16, 3, padding=1, rng=seed + 1), BatchNorm(16), ReLU(), MaxPool2d(2), Flatten(),
                      Linear(64, 10, rng=seed + 2))


def digits_data():
    """``(x (1797, 1, 8, 8), y, name)``: the real digits if possible, else synthetic images of the same shape."""
    try:
        from ..data import load_digits
        data = load_digits()
        return np.asarray(data.x, dtype=np.float64), np.asarray(data.y), "sklearn digits"
    except Exception:  # normref.data or scikit-learn missing: same shapes, synthetic pixels
        rng = np.random.default_rng(0)
        return rng.uniform(0, 1, (1797, 1, 8, 8)), rng.integers(0, 10, 1797), "synthetic 8x8"


def time_surface(size: int, workers: int, *, progress=True, blas_threads=None) -> float:
    """Seconds for a ``size x size`` surface on ``workers`` processes; ``blas_threads=None`` means one BLAS thread
    in every process that evaluates points."""
    blas_threads = 1 if blas_threads is None else check_blas_threads(blas_threads)
    x, y, _ = digits_data()
    net = digits_cnn()
    net.train()
    net(x)
    net.eval()
    f = Objective(net, CrossEntropyLoss(), x, y, bn="running", batch_size=256)
    dirs = random_directions(f, 2, seed=0)
    grid = np.linspace(-1, 1, size)
    with tempfile.TemporaryDirectory() as store:
        start = time.perf_counter()
        surface(f, dirs, grid, grid, workers=workers, store=store, progress=progress, blas_threads=blas_threads)
        return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=51, help="grid side (default 51: 2601 points)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--speedup", type=int, default=0, metavar="SIZE",
                        help="also time a SIZE x SIZE surface on 1 and 2 workers")
    parser.add_argument("--blas-threads", type=int, default=None, metavar="N",
                        help="BLAS threads in every evaluating process (default 1)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.blas_threads is not None and args.blas_threads < 1:
        parser.error(f"--blas-threads must be at least 1, got {args.blas_threads}")
    _, _, name = digits_data()
    print(f"data: {name}; cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.2f}")
    if args.size:
        t = time_surface(args.size, args.workers, progress=not args.quiet, blas_threads=args.blas_threads)
        print(f"{args.size}x{args.size} surface on {args.workers} worker(s): {t:.1f} s "
              f"({args.size ** 2 / t:.1f} points/s)")
    if args.speedup:
        t1 = time_surface(args.speedup, 1, progress=not args.quiet, blas_threads=args.blas_threads)
        t2 = time_surface(args.speedup, 2, progress=not args.quiet, blas_threads=args.blas_threads)
        print(f"{args.speedup}x{args.speedup} surface: 1 worker {t1:.1f} s, 2 workers {t2:.1f} s, "
              f"speed-up {t1 / t2:.2f}x")


if __name__ == "__main__":
    main()
