"""Repository-wide pytest configuration (``--doctest-modules`` also collects the package's own modules)."""

# The cuda kernel package raises ImportError when imported with neither a GPU nor the CUDA simulator, on purpose: that
# is how normref.available_backends() learns why the backend is missing. Its modules have no doctests, so doctest
# collection skips them; tests/test_backend_cuda.py tests them, in a simulator process started by
# tests/test_cuda_simulator.py.
collect_ignore_glob = ["normref/kernels/cuda/*"]
