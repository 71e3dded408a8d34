r"""The ``"numba-fast"`` sums: plain loops, compiled with reassociation so that LLVM vectorizes them in registers.

Each function here is a reduction written the obvious way, ``t += v[j]``. Compiled with
``fastmath={"reassoc", "contract"}`` (:data:`SUMS`), LLVM's loop vectorizer may split ``t`` into several SIMD
registers of partial sums (8 float32 per AVX2 register, times its interleave factor, typically 4) and add them
up at the end: no lane array in memory, no alias checks, one load and one add per 8 values. The order of the
additions is then the compiler's choice, fixed by the vector width of the machine the code was compiled for (see
the package docstring for what that gives up).

Blocks
------
The sums of a float32 vector run in the storage dtype within blocks of :data:`BLOCK` consecutive values, and each
block's total is added into a float64 accumulator; float64 input is float64 throughout (the blocks change nothing
then). Measured on one thread, 256×1024 float32 rows in cache, the float32 moments cost 0.25 ns/value with blocks of
256, 0.22 with 512 and 0.20 with 1024; accumulating every value straight into float64 instead (``t += float(v[j])``,
vectorized with conversions) cost 0.34 ns/value, and made the whole forward only 15 % faster than the exact
backend's, against 45 % with float32 blocks.

**Error bound** (u = 2⁻²⁴ for float32, 2⁻⁵³ for float64; Higham, *Accuracy and Stability*, §4.2). Whatever order
the compiler picks inside a block of ``B`` terms ``t_j``, the rounded block total is within ``(B - 1)·u·Σ|t_j|``
of the exact one, and the float64 stage adds ``⌈n/B⌉·u₆₄`` relative; so for the whole sum

.. math::

    \Bigl|\widehat{\textstyle\sum_j t_j} - \textstyle\sum_j t_j\Bigr|
    \le \bigl((B - 1)\,u + \lceil n/B\rceil\,u_{64}\bigr)\textstyle\sum_j |t_j| ,

``255 u ≈ 1.5e-5`` relative to ``Σ|t|`` for float32, on *any* machine (even unvectorized). That is the worst
case over all orders; the order LLVM actually uses on AVX2 (``P = 32`` partial sums of ``B/P`` terms each, then a
tree of ``log₂ P``) gives ``(B/P + log₂ P)·u = 13u ≈ 8e-7``, the same as the exact backend's ``16u``. Where it lands
in each result is as derived in :mod:`normref.kernels.numba_cpu._common` (the corrected two-pass mean stays
offset-independent, the variance relative, ``c1``/``c2`` absolute in ``mean|g|``), with ``D`` replaced by this
bound's factor.

What must *not* be reassociated
-------------------------------
Reassociation is allowed here and nowhere else: the kernels (:mod:`._rowwise`, :mod:`._colwise`) are compiled with
``contract`` only. The reason is the centered difference ``x - m``. ``reassoc`` permits LLVM to distribute
``(x - m)·s`` into ``x·s - m·s``, which cancels when ``|m| ≫ std``: a float32 row ``1000 + 0.01·N(0, 1)`` would get
``x̂`` wrong in the third digit. LLVM does exactly that when ``m`` and ``s`` are constants (seen in the assembly of
a test loop: one FMA, no subtraction); with the run-time ``m`` and ``s`` of the kernels it currently does not (also
checked: the same kernels compiled with ``reassoc`` gave the same bits), but that is an optimizer's choice of the
day, not a guarantee, so the elementwise code does not get the licence. The sums below keep the difference a
difference, each summand with at most one loop-invariant operand (``x - m``, ``dy·(x - m)``), and the tests run
the far-from-zero case through every op on this backend (and fail, checked, for a distributed ``x·s - m·s``).
"""

from __future__ import annotations

from numba import njit

# Reassociation (the licence to vectorize a reduction) and contraction (a*b + c as one FMA, rounded once).
# Not "nnan"/"ninf": with them LLVM may assume no NaN or infinity and fold comparisons and max() away, so a NaN or
# inf in x would no longer propagate like the reference. Not "nsz" (signs of zero) or "arcp" (x/y as x·(1/y),
# an extra rounding): measured, neither changes the speed of these loops.
FASTMATH = frozenset({"reassoc", "contract"})
SUMS = dict(fastmath=set(FASTMATH), cache=True)

# Values summed in the storage dtype before the block's total goes into float64 (the error bound's B).
BLOCK = 256


# Each sum is a loop over blocks calling a block helper on the slice ``v[b:b + BLOCK]``, whose loop runs from 0 to
# the slice's size. Written as one loop nest instead (``for j in range(b, min(n, b + BLOCK))``), LLVM 20 (llvmlite
# 0.50, Numba 0.68) leaves the inner loop scalar: measured on one thread, 256×1000 float32 rows in cache, the shifted
# sum cost 1.48 ns/value that way, 0.45 with a fixed trip count plus a tail loop, and 0.14 as written here.


@njit(**SUMS)
def _block_shifted(w, shift):
    t = w.dtype.type(0)
    for j in range(w.size):
        t += w[j] - shift
    return t


@njit(**SUMS)
def shifted_total(v, shift):
    """``Σ_j (v[j] - shift)`` in float64 (float32 blocks of :data:`BLOCK` for float32 ``v``)."""
    total = 0.0
    for b in range(0, v.size, BLOCK):
        total += _block_shifted(v[b:b + BLOCK], shift)
    return total


@njit(**SUMS)
def _block_centered(w, m):
    a1 = a2 = w.dtype.type(0)
    for j in range(w.size):
        d = w[j] - m
        a1 += d
        a2 += d * d
    return a1, a2


@njit(**SUMS)
def centered_sums(v, m):
    """``(Σ_j d_j, Σ_j d_j²)``, ``d = v - m``, in float64: the second pass of :func:`moments`."""
    s1 = s2 = 0.0
    for b in range(0, v.size, BLOCK):
        a1, a2 = _block_centered(v[b:b + BLOCK], m)
        s1 += a1
        s2 += a2
    return s1, s2


@njit(**SUMS)
def moments(v):
    """``(mean, var)`` of a 1-D vector, float64: the corrected two-pass algorithm, as the exact backend.

    Pass 1: ``μ₁ = K + Σ(v - K)/n`` with ``K = v[0]``. Pass 2, with ``m = μ₁`` rounded to the storage dtype:
    ``mean = m + S₁/n``, ``var = S₂/n - (S₁/n)²`` from ``S₁ = Σ(v - m)``, ``S₂ = Σ(v - m)²``; never
    :math:`E[x^2]-E[x]^2`.
    """
    n = v.size
    shift = v[0]
    m = v.dtype.type(shift + shifted_total(v, shift) / n)
    s1, s2 = centered_sums(v, m)
    c = s1 / n
    return m + c, max(s2 / n - c * c, 0.0)


@njit(**SUMS)
def _block_squares(w):
    t = w.dtype.type(0)
    for j in range(w.size):
        t += w[j] * w[j]
    return t


@njit(**SUMS)
def sum_squares(v):
    """``Σ_j v[j]²`` in float64: RMSNorm's mean square (nothing to cancel, no shift)."""
    total = 0.0
    for b in range(0, v.size, BLOCK):
        total += _block_squares(v[b:b + BLOCK])
    return total


@njit(**SUMS)
def _block_dots(dy, x, m):
    pb = qb = x.dtype.type(0)
    for j in range(x.size):
        pb += dy[j] * (x[j] - m)
        qb += dy[j]
    return pb, qb


@njit(**SUMS)
def dot_sums(dy, x, m):
    """``(Σ_j dy[j]·(x[j] - m), Σ_j dy[j])`` in float64: a BatchNorm slice or a GroupNorm segment's backward sums."""
    p = q = 0.0
    for b in range(0, x.size, BLOCK):
        pb, qb = _block_dots(dy[b:b + BLOCK], x[b:b + BLOCK], m)
        p += pb
        q += qb
    return p, q


@njit(**SUMS)
def _block_gamma_dots(gamma, dy, x, m):
    pb = qb = x.dtype.type(0)
    for j in range(x.size):
        g = gamma[j] * dy[j]
        pb += g * (x[j] - m)
        qb += g
    return pb, qb


@njit(**SUMS)
def gamma_dot_sums(gamma, dy, x, m):
    """``(Σ_j g_j·(x[j] - m), Σ_j g_j)``, ``g = γ·dy``, in float64: a LayerNorm/RMSNorm row's backward sums."""
    p = q = 0.0
    for b in range(0, x.size, BLOCK):
        pb, qb = _block_gamma_dots(gamma[b:b + BLOCK], dy[b:b + BLOCK], x[b:b + BLOCK], m)
        p += pb
        q += qb
    return p, q
