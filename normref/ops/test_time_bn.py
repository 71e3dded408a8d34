r"""Test-time BatchNorm calibration: mix the source (running) and the target (test-batch) statistics.

A network trained with BatchNorm normalizes at test time with its running statistics, estimated on the *source*
distribution. Under covariate shift the test batch has other statistics; using them instead (``w_test = 1``, "test-time
BN") is the simplest fix, and mixing the two is more robust for small test batches.

Notation (per channel ``c``; ``R = (n, *spatial)`` the ``m`` positions of a channel in the test batch):
:math:`\mu_s, \sigma^2_s` the source statistics (BN's ``running_mean``, ``running_var``), and the test statistics

.. math::

    \mu_t = \operatorname{mean}_R x,\qquad \sigma^2_t = k\,\operatorname{mean}_R (x-\mu_t)^2,\qquad
    k = 1 \text{ (biased, default) or } m/(m-1) \text{ (``unbiased=True``)}.

Forward, with :math:`w = ` ``w_test`` (a scalar or one weight per channel, in :math:`[0, 1]`):

.. math::

    \tilde\mu = w\mu_t + (1-w)\mu_s,\qquad
    \tilde\sigma^2 = w\sigma^2_t + (1-w)\sigma^2_s + \tau\,w(1-w)(\mu_t-\mu_s)^2,\qquad
    y = \gamma\,\frac{x-\tilde\mu}{\sqrt{\tilde\sigma^2+\epsilon}} + \beta ,

with :math:`\tau = 1` for ``mixture_variance=True`` (TTN) and 0 otherwise (linear mixing, α-BN). The extra term makes
:math:`\tilde\sigma^2` the variance of the mixture of the two distributions. ``w = 1`` is BatchNorm in training mode,
``w = 0`` is BatchNorm in evaluation mode. The layer behaves the same in ``train()`` and ``eval()``: it is a test-time
layer, and the source statistics are frozen buffers that it never updates.

**Which side the weight is on.** ``w_test`` always weighs the *test* statistics. The sources disagree:

* α-BN (You, Li & Zhao 2021, arXiv:2110.04065, "Test-time batch statistics calibration for covariate shift"): its α
  weighs the **source** statistics, :math:`\tilde\mu = \alpha\mu_s + (1-\alpha)\mu_t`, so ``w_test = 1 − α``.
  Evidence: the paper's equation could not be read; the decision rests on the α-BN baseline re-implemented by the
  MemBN authors (``Juwon-cvlab/NOTE``, ``models/norm_layer.py``, ``AlphaBN``), which mixes
  ``α·source + (1−α)·batch``. Confidence medium. No paper default for α was found.
* robusta's ``AlphaBatchNorm`` (bethgelab, copied by test-time-adaptation benchmarks): ``alpha = w_test``
  (comment "(1−alpha)·source + alpha·test"), default 0.1, which this layer also uses as its default. It takes the
  **unbiased** test variance (``unbiased=True`` here) and stops the gradient (``stats_grad=False``).
* TTN (Lim, Kim, Choo & Choi, ICLR 2023): α weighs the **test** statistics (``w_test = α``), one α per channel,
  with the mixture-variance term (``mixture_variance=True``); α is learned after training and frozen at test time.
  The term is supported by an unofficial re-implementation and by MemBN's ``add_correction_term2``; the paper's
  equation was not read (confidence medium). The re-implementation's batch-size rescaling of α is not included.

Backward
--------
Two gradient modes. Write :math:`s = \sqrt{\tilde\sigma^2+\epsilon}`, :math:`\hat x = (x-\tilde\mu)/s`,
:math:`g = \gamma\,dy`, :math:`c_2 = \operatorname{mean}_R g`, :math:`c_1 = \operatorname{mean}_R(g\hat x)`.

*Stop-gradient* (``stats_grad=False``, what robusta does by handing the mix to ``F.batch_norm`` as running
statistics): :math:`\mu_t, \sigma^2_t` are constants, and :math:`dx = g/s` (the primitive with given statistics).
Finite differences of the layer disagree by :math:`O(w)`; it is checked against the frozen-statistics function.

*Through the test statistics* (``stats_grad=True``, exact). The direct path is :math:`g/s`. The statistics path:
:math:`\partial\tilde\mu/\partial x_i = w/m`,
:math:`\partial\tilde\sigma^2/\partial x_i = \tfrac{2w}{m}\bigl[k(x_i-\mu_t) + \tau(1-w)(\mu_t-\mu_s)\bigr]`, and
:math:`\partial L/\partial\tilde\mu = -\textstyle\sum_R g/s`,
:math:`\partial L/\partial\tilde\sigma^2 = -\sum_R g\hat x/(2s^2)`. Summed:

.. math::

    dx = \frac1s\Bigl[g - w\,c_2 - w\,c_1\,u\Bigr],\qquad
    u = \frac{k(x-\mu_t) + \tau(1-w)(\mu_t-\mu_s)}{s}.

With the mixture term and ``k = 1``, :math:`u = \hat x` (normalizers.md §7: "the BN formula with both statistic
terms scaled by α"); with the linear mix, :math:`u = (x-\mu_t)/s`. The code runs the primitive with the mixed
statistics as given statistics (direct path, :math:`d\gamma = \sum dy\,\hat x`, :math:`d\beta = \sum dy`) and adds
:math:`-\frac{w}{s}(c_2 + c_1 u)`. ``w`` is a hyperparameter here (no gradient).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._moments import mean_var
from .._registry import register
from .._validate import (as_array, cast_like, check_affine, check_ndim, check_nonempty, check_param,
                         check_positive_float, check_stats)
from ._normalize import NormalizeCache, normalize_backward, normalize_forward


class AlphaBatchNormCache(NamedTuple):
    norm: NormalizeCache  # the primitive's cache, with the mixed statistics as given statistics
    w: np.ndarray  # (1, C, 1, ...) the weight on the test statistics
    u: np.ndarray | None  # (N, C, *spatial) the statistics-path direction; None in stop-gradient mode
    test_mean: np.ndarray  # (C,) mu_t used
    test_var: np.ndarray  # (C,) sigma_t^2 used (biased, or unbiased if requested)
    backend: str = "numpy"


def check_w_test(w_test, num_channels: int) -> np.ndarray:
    """``w_test`` as a ``(C,)`` float64 array: a scalar or ``(C,)`` with every entry in ``[0, 1]``."""
    if isinstance(w_test, bool):
        raise TypeError("w_test must be a real number or an array of shape (C,), got bool")
    arr = np.asarray(w_test)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"w_test must be a real number or a real array of shape (C,), got dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(num_channels, float(arr))
    if arr.shape != (num_channels,):
        raise ValueError(f"w_test must be a scalar or have shape ({num_channels},), got {arr.shape}")
    if not np.all((arr >= 0) & (arr <= 1)):
        raise ValueError(f"w_test must lie in [0, 1], got values from {arr.min()} to {arr.max()}")
    return arr.astype(np.float64)


class AlphaBatchNormArgs(NamedTuple):
    """The validated arguments of :func:`alpha_batch_norm_forward` (shared by every backend)."""

    x: np.ndarray  # (N, C, *spatial)
    gamma: np.ndarray | None  # (C,), cast to x's dtype
    beta: np.ndarray | None  # (C,), cast to x's dtype
    source_mean: np.ndarray  # (C,) mu_s, cast to x's dtype
    source_var: np.ndarray  # (C,) sigma_s^2, cast to x's dtype
    w: np.ndarray  # (C,) float64, the weight on the test statistics
    eps: float
    stats: tuple[np.ndarray, np.ndarray] | None  # given (mu_t, sigma_t^2), each (C,); None = from x

    @property
    def view(self) -> tuple[int, ...]:
        """The keepdims shape of per-channel arrays, ``(1, C, 1, ...)``."""
        return (1, self.x.shape[1]) + (1,) * (self.x.ndim - 2)

    @property
    def count(self) -> int:
        """``m``, the values per channel."""
        return self.x.size // self.x.shape[1]


def alpha_batch_norm_args(x, gamma, beta, *, source_stats, w_test, eps, unbiased, stats,
                          allow_complex=True) -> AlphaBatchNormArgs:
    """Validate the arguments of :func:`alpha_batch_norm_forward` (see it for their meaning).

    An unbiased test variance computed from ``x`` needs more than one value per channel. ``allow_complex=False``
    (the compiled backends) refuses complex ``x``, parameters and statistics with a ``TypeError`` naming them.
    """
    x = as_array(x, "x", allow_complex=allow_complex)
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    num_channels = x.shape[1]
    gamma, beta = check_affine(x, gamma, beta, (num_channels,), allow_complex=allow_complex)
    if not isinstance(source_stats, tuple) or len(source_stats) != 2:
        raise TypeError("source_stats must be a tuple (running_mean, running_var) of (C,) arrays")
    mu_s, var_s = (cast_like(x, check_param(s, name, (num_channels,), allow_complex=allow_complex))
                   for s, name in zip(source_stats, ("source_stats[0] (mean)", "source_stats[1] (var)")))
    if mu_s is None or var_s is None:
        raise ValueError("source_stats must hold two (C,) arrays, got None")
    eps = check_positive_float(eps, "eps", allow_zero=True)
    w = check_w_test(w_test, num_channels)
    if stats is None:
        if unbiased and x.size // num_channels < 2:
            raise ValueError(f"x must hold more than 1 value per channel for an unbiased test variance, got "
                             f"shape {x.shape}")
    else:
        stats = check_stats(stats, (num_channels,), x, allow_complex=allow_complex)
    return AlphaBatchNormArgs(x, gamma, beta, mu_s, var_s, w, eps, stats)


def alpha_batch_norm_forward(x, gamma=None, beta=None, *, source_stats, w_test=0.1, eps=1e-5,
                             mixture_variance=False, unbiased=False, stats_grad=True, stats=None):
    """Normalize ``x`` with a mix of source and test-batch statistics (module docstring).

    Args:
        x: ``(N, C, *spatial)``, 0 to 3 spatial axes.
        gamma, beta: ``(C,)`` or ``None``.
        source_stats: ``(mean (C,), var (C,))``, the trained BatchNorm's running statistics.
        w_test: weight of the test statistics, scalar or ``(C,)`` in [0, 1] (= 1 − α of α-BN, = robusta's alpha,
            = TTN's α).
        eps: added to the mixed variance inside the square root.
        mixture_variance: add ``w(1−w)(mu_t − mu_s)²`` (TTN).
        unbiased: use the unbiased test variance (robusta); default biased.
        stats_grad: ``True``: the gradient flows through the test statistics (exact); ``False``: stop-gradient.
        stats: ``None`` to compute the test statistics from ``x``, or given ``(mu_t (C,), sigma_t² (C,))``
            (pinned, constant: the frozen-statistics function).

    Returns:
        ``(y, cache)``, ``y`` like ``x``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(3.0, 2.0, size=(32, 2))
        >>> y, _ = alpha_batch_norm_forward(x, source_stats=(np.zeros(2), np.ones(2)), w_test=1.0)
        >>> bool(np.allclose(y.mean(axis=0), 0))  # w_test = 1: BatchNorm with the batch statistics
        True
    """
    a = alpha_batch_norm_args(x, gamma, beta, source_stats=source_stats, w_test=w_test, eps=eps, unbiased=unbiased,
                              stats=stats)
    x, gamma, beta, mu_s, var_s, eps = a.x, a.gamma, a.beta, a.source_mean, a.source_var, a.eps
    num_channels, view, count = x.shape[1], a.view, a.count
    axes = (0,) + tuple(range(2, x.ndim))
    real_dtype = np.empty(0, x.dtype).real.dtype  # float32 input keeps float32 arithmetic
    w = a.w.reshape(view).astype(real_dtype)
    k = 1.0
    if stats is None:
        mu_t, var_t = mean_var(x, axes)
        if unbiased:
            k = count / (count - 1)
            var_t = var_t * k
    else:
        mu_t, var_t = a.stats[0].reshape(view), a.stats[1].reshape(view)
        stats_grad = False  # pinned statistics are constants
    mu_s, var_s = mu_s.reshape(view), var_s.reshape(view)
    mean = w * mu_t + (1.0 - w) * mu_s
    var = w * var_t + (1.0 - w) * var_s
    if mixture_variance:
        diff = mu_t - mu_s
        var = var + w * (1.0 - w) * diff * diff
    mean, var = mean.astype(x.dtype, copy=False), var.astype(x.dtype, copy=False)
    y, norm = normalize_forward(x, gamma, beta, reduce_axes=axes, param_view_shape=view, eps=eps, stats=(mean, var))
    u = None
    if stats_grad:
        shift = (1.0 - w) * (mu_t - mu_s) if mixture_variance else 0.0
        u = (k * (x - mu_t) + shift) * norm.rstd
    return y, AlphaBatchNormCache(norm, w, u,
                                  mu_t.reshape(num_channels), var_t.reshape(num_channels))


def alpha_batch_norm_backward(dy, cache: AlphaBatchNormCache):
    """Gradients of :func:`alpha_batch_norm_forward`: ``(dx, dgamma, dbeta)``, exact or stop-gradient as cached."""
    norm = cache.norm
    dx, dgamma, dbeta = normalize_backward(dy, norm)  # direct path: rstd·g (the statistics are given to it)
    if cache.u is not None:  # the path through mu_t and sigma_t^2
        dy = np.asarray(dy).reshape(norm.xhat.shape)
        g = dy if norm.gamma_b is None else dy * norm.gamma_b
        c2 = g.mean(axis=norm.reduce_axes, keepdims=True)
        c1 = (g * norm.xhat).mean(axis=norm.reduce_axes, keepdims=True)
        dx = dx - norm.rstd * cache.w * (c2 + c1 * cache.u)
    return dx, dgamma, dbeta


register("alpha_batch_norm", "numpy", alpha_batch_norm_forward, alpha_batch_norm_backward)
