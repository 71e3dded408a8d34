"""Batch-Channel Normalization on the Numba CPU backend: the BatchNorm and GroupNorm kernels composed, as ``"numba"``.

The math, shapes and the stop-gradient through given (EstBN or running) statistics are in
:mod:`normref.ops.batch_channel_norm`; this module is the same composition with the reference's ops replaced by
this backend's :mod:`.batch_norm` (column-wise template) and :mod:`.group_norm` (row-wise template). The per-group
affine of the GroupNorm stage is a per-channel affine with tied values; its gradient is the sum over the copies
(a fixed-order NumPy sum over ``C/G`` float64 values, so the result stays deterministic).

Passes over memory: each stage is a full forward (read, write) and backward (read two, write one), so BCN moves
twice the bytes of one normalization; fusing the two stages would need the GroupNorm statistics of ``y₁`` before
``y₁`` exists, i.e. a second sweep anyway. Complex input raises ``TypeError`` (the NumPy reference takes it).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..._registry import register
from ..._validate import cast_like, check_ndim, check_nonempty, check_param
from ...ops.group_norm import check_groups
from ._common import as_kernel_array
from .batch_norm import batch_norm_backward, batch_norm_forward
from .group_norm import group_norm_backward, group_norm_forward


class NumbaBCNCache(NamedTuple):
    """The two stages' :class:`._common.NumbaNormCache` and the group bookkeeping (as ``BCNCache``)."""

    bn: object
    gn: object
    num_groups: int
    has_group_gamma: bool
    has_group_beta: bool
    backend: str = "numba"


def batch_channel_norm_forward(x, gamma=None, beta=None, group_gamma=None, group_beta=None, *, num_groups, eps=1e-5,
                               stats=None):
    """Like :func:`normref.ops.batch_channel_norm.batch_channel_norm_forward`; the cache records ``"numba"``."""
    x = as_kernel_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    num_channels = x.shape[1]
    num_groups = check_groups(num_groups, num_channels)
    group_gamma = cast_like(x, check_param(group_gamma, "group_gamma", (num_groups,), allow_complex=False))
    group_beta = cast_like(x, check_param(group_beta, "group_beta", (num_groups,), allow_complex=False))
    y1, bn_cache = batch_norm_forward(x, gamma, beta, eps=eps, stats=stats)
    per_group = num_channels // num_groups
    tied_gamma = None if group_gamma is None else np.repeat(group_gamma, per_group)
    tied_beta = None if group_beta is None else np.repeat(group_beta, per_group)
    y, gn_cache = group_norm_forward(y1, tied_gamma, tied_beta, num_groups=num_groups, eps=eps)
    return y, NumbaBCNCache(bn_cache, gn_cache, num_groups, group_gamma is not None, group_beta is not None)


def batch_channel_norm_backward(dy, cache: NumbaBCNCache):
    """``(dx, dgamma, dbeta, dgroup_gamma, dgroup_beta)``, like the reference's backward."""
    dy1, dtied_gamma, dtied_beta = group_norm_backward(dy, cache.gn)
    groups = cache.num_groups
    dgroup_gamma = dtied_gamma.reshape(groups, -1).sum(axis=1) if cache.has_group_gamma else None
    dgroup_beta = dtied_beta.reshape(groups, -1).sum(axis=1) if cache.has_group_beta else None
    dx, dgamma, dbeta = batch_norm_backward(dy1, cache.bn)
    return dx, dgamma, dbeta, dgroup_gamma, dgroup_beta


register("batch_channel_norm", "numba", batch_channel_norm_forward, batch_channel_norm_backward)
