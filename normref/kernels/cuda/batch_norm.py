r"""BatchNorm on the CUDA backend: one block per channel of the ``(N, C, S)`` view.

Same signature, validation and results as :func:`normref.ops.batch_norm.batch_norm_forward` (math and derivation
there). Block ``c`` owns every value of channel ``c``: thread ``t`` visits the flat indices ``i = t, t + TPB, ...``
of the channel's ``m = N·S`` values (``n = i // S``, ``s = i % S``, so consecutive threads read consecutive spatial
positions), keeps a Welford triple, and the block merges the triples in the Chan tree of :mod:`._block_reduce`.

Backward: the block reduces ``Σ dy`` and ``Σ dy·x̂`` over its channel in one tree. These two sums *are* the parameter
gradients ``dβ_c`` and ``dγ_c``, and, times ``γ_c/m``, the ``c₂`` and ``c₁`` of ``dx = rstd·(g - c₂ - x̂·c₁)``. Since
one block owns the whole channel, the parameter-gradient reduction needs no second stage and no atomics, and it is
deterministic. With given statistics (eval) the same kernel runs with ``c₁ = c₂ = 0``.

Limitation (performance, not correctness): with few channels and a large ``N·S`` only ``C`` blocks are busy; a GPU
build for such shapes would split each channel over several blocks and merge their Welford triples in a second
stage. Input ``(N, C)`` (``S = 1``) reads with stride ``C``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from ..._registry import register
from ...ops.batch_norm import batch_norm_args
from ._block_reduce import TPB, block_sum2, block_welford, shared_bytes, welford_push
from ._host import CudaNormCache, device_param, real_dy


@cuda.jit(device=True)
def normalize_channel(x, y, c, mean, rstd, gamma, beta, has_gamma, has_beta):
    """``y[:, c, :] = γ_c·(x[:, c, :] - mean)·rstd + β_c``, block-stride over the channel (elementwise)."""
    spatial = x.shape[2]
    for i in range(cuda.threadIdx.x, x.shape[0] * spatial, TPB):
        n = i // spatial
        s = i - n * spatial
        value = (float64(x[n, c, s]) - mean) * rstd
        if has_gamma:
            value *= float64(gamma[c])
        if has_beta:
            value += float64(beta[c])
        y[n, c, s] = value


@cuda.jit
def channel_forward_kernel(x, gamma, beta, has_gamma, has_beta, eps, y, mean_out, var_out, rstd_out):
    """Batch statistics of channel ``blockIdx.x`` (Welford + Chan tree), then the normalized channel."""
    shared = cuda.shared.array(0, float64)  # dynamic: shared_bytes(3) at launch
    buf_count = shared[:TPB]
    buf_mean = shared[TPB:2 * TPB]
    buf_m2 = shared[2 * TPB:3 * TPB]
    c = cuda.blockIdx.x
    spatial = x.shape[2]
    count, mean, m2 = 0.0, 0.0, 0.0
    for i in range(cuda.threadIdx.x, x.shape[0] * spatial, TPB):
        n = i // spatial
        count, mean, m2 = welford_push(count, mean, m2, float64(x[n, c, i - n * spatial]))
    count, mean, m2 = block_welford(buf_count, buf_mean, buf_m2, count, mean, m2)
    var = m2 / count
    rstd = 1.0 / math.sqrt(var + eps)
    if cuda.threadIdx.x == 0:
        mean_out[c] = mean
        var_out[c] = var
        rstd_out[c] = rstd
    normalize_channel(x, y, c, mean, rstd, gamma, beta, has_gamma, has_beta)


@cuda.jit
def channel_forward_given_kernel(x, gamma, beta, has_gamma, has_beta, stat_mean, stat_rstd, y):
    """Normalize channel ``blockIdx.x`` with given (running) statistics."""
    c = cuda.blockIdx.x
    normalize_channel(x, y, c, stat_mean[c], stat_rstd[c], gamma, beta, has_gamma, has_beta)


@cuda.jit
def channel_backward_kernel(x, dy, gamma, has_gamma, batch_stats, stat_mean, stat_rstd, dx, dgamma, dbeta):
    """Channel ``blockIdx.x``: ``dγ_c = Σ dy·x̂``, ``dβ_c = Σ dy`` in one tree, then ``dx``."""
    shared = cuda.shared.array(0, float64)  # dynamic: shared_bytes(2) at launch
    buf_a = shared[:TPB]
    buf_b = shared[TPB:2 * TPB]
    c = cuda.blockIdx.x
    spatial = x.shape[2]
    m = x.shape[0] * spatial
    mean = stat_mean[c]
    rstd = stat_rstd[c]
    sum_dy, sum_dy_xhat = 0.0, 0.0
    for i in range(cuda.threadIdx.x, m, TPB):
        n = i // spatial
        s = i - n * spatial
        d = float64(dy[n, c, s])
        sum_dy += d
        sum_dy_xhat += d * (float64(x[n, c, s]) - mean) * rstd
    sum_dy, sum_dy_xhat = block_sum2(buf_a, buf_b, sum_dy, sum_dy_xhat)
    scale = float64(gamma[c]) if has_gamma else 1.0
    if cuda.threadIdx.x == 0:
        dgamma[c] = sum_dy_xhat
        dbeta[c] = sum_dy
    # c1 = mean(g·x̂), c2 = mean(g) with g = γ_c·dy; zero with given statistics (constants w.r.t. x)
    c1 = scale * sum_dy_xhat / m if batch_stats else 0.0
    c2 = scale * sum_dy / m if batch_stats else 0.0
    for i in range(cuda.threadIdx.x, m, TPB):
        n = i // spatial
        s = i - n * spatial
        xhat = (float64(x[n, c, s]) - mean) * rstd
        dx[n, c, s] = rstd * (scale * float64(dy[n, c, s]) - c2 - xhat * c1)


def batch_norm_forward(x, gamma=None, beta=None, *, eps=1e-5, stats=None):
    """BatchNorm per channel on the GPU: ``(y, cache)``, as the NumPy op (cache ``mean``/``var`` ``(1, C, 1, ...)``)."""
    args = batch_norm_args(x, gamma, beta, eps=eps, stats=stats, allow_complex=False)
    x, gamma, beta, eps, stats = args
    num_channels = x.shape[1]
    x_view = np.ascontiguousarray(x).reshape(x.shape[0], num_channels, -1)
    d_x = cuda.to_device(x_view)
    d_gamma, d_beta = device_param(gamma, x.dtype), device_param(beta, x.dtype)
    d_y = cuda.device_array_like(x_view)
    if stats is None:
        d_mean, d_var, d_rstd = (cuda.device_array(num_channels, np.float64) for _ in range(3))
        launch = channel_forward_kernel[num_channels, TPB, 0, shared_bytes(3)]
        launch(d_x, d_gamma, d_beta, gamma is not None, beta is not None, eps, d_y, d_mean, d_var, d_rstd)
        stat_mean, stat_var, stat_rstd = d_mean.copy_to_host(), d_var.copy_to_host(), d_rstd.copy_to_host()
    else:
        stat_mean, stat_var = (s.reshape(num_channels).astype(np.float64) for s in stats)
        stat_rstd = 1.0 / np.sqrt(stat_var + eps)
        channel_forward_given_kernel[num_channels, TPB](d_x, d_gamma, d_beta, gamma is not None, beta is not None,
                                                        cuda.to_device(stat_mean), cuda.to_device(stat_rstd), d_y)
    keep = args.stat_shape
    cache = CudaNormCache(
        mean=stat_mean.astype(x.dtype).reshape(keep), var=stat_var.astype(x.dtype).reshape(keep), x_shape=x.shape,
        x_view=x_view, stat_mean=stat_mean, stat_rstd=stat_rstd, gamma=gamma, has_beta=beta is not None,
        batch_stats=stats is None, center=True, period=1, div=1,
        param_shape=None if gamma is None and beta is None else (num_channels,))
    return d_y.copy_to_host().reshape(x.shape), cache


def batch_norm_backward(dy, cache: CudaNormCache):
    """``(dx, dgamma, dbeta)``, as :func:`normref.ops.batch_norm.batch_norm_backward`."""
    x_view = cache.x_view
    dtype = x_view.dtype
    num_channels = x_view.shape[1]
    d_x, d_dy = cuda.to_device(x_view), cuda.to_device(real_dy(dy, cache))
    d_dx = cuda.device_array_like(x_view)
    d_dgamma, d_dbeta = (cuda.device_array(num_channels, np.float64) for _ in range(2))
    launch = channel_backward_kernel[num_channels, TPB, 0, shared_bytes(2)]
    launch(d_x, d_dy, device_param(cache.gamma, dtype), cache.gamma is not None, cache.batch_stats,
           cuda.to_device(cache.stat_mean), cuda.to_device(cache.stat_rstd), d_dx, d_dgamma, d_dbeta)
    dx = d_dx.copy_to_host().reshape(cache.x_shape)
    dgamma = d_dgamma.copy_to_host().astype(dtype) if cache.gamma is not None else None
    dbeta = d_dbeta.copy_to_host().astype(dtype) if cache.has_beta else None
    return dx, dgamma, dbeta


register("batch_norm", "cuda", batch_norm_forward, batch_norm_backward)
