"""normref: reference implementations of neural-network normalization layers.

Hand-derived forward and backward passes in plain NumPy (the specification, :mod:`normref.ops`), stateful layers
with PyTorch's conventions (:mod:`normref.nn`), compiled backends checked against the reference
(:mod:`normref.kernels`, chosen with ``backend=`` or :func:`use_backend`), and a gradient checker
(:mod:`normref.gradcheck`) that proves every derivation. Networks, optimizers, data and training live in
:mod:`normref.models`, :mod:`normref.optim`, :mod:`normref.data` and :mod:`normref.train`; loss landscapes and
curvature in :mod:`normref.landscape` (imported on demand).
"""

from . import functional, gradcheck, ops, optim
from ._registry import available_backends, resolve_backend, use_backend
from .nn import (
    # the five standard normalizers
    BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm,
    # the seed papers' normalizers
    AlphaBatchNorm, BatchChannelNorm, DyT, EvoNormB0, EvoNormS0, PowerNorm, RegionNormB, RegionNormL,
    ScaledWeightStandardization, ShardedSyncBatchNorm, SyncBatchNorm, UnifiedNorm, WeightNorm,
    WeightStandardization,
    # building blocks and containers
    AvgPool2d, Conv2d, CrossEntropyLoss, Dropout, Embedding, Flatten, GELU, GlobalAvgPool, Linear, MaxPool2d,
    Module, MSELoss, MultiheadSelfAttention, ReLU, Residual, Sequential, Sigmoid, SiLU, Tanh, WSConv2d,
    make_norm,
)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm",
    "AlphaBatchNorm", "BatchChannelNorm", "DyT", "EvoNormB0", "EvoNormS0", "PowerNorm", "RegionNormB", "RegionNormL",
    "ScaledWeightStandardization", "ShardedSyncBatchNorm", "SyncBatchNorm", "UnifiedNorm", "WeightNorm",
    "WeightStandardization",
    "AvgPool2d", "Conv2d", "CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "GELU", "GlobalAvgPool", "Linear",
    "MaxPool2d", "Module", "MSELoss", "MultiheadSelfAttention", "ReLU", "Residual", "Sequential", "Sigmoid", "SiLU",
    "Tanh", "WSConv2d", "make_norm",
    "available_backends", "functional", "gradcheck", "ops", "optim", "resolve_backend", "use_backend",
]
