"""The Linear layer (PyTorch's ``nn.Linear``). Math and derivation: :mod:`normref.ops.linear`."""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_positive_int
from ._op_layer import OpLayer, make_rng, uniform_init


class Linear(OpLayer):
    """``y = x Wᵀ + b`` on the last axis: ``(*, in_features)`` to ``(*, out_features)``.

    Parameters ``weight`` ``(out_features, in_features)`` and ``bias`` ``(out_features,)``, both initialized as
    PyTorch does, ``U(−1/√in_features, 1/√in_features)``.

    Args:
        in_features, out_features: sizes of the last axis in and out.
        bias: learn ``bias``.
        rng: a ``numpy.random.Generator`` or int seed for the initialization (``None``: unseeded).
        dtype: dtype of the parameters.

    Examples:
        >>> layer = Linear(3, 2, rng=0)
        >>> layer(np.ones((4, 3))).shape
        (4, 2)
    """

    op = "linear"
    param_names = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype=np.float64, backend=None):
        super().__init__(backend=backend)
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        rng = make_rng(rng)
        bound = 1.0 / math.sqrt(self.in_features)
        self.add_param("weight", uniform_init(rng, (self.out_features, self.in_features), bound, dtype))
        if bias:
            self.add_param("bias", uniform_init(rng, (self.out_features,), bound, dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}"
