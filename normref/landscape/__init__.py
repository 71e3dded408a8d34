r"""Loss landscapes and curvature of normref models, with the BatchNorm-statistics policy as an explicit choice.

Exact definitions follow ``shared/reference/landscape.md`` (sections cited in each module). The pieces compose as
"objective x directions x grid", and every result carries the settings that produced it.

The objective (:mod:`~normref.landscape.objective`)
    ``f = Objective(model, CrossEntropyLoss(), x, y, bn="running" | "batch" | "recomputed", train_data=...)``:
    :math:`L(\theta)` on fixed data. ``bn`` is required: eval mode with the reference running statistics, train-mode
    statistics over fixed ghost batches, or statistics recomputed on training data at every point (REPAIR/SWA
    reset). ``f.theta0`` is the model's flat parameter vector; ``f.evaluate(theta)`` -> ``{"loss", "accuracy"}``;
    ``f.grad(theta)`` -> ``(loss, g)``; ``f.hvp(theta, v)`` -> :class:`HVP` (``value``, ``method`` = ``"complex"``
    or ``"central"``, ``error_estimate``). ``f.with_data(xb, yb)`` for a mini-batch; ``f.replace(bn=...)``.

Directions (:mod:`~normref.landscape.directions`)
    ``random_directions(f, 2, seed=0, norm="filter" | "layer" | "none", bias="zero", norm_params="zero")`` ->
    :class:`Directions` (``.vectors`` ``(2, P)``); Li et al.'s filter normalization by default, with an explicit
    policy (``"zero" | "copy" | "normalize" | "keep"``) for biases and for normalizer parameters.
    ``pca_plane(trajectory)`` and ``project(trajectory, plane.center, plane.vectors)`` (coordinates and the
    off-plane distance of each checkpoint).

Surfaces (:mod:`~normref.landscape.surfaces`)
    ``surface(f, dirs, x, y=None, store="runs/plane")`` -> :class:`Surface` (``.x``, ``.y``, ``.loss`` indexed
    ``[y, x]``, ``.accuracy``, ``.meta``; ``.save``/``Surface.load``/``.to_csv``). One direction and no ``y`` gives
    a line. ``direction_band(f, x, seeds=range(8))`` -> :class:`Band` (per-seed lines and quantiles).

Mode connectivity (:mod:`~normref.landscape.connectivity`)
    ``interpolate(f, model_a, model_b, alphas, bn="keep" | "reset" | "interpolate" | "batch")`` ->
    :class:`Interpolation` with ``.values`` (loss, accuracy, error) and ``.barriers`` (:class:`Barrier`: the
    Frankle et al. and Entezari et al. definitions, their argmax, the midpoint value); ``barrier(alphas, values)``.

Curvature (:mod:`~normref.landscape.hessian`)
    ``top_eigenpairs(f, k)``, ``most_negative(f, k)`` (``eigsh`` on a :class:`HessianOperator`, residuals
    reported), ``hutchinson_trace(f, n)`` (with standard error), ``slq(f, m, n_v)`` and ``.density(rule=...)`` /
    ``spectral_density``, ``per_layer(f)``; ``block="<layer name>"`` restricts any of them to one layer's diagonal
    block (names from ``layer_blocks(model)``). ``dense_hessian`` for tiny nets.

Training dynamics (:mod:`~normref.landscape.smoothness`, :mod:`~normref.landscape.sharpness`)
    ``gradient_step_smoothness(f_batch, theta, etas)`` -> :class:`Smoothness` (Santurkar et al.'s loss variation,
    gradient predictiveness, effective beta-smoothness); ``gd_sharpness(f, lr, steps, every=10, store="eos.npz")``
    -> :class:`SharpnessRun` (sharpness against ``2/lr``).

Long computations (:mod:`~normref.landscape.engine`)
    Surfaces, bands, interpolations, Hutchinson probes and SLQ runs are lists of independent points evaluated by
    ``run_points``: progress on stderr (``progress=False`` to silence), ``store=DIR`` writes one file per finished
    point atomically and resumes exactly after an interruption (even ``SIGKILL``), and ``executor=`` takes any
    :class:`concurrent.futures.Executor` (default: a local process pool of ``workers`` processes;
    ``mpi4py.futures.MPIPoolExecutor`` and ``distributed.Client(...).get_executor()`` are tested).
    ``gd_sharpness`` is sequential and checkpoints to one ``.npz``.

A 2D filter-normalized plane, the recipe a figure script uses::

    f = Objective(model, CrossEntropyLoss(), x, y, bn="running")
    dirs = random_directions(f, 2, seed=0)
    s = surface(f, dirs, np.linspace(-1, 1, 51), np.linspace(-1, 1, 51), store="out/plane")
    X, Y = s.meshgrid(); plt.contour(X, Y, s.loss)

A PCA plane with the trajectory on it::

    plane = pca_plane(checkpoints)                       # (T, P), centre = the last checkpoint
    proj = project(checkpoints, plane.center, plane.vectors)
    s = surface(f, plane, x, y, center=plane.center)      # plot proj.coords over it; report proj.off_plane
"""

from .connectivity import Barrier, Interpolation, barrier, interpolate, interpolate_buffers
from .directions import (Directions, PCAPlane, Projection, gram_schmidt, pca_plane, project, random_direction,
                         random_directions)
from .engine import PointStore, Progress, run_points
from .hessian import (SLQ, Eigenpairs, HessianOperator, Trace, dense_hessian, hutchinson_trace, lanczos,
                      most_negative, per_layer, slq, spectral_density, top_eigenpairs)
from .objective import BN_POLICIES, HVP, Objective, layer_blocks, param_kinds
from .sharpness import SharpnessRun, gd_sharpness
from .smoothness import DEFAULT_ETAS, Smoothness, gradient_step_smoothness
from .surfaces import Band, Surface, direction_band, surface

__all__ = [
    "BN_POLICIES", "Band", "Barrier", "DEFAULT_ETAS", "Directions", "Eigenpairs", "HVP", "HessianOperator",
    "Interpolation", "Objective", "PCAPlane", "PointStore", "Progress", "Projection", "SLQ", "SharpnessRun",
    "Smoothness", "Surface", "Trace", "barrier", "dense_hessian", "direction_band", "gd_sharpness",
    "gradient_step_smoothness", "gram_schmidt", "hutchinson_trace", "interpolate", "interpolate_buffers", "lanczos",
    "layer_blocks", "most_negative", "param_kinds", "pca_plane", "per_layer", "project", "random_direction",
    "random_directions", "run_points", "slq", "spectral_density", "surface", "top_eigenpairs",
]
