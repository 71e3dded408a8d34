r"""A float32 ``tanh`` that LLVM can vectorize: an odd rational function, evaluated in float64, rounded once.

Why
---
Inside a Numba kernel ``np.tanh`` becomes LLVM's ``llvm.tanh``; with no Intel SVML (not installed here) LLVM
turns it into one call of the C library's ``tanhf`` per value, about 20 ns each, and a loop around a call is not
vectorized. :func:`tanh_f32` uses only ``abs``, a compare-and-select, ``+``, ``×``, ``÷``, ``copysign`` and two
conversions, all of which LLVM's loop vectorizer turns into SIMD instructions (4 float64 lanes per AVX2
instruction), so the DyT forward loop (:mod:`.dyt`) vectorizes.

The form
--------
For ``x`` in float32, with ``a = min(|x|, c)`` (converted exactly to float64) and ``s = a²``:

.. math::

    \tanh x \approx \operatorname{copysign}\!\Bigl(\operatorname{fl_{32}}\frac{a\,P(s)}{Q(s)},\ x\Bigr),\qquad
    P(s) = \sum_{k=0}^{5} p_k s^k,\quad Q(s) = \sum_{k=0}^{5} q_k s^k,\quad p_0 = q_0 = 1,

a rational function of degree 11/10 in ``x``, odd by construction. ``P`` and ``Q`` are evaluated in float64 by
Horner's rule, in the order written in :func:`tanh_f32` (``fastmath=False``: no reassociation, no FMA
contraction), then ``a·P/Q`` is rounded once to float32.

**The clamp** ``c = 9.010914`` (float32 ``0x41102CB4``). ``fl32(tanh x) = 1`` exactly when ``tanh x`` is at or
above the midpoint ``1 - 2⁻²⁵`` between 1 and the float32 just below it (``1 - 2⁻²⁴``; a tie rounds to 1, the
even one). ``1 - tanh x = 2/(e^{2x} + 1)``, so this holds for ``x ≥ atanh(1 - 2⁻²⁵) = ½ ln(2²⁶ - 1)
= 9.0109133398...`` (≈ 13 ln 2). The smallest float32 at or above that is ``c = 9.0109138`` (``tanh c`` is above
the midpoint by 3e-14 relative); the float32 below it, ``9.0109129``, has ``tanh`` 2.6e-14 below the midpoint and
rounds to ``1 - 2⁻²⁴`` (checked in long double, :func:`clamp_point`). So every float32 ``|x| ≥ c`` has
``fl32(tanh x) = ±1``, and clamping ``|x|`` to ``c`` changes no correctly rounded result. The fitted ``a·P/Q`` at
``c`` is ``tanh c·(1 + 3.7e-11)`` (the fit's error there is its positive extreme), above the midpoint by far more
than the float64 rounding of the evaluation (~1e-15), so ``tanh_f32(c) = 1`` and with it ``tanh_f32(±inf) = ±1``.

**Special values.** ``NaN``: ``c if a > c else a`` keeps ``a = NaN`` (the comparison is false), and ``NaN``
propagates. ``±0``: ``a·P/Q = +0``, and ``copysign`` gives the sign of ``x`` back, so ``-0`` stays ``-0`` and
``tanh_f32(-x) = -tanh_f32(x)`` bit for bit for every ``x`` (the rational part only ever sees ``|x|``). Tiny and
subnormal ``x``: ``a²`` does not underflow in float64 (≥ 2⁻²⁹⁸), ``P/Q = 1 + O(a²)``, and ``fl32`` of
``a·(1 + O(a²))`` is ``a`` exactly once ``a²/3`` is below half an ulp (``|x| < 2⁻¹²`` suffices): the correctly
rounded ``tanh x = x`` of float32.

Why float64 inside, not float32
-------------------------------
The same form evaluated entirely in float32 (coefficients rounded to float32, every operation rounded to float32)
was measured first: for each degree tried, (4, 4) through (6, 4), the worst error over a strided sweep of all
float32 in ``[0, c]`` was 4.6 to 7 ulp (these coefficients: 5.9 ulp at ``x = 7.618``), at ``x`` between 3.9 and
8.5, where the result is near 1 and each of the ~22 float32 roundings (``s``, the Horner steps, ``a·P``, the
division) can add up to half an ulp of it. Nor is it monotonic: near ``x = 5`` ``tanh`` rises by one ulp over
~700 consecutive float32 inputs while the rounding errors jump from one input to the next; of the 2¹⁸ patterns
from 5 upwards, 85 939 give a smaller result than the input before them. In float64 the only errors that matter
are the final rounding to float32 and the fit's 3.7e-11 relative (6e-4 ulp): the result is the correctly rounded
``tanh`` except where ``tanh x`` lies within ~4e-11 relative of a float32 midpoint. It costs half the SIMD width
of float32 (4 lanes, not 8) and a float64 division: the DyT forward takes 16.8 ms instead of 13.8 ms on 32 MiB,
against 125.7 ms with ``np.tanh`` (:mod:`.dyt`).

The fit (how the coefficients were made; :func:`fit_coefficients` regenerates them)
------------------------------------------------------------------------------------
``f(s) = tanh(√s)/√s`` on ``s ∈ [0, c²]`` is approximated by ``P/Q`` in the **relative** error
``P/(Q f) - 1``, minimax, with ``p₀ = q₀ = 1`` (so ``f(0) = 1`` is exact and ``tanh x = x·(1 + O(x²))``):

1. 2000 points ``x_i = c(1 - cos(πi/1999))/2`` (denser at both ends), ``f_i`` from ``np.tanh`` in long double;
   the variable is scaled, ``t = s/c²`` in ``[0, 1]``, so the least-squares matrix is well conditioned.
2. Sanathanan–Koerner linearization: ``P(t_i) - f_i Q(t_i) = 0`` is linear in the unknowns
   ``p₁…p₅, q₁…q₅``; each row is divided by ``f_i Q_prev(t_i)`` (``Q`` of the previous iteration), which makes
   the linear residual the relative error once ``Q`` settles.
3. Lawson's iteration on top (after 3 plain iterations): the weights become ``w_i ← w_i·|e_i|``, normalized,
   which drives the weighted least-squares solution towards the minimax one; 100 iterations, keep the best.
4. Undo the scaling: ``p_k ← p_k / c^{2k}``, ``q_k ← q_k / c^{2k}``.

Result: max relative error 3.72e-11 on the fit grid, equioscillating (at ``x = 0+`` the error is 0 by
construction; the extremes alternate in sign, the last one ``+3.720e-11`` at ``x = c``, checked in long double);
all 10 coefficients are positive, so Horner's rule adds positive terms (no cancellation) for ``s ≥ 0``
(``P(c²) = 69.3``, ``Q(c²) = 624``). Degrees ``(m, n)`` tried (max relative fit error; error of the float64
evaluation in ulp over every 997th float32 in ``[0, c]``): (4, 4) 2.2e-8, 0.86; (4, 5) 9.7e-10, 0.515; (5, 4)
1.3e-9, 0.52; (5, 5) 3.7e-11, 0.5006; (6, 4) 9.2e-11, 0.501. (5, 5) and (6, 4) cost the same; (5, 5) has the
smaller error and no negative coefficient. (4, 5), one multiply-add cheaper, ends at ``-9.7e-10`` at ``c``, which
would round ``tanh_f32(c)`` down to ``1 - 2⁻²⁴`` (it would need a select for ``|x| ≥ c``). The coefficients are
fitted here, with no library's coefficients as a starting point.

Accuracy (measured)
-------------------
Against ``np.tanh`` in long double (64-bit significand), in units of the float32 ulp of the exact value
(``2^(e-24)`` for ``tanh x ∈ [2^(e-1), 2^e)``, ``2⁻¹⁴⁹`` at the bottom; :func:`ulp_error`):

* **exhaustive**, every float32 in ``[0, c]`` (1 091 579 061 values, chunks of 2²³, ~110 s): max **0.500621 ulp**,
  at ``x = 5.2797933`` (``0x40A8F411``); 16 799 values (1.5e-5 of them) are not the correctly rounded float32,
  each off by just over half an ulp; by range: ``|x| < 2⁻¹²`` 0.33 ulp (the result is ``x``), ``[2⁻¹², 1)``
  0.500609, ``[1, c]`` 0.500621. Not one decrease between consecutive inputs: monotonic non-decreasing.
* :func:`max_ulp_error` (every 16th pattern plus the 2¹⁶ patterns above 0 and either side of ``c``, 6.8e7 values,
  7 s): max 0.500614 ulp at ``x = 9.0103`` (``0x41102A30``).

With odd symmetry and the clamp this covers every float32. The bound behind it: the float64 value is within
3.72e-11 (fit) + ~1e-15 (evaluation) relative of ``tanh x``, and ``tanh x`` is less than 2²⁴ of its ulps, so the
rounded result is within 0.5 + 3.72e-11·2²⁴ = 0.500624 ulp. NumPy's own SIMD float32 ``np.tanh`` reaches 1.37 ulp
(every 7th float32 in ``[0, c]``), the C library's ``tanhf`` ~2.2 ulp on random samples (:mod:`.dyt`).

Numba's on-disk cache checks only the source file of the cached function: after changing this module, delete the
cached kernels that inline :func:`tanh_f32` (``normref/kernels/numba_cpu/__pycache__/dyt.*.nb[ic]``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

# The clamp: the smallest float32 whose tanh rounds to 1 in float32 (module docstring; clamp_point() finds it).
CLAMP = 9.010913848876953  # float32 0x41102CB4, exactly
# P(s) = P0 + P1 s + ... + P5 s^5 and Q(s) likewise, s = x^2; fitted by fit_coefficients() (module docstring).
P0, P1, P2, P3, P4, P5 = (1.0, 0.14100473819181578, 0.0044276278701203126, 4.2316496858819786e-05,
                          1.1141575624858866e-07, 3.68886156369433e-11)
Q0, Q1, Q2, Q3, Q4, Q5 = (1.0, 0.4743380712629746, 0.029206985531132802, 0.0005011556516098951,
                          2.6077864755246035e-06, 2.9599137412361313e-09)


@njit(fastmath=False, cache=True, inline="always")
def tanh_f32(x):
    """``tanh`` of a float32 ``x`` as float32, within 0.5006 ulp of the exact value; vectorizable (module docstring).

    ``±inf → ±1``, ``NaN → NaN``, ``±0 → ±0``, odd bit for bit. It is :func:`tanh_f32_wide` rounded once.
    """
    return np.float32(tanh_f32_wide(x))


@njit(fastmath=False, cache=True, inline="always")
def tanh_f32_wide(x):
    """The float64 value that :func:`tanh_f32` rounds: ``np.float32(tanh_f32_wide(x)) == tanh_f32(x)`` bit for bit.

    The clamp, the Horner steps of ``P`` and ``Q`` and the ``copysign``, in float64; :func:`tanh_f32` is this value
    rounded to float32, and callers that go on computing in float64 use it directly (EvoNorm-S0's sigmoid
    ``½ + ½·tanh(z/2)``, :mod:`.evonorm`). Within the clamp it is ``tanh x·(1 + δ)``, ``|δ| ≤ 3.72e-11`` (the fit) plus ~1e-15 (the evaluation), for any real ``|x| ≤ c``, not only
    float32 ones; beyond the clamp it is ``±tanh(c)·(1 + 3.7e-11) = ±(1 - 2.98e-8)``, i.e. off by up to ``3e-8``
    absolute (invisible after rounding to float32, but not in float64 arithmetic on ``1 ± t``).
    """
    a = abs(np.float64(x))
    a = CLAMP if a > CLAMP else a  # a NaN fails the comparison and stays NaN
    s = a * a
    p = ((((P5 * s + P4) * s + P3) * s + P2) * s + P1) * s + P0
    q = ((((Q5 * s + Q4) * s + Q3) * s + Q2) * s + Q1) * s + Q0
    return math.copysign((a * p) / q, x)


def tanh_storage(x):
    """``tanh`` in the storage dtype, for use inside Numba kernels: :func:`tanh_f32` for float32, ``np.tanh``
    (the C library's ``tanh``, ≤ 2.2 ulp measured in float64, :mod:`.dyt`) otherwise. Chosen at compile time."""
    return np.tanh(x)


@overload(tanh_storage, inline="always")
def _tanh_storage_overload(x):
    if x == types.float32:
        return lambda x: tanh_f32(x)
    return lambda x: np.tanh(x)


# ---------------------------------------------------------------------------------------------------------------
# Regenerating and checking the numbers in the module docstring (plain NumPy; not used by the kernels).

def clamp_point() -> np.float32:
    """The smallest float32 ``c`` with ``fl32(tanh c) = 1``, searched over every float32 in ``[8, 10)`` with a
    long-double ``tanh`` (``tanh`` is increasing, so every float32 above ``c`` rounds to 1 as well)."""
    bits = np.arange(np.float32(8).view(np.int32), np.float32(10).view(np.int32), dtype=np.int32)
    xs = bits.view(np.float32)
    return xs[np.argmax(np.tanh(xs.astype(np.longdouble)).astype(np.float32) == 1)]


def fit_coefficients(m: int = 5, n: int = 5, points: int = 2000, iterations: int = 100):
    """Fit ``P`` (degree ``m`` in ``s``) and ``Q`` (degree ``n``) as in the module docstring.

    Returns ``(max_rel_error, p, q)`` with ``p``, ``q`` float64 arrays of the coefficients of ``s⁰, s¹, ...``
    (``p[0] = q[0] = 1``). ``fit_coefficients()`` returned ``P0..P5``, ``Q0..Q5`` (printed with ``repr``);
    another BLAS may change the last digits (Lawson's iteration is stopped after ``iterations``, not converged).
    """
    k = np.arange(points)
    x = np.longdouble(CLAMP) * (1 - np.cos(np.pi * k / (points - 1))) / 2
    x[0] = np.longdouble(1e-30)  # tanh(x)/x -> 1 at x = 0
    f = (np.tanh(x) / x).astype(np.float64)
    scale = CLAMP * CLAMP
    t = (x * x).astype(np.float64) / scale
    tp, tq = t[:, None] ** np.arange(1, m + 1), t[:, None] ** np.arange(1, n + 1)
    q_prev, w, best = np.ones(points), np.full(points, 1 / points), None
    for it in range(iterations):
        row = np.sqrt(w) / (f * q_prev)  # SK: divide by f·Q_prev; Lawson: weight sqrt(w)
        z = np.linalg.lstsq(np.hstack([tp, -f[:, None] * tq]) * row[:, None], (f - 1) * row, rcond=None)[0]
        p, q = np.concatenate([[1.0], z[:m]]), np.concatenate([[1.0], z[m:]])
        q_prev = np.polyval(q[::-1], t)
        e = np.polyval(p[::-1], t) / q_prev / f - 1
        if best is None or np.max(np.abs(e)) < best[0]:
            best = (np.max(np.abs(e)), p, q)
        if it >= 3:
            w = w * np.abs(e)
            w /= w.sum()
    err, p, q = best
    powers = scale ** np.arange(max(m, n) + 1)
    return err, p / powers[:m + 1], q / powers[:n + 1]


@njit(fastmath=False, cache=True)
def _tanh_f32_array(x, out):
    for i in range(x.size):
        out[i] = tanh_f32(x[i])


def tanh_f32_array(x: np.ndarray) -> np.ndarray:
    """:func:`tanh_f32` of every value of ``x`` (converted to float32), as a flat float32 array."""
    x = np.ascontiguousarray(x, dtype=np.float32).ravel()
    out = np.empty_like(x)
    _tanh_f32_array(x, out)
    return out


def ulp_error(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``|y - tanh x|`` in units of the float32 ulp of the exact ``tanh x`` (long double reference)."""
    exact = np.tanh(x.astype(np.longdouble))
    _, e = np.frexp(np.abs(exact).astype(np.float64))
    ulp = np.maximum(np.ldexp(1.0, e - 24), 2.0 ** -149)
    return (np.abs(y.astype(np.longdouble) - exact) / ulp).astype(np.float64)


def max_ulp_error(stride: int = 16, near: int = 1 << 16, chunk: int = 1 << 21):
    """Worst :func:`ulp_error` of :func:`tanh_f32` over every ``stride``-th float32 bit pattern in ``[0, c]``
    plus the ``near`` patterns nearest 0 and nearest ``c`` (both sides), in chunks of ``chunk`` values.

    Returns ``(max_ulp, x_at_max, count, fraction_above_half_ulp)``.
    """
    top = int(np.float32(CLAMP).view(np.int32))
    pieces = [(lo, min(lo + chunk * stride, top + 1), stride) for lo in range(0, top + 1, chunk * stride)]
    pieces += [(0, near, 1), (top - near, top + near, 1)]
    worst, where, count, above = 0.0, np.float32(0), 0, 0
    for lo, hi, step in pieces:
        x = np.arange(lo, hi, step, dtype=np.int32).view(np.float32)
        err = ulp_error(x, tanh_f32_array(x))
        i = int(np.argmax(err))
        if err[i] > worst:
            worst, where = float(err[i]), x[i]
        count += x.size
        above += int(np.count_nonzero(err > 0.5))
    return worst, where, count, above / count
