"""Stateful layers with PyTorch names and defaults, built on the functional ops."""

from .batch_norm import BatchNorm, InstanceNorm
from .layer_norm import GroupNorm, LayerNorm, RMSNorm
from .module import Module
from ._norm_base import NormLayer
from .activations import GELU, ReLU, Sigmoid, SiLU, Tanh
from .attention import MultiheadSelfAttention
from .containers import Flatten, Identity, Residual, Sequential
from .conv import Conv2d
from .dropout import Dropout
from .embedding import Embedding
from .flat import flatten_grads, flatten_params, load_npz, num_params, param_layout, save_npz, set_flat_params
from .linear import Linear
from .losses import CrossEntropyLoss, MSELoss
from .pooling import AvgPool2d, GlobalAvgPool, MaxPool2d
from .power_norm import PowerNorm
from .unified_norm import UnifiedNorm
from .region_norm import RegionNormB, RegionNormL
from .test_time_bn import AlphaBatchNorm
from .sync_batch_norm import MPICommunicator, ShardedSyncBatchNorm, SyncBatchNorm
from .batch_channel_norm import BatchChannelNorm
from .dyt import DyT
from .evonorm import EvoNormB0, EvoNormS0
from .weight_norm import WeightNorm
from .weight_standardization import NF_GAMMA, ScaledWeightStandardization, WeightStandardization
from .factory import NORM_NAMES, MoveChannelAxis, make_norm
from .ws_conv import WSConv2d
