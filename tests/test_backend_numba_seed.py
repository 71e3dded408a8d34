"""Seed layers on the "numba" backend against the NumPy reference: Batch-Channel Normalization.

BCN on "numba" is the BatchNorm and GroupNorm kernels composed (normref/kernels/numba_cpu/batch_channel_norm.py).
Agreement is the norm-relative error max|a-b|/max|b| of y and every gradient: <= 1e-12 in float64, <= 1e-5 in float32
(the same tolerances, and reasons, as tests/test_backend_numba.py). The gradient checker runs on the BCN specs.
"""

import numpy as np
import pytest

from normref import functional as F
from normref.testing.gradcheck import norm_rel_error
from normref.testing.specs import all_specs, check

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def run(backend, x, params, dy, **hyper):
    y, cache = F.forward("batch_channel_norm", x, *params, backend=backend, **hyper)
    return y, cache, F.backward("batch_channel_norm", dy, cache)


# Every GroupNorm-stage group holds >= 4 values: with 2 values (e.g. (5, 6), G=3) or with N=1, G=C (the BN stage
# then already normalizes each group) the stage's output barely depends on its input, dx is rounding noise ~1e-10,
# and a relative comparison of noise is meaningless.
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,groups", [((3, 6, 5, 3), 3), ((5, 12), 3), ((2, 4, 7), 2), ((3, 4, 700), 2)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("given", [False, True])
def test_batch_channel_norm_agrees(shape, groups, affine, given, dtype):
    rng = np.random.default_rng(0)
    c = shape[1]
    x = (4 * rng.standard_normal(shape) + 7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = ([rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype),
               rng.standard_normal(groups).astype(dtype), rng.standard_normal(groups).astype(dtype)]
              if affine else [None] * 4)
    stats = (rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 3, c).astype(dtype)) if given else None
    y_ref, _, grads_ref = run("numpy", x, params, dy, num_groups=groups, stats=stats)
    y, cache, grads = run("numba", x, params, dy, num_groups=groups, stats=stats)
    assert cache.backend == "numba" and y.dtype == dtype
    assert norm_rel_error(y, y_ref) <= TOL[dtype]
    for got, want in zip(grads, grads_ref):
        if want is None:
            assert got is None
            continue
        assert got.shape == want.shape and got.dtype == want.dtype
        assert norm_rel_error(got, want) <= TOL[dtype]


def test_batch_channel_norm_rejects_complex():
    x = np.ones((2, 4, 3), complex)
    with pytest.raises(TypeError, match="x must have a float32 or float64 dtype"):
        F.forward("batch_channel_norm", x, backend="numba", num_groups=2)
    with pytest.raises(TypeError, match="group_gamma"):
        F.forward("batch_channel_norm", x.real, None, None, np.ones(2, complex), backend="numba", num_groups=2)


SPECS = [s for s in all_specs() if s.op == "batch_channel_norm"]
CASES = [(s, mode, affine) for s in SPECS for mode in s.modes for affine in s.affine]


def test_specs_exist():
    assert len(SPECS) >= 1


@pytest.mark.parametrize("spec,mode,affine", CASES, ids=[f"{s.name}-{m}-affine{a}" for s, m, a in CASES])
def test_gradcheck_on_numba(spec, mode, affine):
    report = check(spec, mode=mode, affine=affine, backend="numba")
    assert report.passed, "\n" + report.table()
