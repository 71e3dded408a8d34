r"""Losses: softmax cross-entropy (log-sum-exp stable) and mean squared error.

A loss maps a prediction to a number. Its backward takes ``dloss`` (the gradient of the final objective with respect
to the loss; 1 when the loss *is* the objective) and returns the prediction's gradient.

Softmax cross-entropy
---------------------
``logits`` ``z`` of shape ``(N, C)``, integer ``targets`` ``t`` of shape ``(N,)`` with values in ``[0, C)``.

.. math::

    \ell_i = \operatorname{lse}(z_i) - z_{i t_i}, \qquad
    \operatorname{lse}(z_i) = m_i + \log \sum_c e^{z_{ic} - m_i},\quad m_i = \max_c \operatorname{Re} z_{ic},

and the loss is :math:`\frac1N\sum_i \ell_i` (``reduction="mean"``, PyTorch's default), :math:`\sum_i \ell_i`
(``"sum"``) or the vector :math:`\ell` (``"none"``, shape ``(N,)``). Subtracting the row maximum makes every exponent
``<= 0`` (no overflow) and at least one equal to 0 (no underflow of the sum to 0); it is exact because ``lse`` is
shift-equivariant. Under the complex step ``m`` is real and constant, so the forward stays analytic.

Backward: :math:`\partial\,\operatorname{lse}(z_i)/\partial z_{ic} = \operatorname{softmax}(z_i)_c = p_{ic}`, and
:math:`\partial z_{it_i}/\partial z_{ic} = [c = t_i]`, hence

.. math::

    dz_{ic} = w_i\,(p_{ic} - [c = t_i]) , \qquad
    w_i = dloss/N \;(\text{mean}),\quad dloss \;(\text{sum}),\quad dloss_i \;(\text{none}).

Each row of ``dz`` sums to zero. The targets are integers and have no gradient.

Mean squared error
------------------
``pred`` and ``target`` of the same shape ``S`` (``m`` elements), :math:`r = \text{pred} - \text{target}`:
:math:`L = \frac1m\sum r^2` (mean), :math:`\sum r^2` (sum) or :math:`r^2` (none, shape ``S``). Written as ``r·r``,
not ``|r|²``, so it is analytic. Backward: :math:`d\,\text{pred} = 2 r\,w`, :math:`d\,\text{target} = -d\,\text{pred}`,
with ``w = dloss/m``, ``dloss`` or ``dloss`` elementwise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import as_array, cast_like, check_dy, check_ndim, check_nonempty
from .activations import log_softmax

REDUCTIONS = ("mean", "sum", "none")


class CrossEntropyCache(NamedTuple):
    log_p: np.ndarray  # (N, C) log-softmax of the logits
    targets: np.ndarray  # (N,) integers
    reduction: str
    dtype: np.dtype
    backend: str = "numpy"


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _reduce(per_item, reduction):
    if reduction == "none":
        return per_item
    return np.asarray(per_item.sum() if reduction == "sum" else per_item.mean())


def _loss_weight(dloss, item_shape, reduction, count, dtype):
    """The per-item weight ``w`` of the backward: ``dloss/count`` (mean), ``dloss`` (sum), ``dloss`` itemwise (none)."""
    if reduction == "none":
        return check_dy(dloss, item_shape, dtype)
    if isinstance(dloss, (int, float)) and not isinstance(dloss, bool):
        dloss = float(dloss)
    dloss = check_dy(dloss, (), dtype)
    return dloss / count if reduction == "mean" else dloss


def cross_entropy_forward(logits, targets, *, reduction="mean"):
    """Softmax cross-entropy of ``logits`` against integer class ``targets``.

    Args:
        logits: ``(N, C)``.
        targets: ``(N,)`` integers in ``[0, C)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        ``(loss, cache)``: ``loss`` a 0-d array (``(N,)`` for ``"none"``) in ``logits``' dtype.

    Examples:
        >>> loss, _ = cross_entropy_forward(np.zeros((2, 4)), np.array([0, 3]))
        >>> bool(np.isclose(loss, np.log(4)))
        True
    """
    logits = as_array(logits, "logits")
    check_ndim(logits, "logits", (2,), "(N, C)")
    check_nonempty(logits, "logits")
    reduction = _check_reduction(reduction)
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer array of class indices, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape (N,) = {logits.shape[:1]}, got {targets.shape}")
    num_classes = logits.shape[1]
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}) (the number of classes in logits), got values in "
                         f"[{targets.min()}, {targets.max()}]")
    log_p = log_softmax(logits, axis=1)  # (N, C)
    per_item = -np.take_along_axis(log_p, targets[:, None], axis=1)[:, 0]  # (N,)
    return _reduce(per_item, reduction), CrossEntropyCache(log_p, targets.copy(), reduction, logits.dtype)


def cross_entropy_backward(dloss, cache: CrossEntropyCache):
    """``dlogits = w (softmax(z) − onehot(t))``. Returns ``(dlogits,)``, ``(N, C)``."""
    n = cache.log_p.shape[0]
    w = _loss_weight(dloss, (n,), cache.reduction, n, cache.dtype)
    dlogits = np.exp(cache.log_p)  # p, (N, C)
    dlogits[np.arange(n), cache.targets] -= 1.0
    return (dlogits * (w[:, None] if cache.reduction == "none" else w),)


class MSECache(NamedTuple):
    residual: np.ndarray  # S, pred − target
    reduction: str
    dtype: np.dtype
    backend: str = "numpy"


def mse_forward(pred, target, *, reduction="mean"):
    """Mean squared error between ``pred`` and ``target`` (same shape ``S``).

    Returns:
        ``(loss, cache)``: a 0-d array (shape ``S`` for ``"none"``) in ``pred``'s dtype.

    Examples:
        >>> loss, _ = mse_forward(np.array([1.0, 3.0]), np.array([0.0, 1.0]))
        >>> float(loss)
        2.5
    """
    pred = as_array(pred, "pred")
    target = as_array(target, "target")
    check_nonempty(pred, "pred")
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred, {pred.shape}, got {target.shape}")
    reduction = _check_reduction(reduction)
    residual = pred - cast_like(pred, target)  # the loss is in pred's dtype, whatever the target's precision
    return _reduce(residual * residual, reduction), MSECache(residual, reduction, residual.dtype)


def mse_backward(dloss, cache: MSECache):
    """``dpred = 2 r w``, ``dtarget = −dpred``. Returns ``(dpred, dtarget)``, each of shape ``S``."""
    r = cache.residual
    w = _loss_weight(dloss, r.shape, cache.reduction, r.size, cache.dtype)
    dpred = 2.0 * r * w
    return dpred, -dpred


register("cross_entropy", "numpy", cross_entropy_forward, cross_entropy_backward)
register("mse_loss", "numpy", mse_forward, mse_backward)
