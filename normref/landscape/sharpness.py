r"""Sharpness during full-batch gradient descent, against the stability threshold :math:`2/\eta`
(Cohen, Kaur, Li, Kolter & Talwalkar, ICLR 2021; landscape.md §6).

Sharpness is :math:`S(\theta) = \lambda_{max}(\nabla^2 L(\theta))` of the *full-batch* objective. Gradient
descent :math:`\theta_{t+1} = \theta_t - \eta\nabla L(\theta_t)` on a quadratic is stable iff :math:`S < 2/\eta`;
on networks :math:`S` first rises (progressive sharpening) and then hovers near :math:`2/\eta` (edge of stability).

:func:`gd_sharpness` runs plain GD on the objective (no momentum, so the threshold is :math:`2/\eta`), records the
loss at every step and the top-``k`` Hessian eigenvalues (Lanczos, :func:`normref.landscape.top_eigenpairs`) every
``every`` steps, at the parameters *before* that step's update. For a BN network the objective's policy decides
which Hessian this is; Cohen et al. use train-mode statistics over fixed chunks: ``bn="batch"`` with
``ghost_batch_size`` (their "physical batch size"); report which one you used, since eval-mode and train-mode
sharpness differ.

Long runs are checkpointed: with ``store=PATH`` (a ``.npz`` file) the state (parameters, step, histories) is written
atomically after every eigenvalue measurement; calling again with the same arguments resumes from the last
checkpoint and gives the same arrays as an uninterrupted run (GD and the seeded Lanczos start are deterministic). A
larger ``steps`` extends a finished run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .hessian import top_eigenpairs
from .objective import Objective, _fingerprint


class SharpnessRun(NamedTuple):
    """``loss`` ``(steps,)`` at every step (before its update); ``eig_steps`` ``(m,)``; ``sharpness`` ``(m, k)``
    top eigenvalues, descending; ``threshold`` = ``2/lr``; ``theta`` the parameters after ``steps`` updates;
    ``method`` of the HVPs; ``settings``."""

    loss: np.ndarray
    eig_steps: np.ndarray
    sharpness: np.ndarray
    threshold: float
    theta: np.ndarray
    method: str
    settings: dict


def _save(path: Path, state: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **state)
    os.replace(tmp, path)


def gd_sharpness(objective: Objective, lr, steps, *, theta=None, every=10, k=1, method="auto", tol=1e-8, seed=0,
                 store=None, progress=True) -> SharpnessRun:
    """Full-batch GD for ``steps`` steps with step size ``lr``, tracking the top-``k`` eigenvalues every ``every``."""
    lr, steps, every, k = float(lr), int(steps), int(every), int(k)
    if lr <= 0 or steps < 1 or every < 1 or k < 1:
        raise ValueError("lr must be positive and steps, every, k positive ints")
    theta = objective.theta0 if theta is None else np.asarray(theta, dtype=np.float64)
    method = objective._resolve_method(method)
    settings = {"objective": objective.describe(), "lr": lr, "every": every, "k": k, "method": method, "tol": tol,
                "seed": seed, "theta0": _fingerprint(theta)}
    start, losses, eig_steps, eigs = 0, [], [], []
    path = None if store is None else Path(store)
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as data:
            stored = json.loads(str(data["settings"]))
            if stored != json.loads(json.dumps(settings)):
                raise ValueError(f"{path} holds a different run; use another file or delete it")
            start, theta = int(data["step"]), data["theta"]
            losses, eig_steps, eigs = list(data["loss"]), list(data["eig_steps"]), list(data["sharpness"])
    clock = time.perf_counter()

    def checkpoint(t):
        if path is not None:
            _save(path, {"settings": np.array(json.dumps(settings)), "step": np.array(t), "theta": theta,
                         "loss": np.array(losses), "eig_steps": np.array(eig_steps, dtype=np.int64),
                         "sharpness": np.array(eigs).reshape(-1, k)})

    for t in range(start, steps):
        if t % every == 0 and (not eig_steps or eig_steps[-1] != t):
            top = top_eigenpairs(objective, k, theta=theta, method=method, tol=tol, seed=seed)
            eig_steps.append(t)
            eigs.append(top.values)
            if progress:
                print(f"gd_sharpness: step {t}/{steps}, loss {losses[-1] if losses else float('nan'):.4g}, "
                      f"sharpness {top.values[0]:.4g} (2/lr = {2 / lr:.4g}), {time.perf_counter() - clock:.1f} s",
                      file=sys.stderr, flush=True)
            checkpoint(t)
        loss, g = objective.grad(theta)
        losses.append(loss)
        theta = theta - lr * g
    if start <= steps:  # a stored run longer than asked is returned truncated, and left as it is
        checkpoint(steps)
    keep = [i for i, s in enumerate(eig_steps) if s < steps]
    return SharpnessRun(np.array(losses[:steps]), np.array(eig_steps, dtype=np.int64)[keep],
                        np.array(eigs).reshape(-1, k)[keep], 2 / lr, theta, method, settings)
