r"""The column-wise template: one statistic per channel of an ``(N, C, S)`` view (BatchNorm).

BatchNorm reduces over the batch and spatial axes, ``R = (n, s)`` for each channel ``c``: in memory that set is
``N`` contiguous slices ``x[n, c, :]`` of ``S = prod(spatial)`` values, ``C·S`` apart. The math is
:mod:`normref.ops._normalize` with ``m = N·S`` values per statistic.

Parallel structure: ``prange`` over channels. Iteration ``c`` owns channel ``c`` entirely: its statistics, its
slices of ``y`` and ``dx``, and its entries ``dgamma[c]``, ``dbeta[c]``. No location is written by two iterations,
so the parameter gradients need no partial buffers (contrast the row-wise template, :mod:`._rowwise`).

Statistics: two-pass per slice, merged across slices by Chan's formula
----------------------------------------------------------------------
A channel holds ``N·S`` values (hundreds of KiB at realistic sizes, more than a core's L2), so a plain two-pass
variance over the whole channel would read it from memory twice. Instead each slice (``S`` values, a few KiB, in L1)
gets its own corrected two-pass ``(mean, M2)`` (:func:`._common.moments`, lane-blocked and vectorized), and the
slices are folded together with Chan's merge (:func:`normref._moments.chan_merge`, mirrored by
:func:`chan_merge_equal` below). That is one memory pass for the statistics, and as stable as the two-pass formula:
no :math:`E[x^2]-E[x]^2`.

Passes over memory: forward = statistics (read ``x``), then ``y`` (read ``x`` again, mostly from the shared L3,
write ``y``); backward = the sums :math:`\sum dy\,(x-\mu)` and :math:`\sum dy` (read ``x``, ``dy``), then ``dx``
(read both again, write ``dx``). The re-reads hit cache when a channel's slices are still there, which is why
BatchNorm sits further from the bandwidth floor than the row-wise layers when a channel is large.

Inputs with no spatial axes, ``(N, C)``, are the case ``S = 1``: correct, but each slice is one value, so the
loops are strided and slow; BatchNorm1d on ``(N, C)`` would want a channels-innermost loop order instead.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange

from ._common import (HELPER, LANES, NumbaNormCache, backward_arrays, dot_sum, given_stats_flat, kernel_affine, moments,
                      output_like, parameter_gradients, threads_for)
from ._rowwise import check_cache_backend


@njit(**HELPER)
def chan_merge_equal(count, mean, m2, count_b, mean_b, m2_b):
    """Chan's merge of ``(count, mean, M2)`` with a part ``b``; the scalar form of ``normref._moments.chan_merge``."""
    total = count + count_b
    delta = mean_b - mean
    return total, mean + delta * (count_b / total), m2 + m2_b + delta * delta * (count * count_b / total)


@njit(**HELPER)
def channel_moments(x, c, lanes, wide):
    """``(mean, var)`` (biased, float64) of channel ``c`` of the ``(N, C, S)`` ``x``: each slice's two-pass moments,
    Chan-merged across the ``N`` slices (see "Statistics" above)."""
    batch, size = x.shape[0], x.shape[2]
    count, mu, m2 = 0.0, 0.0, 0.0
    for i in range(batch):
        mu_i, var_i = moments(x[i, c], lanes, wide)
        count, mu, m2 = chan_merge_equal(count, mu, m2, float(size), mu_i, var_i * size)
    return mu, m2 / count


@njit(parallel=True, fastmath=False, cache=True)
def channels_forward(x, gamma, beta, eps, batch_stats, mean, var, rstd, y):
    """Normalize each channel of ``x`` over its batch and spatial values, per-channel affine.

    Args:
        x: ``(N, C, S)`` input, C-contiguous.
        gamma, beta: ``(C,)`` in ``x``'s dtype (ones / zeros when absent).
        eps: added to the variance.
        batch_stats: compute ``mean``/``var`` (biased) from ``x`` (True) or read the given ones (False).
        mean, var: ``(C,)`` float64: outputs when ``batch_stats``, inputs otherwise.
        rstd: ``(C,)`` float64 output.
        y: ``(N, C, S)`` output.
    """
    batch, channels, size = x.shape
    for c in prange(channels):  # iteration c owns channel c: mean[c], var[c], rstd[c] and y[:, c, :]
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        if batch_stats:
            mean[c], var[c] = channel_moments(x, c, lanes, wide)
        rstd[c] = 1.0 / np.sqrt(var[c] + eps)
        m, s = x.dtype.type(mean[c]), x.dtype.type(rstd[c])
        g, b = gamma[c], beta[c]
        for i in range(batch):
            v, out = x[i, c], y[i, c]
            for j in range(size):
                out[j] = ((v[j] - m) * s) * g + b


@njit(parallel=True, fastmath=False, cache=True)
def channels_backward(x, dy, gamma, mean, rstd, batch_stats, dx, dgamma, dbeta):
    """Gradients of :func:`channels_forward`.

    Args:
        x, dy: ``(N, C, S)``.
        gamma: ``(C,)`` (ones when absent).
        mean, rstd: ``(C,)`` float64 from the forward.
        batch_stats: as in the forward; with given statistics ``dx = rstd·g``.
        dx: ``(N, C, S)`` output.
        dgamma, dbeta: ``(C,)`` float64 outputs, ``Σ dy·x̂`` and ``Σ dy`` over the channel.
    """
    batch, channels, size = x.shape
    count = batch * size
    for c in prange(channels):  # iteration c owns channel c: dgamma[c], dbeta[c] and dx[:, c, :]
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        m, s, g = x.dtype.type(mean[c]), x.dtype.type(rstd[c]), gamma[c]
        p = q = 0.0
        for i in range(batch):
            a, b = dot_sum(dy[i, c], x[i, c], m, lanes, wide)  # Σ dy·(x - m), Σ dy over one slice
            p += a
            q += b
        dgamma[c] = p * rstd[c]
        dbeta[c] = q
        c1 = x.dtype.type(g * p * rstd[c] / count) if batch_stats else x.dtype.type(0)  # mean(g·x̂), g = γ·dy
        c2 = x.dtype.type(g * q / count) if batch_stats else x.dtype.type(0)  # mean(g)
        for i in range(batch):
            v, d, out = x[i, c], dy[i, c], dx[i, c]
            for j in range(size):
                out[j] = s * (g * d[j] - c2 - ((v[j] - m) * s) * c1)


# ----------------------------------------------------------------------------------------------------------------
# Drivers: allocate, run a kernel, build the cache. The op module validates and chooses the view.
#
# As in ._rowwise, a driver runs a kernel set: this module (backend "numba") by default, or another module with the
# same two kernels and its own BACKEND (normref.kernels.numba_fast._colwise); the cache records the set's BACKEND.

BACKEND = "numba"


def kernel_set(kernels=None):
    """The module whose ``channels_*`` kernels a driver runs: ``kernels``, or this one if ``None``."""
    return sys.modules[__name__] if kernels is None else kernels


def run_channels_forward(x, gamma, beta, *, eps, given, stat_shape, out=None, kernels=None):
    """Forward of BatchNorm on the validated, contiguous ``x`` ``(N, C, *spatial)``.

    ``given`` is ``None`` or ``(mean, var)`` shaped like the reference cache's ``stat_shape = (1, C, 1, ...)``;
    ``out`` is ``None`` or an array to write ``y`` into (see :func:`._common.output_like`); ``kernels`` the kernel
    set (:func:`kernel_set`). Returns ``(y, cache)``.
    """
    k = kernel_set(kernels)
    batch, channels = x.shape[:2]
    x3 = x.reshape(batch, channels, -1)
    g, b = kernel_affine(x, gamma, beta, channels)
    if given is None:
        mean, var = np.empty(channels), np.empty(channels)
    else:
        mean, var = given_stats_flat(given[0], given[1], stat_shape)
    rstd = np.empty(channels)
    y = output_like(x, out)
    with threads_for(x.nbytes):
        k.channels_forward(x3, g, b, eps, given is None, mean, var, rstd, y.reshape(x3.shape))
    if given is None:
        cache_mean, cache_var = mean.astype(x.dtype).reshape(stat_shape), var.astype(x.dtype).reshape(stat_shape)
    else:
        cache_mean, cache_var = given
    param_shape = next((p.shape for p in (gamma, beta) if p is not None), None)
    cache = NumbaNormCache(mean=cache_mean, var=cache_var, x_shape=x.shape, x=x3, kernel_mean=mean, rstd=rstd,
                           gamma=g, has_gamma=gamma is not None, has_beta=beta is not None, param_shape=param_shape,
                           batch_stats=given is None, center=True, layout=(), backend=k.BACKEND)
    return y, cache


def run_channels_backward(dy, cache: NumbaNormCache, out=None, kernels=None):
    """``(dx, dgamma, dbeta)`` for a cache from :func:`run_channels_forward`; ``out`` as in the forward, for ``dx``.

    ``kernels``: the kernel set of the forward that made ``cache`` (``ValueError`` if it is another one).
    """
    k = kernel_set(kernels)
    check_cache_backend(cache, k)
    x3 = cache.x
    dy3, dx_out = backward_arrays(dy, x3, cache.x_shape, out)
    channels = x3.shape[1]
    dgamma, dbeta = np.empty(channels), np.empty(channels)
    with threads_for(x3.nbytes):
        k.channels_backward(x3, dy3, cache.gamma, cache.kernel_mean, cache.rstd, cache.batch_stats,
                            dx_out.reshape(x3.shape), dgamma, dbeta)
    dgamma, dbeta = parameter_gradients(cache, dgamma, dbeta)
    return dx_out, dgamma, dbeta
