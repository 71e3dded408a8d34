r"""Weight Standardization and Scaled WS on the Numba CPU backend, registered as ``"numba"``.

The math (the three ``eps_mode`` denominators ``D(v)``, the backward scalar ``k = d(D²)/dv``, the variants) is in
:mod:`normref.ops.weight_standardization`; this module computes the same thing with the row-wise pattern of
:mod:`._rowwise`: the weight ``w`` ``(O, ...)`` is viewed as ``(O, I)`` rows, one fan-in per output unit, and
``prange`` runs over the rows.

* forward, per row: the corrected two-pass moments (:func:`._common.moments`, biased variance), ``D``, ``k`` and
  ``1/D`` in float64, then ``ŵ = ((w - μ)·(1/D))·s`` in the storage dtype (``s = gain·γ_act``, 1 without gain).
* backward, per row: one lane-blocked pass for ``a = Σ dŵ·(w - μ)`` and ``b = Σ dŵ``
  (:func:`._common.dot_sum`); then ``Σ dŵ·û = a/D``, ``mean g = s·b/I``, ``mean(g û) = s·a/(D·I)`` and
  ``dw = (1/D)(g - mean g - k·mean(g û)·û)``. ``dgain_i = γ_act·Σ_j dŵ_ij û_ij`` belongs to row ``i`` alone, so the
  parameter gradient needs no cross-row reduction and is deterministic as it stands.

Differences from the reference: ``D``, ``k`` and ``1/D`` are float64 scalars per row (the reference computes them in
the storage dtype), rounded to the storage dtype where they multiply a row. The ``"floor"`` and ``"outside"`` branches
test the same conditions. Complex input (the reference's complex step) raises ``TypeError``; a non-contiguous ``w``
or ``dy`` is copied first. Weights are small (a few MB at most), so these kernels are about latency, not bandwidth.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ..._validate import cast_like, check_ndim, check_nonempty, check_param, check_positive_float, check_stats
from ...ops.weight_standardization import _check_eps_mode
from ._common import LANES, as_kernel_array, backward_arrays, dot_sum, moments, output_like, real_stats, threads_for

EPS_MODE_CODES = {"inside": 0, "outside": 1, "floor": 2}


class NumbaWSCache(NamedTuple):
    """What :func:`weight_standardization_backward` needs on this backend. ``O`` output units, ``I`` fan-in."""

    w: np.ndarray  # (O, I) the contiguous weight (ŵ's û is recomputed from it)
    mean: np.ndarray  # (O,) float64 row means (the given ones with frozen statistics)
    rden: np.ndarray  # (O,) float64 1/D
    k: np.ndarray  # (O,) float64 d(D²)/dv; 0 where frozen or on the floor
    scale: np.ndarray  # (O,) storage dtype: gain·γ_act (γ_act without gain)
    has_gain: bool
    gamma_act: float
    batch_stats: bool
    w_shape: tuple[int, ...]
    backend: str = "numba"


@njit(parallel=True, fastmath=False, cache=True)
def ws_forward_kernel(w, scale, eps, c, n_scale, mode, batch_stats, mean, var, rden, k, y):
    """Standardize each row of ``w`` ``(O, I)``.

    Args:
        scale: ``(O,)`` storage dtype, the per-row factor ``gain·γ_act``.
        eps, c, n_scale: the ``eps``, the estimator factor (1 or ``I/(I-1)``) and the fan-in factor ``N``.
        mode: 0 ``"inside"``, 1 ``"outside"``, 2 ``"floor"``.
        batch_stats: compute ``mean``, ``var`` (outputs) from ``w``; otherwise read them.
        mean, var, rden, k: ``(O,)`` float64.
        y: ``(O, I)`` output.
    """
    rows, fan_in = w.shape
    for r in prange(rows):  # iteration r owns row r of y and entry r of every statistic
        if batch_stats:
            lanes, wide = np.empty((2, LANES), w.dtype), np.empty((2, LANES))
            mean[r], var[r] = moments(w[r], lanes, wide)
        cv = c * var[r]
        if mode == 0:
            den, kk = np.sqrt(n_scale * (cv + eps)), n_scale * c
        elif mode == 1:
            std = np.sqrt(cv)
            den = np.sqrt(n_scale) * (std + eps)
            kk = n_scale * c * (std + eps) / std if std > 0 else 0.0  # the limit as std -> 0 (see the reference)
        elif n_scale * cv > eps:
            den, kk = np.sqrt(n_scale * cv), n_scale * c
        else:  # on the floor: D is the constant sqrt(eps)
            den, kk = np.sqrt(eps), 0.0
        rden[r] = 1.0 / den
        k[r] = kk if batch_stats else 0.0
        m, s, a = w.dtype.type(mean[r]), w.dtype.type(rden[r]), scale[r]
        wr, yr = w[r], y[r]
        for j in range(fan_in):
            yr[j] = ((wr[j] - m) * s) * a


@njit(parallel=True, fastmath=False, cache=True)
def ws_backward_kernel(w, dy, scale, mean, rden, k, gamma_act, batch_stats, dw, dgain):
    """``dw`` ``(O, I)`` and ``dgain`` ``(O,)`` float64 (``γ_act·Σ_j dŵ·û``) of :func:`ws_forward_kernel`."""
    rows, fan_in = w.shape
    for r in prange(rows):  # iteration r owns row r of dw and dgain[r]
        lanes, wide = np.empty((2, LANES), w.dtype), np.empty((2, LANES))
        m, s, sc = w.dtype.type(mean[r]), w.dtype.type(rden[r]), scale[r]
        a, b = dot_sum(dy[r], w[r], m, lanes, wide)  # Σ dŵ·(w - m), Σ dŵ
        dyu = a * rden[r]  # Σ dŵ·û
        dgain[r] = dyu * gamma_act
        c1 = w.dtype.type(k[r] * sc * dyu / fan_in) if batch_stats else w.dtype.type(0)  # k·mean(g û)
        c2 = w.dtype.type(sc * b / fan_in) if batch_stats else w.dtype.type(0)  # mean g
        wr, dyr, dwr = w[r], dy[r], dw[r]
        for j in range(fan_in):
            dwr[j] = s * (sc * dyr[j] - c2 - ((wr[j] - m) * s) * c1)


def _standardize(w, gain, *, eps, unbiased, eps_mode, fan_in_scale, gamma_act, stats, out):
    """The shared forward (arguments as in the public functions); validation as the reference's ``_standardize``."""
    w = as_kernel_array(w, "w")
    check_ndim(w, "w", (2, 3, 4, 5), "(O, I) or (O, C_in/groups, *kernel)")
    check_nonempty(w, "w")
    rows, fan_in = w.shape[0], math.prod(w.shape[1:])
    if fan_in < 2:
        raise ValueError(f"w must have a fan-in of at least 2 values per output unit (standardizing one value "
                         f"gives 0), got shape {w.shape}")
    gain = cast_like(w, check_param(gain, "gain", (rows,), allow_complex=False))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    mode = EPS_MODE_CODES[_check_eps_mode(eps_mode)]
    if isinstance(gamma_act, bool) or not isinstance(gamma_act, (int, float)) or not np.isfinite(gamma_act):
        raise TypeError(f"gamma must be a finite real number, got {gamma_act!r}")
    w2 = w.reshape(rows, fan_in)
    c = fan_in / (fan_in - 1) if unbiased else 1.0
    n_scale = float(fan_in) if fan_in_scale else 1.0
    if stats is None:
        mean, var = np.empty(rows), np.empty(rows)
    else:
        given = real_stats(check_stats(stats, (rows,), w))
        mean, var = (np.array(s, dtype=np.float64).reshape(rows) for s in given)
    scale = (np.ones(rows, w.dtype) if gain is None else gain) * w.dtype.type(gamma_act)
    rden, k = np.empty(rows), np.empty(rows)
    y = output_like(w, out)
    with threads_for(w.nbytes):
        ws_forward_kernel(w2, scale, eps, c, n_scale, mode, stats is None, mean, var, rden, k, y.reshape(w2.shape))
    cache = NumbaWSCache(w=w2, mean=mean, rden=rden, k=k, scale=scale, has_gain=gain is not None,
                         gamma_act=float(gamma_act), batch_stats=stats is None, w_shape=tuple(w.shape))
    return y, cache


def weight_standardization_forward(w, gain=None, *, eps=1e-5, unbiased=False, eps_mode="inside", stats=None,
                                   out=None):
    """Like :func:`normref.ops.weight_standardization.weight_standardization_forward`; a ``NumbaWSCache``.

    ``out``: ``None`` (allocate ``ŵ``), or a C-contiguous array of ``w``'s shape and dtype to write ``ŵ`` into.
    """
    return _standardize(w, gain, eps=eps, unbiased=unbiased, eps_mode=eps_mode, fan_in_scale=False,
                        gamma_act=1.0, stats=stats, out=out)


def scaled_weight_standardization_forward(w, gain=None, *, eps=None, eps_mode="floor", gamma=1.0, unbiased=False,
                                          stats=None, out=None):
    """Like :func:`normref.ops.weight_standardization.scaled_weight_standardization_forward` (same defaults)."""
    eps = (1e-4 if _check_eps_mode(eps_mode) == "floor" else 1e-6) if eps is None else eps
    return _standardize(w, gain, eps=eps, unbiased=unbiased, eps_mode=eps_mode, fan_in_scale=True,
                        gamma_act=gamma, stats=stats, out=out)


def weight_standardization_backward(dy, cache: NumbaWSCache, *, out=None):
    """``(dw, dgain)`` like the reference's backward; ``dgain`` is ``None`` without a gain."""
    w2 = cache.w
    dy2, dw = backward_arrays(dy, w2, cache.w_shape, out)
    dgain = np.empty(w2.shape[0])
    with threads_for(w2.nbytes):
        ws_backward_kernel(w2, dy2, cache.scale, cache.mean, cache.rden, cache.k, cache.gamma_act,
                           cache.batch_stats, dw.reshape(w2.shape), dgain)
    return dw, (dgain.astype(w2.dtype) if cache.has_gain else None)


scaled_weight_standardization_backward = weight_standardization_backward

register("weight_standardization", "numba", weight_standardization_forward, weight_standardization_backward)
register("scaled_weight_standardization", "numba", scaled_weight_standardization_forward,
         scaled_weight_standardization_backward)
