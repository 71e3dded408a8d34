"""Stateful layers with PyTorch names and defaults, built on the functional ops (one family per module)."""

from .module import Module
from ._norm_base import NormLayer
# normalizers
from .batch_channel_norm import BatchChannelNorm
from .batch_norm import BatchNorm, InstanceNorm
from .dyt import DyT
from .evonorm import EvoNormB0, EvoNormS0
from .layer_norm import GroupNorm, LayerNorm, RMSNorm
from .power_norm import PowerNorm
from .region_norm import RegionNormB, RegionNormL
from .sync_batch_norm import MPICommunicator, ShardedSyncBatchNorm, SyncBatchNorm
from .test_time_bn import AlphaBatchNorm
from .unified_norm import UnifiedNorm
from .weight_norm import WeightNorm
from .weight_standardization import NF_GAMMA, ScaledWeightStandardization, WeightStandardization
from .factory import NORM_NAMES, MoveChannelAxis, make_norm
# building blocks
from .activations import GELU, ReLU, Sigmoid, SiLU, Tanh
from .attention import MultiheadSelfAttention
from .containers import Flatten, Identity, Residual, Sequential
from .conv import Conv2d
from .dropout import Dropout
from .embedding import Embedding
from .linear import Linear
from .losses import CrossEntropyLoss, MSELoss
from .pooling import AvgPool2d, GlobalAvgPool, MaxPool2d
from .ws_conv import WSConv2d
# the flat-parameter view and .npz save/load
from .flat import flatten_grads, flatten_params, load_npz, num_params, param_layout, save_npz, set_flat_params
