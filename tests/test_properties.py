"""Properties every standardizing layer has, checked by hypothesis on the spec table.

A spec with ``set_ids`` declares that, in training mode with a unit affine, its output standardizes ``x`` over each
set: mean 0 (``centered``) and variance ``v/(v+eps)``, or, without centering, mean square ``q/(q+eps)``. Two more
properties follow and are checked separately, because a backward can be wrong while the forward is right:

* invariance: a per-set positive rescaling of ``x`` (and, if centered, a per-set shift) leaves ``y`` unchanged, up
  to the ``eps`` inside the square root;
* orthogonality: for any ``dy`` and any ``gamma``, ``dx`` is orthogonal to ``1`` (if centered) and to ``x̂`` (up to
  a term proportional to ``eps/(v+eps)``) over each set, the infinitesimal version of the invariances.

A new layer gets these tests by adding a spec; a layer for which a property does not hold says so through its spec
fields (``centered=False``, or ``set_ids=None`` for a layer that is not a standardization over sets).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normref.testing.specs import all_specs

SET_SPECS = [s for s in all_specs() if s.set_ids is not None]
SPEC_IDS = [s.name for s in SET_SPECS]
FEW = settings(max_examples=15, deadline=None)


def layer_eps(layer, dtype) -> float:
    """The ``eps`` a layer adds to the variance; ``None`` is the machine epsilon of the input (RMSNorm's default)."""
    eps = getattr(layer, "eps", None)
    return float(np.finfo(dtype).eps) if eps is None else float(eps)


def unit_layer(spec, shape):
    """A fresh layer in training mode whose output is ``x̂`` itself: no affine, or gamma = 1 and beta = 0."""
    layer = spec.make(tuple(shape), False not in spec.affine)
    for name in layer.params:
        if name == "gamma":
            layer.params[name] = np.ones_like(layer.params[name])
        elif name == "beta":
            layer.params[name] = np.zeros_like(layer.params[name])
    return layer.train()


def set_moments(values, ids):
    """Per-set count, mean, biased variance and mean square of ``values`` (sets given by the integer ``ids``)."""
    ids = np.asarray(ids).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    count = np.bincount(ids)
    mean = np.bincount(ids, values) / count
    var = np.bincount(ids, (values - mean[ids]) ** 2) / count
    mean_sq = np.bincount(ids, values * values) / count
    return count, mean, var, mean_sq


def set_dot(a, b, ids):
    """Per-set inner product of two arrays of the same shape."""
    return np.bincount(np.asarray(ids).ravel(), (np.asarray(a) * np.asarray(b)).ravel())


def set_norm(a, ids):
    return np.sqrt(set_dot(a, a, ids))


def draw_input(spec, data):
    """A shape from the spec, and its input ``scale·make_input + shift`` with hypothesis-chosen scale and shift."""
    shape = data.draw(st.sampled_from(spec.shapes), label="shape")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    scale = 10.0 ** data.draw(st.floats(-3.0, 3.0), label="log10 scale")
    shift = data.draw(st.floats(-1e3, 1e3), label="shift (in units of scale)")
    rng = np.random.default_rng(seed)
    return shape, scale * (spec.make_input(rng, shape) + shift), rng


@pytest.mark.parametrize("spec", SET_SPECS, ids=SPEC_IDS)
@FEW
@given(data=st.data())
def test_output_is_standardized_over_each_set(spec, data):
    """Mean 0 and variance v/(v+eps) per set (mean square q/(q+eps) without centering), including v ≈ eps."""
    shape, x, _ = draw_input(spec, data)
    layer = unit_layer(spec, shape)
    y = layer.forward(x)
    ids = spec.set_ids(shape)
    eps = layer_eps(layer, x.dtype)
    _, x_mean, x_var, x_mean_sq = set_moments(x, ids)
    _, y_mean, y_var, y_mean_sq = set_moments(y, ids)
    if spec.centered:
        # |mean y| is rounding only: the mean of x is known to ~1e-16·|x|, i.e. 1e-16·|shift|/std in units of y.
        assert np.max(np.abs(y_mean)) < 1e-9
        np.testing.assert_allclose(y_var, x_var / (x_var + eps), rtol=1e-8)
    else:
        np.testing.assert_allclose(y_mean_sq, x_mean_sq / (x_mean_sq + eps), rtol=1e-8)


@pytest.mark.parametrize("spec", SET_SPECS, ids=SPEC_IDS)
@FEW
@given(data=st.data())
def test_invariant_to_per_set_scale_and_shift(spec, data):
    """y(a·x + b) = y(x) for a positive a and (if centered) any b constant on each set; only scale otherwise."""
    shape = data.draw(st.sampled_from(spec.shapes), label="shape")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = spec.make_input(rng, shape)
    ids = spec.set_ids(shape)
    num_sets = int(ids.max()) + 1
    a = 10.0 ** rng.uniform(-0.3, 2.0, num_sets)  # 0.5 to 100
    b = rng.uniform(-50.0, 50.0, num_sets) if spec.centered else np.zeros(num_sets)
    x_moved = a[ids] * x + b[ids]
    layer = unit_layer(spec, shape)
    y = layer.forward(x)
    y_moved = layer.forward(x_moved)
    # The invariance is exact for eps = 0; eps changes rstd by a relative eps/(2v) at most (v the smaller variance).
    eps = layer_eps(layer, x.dtype)
    spread = 2 if spec.centered else 3  # index of the variance, or of the mean square, in set_moments
    smallest = min(set_moments(x, ids)[spread].min(), set_moments(x_moved, ids)[spread].min())
    tol = 1e-10 + eps / smallest * np.abs(y).max()
    assert np.abs(y_moved - y).max() <= tol
    # And it must not be vacuous: the input really moved.
    assert np.abs(x_moved - x).max() > 1.0


AFFINE_CASES = [(spec, affine) for spec in SET_SPECS for affine in spec.affine]


@pytest.mark.parametrize("spec,affine", AFFINE_CASES, ids=[f"{s.name}-affine{a}" for s, a in AFFINE_CASES])
@FEW
@given(data=st.data())
def test_dx_orthogonal_to_ones_and_xhat(spec, affine, data):
    """Over each set: <dx, 1> = 0 (centered) and <dx, x̂> = O(eps/v), for random dy, with unit or random gamma."""
    shape = data.draw(st.sampled_from(spec.shapes), label="shape")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = spec.make_input(rng, shape)
    ids = spec.set_ids(shape)
    xhat = unit_layer(spec, shape).forward(x)
    layer = spec.make(tuple(shape), affine).train()
    for name, value in layer.params.items():  # gamma of either sign, away from 0; everything else ~ N(0, 1)
        random = rng.choice([-1.0, 1.0], value.shape) * rng.uniform(0.5, 2.0, value.shape) if name == "gamma" \
            else rng.standard_normal(value.shape)
        layer.params[name] = random.astype(value.dtype)
    layer.forward(x)
    dy = rng.standard_normal(shape)
    dx = layer.backward(dy)

    eps = layer_eps(layer, x.dtype)
    count, _, var, mean_sq = set_moments(x, ids)
    spread = var if spec.centered else mean_sq
    gamma_max = max([np.abs(p).max() for n, p in layer.params.items() if n == "gamma"], default=1.0)
    # Scale of one set's dx: |dx| <= rstd·|g| with g = gamma·dy. From the fused formula, per set,
    # <dx, x̂> = rstd·<g, x̂>·eps/(v+eps) exactly, so by Cauchy-Schwarz the ratio below is at most eps/(v+eps).
    unit = set_norm(dy, ids) * gamma_max / np.sqrt(spread + eps)
    ratio_xhat = np.abs(set_dot(dx, xhat, ids)) / (unit * set_norm(xhat, ids))
    assert np.all(ratio_xhat <= 1e-12 + 1.01 * eps / (spread + eps)), ratio_xhat
    if spec.centered:  # <dx, 1> = -rstd·mean(g·x̂)·sum(x̂) = 0 exactly, for any gamma
        ratio_ones = np.abs(set_dot(dx, np.ones(shape), ids)) / (unit * np.sqrt(count))
        assert np.all(ratio_ones <= 1e-12), ratio_ones
    # Not vacuous: dx itself is of the size of rstd·|g|.
    assert np.max(set_norm(dx, ids) / unit) > 0.1


@pytest.mark.parametrize("spec", SET_SPECS, ids=SPEC_IDS)
def test_orthogonality_check_can_fail(spec):
    """The orthogonality test must catch a backward that forgets the statistics: dx = rstd·dy is not orthogonal."""
    shape = spec.shapes[0]
    rng = np.random.default_rng(5)
    x = spec.make_input(rng, shape)
    ids = spec.set_ids(shape)
    layer = unit_layer(spec, shape)
    xhat = layer.forward(x)
    dy = rng.standard_normal(shape)
    eps = layer_eps(layer, x.dtype)
    spread = set_moments(x, ids)[2 if spec.centered else 3]
    unit = set_norm(dy, ids) / np.sqrt(spread + eps)
    dx_good = layer.backward(dy)
    dx_frozen = dy / np.sqrt(spread + eps)[ids]  # the gradient with the statistics held constant
    for dx, expect_orthogonal in ((dx_good, True), (dx_frozen, False)):
        ratio = np.abs(set_dot(dx, xhat, ids)) / (unit * set_norm(xhat, ids))
        assert bool(np.all(ratio <= 1e-12 + 1.01 * eps / (spread + eps))) is expect_orthogonal
