"""LayerNorm, RMSNorm and GroupNorm layers: per-sample normalizers without running statistics."""

from __future__ import annotations

import numpy as np

from .._validate import check_positive_float, check_positive_int, check_shape_tuple
from ..ops.group_norm import check_groups
from ._norm_base import NormLayer, check_channels, init_affine


class LayerNorm(NormLayer):
    """Layer Normalization over the trailing ``normalized_shape`` (PyTorch's ``LayerNorm``).

    ``gamma`` and ``beta`` are elementwise, of shape ``normalized_shape``; ``bias=False`` drops ``beta``.
    Train and eval compute the same thing. Math: :mod:`normref.ops.layer_norm`.
    """

    op = "layer_norm"

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *, backend=None,
                 dtype=np.float64):
        super().__init__(backend=backend)
        self.normalized_shape = check_shape_tuple(normalized_shape, "normalized_shape")
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.elementwise_affine = bool(elementwise_affine)
        init_affine(self, self.normalized_shape, gamma=self.elementwise_affine,
                    beta=self.elementwise_affine and bool(bias), dtype=dtype)

    def op_hyper(self) -> dict:
        return {"normalized_shape": self.normalized_shape, "eps": self.eps}

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class RMSNorm(NormLayer):
    """RMS normalization over the trailing ``normalized_shape`` (PyTorch's ``RMSNorm``).

    ``eps=None`` is the machine epsilon of the input's dtype. No bias. Math: :mod:`normref.ops.rms_norm`.
    """

    op = "rms_norm"
    param_names = ("gamma",)

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *, backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        self.normalized_shape = check_shape_tuple(normalized_shape, "normalized_shape")
        self.eps = None if eps is None else check_positive_float(eps, "eps", allow_zero=True)
        self.elementwise_affine = bool(elementwise_affine)
        init_affine(self, self.normalized_shape, gamma=self.elementwise_affine, beta=False, dtype=dtype)

    def op_hyper(self) -> dict:
        return {"normalized_shape": self.normalized_shape, "eps": self.eps}

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(NormLayer):
    """Group Normalization (PyTorch's ``GroupNorm``): statistics per sample and group, affine per channel.

    Math: :mod:`normref.ops.group_norm`.
    """

    op = "group_norm"

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        self.num_channels = check_positive_int(num_channels, "num_channels")
        self.num_groups = check_groups(num_groups, self.num_channels)
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.affine = bool(affine)
        init_affine(self, (self.num_channels,), gamma=self.affine, beta=self.affine, dtype=dtype)

    def check_input(self, x) -> None:
        check_channels(x, self.num_channels, "num_channels")

    def op_hyper(self) -> dict:
        return {"num_groups": self.num_groups, "eps": self.eps}

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
