"""Every spec × mode × affine × shape passes the gradient checker on the NumPy reference (float64).

Tolerances are the checker's defaults (normref.testing.gradcheck): 1e-6 norm-relative for central differences
(observed ~1e-10, a derivation error shows at 1e-2) and 1e-11 for the complex step (observed ~1e-15).
"""

import numpy as np
import pytest

from normref.testing.gradcheck import check_layer
from normref.testing.specs import all_specs, check

CASES = [(spec, mode, affine, shape) for spec in all_specs() for mode in spec.modes for affine in spec.affine
         for shape in spec.shapes]


@pytest.mark.parametrize("spec,mode,affine,shape", CASES,
                         ids=[f"{s.name}-{m}-affine{a}-{'x'.join(map(str, sh))}" for s, m, a, sh in CASES])
def test_gradcheck(spec, mode, affine, shape):
    report = check(spec, mode=mode, affine=affine, shape=shape)
    assert report.passed, "\n" + report.table()


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_checker_catches_a_wrong_backward(spec):
    """The check must be able to fail: perturb the layer's dx by 1 % and the report must say FAIL."""
    rng = np.random.default_rng(3)
    shape = spec.shapes[0]
    layer = spec.build(shape, True)
    real_backward = layer.backward
    layer.backward = lambda dy: 1.01 * real_backward(dy)
    report = check_layer(layer, spec.make_input(rng, shape), rng=rng)
    assert not report.passed
