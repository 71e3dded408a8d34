"""Specs of the layers that ship a surrogate gradient: PowerNorm and Unified Normalization.

Each layer is configured with ``backward="exact"`` here, so that finite differences hold its backward to the true
gradient of the forward it computes; the surrogates (``backward="approx"``) are tested against transcriptions of
their published rules in ``tests/test_power_norm.py`` and ``tests/test_unified_norm.py``. Both layers change their
forward with the step count, so each gets one spec in warmup (batch statistics, where the gradient flows through the
statistic) and one past it (running statistic for PowerNorm; the window's geometric mean, with the outlier filter on,
for UN). ``LayerSpec.build`` runs ``warmup_steps`` training forwards before the check, which is what moves the
second spec of each pair past ``warmup_iters``. Names: ``PowerNorm-post`` = PowerNorm past warmup (divides by
``running_phi``); ``UnifiedNorm-GM`` = UN past warmup (divides by the geometric mean of its window).
"""

from __future__ import annotations

import numpy as np

from ... import nn
from . import LayerSpec


def _channel_ids(shape):
    """One normalized set per channel (axis 1), as BatchNorm."""
    ids = np.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    return np.broadcast_to(ids, shape)


# C is even and > 2 in every shape, so that GroupScaling's 2 groups hold at least 2 channels each (with one channel
# per group GroupScaling is x/sqrt(x²+1e-5) ≈ sign(x), whose gradient is ~1e-5/x³: nothing left to check).
PN_SHAPES = ((4, 4, 5), (6, 4), (2, 6, 3, 2))
UN_SHAPES = ((4, 3, 5), (6, 3), (2, 3, 2, 3))

SPECS = [
    LayerSpec(
        name="PowerNorm", op="power_norm",
        make=lambda shape, affine: nn.PowerNorm(shape[1], group_num=2, affine=affine, backward="exact"),
        # set_ids=None: GroupScaling divides each position by an RMS over several channels first, so the output
        # standardizes the group-scaled input per channel, not x itself (scaling one channel of x changes others)
        shapes=PN_SHAPES, centered=False,
        citation="Shen, Yao, Gholami, Mahoney & Keutzer 2020 (warmup: batch quadratic mean)",
    ),
    LayerSpec(
        name="PowerNorm-post", op="power_norm",
        # warmup_iters=2 and two build steps: the checked forward is step 3, normalized by running_phi
        make=lambda shape, affine: nn.PowerNorm(shape[1], group_num=2, affine=affine, warmup_iters=2,
                                                backward="exact"),
        shapes=PN_SHAPES, warmup_steps=2, centered=False,
        citation="Shen, Yao, Gholami, Mahoney & Keutzer 2020 (after warmup: running quadratic mean)",
    ),
    LayerSpec(
        name="UnifiedNorm", op="unified_norm",
        # window 1: every step is "skipped", r = 1, the configuration where the paper's rule is also exact
        make=lambda shape, affine: nn.UnifiedNorm(shape[1], window_size=1, affine=affine, backward="exact"),
        shapes=UN_SHAPES, set_ids=_channel_ids, centered=False,
        citation="Yang, Xie, Jiang, Zhao, Zhang & Huang 2022 (window 1: batch quadratic mean)",
    ),
    LayerSpec(
        name="UnifiedNorm-GM", op="unified_norm",
        # window 2, warmup_iters=2, three build steps: the checked step 4 divides by the geometric mean of the
        # window. The outlier filter is off: on this offset data (every channel's q near 169, so rho is tiny) it
        # fires on ordinary steps and the check would fall back to the batch statistic; outlier steps are
        # FD-checked in tests/test_unified_norm.py with data built to trigger the filter.
        make=lambda shape, affine: nn.UnifiedNorm(shape[1], window_size=2, warmup_iters=2, compensation_floor=0,
                                                  affine=affine, backward="exact"),
        shapes=UN_SHAPES, warmup_steps=3, centered=False,
        citation="Yang, Xie, Jiang, Zhao, Zhang & Huang 2022 (after warmup: fluctuation smoothing)",
    ),
]
