"""Bitwise repeatability of a compiled backend: the same bits run after run, on any number of threads.

The Numba backends promise it (fixed chunks, fixed summation orders, two-stage parameter reductions; see
:mod:`normref.kernels.numba_cpu._common`), so every kernel's tests check it the same way, with
:func:`assert_bitwise_repeatable`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numba
import numpy as np


def assert_bitwise_repeatable(run: Callable[[], Sequence[np.ndarray | None]]) -> None:
    """Call ``run()`` twice on Numba's current thread count and once on one thread; every array it returns must be
    bitwise equal across the three calls (``None`` entries must stay ``None``).

    ``run`` takes no arguments and returns a flat sequence of arrays (outputs, gradients, updated state). A run on
    one thread changes the split of every ``prange``, so a result that depended on the thread count, or a race,
    would show here; a second run on the same count catches anything that varies from run to run.
    """
    first, second = list(run()), list(run())
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = list(run())
    finally:
        numba.set_num_threads(previous)
    for label, other in (("a second run", second), ("a run on one thread", single)):
        if len(other) != len(first):
            raise AssertionError(f"{label} returned {len(other)} arrays, the first returned {len(first)}")
        for index, (a, b) in enumerate(zip(first, other)):
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                raise AssertionError(f"output {index} differs bitwise between the first run and {label}")
