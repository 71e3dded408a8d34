r"""Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), as ``torch.optim.Adam`` / ``torch.optim.AdamW``.

For each parameter :math:`p` with gradient :math:`g`, step :math:`t = 1, 2, \dots` (moments start at zero):

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g^2 \\
    \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ if AMSGrad, else } v_t \\
    p &\leftarrow p - \frac{\eta}{1-\beta_1^t}\;
         \frac{m_t}{\sqrt{\hat v_t}\,/\sqrt{1-\beta_2^t} + \epsilon}

The bias corrections are applied as PyTorch applies them: :math:`\epsilon` is added *after* dividing
:math:`\sqrt{v}` by :math:`\sqrt{1-\beta_2^t}` (the paper's :math:`\hat m/(\sqrt{\hat v}+\epsilon)` is the same
thing). Weight decay :math:`\lambda` differs between the two:

* **Adam** couples it: :math:`g \leftarrow g + \lambda p` before the moments (an L2 penalty, whose effect the
  adaptive denominator rescales per coordinate);
* **AdamW** decouples it: :math:`p \leftarrow p\,(1 - \eta\lambda)` before the Adam step, and the moments see the
  raw gradient. PyTorch's AdamW default is :math:`\lambda = 10^{-2}`.
"""

from __future__ import annotations

import math

import numpy as np

from .optimizer import Optimizer, check_nonneg, check_real, check_unit_interval


def check_betas(betas) -> tuple[float, float]:
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    return check_unit_interval(b1, "betas[0]"), check_unit_interval(b2, "betas[1]")


def check_eps(eps) -> float:
    eps = check_real(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return eps


class Adam(Optimizer):
    """Adam with coupled L2 weight decay and optional AMSGrad (PyTorch semantics).

    Args:
        model: the :class:`~normref.nn.Module` whose parameters are updated.
        lr: learning rate :math:`\\eta`.
        betas: :math:`(\\beta_1, \\beta_2)`, each in ``[0, 1)``.
        eps: :math:`\\epsilon > 0`, added to the bias-corrected :math:`\\sqrt{v}`.
        weight_decay: :math:`\\lambda \\ge 0`, added to the gradient as ``λ·p``.
        amsgrad: use the running maximum of :math:`v` in the denominator.
        params: which parameters to update (see :mod:`normref.optim.optimizer`).

    Examples:
        >>> import numpy as np
        >>> from normref.nn import Linear
        >>> layer = Linear(3, 1, bias=False, rng=0)
        >>> w0 = layer.params["weight"]
        >>> layer.grads["weight"] = np.array([[2.0, -0.5, 1e-3]])
        >>> Adam(layer, lr=0.1).step()      # the first Adam step moves every coordinate by ~lr·sign(g)
        >>> np.round((layer.params["weight"] - w0) / 0.1, 4).tolist()
        [[-1.0, 1.0, -1.0]]
    """

    hyper_names = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    decoupled = False

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 params=None):
        super().__init__(model, lr, params=params)
        self.betas = check_betas(betas)
        self.eps = check_eps(eps)
        self.weight_decay = check_nonneg(weight_decay, "weight_decay")
        if not isinstance(amsgrad, (bool, np.bool_)):
            raise TypeError(f"amsgrad must be a bool, got {type(amsgrad).__name__}")
        self.amsgrad = bool(amsgrad)

    def _update(self, name, p, g, state):
        beta1, beta2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p = p * (1.0 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
        t = state.get("step", 0) + 1
        m = beta1 * state.get("exp_avg", 0.0) + (1.0 - beta1) * g
        v = beta2 * state.get("exp_avg_sq", 0.0) + (1.0 - beta2) * g * g
        state["step"], state["exp_avg"], state["exp_avg_sq"] = t, m.astype(p.dtype), v.astype(p.dtype)
        if self.amsgrad:
            v = np.maximum(state.get("max_exp_avg_sq", v), v)
            state["max_exp_avg_sq"] = v.astype(p.dtype)
        denom = np.sqrt(v) / math.sqrt(1.0 - beta2 ** t) + self.eps
        return p - (self.lr / (1.0 - beta1 ** t)) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay, ``p ← p·(1 − lr·λ)`` before the Adam step (PyTorch semantics,
    default ``weight_decay=1e-2``). Arguments as :class:`Adam`.

    Examples:
        >>> import numpy as np
        >>> from normref.nn import Linear
        >>> layer = Linear(2, 1, bias=False, rng=0)
        >>> w0 = layer.params["weight"]
        >>> AdamW(layer, lr=0.1, weight_decay=0.5).step()      # zero gradient: only the decay acts
        >>> bool(np.allclose(layer.params["weight"], w0 * (1 - 0.1 * 0.5)))
        True
    """

    decoupled = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 params=None):
        super().__init__(model, lr, betas, eps, weight_decay, amsgrad, params=params)
