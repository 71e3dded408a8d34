r"""Weight-space regularizers from the seed papers: Norm Loss and Weight Compander.

What is verified and what is reconstructed
------------------------------------------
Both papers were searched for again (stored web pages, code and issue corpora, March 2021 / June 2023 arXiv
mirrors). For both, **only the title page and the abstract could be read**; no official code exists (Papers with
Code lists none, and no repository of the authors is in the index). So:

* **Verified (from the abstracts):** Norm Loss is a *soft* penalty, added to the loss, that "pushes each weight
  vector to have a norm close to one", i.e. toward the oblique manifold (unit-norm rows/filters), evaluated on
  ResNet/WRN. Weight Compander *reparameterizes each weight* elementwise with a nonlinear function that *restricts
  the magnitude* of the weights and *pushes them away from zero*, and its hyperparameters *can be learned*.
* **Reconstructed (not the papers' equations):** the exact penalty of Norm Loss (``(1−‖w‖)²`` or ``(1−‖w‖²)²``, sum
  or mean over filters, which layers) and the exact function of Weight Compander. The forms below are the simplest
  ones that have the verified properties; their options are constructor arguments, and neither is called "the
  paper's". Each gradient is derived here and checked against finite differences in ``tests/test_regularizers.py``.

Norm Loss (Georgiou, Schmitt, Bäck, Chen, Lew; arXiv 2103.06583)
-----------------------------------------------------------------
A weight of shape ``(out, ...)`` is viewed as rows :math:`w_i` (one per output unit or filter, conv weights as
``(C_out, C_in·k·k)``), with :math:`n_i = \|w_i\|_2 = \sqrt{\sum_j w_{ij}^2}` (computed without ``abs``, so the value is
complex-step differentiable). Per weight,

.. math::

    \text{form="norm"}:\quad R = \sum_i (1 - n_i)^2, \qquad
        \frac{\partial R}{\partial w_i} = 2\Big(1 - \frac{1}{n_i}\Big) w_i \\
    \text{form="squared"}:\quad R = \sum_i (1 - n_i^2)^2, \qquad
        \frac{\partial R}{\partial w_i} = -4\,(1 - n_i^2)\, w_i

(from :math:`\partial n_i/\partial w_i = w_i/n_i`). ``reduction="mean"`` divides each weight's sum by its number of
rows. The total penalty is ``factor`` times the sum over the selected weights (by default every parameter with
``ndim >= 2``: linear and conv weights, not biases or normalizer affines). Default ``form="norm"``: the distance of
each norm from 1, which is how the abstract phrases it (``normalizers.md`` §9.1 also lists it as the likelier form).
At a zero row the "norm" form is not differentiable (the directional derivative is −2 in every direction); the
gradient returned there is 0.

Weight Compander (Cakaj, Mehnert, Yang; arXiv 2306.16993)
---------------------------------------------------------
The layer uses :math:`\tilde w = f(w)` instead of its raw weight :math:`w`, elementwise, with the compander-shaped
function (a reconstruction, see above)

.. math::

    f(w; \alpha, \beta) = \operatorname{sign}(w)\,\big((|w| + \beta)^\alpha - \beta^\alpha\big),
        \qquad 0 < \alpha,\ \beta > 0 .

It is odd, :math:`f(0) = 0`, continuously differentiable (also at 0), and for :math:`\alpha < 1` it has the two
verified properties: it grows only like :math:`|w|^\alpha` (large weights are compressed), and its slope
:math:`f'(w) = \alpha(|w|+\beta)^{\alpha-1}` is largest at zero, :math:`\alpha\beta^{\alpha-1}`, so the gradient that
reaches a near-zero raw weight is amplified and such weights are driven away from zero. With
:math:`a = |w|`, :math:`s = \operatorname{sign}(w)` and :math:`u = a + \beta`:

.. math::

    \frac{\partial L}{\partial w} = \alpha u^{\alpha-1} \odot \frac{\partial L}{\partial \tilde w}, \quad
    \frac{\partial L}{\partial \alpha} = \sum s\,(u^\alpha \ln u - \beta^\alpha \ln\beta) \frac{\partial L}{\partial
        \tilde w}, \quad
    \frac{\partial L}{\partial \beta} = \sum s\,\alpha\,(u^{\alpha-1} - \beta^{\alpha-1}) \frac{\partial L}{\partial
        \tilde w}.

:math:`a` is computed as :math:`s\,w` with :math:`s` the sign of the real part, so the forward is complex-step safe
away from :math:`w = 0`. The defaults ``alpha=0.5, beta=0.1`` are this library's, not the paper's (no value could be
read). :class:`Companded` wraps a layer: it owns the raw weight and feeds :math:`f(w)` to the layer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import as_array
from ..nn.module import Module
from .optimizer import check_model, check_nonneg, check_real, iter_selected, make_selector

FORMS = ("norm", "squared")
REDUCTIONS = ("sum", "mean")


# -- Norm Loss --------------------------------------------------------------------------------------------------------
def norm_loss(w, *, form="norm", reduction="sum"):
    """The Norm Loss penalty of one weight and its gradient: ``(R, dR/dw)`` (see the module doc).

    Args:
        w: weight, shape ``(out, ...)`` with ``ndim >= 2``; rows are ``w.reshape(out, -1)``.
        form: ``"norm"`` for ``Σ(1 − ‖w_i‖)²`` or ``"squared"`` for ``Σ(1 − ‖w_i‖²)²``.
        reduction: ``"sum"`` over rows or ``"mean"`` over rows.

    Returns:
        ``R`` (0-d array in ``w``'s dtype) and ``dR/dw`` (shape of ``w``).

    Examples:
        >>> r, g = norm_loss(np.array([[3.0, 4.0], [0.6, 0.8]]))   # row norms 5 and 1
        >>> float(r), np.round(g, 12).tolist()
        (16.0, [[4.8, 6.4], [0.0, 0.0]])
    """
    w = as_array(w, "w")
    if w.ndim < 2:
        raise ValueError(f"w must have ndim >= 2 (rows = output units), got shape {w.shape}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    rows = w.reshape(w.shape[0], -1)                        # (R, n)
    sq = (rows * rows).sum(axis=1, keepdims=True)           # (R, 1): n_i², no abs (complex-step safe)
    if form == "norm":
        n = np.sqrt(sq)
        value = ((1.0 - n) ** 2).sum()
        zero = sq == 0
        coef = 2.0 * (1.0 - 1.0 / np.where(zero, 1.0, n))   # 2(1 − 1/n_i); 0 on zero rows
        coef = np.where(zero, 0.0, coef)
    else:
        value = ((1.0 - sq) ** 2).sum()
        coef = -4.0 * (1.0 - sq)
    grad = coef * rows
    if reduction == "mean":
        value, grad = value / rows.shape[0], grad / rows.shape[0]
    return np.asarray(value, dtype=w.dtype), grad.reshape(w.shape).astype(w.dtype, copy=False)


class NormLoss:
    """``factor · Σ_weights R(w)`` over a model's weights (see the module doc); a penalty added to the loss.

    Args:
        factor: the regularization factor :math:`\\lambda \\ge 0`.
        form: ``"norm"`` (default) or ``"squared"``; see :func:`norm_loss`.
        reduction: ``"sum"`` (default) or ``"mean"`` over the rows of each weight.
        params: which parameters are penalized: ``None`` means every parameter with ``ndim >= 2``; or a collection
            of dotted names, or a callable ``(name, array) -> bool`` (see :mod:`normref.optim.optimizer`).

    Use: ``loss = criterion(...) + reg(model)`` for the value; after ``model.backward(...)``, ``reg.backward(model)``
    adds :math:`\\lambda\\,\\partial R/\\partial w` into the gradients (and returns the value).

    Examples:
        >>> from normref.nn import Linear
        >>> layer = Linear(2, 2, bias=True, rng=0)
        >>> layer.params["weight"] = np.array([[3.0, 4.0], [0.6, 0.8]])
        >>> reg = NormLoss(0.5)
        >>> float(reg(layer)), layer.grads["bias"].tolist(), reg.backward(layer)
        (8.0, [0.0, 0.0], 8.0)
        >>> np.round(layer.grads["weight"], 12).tolist()
        [[2.4, 3.2], [0.0, 0.0]]
    """

    def __init__(self, factor, *, form="norm", reduction="sum", params=None):
        self.factor = check_nonneg(factor, "factor")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.form, self.reduction, self.params = form, reduction, params

    def _selected(self, model):
        model = check_model(model)
        select = make_selector(self.params, model) if self.params is not None \
            else (lambda name, value: np.ndim(value) >= 2)
        for name, module, key in iter_selected(model, select):
            if np.ndim(module.params[key]) < 2:
                raise ValueError(f"NormLoss needs weights with ndim >= 2; {name!r} has shape "
                                 f"{np.shape(module.params[key])}")
            yield module, key

    def __call__(self, model) -> float:
        """The penalty value ``factor · Σ R(w)`` (a Python float)."""
        return self.factor * sum(float(norm_loss(module.params[key], form=self.form, reduction=self.reduction)[0])
                                 for module, key in self._selected(model))

    def backward(self, model) -> float:
        """Add ``factor · ∂R/∂w`` into each selected weight's gradient; return the penalty value."""
        total = 0.0
        for module, key in self._selected(model):
            value, grad = norm_loss(module.params[key], form=self.form, reduction=self.reduction)
            module.accumulate_grad(key, self.factor * grad)
            total += float(value)
        return self.factor * total

    def __repr__(self) -> str:
        return f"NormLoss({self.factor}, form={self.form!r}, reduction={self.reduction!r})"


# -- Weight Compander --------------------------------------------------------------------------------------------------
class CompanderCache(NamedTuple):
    """What :func:`compander_backward` needs.

    Fields: ``sign`` (shape of w; sign of the real part), ``u`` (``|w| + beta``, shape of w), ``alpha``, ``beta``
    (the values used, 0-d arrays), ``dtype`` (of ``w_eff``, which ``dw`` takes), ``backend`` (always ``"numpy"``).
    """

    sign: np.ndarray
    u: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    dtype: np.dtype
    backend: str = "numpy"


def _check_hyper(alpha, beta):
    alpha = np.asarray(alpha)
    beta = np.asarray(beta)
    for name, v in (("alpha", alpha), ("beta", beta)):
        if v.ndim != 0 or v.dtype.kind not in "fciu":
            raise TypeError(f"{name} must be a real scalar, got {v!r}")
    if not np.real(alpha) > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not np.real(beta) > 0:
        raise ValueError(f"beta must be > 0 (f is not differentiable at 0 otherwise), got {beta}")
    return alpha, beta


def compander_forward(w, alpha=0.5, beta=0.1):
    """``f(w) = sign(w)·((|w| + beta)^alpha − beta^alpha)`` elementwise (a reconstruction; see the module doc).

    Args:
        w: raw weight, any shape, float or complex (complex: for the complex step).
        alpha, beta: the function's hyperparameters, scalars ``> 0``.

    Returns:
        ``w_eff`` (shape and dtype of ``w``) and a :class:`CompanderCache`.

    Examples:
        >>> w_eff, _ = compander_forward(np.array([-1.0, 0.0, 0.01, 4.0]), alpha=0.5, beta=0.0625)
        >>> np.round(w_eff, 4)      # large weights compressed, small ones expanded
        array([-0.7808,  0.    ,  0.0193,  1.7656])
    """
    w = as_array(w, "w")
    alpha, beta = _check_hyper(alpha, beta)
    sign = np.sign(w.real).astype(w.real.dtype)
    u = sign * w + beta                                      # |w| + beta, analytic in w away from 0
    w_eff = sign * (u ** alpha - beta ** alpha)
    dtype = w_eff.dtype if w_eff.dtype.kind == "c" else w.dtype   # float32 stays float32; complex steps stay complex
    return w_eff.astype(dtype, copy=False), CompanderCache(sign, u, alpha, beta, dtype)


def compander_backward(dw_eff, cache: CompanderCache):
    """``(dw, dalpha, dbeta)`` for the upstream gradient ``dw_eff`` (shape of w); ``dalpha``, ``dbeta`` are 0-d."""
    sign, u, alpha, beta = cache.sign, cache.u, cache.alpha, cache.beta
    dw_eff = np.asarray(dw_eff)
    if dw_eff.shape != u.shape:
        raise ValueError(f"dw_eff must have shape {u.shape}, got {dw_eff.shape}")
    dw = alpha * u ** (alpha - 1.0) * dw_eff
    sd = sign * dw_eff
    dalpha = (sd * (u ** alpha * np.log(u) - beta ** alpha * np.log(beta))).sum()
    dbeta = (sd * alpha * (u ** (alpha - 1.0) - beta ** (alpha - 1.0))).sum()
    return dw.astype(cache.dtype, copy=False), np.asarray(dalpha), np.asarray(dbeta)


class Companded(Module):
    """Wrap ``layer`` so that it computes with ``f(w)`` in place of its parameter ``param`` (Weight Compander).

    The wrapper takes the raw weight out of the layer and owns it as its own parameter ``param`` (so optimizers,
    the flat view and ``state_dict`` see the raw weight, once); the layer's other parameters stay with it under
    ``"layer."``. Forward computes ``f(w)``, lends it to the layer for the call, and keeps the cache; backward lends
    it again, runs the layer's backward, and chains the layer's weight gradient through ``f``.

    Args:
        layer: a :class:`~normref.nn.Module` with a parameter ``param`` (a Linear, a Conv2d, ...).
        param: the name of the parameter to reparameterize (default ``"weight"``).
        alpha, beta: the function's hyperparameters (defaults are this library's; see the module doc).
        learnable: learn ``alpha`` and ``beta`` too (0-d parameters ``"alpha"``, ``"beta"``; their gradients are sums
            over all elements). The optimizer must keep them positive; the forward raises if they are not.

    Examples:
        >>> from normref.nn import Linear
        >>> net = Companded(Linear(3, 2, rng=0), alpha=0.5, beta=0.1, learnable=True)
        >>> [name for name, _ in net.named_parameters()]
        ['weight', 'alpha', 'beta', 'layer.bias']
        >>> net(np.ones((4, 3))).shape
        (4, 2)
    """

    def __init__(self, layer, param="weight", alpha=0.5, beta=0.1, *, learnable=False):
        super().__init__()
        if not isinstance(layer, Module):
            raise TypeError(f"layer must be a normref Module, got {type(layer).__name__}")
        if param not in layer.params:
            raise ValueError(f"layer has no parameter {param!r}; it has {sorted(layer.params)}")
        if param in ("alpha", "beta"):
            raise ValueError("param must not be named 'alpha' or 'beta' (the compander's own parameters)")
        alpha, beta = check_real(alpha, "alpha"), check_real(beta, "beta")
        _check_hyper(alpha, beta)
        raw = layer.params.pop(param)
        layer.grads.pop(param, None)
        self.param = param
        self.add_param(param, raw)
        self.learnable = bool(learnable)
        if self.learnable:
            self.add_param("alpha", np.array(alpha, dtype=raw.dtype))
            self.add_param("beta", np.array(beta, dtype=raw.dtype))
        else:
            self.alpha, self.beta = alpha, beta
        self.children["layer"] = layer
        self.cache = None
        self._w_eff = None

    def _hyper(self):
        if self.learnable:
            return self.params["alpha"], self.params["beta"]
        return self.alpha, self.beta

    def effective_weight(self) -> np.ndarray:
        """``f(w)`` for the current raw weight."""
        return compander_forward(self.params[self.param], *self._hyper())[0]

    def forward(self, x):
        layer = self.children["layer"]
        self._w_eff, self.cache = compander_forward(self.params[self.param], *self._hyper())
        layer.params[self.param] = self._w_eff
        try:
            return layer.forward(x)
        finally:
            del layer.params[self.param]

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("Companded.backward called before forward")
        layer = self.children["layer"]
        layer.params[self.param] = self._w_eff
        layer.grads[self.param] = np.zeros_like(self._w_eff)
        try:
            dx = layer.backward(dy)
            dw_eff = layer.grads[self.param]
        finally:
            del layer.params[self.param]
            del layer.grads[self.param]
        dw, dalpha, dbeta = compander_backward(dw_eff, self.cache)
        self.accumulate_grad(self.param, dw)
        if self.learnable:
            self.accumulate_grad("alpha", dalpha)
            self.accumulate_grad("beta", dbeta)
        return dx

    def extra_repr(self) -> str:
        alpha, beta = self._hyper()
        return f"{self.children['layer']!r}, param={self.param!r}, alpha={float(np.real(alpha))}, " \
               f"beta={float(np.real(beta))}, learnable={self.learnable}"
