"""Loss modules: CrossEntropyLoss and MSELoss. Math: :mod:`normref.ops.losses`.

The interface (the same for every loss):

* ``loss = criterion(pred, target)`` (or ``.forward``) returns the loss, a 0-d array in ``pred``'s dtype (a vector for
  ``reduction="none"``), and keeps the cache;
* ``dpred = criterion.backward(dloss=1.0)`` returns the gradient with respect to the prediction, for a loss whose
  own upstream gradient is ``dloss`` (1 when the loss is the objective; an array like the loss for ``"none"``).

Targets never receive a gradient through this interface (class indices have none; for MSE the target is data).
A loss has no parameters, so it is a :class:`Module` only for uniformity (``train``/``eval`` do nothing).
"""

from __future__ import annotations

from .. import functional as F
from .._registry import check_backend_name
from ..ops.losses import REDUCTIONS
from .module import Module


class _Loss(Module):
    op = ""

    def __init__(self, reduction="mean", *, backend=None):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.backend = None if backend is None else check_backend_name(backend)
        self.cache = None

    def forward(self, pred, target):
        loss, self.cache = F.forward(self.op, pred, target, backend=self.backend, reduction=self.reduction)
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
    """Softmax cross-entropy of logits ``(N, C)`` against integer class targets ``(N,)``, log-sum-exp stable.

    Examples:
        >>> import numpy as np
        >>> ce = CrossEntropyLoss()
        >>> loss = ce(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 0]))
        >>> round(float(loss), 4), ce.backward().shape
        (1.1269, (2, 2))
    """

    op = "cross_entropy"


class MSELoss(_Loss):
    """Mean squared error between ``pred`` and a same-shaped float ``target``."""

    op = "mse_loss"
