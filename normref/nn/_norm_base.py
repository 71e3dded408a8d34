"""Shared machinery of the normalization layers: parameters, backend, cache, and running statistics.

Each concrete layer is a few lines: which op it runs, its parameter shapes, and its hyperparameters. The math lives
in the op modules (:mod:`normref.ops`); this file only moves state around them.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._validate import check_fraction, check_positive_float, check_positive_int
from ..ops.running_stats import RunningStats, initial_running_stats, update_running_stats
from ._op_layer import OpLayer
from .module import Module


class NormLayer(OpLayer):
    """A normalizer running one registered op: :class:`OpLayer` plus given statistics and state hooks."""

    param_names: tuple[str, ...] = ("gamma", "beta")

    def given_stats(self):
        """Statistics to normalize with instead of the batch's, or ``None``."""
        return None

    def check_input(self, x) -> None:
        """Layer-level checks (the channel count against the constructor); the op validates the rest."""

    def after_forward(self, cache) -> None:
        """Hook for state updates after a forward (running statistics)."""

    def forward(self, x):
        self.check_input(x)
        y, cache = F.forward(self.op, x, *self.op_params(), backend=self.backend, stats=self.given_stats(),
                             **self.op_hyper())
        self.cache = cache
        self.after_forward(cache)
        return y


class SurrogateNorm(NormLayer):
    """A normalizer whose paper back-propagates a surrogate (PowerNorm, Unified Norm): ``backward="exact"|"approx"``.

    The exact gradient is the registered op's backward. After a *training* forward with ``backward_kind ==
    "approx"``, :meth:`approx_backward` runs the paper's rule instead and updates the buffers it owns; after an eval
    forward the backward is always exact. The rule runs on NumPy only, unless the layer names an ``approx_op``: a
    registered op whose backward is the rule, which ``approx_backward`` looks up for the cache's backend (so the
    registry says where it exists).
    """

    backward_kind = "exact"
    approx_op: str | None = None  # registered op whose backward is the paper's rule (any backend); None: NumPy only
    _cache_training = False  # whether the cached forward ran in training mode

    def approx_backward(self, dy):
        """The paper's rule: return ``(dx, dparams)`` and update the backward's state in ``buffers``."""
        raise NotImplementedError

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if not (self._cache_training and self.backward_kind == "approx"):
            return super().backward(dy)
        if self.approx_op is None and self.cache.backend != "numpy":
            raise NotImplementedError(f"the approximate backward exists only for the numpy backend, the "
                                      f"forward ran on {self.cache.backend!r}")
        dx, dparams = self.approx_backward(dy)
        self.accumulate_op_grads(dparams)
        return dx


def init_affine(layer: Module, shape: tuple[int, ...], *, gamma: bool, beta: bool, dtype) -> None:
    """PyTorch's initial affine: gamma = 1, beta = 0."""
    if gamma:
        layer.add_param("gamma", np.ones(shape, dtype))
    if beta:
        layer.add_param("beta", np.zeros(shape, dtype))


def check_channels(x, num_features: int, name: str = "num_features") -> None:
    """Raise a clear error when ``x``'s channel axis (1) does not match the layer's ``num_features``."""
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) >= 2 and shape[1] != num_features:
        raise ValueError(f"x has {shape[1]} channels (axis 1, shape {tuple(shape)}) but the layer was built with "
                         f"{name}={num_features}")


def fold_batch_stats(layer: Module, mean, var, count) -> None:
    """Fold one training batch's statistics into ``layer.buffers`` (running_mean, running_var,
    num_batches_tracked) with :func:`normref.ops.running_stats.update_running_stats` and ``layer.momentum``."""
    running = RunningStats(layer.buffers["running_mean"], layer.buffers["running_var"],
                           layer.buffers["num_batches_tracked"])
    new = update_running_stats(running, mean, var, count, momentum=layer.momentum)
    layer.buffers.update(running_mean=new.running_mean, running_var=new.running_var,
                         num_batches_tracked=new.num_batches_tracked)


class TrackedNorm(NormLayer):
    """A per-channel normalizer with optional running statistics (BatchNorm, InstanceNorm), PyTorch semantics.

    In training the batch statistics are used and, with ``track_running_stats``, folded into the buffers by
    :func:`normref.ops.running_stats.update_running_stats`. In eval the buffers are used when tracked, the batch
    statistics otherwise.
    """

    batch_stats = staticmethod(lambda cache: None)  # cache -> (mean (C,), biased var (C,), count)

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, *, backend, dtype):
        super().__init__(backend=backend)
        self.num_features = check_positive_int(num_features, "num_features")
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.momentum = None if momentum is None else check_fraction(momentum, "momentum")
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = np.dtype(dtype)
        init_affine(self, (self.num_features,), gamma=self.affine, beta=self.affine, dtype=self.dtype)
        if self.track_running_stats:
            self.reset_running_stats()

    def reset_running_stats(self) -> None:
        mean, var, tracked = initial_running_stats(self.num_features, self.dtype)
        self.buffers.update(running_mean=mean, running_var=var, num_batches_tracked=tracked)

    def op_hyper(self) -> dict:
        return {"eps": self.eps}

    def check_input(self, x) -> None:
        check_channels(x, self.num_features)

    def given_stats(self):
        if self.training or not self.track_running_stats:
            return None
        return self.buffers["running_mean"], self.buffers["running_var"]

    def after_forward(self, cache) -> None:
        if self.training and self.track_running_stats:
            fold_batch_stats(self, *self.batch_stats(cache))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")
