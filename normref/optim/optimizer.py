"""The optimizer base class: which parameters it updates, how it updates them, and its checkpoint state.

An optimizer is built on a model (any :class:`~normref.nn.Module`) and reads the parameters and gradients through
the model's ``params``/``grads`` dicts, by dotted name, in ``named_parameters()`` order:

* **Selection.** ``params=None`` updates every parameter; a collection of dotted names updates only those (unknown
  names are an error at construction); a callable ``select(name, array) -> bool`` decides per parameter. Training
  only BatchNorm's affine parameters (Frankle et al. 2021) is ``params=lambda name, p: name.endswith(("gamma",
  "beta"))``.
* **Lookup at every step.** Arrays are looked up in ``module.params`` at each :meth:`Optimizer.step`, never cached, so
  a model whose parameters were replaced (``load_state_dict``, ``set_flat_params``) is still the one that is trained.
* **Update by assignment.** A step computes the new value and *assigns* it, ``module.params[name] = new``; the old
  array is never written into. A snapshot ``w0 = layer.params["weight"]`` taken before the step therefore still
  holds the old value, which the tutorials and tests rely on. (PyTorch updates in place; at normref's sizes the extra
  allocation per parameter costs nothing measurable.) The new array keeps the parameter's dtype: float32 stays
  float32. Complex or integer parameters are refused.
* **State.** Per-parameter state (momentum buffers, Adam moments, step counts) lives in ``self.state[name]``, keyed by
  the dotted name. :meth:`Optimizer.state_dict` returns a *flat* dict of copies that ``np.savez`` can store as is:
  ``"type"``, ``"step_count"``, ``"hyper/<name>"`` for every hyperparameter (``lr`` included, so a schedule's current
  value is restored) and ``"state/<param>/<slot>"`` for every state entry. :meth:`Optimizer.load_state_dict`
  accepts that dict, or the same dict after a round trip through ``np.savez``/``np.load`` (0-d arrays are converted
  back), and checks that the names and shapes match the model.

Subclasses declare their hyperparameter names in ``hyper_names`` and implement ``_update(name, p, g, state)``, which
returns the new value of one parameter from its current value ``p``, its gradient ``g`` and its state dict.
"""

from __future__ import annotations

import numbers
from typing import Callable, Iterator

import numpy as np

from ..nn.module import Module


def check_model(model) -> Module:
    if not isinstance(model, Module):
        raise TypeError(f"model must be a normref Module, got {type(model).__name__}")
    return model


def make_selector(params, model: Module, what: str = "params") -> Callable[[str, np.ndarray], bool]:
    """Turn ``None`` / a collection of dotted names / a callable into ``select(name, array) -> bool``."""
    if params is None:
        return lambda name, value: True
    if callable(params):
        return params
    if isinstance(params, str):
        raise TypeError(f"{what} must be a collection of parameter names, not a single string; use [{params!r}]")
    try:
        names = set(params)
    except TypeError:
        raise TypeError(f"{what} must be None, a collection of parameter names or a callable, "
                        f"got {type(params).__name__}") from None
    known = {name for name, _ in model.named_parameters()}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"{what} names {unknown} are not parameters of the model; it has {sorted(known)}")
    return lambda name, value: name in names


def iter_selected(model: Module, select) -> Iterator[tuple[str, Module, str]]:
    """``(dotted name, owning module, key in module.params)`` for every selected parameter, in flat order."""
    for module, prefix in model._modules_with_prefix():
        for key, value in module.params.items():
            if select(prefix + key, value):
                yield prefix + key, module, key


def check_real(value, name: str, what: str = "hyperparameter") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_nonneg(value, name: str) -> float:
    value = check_real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_unit_interval(value, name: str, *, closed_right: bool = False) -> float:
    value = check_real(value, name)
    if not (0.0 <= value < 1.0 or (closed_right and value == 1.0)):
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must lie in {bound}, got {value}")
    return value


class Optimizer:
    """Base class: parameter selection, the step loop, zero_grad and the checkpoint state (see the module doc)."""

    hyper_names: tuple[str, ...] = ("lr",)

    def __init__(self, model, lr, *, params=None):
        self.model = check_model(model)
        self.lr = check_nonneg(lr, "lr")
        self._select = make_selector(params, self.model)
        self.state: dict[str, dict[str, object]] = {}
        self.step_count = 0

    # -- the parameters ---------------------------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """The parameters this optimizer updates, by dotted name."""
        for name, module, key in iter_selected(self.model, self._select):
            yield name, module.params[key]

    def zero_grad(self) -> None:
        """Set the gradient of every parameter this optimizer updates to zeros (new arrays)."""
        for _, module, key in iter_selected(self.model, self._select):
            module.grads[key] = np.zeros_like(module.params[key])

    # -- the update -------------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Update every selected parameter once from its accumulated gradient."""
        for name, module, key in iter_selected(self.model, self._select):
            p, g = module.params[key], module.grads[key]
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"parameter {name!r} must be a real floating-point array to be optimized, "
                                f"got {getattr(p, 'dtype', type(p).__name__)}")
            if np.shape(g) != p.shape:
                raise ValueError(f"gradient of {name!r} has shape {np.shape(g)}, parameter has {p.shape}")
            g = np.asarray(g).astype(p.dtype, copy=False)
            new = self._update(name, p, g, self.state.setdefault(name, {}))
            module.params[key] = np.asarray(new).astype(p.dtype, copy=False)
        self.step_count += 1

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, state: dict) -> np.ndarray:
        raise NotImplementedError

    # -- checkpoint -------------------------------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.hyper_names}

    def state_dict(self) -> dict[str, object]:
        """A flat dict of copies (see the module doc): type, step_count, hyper/*, state/<param>/<slot>."""
        out: dict[str, object] = {"type": type(self).__name__, "step_count": int(self.step_count)}
        for name, value in self.hyperparameters().items():
            out[f"hyper/{name}"] = tuple(value) if isinstance(value, tuple) else value
        for pname, slots in self.state.items():
            for slot, value in slots.items():
                out[f"state/{pname}/{slot}"] = np.array(value, copy=True) if isinstance(value, np.ndarray) else value
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore hyperparameters, step count and per-parameter state from :meth:`state_dict`'s output."""
        state = dict(state)
        kind = str(np.asarray(state.get("type", "")))
        if kind != type(self).__name__:
            raise ValueError(f"state was saved by a {kind or 'unknown'} optimizer, cannot load it into "
                             f"{type(self).__name__}")
        missing = [f"hyper/{n}" for n in self.hyper_names if f"hyper/{n}" not in state]
        if "step_count" not in state or missing:
            raise ValueError(f"state is missing {(['step_count'] if 'step_count' not in state else []) + missing}")
        params = dict(self.named_parameters())
        new_state: dict[str, dict[str, object]] = {}
        for key, value in state.items():
            if not key.startswith("state/"):
                continue
            pname, _, slot = key[len("state/"):].rpartition("/")
            if pname not in params:
                raise ValueError(f"state entry {key!r} names no parameter this optimizer updates")
            value = np.asarray(value)
            if value.ndim == 0 and value.dtype.kind in "iu":
                value = int(value)
            elif value.shape != params[pname].shape:
                raise ValueError(f"state entry {key!r} has shape {value.shape}, parameter has {params[pname].shape}")
            else:
                value = value.astype(params[pname].dtype, copy=True)
            new_state.setdefault(pname, {})[slot] = value
        for name in self.hyper_names:
            value = np.asarray(state[f"hyper/{name}"])
            old = getattr(self, name)
            if isinstance(old, bool):
                value = bool(value)
            elif isinstance(old, tuple):
                value = tuple(float(v) for v in value)
            else:
                value = float(value)
            setattr(self, name, value)
        self.step_count = int(np.asarray(state["step_count"]))
        self.state = new_state

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({hyper})"
