"""Thread control for the small dense products in normref's reference networks.

The NumPy reference layers spend their time in many small BLAS calls (im2col convolutions, linear layers). On a
machine with few cores that are shared with other work, a multi-threaded OpenBLAS spends more time waking and
synchronising threads than computing: measured here on 2 shared cores, a ``32×1024 @ 1024×16`` product took 15 ms
with BLAS threads and 0.2 ms with one. Long runs (training, figures, landscapes) therefore pin BLAS to one thread and
get their parallelism from processes instead.
"""

from __future__ import annotations

import contextlib


def one_blas_thread():
    """A context manager limiting BLAS to one thread (via ``threadpoolctl``; a no-op if it is not installed).

    ``threadpoolctl`` comes with scikit-learn (the ``data`` and ``test`` extras).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)
