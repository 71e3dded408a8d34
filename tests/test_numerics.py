"""Numerical care: float32 data with a huge offset, the unstable one-pass variance, and non-contiguous input.

With mean = 1e4 × std, float32 holds each value to ~5e-4 std (the unit roundoff 6e-8 times 1e4), so no algorithm can
do much better than 1e-3 on the normalized output; the two-pass moments (mean first, then the mean square of the
centered data, accumulated in float64) get there. The textbook shortcut E[x²] − E[x]² subtracts two numbers of size
1e8 that agree in all but their last ~8 digits, which float32 does not have: it returns noise, often negative.
"""

import numpy as np
import pytest

from normref import nn
from normref._moments import mean_var, naive_var
from normref.testing.specs import all_specs

SET_SPECS = [s for s in all_specs() if s.set_ids is not None]
OFFSET = 1e4  # the mean, in units of the standard deviation (1)


def offset_float32(shape, seed=0):
    """float32 input with mean 1e4 and std 1; a different mean per element row would not change the story."""
    return (OFFSET + np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("spec", SET_SPECS, ids=[s.name for s in SET_SPECS])
def test_float32_with_a_huge_offset_matches_float64(spec):
    """Every standardizing layer: float32 output within 1e-3 of the float64 result on the same (float32) data."""
    for shape in spec.shapes:
        x32 = offset_float32(shape)
        layer = spec.make(tuple(shape), spec.affine[0])
        layer.train()
        y32 = layer.forward(x32)
        y64 = layer.forward(x32.astype(np.float64))
        assert y32.dtype == np.float32
        assert np.abs(y32 - y64).max() <= 1e-3 * max(1.0, np.abs(y64).max()), spec.name


@pytest.mark.parametrize("layer,axes,shape", [
    (nn.BatchNorm(4, affine=False), (0,), (512, 4)),
    (nn.BatchNorm(3, affine=False), (0, 2, 3), (16, 3, 8, 8)),
    (nn.LayerNorm(1024, elementwise_affine=False), (1,), (6, 1024)),
], ids=["BatchNorm1d", "BatchNorm2d", "LayerNorm"])
def test_two_pass_succeeds_where_the_naive_variance_fails(layer, axes, shape):
    """Same float32 data: two-pass moments are right to ~1e-6, E[x²] − E[x]² is off by > 1e-2 or negative."""
    x32 = offset_float32(shape, seed=7)
    x64 = x32.astype(np.float64)
    true_var = x64.var(axis=axes, keepdims=True)  # exact data, float64 two-pass: the reference

    _, var32 = mean_var(x32, axes)
    assert var32.dtype == np.float32
    assert np.max(np.abs(var32 / true_var - 1)) < 1e-5

    bad32 = naive_var(x32, axes)
    bad_error = np.abs(bad32 / true_var - 1)
    assert np.max(bad_error) > 1e-2 or np.any(bad32 < 0), (bad32.ravel(), true_var.ravel())

    # The layer (two-pass) is within 1e-3 of float64; normalizing with the naive variance is not (or is NaN).
    y32 = layer.forward(x32)
    y64 = layer.forward(x64)
    assert np.abs(y32 - y64).max() < 1e-3
    mean = x32.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    with np.errstate(invalid="ignore"):
        y_naive = (x32 - mean) / np.sqrt(bad32 + np.float32(1e-5))
    naive_error = np.abs(y_naive - y64)
    assert np.any(np.isnan(naive_error)) or naive_error.max() > 1e-2


def test_naive_variance_is_fine_without_an_offset():
    """The naive formula's failure is cancellation, not a bug: on centered data it agrees with two-pass."""
    x32 = np.random.default_rng(3).standard_normal((512, 4)).astype(np.float32)
    true_var = x32.astype(np.float64).var(axis=0, keepdims=True)
    assert np.max(np.abs(naive_var(x32, (0,)) / true_var - 1)) < 1e-4


def test_float64_two_pass_survives_a_1e8_offset():
    """The same conditioning story one precision up: float64 two-pass keeps ~1e-8 relative at mean = 1e8·std."""
    x = 1e8 + np.random.default_rng(4).standard_normal((1000, 2))
    _, var = mean_var(x, (0,))
    exact = (x - x.mean(axis=0, dtype=np.longdouble)).astype(np.float64).var(axis=0, keepdims=True)
    assert np.max(np.abs(var / exact - 1)) < 1e-6
    assert np.max(np.abs(naive_var(x, (0,)) / exact - 1)) > 1e-2


# -- non-contiguous input ------------------------------------------------------------------------------------------

def strided_views(values):
    """The same values as a Fortran-order copy, as a strided slice of a wider array, and with negative strides."""
    transposed = np.asfortranarray(values)
    wide = np.zeros(values.shape[:-1] + (2 * values.shape[-1],), values.dtype)
    wide[..., ::2] = values
    sliced = wide[..., ::2]  # a view with a stride of 2 on the last axis
    flip = (slice(None, None, -1),) * values.ndim
    reversed_view = np.ascontiguousarray(values[flip])[flip]  # negative strides on every axis
    views = (transposed, sliced, reversed_view) if values.ndim > 1 else (sliced, reversed_view)
    for view in views:
        np.testing.assert_array_equal(view, values)
    assert values.size <= 1 or not all(view.flags.c_contiguous for view in views)
    return views


CASES = [(spec, mode) for spec in all_specs() for mode in spec.modes]


@pytest.mark.parametrize("spec,mode", CASES, ids=[f"{s.name}-{m}" for s, m in CASES])
def test_non_contiguous_input_gives_the_contiguous_result(spec, mode):
    """Forward, backward, gradients and buffers from strided views of x and dy equal those of contiguous copies."""
    for shape in spec.shapes:
        def fresh():
            layer = spec.build(shape, spec.affine[0], rng=np.random.default_rng(0))
            return layer.train(mode == "train")

        rng = np.random.default_rng(11)
        x = spec.make_input(rng, tuple(shape))
        reference = fresh()
        y_ref = reference.forward(x)
        dy = rng.standard_normal(np.shape(y_ref))
        dx_ref = reference.backward(dy)
        for x_view, dy_view in zip(strided_views(x), strided_views(dy)):
            layer = fresh()
            np.testing.assert_allclose(layer.forward(x_view), y_ref, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(layer.backward(dy_view), dx_ref, rtol=1e-12, atol=1e-12)
            expected = dict(reference.named_grads())
            for name, grad in layer.named_grads():
                np.testing.assert_allclose(grad, expected[name], rtol=1e-12, atol=1e-12)
            expected = dict(reference.named_buffers())
            for name, value in layer.named_buffers():
                np.testing.assert_allclose(value, expected[name], rtol=1e-12, atol=1e-15)
