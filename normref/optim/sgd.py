r"""Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay, as ``torch.optim.SGD``.

For each parameter :math:`p` with gradient :math:`g`, step :math:`t = 1, 2, \dots`:

.. math::

    g' &= g + \lambda p                                   && \text{(weight decay, if } \lambda \ne 0) \\
    b_t &= \begin{cases} g' & t = 1 \\ \mu\, b_{t-1} + (1-\tau)\, g' & t > 1 \end{cases}
                                                          && \text{(momentum buffer, if } \mu \ne 0) \\
    d &= \begin{cases} g' + \mu\, b_t & \text{Nesterov} \\ b_t & \text{otherwise} \end{cases} \\
    p &\leftarrow p - \eta\, d

with learning rate :math:`\eta` (``lr``), momentum :math:`\mu`, dampening :math:`\tau` and weight decay
:math:`\lambda`. Without momentum :math:`d = g'`.

Two PyTorch details that are easy to get wrong and are kept here:

* the buffer is initialized to the first gradient itself (not to zero, and without the dampening factor); with
  ``dampening = 0`` this is the same as starting from zero, otherwise it is not. SGDP
  (:class:`normref.optim.SGDP`) starts its buffer at zero, as its reference code does;
* weight decay is *coupled*: :math:`\lambda p` is added to the gradient before the momentum buffer, so it is
  accumulated by the momentum (contrast :class:`normref.optim.AdamW`).

Nesterov momentum needs ``momentum > 0`` and ``dampening = 0`` (PyTorch raises the same error).
"""

from __future__ import annotations

import numpy as np

from .optimizer import Optimizer, check_nonneg, check_unit_interval


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and coupled L2 weight decay (PyTorch semantics).

    Args:
        model: the :class:`~normref.nn.Module` whose parameters are updated.
        lr: learning rate :math:`\\eta` (PyTorch's default, 1e-3).
        momentum: :math:`\\mu` in ``[0, 1)``.
        dampening: :math:`\\tau` in ``[0, 1]``.
        weight_decay: :math:`\\lambda \\ge 0`, added to the gradient as ``λ·p``.
        nesterov: use Nesterov momentum.
        params: which parameters to update (see :mod:`normref.optim.optimizer`).

    Examples:
        >>> import numpy as np
        >>> from normref.nn import Linear
        >>> layer = Linear(2, 1, bias=False, rng=0)
        >>> w0 = layer.params["weight"]
        >>> layer.grads["weight"] = np.ones((1, 2))
        >>> SGD(layer, lr=0.5).step()
        >>> bool(np.allclose(layer.params["weight"], w0 - 0.5))
        True
    """

    hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, model, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 params=None):
        super().__init__(model, lr, params=params)
        self.momentum = check_unit_interval(momentum, "momentum")
        self.dampening = check_unit_interval(dampening, "dampening", closed_right=True)
        self.weight_decay = check_nonneg(weight_decay, "weight_decay")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")

    def _update(self, name, p, g, state):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = state.get("momentum_buffer")
            buf = g.copy() if buf is None else self.momentum * buf + (1.0 - self.dampening) * g
            state["momentum_buffer"] = buf.astype(p.dtype, copy=False)
            g = g + self.momentum * buf if self.nesterov else buf
        return p - self.lr * g
