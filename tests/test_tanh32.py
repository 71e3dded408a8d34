"""The vectorizable float32 tanh of the Numba backend (normref/kernels/numba_cpu/_tanh.py) and its use in DyT.

The accuracy claim (≤ 0.5006 ulp: the final rounding plus the fit's 3.7e-11 relative error) is checked on a strided
sweep of the float32 bit patterns in [0, c], every pattern near 0 and near the clamp, and the worst point of the
exhaustive sweep recorded in the module docstring; the exact properties (odd bit for bit, ±0, NaN, ±inf, |t| ≤ 1,
monotonic) on the same values.
"""

import numpy as np
import pytest

import normref.functional as F
from normref.kernels.numba_cpu import _tanh
from normref.kernels.numba_cpu._tanh import CLAMP, clamp_point, fit_coefficients, tanh_f32_array, ulp_error

# The fit's worst relative error (3.72e-11) is 6.3e-4 of a float32 ulp at a result just below a power of two; the
# result is the float64 value rounded once, so no input can be off by more than 0.5 + 6.3e-4 ulp. A looser bound
# (1, 2, 3 ulp) would let a broken evaluation order or a wrong coefficient through.
BOUND_ULP = 0.5 + 3.73e-11 * 2 ** 24
# The worst points found (module docstring): of the exhaustive sweep (0.500621 ulp), of the stride-16 one (0.500614).
WORST_X = np.array([0x40A8F411, 0x41102A30], np.uint32).view(np.float32)  # 5.2797933, 9.0103

TOP = int(np.float32(CLAMP).view(np.int32))  # bit pattern of the clamp c


def patterns(lo, hi, step=1):
    return np.arange(lo, hi, step, dtype=np.int32).view(np.float32)


@pytest.fixture(scope="module")
def sweep():
    """Every 61st float32 in [0, c] (18 M values), the 2^14 patterns above 0 and either side of c, the worst
    point, c itself: sorted ascending, no duplicates."""
    x = np.concatenate([patterns(0, TOP + 1, 61), patterns(0, 1 << 14), patterns(TOP - (1 << 14), TOP + (1 << 14)),
                        WORST_X, [np.float32(CLAMP)]])
    x = np.unique(x)
    return x, tanh_f32_array(x)


def test_ulp_error_measures_what_it_says():
    """The ruler itself: a correctly rounded value is within 0.5 ulp, its neighbour is at least 0.5 ulp off."""
    x = np.float32([1e-30, 0.1, 0.5, 1.0, 3.0, 8.9])
    exact = np.tanh(x.astype(np.longdouble))
    rounded = exact.astype(np.float32)
    assert np.all(ulp_error(x, rounded) <= 0.5)
    assert np.all(ulp_error(x, np.nextafter(rounded, np.float32(0))) >= 0.5)
    assert np.all(ulp_error(x, np.nextafter(rounded, np.float32(2))) >= 0.5)


def test_ulp_bound_on_strided_sweep(sweep):
    x, t = sweep
    err = ulp_error(x, t)
    worst = int(np.argmax(err))
    assert err[worst] <= BOUND_ULP, (float(err[worst]), x[worst])
    assert np.all(ulp_error(WORST_X, tanh_f32_array(WORST_X)) > 0.5006)  # they are in the sweep, near the bound
    # almost every value is the correctly rounded one (exhaustively: all but 4e-5 of them)
    assert np.count_nonzero(err > 0.5) <= 1e-3 * x.size


def test_tiny_inputs_are_returned_exactly(sweep):
    """For |x| < 2^-12, tanh x = x(1 - x²/3 + ...) rounds to x itself in float32, subnormals included."""
    x, t = sweep
    tiny = x < 2.0 ** -12
    assert np.count_nonzero(tiny) > 10_000
    assert np.array_equal(t[tiny].view(np.int32), x[tiny].view(np.int32))


def test_odd_symmetry_is_bitwise_and_signed_zero(sweep):
    x, t = sweep
    t_neg = tanh_f32_array(-x)
    assert np.array_equal(t_neg.view(np.int32), (t.view(np.uint32) ^ np.uint32(0x80000000)).view(np.int32))
    z = tanh_f32_array(np.float32([0.0, -0.0]))
    assert np.all(z == 0) and list(np.signbit(z)) == [False, True]


def test_monotonic_and_bounded(sweep):
    """Non-decreasing over the sorted sweep, every pattern in a window where tanh rises by far less than an ulp
    per input (around x = 5), and the 2^15 patterns around the clamp; |t| ≤ 1 everywhere."""
    x, t = sweep
    assert np.all(np.diff(t) >= 0)
    flat = tanh_f32_array(patterns(int(np.float32(5).view(np.int32)), int(np.float32(5).view(np.int32)) + (1 << 18)))
    assert np.all(np.diff(flat) >= 0)
    assert np.all(np.abs(t) <= 1)


def test_clamp_nan_and_infinities():
    assert clamp_point() == np.float32(CLAMP)
    below = np.nextafter(np.float32(CLAMP), np.float32(0))
    assert np.tanh(np.longdouble(below)).astype(np.float32) < 1  # c is the smallest float32 with fl32(tanh) = 1
    big = np.float32([CLAMP, 9.5, 20.0, 1e30, np.finfo(np.float32).max, np.inf])
    assert np.all(tanh_f32_array(big) == 1) and np.all(tanh_f32_array(-big) == -1)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF], np.uint32).view(np.float32)
    assert np.all(np.isnan(tanh_f32_array(nans)))


def test_coefficients_regenerate():
    """The docstring's recipe (fit_coefficients) gives the stored coefficients back, and their fit error."""
    err, p, q = fit_coefficients()
    assert 3.6e-11 < err < 3.8e-11
    np.testing.assert_allclose(p, [_tanh.P0, _tanh.P1, _tanh.P2, _tanh.P3, _tanh.P4, _tanh.P5], rtol=1e-6)
    np.testing.assert_allclose(q, [_tanh.Q0, _tanh.Q1, _tanh.Q2, _tanh.Q3, _tanh.Q4, _tanh.Q5], rtol=1e-6)
    assert np.all(p > 0) and np.all(q > 0)  # Horner adds positive terms for s = x² ≥ 0


@pytest.mark.parametrize("channels_last", [True, False])
def test_dyt_numba_float32_uses_it(channels_last):
    """The float32 DyT forward stores t = tanh_f32(fl32(α·x)) bit for bit, and y is within 1e-5 norm-relative of
    the NumPy reference (float64 keeps np.tanh: within 1e-12)."""
    rng = np.random.default_rng(5)
    shape = (6, 40, 33) if channels_last else (6, 4, 330)
    channels = shape[-1] if channels_last else shape[1]
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        x.flat[:4] = [np.inf, -np.inf, 0.0, -0.0]
        alpha = np.array([-1.3], dtype)
        gamma, beta = rng.standard_normal(channels).astype(dtype), rng.standard_normal(channels).astype(dtype)
        y, cache = F.forward("dyt", x, alpha, gamma, beta, backend="numba", channels_last=channels_last)
        y_ref, _ = F.forward("dyt", x, alpha, gamma, beta, backend="numpy", channels_last=channels_last)
        assert y.dtype == dtype
        assert np.max(np.abs(y - y_ref)) <= tol * np.max(np.abs(y_ref))
        if dtype == np.float32:
            want = tanh_f32_array((alpha[0] * x).ravel())
            assert np.array_equal(cache.t.ravel().view(np.int32), want.view(np.int32))
        assert list(cache.t.ravel()[:2]) == [-1, 1]


def test_wide_value_rounds_to_tanh_f32(sweep):
    """``tanh_f32_wide`` (float64, for EvoNorm-S0's sigmoid) rounds to ``tanh_f32`` bit for bit, and stays within the
    fit's 3.72e-11 relative error of the float64 tanh inside the clamp."""
    from numba import njit

    @njit
    def both(x):
        wide, narrow = np.empty(x.size), np.empty(x.size, np.float32)
        for i in range(x.size):
            wide[i], narrow[i] = _tanh.tanh_f32_wide(x[i]), _tanh.tanh_f32(x[i])
        return wide, narrow

    x = sweep[0][::90]  # ~200 k values across [0, c], sorted
    wide, narrow = both(x)
    assert np.array_equal(wide.astype(np.float32).view(np.uint32), narrow.view(np.uint32))
    inside = (np.abs(x) > 1e-3) & (np.abs(x) < CLAMP)
    exact = np.tanh(x[inside].astype(np.float64))
    assert np.max(np.abs(wide[inside] / exact - 1)) < 4e-11  # the fit's 3.72e-11 plus float64 evaluation
