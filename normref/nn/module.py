"""The stateful-layer contract: a micrograd-small ``Module``.

A layer owns

* ``params``: named arrays it learns (``"gamma"``, ``"beta"``, ...), and ``grads`` with the same keys and shapes;
* ``buffers``: named state it updates but does not learn (running statistics, counters);
* ``training``: set by :meth:`train` / :meth:`eval`, and read by layers whose forward differs between the two.

``forward(x)`` returns ``y`` and keeps what the backward needs (the op's cache) on the layer. ``backward(dy)``
returns ``dx`` and **adds** the parameter gradients into ``grads``: a parameter used twice receives the sum, as in
any reverse-mode graph, so call :meth:`zero_grad` between steps. Containers hold child modules in ``children``;
their names prefix the children's parameter and buffer names (``"0.gamma"``).
"""

from __future__ import annotations

import copy
from typing import Iterator

import numpy as np


class Module:
    """Base class of every normref layer and model."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, object] = {}
        self.children: dict[str, Module] = {}
        self.training = True

    # -- the computation -------------------------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- parameters and gradients ----------------------------------------------------------------------------------
    def add_param(self, name: str, value: np.ndarray) -> None:
        """Register a learnable array and a zero gradient of the same shape and dtype."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def accumulate_grad(self, name: str, grad) -> None:
        """Add ``grad`` into ``grads[name]`` (gradients accumulate across backward calls).

        The sum keeps the parameter's dtype: a float64 input through float32 parameters gives float32 gradients.
        """
        if grad is not None:
            self.grads[name] = (self.grads[name] + grad).astype(self.params[name].dtype, copy=False)

    def zero_grad(self) -> None:
        for module in self.modules():
            for name, value in module.params.items():
                module.grads[name] = np.zeros_like(value)

    def modules(self) -> Iterator["Module"]:
        """This module and all its descendants, depth first."""
        yield self
        for child in self.children.values():
            yield from child.modules()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name, value in self.params.items():
            yield prefix + name, value
        for child_name, child in self.children.items():
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def named_grads(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name in self.params:
            yield prefix + name, self.grads[name]
        for child_name, child in self.children.items():
            yield from child.named_grads(f"{prefix}{child_name}.")

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, object]]:
        for name, value in self.buffers.items():
            yield prefix + name, value
        for child_name, child in self.children.items():
            yield from child.named_buffers(f"{prefix}{child_name}.")

    # -- modes and state -------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def astype(self, dtype) -> "Module":
        """Cast every floating parameter, gradient and floating-array buffer to ``dtype``, in place; return ``self``.

        PyTorch's ``module.to(dtype)`` (``.float()``, ``.double()``): integer buffers (step counters, seeds) keep their
        type, and a layer's ``dtype`` attribute follows, so it creates new state in the new precision.
        """
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"astype: dtype must be a floating dtype (float32 or float64), got {dtype}")
        for module in self.modules():
            for name, value in module.params.items():
                module.params[name] = value.astype(dtype, copy=False)
                module.grads[name] = module.grads[name].astype(dtype, copy=False)
            for name, value in module.buffers.items():
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    module.buffers[name] = value.astype(dtype, copy=False)
            if isinstance(getattr(module, "dtype", None), np.dtype):
                module.dtype = dtype
        return self

    def state_dict(self) -> dict[str, object]:
        """Copies of every parameter and buffer, by dotted name."""
        state = {name: np.array(value, copy=True) for name, value in self.named_parameters()}
        state.update({name: copy.deepcopy(value) for name, value in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace parameters and buffers by the arrays in ``state`` (shapes must match; missing keys are errors)."""
        expected = {name for name, _ in self.named_parameters()} | {name for name, _ in self.named_buffers()}
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(f"state does not match the module: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        for module, prefix in self._modules_with_prefix():
            for name in module.params:
                value = np.asarray(state[prefix + name])
                if value.shape != module.params[name].shape:
                    raise ValueError(f"state[{prefix + name!r}] must have shape {module.params[name].shape}, "
                                     f"got {value.shape}")
                module.params[name] = value.astype(module.params[name].dtype, copy=True)
            for name in module.buffers:
                module.buffers[name] = copy.deepcopy(state[prefix + name])

    def _modules_with_prefix(self, prefix: str = ""):
        yield self, prefix
        for child_name, child in self.children.items():
            yield from child._modules_with_prefix(f"{prefix}{child_name}.")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
