"""Region Normalization layers, RN-B and RN-L (Yu et al., AAAI 2020). Math: :mod:`normref.ops.region_norm`."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._validate import check_positive_float, check_positive_int
from ..ops.region_norm import rn_l_mask
from ._norm_base import NormLayer, check_channels


class RegionNormB(NormLayer):
    """RN-B: normalize the hole pixels and the valid pixels of a feature map separately, given the hole mask.

    Statistics per region and channel over the batch and the region's pixels (BN-style, as the official code), in
    training *and* evaluation (there are no running statistics). The output is
    ``xhat·[M(1+gamma_f) + (1−M)(1+gamma_b)] + beta_f + beta_b``: the code adds both biases everywhere
    (``regionwise_bias=False``, default); ``regionwise_bias=True`` gives the paper's region-wise biases.

    The mask (1 = hole, the code's "foreground" ``f``; 0 = valid, ``b``), shape ``(N, 1, H', W')`` or
    ``(N, H', W')``, is passed to ``forward(x, mask)`` and resized to ``x``'s size by nearest neighbour if needed.
    ``set_mask(mask)`` fixes a mask that ``forward(x)`` then uses (e.g. inside a container, or for a gradient check).

    Args:
        num_features: ``C``.
        eps: base epsilon; region ``r`` effectively uses ``eps·P/|S_r|`` (see the op module).
        affine: learn ``gamma_f, beta_f, gamma_b, beta_b`` (each ``(C,)``, init 0; the scales are ``1 + gamma``).
        regionwise_bias: ``True`` for the paper's region-wise biases, ``False`` for the code's global sum.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2, 4, 8, 8)); hole = np.zeros((2, 1, 8, 8)); hole[:, :, 2:5, 3:7] = 1
        >>> x[:, :, 2:5, 3:7] = 1.0 + 0.1 * x[:, :, 2:5, 3:7]  # holes filled with about 1
        >>> y = RegionNormB(4)(x, hole)
        >>> bool(np.allclose(y[:, :, 2:5, 3:7].mean(axis=(0, 2, 3)), 0))
        True
    """

    op = "rn_b"
    param_names = ("gamma_f", "beta_f", "gamma_b", "beta_b")

    def __init__(self, num_features, eps=1e-5, affine=True, *, regionwise_bias=False, backend=None,
                 dtype=np.float64):
        super().__init__(backend=backend)
        self.num_features = check_positive_int(num_features, "num_features")
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.affine = bool(affine)
        self.regionwise_bias = bool(regionwise_bias)
        self.mask = None
        if self.affine:
            for name in self.param_names:
                self.add_param(name, np.zeros(self.num_features, dtype))

    def set_mask(self, mask) -> None:
        """Fix the mask used by ``forward(x)`` without a mask argument (``None`` clears it)."""
        self.mask = None if mask is None else np.array(mask, copy=True)

    def op_hyper(self) -> dict:
        return {"eps": self.eps, "regionwise_bias": self.regionwise_bias}

    def forward(self, x, mask=None):
        check_channels(x, self.num_features)
        if mask is None:
            mask = self.mask
        if mask is None:
            raise ValueError("RegionNormB needs the region mask: call forward(x, mask) or set_mask(mask) first")
        y, self.cache = F.forward(self.op, x, *self.op_params(), backend=self.backend, mask=mask,
                                  **self.op_hyper())
        return y

    def __call__(self, x, mask=None):
        return self.forward(x, mask)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, regionwise_bias={self.regionwise_bias}"


class RegionNormL(NormLayer):
    """RN-L: region normalization with a mask learned from the features, and a pixel-wise affine.

    A response map ``s = sigmoid(conv_k([mean_c x; max_c x]))`` (2→1 kernel ``w_sa``, no bias) gives the mask
    ``s >= threshold`` (no gradient through the threshold) and, through two 1→1 convolutions, the pixel maps
    ``gamma_s``, ``beta_s``: ``y = RN(x, mask)·(1 + gamma_s) + beta_s``. Statistics are batch statistics in training
    and evaluation. The gradient reaches ``x`` through RN and through ``s``.

    Parameters (PyTorch ``Conv2d`` default initialization, uniform in ``±1/sqrt(fan_in)``, from ``seed``):
    ``w_sa (1, 2, k, k)``, ``w_gamma (1, 1, k, k)``, ``b_gamma (1,)``, ``w_beta (1, 1, k, k)``, ``b_beta (1,)``.

    Args:
        num_features: ``C`` (checked against the input; the parameters do not depend on it).
        threshold: ``tau`` (0.8 in the code).
        kernel_size: odd; the code allows 3 or 7 (default 7).
        eps: base epsilon, as in RN-B.
        seed: seed of the parameter initialization.
    """

    op = "rn_l"
    param_names = ("w_sa", "w_gamma", "b_gamma", "w_beta", "b_beta")

    def __init__(self, num_features, threshold=0.8, kernel_size=7, eps=1e-5, *, seed=0, backend=None,
                 dtype=np.float64):
        super().__init__(backend=backend)
        self.num_features = check_positive_int(num_features, "num_features")
        self.threshold = check_positive_float(threshold, "threshold", allow_zero=True)
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd ('same' padding), got {kernel_size}")
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        rng = np.random.default_rng(seed)
        k = self.kernel_size
        for name, shape, fan_in in (("w_sa", (1, 2, k, k), 2 * k * k), ("w_gamma", (1, 1, k, k), k * k),
                                    ("b_gamma", (1,), k * k), ("w_beta", (1, 1, k, k), k * k),
                                    ("b_beta", (1,), k * k)):
            bound = 1.0 / np.sqrt(fan_in)
            self.add_param(name, rng.uniform(-bound, bound, shape).astype(dtype))

    def op_hyper(self) -> dict:
        return {"threshold": self.threshold, "eps": self.eps}

    def check_input(self, x) -> None:
        check_channels(x, self.num_features)

    def last_mask(self) -> np.ndarray:
        """The ``(N, 1, H, W)`` mask of the last forward."""
        if self.cache is None:
            raise RuntimeError("RegionNormL.last_mask called before forward")
        return rn_l_mask(self.cache)

    def extra_repr(self) -> str:
        return f"{self.num_features}, threshold={self.threshold}, kernel_size={self.kernel_size}, eps={self.eps}"


__all__ = ["RegionNormB", "RegionNormL"]
