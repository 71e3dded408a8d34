r"""2-D convolution (PyTorch's ``F.conv2d``, cross-correlation, no groups or dilation) via im2col and col2im.

Shapes: ``x`` is ``(N, C, H, W)``, ``weight`` is ``(O, C, kh, kw)``, ``bias`` is ``(O,)`` or ``None``; with stride
``(sh, sw)`` and zero padding ``(ph, pw)`` the output ``y`` is ``(N, O, Ho, Wo)``,

.. math::

    H_o = \lfloor (H + 2p_h - k_h)/s_h \rfloor + 1, \qquad W_o = \lfloor (W + 2p_w - k_w)/s_w \rfloor + 1 .

im2col and col2im
-----------------
Pad ``x`` with zeros to ``xp`` of shape ``(N, C, H+2ph, W+2pw)``. ``im2col`` copies every receptive field into a
column: ``cols[n, c, i, j, a, b] = xp[n, c, a·sh + i, b·sw + j]``, shape ``(N, C, kh, kw, Ho, Wo)``, viewed as a
matrix ``(N, K, L)`` with ``K = C·kh·kw`` rows and ``L = Ho·Wo`` columns. It is a linear map ``P`` (a selection
followed by the padding). Its adjoint ``Pᵀ`` is ``col2im``: start from zeros of ``xp``'s shape, **add** each entry of
the columns back where it came from, and drop the padding. Where receptive fields overlap (stride < kernel) one
pixel is in several columns and receives the *sum* of their entries; that is exactly what the transpose of a
selection does. Hence :math:`\langle \mathrm{im2col}(x), c\rangle = \langle x, \mathrm{col2im}(c)\rangle` for all
``x`` and ``c`` (tutorial 10 checks it).

Forward
-------
With ``Wm = weight.reshape(O, K)``: :math:`Y_n = W_m\,\mathrm{cols}_n + b` (``(O, L)`` for each sample ``n``), reshaped
to ``(N, O, Ho, Wo)``. In indices,
:math:`y_{n o a b} = \sum_{c i j} W_{o c i j}\, xp_{n, c, a s_h + i, b s_w + j} + b_o`.

Backward (derived)
------------------
With ``dY`` = ``dy`` viewed as ``(N, O, L)``, the forward is a matrix product ``Y_n = Wm cols_n`` per sample, so

.. math::

    dW_m = \sum_n dY_n\,\mathrm{cols}_n^\top \;(O, K),\qquad
    db_o = \sum_{n, l} dY_{n o l} \;(O,),\qquad
    d\mathrm{cols}_n = W_m^\top dY_n \;(K, L),

and, because ``cols = P x`` is linear, :math:`dx = P^\top d\mathrm{cols} = \mathrm{col2im}(d\mathrm{cols})` of shape
``(N, C, H, W)``. In indices: :math:`dx_{n c h w} = \sum_{o, i, j, a, b:\ a s_h + i - p_h = h,\ b s_w + j - p_w = w}
W_{o c i j}\, dy_{n o a b}`, i.e. a "full" correlation of ``dy`` with the flipped kernel, which col2im computes
without ever flipping anything.

Complex step: the forward only multiplies and adds (no conjugation), so it is analytic in ``x``, ``weight``, ``bias``.
Deviations from PyTorch: no ``groups``, ``dilation`` or non-zero ``padding_mode``.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import as_array, cast_like, check_dy, check_ndim, check_nonempty, check_param


def pair(value, name: str, *, allow_zero: bool = False) -> tuple[int, int]:
    """An int or a pair of ints (PyTorch's ``kernel_size``/``stride``/``padding``) as a validated ``(h, w)`` tuple."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__}") from None
    if len(items) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    low = 0 if allow_zero else 1
    if any(v < low for v in items):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '>= 1'}, got {value!r}")
    return int(items[0]), int(items[1])


def output_size(h: int, w: int, kernel, stride, padding) -> tuple[int, int]:
    """``(Ho, Wo)`` of a sliding window over an ``h × w`` image; a ``ValueError`` if the window does not fit."""
    ho = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel_size {kernel} does not fit the input {h}x{w} with padding {padding}: "
                         f"the output would be {ho}x{wo}")
    return ho, wo


def im2col(x, kernel, stride=1, padding=0, *, pad_value=0.0):
    """The receptive fields of ``x`` as columns.

    Args:
        x: ``(N, C, H, W)``.
        kernel, stride, padding: ints or pairs.
        pad_value: what the padding holds (0 for convolution and average pooling, ``-inf`` for max pooling).

    Returns:
        ``cols`` of shape ``(N, C, kh, kw, Ho, Wo)``, ``cols[n, c, i, j, a, b] = xp[n, c, a·sh + i, b·sw + j]``.
    """
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel, "kernel_size"), pair(stride, "stride"), \
        pair(padding, "padding", allow_zero=True)
    n, c, h, w = x.shape
    ho, wo = output_size(h, w, (kh, kw), (sh, sw), (ph, pw))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value) if ph or pw else x
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):  # one strided slice per kernel offset: kh·kw copies, each vectorized over N, C, Ho, Wo
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw]
    return cols


def col2im(cols, x_shape, kernel, stride=1, padding=0):
    """The adjoint of :func:`im2col`: add every column entry back to the pixel it was copied from.

    Args:
        cols: ``(N, C, kh, kw, Ho, Wo)``.
        x_shape: ``(N, C, H, W)``, the shape of the image ``im2col`` was applied to.

    Returns:
        ``(N, C, H, W)``: overlapping receptive fields add up; the padding is dropped.
    """
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel, "kernel_size"), pair(stride, "stride"), \
        pair(padding, "padding", allow_zero=True)
    n, c, h, w = x_shape
    ho, wo = output_size(h, w, (kh, kw), (sh, sw), (ph, pw))
    if cols.shape != (n, c, kh, kw, ho, wo):
        raise ValueError(f"cols must have shape {(n, c, kh, kw, ho, wo)}, got {cols.shape}")
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw] += cols[:, :, i, j]
    return xp[:, :, ph:ph + h, pw:pw + w]


class Conv2dCache(NamedTuple):
    cols: np.ndarray  # (N, K, L) the input's receptive fields, K = C·kh·kw, L = Ho·Wo
    weight_mat: np.ndarray  # (O, K) the weight as used
    weight_shape: tuple  # (O, C, kh, kw)
    has_bias: bool
    x_shape: tuple  # (N, C, H, W)
    y_shape: tuple  # (N, O, Ho, Wo)
    stride: tuple
    padding: tuple
    dtype: np.dtype
    backend: str = "numpy"


def conv2d_forward(x, weight, bias=None, *, stride=1, padding=0):
    """Cross-correlation of ``x`` with ``weight``, plus ``bias``, as PyTorch's ``conv2d``.

    Args:
        x: ``(N, C, H, W)``.
        weight: ``(O, C, kh, kw)``.
        bias: ``(O,)`` or ``None``.
        stride, padding: ints or ``(h, w)`` pairs; zero padding.

    Returns:
        ``(y, cache)``, ``y`` of shape ``(N, O, Ho, Wo)`` in ``x``'s dtype.

    Examples:
        >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> y, _ = conv2d_forward(x, np.ones((1, 1, 2, 2)), stride=2)
        >>> y[0, 0].tolist()  # sums of the four 2x2 blocks
        [[10.0, 18.0], [42.0, 50.0]]
    """
    x = as_array(x, "x")
    check_ndim(x, "x", (4,), "(N, C, H, W)")
    check_nonempty(x, "x")
    weight = as_array(weight, "weight")
    check_ndim(weight, "weight", (4,), "(out_channels, in_channels, kh, kw)")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels (axis 1, shape {x.shape}) but weight expects "
                         f"in_channels={weight.shape[1]} (weight shape {weight.shape})")
    weight = cast_like(x, weight)
    bias = cast_like(x, check_param(bias, "bias", (weight.shape[0],)))
    stride, padding = pair(stride, "stride"), pair(padding, "padding", allow_zero=True)
    out_ch, _, kh, kw = weight.shape
    cols6 = im2col(x, (kh, kw), stride, padding)  # (N, C, kh, kw, Ho, Wo)
    n, _, _, _, ho, wo = cols6.shape
    cols = cols6.reshape(n, -1, ho * wo)  # (N, K, L)
    weight_mat = weight.reshape(out_ch, -1)  # (O, K)
    y = weight_mat @ cols  # (N, O, L), one matrix product per sample
    if bias is not None:
        y = y + bias[:, None]
    y = y.reshape(n, out_ch, ho, wo)
    cache = Conv2dCache(cols, weight_mat, weight.shape, bias is not None, x.shape, y.shape, stride, padding, y.dtype)
    return y, cache


def conv2d_backward(dy, cache: Conv2dCache):
    """Gradients of :func:`conv2d_forward`.

    Returns:
        ``(dx, dweight, dbias)``: ``(N, C, H, W)``, ``(O, C, kh, kw)``, ``(O,)`` (``None`` without bias).
    """
    dy = check_dy(dy, cache.y_shape, cache.dtype)
    n, out_ch = cache.y_shape[:2]
    dy_mat = dy.reshape(n, out_ch, -1)  # (N, O, L)
    dweight = np.tensordot(dy_mat, cache.cols, axes=([0, 2], [0, 2])).reshape(cache.weight_shape)  # (O, K)
    dbias = dy_mat.sum(axis=(0, 2)) if cache.has_bias else None  # (O,)
    dcols = cache.weight_mat.T @ dy_mat  # (N, K, L)
    kernel = cache.weight_shape[2:]
    dcols6 = dcols.reshape((n, cache.x_shape[1]) + tuple(kernel) + tuple(cache.y_shape[2:]))
    dx = col2im(dcols6, cache.x_shape, kernel, cache.stride, cache.padding)
    return dx, dweight, dbias


register("conv2d", "numpy", conv2d_forward, conv2d_backward)
