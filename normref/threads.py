"""Thread control for the small dense products in normref's reference networks.

The NumPy reference layers spend their time in many small BLAS calls (im2col convolutions, linear layers). On a
machine with few cores that are shared with other work, a multi-threaded OpenBLAS spends more time waking and
synchronising threads than computing: measured here on 2 shared cores, a ``32×1024 @ 1024×16`` product took 15 ms
with BLAS threads and 0.2 ms with one. Long runs (training, figures, landscapes) therefore pin BLAS to one thread and
get their parallelism from processes instead.

How: ``threadpoolctl`` (it comes with scikit-learn, the ``data`` and ``test`` extras) finds the BLAS libraries loaded
in the process (OpenBLAS, MKL, BLIS) and calls their own ``set_num_threads``; only the ``"blas"`` pools are touched
(OpenMP pools, e.g. Numba's or PyTorch's, are left alone). Without ``threadpoolctl`` the context managers here do
nothing, and :func:`blas_thread_counts` returns ``None``: environment variables such as ``OPENBLAS_NUM_THREADS`` are
read once, when the library loads, so they cannot be changed from inside a running process.

The limit is per process and global to it (all Python threads share the BLAS library). Whether a different thread
count changes the last bits of a product depends on how the library splits it; OpenBLAS's GEMM divides the output's
rows and columns among threads, not the summed dimension, and one epoch of the tokens transformer and of a small CNN
gave bit-identical histories with the default 2 threads and with 1 here. What ``tests/test_threads.py`` requires is
that a run with a limit is reproducible: a resumed training run or landscape equals the straight one, bit for bit.
"""

from __future__ import annotations

import contextlib
import numbers


def check_blas_threads(n, name: str = "blas_threads"):
    """``None`` or a positive int (returned as ``int``); a ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be None or a positive int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"{name} must be None or a positive int, got {n!r}")
    return int(n)


def _threadpool_limits():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits


def blas_threads(n):
    """A context manager limiting BLAS to ``n`` threads inside the block and restoring the previous setting after.

    ``n=None`` leaves the setting alone (a no-op context), so callers can pass their option through unchanged.
    Without ``threadpoolctl`` it is a no-op for every ``n`` (see the module docstring).

    Examples:
        >>> import numpy as np
        >>> with blas_threads(1):
        ...     _ = np.ones((4, 4)) @ np.ones((4, 4))
    """
    n = check_blas_threads(n)
    limits = _threadpool_limits()
    if n is None or limits is None:
        return contextlib.nullcontext()
    return limits(limits=n, user_api="blas")


def set_blas_threads(n) -> None:
    """Limit BLAS to ``n`` threads in this process from now on, without restoring (for worker processes);
    ``None`` leaves the setting alone."""
    n = check_blas_threads(n)
    limits = _threadpool_limits()
    if n is not None and limits is not None:
        limits(limits=n, user_api="blas")


def blas_thread_counts():
    """The thread count of every BLAS library loaded in this process (a list), or ``None`` without
    ``threadpoolctl``."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [int(info["num_threads"]) for info in threadpool_info() if info.get("user_api") == "blas"]


def one_blas_thread():
    """``blas_threads(1)``: a context manager limiting BLAS to one thread (a no-op without ``threadpoolctl``)."""
    return blas_threads(1)
