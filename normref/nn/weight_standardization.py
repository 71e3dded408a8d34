"""Weight Standardization layers: reparameterizations that act on a weight, not on activations.

``forward(w)`` returns the standardized weight ``ŵ``; ``backward(dŵ)`` returns ``dw`` and accumulates ``dgain``.
A conv or dense layer composes with them: it calls ``ws.forward(self.weight)`` at the start of its own forward,
computes its weight gradient ``dŵ`` as usual, and passes it through ``ws.backward`` to get the gradient of its raw
weight. Math: :mod:`normref.ops.weight_standardization`.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_positive_float, check_positive_int
from ..ops.weight_standardization import EPS_MODES, NF_GAMMA  # noqa: F401  (re-exported for users)
from ._norm_base import NormLayer


def _check_out(w, out_channels: int) -> None:
    shape = getattr(w, "shape", None)
    if shape is not None and len(shape) >= 1 and shape[0] != out_channels:
        raise ValueError(f"the weight has {shape[0]} output units (axis 0, shape {tuple(shape)}) but the layer was "
                         f"built with out_channels={out_channels}")


class WeightStandardization(NormLayer):
    """Weight Standardization (Qiao et al. 2019): ``ŵ_i = (w_i - mean w_i)/sqrt(var w_i + eps)`` per output unit.

    Defaults: biased variance, eps inside the square root, ``eps=1e-5`` (LayerNorm over the fan-in). The official
    code's variant is ``WeightStandardization(O, **WS_VARIANTS["official"])`` (unbiased std, eps outside); see
    :data:`normref.ops.weight_standardization.WS_VARIANTS`. Train and eval compute the same thing.

    Args:
        out_channels: ``O``, the weight's axis 0.
        eps: see ``eps_mode``.
        gain: learn a per-output ``gain`` (init 1). Plain WS has none (the following norm layer rescales).
        unbiased: unbiased variance over the fan-in.
        eps_mode: ``"inside"``, ``"outside"`` or ``"floor"``.
        dtype: dtype of ``gain``.
    """

    op = "weight_standardization"
    param_names = ("gain",)

    def __init__(self, out_channels, eps=1e-5, gain=False, *, unbiased=False, eps_mode="inside", backend=None,
                 dtype=np.float64):
        super().__init__(backend=backend)
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        if eps_mode not in EPS_MODES:
            raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
        self.eps_mode = eps_mode
        self.unbiased = bool(unbiased)
        if gain:
            self.add_param("gain", np.ones(self.out_channels, dtype))

    def check_input(self, w) -> None:
        _check_out(w, self.out_channels)

    def op_hyper(self) -> dict:
        return {"eps": self.eps, "unbiased": self.unbiased, "eps_mode": self.eps_mode}

    def extra_repr(self) -> str:
        return (f"{self.out_channels}, eps={self.eps}, gain={'gain' in self.params}, unbiased={self.unbiased}, "
                f"eps_mode={self.eps_mode!r}")


class ScaledWeightStandardization(NormLayer):
    """Scaled WS (Brock, De & Smith 2021): ``ŵ_i = gain_i·gamma·(w_i - mean)/sqrt(max(N·var, eps))``.

    Defaults follow DeepMind's ``nfnets`` code: the eps is a floor on ``N·var`` (``eps=1e-4``), the variance is
    biased, and a learnable per-output ``gain`` starts at 1. ``eps_mode="inside"`` with ``eps=1e-6`` is timm's
    ``ScaledStdConv2d``. ``gamma`` is the nonlinearity gain (:data:`NF_GAMMA`) folded into the weight, as timm does;
    leave it at 1 and scale the activation instead to follow DeepMind.

    Args:
        out_channels: ``O``.
        eps: ``None`` = 1e-4 for the floor, 1e-6 for ``"inside"``/``"outside"``.
        gain: learn the per-output gain (init 1).
        gamma: fixed nonlinearity gain, e.g. ``NF_GAMMA["relu"]``.
        eps_mode: ``"floor"`` (DeepMind), ``"inside"`` (timm) or ``"outside"``.
        unbiased: unbiased variance over the fan-in (no reference code does this; for comparison only).
    """

    op = "scaled_weight_standardization"
    param_names = ("gain",)

    def __init__(self, out_channels, eps=None, gain=True, gamma=1.0, *, eps_mode="floor", unbiased=False,
                 backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        self.out_channels = check_positive_int(out_channels, "out_channels")
        if eps_mode not in EPS_MODES:
            raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
        self.eps_mode = eps_mode
        default_eps = 1e-4 if eps_mode == "floor" else 1e-6
        self.eps = check_positive_float(default_eps if eps is None else eps, "eps", allow_zero=True)
        self.gamma = float(check_positive_float(gamma, "gamma"))
        self.unbiased = bool(unbiased)
        if gain:
            self.add_param("gain", np.ones(self.out_channels, dtype))

    def check_input(self, w) -> None:
        _check_out(w, self.out_channels)

    def op_hyper(self) -> dict:
        return {"eps": self.eps, "eps_mode": self.eps_mode, "gamma": self.gamma, "unbiased": self.unbiased}

    def extra_repr(self) -> str:
        return (f"{self.out_channels}, eps={self.eps}, gain={'gain' in self.params}, gamma={self.gamma}, "
                f"eps_mode={self.eps_mode!r}")
