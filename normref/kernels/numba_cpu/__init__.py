"""The ``"numba"`` backend: Numba CPU kernels for the standard normalizers, checked against the NumPy reference.

Importing this package registers ``batch_norm``, ``layer_norm``, ``group_norm``, ``instance_norm``, ``rms_norm`` and
``batch_channel_norm`` (a composition of the BatchNorm and GroupNorm kernels) on the ``"numba"`` backend (:mod:`normref._registry` imports it lazily the first time the backend is asked for).

Two templates carry all five layers:

* :mod:`._rowwise`: one statistic per row of a ``(rows, n)`` view (LayerNorm, RMSNorm, GroupNorm, InstanceNorm),
  ``prange`` over rows in the forward and over fixed row chunks in the backward, with a two-stage deterministic
  reduction of the parameter gradients;
* :mod:`._colwise`: one statistic per channel of an ``(N, C, S)`` view (BatchNorm), ``prange`` over channels.

Compile options (``parallel=True, fastmath=False, cache=True``), the lane-blocked sums with their error bound, and
the array boundary (including ``out=``, which every forward and backward takes) are in :mod:`._common`.
Tutorial ``08_from_numpy_to_numba`` walks through the design; ``normref bench`` measures it.
"""

from . import batch_channel_norm, batch_norm, group_norm, instance_norm, layer_norm, rms_norm  # noqa: F401
