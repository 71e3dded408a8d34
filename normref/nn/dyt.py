"""The Dynamic Tanh layer. Math: :mod:`normref.ops.dyt`."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._validate import check_positive_int
from ._norm_base import NormLayer, init_affine


class DyT(NormLayer):
    """Dynamic Tanh (Zhu et al. 2025): ``y = γ·tanh(α·x) + β``, a statistics-free replacement for LayerNorm.

    The official ``DynamicTanh(normalized_shape, channels_last, alpha_init_value=0.5)``: ``alpha`` is one learnable
    scalar (shape ``(1,)``), ``gamma``/``beta`` are per channel ``(C,)``. ``channels_last=True`` puts the channel on
    the last axis (replacing ``LayerNorm(C)`` in a transformer); ``False`` on axis 1 (NCHW). Train and eval are
    the same.

    Args:
        normalized_shape: ``C``, an int.
        alpha_init_value: initial ``α`` (0.5 in the paper for ViT/ConvNeXt; its LLaMA runs use width-dependent
            values).
        channels_last: where the channel axis is.
        elementwise_affine: learn ``gamma`` (init 1) and ``beta`` (init 0).
        bias: with ``elementwise_affine``, learn ``beta`` (the paper's LLaMA variant has none).
    """

    op = "dyt"
    param_names = ("alpha", "gamma", "beta")

    def __init__(self, normalized_shape, alpha_init_value=0.5, channels_last=True, elementwise_affine=True,
                 bias=True, *, backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        self.normalized_shape = check_positive_int(normalized_shape, "normalized_shape")
        if isinstance(alpha_init_value, bool) or not isinstance(alpha_init_value, (int, float)):
            raise TypeError(f"alpha_init_value must be a real number, got {type(alpha_init_value).__name__}")
        self.channels_last = bool(channels_last)
        self.add_param("alpha", np.full(1, float(alpha_init_value), dtype))
        init_affine(self, (self.normalized_shape,), gamma=bool(elementwise_affine),
                    beta=bool(elementwise_affine) and bool(bias), dtype=dtype)

    def check_input(self, x) -> None:
        shape = getattr(x, "shape", None)
        axis = -1 if self.channels_last else 1
        if shape is not None and len(shape) >= (1 if self.channels_last else 2) \
                and shape[axis] != self.normalized_shape:
            raise ValueError(f"x has {shape[axis]} channels on axis {axis} (shape {tuple(shape)}) but the layer "
                             f"was built with normalized_shape={self.normalized_shape}")

    def forward(self, x):
        # dyt_forward has no statistics: bypass NormLayer's stats= keyword.
        self.check_input(x)
        y, self.cache = F.forward(self.op, x, *self.op_params(), backend=self.backend,
                                  channels_last=self.channels_last)
        return y

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, channels_last={self.channels_last}, alpha={float(self.params['alpha'][0])}"
