"""Activation layers: ReLU, GELU (exact or tanh form), SiLU, Tanh, Sigmoid. Math: :mod:`normref.ops.activations`."""

from __future__ import annotations

from ..ops.activations import GELU_APPROXIMATIONS
from ._op_layer import OpLayer


class ReLU(OpLayer):
    """``max(x, 0)`` elementwise (the comparison uses the real part, so the complex step works away from 0)."""

    op = "relu"


class GELU(OpLayer):
    """``x Φ(x)`` (``approximate="none"``, via ``scipy.special.erfc``) or its tanh form (``"tanh"``), as PyTorch.

    Examples:
        >>> import numpy as np
        >>> round(float(GELU()(np.array([1.0]))[0]), 6), round(float(GELU("tanh")(np.array([1.0]))[0]), 6)
        (0.841345, 0.841192)
    """

    op = "gelu"

    def __init__(self, approximate="none", *, backend=None):
        super().__init__(backend=backend)
        if approximate not in GELU_APPROXIMATIONS:
            raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
        self.approximate = approximate

    def op_hyper(self) -> dict:
        return {"approximate": self.approximate}

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(OpLayer):
    """``x σ(x)`` (swish)."""

    op = "silu"


class Tanh(OpLayer):
    """``tanh x``."""

    op = "tanh"


class Sigmoid(OpLayer):
    """``1/(1 + e^{−x})``, evaluated without overflow."""

    op = "sigmoid"
