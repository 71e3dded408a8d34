"""The ``"numba"`` backend: Numba CPU kernels for the standard normalizers, checked against the NumPy reference.

Importing this package registers, on the ``"numba"`` backend, ``batch_norm``, ``layer_norm``, ``group_norm``,
``instance_norm``, ``rms_norm`` and ``batch_channel_norm`` (a composition of the BatchNorm and GroupNorm kernels),
and the seed layers whose reductions are hot: ``evonorm_b0`` (column-wise), ``evonorm_s0`` (row-wise, per-channel
parameters), ``weight_standardization`` and ``scaled_weight_standardization`` (row-wise over the fan-in) and
``power_norm`` (with ``pad_mask``; its surrogate backward is the op ``power_norm_approx``; see
:mod:`.power_norm`), ``dyt`` (Dynamic Tanh: fused elementwise forward storing ``tanh(αx)``, row-chunked backward with
the two-stage reduction of ``dα``, ``dγ``, ``dβ``; :mod:`.dyt`) and ``alpha_batch_norm`` (test-time BN calibration:
the column-wise statistics and BatchNorm's given-statistics kernel, then its own backward through the mixed
statistics; :mod:`.test_time_bn`).
``unified_norm`` (Unified Normalization: row-chunked quadratic mean with ``pad_mask``, the window/outlier/state
bookkeeping shared with the reference, a two-pass backward; its surrogate backward is the op
``unified_norm_approx``; :mod:`.unified_norm`).
``rn_b`` and ``rn_l`` (Region Normalization: column-wise like BatchNorm, both regions' masked moments in one
sweep per pass, per-channel ownership of the gradients; RN-L's small convolutions stay NumPy;
:mod:`.region_norm`).
:mod:`normref._registry` imports it lazily the first time the backend is asked for.

Two templates carry all five layers:

* :mod:`._rowwise`: one statistic per row of a ``(rows, n)`` view (LayerNorm, RMSNorm, GroupNorm, InstanceNorm),
  ``prange`` over rows in the forward and over fixed row chunks in the backward, with a two-stage deterministic
  reduction of the parameter gradients;
* :mod:`._colwise`: one statistic per channel of an ``(N, C, S)`` view (BatchNorm), ``prange`` over channels.

The seed-layer kernels (:mod:`.evonorm`, :mod:`.weight_standardization`, :mod:`.power_norm`, :mod:`.dyt`,
:mod:`.test_time_bn`) follow the same two patterns with their own fused loops; each module's docstring says which,
and its passes over memory.

Compile options (``parallel=True, fastmath=False, cache=True``), the lane-blocked sums with their error bound, and
the array boundary (including ``out=``, which every forward and backward takes) are in :mod:`._common`.
Tutorial ``08_from_numpy_to_numba`` walks through the design; ``normref bench`` measures it.
"""

from . import batch_channel_norm, batch_norm, group_norm, instance_norm, layer_norm, rms_norm  # noqa: F401
from . import evonorm, power_norm, weight_standardization  # noqa: F401
from . import dyt, test_time_bn  # noqa: F401
from . import unified_norm  # noqa: F401
from . import region_norm  # noqa: F401
