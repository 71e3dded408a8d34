r"""Test-time BatchNorm calibration (α-BN, TTN mixing) on the Numba CPU backend, registered as ``"numba"``.

The math and the sources are in :mod:`normref.ops.test_time_bn`; the symbols below are its symbols. Per channel
``c``, over the ``m = N·S`` values ``R`` of the channel (``S = prod(spatial)``):

Forward: BatchNorm's column-wise machinery
------------------------------------------
1. **Test statistics** ``μ_t``, ``σ²_t`` (float64): :func:`batch_channel_moments`, the statistics half of
   :func:`._colwise.channels_forward`: ``prange`` over channels, per slice ``x[n, c, :]`` the corrected two-pass
   moments (:func:`._common.moments`), the slices merged by Chan's formula (:func:`._colwise.chan_merge_equal`);
   one read of ``x``. ``σ²_t`` is multiplied by ``k = m/(m-1)`` with ``unbiased=True``. Given ``stats`` skip this.
2. **Mixing**, ``C`` values in NumPy float64, as in the reference:
   ``μ̃ = wμ_t + (1-w)μ_s``, ``σ̃² = wσ²_t + (1-w)σ²_s + τw(1-w)(μ_t-μ_s)²`` (``τ = 1`` with
   ``mixture_variance``).
3. **Normalization with given statistics**: :func:`._colwise.run_channels_forward` with ``given = (μ̃, σ̃²)``, the
   BatchNorm kernel in evaluation mode (``y = ((x - μ̃)·rstd)·γ + β``, ``rstd = 1/s``, ``s = sqrt(σ̃² + ε)``);
   read ``x`` again, write ``y``.

So the forward reads ``x`` twice from memory (BatchNorm's training forward re-reads each channel from cache right
after its statistics; here the mixing sits between the two, for all channels at once). Measured on
``(32, 64, 64, 64)`` float32 (32 MiB), 2 threads, ``out=`` given, medians of 7: forward 6.7 ms (BatchNorm's
training forward on ``"numba"``: 6.1 ms; the NumPy reference: 107 ms), backward 6.1 ms (BatchNorm: 7.0 ms; NumPy:
110 ms); a copy of the array takes 5 ms.

Backward: two per-channel sums, then an elementwise ``dx``
----------------------------------------------------------
:func:`mixed_channels_backward`, ``prange`` over channels (iteration ``c`` owns channel ``c``, as in
:mod:`._colwise`: no partial buffers). One read of ``x`` and ``dy`` gives, by :func:`._common.dot_sum` per slice,

.. math::

    P = \textstyle\sum_R dy\,(x - \mu_t),\qquad Q = \sum_R dy ,

in float64. With :math:`\hat x = (x - \tilde\mu)/s` and :math:`g = \gamma\,dy`:

.. math::

    d\gamma = \textstyle\sum_R dy\,\hat x = \bigl(P + (\mu_t - \tilde\mu)\,Q\bigr)/s,\qquad d\beta = Q,\qquad
    c_2 = \operatorname{mean}_R g = \gamma Q/m,\qquad c_1 = \operatorname{mean}_R (g\hat x) = \gamma\,d\gamma/m .

The reference's exact gradient (``stats_grad=True``) is

.. math::

    dx = \frac1s\Bigl[g - w\,c_2 - w\,c_1\,u\Bigr],\qquad u = \frac{k(x-\mu_t) + \tau(1-w)(\mu_t-\mu_s)}{s},

affine in ``x`` per channel, so the second read of ``x`` and ``dy`` writes

.. math::

    dx = \frac1s\Bigl[g - A - B\,(x - \mu_t)\Bigr],\qquad
    A = w\Bigl(c_2 + c_1\,\frac{\tau(1-w)(\mu_t-\mu_s)}{s}\Bigr),\qquad B = \frac{w\,c_1\,k}{s} ;

with stop-gradient (``stats_grad=False``, or given ``stats``) ``A = B = 0``: ``dx = g/s``. ``μ_t`` and ``μ̃`` enter
the kernels rounded to the storage dtype (``x - μ_t`` is then exact for nearby values, as in :mod:`._colwise`), and
``dγ`` uses those rounded values, so the identity above holds for the ``x̂`` the forward used. The sums are
lane-blocked with float64 flushes (:mod:`._common`'s error bound, ``≤ (D + 2)u Σ|terms|``); ``dγ``, ``dβ`` are
deterministic on any number of threads (one iteration owns each channel). ``w`` is a hyperparameter: no gradient.

Same signature, validation (:func:`normref.ops.test_time_bn.alpha_batch_norm_args`) and results as the reference,
within rounding: statistics and mixing are float64 here for float32 input (the reference mixes in float32).
Complex input raises ``TypeError``; a non-contiguous ``x`` or ``dy`` is copied first. ``out=`` on both functions.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._registry import register
from ...ops.test_time_bn import alpha_batch_norm_args
from . import _colwise
from ._colwise import channel_moments, run_channels_forward
from ._common import LANES, NumbaNormCache, backward_arrays, dot_sum, parameter_gradients, threads_for
from ._rowwise import check_cache_backend


class NumbaAlphaBatchNormCache(NamedTuple):
    """``norm``, ``test_mean``, ``test_var`` mean what they mean in
    :class:`normref.ops.test_time_bn.AlphaBatchNormCache`; ``w`` is ``(C,)`` float64 here."""

    norm: NumbaNormCache  # the BatchNorm kernel's cache, the mixed statistics as given statistics
    w: np.ndarray  # (C,) float64, the weight on the test statistics
    test_mean: np.ndarray  # (C,) mu_t used, x's dtype
    test_var: np.ndarray  # (C,) sigma_t^2 used (unbiased if requested), x's dtype
    kernel_test_mean: np.ndarray  # (C,) float64 mu_t
    shift: np.ndarray  # (C,) float64 tau (1 - w)(mu_t - mu_s)
    k: float  # m/(m-1) for the unbiased test variance, else 1
    stats_grad: bool  # the gradient flows through the test statistics
    backend: str = "numba"


@njit(parallel=True, fastmath=False, cache=True)
def batch_channel_moments(x, mean, var):
    """Mean and biased variance of each channel of ``(N, C, S)`` ``x`` into the float64 ``(C,)`` ``mean``, ``var``
    (:func:`._colwise.channel_moments` per channel: the statistics of :func:`._colwise.channels_forward`)."""
    for c in prange(x.shape[1]):  # iteration c owns mean[c], var[c]
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        mean[c], var[c] = channel_moments(x, c, lanes, wide)


@njit(parallel=True, fastmath=False, cache=True)
def mixed_channels_backward(x, dy, gamma, mean, rstd, test_mean, w, k, shift, stats_grad, dx, dgamma, dbeta):
    """Gradients of the mixed-statistics normalization (module docstring).

    Args:
        x, dy: ``(N, C, S)``, C-contiguous, one dtype.
        gamma: ``(C,)`` (ones when absent).
        mean, rstd: ``(C,)`` float64, the mixed mean ``μ̃`` and ``1/s`` of the forward.
        test_mean: ``(C,)`` float64 ``μ_t``.
        w, shift: ``(C,)`` float64 ``w`` and ``τ(1-w)(μ_t-μ_s)``; ``k``: the variance factor.
        stats_grad: add the path through the test statistics (``A``, ``B``); else ``dx = g/s``.
        dx: ``(N, C, S)`` output.
        dgamma, dbeta: ``(C,)`` float64 outputs, ``Σ dy·x̂`` and ``Σ dy``.
    """
    batch, channels, size = x.shape
    count = batch * size
    for c in prange(channels):  # iteration c owns channel c: dgamma[c], dbeta[c] and dx[:, c, :]
        lanes, wide = np.empty((2, LANES), x.dtype), np.empty((2, LANES))
        mt, mm = x.dtype.type(test_mean[c]), x.dtype.type(mean[c])  # as the forward's kernel rounded them
        p = q = 0.0
        for i in range(batch):
            a, b = dot_sum(dy[i, c], x[i, c], mt, lanes, wide)  # Σ dy·(x - μ_t), Σ dy over one slice
            p += a
            q += b
        sum_dy_xhat = (p + (float(mt) - float(mm)) * q) * rstd[c]
        dgamma[c] = sum_dy_xhat
        dbeta[c] = q
        g = gamma[c]
        big_a = big_b = x.dtype.type(0)
        if stats_grad:
            c1 = g * sum_dy_xhat / count  # mean(g·x̂)
            c2 = g * q / count  # mean(g)
            big_a = x.dtype.type(w[c] * (c2 + c1 * shift[c] * rstd[c]))
            big_b = x.dtype.type(w[c] * c1 * k * rstd[c])
        s = x.dtype.type(rstd[c])
        for i in range(batch):
            v, d, out = x[i, c], dy[i, c], dx[i, c]
            for j in range(size):
                out[j] = s * (g * d[j] - big_a - big_b * (v[j] - mt))


def alpha_batch_norm_forward(x, gamma=None, beta=None, *, source_stats, w_test=0.1, eps=1e-5,
                             mixture_variance=False, unbiased=False, stats_grad=True, stats=None, out=None):
    """Like :func:`normref.ops.test_time_bn.alpha_batch_norm_forward`; the cache is a
    :class:`NumbaAlphaBatchNormCache`.

    ``out``: ``None`` (allocate ``y``), or a C-contiguous array of ``x``'s shape and dtype to write ``y`` into.
    """
    a = alpha_batch_norm_args(x, gamma, beta, source_stats=source_stats, w_test=w_test, eps=eps, unbiased=unbiased,
                              stats=stats, allow_complex=False)
    x = np.ascontiguousarray(a.x)
    channels, count = x.shape[1], a.count
    k = 1.0
    if a.stats is None:
        mu_t, var_t = np.empty(channels), np.empty(channels)
        with threads_for(x.nbytes):
            batch_channel_moments(x.reshape(x.shape[0], channels, -1), mu_t, var_t)
        if unbiased:
            k = count / (count - 1)
            var_t = var_t * k
    else:
        mu_t, var_t = (np.array(s, dtype=np.float64).reshape(channels) for s in a.stats)
        stats_grad = False  # pinned statistics are constants
    mu_s, var_s, w = a.source_mean.astype(np.float64), a.source_var.astype(np.float64), a.w
    mean = w * mu_t + (1.0 - w) * mu_s
    var = w * var_t + (1.0 - w) * var_s
    shift = np.zeros(channels)
    if mixture_variance:
        diff = mu_t - mu_s
        var = var + w * (1.0 - w) * diff * diff
        shift = (1.0 - w) * diff
    view = a.view
    y, norm = run_channels_forward(x, a.gamma, a.beta, eps=a.eps, given=(mean.reshape(view), var.reshape(view)),
                                   stat_shape=view, out=out)
    norm = norm._replace(mean=mean.astype(x.dtype).reshape(view), var=var.astype(x.dtype).reshape(view))
    return y, NumbaAlphaBatchNormCache(norm, w, mu_t.astype(x.dtype), var_t.astype(x.dtype), mu_t, shift, k,
                                       bool(stats_grad))


def alpha_batch_norm_backward(dy, cache: NumbaAlphaBatchNormCache, *, out=None):
    """``(dx, dgamma, dbeta)``, like :func:`normref.ops.test_time_bn.alpha_batch_norm_backward`.

    ``out``: ``None`` (allocate ``dx``), or a C-contiguous array of ``x``'s shape and dtype to write ``dx`` into.
    """
    norm = cache.norm
    check_cache_backend(norm, _colwise)
    x3 = norm.x
    dy3, dx = backward_arrays(dy, x3, norm.x_shape, out)
    channels = x3.shape[1]
    dgamma, dbeta = np.empty(channels), np.empty(channels)
    with threads_for(x3.nbytes):
        mixed_channels_backward(x3, dy3, norm.gamma, norm.kernel_mean, norm.rstd, cache.kernel_test_mean, cache.w,
                                cache.k, cache.shift, cache.stats_grad, dx.reshape(x3.shape), dgamma, dbeta)
    dgamma, dbeta = parameter_gradients(norm, dgamma, dbeta)
    return dx, dgamma, dbeta


register("alpha_batch_norm", "numba", alpha_batch_norm_forward, alpha_batch_norm_backward)
