r"""Region Normalization, RN-B and RN-L (Yu, Xie, Li, Lin, Zhang, Li, Xie, Liu, AAAI 2020, arXiv:1911.10375).

Made for image inpainting: the pixels of a hole (filled with a constant) and the valid pixels have very different
statistics, so RN normalizes each *region* with its own mean and variance. Reference code: ``geekyutao/RN``
(``rn.py``: ``RN_binarylabel``, ``RN_B``, ``SelfAware_Affine``, ``RN_L``), which this module follows.

Core: region-wise batch normalization
-------------------------------------
Input ``x`` of shape ``(N, C, *spatial)`` and a binary mask ``M`` of shape ``(N, 1, *spatial)``, the same for every
channel. Region :math:`r \in \{1, 0\}` is the set of positions :math:`S_r = \{(n, p): M_{n,p} = r\}`; one statistic
per region and channel, pooled over the batch and the pixels of that region (the code is "BN-style"; the maintainer,
geekyutao/RN#12, says RN can be BN-style or IN-style and the code is BN-style):

.. math::

    \mu_{rc} = \operatorname{mean}_{S_r} x_c,\quad \sigma^2_{rc} = \operatorname{mean}_{S_r}(x_c-\mu_{rc})^2,\quad
    \hat x = \frac{x - \mu_{rc}}{\sqrt{\sigma^2_{rc} + \epsilon_r}},\quad
    \epsilon_r = \epsilon\,\frac{P}{|S_r|},\ P = N\cdot\textstyle\prod \mathrm{spatial}.

The unusual effective epsilon :math:`\epsilon_r` is what the code computes: it fills the outside of a region with
:math:`\mu_{rc}`, applies ``BatchNorm2d(affine=False)`` over all :math:`P` positions (whose variance is then
:math:`\sigma^2_{rc}|S_r|/P`) and rescales by :math:`\sqrt{|S_r|/P}`. Reproduced here on purpose. An empty region
has no pixels and so no output. The statistics are **always batch statistics**, in evaluation too (no running stats).

Bookkeeping: gather region ``r``'s positions into a ``(C, |S_r|)`` view; region-wise BN is then the shared normalize
primitive (:mod:`normref.ops._normalize`) over axis 1 of that view, with scalar eps :math:`\epsilon_r`. Its exact
backward therefore applies region by region (``g = dy·scale``, means over :math:`S_r`):

.. math::

    dx = \mathrm{rstd}_{rc}\bigl(g - \operatorname{mean}_{S_r} g - \hat x \operatorname{mean}_{S_r}(g\hat x)\bigr).

RN-B (basic): the mask comes from the data
------------------------------------------
``M`` is the inpainting mask, **1 for holes** (corrupted pixels) and 0 for valid ones, as in the code's
``networks.py``; the code calls ``M = 1`` the foreground (``f``) and ``M = 0`` the background (``b``). A mask of another
spatial size is resized with nearest-neighbour sampling (PyTorch's ``interpolate(mode='nearest')``:
source index :math:`\lfloor i\cdot \mathrm{in}/\mathrm{out}\rfloor`). Four per-channel parameters, all initialized to 0:

.. math::

    y = \hat x \odot \bigl[M(1+\gamma_f) + (1-M)(1+\gamma_b)\bigr] + \beta_f + \beta_b
    \qquad(\text{code, the default}).

**Bias: code versus paper.** In the code each bias is added *outside* its mask product, so both biases reach every
pixel: the effective bias is the global :math:`\beta_f+\beta_b` and only the scales are region-wise. The paper
describes a region-wise affine (recalled; the RN-B affine equation could not be re-read, see the research notes), so
``regionwise_bias=True`` offers :math:`y = \hat x(1+\gamma_r) + \beta_r` per region. Backward: the per-region scale
:math:`1+\gamma_r` is the primitive's ``gamma`` on region ``r``'s view, so :math:`d\gamma_r = \sum_{S_r} dy\,\hat x`;
:math:`d\beta_f = d\beta_b = \sum dy` over all positions (code) or :math:`d\beta_r = \sum_{S_r} dy` (paper).

RN-L (learned): the mask comes from a spatial response map
----------------------------------------------------------
All maps below are ``(N, 1, H, W)``; ``Conv_k`` is a stride-1 convolution with zero padding ``k//2`` (k = 7 in the
code, which allows 3 or 7; any odd k here):

.. math::

    a = \operatorname{mean}_c x,\quad m = \max_c x,\quad
    s = \operatorname{sigmoid}\bigl(\mathrm{Conv}_k^{2\to1,\ \text{no bias}}([a; m];\, w_{sa})\bigr),

.. math::

    \gamma_s = \mathrm{Conv}_k^{1\to1}(s;\, w_\gamma) + b_\gamma,\quad
    \beta_s = \mathrm{Conv}_k^{1\to1}(s;\, w_\beta) + b_\beta,\quad
    M = [s \ge \tau]\ (\text{detached}),\quad y = \mathrm{RN}(x, M)\odot(1+\gamma_s) + \beta_s ,

the pixel maps broadcast over channels (the paper's "global affine"), :math:`\tau = 0.8` by default.

Backward of RN-L, node by node (``dy`` of shape ``(N, C, H, W)``):

1. :math:`d\hat x = dy\,(1+\gamma_s)`; :math:`d\gamma_s = \sum_c dy\,\hat x`; :math:`d\beta_s = \sum_c dy`.
2. region-wise BN backward of :math:`d\hat x` gives the first part of :math:`dx` (the mask is a constant: the
   threshold has zero derivative almost everywhere, and the code detaches it).
3. the two 1→1 convolutions: :math:`ds = \mathrm{Conv}^\top(d\gamma_s; w_\gamma) + \mathrm{Conv}^\top(d\beta_s;
   w_\beta)`, with :math:`dw = \sum dy_{out}\star \mathrm{window}` and :math:`db = \sum dy_{out}`.
4. sigmoid: :math:`dz = ds\, s(1-s)`; the 2→1 convolution gives :math:`da, dm, dw_{sa}`.
5. channel mean and max: :math:`dx \mathrel{+}= da/C` on every channel, and :math:`dx \mathrel{+}= dm` on the arg-max
   channel only (the sub-gradient of max; ties would split it, and the tests avoid them).

The convolution here is a deliberately minimal ``same``-padding 2-D convolution with its backward
(:func:`conv2d_same_forward`), enough for RN-L's three small kernels; a general ``Conv2d`` belongs to the networks
layer. Comparisons (threshold, arg-max) use the real part, so the forward is the analytic continuation of the real
one away from ties and the threshold, and the complex step applies.

Paper: https://arxiv.org/abs/1911.10375
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import (as_array, cast_like, check_ndim, check_nonempty, check_param, check_positive_float,
                         check_dy)
from ._normalize import normalize_backward, normalize_forward


# --------------------------------------------------------------------------------------------------------------------
# The mask
# --------------------------------------------------------------------------------------------------------------------
def resize_mask_nearest(mask: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of ``mask (N, 1, *in_spatial)`` to ``spatial``, as PyTorch's ``mode='nearest'``.

    Output index ``i`` along an axis of input size ``n_in`` and output size ``n_out`` reads input index
    ``floor(i · n_in / n_out)``.
    """
    out = mask
    for axis, size in enumerate(spatial, start=2):
        n_in = out.shape[axis]
        if n_in != size:
            src = np.minimum((np.arange(size) * n_in) // size, n_in - 1)
            out = np.take(out, src, axis=axis)
    return out


def check_mask(mask, x_shape: tuple[int, ...]) -> np.ndarray:
    """Validate a binary region mask against ``x (N, C, *spatial)``; return it as float ``(N, 1, *spatial)``.

    Accepted: bool, int or float arrays of shape ``(N, 1, *s)`` or ``(N, *s)`` holding only 0 and 1; ``s`` may
    differ from ``x``'s spatial size (it is then resized with :func:`resize_mask_nearest`).
    """
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy.ndarray of 0s and 1s, got {type(mask).__name__}")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"mask must have a bool, integer or real float dtype, got {mask.dtype}")
    ndim = len(x_shape)
    if mask.ndim == ndim - 1:
        mask = mask[:, None]
    if mask.ndim != ndim or mask.shape[0] != x_shape[0] or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (N, 1, *spatial) or (N, *spatial) with N = {x_shape[0]} "
                         f"(one mask shared by the channels), got {mask.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("mask must hold only 0 and 1 (1 = hole/foreground, 0 = valid/background); "
                         "threshold a soft mask first")
    return resize_mask_nearest(mask.astype(np.float64), tuple(x_shape[2:]))


# --------------------------------------------------------------------------------------------------------------------
# Core: region-wise batch normalization on the shared primitive
# --------------------------------------------------------------------------------------------------------------------
class RegionCache(NamedTuple):
    """Per-region caches of the primitive, and how to scatter back. ``P = N·prod(spatial)``."""

    index: tuple  # (index of region 1, index of region 0): flat positions in [0, P), or None for an empty region
    norm: tuple  # (NormalizeCache or None, NormalizeCache or None) on the (C, |S_r|) views
    x_shape: tuple[int, ...]  # (N, C, *spatial)


def _rows(x):
    """``(N, C, *spatial)`` -> ``(C, P)``, positions in the order of ``mask.reshape(P)``."""
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


def _unrows(rows, x_shape):
    return np.moveaxis(rows.reshape((x_shape[1], x_shape[0]) + tuple(x_shape[2:])), 0, 1)


def region_normalize_forward(x, mask, scales=(None, None), biases=(None, None), *, eps):
    """Region-wise BN of ``x (N, C, *spatial)`` with a validated mask ``(N, 1, *spatial)``.

    ``scales[r]``/``biases[r]`` are ``None`` or ``(C,)`` arrays applied to region ``r`` (index 0 is ``M = 1``).
    Returns ``(y, RegionCache)``.
    """
    rows = _rows(x)
    flat = mask.reshape(-1)
    total = flat.size
    y_rows = np.zeros(rows.shape, np.result_type(rows, *[p for p in scales + biases if p is not None]))
    index, caches = [], []
    for region, value in enumerate((1.0, 0.0)):
        idx = np.flatnonzero(flat == value)
        if idx.size == 0:
            index.append(None)
            caches.append(None)
            continue
        eps_r = eps * total / idx.size  # the code's effective epsilon (module docstring)
        y_r, cache = normalize_forward(rows[:, idx], scales[region], biases[region], reduce_axes=(1,),
                                       param_view_shape=(rows.shape[0], 1), eps=eps_r)
        y_rows[:, idx] = y_r
        index.append(idx)
        caches.append(cache)
    return _unrows(y_rows, x.shape), RegionCache(tuple(index), tuple(caches), tuple(x.shape))


def region_normalize_backward(dy, cache: RegionCache):
    """Exact backward of :func:`region_normalize_forward`: ``(dx, (dscale_1, dbias_1), (dscale_0, dbias_0))``."""
    dy_rows = _rows(dy)
    dx_rows = np.zeros(dy_rows.shape, np.result_type(dy_rows, *[c.xhat for c in cache.norm if c is not None]))
    grads = []
    for idx, norm in zip(cache.index, cache.norm):
        if idx is None:
            grads.append((None, None))
            continue
        dx_r, dscale, dbias = normalize_backward(dy_rows[:, idx], norm)
        dx_rows[:, idx] = dx_r
        grads.append((dscale, dbias))
    return _unrows(dx_rows, cache.x_shape), grads[0], grads[1]


def _xhat(cache: RegionCache):
    """The normalized input ``(N, C, *spatial)`` reassembled from the region caches."""
    rows = None
    for idx, norm in zip(cache.index, cache.norm):
        if idx is None:
            continue
        if rows is None:
            rows = np.zeros((cache.x_shape[1], int(np.prod(cache.x_shape)) // cache.x_shape[1]), norm.xhat.dtype)
        rows[:, idx] = norm.xhat
    return _unrows(rows, cache.x_shape)


def _check_x(x, min_spatial=1, allow_complex=True):
    x = as_array(x, "x", allow_complex=allow_complex)
    check_ndim(x, "x", tuple(range(2 + min_spatial, 6)), "(N, C, *spatial)")
    check_nonempty(x, "x")
    return x


def region_stats(x, mask):
    """Per-region batch statistics, for inspection: ``{1: (mean (C,), var (C,), count), 0: ...}`` (empty -> absent)."""
    x = _check_x(x)
    mask = check_mask(mask, x.shape)
    rows, flat = _rows(x), mask.reshape(-1)
    out = {}
    for value in (1, 0):
        sel = rows[:, flat == value]
        if sel.shape[1]:
            mean = sel.mean(axis=1)
            out[value] = (mean, ((sel - mean[:, None]) ** 2).mean(axis=1), sel.shape[1])
    return out


# --------------------------------------------------------------------------------------------------------------------
# RN-B
# --------------------------------------------------------------------------------------------------------------------
class RNBCache(NamedTuple):
    region: RegionCache
    has_params: tuple[bool, bool, bool, bool]  # which of gamma_f, beta_f, gamma_b, beta_b were given
    regionwise_bias: bool
    backend: str = "numpy"


class RNBArgs(NamedTuple):
    """Validated arguments of :func:`rn_b_forward` (shared with the compiled backends)."""

    x: np.ndarray  # (N, C, *spatial)
    params: tuple  # (gamma_f, beta_f, gamma_b, beta_b), each (C,) in x's dtype or None
    mask: np.ndarray  # (N, 1, *spatial) float64 of 0/1, resized to x's spatial size
    eps: float


def rn_b_args(x, gamma_f, beta_f, gamma_b, beta_b, *, mask, eps, stats, allow_complex=True) -> RNBArgs:
    """Validate the arguments of :func:`rn_b_forward` (see it for their meaning).

    ``allow_complex=False`` (the compiled backends) refuses complex ``x`` and parameters with a ``TypeError``
    naming them.
    """
    if stats is not None:
        raise ValueError("stats must be None: region normalization always uses batch statistics")
    x = _check_x(x, allow_complex=allow_complex)
    num_channels = x.shape[1]
    params = tuple(cast_like(x, check_param(p, name, (num_channels,), allow_complex=allow_complex))
                   for p, name in zip((gamma_f, beta_f, gamma_b, beta_b), ("gamma_f", "beta_f", "gamma_b", "beta_b")))
    mask = check_mask(mask, x.shape)
    eps = check_positive_float(eps, "eps", allow_zero=True)
    return RNBArgs(x, params, mask, eps)


def rn_b_region_affine(params, regionwise_bias):
    """``(scales, biases)`` per region (index 0: ``M = 1``) from ``(gamma_f, beta_f, gamma_b, beta_b)``.

    Scales are ``1 + gamma_r``; biases are ``beta_r`` (``regionwise_bias``) or ``beta_f + beta_b`` on both regions
    (the code). ``None`` stays ``None`` (an absent bias on both: ``None``).
    """
    gamma_f, beta_f, gamma_b, beta_b = params
    scales = tuple(None if g is None else 1.0 + g for g in (gamma_f, gamma_b))
    if regionwise_bias:
        return scales, (beta_f, beta_b)
    present = [b for b in (beta_f, beta_b) if b is not None]
    total = None if not present else (present[0] if len(present) == 1 else present[0] + present[1])
    return scales, (total, total)


def rn_b_forward(x, gamma_f=None, beta_f=None, gamma_b=None, beta_b=None, *, mask, eps=1e-5,
                 regionwise_bias=False, stats=None):
    """RN-B: region normalization with a given binary mask and region-wise scales ``1 + gamma``.

    Args:
        x: ``(N, C, *spatial)`` with at least one spatial axis.
        gamma_f, beta_f, gamma_b, beta_b: ``(C,)`` or ``None``: scale offsets and biases of the ``M = 1``
            (foreground, hole) and ``M = 0`` (background, valid) regions; the scale is ``1 + gamma``.
        mask: ``(N, 1, *s)`` or ``(N, *s)`` of 0/1, 1 = hole; resized to ``x``'s spatial size if ``s`` differs.
        eps: the base epsilon; region ``r`` uses ``eps·P/|S_r|`` (the code's effective value).
        regionwise_bias: ``False`` (code): ``beta_f + beta_b`` everywhere; ``True`` (paper): ``beta_r`` on region r.
        stats: must be ``None``: RN always normalizes with batch statistics.

    Returns:
        ``(y, cache)``, ``y`` like ``x``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2, 3, 4, 4)); mask = (rng.random((2, 1, 4, 4)) < 0.3)
        >>> y, _ = rn_b_forward(x, mask=mask)
        >>> holes = np.moveaxis(y, 1, 0)[:, mask[:, 0]]  # (C, number of hole pixels)
        >>> bool(np.allclose(holes.mean(axis=1), 0) and np.allclose(holes.var(axis=1), 1, atol=1e-3))
        True
    """
    a = rn_b_args(x, gamma_f, beta_f, gamma_b, beta_b, mask=mask, eps=eps, stats=stats)
    scales, biases = rn_b_region_affine(a.params, regionwise_bias)
    y, region = region_normalize_forward(a.x, a.mask, scales, biases, eps=a.eps)
    return y, RNBCache(region, tuple(p is not None for p in a.params), bool(regionwise_bias))


def rn_b_backward(dy, cache: RNBCache):
    """Exact gradients of :func:`rn_b_forward`: ``(dx, dgamma_f, dbeta_f, dgamma_b, dbeta_b)`` (``None`` if absent)."""
    dy = check_dy(dy, cache.region.x_shape, next(c.xhat.dtype for c in cache.region.norm if c is not None))
    dx, grads_f, grads_b = region_normalize_backward(dy, cache.region)
    return (dx,) + rn_b_param_grads(grads_f, grads_b, cache.has_params, cache.regionwise_bias,
                                    cache.region.x_shape[1], dy.dtype)


def rn_b_param_grads(grads_f, grads_b, has_params, regionwise_bias, num_channels, dtype):
    """``(dgamma_f, dbeta_f, dgamma_b, dbeta_b)`` from the per-region ``(dscale_r, dbias_r)`` (``None`` for an empty
    region, which contributes zero); ``None`` for an absent parameter. Shared with the compiled backends."""
    (dscale_f, dbias_f), (dscale_b, dbias_b) = grads_f, grads_b

    def total(*parts):  # sum of per-region parameter gradients, a region without pixels contributing zero
        parts = [p for p in parts if p is not None]
        return sum(parts[1:], parts[0]) if parts else np.zeros(num_channels, dtype)

    dgamma_f = total(dscale_f) if has_params[0] else None
    dgamma_b = total(dscale_b) if has_params[2] else None
    if regionwise_bias:
        dbeta_f, dbeta_b = total(dbias_f), total(dbias_b)
    else:
        dbeta_f = dbeta_b = total(dbias_f, dbias_b)
    return (dgamma_f, dbeta_f if has_params[1] else None, dgamma_b, dbeta_b if has_params[3] else None)


# --------------------------------------------------------------------------------------------------------------------
# A minimal 2-D convolution (stride 1, zero "same" padding), for RN-L's three small kernels
# --------------------------------------------------------------------------------------------------------------------
class ConvCache(NamedTuple):
    windows: np.ndarray  # (N, Ci, H, W, k, k) read-only view of the padded input
    weight: np.ndarray  # (Co, Ci, k, k)
    has_bias: bool
    x_shape: tuple[int, ...]  # (N, Ci, H, W)


def conv2d_same_forward(x, weight, bias=None):
    """``y[n,o,h,w] = sum_{c,i,j} xpad[n,c,h+i,w+j]·weight[o,c,i,j] + bias[o]``, padding ``k//2``, odd ``k``.

    ``x (N, Ci, H, W)``, ``weight (Co, Ci, k, k)``, ``bias (Co,)`` or None; returns ``(y (N, Co, H, W), cache)``.
    """
    k = weight.shape[-1]
    p = k // 2
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    y = np.einsum("nchwij,ocij->nohw", windows, weight)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y, ConvCache(windows, weight, bias is not None, tuple(x.shape))


def conv2d_same_backward(dy, cache: ConvCache):
    """``(dx, dweight, dbias)``: ``dweight = sum dy·window``, ``dbias = sum dy``, ``dx`` = the transposed conv."""
    weight = cache.weight
    k = weight.shape[-1]
    p = k // 2
    n, ci, h, w = cache.x_shape
    dweight = np.einsum("nohw,nchwij->ocij", dy, cache.windows)
    dbias = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    dpadded = np.zeros((n, ci, h + 2 * p, w + 2 * p), np.result_type(dy, weight))
    for i in range(k):  # each kernel tap scatters dy back to the input positions it read
        for j in range(k):
            dpadded[:, :, i:i + h, j:j + w] += np.einsum("nohw,oc->nchw", dy, weight[:, :, i, j])
    return dpadded[:, :, p:p + h, p:p + w], dweight, dbias


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free and analytic (complex-step safe)


# --------------------------------------------------------------------------------------------------------------------
# RN-L
# --------------------------------------------------------------------------------------------------------------------
class RNLCache(NamedTuple):
    region: RegionCache
    xhat: np.ndarray  # (N, C, H, W)
    scale: np.ndarray  # (N, 1, H, W) = 1 + gamma_s
    s: np.ndarray  # (N, 1, H, W) the response map
    argmax: np.ndarray  # (N, 1, H, W) channel of the maximum
    conv_sa: ConvCache
    conv_gamma: ConvCache
    conv_beta: ConvCache
    backend: str = "numpy"


def rn_l_forward(x, w_sa, w_gamma, b_gamma=None, w_beta=None, b_beta=None, *, threshold=0.8, eps=1e-5,
                 stats=None):
    """RN-L: region normalization with the mask ``[s >= threshold]`` of a learned response map ``s``.

    Args:
        x: ``(N, C, H, W)``.
        w_sa: ``(1, 2, k, k)`` the response-map kernel on ``[mean_c x; max_c x]`` (no bias), ``k`` odd.
        w_gamma, b_gamma: ``(1, 1, k, k)`` and ``(1,)`` (bias may be None): the kernel making ``gamma_s`` from ``s``.
        w_beta, b_beta: the same for ``beta_s``.
        threshold: ``tau``; the mask is ``s >= tau`` (detached).
        eps: base epsilon, as in :func:`rn_b_forward`.
        stats: must be ``None`` (batch statistics always).

    Returns:
        ``(y (N, C, H, W), cache)``.
    """
    a = rn_l_args(x, w_sa, w_gamma, b_gamma, w_beta, b_beta, threshold=threshold, eps=eps, stats=stats)
    x = a.x
    r = rn_l_response_forward(x, *a.params)
    mask = (r.s.real >= a.threshold).astype(np.float64)  # detached: no gradient flows through the threshold
    xhat, region = region_normalize_forward(x, mask, eps=a.eps)
    scale = 1.0 + r.gamma_s
    y = xhat * scale + r.beta_s
    return y, RNLCache(region, xhat, scale, r.s, r.argmax, r.conv_sa, r.conv_gamma, r.conv_beta)


def rn_l_backward(dy, cache: RNLCache):
    """Exact gradients of :func:`rn_l_forward` (away from max ties and the threshold):
    ``(dx, dw_sa, dw_gamma, db_gamma, dw_beta, db_beta)``."""
    dy = check_dy(dy, cache.xhat.shape, cache.xhat.dtype)
    # node 1: y = xhat * (1 + gamma_s) + beta_s
    dgamma_s = (dy * cache.xhat).sum(axis=1, keepdims=True)
    dbeta_s = dy.sum(axis=1, keepdims=True)
    # node 2: region-wise BN (mask constant)
    dx, _, _ = region_normalize_backward(dy * cache.scale, cache.region)
    # nodes 3-5: the response map
    return rn_l_response_backward(dx, dgamma_s, dbeta_s, cache)


class RNLArgs(NamedTuple):
    """Validated arguments of :func:`rn_l_forward` (shared with the compiled backends)."""

    x: np.ndarray  # (N, C, H, W)
    params: tuple  # (w_sa, w_gamma, b_gamma, w_beta, b_beta) in x's dtype (biases may be None)
    threshold: float
    eps: float


def rn_l_args(x, w_sa, w_gamma, b_gamma, w_beta, b_beta, *, threshold, eps, stats, allow_complex=True) -> RNLArgs:
    """Validate the arguments of :func:`rn_l_forward`; ``allow_complex=False`` refuses complex arrays
    (``TypeError`` naming them)."""
    if stats is not None:
        raise ValueError("stats must be None: region normalization always uses batch statistics")
    x = as_array(x, "x", allow_complex=allow_complex)
    check_ndim(x, "x", (4,), "(N, C, H, W)")
    check_nonempty(x, "x")
    if w_sa is None:
        raise ValueError("w_sa must be an array of shape (1, 2, k, k), got None")
    w_sa = as_array(w_sa, "w_sa", allow_complex=allow_complex)
    if w_sa.ndim != 4 or w_sa.shape[:2] != (1, 2) or w_sa.shape[2] != w_sa.shape[3] \
            or w_sa.shape[2] % 2 == 0:
        raise ValueError(f"w_sa must have shape (1, 2, k, k) with k odd, got {w_sa.shape}")
    k = w_sa.shape[2]
    w_gamma, w_beta = (cast_like(x, check_param(w, name, (1, 1, k, k), allow_complex=allow_complex))
                       for w, name in ((w_gamma, "w_gamma"), (w_beta, "w_beta")))
    if w_gamma is None or w_beta is None:
        raise ValueError(f"w_gamma and w_beta must be arrays of shape (1, 1, {k}, {k}), got None")
    b_gamma, b_beta = (cast_like(x, check_param(b, name, (1,), allow_complex=allow_complex))
                       for b, name in ((b_gamma, "b_gamma"), (b_beta, "b_beta")))
    w_sa = cast_like(x, w_sa)
    threshold = check_positive_float(threshold, "threshold", allow_zero=True)
    eps = check_positive_float(eps, "eps", allow_zero=True)
    return RNLArgs(x, (w_sa, w_gamma, b_gamma, w_beta, b_beta), threshold, eps)


class RNLResponse(NamedTuple):
    """The response map and the pixel affine of RN-L (module docstring), with the caches of their convolutions."""

    s: np.ndarray  # (N, 1, H, W)
    gamma_s: np.ndarray  # (N, 1, H, W)
    beta_s: np.ndarray  # (N, 1, H, W)
    argmax: np.ndarray  # (N, 1, H, W) channel of the maximum
    conv_sa: ConvCache
    conv_gamma: ConvCache
    conv_beta: ConvCache


def rn_l_response_forward(x, w_sa, w_gamma, b_gamma, w_beta, b_beta) -> RNLResponse:
    """``s = sigmoid(conv([mean_c x; max_c x]; w_sa))``, ``gamma_s``, ``beta_s`` of validated arguments."""
    argmax = np.argmax(x.real, axis=1)[:, None]  # (N, 1, H, W); real part: complex-step safe
    pooled = np.concatenate([x.mean(axis=1, keepdims=True), np.take_along_axis(x, argmax, axis=1)], axis=1)
    z, conv_sa = conv2d_same_forward(pooled, w_sa)
    s = _sigmoid(z)
    gamma_s, conv_gamma = conv2d_same_forward(s, w_gamma, b_gamma)
    beta_s, conv_beta = conv2d_same_forward(s, w_beta, b_beta)
    return RNLResponse(s, gamma_s, beta_s, argmax, conv_sa, conv_gamma, conv_beta)


def rn_l_response_backward(dx, dgamma_s, dbeta_s, cache):
    """Nodes 3-5 of the backward: add the response map's share to the region normalization's ``dx`` and return
    ``(dx, dw_sa, dw_gamma, db_gamma, dw_beta, db_beta)``, from ``dgamma_s``, ``dbeta_s`` ``(N, 1, H, W)``.
    ``cache`` holds ``s``, ``argmax`` and the three convolution caches (an :class:`RNLCache`, or a compiled
    backend's cache with those fields)."""
    # node 3: the two 1->1 convolutions of s
    ds_g, dw_gamma, db_gamma = conv2d_same_backward(dgamma_s, cache.conv_gamma)
    ds_b, dw_beta, db_beta = conv2d_same_backward(dbeta_s, cache.conv_beta)
    # node 4: sigmoid, then the 2->1 convolution
    dz = (ds_g + ds_b) * cache.s * (1.0 - cache.s)
    dpooled, dw_sa, _ = conv2d_same_backward(dz, cache.conv_sa)
    # node 5: channel mean (to every channel) and channel max (to the arg-max channel)
    num_channels = dx.shape[1]
    dx = dx + dpooled[:, :1] / num_channels
    dmax = np.zeros(dx.shape, dx.dtype)
    np.put_along_axis(dmax, cache.argmax, dpooled[:, 1:], axis=1)
    return dx + dmax, dw_sa, dw_gamma, db_gamma, dw_beta, db_beta


def rn_l_mask(cache: RNLCache) -> np.ndarray:
    """The mask ``(N, 1, H, W)`` the forward used (1 where ``s >= threshold``).

    A compiled backend's cache carries it as its ``mask`` field (a copy is returned)."""
    if getattr(cache, "mask", None) is not None:
        return np.array(cache.mask, dtype=np.float64)
    region = cache.region
    n, _, *spatial = region.x_shape
    flat = np.zeros(n * int(np.prod(spatial)))
    if region.index[0] is not None:
        flat[region.index[0]] = 1.0
    return flat.reshape((n, 1, *spatial))


register("rn_b", "numpy", rn_b_forward, rn_b_backward)
register("rn_l", "numpy", rn_l_forward, rn_l_backward)
