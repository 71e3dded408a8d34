r"""The column-wise kernels of ``"numba-fast"``: BatchNorm (:func:`channels_forward`, :func:`channels_backward`).

Same signatures, ``(N, C, S)`` view and parallel structure (``prange`` over channels; iteration ``c`` owns channel
``c``, its statistics, slices and parameter gradients) as :mod:`normref.kernels.numba_cpu._colwise`, whose
docstring explains the per-slice two-pass moments merged by Chan's formula. Only the sums differ: the plain,
reassociated loops of :mod:`._sums`. The kernels are compiled with ``contract`` only (see :mod:`._sums`, "What must
not be reassociated").
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..numba_cpu._colwise import chan_merge_equal
from ._rowwise import KERNEL
from ._sums import dot_sums, moments

BACKEND = "numba-fast"


@njit(**KERNEL)
def channels_forward(x, gamma, beta, eps, batch_stats, mean, var, rstd, y):
    """Normalize each channel over its batch and spatial values; arguments as the exact ``channels_forward``."""
    batch, channels, size = x.shape
    for c in prange(channels):  # iteration c owns channel c: mean[c], var[c], rstd[c] and y[:, c, :]
        if batch_stats:
            count, mu, m2 = 0.0, 0.0, 0.0
            for i in range(batch):
                mu_i, var_i = moments(x[i, c])
                count, mu, m2 = chan_merge_equal(count, mu, m2, float(size), mu_i, var_i * size)
            mean[c] = mu
            var[c] = m2 / count
        rstd[c] = 1.0 / np.sqrt(var[c] + eps)
        m, s = x.dtype.type(mean[c]), x.dtype.type(rstd[c])
        g, b = gamma[c], beta[c]
        for i in range(batch):
            v, out = x[i, c], y[i, c]
            for j in range(size):
                out[j] = ((v[j] - m) * s) * g + b


@njit(**KERNEL)
def channels_backward(x, dy, gamma, mean, rstd, batch_stats, dx, dgamma, dbeta):
    """Gradients of :func:`channels_forward`; arguments as the exact ``channels_backward``."""
    batch, channels, size = x.shape
    count = batch * size
    for c in prange(channels):  # iteration c owns channel c: dgamma[c], dbeta[c] and dx[:, c, :]
        m, s, g = x.dtype.type(mean[c]), x.dtype.type(rstd[c]), gamma[c]
        p = q = 0.0
        for i in range(batch):
            a, b = dot_sums(dy[i, c], x[i, c], m)  # Σ dy·(x - m), Σ dy over one slice
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
