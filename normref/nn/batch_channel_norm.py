"""The Batch-Channel Normalization layer. Math: :mod:`normref.ops.batch_channel_norm`."""

from __future__ import annotations

import numpy as np

from .._validate import check_fraction, check_positive_float, check_positive_int
from ..ops.batch_channel_norm import estbn_update
from ..ops.batch_norm import batch_norm_batch_stats
from ..ops.group_norm import check_groups
from ..ops.running_stats import initial_running_stats
from ._norm_base import NormLayer, check_channels, fold_batch_stats, init_affine


class BatchChannelNorm(NormLayer):
    """Batch-Channel Normalization (Qiao et al.): BatchNorm with a per-channel affine, then GroupNorm with a
    per-group affine.

    Two ways to get the BN stage's statistics (the official ``BCNorm(..., estimate=...)``):

    * ``estimate=False`` (default): ``BatchNorm2d`` semantics. Training uses batch statistics (exact gradient) and
      updates ``running_mean``/``running_var`` (PyTorch EMA, ``momentum`` = weight of the new batch, unbiased
      variance); eval uses them.
    * ``estimate=True``: the micro-batch variant (official ``EstBN``). Each training forward first moves
      ``running_mean``/``running_var`` toward the batch by ``moving_speed`` (second moment around the old mean), then
      normalizes with the updated estimates; eval uses them. The backward holds them constant (stop-gradient).

    Args:
        num_channels: ``C``.
        num_groups: ``G`` (default 32 as in the ImageNet models), dividing ``C``.
        eps: both stages' eps.
        momentum: the BN running-statistics momentum (``estimate=False``), or ``None`` for a cumulative average.
        affine: learn ``gamma``, ``beta`` ``(C,)`` (init 1, 0) and ``group_gamma``, ``group_beta`` ``(G,)``
            (init 1, 0).
        estimate: use EstBN's estimated statistics.
        moving_speed: EstBN's ``r``. The official buffer starts at 0 (frozen estimates) and no public script sets
            it; 0.01 is this library's choice.
        track_running_stats: keep running statistics (``estimate=False`` only; EstBN always keeps its estimates).
    """

    op = "batch_channel_norm"
    param_names = ("gamma", "beta", "group_gamma", "group_beta")

    def __init__(self, num_channels, num_groups=32, eps=1e-5, momentum=0.1, affine=True, *, estimate=False,
                 moving_speed=0.01, track_running_stats=True, backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        self.num_channels = check_positive_int(num_channels, "num_channels")
        self.num_groups = check_groups(num_groups, self.num_channels)
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.momentum = None if momentum is None else check_fraction(momentum, "momentum")
        self.moving_speed = check_fraction(moving_speed, "moving_speed")
        self.estimate = bool(estimate)
        self.track_running_stats = bool(track_running_stats) or self.estimate
        self.affine = bool(affine)
        self.dtype = np.dtype(dtype)
        init_affine(self, (self.num_channels,), gamma=self.affine, beta=self.affine, dtype=self.dtype)
        if self.affine:
            self.add_param("group_gamma", np.ones(self.num_groups, self.dtype))
            self.add_param("group_beta", np.zeros(self.num_groups, self.dtype))
        if self.track_running_stats:
            mean, var, tracked = initial_running_stats(self.num_channels, self.dtype)
            self.buffers.update(running_mean=mean, running_var=var, num_batches_tracked=tracked)

    def check_input(self, x) -> None:
        check_channels(x, self.num_channels, "num_channels")

    def op_hyper(self) -> dict:
        return {"num_groups": self.num_groups, "eps": self.eps}

    def given_stats(self):
        if self.estimate or (not self.training and self.track_running_stats):
            return self.buffers["running_mean"], self.buffers["running_var"]
        return None

    def forward(self, x):
        if self.estimate and self.training:
            self.check_input(x)
            mean, var = estbn_update(self.buffers["running_mean"], self.buffers["running_var"], x,
                                     moving_speed=self.moving_speed)
            self.buffers.update(running_mean=mean, running_var=var,
                                num_batches_tracked=self.buffers["num_batches_tracked"] + 1)
        return super().forward(x)

    def after_forward(self, cache) -> None:
        if self.training and self.track_running_stats and not self.estimate:
            fold_batch_stats(self, *batch_norm_batch_stats(cache.bn))

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, affine={self.affine}, "
                f"estimate={self.estimate}, moving_speed={self.moving_speed}")
