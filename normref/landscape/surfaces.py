r"""Loss along lines and over planes: :math:`f(\alpha) = L(\theta^* + \alpha\delta)`,
:math:`f(\alpha, \beta) = L(\theta^* + \alpha\delta + \beta\eta)` (Li et al. 2018; landscape.md §1.1, §10.1).

* Grids are exactly the coordinates given (use ``np.linspace(-1, 1, 51)`` for Li et al.'s ``-1:1:51``; an odd count
  includes the centre). Non-square grids are fine: values are indexed ``[y, x]`` (x varies fastest, as
  ``np.meshgrid(x, y)`` and ``plt.contour(x, y, Z)`` expect), which repairs the reference tool's garbled
  non-square case (§1.4).
* Every value states the objective's BN-statistics policy (``surface.meta["objective"]["bn"]``).
* Evaluation goes through :func:`normref.landscape.engine.run_points`: any executor, progress, and with
  ``store=DIR`` incremental per-point files and exact resume. The assembled result is also saved as
  ``DIR/surface.npz`` (:meth:`Surface.load` reads it back).
* :func:`direction_band` answers "how much does the picture depend on the direction?" (loss-landscape issue #31):
  the same 1D line for several direction seeds, with quantile bands.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .directions import Directions, PCAPlane, random_directions
from .engine import run_points
from .objective import Objective, _fingerprint


def _vectors(directions, num_params: int) -> np.ndarray:
    if isinstance(directions, (Directions, PCAPlane)):
        directions = directions.vectors
    vectors = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    if vectors.ndim != 2 or vectors.shape[1] != num_params:
        raise ValueError(f"directions must be (k, {num_params}) or ({num_params},), got {np.shape(directions)}")
    return vectors


def _axis(values, name: str) -> np.ndarray:
    if isinstance(values, tuple) and len(values) == 3:
        values = np.linspace(values[0], values[1], int(values[2]))
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be a non-empty 1-D array of finite coordinates (or (min, max, num))")
    return values


class PointLoss:
    """The picklable point function ``(a, b, ...) -> objective.evaluate(center + a*d1 + b*d2 + ...)``."""

    def __init__(self, objective: Objective, center, vectors):
        self.objective, self.center, self.vectors = objective, np.asarray(center), np.asarray(vectors)

    def __call__(self, point):
        return self.objective.evaluate(self.center + np.asarray(point) @ self.vectors)


class Surface:
    """A line (``len(coords) == 1``) or plane (2) of evaluated points.

    Attributes:
        coords: ``(x,)`` or ``(x, y)``, the axis coordinates.
        values: ``{"loss": array, "accuracy": array}``, shape ``(nx,)`` or ``(ny, nx)`` (indexed ``[y, x]``).
        center: ``(P,)``; vectors: ``(k, P)``; meta: settings (objective description, direction settings).
    """

    def __init__(self, coords, values, center, vectors, meta):
        self.coords = tuple(np.asarray(c) for c in coords)
        self.values = {k: np.asarray(v) for k, v in values.items()}
        self.center, self.vectors, self.meta = np.asarray(center), np.asarray(vectors), dict(meta)

    @property
    def x(self):
        return self.coords[0]

    @property
    def y(self):
        return self.coords[1] if len(self.coords) > 1 else None

    @property
    def loss(self):
        return self.values["loss"]

    @property
    def accuracy(self):
        return self.values.get("accuracy")

    def meshgrid(self):
        """``X, Y`` for ``plt.contour(X, Y, surface.loss)``."""
        return np.meshgrid(*self.coords)

    def save(self, path) -> None:
        import json
        arrays = {f"coord{i}": c for i, c in enumerate(self.coords)}
        arrays.update({f"value/{k}": v for k, v in self.values.items()})
        with open(path, "wb") as f:
            np.savez(f, center=self.center, vectors=self.vectors, meta=np.array(json.dumps(self.meta)), **arrays)

    @classmethod
    def load(cls, path) -> "Surface":
        import json
        with np.load(path, allow_pickle=False) as data:
            coords = [data[f"coord{i}"] for i in range(3) if f"coord{i}" in data.files]
            values = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("value/")}
            return cls(coords, values, data["center"], data["vectors"], json.loads(str(data["meta"])))

    def to_csv(self, path) -> None:
        """One row per point: coordinates then values (plain text for other plotting tools)."""
        grids = np.meshgrid(*self.coords) if len(self.coords) > 1 else [self.coords[0]]
        cols = [g.ravel() for g in grids] + [v.ravel() for v in self.values.values()]
        names = ["x", "y"][:len(self.coords)] + list(self.values)
        np.savetxt(path, np.column_stack(cols), delimiter=",", header=",".join(names), comments="")

    def __repr__(self):
        shape = next(iter(self.values.values())).shape
        return f"Surface(shape={shape}, bn={self.meta.get('objective', {}).get('bn')!r}, values={list(self.values)})"


def surface(objective: Objective, directions, x, y=None, *, center=None, store=None, executor=None, workers=None,
            progress=True, blas_threads=None) -> Surface:
    """Evaluate the objective on a line (one direction, ``y=None``) or a plane (two directions).

    Args:
        objective: the :class:`Objective` (its ``bn`` policy applies to every point).
        directions: :class:`Directions`, :class:`PCAPlane` or an array ``(k, P)`` / ``(P,)``.
        x, y: coordinate arrays (or ``(min, max, num)``).
        center: the origin (default ``objective.theta0``).
        store, executor, workers, progress, blas_threads: see :func:`normref.landscape.engine.run_points`.

    Examples:
        >>> from normref.nn import CrossEntropyLoss, Linear, Sequential, Tanh
        >>> rng = np.random.default_rng(0)
        >>> net = Sequential(Linear(2, 4, rng=0), Tanh(), Linear(4, 2, rng=1))
        >>> f = Objective(net, CrossEntropyLoss(), rng.normal(size=(16, 2)), rng.integers(0, 2, 16), bn="running")
        >>> s = surface(f, random_directions(f, 2, seed=0), np.linspace(-1, 1, 3), np.linspace(0, 1, 2),
        ...             workers=1, progress=False)
        >>> s.loss.shape, bool(np.isclose(s.loss[0, 1], f.value(f.theta0)))
        ((2, 3), True)
    """
    vectors = _vectors(directions, objective.num_params)
    settings = directions.settings if isinstance(directions, Directions) else {}
    axes = [_axis(x, "x")] + ([] if y is None else [_axis(y, "y")])
    if len(axes) != len(vectors):
        raise ValueError(f"{len(vectors)} direction(s) need {len(vectors)} coordinate array(s), got {len(axes)}")
    center = objective.theta0 if center is None else np.asarray(center, dtype=np.float64)
    if len(axes) == 1:
        points = [(a,) for a in axes[0]]
        shape = (len(axes[0]),)
    else:
        points = [(a, b) for b in axes[1] for a in axes[0]]  # x fastest: reshape to [y, x]
        shape = (len(axes[1]), len(axes[0]))
    meta = {"kind": f"surface{len(axes)}d", "objective": objective.describe(), "directions": settings,
            "center": _fingerprint(center), "vectors": _fingerprint(vectors)}
    rows = run_points(PointLoss(objective, center, vectors), points, store=store, meta=meta, executor=executor,
                      workers=workers, progress=progress, label=f"{len(axes)}D surface", blas_threads=blas_threads)
    values = {k: np.array([r[k] for r in rows]).reshape(shape) for k in rows[0]}
    result = Surface(axes, values, center, vectors, meta)
    if store is not None:
        result.save(Path(store) / "surface.npz")
    return result


class Band(NamedTuple):
    """``x`` ``(nx,)``; ``values`` ``{name: (n_seeds, nx)}``; ``quantiles`` ``{q: {name: (nx,)}}``; ``seeds``."""

    x: np.ndarray
    values: dict
    quantiles: dict
    seeds: tuple


class BandLoss:
    """Point function ``(k, a) -> objective.evaluate(center + a * vectors[k])``."""

    def __init__(self, objective, center, vectors):
        self.objective, self.center, self.vectors = objective, np.asarray(center), np.asarray(vectors)

    def __call__(self, point):
        k, a = point
        return self.objective.evaluate(self.center + a * self.vectors[int(k)])


def direction_band(objective: Objective, x, *, seeds, quantiles=(0.1, 0.5, 0.9), norm="filter", bias="zero",
                   norm_params="zero", center=None, store=None, executor=None, workers=None,
                   progress=True, blas_threads=None) -> Band:
    """1D lines along one random direction per seed; quantiles over seeds at every ``x`` (median and 10-90 %)."""
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) < 2:
        raise ValueError("a band needs at least two seeds")
    xs = _axis(x, "x")
    center = objective.theta0 if center is None else np.asarray(center, dtype=np.float64)
    vectors = np.stack([random_directions(objective, 1, seed=s, norm=norm, bias=bias, norm_params=norm_params,
                                          theta=center).vectors[0] for s in seeds])
    points = [(k, a) for k in range(len(seeds)) for a in xs]
    meta = {"kind": "band", "objective": objective.describe(), "seeds": list(seeds), "norm": norm, "bias": bias,
            "norm_params": norm_params, "center": _fingerprint(center)}
    rows = run_points(BandLoss(objective, center, vectors), points, store=store, meta=meta, executor=executor,
                      workers=workers, progress=progress, label="direction band", blas_threads=blas_threads)
    values = {k: np.array([r[k] for r in rows]).reshape(len(seeds), len(xs)) for k in rows[0]}
    qs = {float(q): {k: np.quantile(v, q, axis=0) for k, v in values.items()} for q in quantiles}
    return Band(xs, values, qs, seeds)
