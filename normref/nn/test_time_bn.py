"""Test-time BatchNorm calibration layers (α-BN, TTN-style mixing). Math: :mod:`normref.ops.test_time_bn`."""

from __future__ import annotations

import numpy as np

from .._moments import mean_var
from .._validate import as_array, check_positive_float, check_positive_int
from ..ops.test_time_bn import check_w_test
from ._norm_base import NormLayer, check_channels, init_affine


class AlphaBatchNorm(NormLayer):
    """BatchNorm whose statistics mix the source (running) and the test-batch statistics.

    ``mean = w_test·mu_test + (1 − w_test)·running_mean`` and likewise for the variance, plus
    ``w_test(1 − w_test)(mu_test − running_mean)²`` with ``mixture_variance=True`` (TTN). ``w_test`` is always the
    weight of the **test** batch: α-BN's α (You et al. 2021, weight on the source) is ``1 − w_test``; robusta's
    ``AlphaBatchNorm(alpha)`` and TTN's α are ``w_test``. ``w_test = 1`` is BatchNorm in training mode and
    ``w_test = 0`` BatchNorm in evaluation mode.

    A test-time layer: ``train()`` and ``eval()`` do the same thing, and the source statistics (the buffers
    ``running_mean``, ``running_var``) are never updated. Build it from a trained layer with :meth:`from_batch_norm`.

    Args:
        num_features: ``C``.
        w_test: weight of the test statistics in [0, 1], scalar or ``(C,)`` (per channel, as TTN). Default 0.1
            (robusta's default; no α-BN paper default was found).
        eps: added to the mixed variance.
        affine: learn ``gamma`` (init 1) and ``beta`` (init 0).
        mixture_variance: add the TTN mixture term.
        unbiased: use the unbiased test-batch variance (as robusta); default biased.
        stats_grad: ``True``: exact gradient through the test statistics; ``False``: stop-gradient (robusta).
        dtype: of parameters and buffers.

    Examples:
        >>> from normref.nn import BatchNorm
        >>> rng = np.random.default_rng(0)
        >>> bn = BatchNorm(3)
        >>> for _ in range(20):
        ...     _ = bn(rng.normal(0.0, 1.0, size=(64, 3)))
        >>> layer = AlphaBatchNorm.from_batch_norm(bn, w_test=1.0).eval()
        >>> y = layer(rng.normal(4.0, 3.0, size=(64, 3)))  # shifted test data: w_test = 1 recenters it
        >>> bool(np.allclose(y.mean(axis=0), 0))
        True
    """

    op = "alpha_batch_norm"

    def __init__(self, num_features, w_test=0.1, eps=1e-5, affine=True, *, mixture_variance=False, unbiased=False,
                 stats_grad=True, backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        self.num_features = check_positive_int(num_features, "num_features")
        self.w_test = check_w_test(w_test, self.num_features)
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.affine = bool(affine)
        self.mixture_variance = bool(mixture_variance)
        self.unbiased = bool(unbiased)
        self.stats_grad = bool(stats_grad)
        self.dtype = np.dtype(dtype)
        self.pinned_stats = None
        init_affine(self, (self.num_features,), gamma=self.affine, beta=self.affine, dtype=self.dtype)
        self.buffers.update(running_mean=np.zeros(self.num_features, self.dtype),
                            running_var=np.ones(self.num_features, self.dtype))

    @classmethod
    def from_batch_norm(cls, bn, w_test=0.1, **kwargs) -> "AlphaBatchNorm":
        """A calibration layer with ``bn``'s affine, eps and running statistics (copied) as the source statistics."""
        if "running_mean" not in getattr(bn, "buffers", {}):
            raise ValueError("from_batch_norm needs a BatchNorm with track_running_stats=True (its running "
                             "statistics are the source statistics)")
        layer = cls(bn.num_features, w_test, kwargs.pop("eps", bn.eps), bn.affine, dtype=bn.dtype,
                    backend=kwargs.pop("backend", bn.backend), **kwargs)
        for name in ("gamma", "beta"):
            if name in bn.params:
                layer.params[name] = np.array(bn.params[name], copy=True)
        for name in ("running_mean", "running_var"):
            layer.buffers[name] = np.array(bn.buffers[name], copy=True)
        return layer

    def pin_test_stats(self, x):
        """Compute the test statistics of ``x`` and use them, as constants, in every later forward.

        This calibrates on one batch and then normalizes other inputs (even single samples) with the same mix; the
        gradient then never flows through the statistics. ``unpin_test_stats()`` returns to per-batch statistics.
        Returns ``(mean (C,), var (C,))``.
        """
        x = as_array(x, "x")
        check_channels(x, self.num_features)
        axes = (0,) + tuple(range(2, x.ndim))
        mean, var = mean_var(x, axes)
        count = x.size // self.num_features
        if self.unbiased:
            var = var * (count / (count - 1))
        self.pinned_stats = (mean.reshape(self.num_features), var.reshape(self.num_features))
        return self.pinned_stats

    def unpin_test_stats(self) -> None:
        self.pinned_stats = None

    def given_stats(self):
        return self.pinned_stats

    def op_hyper(self) -> dict:
        return {"source_stats": (self.buffers["running_mean"], self.buffers["running_var"]), "w_test": self.w_test,
                "eps": self.eps, "mixture_variance": self.mixture_variance, "unbiased": self.unbiased,
                "stats_grad": self.stats_grad}

    def check_input(self, x) -> None:
        check_channels(x, self.num_features)

    def extra_repr(self) -> str:
        w = self.w_test[0] if np.all(self.w_test == self.w_test[0]) else "per-channel"
        return (f"{self.num_features}, w_test={w}, eps={self.eps}, affine={self.affine}, "
                f"mixture_variance={self.mixture_variance}, unbiased={self.unbiased}, stats_grad={self.stats_grad}")
