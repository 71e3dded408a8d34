"""EvoNorm-B0 and EvoNorm-S0 layers (normalization fused with the activation). Math: :mod:`normref.ops.evonorm`."""

from __future__ import annotations

import numpy as np

from .._validate import check_fraction, check_positive_float, check_positive_int
from ..ops.evonorm import default_groups, evonorm_b0_update_running_var
from ..ops.group_norm import check_groups
from ._norm_base import NormLayer, check_channels, init_affine


class _EvoNorm(NormLayer):
    param_names = ("gamma", "beta", "v")

    def __init__(self, num_features, eps, affine, apply_act, *, backend, dtype):
        super().__init__(backend=backend)
        self.num_features = check_positive_int(num_features, "num_features")
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.affine = bool(affine)
        self.apply_act = bool(apply_act)
        self.dtype = np.dtype(dtype)
        init_affine(self, (self.num_features,), gamma=self.affine, beta=self.affine, dtype=self.dtype)
        if self.apply_act:
            self.add_param("v", np.ones(self.num_features, self.dtype))

    def check_input(self, x) -> None:
        check_channels(x, self.num_features)


class EvoNormB0(_EvoNorm):
    """EvoNorm-B0: ``y = γ·x / max(sqrt(var_batch + eps), v·x + sqrt(var_instance + eps)) + β``.

    Training divides by the batch std (gradient flows through it) and updates ``running_var``; eval uses
    ``running_var``. ``momentum`` is PyTorch's (weight of the new batch): TF's ``decay=0.9`` is ``momentum=0.1``.
    The stored variance is unbiased by default (timm, library convention); ``unbiased=False`` reproduces the TF
    reference. ``eps=1e-5`` is TF's (timm: 1e-3). ``apply_act=False`` drops ``v`` and the normalization
    (``y = γx + β``), as TF's ``nonlinearity=False``.

    Args:
        num_features: ``C``.
        eps: inside both square roots.
        momentum: weight of the new batch's variance, or ``None`` for the cumulative average.
        affine: learn ``gamma`` (init 1) and ``beta`` (init 0).
        apply_act: learn ``v`` (init 1) and normalize.
        unbiased: store the unbiased batch variance in ``running_var``.
    """

    op = "evonorm_b0"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, apply_act=True, *, unbiased=True,
                 backend=None, dtype=np.float64):
        super().__init__(num_features, eps, affine, apply_act, backend=backend, dtype=dtype)
        self.momentum = None if momentum is None else check_fraction(momentum, "momentum")
        self.unbiased = bool(unbiased)
        self.buffers.update(running_var=np.ones(self.num_features, self.dtype), num_batches_tracked=0)

    def op_hyper(self) -> dict:
        return {"eps": self.eps}

    def given_stats(self):
        return None if self.training else (None, self.buffers["running_var"])

    def after_forward(self, cache) -> None:
        if self.training and cache.kind == "b0":
            var, tracked = evonorm_b0_update_running_var(self.buffers["running_var"],
                                                         self.buffers["num_batches_tracked"], cache,
                                                         momentum=self.momentum, unbiased=self.unbiased)
            self.buffers.update(running_var=var, num_batches_tracked=tracked)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"apply_act={self.apply_act}, unbiased={self.unbiased}")


class EvoNormS0(_EvoNorm):
    """EvoNorm-S0: ``y = γ·x·sigmoid(v·x) / sqrt(var_group + eps) + β``; no batch dependence, no running stats.

    ``num_groups=None`` applies the TF reference's rule (32, decremented until it divides ``C``); an explicit
    ``num_groups`` must divide ``C``.

    Args:
        num_features: ``C``.
        num_groups: ``G`` or ``None``.
        eps: inside the square root (TF and timm: 1e-5).
        affine: learn ``gamma`` (init 1) and ``beta`` (init 0).
        apply_act: learn ``v`` (init 1) and normalize; ``False`` gives ``y = γx + β``.
    """

    op = "evonorm_s0"

    def __init__(self, num_features, num_groups=None, eps=1e-5, affine=True, apply_act=True, *, backend=None,
                 dtype=np.float64):
        super().__init__(num_features, eps, affine, apply_act, backend=backend, dtype=dtype)
        self.num_groups = (default_groups(self.num_features) if num_groups is None
                           else check_groups(num_groups, self.num_features))

    def op_hyper(self) -> dict:
        return {"num_groups": self.num_groups, "eps": self.eps}

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, affine={self.affine}, "
                f"apply_act={self.apply_act}")
