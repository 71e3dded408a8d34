r"""Running statistics: the pure update that BatchNorm and InstanceNorm apply after a training forward.

PyTorch semantics, written out (``momentum`` is the weight of the *new* batch, unlike an optimizer's momentum):

.. math::

    t \leftarrow t + 1,\qquad
    w = \begin{cases} \text{momentum} & \text{momentum given} \\ 1/t & \text{momentum = None (cumulative average)}
    \end{cases}

.. math::

    \bar\mu \leftarrow (1-w)\,\bar\mu + w\,\mu_B,\qquad
    \bar\sigma^2 \leftarrow (1-w)\,\bar\sigma^2 + w\,\sigma^2_B\,\frac{m}{m-1}

where :math:`\mu_B, \sigma^2_B` are the batch mean and *biased* variance over :math:`m` values. The layer normalizes
with the biased variance but stores the unbiased one (``unbiased=False`` stores the biased one, as Flax and the TF
EvoNorm reference do). Nothing is mutated: new arrays are returned.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import check_fraction


class RunningStats(NamedTuple):
    """The buffers of a layer that tracks running statistics."""

    running_mean: np.ndarray  # (C,)
    running_var: np.ndarray  # (C,)
    num_batches_tracked: int


def update_running_stats(running: RunningStats, batch_mean, batch_var, count, *, momentum=0.1,
                         unbiased=True) -> RunningStats:
    """Return the buffers after one training batch.

    Args:
        running: the current buffers.
        batch_mean, batch_var: ``(C,)`` the batch mean and *biased* variance the forward normalized with.
        count: ``m``, the number of values behind each statistic (``N·prod(spatial)`` for BatchNorm).
        momentum: weight of the new batch in ``[0, 1]``, or ``None`` for the cumulative average.
        unbiased: store ``var·m/(m-1)`` (PyTorch) rather than the biased ``var``.

    Returns:
        A new :class:`RunningStats`; the inputs are not modified.
    """
    tracked = int(running.num_batches_tracked) + 1
    weight = 1.0 / tracked if momentum is None else check_fraction(momentum, "momentum")
    if unbiased:
        if count < 2:
            raise ValueError(f"count must be at least 2 for an unbiased running variance, got {count}")
        batch_var = batch_var * (count / (count - 1))
    # Buffers keep their dtype; complex batch statistics (a complex-step probe) are kept complex, not truncated.
    dtype = np.result_type(running.running_mean.dtype, batch_mean.dtype) if np.iscomplexobj(batch_mean) \
        else running.running_mean.dtype
    new_mean = ((1.0 - weight) * running.running_mean + weight * batch_mean).astype(dtype, copy=False)
    new_var = ((1.0 - weight) * running.running_var + weight * batch_var).astype(dtype, copy=False)
    return RunningStats(new_mean, new_var, tracked)


def initial_running_stats(num_features: int, dtype=np.float64) -> RunningStats:
    """PyTorch's initial buffers: mean 0, variance 1, no batch tracked."""
    return RunningStats(np.zeros(num_features, dtype), np.ones(num_features, dtype), 0)
