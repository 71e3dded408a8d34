"""Stateful layers with PyTorch names and defaults, built on the functional ops."""

from .batch_norm import BatchNorm, InstanceNorm
from .layer_norm import GroupNorm, LayerNorm, RMSNorm
from .module import Module
from ._norm_base import NormLayer
from .power_norm import PowerNorm
from .unified_norm import UnifiedNorm
