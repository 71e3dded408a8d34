"""``normref.gradcheck``: the gradient checker, importable under its short public name.

The implementation lives in :mod:`normref.testing.gradcheck` (beside the spec table that drives it); this module
re-exports its public API so that ``from normref.gradcheck import check_layer`` works.
"""

from .testing.gradcheck import (COMPLEX_STEP, COMPLEX_TOL, CENTRAL_STEP, CENTRAL_TOL, CheckRow, GradcheckReport,
                                check_function, check_layer, elementwise_rel_error, norm_rel_error, numerical_vjp,
                                random_params)

__all__ = ["COMPLEX_STEP", "COMPLEX_TOL", "CENTRAL_STEP", "CENTRAL_TOL", "CheckRow", "GradcheckReport",
           "check_function", "check_layer", "elementwise_rel_error", "norm_rel_error", "numerical_vjp",
           "random_params"]
