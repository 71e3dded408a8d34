"""Spec of :class:`~normref.nn.ws_conv.WSConv2d`, a convolution with a Weight-Standardized kernel.

The checked input is the activation ``x`` ``(N, C, H, W)``; the checked parameters are the *raw* weight (whose
gradient goes through the WS backward), the bias (``affine`` means ``bias``, as for ``Conv2d``) and, in the second
spec, WS's learnable gain. The layer's forward does not depend on the mode, so it is checked in ``train`` only.
"""

from __future__ import annotations

from ...nn.ws_conv import WSConv2d
from . import LayerSpec
from .blocks import normal_input

SPECS = [
    LayerSpec(
        name="WSConv2d", op="",  # two registered ops composed (conv2d after weight_standardization): numpy only
        make=lambda s, a: WSConv2d(s[1], 4, 3, padding=1, bias=a, rng=0),
        shapes=((2, 3, 5, 6), (1, 2, 4, 4)), modes=("train",), make_input=normal_input,
        citation="Qiao, Wang, Liu, Shen & Yuille 2019 (arXiv:1903.10520)",
    ),
    LayerSpec(
        name="WSConv2d-official", op="",
        # the authors' variant (unbiased std, eps outside), a learnable gain, stride 2 and a non-square kernel
        make=lambda s, a: WSConv2d(s[1], 3, (3, 2), stride=2, padding=(1, 0), bias=a, gain=True, unbiased=True,
                                   eps_mode="outside", rng=0),
        shapes=((2, 2, 5, 4),), modes=("train",), make_input=normal_input,
        citation="Qiao et al. 2019, official code (joe-siyuan-qiao/pytorch-classification)",
    ),
]
