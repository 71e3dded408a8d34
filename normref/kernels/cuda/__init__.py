"""The ``"cuda"`` backend: numba.cuda kernels for BatchNorm, LayerNorm, GroupNorm, InstanceNorm and RMSNorm.

Loaded lazily by :mod:`normref._registry` the first time ``backend="cuda"`` is asked for. Importing this package
raises ``ImportError`` when ``numba-cuda`` is missing (``pip install "normref[cuda]"``) or when there is neither a
usable GPU nor the CUDA simulator, so that ``normref.available_backends()["cuda"]`` says why.

The simulator (``NUMBA_ENABLE_CUDASIM=1``, set before ``numba`` is first imported) runs the same kernels on the
CPU, one OS thread per CUDA thread; it is how the tests and ``normref check --backend cuda`` run without a GPU.

Layout: :mod:`._block_reduce` (the shared-memory tree, Welford/Chan), :mod:`._rows` (one block per row: LayerNorm,
RMSNorm, InstanceNorm, GroupNorm), :mod:`.batch_norm` (one block per channel), :mod:`._host` (cache, checks).
"""

try:
    from numba import cuda
except ImportError as exc:  # numba without the numba-cuda package
    raise ImportError(f"numba.cuda is not importable ({exc}); install the extra: pip install 'normref[cuda]'") \
        from exc

if not cuda.is_available():
    raise ImportError("numba.cuda found no usable CUDA GPU and driver, and the CUDA simulator is off; set "
                      "NUMBA_ENABLE_CUDASIM=1 before numba is imported to run the kernels on the CPU simulator")

from ._block_reduce import SIMULATOR, TPB  # noqa: E402,F401

if SIMULATOR:
    # The simulator's block manager busy-polls its threads at every barrier; with CPython's default 5 ms GIL switch
    # interval each barrier round waits for forced switches. A 0.1 ms interval makes simulated kernels about 5x
    # faster (measured on a 2-core machine). It only applies under NUMBA_ENABLE_CUDASIM=1, a test-and-debug mode.
    import sys

    sys.setswitchinterval(min(sys.getswitchinterval(), 1e-4))

from . import batch_norm, group_norm, instance_norm, layer_norm, rms_norm  # noqa: E402,F401  (they register)
