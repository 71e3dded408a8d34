r"""Directions in parameter space: random (Gaussian, filter- or layer-normalized) and PCA of a trajectory.

Random directions (Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018; landscape.md §1.2)
--------------------------------------------------------------------------------------
One i.i.d. :math:`N(0,1)` draw per parameter tensor (never uniform: loss-landscapes issue #4), then, per tensor
:math:`w` with draw :math:`d`:

* tensors with two or more axes (``kind="weight"``), by ``norm``:

  - ``"filter"`` (default): every slice along axis 0 (a conv output channel ``(C_in, kh, kw)``, a Linear row, i.e.
    one neuron's incoming weights) is rescaled, :math:`d_i \leftarrow d_i\,\lVert w_i\rVert/(\lVert d_i\rVert +
    10^{-10})` (Frobenius norms; the 1e-10 as in the reference code);
  - ``"layer"``: :math:`d \leftarrow d\,\lVert w\rVert/(\lVert d\rVert + 10^{-10})`;
  - ``"none"``: the raw draw.

* tensors with fewer than two axes follow an explicit policy, set separately for ``bias`` (biases of Linear/Conv)
  and ``norm_params`` (γ, β and other parameters of normalization layers; see
  :func:`normref.landscape.objective.param_kinds`):

  - ``"zero"`` (default for both): the direction is 0 there (Li et al.'s ``--xignore biasbn``, the README's setting);
  - ``"copy"``: :math:`d = w` (the reference code's default when ``biasbn`` is not ignored: a one-element filter
    normalized to :math:`\lVert w\rVert`, taken with sign +);
  - ``"normalize"``: the whole vector as one filter, :math:`d\,\lVert w\rVert/(\lVert d\rVert + 10^{-10})`;
  - ``"keep"``: the raw Gaussian draw.

Reproducibility: ``seed`` feeds :class:`numpy.random.SeedSequence`; :func:`random_directions` spawns one child
sequence per direction, so direction ``k`` of ``seed=s`` does not depend on how many were asked for. Tensors are
drawn in flat order from one generator per direction. ``orthogonalize=True`` applies Gram-Schmidt *after*
normalization (so the second direction is no longer exactly filter-normalized) and reports the cosine it removed.

PCA of a trajectory (landscape.md §1.2, loss-landscape issue #1)
---------------------------------------------------------------
:func:`pca_plane` takes checkpoints :math:`\theta_t` and a centre :math:`\theta^*` (default: the last checkpoint),
forms :math:`M_t = \theta_t - \theta^*`, mean-centres the rows (as scikit-learn's PCA in the reference code does)
and keeps the two leading right singular vectors: orthonormal directions with their explained-variance ratios.
:func:`project` maps each checkpoint onto the plane through :math:`\theta^*` by least squares and reports how far
it sits off the plane, :math:`\lVert M_t - D^\top c_t\rVert` (absolute, and relative to :math:`\lVert M_t\rVert`):
a trajectory drawn on a contour whose points sit far off the plane does not live on that surface, which is why
users saw the contour at the start point disagree with the trajectory's loss.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..nn.flat import flatten_params
from ..nn.module import Module
from .objective import Objective, param_kinds

NORMS = ("filter", "layer", "none")
ONE_D_POLICIES = ("zero", "copy", "normalize", "keep")
_TINY = 1e-10


def _model_and_theta(target, theta):
    if isinstance(target, Objective):
        model, ref = target.model, target.theta0
    elif isinstance(target, Module):
        model, ref = target, flatten_params(target)
    else:
        raise TypeError(f"expected an Objective or a normref Module, got {type(target).__name__}")
    ref = ref if theta is None else np.asarray(theta, dtype=np.float64)
    if ref.shape != (sum(sl.stop - sl.start for *_, sl in param_kinds(model)),):
        raise ValueError(f"theta must have shape ({ref.size},) matching the model")
    return model, ref


def _check_choice(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def random_direction(target, *, seed, norm="filter", bias="zero", norm_params="zero", theta=None) -> np.ndarray:
    """One random direction ``(P,)`` for an :class:`Objective` or model, normalized against ``theta``.

    ``theta`` defaults to the objective's (model's) own parameters. See the module docstring for ``norm``,
    ``bias`` and ``norm_params``.

    Examples:
        >>> from normref.nn import Linear, Sequential, BatchNorm
        >>> net = Sequential(Linear(3, 4, rng=0), BatchNorm(4), Linear(4, 2, rng=1))
        >>> d = random_direction(net, seed=0)
        >>> w = net[0].params["weight"]; dw = d[:12].reshape(4, 3)
        >>> bool(np.allclose(np.linalg.norm(dw, axis=1), np.linalg.norm(w, axis=1)))
        True
        >>> float(np.abs(d[12:24]).max())  # first bias, then BN gamma and beta: zeroed
        0.0
    """
    _check_choice(norm, NORMS, "norm")
    _check_choice(bias, ONE_D_POLICIES, "bias")
    _check_choice(norm_params, ONE_D_POLICIES, "norm_params")
    model, ref = _model_and_theta(target, theta)
    rng = np.random.default_rng(seed)
    out = np.zeros_like(ref)
    for name, kind, shape, sl in param_kinds(model):
        w = ref[sl].reshape(shape)
        d = rng.standard_normal(shape)
        if kind == "weight":
            if norm == "filter":
                axes = tuple(range(1, len(shape)))
                scale = np.sqrt(np.sum(w * w, axis=axes, keepdims=True)) / (
                    np.sqrt(np.sum(d * d, axis=axes, keepdims=True)) + _TINY)
                d = d * scale
            elif norm == "layer":
                d = d * (np.linalg.norm(w) / (np.linalg.norm(d) + _TINY))
        else:
            policy = bias if kind == "bias" else norm_params
            if policy == "zero":
                d = np.zeros(shape)
            elif policy == "copy":
                d = np.array(w, dtype=np.float64)
            elif policy == "normalize":
                d = d * (np.linalg.norm(w) / (np.linalg.norm(d) + _TINY))
        out[sl] = np.ravel(d)
    return out


class Directions(NamedTuple):
    """``vectors`` ``(n, P)``; ``seeds`` the child seed entropy of each; ``settings`` the normalization used;
    ``cosines`` the pairwise cosines before orthogonalization ``(n, n)``."""

    vectors: np.ndarray
    settings: dict
    cosines: np.ndarray


def random_directions(target, n=2, *, seed, norm="filter", bias="zero", norm_params="zero", theta=None,
                      orthogonalize=False) -> Directions:
    """``n`` seeded random directions (one :class:`numpy.random.SeedSequence` child per direction).

    Examples:
        >>> from normref.nn import Linear, Sequential, Tanh
        >>> net = Sequential(Linear(3, 4, rng=0), Tanh(), Linear(4, 2, rng=1))
        >>> dirs = random_directions(net, 2, seed=7, orthogonalize=True)
        >>> dirs.vectors.shape, abs(float(dirs.vectors[0] @ dirs.vectors[1])) < 1e-12
        ((2, 26), True)
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    children = np.random.SeedSequence(seed).spawn(int(n))
    vectors = np.stack([random_direction(target, seed=child, norm=norm, bias=bias, norm_params=norm_params,
                                         theta=theta) for child in children])
    norms = np.linalg.norm(vectors, axis=1)
    cosines = (vectors @ vectors.T) / np.maximum(np.outer(norms, norms), 1e-300)
    if orthogonalize:
        vectors = gram_schmidt(vectors)
    settings = {"seed": seed if isinstance(seed, (int, np.integer)) else str(seed), "norm": norm, "bias": bias,
                "norm_params": norm_params, "orthogonalize": bool(orthogonalize)}
    return Directions(vectors, settings, cosines)


def gram_schmidt(vectors) -> np.ndarray:
    """Orthogonalize rows in order, keeping each row's length (so filter-normalized scales stay comparable)."""
    vectors = np.array(vectors, dtype=np.float64)
    for i in range(len(vectors)):
        length = np.linalg.norm(vectors[i])
        for j in range(i):
            uj = vectors[j] / np.linalg.norm(vectors[j])
            vectors[i] -= (vectors[i] @ uj) * uj
        vectors[i] *= length / np.linalg.norm(vectors[i])
    return vectors


class PCAPlane(NamedTuple):
    """``vectors`` ``(2, P)`` orthonormal principal directions; ``explained_variance_ratio`` ``(2,)``;
    ``center`` ``(P,)`` the plane's origin."""

    vectors: np.ndarray
    explained_variance_ratio: np.ndarray
    center: np.ndarray


def pca_plane(trajectory, center=None, *, n_components=2, ignore=None) -> PCAPlane:
    """The PCA plane of a training trajectory ``(T, P)`` (one checkpoint per row) through ``center``.

    ``ignore``: an optional boolean mask ``(P,)`` of coordinates to zero before the PCA (the reference code's
    bias/BN exclusion).
    """
    traj = np.asarray(trajectory, dtype=np.float64)
    if traj.ndim != 2 or len(traj) < n_components + 1:
        raise ValueError(f"trajectory must be (T, P) with T > {n_components}, got shape {traj.shape}")
    center = traj[-1] if center is None else np.asarray(center, dtype=np.float64)
    m = traj - center
    if ignore is not None:
        m = m * ~np.asarray(ignore, dtype=bool)
    centred = m - m.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    return PCAPlane(vt[:n_components].copy(), var[:n_components] / var.sum(), center.copy())


class Projection(NamedTuple):
    """``coords`` ``(T, k)`` least-squares coordinates; ``off_plane`` ``(T,)`` the residual norm
    ``|theta_t - center - coords_t @ vectors|``; ``relative_off_plane`` that over ``|theta_t - center|``."""

    coords: np.ndarray
    off_plane: np.ndarray
    relative_off_plane: np.ndarray


def project(trajectory, center, vectors) -> Projection:
    """Project checkpoints onto the affine plane ``center + span(vectors)`` (any, not only orthonormal, vectors)."""
    traj = np.atleast_2d(np.asarray(trajectory, dtype=np.float64))
    m = traj - np.asarray(center, dtype=np.float64)
    basis = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    coords, *_ = np.linalg.lstsq(basis.T, m.T, rcond=None)
    coords = coords.T
    residual = np.linalg.norm(m - coords @ basis, axis=1)
    dist = np.linalg.norm(m, axis=1)
    return Projection(coords, residual, residual / np.where(dist > 0, dist, 1.0))
