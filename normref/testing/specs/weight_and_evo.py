"""Specs of the weight reparameterizations (WS, scaled WS, WeightNorm) and of BCN, EvoNorm-B0/S0 and DyT.

For the weight layers the checked "input" is the weight itself: ``forward(w) -> ŵ``, ``backward(dŵ) -> dw``, and
the shapes below are weight shapes ``(O, C_in, kh, kw)`` or ``(O, I)``.
"""

from __future__ import annotations

import numpy as np

from ... import nn
from . import LayerSpec


def _row_ids(shape):
    """WS: one standardized set per output unit (axis 0)."""
    rows = np.arange(shape[0]).reshape((shape[0],) + (1,) * (len(shape) - 1))
    return np.broadcast_to(rows, shape)


def _estimating_bcn(shape, affine):
    """BCN with EstBN statistics, frozen: ``moving_speed=0`` and non-trivial estimates.

    EstBN's backward is stop-gradient, so finite differences can only hold it to the *frozen-statistics* function.
    With ``moving_speed=0`` the training forward is exactly that function (the estimates do not move with ``x``),
    at estimates that are not the initial 0/1. ``tests/test_bcn.py`` checks ``moving_speed > 0``: the update rule,
    and the backward against finite differences of the frozen function built from the cache.
    """
    layer = nn.BatchChannelNorm(shape[1], num_groups=2, affine=affine, estimate=True, moving_speed=0.0)
    rng = np.random.default_rng(11)
    layer.buffers["running_mean"] = 12.0 + rng.standard_normal(shape[1])
    layer.buffers["running_var"] = 25.0 * rng.uniform(0.5, 1.5, shape[1])
    return layer


def _b0_input(rng, shape):
    """EvoNorm-B0's input: zero-mean, so that the sign of ``v·x`` varies within a channel and both branches of the
    max are active (with the default ``5·randn + 12`` input a whole channel sits on one branch). Channel 0 is scaled
    down to vary the ratio of batch to instance std. Ties ``R = L`` have probability zero for continuous random input,
    and a central-difference probe moves ``x`` by ``1e-6`` relative, so crossing one is a ~1e-6 event per element;
    ``tests/test_evonorm.py`` asserts the margin for these inputs.
    """
    x = rng.standard_normal(shape)
    x[:, 0] *= 0.2
    return x


SPECS = [
    LayerSpec(
        name="WeightStandardization", op="weight_standardization",
        # plain WS has no affine (the paper: the following norm layer rescales); the optional gain is checked in the
        # "-official" spec, which runs the same code path
        make=lambda shape, affine: nn.WeightStandardization(shape[0]),
        shapes=((4, 3, 3, 3), (5, 7), (3, 2, 5)), affine=(False,),
        set_ids=_row_ids, citation="Qiao, Wang, Liu, Shen & Yuille 2019 (arXiv:1903.10520)",
    ),
    LayerSpec(
        name="WeightStandardization-official", op="weight_standardization",
        # the authors' PyTorch code: unbiased std, eps outside the square root
        make=lambda shape, affine: nn.WeightStandardization(shape[0], gain=affine, unbiased=True, eps_mode="outside"),
        shapes=((4, 3, 3, 3), (5, 7)),
        citation="Qiao et al. 2019, official code (joe-siyuan-qiao/pytorch-classification)",
    ),
    LayerSpec(
        name="ScaledWeightStandardization", op="scaled_weight_standardization",
        # DeepMind's floor form; 5·randn weights give N·var ≈ 25·N >> 1e-4, so no probe touches the floor's kink
        make=lambda shape, affine: nn.ScaledWeightStandardization(shape[0], gain=affine,
                                                                  gamma=nn.NF_GAMMA["relu"]),
        shapes=((4, 3, 3, 3), (5, 7), (3, 2, 5)),
        citation="Brock, De & Smith 2021 (arXiv:2101.08692), DeepMind nfnets code",
    ),
    LayerSpec(
        name="ScaledWeightStandardization-timm", op="scaled_weight_standardization",
        make=lambda shape, affine: nn.ScaledWeightStandardization(shape[0], gain=affine, eps_mode="inside"),
        shapes=((4, 3, 3, 3), (5, 7)),
        citation="Brock, De & Smith 2021; timm ScaledStdConv2d",
    ),
    LayerSpec(
        name="WeightNorm", op="weight_norm",
        make=lambda shape, affine: nn.WeightNorm(shape[0], affine=affine),
        shapes=((4, 3, 3, 3), (5, 7), (3, 2, 5)),
        make_input=lambda rng, shape: rng.standard_normal(shape),
        citation="Salimans & Kingma 2016 (arXiv:1602.07868)",
    ),
    LayerSpec(
        name="BatchChannelNorm", op="batch_channel_norm",
        make=lambda shape, affine: nn.BatchChannelNorm(shape[1], num_groups=2, affine=affine),
        # at least 3 values per BN channel and per GN group (see the BatchNorm spec for why not 2)
        # with 2 values per group x̂ = ±(1+eps/var)^-1/2 whatever x is, and dx is only cancellation noise
        shapes=((3, 4, 5), (2, 6, 3, 2), (1, 4, 6), (5, 6)),
        citation="Qiao, Wang, Liu, Shen & Yuille 2019 (batch statistics)",
    ),
    LayerSpec(
        name="BatchChannelNorm-est", op="batch_channel_norm",
        make=_estimating_bcn, backward_kind="stop-gradient",
        shapes=((2, 4, 5), (1, 4, 3, 3), (3, 6)),
        citation="Qiao et al. 2019, EstBN estimated statistics (stop-gradient; checked frozen)",
    ),
    LayerSpec(
        name="EvoNormB0", op="evonorm_b0",
        make=lambda shape, affine: nn.EvoNormB0(shape[1], affine=affine),
        shapes=((4, 3, 5), (2, 3, 3, 4), (3, 2, 6)),
        make_input=_b0_input,
        complex_safe=True, citation="Liu, Brock, Simonyan & Le 2020 (arXiv:2004.02967)",
    ),
    LayerSpec(
        name="EvoNormS0", op="evonorm_s0",
        make=lambda shape, affine: nn.EvoNormS0(shape[1], num_groups=2, affine=affine),
        shapes=((3, 4, 5), (2, 6, 3, 2), (1, 4, 3)),
        make_input=lambda rng, shape: 2.0 * rng.standard_normal(shape) + 0.5,
        citation="Liu, Brock, Simonyan & Le 2020 (arXiv:2004.02967)",
    ),
    LayerSpec(
        name="DyT", op="dyt",
        make=lambda shape, affine: nn.DyT(shape[-1], elementwise_affine=affine),
        shapes=((3, 4, 5), (6, 3), (2, 2, 3, 4)),
        make_input=lambda rng, shape: 1.5 * rng.standard_normal(shape),
        citation="Zhu, Chen, He, LeCun & Liu 2025 (arXiv:2503.10622)",
    ),
]
