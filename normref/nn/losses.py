"""Loss modules: CrossEntropyLoss and MSELoss. Math: :mod:`normref.ops.losses`.

The interface (the same for every loss):

* ``loss = criterion(pred, target)`` (or ``.forward``) returns the loss, a 0-d array in ``pred``'s dtype (a vector for
  ``reduction="none"``), and keeps the cache;
* ``dpred = criterion.backward(dloss=1.0)`` returns the gradient with respect to the prediction, for a loss whose
  own upstream gradient is ``dloss`` (1 when the loss is the objective; an array like the loss for ``"none"``).

Targets never receive a gradient through this interface (class indices have none; class probabilities and MSE's
target are data).
A loss has no parameters, so it is a :class:`Module` only for uniformity (``train``/``eval`` do nothing).
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._registry import check_backend_name
from .._validate import check_fraction
from ..ops.losses import REDUCTIONS, _check_ignore_index, _check_weight
from .module import Module


class _Loss(Module):
    op = ""

    def __init__(self, reduction="mean", *, backend=None):
        super().__init__()
        if isinstance(reduction, np.ndarray):
            raise TypeError(f"reduction must be a string, got an array; {type(self).__name__}'s first positional "
                            f"argument is reduction, pass class weights as weight=...")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.backend = None if backend is None else check_backend_name(backend)
        self.cache = None

    def hyper(self) -> dict:
        """The op's keyword arguments."""
        return {"reduction": self.reduction}

    def forward(self, pred, target):
        loss, self.cache = F.forward(self.op, pred, target, backend=self.backend, **self.hyper())
        return loss

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def backward(self, dloss=1.0):
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return F.backward(self.op, dloss, self.cache)[0]

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits ``(N, C)`` or ``(N, C, d1, ..., dk)`` against class indices
    ``(N, d1, ..., dk)`` or class probabilities (logits' shape), log-sum-exp stable, as ``torch.nn.CrossEntropyLoss``.

    Args:
        reduction: ``"mean"`` (a weighted mean: divided by the total ``weight`` of the non-ignored targets),
            ``"sum"`` or ``"none"``.
        weight: ``None`` or per-class weights ``(C,)``, finite and non-negative; kept as the buffer ``"weight"``.
        ignore_index: index targets equal to it contribute 0 and are left out of the mean (default ``-100``).
        label_smoothing: ``ε`` in ``[0, 1]``; the target becomes ``(1 − ε)·target + ε/C`` (default 0).

    PyTorch's names and defaults; the math and every convention are in :mod:`normref.ops.losses`. Unlike PyTorch's
    constructor, only ``reduction`` is positional (normref's order since before the options existed) and the rest are
    keyword-only; PyTorch's deprecated ``size_average``/``reduce`` are not accepted.

    Examples:
        >>> import numpy as np
        >>> ce = CrossEntropyLoss()
        >>> loss = ce(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 0]))
        >>> round(float(loss), 4), ce.backward().shape
        (1.1269, (2, 2))
        >>> ce = CrossEntropyLoss(weight=np.array([1.0, 3.0]), ignore_index=-1, label_smoothing=0.1)
        >>> round(float(ce(np.array([[2.0, 0.0], [0.0, 2.0], [5.0, 1.0]]), np.array([0, 1, -1]))), 4)
        0.2269
    """

    op = "cross_entropy"

    def __init__(self, reduction="mean", *, weight=None, ignore_index=-100, label_smoothing=0.0, backend=None):
        super().__init__(reduction, backend=backend)
        weight = _check_weight(weight)
        if weight is not None:
            self.buffers["weight"] = weight.copy()
        self.ignore_index = _check_ignore_index(ignore_index)
        self.label_smoothing = check_fraction(label_smoothing, "label_smoothing")

    @property
    def weight(self):
        return self.buffers.get("weight")

    def hyper(self) -> dict:
        return {"reduction": self.reduction, "weight": self.weight, "ignore_index": self.ignore_index,
                "label_smoothing": self.label_smoothing}

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.weight is not None:
            parts.append(f"weight=<{self.weight.shape[0]} classes>")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)


class MSELoss(_Loss):
    """Mean squared error between ``pred`` and a same-shaped float ``target``."""

    op = "mse_loss"
