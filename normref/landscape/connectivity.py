r"""Linear mode connectivity: :math:`\theta(\alpha) = (1-\alpha)\theta_A + \alpha\theta_B` and its barrier
(landscape.md §5).

Barriers, on the evaluated grid of :math:`\alpha` (both published definitions; :func:`barrier` returns both):

* **Frankle et al. (ICML 2020)**, "instability": :math:`\sup_\alpha v(\alpha) - \tfrac12(v(0) + v(1))`, the
  excess over the *mean of the endpoints*; they report it for test error.
* **Entezari et al. (ICLR 2022)**: :math:`\sup_\alpha [v(\alpha) - ((1-\alpha)v(0) + \alpha v(1))]`, the excess
  over the *linear interpolation of the endpoint values*; they define it for the loss. (Their released code instead
  uses accuracy at :math:`\alpha = 0.5` only; :attr:`Barrier.midpoint` is that midpoint excess.)

Both are sup over the grid given (include 0 and 1: the endpoints are read from it), with the maximizing
:math:`\alpha` reported. For the error, :math:`v = 1 - \text{accuracy}`.

BN statistics at each :math:`\alpha` (``bn=``; the curve of a BN network depends on it, §5.6):

``"keep"``
    eval mode with endpoint A's running statistics at every :math:`\alpha` (stale statistics).
``"reset"``
    REPAIR / Git Re-Basin / SWA: statistics recomputed on the training data at every :math:`\alpha`
    (the objective must have been built with ``train_data``; see :class:`~normref.landscape.Objective`).
``"interpolate"``
    the running statistics moved with the weights, REPAIR's goal statistics: per channel the mean
    :math:`(1-\alpha)\mu_A + \alpha\mu_B` and the *standard deviation* :math:`(1-\alpha)\sigma_A + \alpha\sigma_B`
    (REPAIR interpolates std, not variance; Li et al.'s ``--dir_type states`` would interpolate the variance
    itself). Other buffers (``num_batches_tracked``) are A's.
``"batch"``
    train-mode batch statistics (the objective's ghost-batch size, if any).

For networks without running statistics (LN, GN, WS, DyT) the four coincide.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..nn.flat import flatten_params
from ..nn.module import Module
from .engine import run_points
from .objective import Objective, _fingerprint

BN_MODES = ("keep", "reset", "interpolate", "batch")


class Barrier(NamedTuple):
    """``frankle`` and ``entezari`` barrier heights, the ``alpha`` maximizing each, and ``midpoint`` =
    ``v(0.5) - (v(0)+v(1))/2`` (NaN when 0.5 is not on the grid)."""

    frankle: float
    entezari: float
    alpha_frankle: float
    alpha_entezari: float
    midpoint: float


def barrier(alphas, values) -> Barrier:
    """Both barrier definitions of a curve ``values`` over ``alphas`` (which must contain 0 and 1).

    Examples:
        >>> b = barrier([0, 0.5, 1], [1.0, 3.0, 2.0])
        >>> b.frankle, b.entezari, b.midpoint
        (1.5, 1.5, 1.5)
        >>> barrier([0, 0.25, 1], [0.0, 1.0, 4.0]).entezari  # under the chord: no barrier
        0.0
    """
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if a.shape != v.shape or a.ndim != 1:
        raise ValueError("alphas and values must be 1-D of the same length")
    i0, i1 = np.flatnonzero(a == 0.0), np.flatnonzero(a == 1.0)
    if not (len(i0) and len(i1)):
        raise ValueError("the alpha grid must contain 0 and 1 (the endpoints)")
    v0, v1 = v[i0[0]], v[i1[0]]
    inside = (a >= 0) & (a <= 1)
    frankle = np.where(inside, v - 0.5 * (v0 + v1), -np.inf)
    entezari = np.where(inside, v - ((1 - a) * v0 + a * v1), -np.inf)
    jf, je = int(np.argmax(frankle)), int(np.argmax(entezari))
    mid = np.flatnonzero(a == 0.5)
    midpoint = float(v[mid[0]] - 0.5 * (v0 + v1)) if len(mid) else float("nan")
    return Barrier(float(frankle[jf]), float(entezari[je]), float(a[jf]), float(a[je]), midpoint)


def _endpoint(point, objective, buffers, name):
    if isinstance(point, Module):
        return flatten_params(point), dict(point.named_buffers()) if buffers is None else buffers
    theta = np.asarray(point, dtype=np.float64)
    if theta.shape != objective.theta0.shape:
        raise ValueError(f"{name} must be a Module or a vector of shape {objective.theta0.shape}")
    return theta, objective.buffers if buffers is None else buffers


def interpolate_buffers(buffers_a: dict, buffers_b: dict, alpha: float) -> dict:
    """REPAIR's goal statistics: means linear, standard deviations linear, other buffers from A."""
    out = {}
    for name, va in buffers_a.items():
        vb = buffers_b[name]
        if name.endswith("running_var"):
            sd = (1 - alpha) * np.sqrt(va) + alpha * np.sqrt(vb)
            out[name] = sd * sd
        elif name.endswith("running_mean"):
            out[name] = (1 - alpha) * np.asarray(va) + alpha * np.asarray(vb)
        else:
            out[name] = va
    return out


class InterpolationLoss:
    """Point function ``(alpha,) -> evaluate((1-alpha) theta_A + alpha theta_B)`` under a BN mode."""

    def __init__(self, objective, theta_a, theta_b, buffers_a, buffers_b, bn):
        self.objective, self.theta_a, self.theta_b = objective, theta_a, theta_b
        self.buffers_a, self.buffers_b, self.bn = buffers_a, buffers_b, bn

    def __call__(self, point):
        (alpha,) = point
        theta = (1 - alpha) * self.theta_a + alpha * self.theta_b
        if self.bn == "interpolate":
            return self.objective.evaluate(theta, buffers=interpolate_buffers(self.buffers_a, self.buffers_b, alpha))
        return self.objective.evaluate(theta, buffers=self.buffers_a)


class Interpolation(NamedTuple):
    """``alphas`` ``(n,)``; ``values`` ``{"loss": (n,), "accuracy": (n,), "error": (n,)}``; ``bn`` the mode;
    ``barriers`` ``{name: Barrier}`` for loss and error (when the grid holds 0 and 1)."""

    alphas: np.ndarray
    values: dict
    bn: str
    barriers: dict


def interpolate(objective: Objective, a, b, alphas=np.linspace(0, 1, 25), *, bn, buffers_a=None, buffers_b=None,
                store=None, executor=None, workers=None, progress=True, blas_threads=None) -> Interpolation:
    """Evaluate the straight line from ``a`` to ``b`` (extrapolation allowed: alphas outside [0, 1]).

    Args:
        objective: data and loss; its own ``bn`` policy is replaced according to ``bn``.
        a, b: endpoint models (their parameters and buffers are used) or flat vectors (then ``buffers_a/b``,
            default the objective's reference buffers).
        alphas: the grid (default 25 points on [0, 1], as Git Re-Basin).
        bn: ``"keep"``, ``"reset"``, ``"interpolate"`` or ``"batch"`` (module docstring); required.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    theta_a, buffers_a = _endpoint(a, objective, buffers_a, "a")
    theta_b, buffers_b = _endpoint(b, objective, buffers_b, "b")
    policy = {"keep": "running", "interpolate": "running", "reset": "recomputed", "batch": "batch"}[bn]
    if policy == "recomputed" and objective.train_x is None:
        raise ValueError('bn="reset" needs an objective built with train_data (bn="recomputed")')
    if objective.bn != policy:
        changes = {"bn": policy}
        if policy == "recomputed":
            changes["train_data"] = objective.train_x
        objective = objective.replace(**changes)
    alphas = np.asarray(alphas, dtype=np.float64)
    meta = {"kind": "interpolation", "bn": bn, "objective": objective.describe(), "a": _fingerprint(theta_a),
            "b": _fingerprint(theta_b)}
    rows = run_points(InterpolationLoss(objective, theta_a, theta_b, buffers_a, buffers_b, bn),
                      [(x,) for x in alphas], store=store, meta=meta, executor=executor, workers=workers,
                      progress=progress, label=f"interpolation ({bn})", blas_threads=blas_threads)
    values = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    if "accuracy" in values:
        values["error"] = 1.0 - values["accuracy"]
    barriers = {}
    if np.any(alphas == 0.0) and np.any(alphas == 1.0):
        barriers = {k: barrier(alphas, values[k]) for k in ("loss", "error") if k in values}
    return Interpolation(alphas, values, bn, barriers)
