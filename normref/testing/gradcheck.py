r"""The gradient checker: hand-derived backward passes against numerical derivatives.

Every check compares a vector-Jacobian product. For a function :math:`y = f(x)` and a random upstream gradient
:math:`dy`, the analytic backward returns :math:`dx = J^\top dy`; the checker estimates the same quantity
numerically in one of four ways:

``central``
    Elementwise central differences, :math:`dx_i \approx \langle dy, f(x + h e_i) - f(x - h e_i)\rangle / 2h`.
    Two forwards per element, error :math:`O(h^2)` truncation plus :math:`O(\epsilon_{mach}/h)` rounding.
``complex``
    Elementwise complex step, :math:`dx_i \approx \langle dy, \operatorname{Im} f(x + i h e_i)\rangle / h` with
    :math:`h = 10^{-20}`. No subtraction, so no cancellation: exact to machine precision for any tiny ``h``. It needs a
    forward that is the analytic continuation of the real one (no ``abs``, no conjugation, no branch on a complex
    value); the NumPy reference ops are written that way.
``central-dir`` / ``complex-dir``
    The same along a few random directions :math:`v`: :math:`\langle dx, v\rangle` against
    :math:`\langle dy, J v\rangle`. Two (or one) forwards per direction, so large tensors and slow backends are
    checked cheaply. Used automatically above ``max_elements`` elements.

The error reported is the norm-relative error :math:`\max|a-b| / \max|b|` (``b`` the numerical estimate), which is
what the tests assert on; the elementwise relative error is dominated by entries of the gradient that happen to be near
zero and is not used for pass/fail.

Stateful layers are checked through :func:`check_layer`, which snapshots parameters and buffers, restores the
buffers before *every* probe (a training forward updates running statistics), and puts everything back afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Callable

import numpy as np

CENTRAL_STEP = 1e-6  # relative to the tensor's scale: balances O(h²) truncation against O(eps/h) rounding
COMPLEX_STEP = 1e-20  # any tiny step works: the complex step has no cancellation
# Default tolerances on the norm-relative error, in float64. Central differences with h = 1e-6·scale leave about
# 1e-9 of truncation and rounding error on these O(1)-conditioned layers, so 1e-6 fails any real derivation mistake
# (which shows up at 1e-2 or worse) with three decades of margin. The complex step is exact up to rounding in the
# forward, about 1e-15; 1e-11 leaves room for conditioning by large input offsets.
CENTRAL_TOL = 1e-6
COMPLEX_TOL = 1e-11


@dataclasses.dataclass
class CheckRow:
    """One comparison: an input tensor checked by one method."""

    tensor: str
    method: str  # "central", "complex", "central-dir" or "complex-dir"
    max_abs_err: float
    norm_rel_err: float
    tol: float
    probes: int  # number of numerical probes (elements or directions)

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.norm_rel_err) and self.norm_rel_err <= self.tol)


@dataclasses.dataclass
class GradcheckReport:
    """The result of a gradient check: one row per (tensor, method). Shared by tests, tutorials and the CLI."""

    title: str
    rows: list[CheckRow]

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.passed for row in self.rows)

    def worst(self, method_prefix: str = "") -> float:
        errs = [r.norm_rel_err for r in self.rows if r.method.startswith(method_prefix)]
        return max(errs) if errs else float("nan")

    def table(self) -> str:
        head = f"{'tensor':<10} {'method':<12} {'probes':>6} {'max abs err':>12} {'norm-rel err':>12} " \
               f"{'tol':>8}  status"
        lines = [self.title, head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.tensor:<10} {r.method:<12} {r.probes:>6} {r.max_abs_err:>12.2e} "
                         f"{r.norm_rel_err:>12.2e} {r.tol:>8.0e}  {'pass' if r.passed else 'FAIL'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"title": self.title, "passed": self.passed,
                "rows": [dict(dataclasses.asdict(r), passed=r.passed) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        return self.table()


def norm_rel_error(a, b) -> float:
    """``max|a - b| / max|b|``: the assertion metric. Returns ``max|a-b|`` itself when ``b`` is exactly zero."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {a.shape} and {b.shape}")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def elementwise_rel_error(a, b, floor: float = 1e-8) -> float:
    """``max |a-b| / max(floor, |a|+|b|)`` elementwise (CS231n's metric); for display, fragile near zero."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(floor, np.abs(a) + np.abs(b)))) if a.size else 0.0


def _dot(dy, y) -> float:
    return float(np.sum(dy * y))


def numerical_vjp(f: Callable, inputs: dict, name: str, dy, *, method: str = "central", h: float | None = None,
                  directions=None, restore: Callable | None = None):
    """Numerical estimate of ``<dy, ∂f/∂inputs[name]>``: elementwise (an array like the input) or along directions.

    Args:
        f: ``f(**inputs) -> y``. Called with copies; never mutates the caller's arrays.
        inputs: the arguments of ``f``, float64 arrays (or None).
        name: which input to differentiate.
        dy: upstream gradient, shaped like ``y``.
        method: ``"central"`` or ``"complex"``.
        h: step; defaults to ``CENTRAL_STEP`` times ``max(1, max|x|)`` or ``COMPLEX_STEP``.
        directions: ``None`` for elementwise, or a list of arrays shaped like the input: then a list of
            directional derivatives is returned.
        restore: called before every forward (restores the state of a stateful layer).
    """
    base = {k: (None if v is None else np.array(v, copy=True)) for k, v in inputs.items()}
    x0 = base[name]
    if method == "central":
        step = CENTRAL_STEP * max(1.0, float(np.max(np.abs(x0)))) if h is None else h
    elif method == "complex":
        step = COMPLEX_STEP if h is None else h
    else:
        raise ValueError(f"method must be 'central' or 'complex', got {method!r}")

    def evaluate(x):
        if restore is not None:
            restore()
        args = dict(base)
        args[name] = x
        return np.asarray(f(**args))

    def probe(v):
        if method == "central":
            return (_dot(dy, evaluate(x0 + step * v)) - _dot(dy, evaluate(x0 - step * v))) / (2 * step)
        return _dot(dy, evaluate(x0 + 1j * step * v).imag) / step

    if directions is not None:
        return [probe(v) for v in directions]
    grad = np.zeros(x0.shape)
    unit = np.zeros(x0.shape)
    for i in np.ndindex(x0.shape):
        unit[i] = 1.0
        grad[i] = probe(unit)
        unit[i] = 0.0
    return grad


def check_function(f: Callable, inputs: dict, analytic: dict, dy, *, methods=("central",), title: str = "",
                   max_elements: int = 256, n_directions: int = 4, rng=None, tols: dict | None = None,
                   restore: Callable | None = None) -> GradcheckReport:
    """Compare analytic gradients with numerical ones for every input named in ``analytic``.

    Args:
        f: ``f(**inputs) -> y``.
        inputs: all arguments of ``f``.
        analytic: ``{name: gradient}`` from the hand-derived backward, for the inputs to check.
        dy: the upstream gradient the analytic gradients were computed with.
        methods: any of ``"central"``, ``"complex"``.
        max_elements: tensors larger than this are checked along ``n_directions`` random directions.
        rng: generator for the directions.
        tols: per-method tolerances on the norm-relative error (defaults ``CENTRAL_TOL``/``COMPLEX_TOL``).
        restore: called before every forward.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    tols = {"central": CENTRAL_TOL, "complex": COMPLEX_TOL, **(tols or {})}
    rows = []
    for name, grad in analytic.items():
        grad = np.asarray(grad)
        for method in methods:
            if grad.size <= max_elements:
                numeric = numerical_vjp(f, inputs, name, dy, method=method, restore=restore)
                a, b, label, probes = grad, numeric, method, grad.size
            else:
                dirs = [rng.standard_normal(grad.shape) for _ in range(n_directions)]
                b = np.array(numerical_vjp(f, inputs, name, dy, method=method, directions=dirs, restore=restore))
                a = np.array([float(np.sum(grad * v)) for v in dirs])
                label, probes = method + "-dir", n_directions
            rows.append(CheckRow(name, label, float(np.max(np.abs(a - b))), norm_rel_error(a, b), tols[method],
                                 probes))
    return GradcheckReport(title, rows)


def random_params(layer, rng) -> None:
    """Give a layer non-trivial parameters: gamma ~ 1 + 0.5·N(0,1), everything else ~ N(0,1).

    Unit gamma and zero beta can hide a wrong backward (with unit gamma and a sum loss, LayerNorm's dx vanishes).
    """
    for module in layer.modules():
        for pname, value in module.params.items():
            noise = rng.standard_normal(value.shape)
            module.params[pname] = (1.0 + 0.5 * noise if pname == "gamma" else noise).astype(value.dtype)


def check_layer(layer, x, *, dy=None, rng=None, methods=("central",), randomize=True, title: str = "",
                max_elements: int = 256, n_directions: int = 4, tols: dict | None = None) -> GradcheckReport:
    """Check ``layer.backward`` for the input and every parameter, in the layer's current mode.

    The layer's parameters (if ``randomize``, replaced by random ones for the duration of the check), buffers and
    gradients are restored before every probe and left as they were afterwards.

    Args:
        layer: a :class:`normref.nn.Module`; its backward is checked in its current ``training`` mode.
        x: the input (float64 recommended).
        dy: upstream gradient; random normal by default (never ones: under a sum loss BatchNorm's dx is zero).
        methods: ``("central",)``, ``("complex",)`` or both.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    # Everything a probe can touch: parameters, gradients, buffers, the last cache.
    saved_attrs = {m: dict(vars(m)) for m in layer.modules()}
    saved_params = {m: dict(m.params) for m in layer.modules()}
    saved_buffers = {m: copy.deepcopy(m.buffers) for m in layer.modules()}

    def restore_buffers():
        for m in layer.modules():
            m.buffers = copy.deepcopy(saved_buffers[m])

    try:
        if randomize:
            random_params(layer, rng)
        named = dict(layer.named_parameters())
        owners = {name: (m, pname) for m, prefix in layer._modules_with_prefix() for pname in m.params
                  for name in [prefix + pname]}

        def f(x, **params):
            for name, value in params.items():
                module, pname = owners[name]
                module.params[pname] = value
            return layer.forward(x)

        restore_buffers()
        y = layer.forward(x)
        dy = rng.standard_normal(np.shape(y)) if dy is None else dy
        layer.zero_grad()
        dx = layer.backward(dy)
        analytic = {"x": dx, **{name: np.array(g) for name, g in layer.named_grads()}}
        inputs = {"x": x, **{name: np.array(v) for name, v in named.items()}}
        report = check_function(f, inputs, analytic, dy, methods=methods, title=title, max_elements=max_elements,
                                n_directions=n_directions, rng=rng, tols=tols, restore=restore_buffers)
    finally:
        for m, attrs in saved_attrs.items():
            vars(m).clear()
            vars(m).update(attrs)
            m.params = saved_params[m]
            m.buffers = saved_buffers[m]
    return report
