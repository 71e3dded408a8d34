"""Shared machinery of the non-normalizing layers (Linear, Conv2d, pooling, activations, ...): run one registered op.

``forward`` calls ``F.forward(op, x, *params, **hyper)`` and keeps the cache, ``backward`` calls ``F.backward`` and
accumulates the parameter gradients. :class:`normref.nn._norm_base.NormLayer` extends it with the normalizers'
``stats=`` argument and state hooks, so ``isinstance(layer, NormLayer)`` still means "a normalizer".
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import functional as F
from .._registry import check_backend_name
from .module import Module


def make_rng(rng) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed, or ``None`` (fresh OS entropy, like PyTorch's
    unseeded global generator: pass a seed or a Generator for reproducible initialization)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def uniform_init(rng, shape, bound: float, dtype) -> np.ndarray:
    """``U(-bound, bound)`` of ``shape``, drawn in float64 and cast to ``dtype``."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class OpLayer(Module):
    """A layer that runs one registered op: ``forward`` keeps its cache, ``backward`` accumulates its gradients."""

    op: str = ""
    param_names: tuple[str, ...] = ()  # the op's positional parameters, in order

    def __init__(self, *, backend: str | None = None):
        super().__init__()
        self.backend = None if backend is None else check_backend_name(backend)
        self.cache = None

    def op_hyper(self) -> dict:
        """The op's keyword hyperparameters (stride, padding, ...)."""
        return {}

    def op_params(self) -> list:
        """The op's positional parameters in order; ``None`` for one the layer does not have."""
        return [self.params.get(name) for name in self.param_names]

    def forward(self, x):
        y, self.cache = F.forward(self.op, x, *self.op_params(), backend=self.backend, **self.op_hyper())
        return y

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        dx, *dparams = F.backward(self.op, dy, self.cache)
        self.accumulate_op_grads(dparams)
        return dx

    def accumulate_op_grads(self, dparams) -> None:
        """Add the op's parameter gradients (in ``param_names`` order) into ``grads``, skipping absent ones."""
        for name, grad in zip(self.param_names, dparams):
            if name in self.params:
                self.accumulate_grad(name, grad)
