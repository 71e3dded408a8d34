"""Pooling layers: MaxPool2d, AvgPool2d (PyTorch's) and GlobalAvgPool. Math: :mod:`normref.ops.pooling`."""

from __future__ import annotations

from ..ops.conv import pair
from ._op_layer import OpLayer


class _Pool2d(OpLayer):
    def __init__(self, kernel_size, stride=None, padding=0, *, backend=None):
        super().__init__(backend=backend)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding", allow_zero=True)

    def op_hyper(self) -> dict:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over ``kernel_size`` windows of ``(N, C, H, W)`` input; ``stride`` defaults to ``kernel_size``.

    The arg-max compares real parts (complex-step safe); at a tie the gradient goes to the first maximum, as PyTorch.

    Examples:
        >>> import numpy as np
        >>> MaxPool2d(2)(np.arange(16.0).reshape(1, 1, 4, 4))[0, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """

    op = "max_pool2d"


class AvgPool2d(_Pool2d):
    """Mean over ``kernel_size`` windows of ``(N, C, H, W)`` input; ``count_include_pad`` as PyTorch (default True)."""

    op = "avg_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True, *, backend=None):
        super().__init__(kernel_size, stride, padding, backend=backend)
        self.count_include_pad = bool(count_include_pad)

    def op_hyper(self) -> dict:
        return {**super().op_hyper(), "count_include_pad": self.count_include_pad}


class GlobalAvgPool(OpLayer):
    """Mean over every spatial axis: ``(N, C, *spatial)`` to ``(N, C)`` (PyTorch: ``AdaptiveAvgPool2d(1)``, flatten)."""

    op = "global_avg_pool"
