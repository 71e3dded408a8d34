r"""The ``"numba-fast"`` backend: the ``"numba"`` kernels with reassociated sums, under their own backend name.

Importing this package registers ``batch_norm``, ``layer_norm``, ``rms_norm``, ``group_norm`` and
``instance_norm`` on ``"numba-fast"`` (:mod:`normref._registry` imports it the first time the backend is asked
for). The ops are the ``"numba"`` backend's own functions (:mod:`normref.kernels.numba_cpu`: the same validation,
views, drivers, ``out=`` and cache), run with this package's kernel modules (``kernels=``); the cache records
``backend="numba-fast"``, so :func:`normref.functional.backward` runs this backend's backward for it, and the
``"numba"`` backward refuses it. The checked ``"numba"`` path is not changed by anything here.

Why a second backend
--------------------
Without reassociation, the exact backend writes each sum as an elementwise loop over 64 partial sums kept in
memory (:mod:`normref.kernels.numba_cpu._common`, "Sums in lanes"): bitwise reproducible, but the lanes are loaded
and stored every 64 values, and that arithmetic does not hide behind memory on two cores. Here every sum is a plain
loop, ``t += v[j]`` (:mod:`._sums`), and the compiler is allowed to reassociate it, so it keeps the partial sums in
SIMD registers. Measured on one thread, 256×1024 float32 in cache (the kernels alone, medians of 300 interleaved
repetitions on a shared machine), ns per value, exact → fast:

==============  ===========  ===========
kernel          forward      backward
==============  ===========  ===========
LayerNorm       0.72 → 0.44  1.10 → 0.82
RMSNorm         0.44 → 0.29  1.05 → 0.75
GroupNorm       0.70 → 0.43  1.21 → 0.57
BatchNorm       0.66 → 0.48  0.64 → 0.47
==============  ===========  ===========

At 32 MiB on two cores memory hides part of this; ``normref bench`` shows both (``Numba fast`` columns).

Compile flags, and why exactly these
------------------------------------
LLVM's fast-math flags are granted per instruction; Numba sets them per function (``fastmath=`` a set of names).

* The sums (:mod:`._sums`): ``{"reassoc", "contract"}``. ``reassoc`` is the licence to vectorize a reduction (to
  add in another order than written); ``contract`` lets ``a·b + c`` be one FMA, rounded once.
* The kernels (:mod:`._rowwise`, :mod:`._colwise`): ``{"contract"}`` only. ``reassoc`` would permit LLVM to
  turn ``(x - m)·s`` into ``x·s - m·s``, which cancels when ``|mean| ≫ std`` (see :mod:`._sums`); the elementwise
  code needs no reordering to vectorize, so it is not allowed any.
* Not ``nnan``/``ninf`` (or the umbrella ``fast``): with them LLVM may assume that no value is NaN or infinite and
  fold comparisons, ``max`` and ``sqrt`` edge cases away, so a NaN or inf in ``x`` would not propagate to ``y`` as
  it does in the reference. Not ``nsz`` (signs of zero may change) or ``arcp`` (``x/y`` as ``x·(1/y)``, one more
  rounding): measured, neither makes these loops faster.

What is lost, what is kept
--------------------------
* **Lost: bitwise reproducibility across machines and compilers.** The order of a reassociated sum is what the
  vectorizer picks for the target CPU (its vector width and interleave), so an AVX-512 machine, an ARM machine or
  another LLVM version may round differently in the last bits than this one. The results agree with the reference
  to the same tolerances as the exact backend (1e-12 float64, 1e-5 float32, norm-relative; tested), not bitwise
  with the ``"numba"`` backend.
* **Kept: determinism on one machine.** The compiled code is fixed, every statistic's sum runs on one thread, and
  the parameter gradients use the exact backend's two-stage reduction over a fixed number of row chunks, so a run
  is bitwise the same as the previous one, on any number of threads (tested).
* **Kept:** float64 statistics (``mean``, ``rstd``) and float64 accumulation across blocks; the corrected two-pass
  mean and variance (never :math:`E[x^2]-E[x]^2`), offset-independent; NaN and inf propagation.
* **Error bound** of a sum (:mod:`._sums`): at most ``(B - 1)·u·Σ|t|`` whatever order the compiler picks, with
  ``B = 256`` the float32 block (``1.5e-5·Σ|t|`` worst case); on AVX2 the order actually used gives
  ``≈ 13u·Σ|t| ≈ 8e-7·Σ|t|``, as accurate as the exact backend's ``16u``.

Not on this backend: ``batch_channel_norm`` and the seed layers (EvoNorm, weight standardization, PowerNorm); asking
for them names the backends that have them.
"""

from __future__ import annotations

from functools import partial

from ..._registry import register
from ..numba_cpu import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from . import _colwise, _rowwise

BACKEND = "numba-fast"


def _register(op: str, module, kernels) -> None:
    """Register ``module``'s (the ``"numba"`` op's) forward and backward, run with ``kernels``, on this backend."""
    forward, backward = getattr(module, f"{op}_forward"), getattr(module, f"{op}_backward")
    register(op, BACKEND, partial(forward, kernels=kernels), partial(backward, kernels=kernels))


_register("batch_norm", batch_norm, _colwise)
_register("layer_norm", layer_norm, _rowwise)
_register("rms_norm", rms_norm, _rowwise)
_register("group_norm", group_norm, _rowwise)
_register("instance_norm", instance_norm, _rowwise)
