r"""Santurkar et al.'s smoothness measurements along the gradient (NeurIPS 2018, Fig. 4; landscape.md §4).

At a training point :math:`x_t` with mini-batch loss :math:`L` and gradient :math:`g_t = \nabla L(x_t)`, for every
step size :math:`\eta` on a grid, step along the negative gradient to :math:`x_t - \eta g_t` and record

* **loss variation** ("loss landscape"): :math:`L(x_t - \eta g_t)`; the figure shades its min-max range over
  :math:`\eta`;
* **gradient predictiveness**: :math:`\lVert\nabla L(x_t) - \nabla L(x_t - \eta g_t)\rVert_2`; range over
  :math:`\eta`;
* **effective** :math:`\beta` **-smoothness**: :math:`\max_\eta \lVert\nabla L(x_t) - \nabla L(x_t - \eta
  g_t)\rVert_2 / \lVert\eta g_t\rVert_2` ("the maximum difference in gradient over distance moved").

Decisions on the points landscape.md marks ambiguous or unverified (recorded here, and in every result's
``settings``):

* the grid defaults to :data:`DEFAULT_ETAS` = 8 evenly spaced values on [0.05, 0.4]: the caption caps the distance
  at 0.4 and the published curves start near 0.05; the exact grid of the paper's appendix is unverified, so it is a
  parameter;
* the gradient at the moved point uses the *same* mini-batch (the objective's data), so the measurements isolate
  the geometry of one function;
* BatchNorm uses whatever the objective's ``bn`` policy says; Santurkar et al. measure in train mode, i.e.
  ``bn="batch"`` (the result names the policy);
* steps are taken on raw parameters (no filter normalization), as in the paper.

Along training, build one objective per measured step on that step's mini-batch
(``objective.with_data(xb, yb)``) and call :func:`gradient_step_smoothness` at the current parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .objective import Objective

DEFAULT_ETAS = np.linspace(0.05, 0.4, 8)


class Smoothness(NamedTuple):
    """Per-η arrays ``losses``, ``grad_changes``, ``betas`` ``(len(etas),)``; the summaries ``loss_range``
    ``(min, max)``, ``grad_change_range``, ``beta_eff``; ``loss``/``grad_norm`` at the point; ``settings``."""

    etas: np.ndarray
    losses: np.ndarray
    grad_changes: np.ndarray
    betas: np.ndarray
    loss_range: tuple
    grad_change_range: tuple
    beta_eff: float
    loss: float
    grad_norm: float
    settings: dict


def gradient_step_smoothness(objective: Objective, theta=None, etas=DEFAULT_ETAS) -> Smoothness:
    """All three measurements at ``theta`` (default ``objective.theta0``): ``1 + len(etas)`` gradient evaluations."""
    theta = objective.theta0 if theta is None else np.asarray(theta, dtype=np.float64)
    etas = np.asarray(etas, dtype=np.float64)
    if etas.ndim != 1 or etas.size == 0 or np.any(etas <= 0):
        raise ValueError("etas must be a non-empty 1-D array of positive step sizes")
    loss0, g0 = objective.grad(theta)
    gnorm = float(np.linalg.norm(g0))
    losses, changes = [], []
    for eta in etas:
        loss, g = objective.grad(theta - eta * g0)
        losses.append(loss)
        changes.append(float(np.linalg.norm(g0 - g)))
    losses, changes = np.array(losses), np.array(changes)
    betas = changes / (etas * gnorm) if gnorm > 0 else np.full_like(changes, np.nan)
    settings = {"bn": objective.bn, "ghost_batch_size": objective.ghost_batch_size, "batch": len(objective.x),
                "same_batch": True, "filter_normalized": False}
    return Smoothness(etas, losses, changes, betas, (float(losses.min()), float(losses.max())),
                      (float(changes.min()), float(changes.max())), float(np.max(betas)), loss0, gnorm, settings)
