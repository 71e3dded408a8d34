r"""Moments: the one place where normref computes means and variances.

Every normalizer in the package reduces its input to a mean and a (biased) variance, or to a mean square, over some
set of axes. They all come here, so that the numerically stable algorithm is written once.

Two-pass moments (the default)
------------------------------
.. math::

    \mu = \frac{1}{m}\sum_i x_i, \qquad \sigma^2 = \frac{1}{m}\sum_i (x_i - \mu)^2
    - \Bigl(\frac{1}{m}\sum_i (x_i - \mu)\Bigr)^2 .

The last term is zero in exact arithmetic; in floating point it cancels the error left by rounding :math:`\mu` to
the storage dtype (the *corrected* two-pass algorithm). Sums accumulate in at least float64.

The second pass subtracts the mean *before* squaring, so the result does not suffer the catastrophic cancellation of
the textbook shortcut :math:`E[x^2] - E[x]^2`, which loses about :math:`2\log_{10}(|\mu|/\sigma)` digits and can even
go negative. ``naive_var`` implements that shortcut only so that tests and figures can show it failing.

The formulas contain no ``abs`` and no conjugation, so for complex input they are the analytic continuation of the
real ones: :math:`\mathrm{Im}\,f(x + ih v)/h` is then the directional derivative of :math:`f`, the complex-step trick
that ``normref.gradcheck`` relies on.

Welford and Chan (streaming and merging)
----------------------------------------
Welford's update folds one value into a running ``(count, mean, M2)``, with ``M2 = Σ (x - mean)^2``:

.. math::

    n \leftarrow n+1,\quad \delta = x - \mu,\quad \mu \leftarrow \mu + \delta/n,\quad M_2 \leftarrow M_2 + \delta\,(x-\mu).

Chan et al.'s merge combines two partial results, which is what a parallel kernel or an all-reduce across ranks
(SyncBatchNorm) does:

.. math::

    n = n_a + n_b,\quad \delta = \mu_b - \mu_a,\quad \mu = \mu_a + \delta\,n_b/n,\quad
    M_2 = M_{2,a} + M_{2,b} + \delta^2 n_a n_b / n .

Both are written here in plain Python/NumPy; the Numba and CUDA kernels mirror them line for line.
"""

from __future__ import annotations

import numpy as np


def accumulation_dtype(dtype) -> np.dtype:
    """The dtype sums are accumulated in: at least double precision, so float32 storage keeps float64 sums.

    NumPy sums pairwise only along a contiguous axis; across outer axes (BatchNorm's N) it adds sequentially, and
    float32 then loses digits in proportion to the count. Accumulating in float64 removes that, at no cost in
    memory (NumPy casts in buffered chunks). Results are cast back to the input's dtype.
    """
    return np.promote_types(dtype, np.float64)


def mean_var(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass mean and biased variance of ``x`` over ``axes``, with the reduced axes kept (size 1).

    Args:
        x: any shape ``S``, float or complex.
        axes: the axes to reduce over.

    Returns:
        ``(mean, var)``, each of shape ``S`` with ``axes`` set to 1, in ``x``'s dtype (accumulated in at least
        float64).
    """
    acc = accumulation_dtype(x.dtype)
    mean = x.mean(axis=axes, dtype=acc, keepdims=True).astype(x.dtype, copy=False)
    centered = x - mean
    # Corrected two-pass (Chan, Golub & LeVeque 1983): `mean` was rounded to x's dtype, so the residuals have a
    # small mean of their own; subtracting its square removes the first-order error that rounding leaves in the
    # variance (for float32 data far from zero it is the dominant error). Analytically the term is zero, so the
    # formula stays the same function of x, complex step included.
    residual_mean = centered.mean(axis=axes, dtype=acc, keepdims=True)
    var = (centered * centered).mean(axis=axes, dtype=acc, keepdims=True) - residual_mean * residual_mean
    return mean, var.astype(x.dtype, copy=False)


def mean_square(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mean of ``x**2`` over ``axes`` (kept as size 1): RMSNorm's and PowerNorm's quadratic mean."""
    acc = accumulation_dtype(x.dtype)
    return (x * x).mean(axis=axes, dtype=acc, keepdims=True).astype(x.dtype, copy=False)


def naive_var(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The unstable one-pass variance ``E[x²] − E[x]²``. For demonstrations only: never used by a layer."""
    mean = x.mean(axis=axes, keepdims=True)
    return (x * x).mean(axis=axes, keepdims=True) - mean * mean


def welford(values) -> tuple[int, float, float]:
    """Streaming ``(count, mean, M2)`` of a 1-D sequence, one value at a time (Welford 1962).

    The biased variance is ``M2 / count``. This loop is the scalar algorithm that the compiled kernels use per thread.
    """
    count, mean, m2 = 0, 0.0, 0.0
    for value in values:
        count += 1
        delta = value - mean
        mean += delta / count
        m2 += delta * (value - mean)
    return count, mean, m2


def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Merge two partial ``(count, mean, M2)`` triples (Chan, Golub & LeVeque 1979). Works elementwise on arrays.

    Uneven counts are handled exactly, which is what SyncBatchNorm needs when ranks hold different batch sizes.
    A part with ``count == 0`` contributes nothing.
    """
    count = count_a + count_b
    safe = np.where(count == 0, 1, count)
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / safe)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / safe)
    return count, mean, m2
