"""Unified Normalization layer: windowed, outlier-filtered quadratic-mean normalization with two backward passes.

Math, derivations and the paper/code decisions: :mod:`normref.ops.unified_norm`.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import functional as F
from .._registry import get_impl
from .._validate import check_fraction, check_positive_float, check_positive_int
from ..ops.power_norm import check_count
from ..ops.unified_norm import (UnifiedNormGradState, UnifiedNormState, initial_grad_state, initial_state,
                                update_state)
from ._norm_base import SurrogateNorm, check_channels, init_affine
from .power_norm import check_backward_choice


def check_window(window_size) -> tuple[int, int]:
    """``window_size``: an int (both windows) or a pair ``(W_f, W_b)`` of positive ints."""
    if isinstance(window_size, numbers.Integral) and not isinstance(window_size, bool):
        window_size = (window_size, window_size)
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError(f"window_size must be an int or a pair (forward, backward) of ints, got {window_size!r}")
    return (check_positive_int(window_size[0], "window_size[0]"), check_positive_int(window_size[1],
                                                                                      "window_size[1]"))


class UnifiedNorm(SurrogateNorm):
    """Unified Normalization (Yang et al. 2022), the official ``UN1d`` with an explicit backward choice.

    Input ``(N, C, *spatial)``, channel axis 1 (the code's ``(B, T, C)`` is passed as ``x.transpose(0, 2, 1)``);
    ``forward(x, pad_mask=None)`` accepts a bool ``pad_mask`` ``(N, *spatial)``, ``True`` = padding.

    Args:
        num_features: ``C`` (the code calls it ``channels``).
        window_size: ``W`` for both windows, or ``(W_f, W_b)`` (4).
        warmup_iters: ``T_w`` (4000), at least ``W_f`` so that the window is full before it is used.
        outlier_filtration: the adaptive outlier filter (the repo: False for NLP, True for vision).
        eps: added inside the square root.
        momentum: weight of the **old** value in ``running_var`` and ``ema_gz`` (0.9). Not PyTorch's BatchNorm
            ``momentum`` (weight of the new batch): here ``momentum_torch = 1 - momentum``.
        affine: learn ``gamma`` and ``beta`` (the official layer always has them; ``False`` is an extension).
        compensation_floor: gradient compensation ``r`` stays 1 while ``t <= max(compensation_floor, T_w)``;
            the code hard-codes 1000.
        backward: required, ``"exact"`` (the true gradient of the forward as computed, checked by finite
            differences) or ``"approx"`` (the code's rule, which updates ``ema_gz`` and ``buffer_gz`` at every
            backward call). In eval the backward is exact, as in the code (autograd).
        backend: the backend of the forward and of both backwards (the approximate one is the registered op
            ``"unified_norm_approx"``, on "numpy" and "numba"; another backend raises ``NotImplementedError``).

    Buffers (the code's names): ``running_var`` ``(C,)`` 1, ``ema_gz`` ``(C,)`` 0, ``iters`` 0, ``buffer_x2``
    ``(W_f, C)`` 0, ``buffer_gz`` ``(W_b, C)`` 0, ``skip_counter`` 0. The repo advises resetting ``iters`` to 0
    after loading pretrained weights, so that fine-tuning warms up again.

    Examples:
        >>> un = UnifiedNorm(3, window_size=2, warmup_iters=2, backward="approx")
        >>> rng = np.random.default_rng(0)
        >>> for _ in range(4):
        ...     y = un(rng.normal(size=(8, 3)))
        ...     dx = un.backward(rng.normal(size=y.shape))
        >>> un.buffers["iters"], un.buffers["buffer_gz"].shape
        (4, (2, 3))
    """

    op = "unified_norm"
    approx_op = "unified_norm_approx"  # the surrogate, looked up for the backend the forward ran on

    def __init__(self, num_features, window_size=4, warmup_iters=4000, outlier_filtration=False, eps=1e-5,
                 momentum=0.9, affine=True, compensation_floor=1000, *, backward, backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        self.num_features = check_positive_int(num_features, "num_features")
        self.window_size = check_window(window_size)
        self.warmup_iters = check_count(warmup_iters, "warmup_iters")
        if self.warmup_iters < self.window_size[0]:
            raise ValueError(f"warmup_iters must be >= the forward window size {self.window_size[0]} (the window "
                             f"must be full before it is smoothed or filtered), got {self.warmup_iters}")
        self.outlier_filtration = bool(outlier_filtration)
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.momentum = check_fraction(momentum, "momentum")
        self.affine = bool(affine)
        self.compensation_floor = check_count(compensation_floor, "compensation_floor")
        self.backward_kind = check_backward_choice(backward)
        self.dtype = np.dtype(dtype)
        init_affine(self, (self.num_features,), gamma=self.affine, beta=self.affine, dtype=self.dtype)
        self.reset_running_stats()
        self._cache_training = False

    def reset_running_stats(self) -> None:
        fwd = initial_state(self.num_features, self.window_size[0], self.dtype)
        bwd = initial_grad_state(self.num_features, self.window_size[1], self.dtype)
        self.buffers.update(fwd._asdict())
        self.buffers.update(bwd._asdict())

    def __call__(self, x, pad_mask=None):
        return self.forward(x, pad_mask=pad_mask)

    def forward(self, x, pad_mask=None):
        check_channels(x, self.num_features)
        hyper = {"eps": self.eps, "warmup_iters": self.warmup_iters, "outlier_filtration": self.outlier_filtration,
                 "compensation_floor": self.compensation_floor, "pad_mask": pad_mask}
        if self.training:
            state = UnifiedNormState(**{k: self.buffers[k] for k in UnifiedNormState._fields})
            y, cache = F.forward(self.op, x, *self.op_params(), backend=self.backend, state=state, **hyper)
            self.buffers.update(update_state(state, cache, momentum=self.momentum)._asdict())
        else:
            y, cache = F.forward(self.op, x, *self.op_params(), backend=self.backend,
                                 stats=(None, self.buffers["running_var"]), **hyper)
        self.cache, self._cache_training = cache, self.training
        return y

    def approx_backward(self, dy):
        grad_state = UnifiedNormGradState(self.buffers["ema_gz"], self.buffers["buffer_gz"])
        rule = get_impl(self.approx_op, self.cache.backend).backward
        dx, dgamma, dbeta, new = rule(dy, self.cache, grad_state, momentum=self.momentum)
        self.buffers.update(new._asdict())  # state updated by the backward, kept with the other buffers
        return dx, (dgamma, dbeta)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, window_size={self.window_size}, warmup_iters={self.warmup_iters}, "
                f"outlier_filtration={self.outlier_filtration}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, backward={self.backward_kind!r}")
