r"""Pooling: max and average pooling over 2-D windows (via :func:`normref.ops.conv.im2col`), and global average pooling.

Shapes: ``x`` is ``(N, C, H, W)``; a window of ``(kh, kw)`` moved with stride ``(sh, sw)`` (default: the kernel size,
as PyTorch) over ``x`` padded by ``(ph, pw)`` gives ``y`` of shape ``(N, C, Ho, Wo)`` (see :mod:`normref.ops.conv`).
Every channel is pooled independently. ``cols = im2col(x)`` has shape ``(N, C, kh, kw, Ho, Wo)``; below its two
kernel axes are flattened into one window axis of size ``k = kh·kw``.

Max pooling
-----------
Forward: :math:`y_{ncab} = \max_{r} \mathrm{cols}_{n c r a b}`, with the padding filled with :math:`-\infty` (as
PyTorch, which also requires ``padding <= kernel_size / 2`` so that no window is all padding). Let :math:`r^*` be the
arg-max. Away from ties the max is locally the selection of entry :math:`r^*`, a linear map, so

.. math::

    d\mathrm{cols}_{n c r a b} = [r = r^*_{ncab}]\, dy_{ncab}, \qquad dx = \mathrm{col2im}(d\mathrm{cols}),

the one-hot scatter of ``dy`` into the winning positions, added where windows overlap. At a tie the max is not
differentiable; like PyTorch we route the gradient to the first maximal entry (``argmax``). The arg-max compares real
parts, so the complex step (a tiny imaginary perturbation) keeps the selection and differentiates the linear branch.

Average pooling
---------------
Forward: :math:`y = \frac{1}{d}\sum_r \mathrm{cols}_r` with the padding filled with zeros. The divisor ``d`` is
``kh·kw`` (``count_include_pad=True``, PyTorch's default) or the number of real pixels in the window
(``count_include_pad=False``), an array ``(Ho, Wo)`` computed as :math:`\sum_r \mathrm{im2col}(1)_r`. Backward:
every entry of the window receives :math:`dy/d`, i.e. :math:`dx = \mathrm{col2im}(\mathrm{broadcast}(dy/d))`.

Global average pooling
----------------------
``x`` of shape ``(N, C, *spatial)`` to ``y`` of shape ``(N, C)``, :math:`y = \operatorname{mean}_{\text{spatial}} x`;
:math:`dx = dy/m` broadcast back over the ``m`` spatial positions.

Deviations from PyTorch: no ``dilation``, ``ceil_mode`` or ``return_indices``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._moments import accumulation_dtype
from .._registry import register
from .._validate import as_array, check_dy, check_ndim, check_nonempty
from .conv import col2im, im2col, pair


class PoolCache(NamedTuple):
    x_shape: tuple  # (N, C, H, W)
    y_shape: tuple  # (N, C, Ho, Wo)
    kernel: tuple
    stride: tuple
    padding: tuple
    weights: np.ndarray  # max: one-hot (N, C, kh, kw, Ho, Wo) of the winners; avg: 1/divisor, (Ho, Wo)
    dtype: np.dtype
    backend: str = "numpy"


def _pool_args(x, kernel_size, stride, padding):
    x = as_array(x, "x")
    check_ndim(x, "x", (4,), "(N, C, H, W)")
    check_nonempty(x, "x")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding", allow_zero=True)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size {kernel}, got {padding}")
    return x, kernel, stride, padding


def max_pool2d_forward(x, *, kernel_size, stride=None, padding=0):
    """Max over each window (arg-max taken on the real part).

    Args:
        x: ``(N, C, H, W)``.
        kernel_size, stride, padding: ints or pairs; ``stride=None`` means ``kernel_size``.

    Returns:
        ``(y, cache)``, ``y`` of shape ``(N, C, Ho, Wo)``.

    Examples:
        >>> y, _ = max_pool2d_forward(np.arange(16.0).reshape(1, 1, 4, 4), kernel_size=2)
        >>> y[0, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """
    x, kernel, stride, padding = _pool_args(x, kernel_size, stride, padding)
    cols = im2col(x, kernel, stride, padding, pad_value=-np.inf)  # (N, C, kh, kw, Ho, Wo)
    n, c, kh, kw, ho, wo = cols.shape
    flat = cols.reshape(n, c, kh * kw, ho, wo)
    winner = np.argmax(flat.real, axis=2)[:, :, None]  # (N, C, 1, Ho, Wo): real part, so the complex step is safe
    y = np.take_along_axis(flat, winner, axis=2)[:, :, 0]
    onehot = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(onehot, winner, True, axis=2)
    cache = PoolCache(x.shape, y.shape, kernel, stride, padding, onehot.reshape(cols.shape), y.dtype)
    return y, cache


def max_pool2d_backward(dy, cache: PoolCache):
    """``dx = col2im(onehot · dy)``: each output's gradient goes to the input that won its window. Returns ``(dx,)``."""
    dy = check_dy(dy, cache.y_shape, cache.dtype)
    dcols = cache.weights * dy[:, :, None, None]  # (N, C, kh, kw, Ho, Wo)
    return (col2im(dcols, cache.x_shape, cache.kernel, cache.stride, cache.padding),)


def avg_pool2d_forward(x, *, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Mean over each window.

    Args:
        x: ``(N, C, H, W)``.
        kernel_size, stride, padding: ints or pairs; ``stride=None`` means ``kernel_size``.
        count_include_pad: divide by ``kh·kw`` (True) or by the number of non-padding pixels in the window.

    Returns:
        ``(y, cache)``, ``y`` of shape ``(N, C, Ho, Wo)``.
    """
    x, kernel, stride, padding = _pool_args(x, kernel_size, stride, padding)
    cols = im2col(x, kernel, stride, padding)  # (N, C, kh, kw, Ho, Wo)
    if count_include_pad:
        divisor = np.full(cols.shape[-2:], float(kernel[0] * kernel[1]))
    else:
        ones = np.ones((1, 1) + x.shape[2:])
        divisor = im2col(ones, kernel, stride, padding).sum(axis=(2, 3))[0, 0]  # (Ho, Wo) real pixels per window
    inv = (1.0 / divisor).astype(np.empty(0, x.dtype).real.dtype)  # (Ho, Wo)
    y = cols.sum(axis=(2, 3)) * inv
    return y, PoolCache(x.shape, y.shape, kernel, stride, padding, inv, y.dtype)


def avg_pool2d_backward(dy, cache: PoolCache):
    """``dx = col2im(dy / divisor)`` broadcast over each window. Returns ``(dx,)``."""
    dy = check_dy(dy, cache.y_shape, cache.dtype)
    kh, kw = cache.kernel
    dcols = np.broadcast_to((dy * cache.weights)[:, :, None, None], dy.shape[:2] + (kh, kw) + dy.shape[2:])
    return (col2im(dcols, cache.x_shape, cache.kernel, cache.stride, cache.padding),)


class GlobalPoolCache(NamedTuple):
    x_shape: tuple  # (N, C, *spatial)
    dtype: np.dtype
    backend: str = "numpy"


def global_avg_pool_forward(x):
    """Mean over every spatial axis: ``(N, C, *spatial)`` to ``(N, C)``.

    Examples:
        >>> y, _ = global_avg_pool_forward(np.arange(8.0).reshape(1, 2, 2, 2))
        >>> y.tolist()
        [[1.5, 5.5]]
    """
    x = as_array(x, "x")
    check_ndim(x, "x", (3, 4, 5), "(N, C, *spatial) with 1 to 3 spatial axes")
    check_nonempty(x, "x")
    y = x.mean(axis=tuple(range(2, x.ndim)), dtype=accumulation_dtype(x.dtype)).astype(x.dtype, copy=False)
    return y, GlobalPoolCache(x.shape, y.dtype)


def global_avg_pool_backward(dy, cache: GlobalPoolCache):
    """``dx = dy / m`` broadcast over the ``m`` spatial positions. Returns ``(dx,)``."""
    dy = check_dy(dy, cache.x_shape[:2], cache.dtype)
    m = int(np.prod(cache.x_shape[2:]))
    dx = np.broadcast_to((dy / m).reshape(cache.x_shape[:2] + (1,) * (len(cache.x_shape) - 2)), cache.x_shape)
    return (dx.copy(),)


register("max_pool2d", "numpy", max_pool2d_forward, max_pool2d_backward)
register("avg_pool2d", "numpy", avg_pool2d_forward, avg_pool2d_backward)
register("global_avg_pool", "numpy", global_avg_pool_forward, global_avg_pool_backward)
