"""normref: reference implementations of neural-network normalization layers.

Hand-derived forward and backward passes in plain NumPy (the specification, :mod:`normref.ops`), stateful layers
with PyTorch's conventions (:mod:`normref.nn`), compiled backends checked against the reference, and a gradient
checker (:mod:`normref.gradcheck`) that proves every derivation.
"""

from . import functional, ops
from ._registry import available_backends, resolve_backend, use_backend
from .nn import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, Module, RMSNorm
from . import gradcheck
from .nn import PowerNorm, UnifiedNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "Module", "RMSNorm",
    "available_backends", "functional", "gradcheck", "ops", "resolve_backend", "use_backend",
]
from .nn import AlphaBatchNorm, RegionNormB, RegionNormL, ShardedSyncBatchNorm, SyncBatchNorm  # noqa: E402
__all__ += ["AlphaBatchNorm", "RegionNormB", "RegionNormL", "ShardedSyncBatchNorm", "SyncBatchNorm"]
__all__ += ["PowerNorm", "UnifiedNorm"]
from .nn import (AvgPool2d, Conv2d, CrossEntropyLoss, Dropout, Embedding, Flatten, GELU, GlobalAvgPool, Linear,  # noqa: E402
                 MaxPool2d, MSELoss, MultiheadSelfAttention, ReLU, Residual, Sequential, Sigmoid, SiLU, Tanh)
__all__ += ["AvgPool2d", "Conv2d", "CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "GELU", "GlobalAvgPool",
            "Linear", "MaxPool2d", "MSELoss", "MultiheadSelfAttention", "ReLU", "Residual", "Sequential", "Sigmoid",
            "SiLU", "Tanh"]
from .nn import (BatchChannelNorm, DyT, EvoNormB0, EvoNormS0, ScaledWeightStandardization,  # noqa: E402
                 WeightNorm, WeightStandardization)
__all__ += ["BatchChannelNorm", "DyT", "EvoNormB0", "EvoNormS0", "ScaledWeightStandardization", "WeightNorm",
            "WeightStandardization"]
from . import optim  # noqa: E402
__all__ += ["optim"]
