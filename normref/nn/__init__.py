"""Stateful layers with PyTorch names and defaults, built on the functional ops."""

from .batch_norm import BatchNorm, InstanceNorm
from .layer_norm import GroupNorm, LayerNorm, RMSNorm
from .module import Module
from ._norm_base import NormLayer
from .power_norm import PowerNorm
from .unified_norm import UnifiedNorm
from .batch_channel_norm import BatchChannelNorm
from .dyt import DyT
from .evonorm import EvoNormB0, EvoNormS0
from .weight_norm import WeightNorm
from .weight_standardization import NF_GAMMA, ScaledWeightStandardization, WeightStandardization
