"""The Conv2d layer (PyTorch's ``nn.Conv2d`` without groups or dilation). Math: :mod:`normref.ops.conv`."""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_positive_int
from ..ops.conv import pair
from ._op_layer import OpLayer, make_rng, uniform_init


class Conv2d(OpLayer):
    """2-D cross-correlation with zero padding: ``(N, in_channels, H, W)`` to ``(N, out_channels, Ho, Wo)``.

    Parameters ``weight`` ``(out_channels, in_channels, kh, kw)`` and ``bias`` ``(out_channels,)``, initialized as
    PyTorch does, ``U(−1/√fan_in, 1/√fan_in)`` with ``fan_in = in_channels·kh·kw``.

    Args:
        in_channels, out_channels: ``C`` and ``O``.
        kernel_size, stride, padding: ints or ``(h, w)`` pairs.
        bias: learn ``bias``.
        rng: a ``numpy.random.Generator`` or int seed for the initialization (``None``: unseeded).
        dtype: dtype of the parameters.

    Examples:
        >>> conv = Conv2d(3, 8, 3, padding=1, rng=0)
        >>> conv(np.zeros((2, 3, 5, 5))).shape
        (2, 8, 5, 5)
    """

    op = "conv2d"
    param_names = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, *, rng=None,
                 dtype=np.float64, backend=None):
        super().__init__(backend=backend)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding", allow_zero=True)
        rng = make_rng(rng)
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        self.add_param("weight", uniform_init(rng, (self.out_channels, self.in_channels) + self.kernel_size, bound,
                                              dtype))
        if bias:
            self.add_param("bias", uniform_init(rng, (self.out_channels,), bound, dtype))

    def op_hyper(self) -> dict:
        return {"stride": self.stride, "padding": self.padding}

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={'bias' in self.params}")
