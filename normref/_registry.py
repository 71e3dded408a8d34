"""Backends: which implementation of an op runs, chosen explicitly.

An implementation is a ``(forward, backward)`` pair registered under ``(op, backend)``. The NumPy reference
registers itself when :mod:`normref.ops` is imported; the compiled backends register when their kernel package is
loaded, which happens lazily the first time the backend is asked for, so ``import normref`` needs only NumPy.
(The lazy load is plugin discovery by module name, the one place where a lower layer names a higher one.)

The backend is resolved in this order of precedence:

1. an explicit ``backend=`` argument;
2. the innermost ``with normref.use_backend(name):`` block;
3. the ``NORMREF_BACKEND`` environment variable;
4. ``"numpy"``.

A missing backend or op is an error that names what is available. There is never a silent fallback: a result
always comes from the backend that was asked for, and every cache records it, so a backward never mixes backends.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from typing import Callable, NamedTuple

BACKENDS = ("numpy", "numba", "numba-fast", "cuda")
# Where each non-reference backend's kernels live; importing the package registers its implementations.
# "numba-fast" is "numba" with reassociated (vectorized) sums: its own name, so the checked path never changes.
_KERNEL_PACKAGES = {"numba": "normref.kernels.numba_cpu", "numba-fast": "normref.kernels.numba_fast",
                    "cuda": "normref.kernels.cuda"}


class Impl(NamedTuple):
    forward: Callable
    backward: Callable


_IMPLS: dict[tuple[str, str], Impl] = {}
_LOAD_ERRORS: dict[str, str] = {}
_current = contextvars.ContextVar("normref_backend", default=None)


def register(op: str, backend: str, forward: Callable, backward: Callable) -> None:
    """Register ``forward``/``backward`` as the implementation of ``op`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _IMPLS[(op, backend)] = Impl(forward, backward)


def _load(backend: str) -> bool:
    """Import a backend's kernel package once; remember why it failed."""
    if backend == "numpy":
        importlib.import_module("normref.ops")
        return True
    if backend in _LOAD_ERRORS:
        return False
    if any(b == backend for (_, b) in _IMPLS):
        return True
    try:
        importlib.import_module(_KERNEL_PACKAGES[backend])
    except Exception as exc:  # an ImportError, or a driver/runtime error raised while probing the device
        _LOAD_ERRORS[backend] = f"{type(exc).__name__}: {exc}"
        return False
    return True


def check_backend_name(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {BACKENDS}, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str | None = None) -> str:
    """The backend a call with ``backend=`` would use, by the precedence in the module docstring."""
    if backend is None:
        backend = _current.get()
    if backend is None:
        backend = os.environ.get("NORMREF_BACKEND") or "numpy"
    return check_backend_name(backend)


@contextlib.contextmanager
def use_backend(backend: str):
    """Within the block, calls that pass no ``backend=`` use ``backend``.

    Examples:
        >>> import normref
        >>> with normref.use_backend("numpy"):
        ...     normref.resolve_backend()
        'numpy'
    """
    token = _current.set(check_backend_name(backend))
    try:
        yield backend
    finally:
        _current.reset(token)


def get_impl(op: str, backend: str | None = None) -> Impl:
    """The implementation of ``op`` on the resolved backend; an error naming the alternatives if there is none."""
    backend = resolve_backend(backend)
    if not _load(backend):
        raise NotImplementedError(f"backend {backend!r} is not available ({_LOAD_ERRORS[backend]}); "
                                  f"available backends: {available_op_backends(op)}")
    try:
        return _IMPLS[(op, backend)]
    except KeyError:
        raise NotImplementedError(f"op {op!r} has no {backend!r} implementation; "
                                  f"it is implemented on: {available_op_backends(op)}") from None


def available_op_backends(op: str) -> list[str]:
    """The backends that load and implement ``op``."""
    return [b for b in BACKENDS if _load(b) and (op, b) in _IMPLS]


def registered_ops() -> list[str]:
    _load("numpy")
    return sorted({op for (op, _) in _IMPLS})


def available_backends() -> dict[str, str | None]:
    """Every backend mapped to ``None`` if it loaded, or to the reason it did not.

    Examples:
        >>> import normref
        >>> normref.available_backends()["numpy"] is None
        True
    """
    return {b: (None if _load(b) else _LOAD_ERRORS[b]) for b in BACKENDS}
