r"""Losses: softmax cross-entropy (log-sum-exp stable, PyTorch's options) and mean squared error.

A loss maps a prediction to a number. Its backward takes ``dloss`` (the gradient of the final objective with respect
to the loss; 1 when the loss *is* the objective) and returns the prediction's gradient.

Softmax cross-entropy
---------------------
PyTorch's ``F.cross_entropy`` with its ``weight``, ``ignore_index`` and ``label_smoothing`` options.

Shapes. ``logits`` ``z`` is ``(N, C)`` or ``(N, C, d1, ..., dk)``: the classes are on axis 1, as in PyTorch; every
other position is an *item* ``i`` (``M = N·d1···dk`` of them). The code moves axis 1 last and works on ``(M, C)``
arrays, then moves it back. ``targets`` is either

* **class indices** ``t``: an integer array of shape ``(N, d1, ..., dk)`` with values in ``[0, C)`` or equal to
  ``ignore_index`` (default ``-100``; a value inside ``[0, C)`` ignores that class);
* **class probabilities** ``q``: a float array of ``logits``' shape. Rows need not sum to 1 (PyTorch does not check
  and neither does normref; the formulas below hold for any ``q``). ``ignore_index`` does not apply; PyTorch refuses a
  non-negative ``ignore_index`` with probability targets, and so does normref.

Symbols (the code's names in brackets): :math:`\log p_{ic}` = log-softmax of :math:`z_i` over the classes [``log_p``],
class weights :math:`w_c` [``weight``; all 1 when ``None``], smoothing :math:`\varepsilon` [``label_smoothing``],
kept items :math:`k_i = [t_i \ne \text{ignore\_index}]` [``keep``; all 1 for probability targets]. Each item's loss
is a weighted sum over classes with coefficients :math:`\omega_{ic}` [``omega``, ``(M, C)``]:

.. math::

    \ell_i = -\sum_c \omega_{ic} \log p_{ic}, \qquad
    \omega_{ic} = \begin{cases}
        k_i \big( (1-\varepsilon)\, w_{t_i} [c = t_i] + \tfrac{\varepsilon}{C}\, w_c \big) & \text{class indices,} \\
        w_c \big( (1-\varepsilon)\, q_{ic} + \tfrac{\varepsilon}{C} \big) & \text{class probabilities.}
    \end{cases}

So label smoothing replaces the target by :math:`(1-\varepsilon)\,\text{onehot}(t_i) + \varepsilon/C`, and the class
weight multiplies **each class's term by that class's weight**: with index targets the one-hot term is weighted by
:math:`w_{t_i}` but the smoothing term by :math:`w_c`, not by :math:`w_{t_i}` (PyTorch's
``-(log_p * weight).sum(class_dim)``; agrees with torch to ~4e-16 in ``tests/test_torch_oracle.py``). For index
targets the code evaluates :math:`\ell_i = k_i\big[(1-\varepsilon) w_{t_i} (-\log p_{it_i})
+ \tfrac{\varepsilon}{C}\sum_c w_c (-\log p_{ic})\big]`, the smoothing sum only when :math:`\varepsilon > 0`, so
that a logit of ``-inf`` outside the target class gives a finite loss without smoothing (no ``0·(-inf)``).

Reduction: ``"none"`` returns :math:`\ell` of shape ``(N, d1, ..., dk)`` (ignored items are 0); ``"sum"``
returns :math:`\sum_i \ell_i`; ``"mean"`` returns :math:`\sum_i \ell_i / D` [``denom``] with

.. math::

    D = \sum_i k_i\, w_{t_i} \;\; (\text{class indices}), \qquad D = M \;\; (\text{class probabilities}),

i.e. a weighted mean over the kept items: the denominator is the total weight of the non-ignored targets, not
``N`` (without ``weight`` it is the number of kept items). The smoothing term is divided by the same :math:`D`.
If :math:`D = 0` (every item ignored, or every kept target of a zero-weight class) the mean is NaN, as in PyTorch,
whose one-hot part is then ``0/0`` (NaN even where the smoothing part alone would be ``+inf``); ``"sum"`` of
nothing gives 0.

The stable log-softmax: :math:`\log p_{ic} = z_{ic} - \operatorname{lse}(z_i)`,
:math:`\operatorname{lse}(z_i) = m_i + \log \sum_c e^{z_{ic} - m_i}`, :math:`m_i = \max_c \operatorname{Re} z_{ic}`.
Subtracting the row maximum makes every exponent ``<= 0`` (no overflow) and at least one equal to 0 (no underflow of
the sum to 0); it is exact because ``lse`` is shift-equivariant. Under the complex step ``m`` is real and constant,
and :math:`\omega` is real data, so the forward stays analytic.

Backward. :math:`\partial \log p_{ik}/\partial z_{ic} = [k = c] - p_{ic}`, so

.. math::

    \frac{\partial \ell_i}{\partial z_{ic}} = \sum_k \omega_{ik}\,(p_{ic} - [k = c]) = s_i\, p_{ic} - \omega_{ic},
    \qquad s_i = \sum_c \omega_{ic},

    dz_{ic} = g_i\,(s_i\, p_{ic} - \omega_{ic}), \qquad
    g_i = dloss/D \;(\text{mean}),\quad dloss \;(\text{sum}),\quad dloss_i \;(\text{none}),

with :math:`s` [``s``, ``(M,)``] and :math:`g` [``g``, ``(M,)``] in the code.

Without ``weight`` (and probabilities summing to 1) :math:`s_i = k_i` and this is the familiar
:math:`g_i\,(p_i - \text{target distribution}_i)` for kept items; with ``weight`` and :math:`\varepsilon = 0`,
:math:`s_i = w_{t_i}` and :math:`dz_i = g_i\, w_{t_i}\,(p_i - \text{onehot}(t_i))`. With both, :math:`s_i =
(1-\varepsilon) w_{t_i} + \tfrac{\varepsilon}{C}\sum_c w_c` and the gradient is no longer one item weight times
:math:`(p_i - \text{target distribution}_i)`, since the smoothing mass is weighted class by class. Every row of
``dz`` sums to :math:`g_i(s_i - s_i) = 0`. Ignored items get exactly 0, also when :math:`D = 0` (PyTorch's
all-ignored mean: NaN loss, zero gradient); when :math:`D = 0` the kept items (all of zero weight) get NaN, as in
PyTorch (:math:`g_i` is set to NaN rather than ``dloss/0``). Targets and weights are data and have no gradient.

Deviations from PyTorch (all in validation; the values agree): a negative ``weight`` or ``label_smoothing`` is
refused (PyTorch accepts both and only checks ``label_smoothing <= 1``); an out-of-range class index raises
``ValueError`` (PyTorch: ``IndexError``); unbatched ``(C,)`` logits are not accepted; probability targets of another
float precision are cast to ``logits``' dtype, so float32 logits give a float32 loss.

Mean squared error
------------------
``pred`` and ``target`` of the same shape ``S`` (``m`` elements), :math:`r = \text{pred} - \text{target}`:
:math:`L = \frac1m\sum r^2` (mean), :math:`\sum r^2` (sum) or :math:`r^2` (none, shape ``S``). Written as ``r·r``,
not ``|r|²``, so it is analytic. Backward: :math:`d\,\text{pred} = 2 r\,w`, :math:`d\,\text{target} = -d\,\text{pred}`,
with ``w = dloss/m``, ``dloss`` or ``dloss`` elementwise.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import as_array, cast_like, check_dy, check_fraction, check_nonempty
from .activations import log_softmax

REDUCTIONS = ("mean", "sum", "none")


class CrossEntropyCache(NamedTuple):
    log_p: np.ndarray  # (M, C) log-softmax of the logits, classes last
    omega: np.ndarray  # (M, C) the coefficients ω of the module docstring (0 on ignored items), real
    keep: np.ndarray  # (M,) bool, the items not equal to ignore_index (all True for probability targets)
    denom: np.ndarray  # 0-d, the mean's denominator D (total weight of the kept targets, or M)
    logits_shape: tuple  # (N, C, d1, ..., dk)
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


def _classes_last(a):
    """``(N, C, d1, ..., dk)`` to ``(M, C)``: move the class axis 1 last and flatten the items."""
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _check_weight(weight, num_classes=None):
    """``None`` or a finite, non-negative real array of shape ``(C,)``."""
    if weight is None:
        return None
    weight = as_array(weight, "weight", allow_complex=False)
    if weight.ndim != 1 or (num_classes is not None and weight.shape[0] != num_classes):
        wanted = "(C,)" if num_classes is None else f"(C,) = ({num_classes},), one per class of logits"
        raise ValueError(f"weight must have shape {wanted}, got {weight.shape}")
    if not np.all(np.isfinite(weight)) or np.any(weight < 0):
        raise ValueError(f"weight must be finite and non-negative (a per-class rescaling), got {weight}")
    return weight


def _check_ignore_index(ignore_index):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return int(ignore_index)


def _check_targets(targets, logits, ignore_index):
    """Classify ``targets`` as class indices (integer, ``logits`` without axis 1) or probabilities (float, like
    ``logits``); check ranges. Returns ``(targets, is_index)``."""
    targets = np.asarray(targets)
    index_shape = logits.shape[:1] + logits.shape[2:]
    if targets.dtype.kind in "iu":
        if targets.shape != index_shape:
            layout = "(N,)" if logits.ndim == 2 else "(N, d1, ..., dk)"
            raise ValueError(f"targets must have shape {layout} = {index_shape} (logits' shape without the class "
                             f"axis 1) for class indices, got {targets.shape}")
        num_classes = logits.shape[1]
        bad = ((targets < 0) | (targets >= num_classes)) & (targets != ignore_index)
        if bad.any():
            raise ValueError(f"targets must lie in [0, {num_classes}) (the number of classes in logits) or equal "
                             f"ignore_index={ignore_index}, got {np.unique(targets[bad])[:5].tolist()}")
        return targets, True
    if targets.dtype.kind == "f" and targets.shape == logits.shape:
        if ignore_index >= 0:
            raise ValueError(f"ignore_index is not supported with class-probability targets (float targets of "
                             f"logits' shape), as in PyTorch; leave it negative (default -100), got {ignore_index}")
        return cast_like(logits, targets), False
    raise TypeError(f"targets must be an integer array of class indices of shape {index_shape}, or a floating-point "
                    f"array of class probabilities of logits' shape {logits.shape}; got {targets.dtype} of shape "
                    f"{targets.shape}")


def cross_entropy_forward(logits, targets, *, reduction="mean", weight=None, ignore_index=-100,
                          label_smoothing=0.0):
    """Softmax cross-entropy of ``logits`` against class indices or class probabilities, as ``F.cross_entropy``.

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ..., dk)``, classes on axis 1.
        targets: integer class indices of shape ``(N, d1, ..., dk)``, in ``[0, C)`` or equal to ``ignore_index``;
            or float class probabilities of ``logits``' shape.
        reduction: ``"mean"`` (divided by the total weight of the kept targets; by ``M`` for probabilities),
            ``"sum"`` or ``"none"``.
        weight: ``None`` or per-class weights of shape ``(C,)``, finite and non-negative.
        ignore_index: an int; items whose index target equals it contribute 0 and leave the mean's denominator.
        label_smoothing: ``ε`` in ``[0, 1]``: the target becomes ``(1 − ε)·target + ε/C``.

    Returns:
        ``(loss, cache)``: ``loss`` a 0-d array (shape ``(N, d1, ..., dk)`` for ``"none"``) in ``logits``' dtype.

    Examples:
        >>> loss, _ = cross_entropy_forward(np.zeros((2, 4)), np.array([0, 3]))
        >>> bool(np.isclose(loss, np.log(4)))
        True
        >>> loss, _ = cross_entropy_forward(np.zeros((3, 4)), np.array([0, -100, 3]), weight=np.array([1., 0, 0, 3]))
        >>> bool(np.isclose(loss, np.log(4)))  # (1·log 4 + 3·log 4) / (1 + 3); the ignored item is left out
        True
    """
    logits = as_array(logits, "logits")
    if logits.ndim < 2:
        raise ValueError(f"logits must have 2 or more dimensions (N, C) or (N, C, d1, ..., dk), got shape "
                         f"{logits.shape}")
    check_nonempty(logits, "logits")
    reduction = _check_reduction(reduction)
    ignore_index = _check_ignore_index(ignore_index)
    eps = check_fraction(label_smoothing, "label_smoothing")
    num_classes = logits.shape[1]
    weight = cast_like(logits, _check_weight(weight, num_classes))
    targets, is_index = _check_targets(targets, logits, ignore_index)

    log_p = log_softmax(_classes_last(logits), axis=1)  # (M, C)
    m = log_p.shape[0]
    w = np.ones(num_classes, dtype=log_p.real.dtype) if weight is None else weight  # (C,)
    if is_index:
        t = targets.reshape(m)
        keep = t != ignore_index  # (M,)
        t_safe = np.where(keep, t, 0)  # any valid class for the ignored items; their terms are masked out
        w_t = np.where(keep, w[t_safe], 0)  # (M,) k_i w_{t_i}
        omega = np.zeros((m, num_classes), dtype=w.dtype)
        omega[np.arange(m), t_safe] = (1.0 - eps) * w_t
        nll = np.where(keep, -np.take_along_axis(log_p, t_safe[:, None], axis=1)[:, 0], 0)  # (M,) −log p_{i t_i}
        per_item = (1.0 - eps) * w_t * nll
        if eps > 0:
            omega += np.where(keep[:, None], (eps / num_classes) * w, 0)
            per_item = per_item + (eps / num_classes) * -(log_p @ w)
        per_item = np.where(keep, per_item, 0)  # exactly 0, even where an ignored item has a -inf logit
        denom = w_t.sum()
    else:
        keep = np.ones(m, dtype=bool)
        omega = w * ((1.0 - eps) * _classes_last(targets) + eps / num_classes)  # (M, C)
        per_item = -(omega * log_p).sum(axis=1)
        denom = np.asarray(m, dtype=w.dtype)

    if reduction == "none":
        loss = per_item.reshape(logits.shape[:1] + logits.shape[2:])
    elif reduction == "sum":
        loss = np.asarray(per_item.sum())
    else:
        total = per_item.sum()
        # D = 0 (nothing kept, or only zero-weight classes): NaN, as PyTorch, whose one-hot part is then 0/0 (even
        # where the smoothing part alone would give +inf)
        loss = np.asarray(total / denom if denom != 0 else np.nan * total)
    cache = CrossEntropyCache(log_p, omega, keep, np.asarray(denom), logits.shape, reduction, logits.dtype)
    return loss, cache


def cross_entropy_backward(dloss, cache: CrossEntropyCache):
    """``dlogits = g (s p − ω)`` per item (module docstring), 0 on ignored items. Returns ``(dlogits,)``."""
    n, c, *spatial = cache.logits_shape
    m = cache.log_p.shape[0]
    if cache.reduction == "none":
        g = check_dy(dloss, (n, *spatial), cache.dtype).reshape(m)
    else:
        g = _loss_weight(dloss, (), "sum", 1, cache.dtype)  # the scalar dloss, validated
        if cache.reduction == "mean":
            g = g / cache.denom if cache.denom != 0 else np.nan * g  # D = 0: NaN on the kept items, as PyTorch
        g = np.full(m, g)
    s = cache.omega.sum(axis=1)  # (M,)
    dz = g[:, None] * (s[:, None] * np.exp(cache.log_p) - cache.omega)  # (M, C)
    dz = np.where(cache.keep[:, None], dz, 0)
    dz = np.moveaxis(dz.reshape(n, *spatial, c), -1, 1)
    return (np.ascontiguousarray(dz),)


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
