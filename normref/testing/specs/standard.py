"""Specs of the five standard normalizers: BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm."""

from __future__ import annotations

import numpy as np

from ... import nn
from . import LayerSpec


def _channel_ids(shape):
    """BatchNorm: one set per channel (axis 1)."""
    ids = np.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    return np.broadcast_to(ids, shape)


def _instance_ids(shape):
    """InstanceNorm: one set per (sample, channel)."""
    ids = np.arange(shape[0] * shape[1]).reshape(shape[:2] + (1,) * (len(shape) - 2))
    return np.broadcast_to(ids, shape)


def _trailing_ids(k):
    """LayerNorm/RMSNorm over the trailing k dims: one set per leading index."""
    def ids(shape):
        lead = shape[:len(shape) - k]
        return np.broadcast_to(np.arange(int(np.prod(lead))).reshape(lead + (1,) * k), shape)
    return ids


def _group_ids(num_groups):
    def ids(shape):
        n, c = shape[:2]
        per_channel = (np.arange(n)[:, None] * num_groups + np.arange(c)[None, :] // (c // num_groups))
        return np.broadcast_to(per_channel.reshape((n, c) + (1,) * (len(shape) - 2)), shape)
    return ids


SPECS = [
    LayerSpec(
        name="BatchNorm", op="batch_norm",
        make=lambda shape, affine: nn.BatchNorm(shape[1], affine=affine),
        # N = 2 with odd channel and spatial sizes. Not (2, C): with two values per channel x̂ = ±(1+eps/var)^-1/2
        # whatever x is, so the true dx is O(eps) and a norm-relative error measures only cancellation noise.
        shapes=((4, 3, 5), (2, 3, 3), (2, 3, 3, 5), (3, 2, 2, 3, 2), (5, 3)),
        set_ids=_channel_ids, citation="Ioffe & Szegedy 2015",
    ),
    LayerSpec(
        name="LayerNorm", op="layer_norm",
        make=lambda shape, affine: nn.LayerNorm(shape[-2:], elementwise_affine=affine),
        shapes=((3, 4, 5), (2, 3, 7, 3), (5, 1, 9)),
        set_ids=_trailing_ids(2), citation="Ba, Kiros & Hinton 2016",
    ),
    LayerSpec(
        name="GroupNorm", op="group_norm",
        make=lambda shape, affine: nn.GroupNorm(2, shape[1], affine=affine),
        shapes=((3, 6, 5), (2, 6), (1, 6, 3, 3)),  # at least 3 values per group (see BatchNorm)
        set_ids=_group_ids(2), citation="Wu & He 2018",
    ),
    LayerSpec(
        name="InstanceNorm", op="instance_norm",
        # tracking on, so that eval normalizes with running statistics (the PyTorch default, off, is tested too)
        make=lambda shape, affine: nn.InstanceNorm(shape[1], affine=affine, track_running_stats=True),
        shapes=((3, 4, 7), (2, 3, 3, 4), (1, 2, 5)),
        set_ids=_instance_ids, citation="Ulyanov, Vedaldi & Lempitsky 2016",
    ),
    LayerSpec(
        name="RMSNorm", op="rms_norm",
        make=lambda shape, affine: nn.RMSNorm(shape[-1], elementwise_affine=affine),
        shapes=((4, 3, 7), (5, 9), (2, 2, 2, 3)),
        set_ids=_trailing_ids(1), centered=False, citation="Zhang & Sennrich 2019",
    ),
]
