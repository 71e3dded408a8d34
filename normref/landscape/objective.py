r"""The objective :math:`L(\theta)`: a model, a loss, evaluation data, and an explicit BatchNorm-statistics policy.

Every landscape, Hessian and smoothness measurement in :mod:`normref.landscape` evaluates one :class:`Objective`.
It owns a private copy of the model (the caller's model is never touched) and turns a flat parameter vector
:math:`\theta \in \mathbb{R}^P` (the order of :func:`normref.nn.flatten_params`) into the loss, its gradient, and
Hessian-vector products.

The BN-statistics policy (landscape.md §0, §1.3, §5.6, §6)
--------------------------------------------------------
Which statistics a BatchNorm layer uses at a perturbed :math:`\theta` decides the picture, and every existing tool
fixes one choice silently. Here it is the required argument ``bn`` of every :class:`Objective`:

``"running"``
    eval mode with the running buffers of the reference point (by default those the model held when the objective
    was built, i.e. of :math:`\theta^*`), unchanged while the weights move. This is what ``tomgoldstein/
    loss-landscape`` (``--dir_type weights``) and PyHessian compute. The loss is a smooth function of
    :math:`\theta`, so gradients and Hessians are well defined.
``"batch"``
    train mode: each fixed chunk ("ghost batch", ``ghost_batch_size`` examples, in data order) is normalized with its
    own batch statistics; the buffers are restored before every evaluation, so nothing drifts. This is the
    edge-of-stability code's choice (chunks of 1000) and the function Santurkar et al. differentiate. Also smooth.
``"recomputed"``
    the REPAIR / SWA reset: running statistics reset, momentum ``None`` (cumulative average over chunks, PyTorch
    semantics: every chunk's statistics get equal weight), one train-mode pass without gradients over
    ``train_data`` in chunks of ``recompute_batch_size``, then eval mode. The value is exact; :meth:`grad` returns
    the gradient with the recomputed statistics *held fixed* (what backpropagation through an eval-mode network
    gives). That is not the derivative of the map :math:`\theta \mapsto L` when the statistics move with
    :math:`\theta`, so Hessian-vector products refuse this policy.

Layers without running state (LN, GN, WS, DyT, ...) are unaffected by the policy. Dropout would be active in
``"batch"`` mode; use models without dropout for landscapes.

Reductions. The loss module must use ``reduction="mean"``. The objective is the mean over *all* evaluation examples:
chunk ``c`` with :math:`n_c` examples contributes :math:`(n_c/n) L_c` and its backward is seeded with
``dloss = n_c/n``, so value and gradient are those of the full-data mean whatever the chunking (for ``"running"``
and ``"recomputed"`` chunking changes nothing but memory; for ``"batch"`` the ghost batches define the function).

Hessian-vector products without autograd (landscape.md §7)
---------------------------------------------------------
``method="complex"``: :math:`Hv = \operatorname{Im} \nabla L(\theta + i h v)/h` with :math:`h = 10^{-30}`
(Martins, Sturdza & Alonso 2003). normref's forward and backward passes are complex-step safe (branch decisions
on ``.real``, variances as ``mean(z*z)``), so this has no subtractive cancellation: the truncation error is
:math:`O(h^2)` (about :math:`10^{-60}` relative) and the result is exact to rounding. For piecewise-linear
activations (ReLU, max-pool) it returns the Hessian of the current activation pattern, which is what autograd
returns. The reported ``error_estimate`` is the rounding level :math:`u\,\lVert Hv\rVert` (unit roundoff of float64).

``method="central"``: :math:`[\nabla L(\theta + \varepsilon v) - \nabla L(\theta - \varepsilon v)]/(2\varepsilon)`
with the step *length* :math:`\varepsilon\lVert v\rVert` = 1e-5 for float64 models and 1e-2 for float32 ones
(the measured optima of landscape.md §7.2). Its ``error_estimate`` is Richardson's: with :math:`D(\varepsilon) =
Hv + c\varepsilon^2 + \dots`, :math:`\lVert D(2\varepsilon) - D(\varepsilon)\rVert/3` estimates the truncation
error, plus the rounding term :math:`u\lVert\nabla L\rVert/\varepsilon`. It costs two more gradients; pass
``estimate_error=False`` (as the Lanczos operator does) to skip it. With ReLU networks a unit crossing its kink
inside :math:`\pm\varepsilon v` makes the error of order one (§7.2): prefer the complex step.

``method="auto"`` uses the complex step when :meth:`is_analytic` holds (the complex-step directional derivative
of the loss agrees with :math:`\nabla L \cdot v` to 1e-8, which fails when some op takes ``abs``/``conj`` of its
input or raises on complex input) and central differences otherwise.
"""

from __future__ import annotations

import copy
import hashlib
from typing import NamedTuple

import numpy as np

from ..nn.flat import flatten_grads, flatten_params, param_layout, set_flat_params
from ..nn.module import Module

BN_POLICIES = ("running", "batch", "recomputed")
HVP_METHODS = ("auto", "complex", "central")
COMPLEX_STEP = 1e-30
CENTRAL_STEP = {np.dtype(np.float64): 1e-5, np.dtype(np.float32): 1e-2}


class HVP(NamedTuple):
    """A Hessian-vector product and how it was obtained.

    ``value`` ``(P,)``; ``method`` ``"complex"`` or ``"central"``; ``step`` the ``h`` or ``eps`` used (as a step
    length along ``v``); ``error_estimate`` an absolute error estimate of ``value`` in the 2-norm (see the module
    docstring for each method's rule); ``n_grad`` the number of gradient evaluations spent.
    """

    value: np.ndarray
    method: str
    step: float
    error_estimate: float
    n_grad: int


def _strip(model: Module) -> None:
    """Drop forward caches and gradients' contents so the copy pickles small (they are rebuilt on the next call)."""
    for module in model.modules():
        if getattr(module, "cache", None) is not None:
            module.cache = None
        for name, value in module.params.items():
            module.grads[name] = np.zeros_like(value)


def _chunks(n: int, size: int | None):
    size = n if size is None else int(size)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _fingerprint(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class Objective:
    """:math:`L(\\theta)` on fixed data with an explicit BN-statistics policy (see the module docstring).

    Args:
        model: a normref :class:`~normref.nn.Module`; deep-copied, never modified. Its parameters are the reference
            point :attr:`theta0`, its buffers the reference statistics :attr:`buffers` used by ``bn="running"``.
        loss: a loss module with ``reduction="mean"`` (``CrossEntropyLoss()``, ``MSELoss()``).
        x, y: evaluation inputs and targets (the whole set is one objective; see ``batch_size``).
        bn: ``"running"``, ``"batch"`` or ``"recomputed"``; required, no default on purpose.
        train_data: ``(x_train, y_train)`` or ``x_train`` for ``bn="recomputed"`` (targets unused).
        ghost_batch_size: ``bn="batch"`` only: size of the fixed chunks normalized together (default: all of ``x``).
        batch_size: chunk size for ``"running"``/``"recomputed"`` evaluation (memory only; results unchanged).
        recompute_batch_size: chunk size of the statistics pass of ``"recomputed"`` (default 256).
        buffers: reference buffers (dotted name -> value) instead of the model's own.

    Examples:
        >>> import numpy as np
        >>> from normref.nn import BatchNorm, CrossEntropyLoss, Linear, Sequential, Tanh
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(32, 4)), rng.integers(0, 3, 32)
        >>> net = Sequential(Linear(4, 6, rng=0), BatchNorm(6), Tanh(), Linear(6, 3, rng=1))
        >>> f = Objective(net, CrossEntropyLoss(), x, y, bn="batch")
        >>> loss, g = f.grad(f.theta0)
        >>> g.shape == f.theta0.shape, f.hvp(f.theta0, g).method
        (True, 'complex')
    """

    def __init__(self, model, loss, x, y, *, bn, train_data=None, ghost_batch_size=None, batch_size=None,
                 recompute_batch_size=256, buffers=None):
        if not isinstance(model, Module):
            raise TypeError(f"model must be a normref Module, got {type(model).__name__}")
        if bn not in BN_POLICIES:
            raise ValueError(f"bn must be one of {BN_POLICIES} (the BatchNorm-statistics policy), got {bn!r}")
        if getattr(loss, "reduction", None) != "mean":
            raise ValueError("loss must be a normref loss module with reduction='mean' (the objective is a mean)")
        self.model = copy.deepcopy(model)
        _strip(self.model)
        self.criterion = copy.deepcopy(loss)
        self.criterion.cache = None
        self.x, self.y = np.asarray(x), np.asarray(y)
        if len(self.x) != len(self.y) or len(self.x) == 0:
            raise ValueError(f"x and y must have the same nonzero length, got {len(self.x)} and {len(self.y)}")
        self.bn = bn
        if bn == "recomputed" and train_data is None:
            raise ValueError('bn="recomputed" needs train_data (the data the statistics are recomputed on)')
        train_x = train_data[0] if isinstance(train_data, (tuple, list)) else train_data
        self.train_x = None if train_x is None else np.asarray(train_x)
        for name, value in (("ghost_batch_size", ghost_batch_size), ("batch_size", batch_size),
                            ("recompute_batch_size", recompute_batch_size)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if ghost_batch_size is not None and bn != "batch":
            raise ValueError('ghost_batch_size only applies to bn="batch"')
        self.ghost_batch_size = ghost_batch_size
        self.batch_size = batch_size
        self.recompute_batch_size = int(recompute_batch_size)
        self.theta0 = flatten_params(self.model)
        own = dict(self.model.named_buffers())
        self.buffers = copy.deepcopy(own if buffers is None else dict(buffers))
        if set(self.buffers) != set(own):
            raise ValueError(f"buffers must name exactly the model's buffers {sorted(own)}, got {sorted(self.buffers)}")
        self.layout = param_layout(self.model)
        self._dtypes = {prefix + name: value.dtype for module, prefix in self.model._modules_with_prefix()
                        for name, value in module.params.items()}
        self.classification = self.y.dtype.kind in "iu"
        self._analytic = None
        self.n_evaluations = 0

    # -- housekeeping ---------------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return int(self.theta0.size)

    @property
    def param_dtype(self) -> np.dtype:
        """The widest real dtype of the model's parameters (sets the central-difference step)."""
        return np.result_type(*self._dtypes.values())

    def describe(self) -> dict:
        """A JSON-able description: policy, chunking, data fingerprint (stored beside every result)."""
        return {"bn": self.bn, "ghost_batch_size": self.ghost_batch_size, "n": int(len(self.x)),
                "data": _fingerprint(self.x, self.y),
                "train_data": _fingerprint(self.train_x) if self.bn == "recomputed" else None,
                "recompute_batch_size": self.recompute_batch_size if self.bn == "recomputed" else None,
                "model": type(self.model).__name__, "num_params": self.num_params}

    def replace(self, **changes) -> "Objective":
        """A copy with some constructor arguments changed (``bn``, ``buffers``, ``x``/``y``, ...)."""
        args = {"x": self.x, "y": self.y, "bn": self.bn, "train_data": self.train_x,
                "ghost_batch_size": self.ghost_batch_size, "batch_size": self.batch_size,
                "recompute_batch_size": self.recompute_batch_size, "buffers": self.buffers}
        args.update(changes)
        if args["bn"] != "batch" and "ghost_batch_size" not in changes:
            args["ghost_batch_size"] = None
        model = copy.deepcopy(self.model)
        set_flat_params(model, self.theta0)
        x, y = args.pop("x"), args.pop("y")
        return Objective(model, self.criterion, x, y, **args)

    def with_data(self, x, y) -> "Objective":
        """The same model, policy and reference statistics on other data (a new mini-batch)."""
        return self.replace(x=x, y=y)

    def __getstate__(self):
        state = self.__dict__.copy()
        _strip(self.model)
        self.criterion.cache = None
        return state

    # -- evaluation -----------------------------------------------------------------------------------------------
    def _set_buffers(self, buffers) -> None:
        for module, prefix in self.model._modules_with_prefix():
            for name in module.buffers:
                value = buffers[prefix + name]
                module.buffers[name] = np.array(value, copy=True) if isinstance(value, np.ndarray) else value

    def _recompute(self) -> None:
        """REPAIR / SWA reset: zeroed statistics, cumulative average, one no-grad train pass, then eval."""
        saved = []
        for module in self.model.modules():
            if hasattr(module, "reset_running_stats") and hasattr(module, "momentum"):
                saved.append((module, module.momentum))
                module.momentum = None
                module.reset_running_stats()
        self.model.train()
        for part in _chunks(len(self.train_x), self.recompute_batch_size):
            self.model.forward(self.train_x[part])
        for module, momentum in saved:
            module.momentum = momentum
        self.model.eval()

    def _run(self, theta, *, grad: bool, buffers=None) -> dict:
        theta = np.asarray(theta)
        if theta.shape != self.theta0.shape:
            raise ValueError(f"theta must have shape {self.theta0.shape}, got {theta.shape}")
        self.n_evaluations += 1
        model, crit = self.model, self.criterion
        set_flat_params(model, theta)
        self._set_buffers(self.buffers if buffers is None else buffers)
        if self.bn == "running":
            model.eval()
            parts = _chunks(len(self.x), self.batch_size)
        elif self.bn == "batch":
            model.train()
            parts = _chunks(len(self.x), self.ghost_batch_size)
        else:
            self._recompute()
            parts = _chunks(len(self.x), self.batch_size)
        if grad:
            model.zero_grad()
        n = len(self.x)
        total, correct = 0.0, 0
        for part in parts:
            weight = (part.stop - part.start) / n
            out = model.forward(self.x[part])
            total = total + weight * crit.forward(out, self.y[part])[()]
            if grad:
                model.backward(crit.backward(weight))
            if self.classification and np.ndim(out) == 2:
                correct += int(np.sum(np.argmax(np.real(out), axis=1) == self.y[part]))
        result = {"loss": total}
        if self.classification:
            result["accuracy"] = correct / n
        if grad:
            result["grad"] = flatten_grads(model, dtype=None if np.iscomplexobj(theta) else np.float64)
        if np.iscomplexobj(theta):  # back to the real parameter dtypes (float32 stays float32 after a complex step)
            for module, prefix in model._modules_with_prefix():
                for name in module.params:
                    module.params[name] = np.real(module.params[name]).astype(self._dtypes[prefix + name])
        _strip(model)
        return result

    def evaluate(self, theta, *, buffers=None) -> dict:
        """``{"loss": float, "accuracy": float}`` at ``theta`` (accuracy only for integer class targets).

        ``buffers`` replaces the reference statistics for this call (used by ``bn="running"``: mode connectivity
        passes interpolated statistics this way).
        """
        out = self._run(theta, grad=False, buffers=buffers)
        return {key: float(np.real(value)) for key, value in out.items()}

    def value(self, theta, *, buffers=None) -> float:
        """The loss at ``theta``."""
        return self.evaluate(theta, buffers=buffers)["loss"]

    def grad(self, theta, *, buffers=None) -> tuple[float, np.ndarray]:
        """``(loss, gradient (P,))`` at ``theta``, by the hand-derived backward passes.

        A complex ``theta`` gives a complex loss and gradient (the complex step through the whole model).
        """
        out = self._run(theta, grad=True, buffers=buffers)
        loss = out["loss"] if np.iscomplexobj(theta) else float(np.real(out["loss"]))
        return loss, out["grad"]

    # -- second order ---------------------------------------------------------------------------------------------
    def is_analytic(self, theta=None, *, seed=0) -> bool:
        """Whether the complex step through this model is valid (cached after the first call).

        Checks :math:`\\operatorname{Im} L(\\theta + ihv)/h = \\nabla L \\cdot v` to 1e-8 relative for one random
        ``v``; any exception from an op that refuses complex input also means "no".
        """
        if self._analytic is None:
            theta = self.theta0 if theta is None else np.asarray(theta, dtype=np.float64)
            v = np.random.default_rng(seed).standard_normal(theta.size)
            try:
                _, g = self.grad(theta)
                lc = self._run(theta + 1j * COMPLEX_STEP * v, grad=False)["loss"]
                directional = np.imag(lc) / COMPLEX_STEP
                exact = float(g @ v)
                self._analytic = bool(np.isfinite(directional)
                                      and abs(directional - exact) <= 1e-8 * max(abs(exact), 1e-300) + 1e-300)
            except (TypeError, ValueError, FloatingPointError):
                self._analytic = False
        return self._analytic

    def _resolve_method(self, method: str) -> str:
        if method not in HVP_METHODS:
            raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")
        if self.bn == "recomputed":
            raise ValueError('Hessian-vector products need a smooth function of theta: bn="recomputed" holds the '
                             'recomputed statistics fixed in the gradient, so use bn="running" or bn="batch"')
        if method == "auto":
            return "complex" if self.is_analytic() else "central"
        return method

    def hvp(self, theta, v, *, method="auto", step=None, estimate_error=True, buffers=None) -> HVP:
        """The Hessian-vector product :math:`\\nabla^2 L(\\theta)\\,v` with its method and error estimate.

        ``step``: ``h`` (complex, default 1e-30) or the central step length ``eps*|v|`` (default 1e-5 for float64
        parameters, 1e-2 for float32), both measured along ``v``.
        """
        method = self._resolve_method(method)
        theta = np.asarray(theta, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        if v.shape != theta.shape:
            raise ValueError(f"v must have shape {theta.shape}, got {v.shape}")
        vnorm = float(np.linalg.norm(v))
        if vnorm == 0.0:
            return HVP(np.zeros_like(theta), method, 0.0, 0.0, 0)
        u = v / vnorm  # the step is taken along the unit vector, then rescaled: step sizes mean lengths
        if method == "complex":
            h = COMPLEX_STEP if step is None else float(step)
            _, gc = self.grad(theta + 1j * h * u, buffers=buffers)
            hv = np.imag(gc) / h * vnorm
            return HVP(hv, "complex", h, float(np.finfo(np.float64).eps * np.linalg.norm(hv)), 1)
        eps = CENTRAL_STEP.get(np.dtype(self.param_dtype), 1e-5) if step is None else float(step)

        def central(e):
            _, gp = self.grad(theta + e * u, buffers=buffers)
            _, gm = self.grad(theta - e * u, buffers=buffers)
            return (gp - gm) / (2 * e), max(np.linalg.norm(gp), np.linalg.norm(gm))

        hv, gnorm = central(eps)
        n_grad, error = 2, float("nan")
        if estimate_error:
            hv2, _ = central(2 * eps)
            n_grad = 4
            unit = np.finfo(self.param_dtype).eps
            error = float(np.linalg.norm(hv2 - hv) / 3 + unit * gnorm / eps) * vnorm
        return HVP(hv * vnorm, "central", eps, error, n_grad)


def param_kinds(model: Module) -> list[tuple[str, str, tuple, slice]]:
    """``(name, kind, shape, slice)`` per parameter, in flat order; ``kind`` is one of

    * ``"weight"``: two or more axes (Linear ``(out, in)``, Conv ``(out, in, kh, kw)``): has filters (dim 0);
    * ``"norm"``: any parameter of a normalization layer with fewer than two axes (γ, β, DyT's α, ...): a module
      that is a :class:`~normref.nn.NormLayer`, or whose class name contains ``"Norm"``;
    * ``"bias"``: every other parameter with fewer than two axes.
    """
    from ..nn._norm_base import NormLayer

    kinds = []
    layout = {name: (shape, sl) for name, shape, sl in param_layout(model)}
    for module, prefix in model._modules_with_prefix():
        is_norm = isinstance(module, NormLayer) or "Norm" in type(module).__name__
        for name, value in module.params.items():
            shape, sl = layout[prefix + name]
            kind = "weight" if value.ndim >= 2 else ("norm" if is_norm else "bias")
            kinds.append((prefix + name, kind, shape, sl))
    kinds.sort(key=lambda item: item[3].start)
    return kinds


def layer_blocks(model: Module) -> dict[str, slice]:
    """Flat slices per module that owns parameters (``"0"`` -> weight and bias of the first layer, ...).

    A module's own parameters are contiguous in the flat view (they come before its children's), so each block
    is one slice. The key is the module's dotted name (``""`` for a top-level module with parameters).
    """
    blocks: dict[str, slice] = {}
    for name, _, _, sl in param_kinds(model):
        owner = name.rpartition(".")[0]
        blocks[owner] = slice(blocks[owner].start, sl.stop) if owner in blocks else sl
    return blocks
