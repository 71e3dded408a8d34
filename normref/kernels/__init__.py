"""Compiled backends: each subpackage registers ``(op, backend)`` implementations when it is imported.

``normref.kernels.numba_cpu`` is the ``"numba"`` backend, ``normref.kernels.numba_fast`` the ``"numba-fast"`` one
(the same ops and drivers with reassociated, register-vectorized sums: faster, reproducible on one machine but not
bitwise across CPUs), ``normref.kernels.cuda`` the ``"cuda"`` one. None is imported by ``import normref``: :mod:`normref._registry` imports a backend's package the first time that backend is
asked for, and records why it failed if it cannot load. Every kernel is checked against the NumPy reference
(:mod:`normref.ops`), which stays the specification.
"""
