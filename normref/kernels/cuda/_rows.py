r"""Row kernels: one thread block per normalized set, for LayerNorm, RMSNorm, InstanceNorm and GroupNorm.

All four are "normalize each row of a matrix" once ``x`` is viewed as ``(rows, m)`` (C order, no copy for a
contiguous input):

============  =====================  ============  ==========  ======================
layer         view                   ``period``    ``div``     parameter of (row, j)
============  =====================  ============  ==========  ======================
LayerNorm     (batch, prod(shape))   1             1           ``j`` (elementwise)
RMSNorm       (batch, prod(shape))   1             1           ``j``, no centering
InstanceNorm  (N·C, S)               C             S           channel ``row % C``
GroupNorm     (N·G, (C/G)·S)         G             S           channel of element j
============  =====================  ============  ==========  ======================

``S`` is the number of spatial positions. The parameter index of element ``j`` of ``row`` is
``((row % period)·m + j) // div``: ``(row % period)·m + j`` is the element's position inside its sample's
``(C, S)`` block, and dividing by ``S`` gives its channel. One formula serves all four layers.

Forward (one kernel, one block per row): Welford partials, the Chan tree of :mod:`._block_reduce`, then the block
writes ``y = γ·(x - μ)·rstd + β`` in a second sweep over the row. RMSNorm takes the same path and uses the mean
square ``E[x²] = σ² + μ²`` (a sum of two non-negative terms, so no cancellation) with ``μ := 0``. Given statistics
skip the reduction (a separate kernel, so that no barrier ever sits inside a branch).

Backward (one block per row): with ``g = γ·dy`` the block reduces ``Σ g`` and ``Σ g·x̂`` together, then writes
``dx = rstd·(g - c₂ - x̂·c₁)`` (``c₂ = 0`` without centering; both terms vanish with given statistics).

Parameter gradients, deterministic two-stage (no atomics):

* stage 1, elementwise parameters (LayerNorm, RMSNorm): the rows are split into ``K`` fixed chunks; thread
  ``(k, j)`` sums ``dy·x̂`` and ``dy`` down column ``j`` of chunk ``k`` into ``partials[k, j]``;
* stage 1, per-channel parameters (InstanceNorm, GroupNorm): one block per (sample, channel) segment of ``S``
  elements, a block tree into ``partials[n, c]``;
* stage 2: one thread per parameter adds its column of ``partials`` in increasing ``k``.

The summation order depends only on the shape and ``TPB``, so the gradients are bitwise reproducible.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from ._block_reduce import TPB, block_sum2, block_welford, shared_bytes, welford_push
from ._host import CudaNormCache, device_param, real_dy

ROW_CHUNKS = 64  # stage-1 chunks of rows for elementwise parameter gradients (fewer when there are fewer rows)


@cuda.jit(device=True)
def param_index(row, j, m, period, div):
    """The parameter (gamma/beta entry) that element ``j`` of ``row`` uses: see the module docstring's table."""
    return ((row % period) * m + j) // div


@cuda.jit(device=True)
def normalize_row(x, y, row, mean, rstd, gamma, beta, has_gamma, has_beta, period, div):
    """``y[row] = γ·(x[row] - mean)·rstd + β``, block-stride over the row (no barrier: elementwise)."""
    m = x.shape[1]
    for j in range(cuda.threadIdx.x, m, TPB):
        p = param_index(row, j, m, period, div)
        value = (float64(x[row, j]) - mean) * rstd
        if has_gamma:
            value *= float64(gamma[p])
        if has_beta:
            value += float64(beta[p])
        y[row, j] = value


@cuda.jit
def row_forward_kernel(x, gamma, beta, has_gamma, has_beta, center, eps, period, div, y, mean_out, var_out,
                       rstd_out):
    """Batch statistics of row ``blockIdx.x`` (Welford + Chan tree), then the normalized row."""
    shared = cuda.shared.array(0, float64)  # dynamic: shared_bytes(3) at launch
    buf_count = shared[:TPB]
    buf_mean = shared[TPB:2 * TPB]
    buf_m2 = shared[2 * TPB:3 * TPB]
    row = cuda.blockIdx.x
    count, mean, m2 = 0.0, 0.0, 0.0
    for j in range(cuda.threadIdx.x, x.shape[1], TPB):
        count, mean, m2 = welford_push(count, mean, m2, float64(x[row, j]))
    count, mean, m2 = block_welford(buf_count, buf_mean, buf_m2, count, mean, m2)
    var = m2 / count
    if not center:  # RMSNorm: the mean square, and no centering
        var += mean * mean
        mean = 0.0
    rstd = 1.0 / math.sqrt(var + eps)
    if cuda.threadIdx.x == 0:
        mean_out[row] = mean
        var_out[row] = var
        rstd_out[row] = rstd
    normalize_row(x, y, row, mean, rstd, gamma, beta, has_gamma, has_beta, period, div)


@cuda.jit
def row_forward_given_kernel(x, gamma, beta, has_gamma, has_beta, period, div, stat_mean, stat_rstd, y):
    """Normalize row ``blockIdx.x`` with given statistics (no reduction)."""
    row = cuda.blockIdx.x
    normalize_row(x, y, row, stat_mean[row], stat_rstd[row], gamma, beta, has_gamma, has_beta, period, div)


@cuda.jit
def row_backward_kernel(x, dy, gamma, has_gamma, center, batch_stats, period, div, stat_mean, stat_rstd, dx):
    """``dx`` of row ``blockIdx.x``: block sums of ``g`` and ``g·x̂``, then ``rstd·(g - c₂ - x̂·c₁)``."""
    shared = cuda.shared.array(0, float64)  # dynamic: shared_bytes(2) at launch
    buf_a = shared[:TPB]
    buf_b = shared[TPB:2 * TPB]
    row = cuda.blockIdx.x
    m = x.shape[1]
    mean = stat_mean[row]
    rstd = stat_rstd[row]
    sum_g, sum_gxhat = 0.0, 0.0
    for j in range(cuda.threadIdx.x, m, TPB):
        g = float64(dy[row, j])
        if has_gamma:
            g *= float64(gamma[param_index(row, j, m, period, div)])
        sum_g += g
        sum_gxhat += g * (float64(x[row, j]) - mean) * rstd
    sum_g, sum_gxhat = block_sum2(buf_a, buf_b, sum_g, sum_gxhat)
    # With given statistics the statistics are constants: only the affine path remains (c1 = c2 = 0).
    c1 = sum_gxhat / m if batch_stats else 0.0
    c2 = sum_g / m if batch_stats and center else 0.0
    for j in range(cuda.threadIdx.x, m, TPB):
        g = float64(dy[row, j])
        if has_gamma:
            g *= float64(gamma[param_index(row, j, m, period, div)])
        xhat = (float64(x[row, j]) - mean) * rstd
        dx[row, j] = rstd * (g - c2 - xhat * c1)


@cuda.jit
def column_partials_kernel(x, dy, stat_mean, stat_rstd, rows_per_chunk, part_dgamma, part_dbeta):
    """Stage 1, elementwise parameters: thread ``(k, j)`` sums ``dy·x̂`` and ``dy`` down column j of row chunk k."""
    k = cuda.blockIdx.y
    j = cuda.blockIdx.x * TPB + cuda.threadIdx.x
    rows, m = x.shape
    if j < m:  # no barrier in this kernel, so the guard may wrap everything
        acc_dgamma, acc_dbeta = 0.0, 0.0
        for row in range(k * rows_per_chunk, min((k + 1) * rows_per_chunk, rows)):
            d = float64(dy[row, j])
            acc_dgamma += d * (float64(x[row, j]) - stat_mean[row]) * stat_rstd[row]
            acc_dbeta += d
        part_dgamma[k, j] = acc_dgamma
        part_dbeta[k, j] = acc_dbeta


@cuda.jit
def segment_partials_kernel(x, dy, stat_mean, stat_rstd, seg_len, part_dgamma, part_dbeta):
    """Stage 1, per-channel parameters: block ``b`` sums ``dy·x̂`` and ``dy`` over segment b = (sample n, channel c).

    Segments are consecutive runs of ``seg_len`` elements of the ``(rows, m)`` view, so ``b = n·C + c`` and the
    partials land in ``part[n, c]``.
    """
    shared = cuda.shared.array(0, float64)  # dynamic: shared_bytes(2) at launch
    buf_a = shared[:TPB]
    buf_b = shared[TPB:2 * TPB]
    b = cuda.blockIdx.x
    segments_per_row = x.shape[1] // seg_len
    row = b // segments_per_row
    start = (b - row * segments_per_row) * seg_len
    mean = stat_mean[row]
    rstd = stat_rstd[row]
    acc_dgamma, acc_dbeta = 0.0, 0.0
    for s in range(cuda.threadIdx.x, seg_len, TPB):
        d = float64(dy[row, start + s])
        acc_dgamma += d * (float64(x[row, start + s]) - mean) * rstd
        acc_dbeta += d
    acc_dgamma, acc_dbeta = block_sum2(buf_a, buf_b, acc_dgamma, acc_dbeta)
    if cuda.threadIdx.x == 0:
        channels = part_dgamma.shape[1]
        part_dgamma[b // channels, b % channels] = acc_dgamma
        part_dbeta[b // channels, b % channels] = acc_dbeta


@cuda.jit
def sum_partials_kernel(part, out):
    """Stage 2: ``out[p] = Σ_k part[k, p]``, one thread per parameter, ``k`` in increasing order."""
    p = cuda.blockIdx.x * TPB + cuda.threadIdx.x
    if p < part.shape[1]:
        acc = 0.0
        for k in range(part.shape[0]):
            acc += part[k, p]
        out[p] = acc


def _blocks(n: int) -> int:
    return (n + TPB - 1) // TPB


def rows_forward(x_view, gamma, beta, *, eps, center, period, div, given=None):
    """Run the row forward on ``x_view`` ``(rows, m)``.

    Args:
        x_view: C-contiguous ``(rows, m)`` real array.
        gamma, beta: ``None`` or real arrays with one entry per parameter index (any shape; flattened).
        eps: added to the variance.
        center: ``False`` for RMSNorm.
        period, div: the parameter mapping of the module docstring.
        given: ``None`` for batch statistics, or ``(mean (rows,), var (rows,))`` to normalize with.

    Returns:
        ``(y_view, stat_mean, stat_var, stat_rstd)``: ``y_view`` like ``x_view``; the statistics ``(rows,)`` float64.
    """
    rows, _ = x_view.shape
    dtype = x_view.dtype
    d_x = cuda.to_device(x_view)
    d_gamma, d_beta = device_param(gamma, dtype), device_param(beta, dtype)
    d_y = cuda.device_array_like(x_view)
    if given is None:
        d_mean, d_var, d_rstd = (cuda.device_array(rows, np.float64) for _ in range(3))
        launch = row_forward_kernel[rows, TPB, 0, shared_bytes(3)]
        launch(d_x, d_gamma, d_beta, gamma is not None, beta is not None, center, eps, period, div, d_y, d_mean, d_var,
               d_rstd)
        stat_mean, stat_var, stat_rstd = d_mean.copy_to_host(), d_var.copy_to_host(), d_rstd.copy_to_host()
    else:
        stat_mean = np.ascontiguousarray(given[0], np.float64)
        stat_var = np.ascontiguousarray(given[1], np.float64)
        stat_rstd = 1.0 / np.sqrt(stat_var + eps)
        row_forward_given_kernel[rows, TPB](d_x, d_gamma, d_beta, gamma is not None, beta is not None, period, div,
                                            cuda.to_device(stat_mean), cuda.to_device(stat_rstd), d_y)
    return d_y.copy_to_host(), stat_mean, stat_var, stat_rstd


def rows_backward(dy, cache: CudaNormCache):
    """``(dx of x_shape, dgamma (P,) or None, dbeta (P,) or None)`` for a cache made by :func:`rows_forward`."""
    x_view = cache.x_view
    dtype = x_view.dtype
    rows, m = x_view.shape
    dy_view = real_dy(dy, cache)
    d_x, d_dy = cuda.to_device(x_view), cuda.to_device(dy_view)
    d_mean, d_rstd = cuda.to_device(cache.stat_mean), cuda.to_device(cache.stat_rstd)
    d_dx = cuda.device_array_like(x_view)
    launch = row_backward_kernel[rows, TPB, 0, shared_bytes(2)]
    launch(d_x, d_dy, device_param(cache.gamma, dtype), cache.gamma is not None,
           cache.center, cache.batch_stats, cache.period, cache.div, d_mean, d_rstd, d_dx)
    dx = d_dx.copy_to_host().reshape(cache.x_shape)
    if cache.param_shape is None:
        return dx, None, None

    if cache.period == 1 and cache.div == 1:  # elementwise parameters: chunks of rows
        chunks = min(rows, ROW_CHUNKS)
        rows_per_chunk = -(-rows // chunks)
        chunks = -(-rows // rows_per_chunk)
        d_part_dgamma, d_part_dbeta = (cuda.device_array((chunks, m), np.float64) for _ in range(2))
        column_partials_kernel[(_blocks(m), chunks), TPB](d_x, d_dy, d_mean, d_rstd, rows_per_chunk,
                                                           d_part_dgamma, d_part_dbeta)
    else:  # per-channel parameters: one block per (sample, channel) segment
        samples, channels = rows // cache.period, cache.period * m // cache.div
        d_part_dgamma, d_part_dbeta = (cuda.device_array((samples, channels), np.float64) for _ in range(2))
        launch = segment_partials_kernel[samples * channels, TPB, 0, shared_bytes(2)]
        launch(d_x, d_dy, d_mean, d_rstd, cache.div, d_part_dgamma, d_part_dbeta)
    grads = []
    for d_part in (d_part_dgamma, d_part_dbeta):
        d_out = cuda.device_array(d_part.shape[1], np.float64)
        sum_partials_kernel[_blocks(d_part.shape[1]), TPB](d_part, d_out)
        grads.append(d_out.copy_to_host().astype(dtype).reshape(cache.param_shape))
    dgamma = grads[0] if cache.gamma is not None else None
    dbeta = grads[1] if cache.has_beta else None
    return dx, dgamma, dbeta
