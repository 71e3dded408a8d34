"""PowerNorm layer: GroupScaling, warmup on batch statistics, the running quadratic mean, two backward passes.

Math, derivations and the paper/code decisions: :mod:`normref.ops.power_norm`.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._registry import get_impl
from .._validate import check_fraction, check_positive_float, check_positive_int
from ..ops.group_norm import check_groups
from ..ops.power_norm import check_count, update_running_phi
from ._norm_base import SurrogateNorm, check_channels, init_affine

BACKWARDS = ("exact", "approx")


def check_backward_choice(backward) -> str:
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be 'exact' (the true gradient of the forward) or 'approx' (the paper's "
                         f"surrogate), got {backward!r}")
    return backward


class PowerNorm(SurrogateNorm):
    """Power Normalization (Shen et al. 2020), the official ``MaskPowerNorm`` with an explicit backward choice.

    Input ``(N, C, *spatial)``, channel axis 1 (a ``(T, B, C)`` sequence is passed as ``x.transpose(1, 2, 0)``, a
    ``(B, T, C)`` one as ``x.transpose(0, 2, 1)``; transpose the output back). ``forward(x, pad_mask=None)``
    accepts a bool ``pad_mask`` of shape ``(N, *spatial)``, ``True`` at padding (excluded from the statistic).

    Training step ``t = iters + 1``: GroupScaling; divide by the batch quadratic mean while ``t <= warmup_iters``,
    by ``running_phi`` (before this step's update) afterwards; then update ``running_phi`` (cumulative average for
    ``t < warmup_iters``, then the EMA on every step). Eval divides by ``running_phi``.

    Args:
        num_features: ``C``.
        eps: added to the quadratic mean inside the square root (GroupScaling's own eps is fixed at 1e-5).
        alpha_fwd: weight of the **old** value in the running quadratic mean (0.9). Not PyTorch's ``momentum``,
            which weighs the new batch: ``alpha_fwd = 1 - momentum``.
        alpha_bkw: weight of the **old** value of the backward statistic ``ema_gz`` (0.9), used only by
            ``backward="approx"``.
        affine: learn ``gamma`` (init 1) and ``beta`` (init 0). The official layer ignores its ``affine`` flag and
            always applies the affine; ``affine=False`` here really removes it (an extension).
        warmup_iters: ``T_w``, training steps normalized by the batch statistic (10000 in the code; the repo's
            IWSLT script passes ``--warmup-updates``, 8000).
        group_num: GroupScaling's number of channel groups (the repo uses the number of attention heads).
        backward: required, ``"exact"`` (the true gradient of the forward computed, checked by finite
            differences) or ``"approx"`` (the paper's approximate backpropagation, which updates the ``ema_gz``
            buffer at every backward call). In eval the backward is always exact, as in the code (autograd).
        backend: the backend of the forward and of both backwards (the approximate one is the registered op
            ``"power_norm_approx"``, on "numpy" and "numba"; another backend raises ``NotImplementedError``).
        dtype: dtype of parameters and buffers.

    Buffers: ``running_phi`` ``(C,)`` init 1, ``ema_gz`` ``(C,)`` init 0 (the code's ``E``; the paper's
    ``nu = (1 - alpha_bkw) * E``), ``iters`` (int, steps taken).

    Examples:
        >>> pn = PowerNorm(4, backward="exact", warmup_iters=2)
        >>> rng = np.random.default_rng(0)
        >>> for _ in range(3):
        ...     y = pn(rng.normal(size=(8, 4, 5)))
        >>> pn.buffers["iters"], pn.buffers["running_phi"].shape
        (3, (4,))
    """

    op = "power_norm"
    approx_op = "power_norm_approx"  # the surrogate, looked up for the backend the forward ran on

    def __init__(self, num_features, eps=1e-5, alpha_fwd=0.9, alpha_bkw=0.9, affine=True, warmup_iters=10000,
                 group_num=1, *, backward, backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        self.num_features = check_positive_int(num_features, "num_features")
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.alpha_fwd = check_fraction(alpha_fwd, "alpha_fwd")
        self.alpha_bkw = check_fraction(alpha_bkw, "alpha_bkw")
        self.affine = bool(affine)
        self.warmup_iters = check_count(warmup_iters, "warmup_iters")
        self.group_num = check_groups(group_num, self.num_features)
        self.backward_kind = check_backward_choice(backward)
        self.dtype = np.dtype(dtype)
        init_affine(self, (self.num_features,), gamma=self.affine, beta=self.affine, dtype=self.dtype)
        self.reset_running_stats()
        self._cache_training = False

    def reset_running_stats(self) -> None:
        self.buffers.update(running_phi=np.ones(self.num_features, self.dtype),
                            ema_gz=np.zeros(self.num_features, self.dtype), iters=0)

    def __call__(self, x, pad_mask=None):
        return self.forward(x, pad_mask=pad_mask)

    def forward(self, x, pad_mask=None):
        check_channels(x, self.num_features)
        hyper = {"eps": self.eps, "group_num": self.group_num, "pad_mask": pad_mask}
        if self.training:
            step = int(self.buffers["iters"]) + 1
            stats = None if step <= self.warmup_iters else (None, self.buffers["running_phi"])
            y, cache = F.forward(self.op, x, *self.op_params(), backend=self.backend, stats=stats, **hyper)
            phi = update_running_phi(self.buffers["running_phi"], cache.batch_q, step=step,
                                     alpha_fwd=self.alpha_fwd, warmup_iters=self.warmup_iters)
            self.buffers.update(running_phi=phi, iters=step)
        else:
            y, cache = F.forward(self.op, x, *self.op_params(), backend=self.backend,
                                 stats=(None, self.buffers["running_phi"]), **hyper)
        self.cache, self._cache_training = cache, self.training
        return y

    def approx_backward(self, dy):
        rule = get_impl(self.approx_op, self.cache.backend).backward
        dx, dgamma, dbeta, ema_gz = rule(dy, self.cache, self.buffers["ema_gz"], alpha_bkw=self.alpha_bkw)
        self.buffers["ema_gz"] = ema_gz  # state updated by the backward, kept with the other buffers
        return dx, (dgamma, dbeta)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
                f"affine={self.affine}, warmup_iters={self.warmup_iters}, group_num={self.group_num}, "
                f"backward={self.backward_kind!r}")
