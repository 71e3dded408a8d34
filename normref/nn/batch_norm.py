"""BatchNorm and InstanceNorm layers: the per-channel normalizers with running statistics. Math: ``normref.ops``."""

from __future__ import annotations

import numpy as np

from ..ops.batch_norm import batch_norm_batch_stats
from ..ops.instance_norm import instance_norm_batch_stats
from ._norm_base import TrackedNorm


class BatchNorm(TrackedNorm):
    """Batch Normalization over ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)`` input.

    PyTorch's ``BatchNorm1d/2d/3d`` in one class, same arguments and defaults. Training normalizes with the batch
    mean and biased variance per channel and updates ``running_mean`` and the *unbiased* ``running_var`` with the new
    batch weighted by ``momentum`` (``None``: cumulative average). Eval uses the running statistics when tracked.
    Math and derivation: :mod:`normref.ops.batch_norm`.

    Args:
        num_features: ``C``.
        eps: added to the variance inside the square root.
        momentum: weight of the new batch in the running statistics, or ``None`` for the cumulative average.
        affine: learn ``gamma`` (init 1) and ``beta`` (init 0), shape ``(C,)``.
        track_running_stats: keep ``running_mean``, ``running_var`` and ``num_batches_tracked``.
        backend: ``"numpy"``, ``"numba"``, ``"numba-fast"`` or ``"cuda"``; ``None`` resolves at each call (see
            ``use_backend``).
        dtype: dtype of the parameters and buffers (float64 by default; the output takes the input's dtype).

    Examples:
        >>> bn = BatchNorm(3)
        >>> y = bn(np.random.default_rng(0).normal(5.0, 2.0, size=(16, 3)))
        >>> bn.buffers["num_batches_tracked"], bool(abs(y.mean()) < 1e-12)
        (1, True)
    """

    op = "batch_norm"
    batch_stats = staticmethod(batch_norm_batch_stats)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 backend=None, dtype=np.float64):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, backend=backend, dtype=dtype)


class InstanceNorm(TrackedNorm):
    """Instance Normalization over ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)`` input.

    PyTorch's ``InstanceNorm1d/2d/3d``: note that ``affine`` and ``track_running_stats`` both default to False.
    With tracking, training updates the buffers from the batch averages of the per-instance mean and unbiased
    variance, and eval normalizes every instance with the running per-channel statistics.
    Math: :mod:`normref.ops.instance_norm`.

    Unlike PyTorch's InstanceNorm (which never counts batches and treats ``momentum=None`` as 0, freezing the
    buffers), ``num_batches_tracked`` counts the training batches and ``momentum=None`` is the cumulative average,
    as for :class:`BatchNorm`.
    """

    op = "instance_norm"
    batch_stats = staticmethod(instance_norm_batch_stats)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, *,
                 backend=None, dtype=np.float64):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, backend=backend, dtype=dtype)
