"""Backend-dispatching entry points: the same ops as :mod:`normref.ops`, run on a chosen backend.

``forward(op, x, *params, backend=None, **hyper)`` runs the op on the resolved backend (see
:mod:`normref._registry`) and returns ``(y, cache)``; ``backward(op, dy, cache)`` runs the backward of the backend
recorded in ``cache``. Layers in :mod:`normref.nn` call only these two functions.
"""

from __future__ import annotations

from ._registry import get_impl


def forward(op: str, x, *params, backend: str | None = None, **hyper):
    """Run ``op``'s forward on the resolved backend: ``(y, cache)``."""
    return get_impl(op, backend).forward(x, *params, **hyper)


def backward(op: str, dy, cache):
    """Run ``op``'s backward on the backend that produced ``cache``: ``(dx, *dparams)``."""
    backend = getattr(cache, "backend", "numpy")
    return get_impl(op, backend).backward(dy, cache)
