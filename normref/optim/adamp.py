r"""SGDP and AdamP (Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, ICLR 2021): remove the radial part of the update of
scale-invariant weights.

Paper: "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
https://arxiv.org/abs/2006.08217. Reference code: ``clovaai/AdamP`` (``adamp/adamp.py``, ``adamp/sgdp.py``); this
module follows that code line by line (``normalizers.md`` §8), re-read at commit ``146287bf``.

**Why.** A weight :math:`w` followed by a normalizer is *scale invariant*: :math:`L(cw) = L(w)` for :math:`c > 0`.
Differentiating in :math:`c` gives :math:`\langle \nabla L(w), w\rangle = 0` and :math:`\nabla L(cw) =
\nabla L(w)/c`. Plain SGD then grows the norm, :math:`\|w - \eta g\|^2 = \|w\|^2 + \eta^2\|g\|^2`, and the step
that matters for a scale-invariant weight, the change of its direction, is :math:`\approx \eta\|g(\hat w)\| /
\|w\|^2`: the *effective step size* :math:`\eta/\|w\|^2` shrinks as :math:`\|w\|` grows. Momentum and Adam's
per-coordinate scaling make the update :math:`d` non-orthogonal to :math:`w`, so the norm grows at *first* order
in :math:`\eta` and the slowdown comes early. SGDP/AdamP project the radial component out of :math:`d`.

**Which weights.** Parameters with ``ndim <= 1`` (biases, normalizer affines) are never projected. For the others the
paper *detects* scale invariance from the raw gradient :math:`g` (exactly orthogonal to :math:`w` when invariant).
Two views are tried in order, and the first that passes is used:

1. the *channel* view: :math:`w` as rows :math:`w_r` = one output unit or filter each (shape ``(out, rest)``);
2. the *layer* view: all of :math:`w` as one row (shape ``(1, size)``).

A view passes when **every** row satisfies

.. math::

    \cos_r = \frac{|\langle g_r, w_r\rangle|}{\max(\|g_r\|, \epsilon)\,\max(\|w_r\|, \epsilon)}
             < \frac{\delta}{\sqrt{n}}, \qquad n = \text{row length}

(PyTorch ≥ 1.12 ``F.cosine_similarity`` semantics: each norm is clamped separately; PyTorch ≤ 1.11 divided by
:math:`\max(\|g\|\|w\|, \epsilon)`, which differs only for near-zero rows). The threshold :math:`\delta/\sqrt n`
is what a random direction in :math:`\mathbb{R}^n` would typically beat, so a pass means "orthogonal beyond
chance". Then the **update direction** :math:`d` (not :math:`g`) loses its radial part, row by row:

.. math::

    \hat w_r = \frac{w_r}{\|w_r\| + \epsilon}, \qquad d_r \leftarrow d_r - \hat w_r\,\langle \hat w_r, d_r\rangle,

and the weight decay of that parameter is scaled by ``wd_ratio``. If neither view passes, :math:`d` is unchanged
and the decay is not scaled. A user who knows which weights are scale invariant can say so (``scale_invariant=``):
the listed parameters are then projected in the given view without the test, and all others never.

**AdamP step** (moments start at zero; :math:`t` counts this parameter's steps):

.. math::

    m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
    d &= \frac{m}{\sqrt v/\sqrt{1-\beta_2^t} + \epsilon}
      \quad\Big(\text{Nesterov: } d = \frac{\beta_1 m + (1-\beta_1) g}{\sqrt v/\sqrt{1-\beta_2^t} + \epsilon}\Big) \\
    d, r &= \operatorname{project}(w, g, d) \\
    w &\leftarrow w\,(1 - \eta\lambda r) \quad\text{(decoupled, with } \eta \text{, not the bias-corrected step)} \\
    w &\leftarrow w - \frac{\eta}{1-\beta_1^t}\, d

**SGDP step** (the buffer starts at **zero**, unlike ``torch.optim.SGD``; this matters only when dampening ≠ 0):

.. math::

    b &\leftarrow \mu b + (1-\tau) g, \qquad d = g + \mu b \text{ (Nesterov) or } b \\
    d, r &= \operatorname{project}(w, g, d) \\
    w &\leftarrow w\,\Big(1 - \frac{\eta\lambda r}{1-\mu}\Big) \\
    w &\leftarrow w - \eta\, d

The :math:`1/(1-\mu)` in SGDP's decay is in the reference code (it matches the decay to the steady-state size of a
momentum step, :math:`\eta g/(1-\mu)`). The projection uses :math:`w` *before* the decay; :math:`r` is
``wd_ratio`` when a view passed (or the parameter was declared scale invariant) and 1 otherwise.

After each step ``last_projection[name]`` records ``"channel"``, ``"layer"`` or ``None`` per parameter.
"""

from __future__ import annotations

import math

import numpy as np

from .adam import check_betas, check_eps
from .optimizer import Optimizer, check_nonneg, check_unit_interval

VIEWS = ("channel", "layer")


def _rows(x: np.ndarray, view: str) -> np.ndarray:
    return x.reshape(x.shape[0], -1) if view == "channel" else x.reshape(1, -1)


def cosine_rows(a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """``|⟨a_r, b_r⟩| / (max(‖a_r‖, eps)·max(‖b_r‖, eps))`` per row of two ``(R, n)`` arrays, shape ``(R,)``.

    Examples:
        >>> cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 2.0], [-3.0, -3.0]]), 1e-8)
        array([0., 1.])
    """
    na = np.maximum(np.sqrt((a * a).sum(axis=1)), eps)
    nb = np.maximum(np.sqrt((b * b).sum(axis=1)), eps)
    return np.abs((a * b).sum(axis=1)) / (na * nb)


def project_radial(p: np.ndarray, d: np.ndarray, view: str, eps: float) -> np.ndarray:
    """``d`` minus its component along ``p``, row by row in ``view`` (``"channel"`` or ``"layer"``); shape of ``p``.

    Uses ``p̂_r = p_r/(‖p_r‖ + eps)``, as the reference code does, so the result is orthogonal to ``p_r`` up to a
    relative ``eps/‖p_r‖``.

    Examples:
        >>> w = np.array([[3.0, 4.0], [1.0, 0.0]])
        >>> d = project_radial(w, np.ones((2, 2)), "channel", 0.0)
        >>> np.round((w * d).sum(axis=1), 12)
        array([0., 0.])
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    pr, dr = _rows(p, view), _rows(d, view)
    p_hat = pr / (np.sqrt((pr * pr).sum(axis=1, keepdims=True)) + eps)
    return (dr - p_hat * (p_hat * dr).sum(axis=1, keepdims=True)).reshape(p.shape)


def projection(p, g, d, *, delta=0.1, eps=1e-8, view=None):
    """The SGDP/AdamP projection step: ``(d', view_used)``.

    Args:
        p: the parameter, any shape with ``ndim >= 2`` (``ndim <= 1`` returns ``(d, None)`` unchanged).
        g: its raw gradient, shape of ``p``; only the cosine test reads it.
        d: the update direction, shape of ``p``; this is what is projected.
        delta: the test's :math:`\\delta`.
        eps: the clamp in the cosine and the ``+eps`` in :math:`\\hat w`.
        view: ``None`` runs the paper's test (channel view, then layer view); ``"channel"`` or ``"layer"`` projects
            in that view without testing.

    Returns:
        ``d'`` (a new array, shape of ``p``) and ``"channel"``, ``"layer"`` or ``None`` (no projection).
    """
    if p.ndim <= 1:
        return d, None
    if view is not None:
        return project_radial(p, d, view, eps), view
    for candidate in VIEWS:
        pr = _rows(p, candidate)
        if cosine_rows(_rows(g, candidate), pr, eps).max() < delta / math.sqrt(pr.shape[1]):
            return project_radial(p, d, candidate, eps), candidate
    return d, None


def _make_invariance(scale_invariant, model):
    """``None`` (detect) or a dict ``name -> view`` (declared; parameters not in it are never projected)."""
    if scale_invariant is None:
        return None
    if isinstance(scale_invariant, str):
        raise TypeError("scale_invariant must be a collection of parameter names or a dict name -> view, "
                        f"not a single string; use [{scale_invariant!r}]")
    if isinstance(scale_invariant, dict):
        mapping = dict(scale_invariant)
    else:
        mapping = {name: "layer" for name in scale_invariant}
    params = dict(model.named_parameters())
    for name, view in mapping.items():
        if name not in params:
            raise ValueError(f"scale_invariant names {name!r}, which is not a parameter of the model")
        if view not in VIEWS:
            raise ValueError(f"scale_invariant[{name!r}] must be one of {VIEWS}, got {view!r}")
        if np.ndim(params[name]) <= 1:
            raise ValueError(f"scale_invariant names {name!r} with shape {np.shape(params[name])}: parameters with "
                             f"ndim <= 1 are never projected")
    return mapping


class _Projected(Optimizer):
    """Shared by SGDP and AdamP: the projection options and ``last_projection``."""

    def __init__(self, model, lr, *, eps, delta, wd_ratio, scale_invariant, params):
        super().__init__(model, lr, params=params)
        self.eps = check_eps(eps)
        self.delta = check_nonneg(delta, "delta")
        self.wd_ratio = check_nonneg(wd_ratio, "wd_ratio")
        self.scale_invariant = _make_invariance(scale_invariant, self.model)
        self.last_projection: dict[str, str | None] = {}

    def _project(self, name, p, g, d):
        """``(d', decay ratio r)``; records the view used."""
        if p.ndim <= 1:
            view_used = None
        elif self.scale_invariant is None:
            d, view_used = projection(p, g, d, delta=self.delta, eps=self.eps)
        elif name in self.scale_invariant:
            d, view_used = projection(p, g, d, eps=self.eps, view=self.scale_invariant[name])
        else:
            view_used = None
        self.last_projection[name] = view_used
        return d, (self.wd_ratio if view_used is not None else 1.0)


class SGDP(_Projected):
    """SGD with momentum whose update of scale-invariant weights is projected onto the tangent space (see the module
    doc). Defaults as the reference code; ``lr`` has no default there either.

    Args:
        model: the :class:`~normref.nn.Module` whose parameters are updated.
        lr: learning rate :math:`\\eta`.
        momentum, dampening, nesterov: as :class:`~normref.optim.SGD` (the buffer starts at zero).
        weight_decay: :math:`\\lambda`, decoupled and scaled by ``wd_ratio/(1 − momentum)`` (see the module doc).
        eps: clamp of the cosine test and of :math:`\\hat w`.
        delta: :math:`\\delta` of the cosine test.
        wd_ratio: decay multiplier for projected parameters.
        scale_invariant: ``None`` detects (the paper); a collection of names (layer view) or a dict ``name ->
            "channel" | "layer"`` declares them, and then the others are never projected.
        params: which parameters to update (see :mod:`normref.optim.optimizer`).

    Examples:
        >>> import numpy as np
        >>> from normref.nn import Linear
        >>> layer = Linear(2, 2, bias=False, rng=0)
        >>> layer.params["weight"] = np.array([[3.0, 4.0], [1.0, 0.0]])
        >>> layer.grads["weight"] = np.array([[-4.0, 3.0], [0.0, 2.0]])   # each row orthogonal to its weight row
        >>> opt = SGDP(layer, lr=0.1)
        >>> opt.step(); opt.last_projection
        {'weight': 'channel'}
        >>> layer.grads["weight"] = np.array([[-4.0, 3.0], [1.0, 2.0]])   # row 1 is not: both views fail
        >>> opt.step(); opt.last_projection
        {'weight': None}
    """

    hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "eps", "delta", "wd_ratio")

    def __init__(self, model, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, eps=1e-8,
                 delta=0.1, wd_ratio=0.1, *, scale_invariant=None, params=None):
        super().__init__(model, lr, eps=eps, delta=delta, wd_ratio=wd_ratio, scale_invariant=scale_invariant,
                         params=params)
        self.momentum = check_unit_interval(momentum, "momentum")
        self.dampening = check_unit_interval(dampening, "dampening", closed_right=True)
        self.weight_decay = check_nonneg(weight_decay, "weight_decay")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, state):
        buf = self.momentum * state.get("momentum", 0.0) + (1.0 - self.dampening) * g
        state["momentum"] = np.asarray(buf, dtype=p.dtype)
        d = g + self.momentum * buf if self.nesterov else buf
        d, ratio = self._project(name, p, g, d)
        if self.weight_decay > 0:
            p = p * (1.0 - self.lr * self.weight_decay * ratio / (1.0 - self.momentum))
        return p - self.lr * d


class AdamP(_Projected):
    """Adam whose update of scale-invariant weights is projected onto the tangent space (see the module doc).

    Args:
        model: the :class:`~normref.nn.Module` whose parameters are updated.
        lr, betas, eps: as :class:`~normref.optim.Adam` (``eps`` is also the projection's eps, as in the
            reference code).
        weight_decay: :math:`\\lambda`, decoupled (``w ← w(1 − ηλr)``), scaled by ``wd_ratio`` when projected.
        delta: :math:`\\delta` of the cosine test.
        wd_ratio: decay multiplier for projected parameters.
        nesterov: use :math:`(\\beta_1 m + (1-\\beta_1) g)` in the numerator.
        scale_invariant: ``None`` detects (the paper); a collection of names (layer view) or a dict ``name ->
            "channel" | "layer"`` declares them, and then the others are never projected.
        params: which parameters to update (see :mod:`normref.optim.optimizer`).
    """

    hyper_names = ("lr", "betas", "eps", "weight_decay", "delta", "wd_ratio", "nesterov")

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, delta=0.1, wd_ratio=0.1,
                 nesterov=False, *, scale_invariant=None, params=None):
        super().__init__(model, lr, eps=eps, delta=delta, wd_ratio=wd_ratio, scale_invariant=scale_invariant,
                         params=params)
        self.betas = check_betas(betas)
        self.weight_decay = check_nonneg(weight_decay, "weight_decay")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, state):
        beta1, beta2 = self.betas
        t = state.get("step", 0) + 1
        m = beta1 * state.get("exp_avg", 0.0) + (1.0 - beta1) * g
        v = beta2 * state.get("exp_avg_sq", 0.0) + (1.0 - beta2) * g * g
        state["step"], state["exp_avg"], state["exp_avg_sq"] = t, m.astype(p.dtype), v.astype(p.dtype)
        denom = np.sqrt(v) / math.sqrt(1.0 - beta2 ** t) + self.eps
        d = (beta1 * m + (1.0 - beta1) * g) / denom if self.nesterov else m / denom
        d, ratio = self._project(name, p, g, d)
        if self.weight_decay > 0:
            p = p * (1.0 - self.lr * self.weight_decay * ratio)
        return p - (self.lr / (1.0 - beta1 ** t)) * d
