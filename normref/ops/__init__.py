"""NumPy reference ops: the specification. One module per layer family, each with its math in the docstring.

Every op is a pair of pure functions, ``y, cache = <op>_forward(x, *params, **hyper)`` and
``dx, *dparams = <op>_backward(dy, cache)``. Nothing is mutated; statistics are computed from the batch or passed in.
Each op module registers its pair as the ``"numpy"`` backend (:mod:`normref._registry`) when imported; this package
imports every module in it, so a new op is a new file.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .batch_norm import batch_norm_backward, batch_norm_backward_staged, batch_norm_batch_stats, batch_norm_forward
from .group_norm import group_norm_backward, group_norm_forward
from .instance_norm import instance_norm_backward, instance_norm_batch_stats, instance_norm_forward
from .layer_norm import layer_norm_backward, layer_norm_forward
from .rms_norm import rms_norm_backward, rms_norm_forward
from .running_stats import RunningStats, initial_running_stats, update_running_stats

for _info in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_info.name}")
