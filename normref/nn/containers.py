r"""Containers and shape plumbing: Sequential, Residual, Flatten, Identity.

Composition needs no new calculus, only the chain rule and the sum rule:

* ``Sequential(f1, ..., fk)``: :math:`y = f_k(\cdots f_1(x))`. Forward runs the children in order; backward runs
  their backwards in *reverse* order, each turning the gradient of its output into the gradient of its input:
  :math:`dx = J_1^\top(\cdots J_k^\top dy)`.
* ``Residual(f)``: :math:`y = x + f(x)` (He et al. 2016), or :math:`y = s(x) + f(x)` with a ``shortcut`` module
  ``s`` (a 1x1 convolution when the shapes change). ``x`` fans out to both branches, so its gradient is the *sum* of
  the branches' gradients: :math:`dx = dy + J_f^\top dy` (resp. :math:`J_s^\top dy + J_f^\top dy`).
* ``Flatten(start_dim=1, end_dim=-1)``: a reshape, so the backward is the inverse reshape of ``dy``.

Children are registered in ``children`` ("0", "1", ... for Sequential; "fn" and "shortcut" for Residual), so
``named_parameters`` yields ``"0.weight"``, ``"1.gamma"``, ..., the order the flat-parameter view uses
(:mod:`normref.nn.flat`).

A module instance may appear only once in a container tree (checked on construction): a layer keeps the cache of
its *last* forward, so a second use in the same pass would overwrite what the first use's backward needs, and its
parameters would appear twice in the flat view. Weight tying needs a module written for it.
"""

from __future__ import annotations

import numbers

import numpy as np

from .module import Module


def _check_module(module, name: str) -> Module:
    if not isinstance(module, Module):
        raise TypeError(f"{name} must be a normref Module, got {type(module).__name__}")
    return module


def _check_unique(container: Module) -> None:
    seen = {}
    for module, prefix in container._modules_with_prefix():
        if id(module) in seen:
            raise ValueError(f"the same {type(module).__name__} instance appears twice (at {seen[id(module)]!r} and "
                             f"{prefix.rstrip('.')!r}): a layer keeps one cache, so each use needs its own instance")
        seen[id(module)] = prefix.rstrip(".")


class Sequential(Module):
    """Run modules one after another; backward in reverse order.

    Examples:
        >>> from normref.nn import Linear, ReLU
        >>> net = Sequential(Linear(4, 8, rng=0), ReLU(), Linear(8, 2, rng=1))
        >>> [name for name, _ in net.named_parameters()]
        ['0.weight', '0.bias', '2.weight', '2.bias']
        >>> dx = net.backward(np.ones((3, 2))) if net(np.ones((3, 4))).shape == (3, 2) else None
        >>> dx.shape
        (3, 4)
    """

    def __init__(self, *modules):
        super().__init__()
        for i, module in enumerate(modules):
            self.children[str(i)] = _check_module(module, f"modules[{i}]")
        _check_unique(self)

    def __len__(self) -> int:
        return len(self.children)

    def __iter__(self):
        return iter(self.children.values())

    def __getitem__(self, index: int) -> Module:
        return list(self.children.values())[index]

    def forward(self, x):
        for module in self.children.values():
            x = module.forward(x)
        return x

    def backward(self, dy):
        for module in reversed(list(self.children.values())):
            dy = module.backward(dy)
        return dy

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({name}): {module!r}".replace("\n", "\n  ") for name, module in self.children.items())
        return f"Sequential(\n{inner}\n)"


class Residual(Module):
    """``y = x + fn(x)``, or ``y = shortcut(x) + fn(x)``; backward ``dx = dy + fn.backward(dy)`` (resp. the sum of
    both branches' backwards).

    Examples:
        >>> from normref.nn import Linear
        >>> block = Residual(Linear(3, 3, rng=0))
        >>> x = np.ones((2, 3))
        >>> bool(np.allclose(block(x), x + block.children["fn"](x)))
        True
    """

    def __init__(self, fn, shortcut=None):
        super().__init__()
        self.children["fn"] = _check_module(fn, "fn")
        if shortcut is not None:
            self.children["shortcut"] = _check_module(shortcut, "shortcut")
        _check_unique(self)

    def forward(self, x):
        fx = self.children["fn"].forward(x)
        sx = self.children["shortcut"].forward(x) if "shortcut" in self.children else x
        if np.shape(fx) != np.shape(sx):
            raise ValueError(f"Residual: fn(x) has shape {np.shape(fx)} but the shortcut gives {np.shape(sx)}; "
                             f"pass a shortcut module that maps x to fn's output shape")
        return sx + fx

    def backward(self, dy):
        dx = self.children["fn"].backward(dy)
        if "shortcut" in self.children:
            return dx + self.children["shortcut"].backward(dy)
        return dx + dy

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({name}): {module!r}".replace("\n", "\n  ") for name, module in self.children.items())
        return f"Residual(\n{inner}\n)"


class Flatten(Module):
    """Merge axes ``start_dim..end_dim`` into one (PyTorch's ``nn.Flatten``, default: all but the batch axis).

    Examples:
        >>> Flatten()(np.zeros((2, 3, 4, 5))).shape
        (2, 60)
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, value in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)
        self.x_shape = None

    def forward(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
        start, end = self.start_dim % max(x.ndim, 1), self.end_dim % max(x.ndim, 1)
        if not (-x.ndim <= self.start_dim < x.ndim and -x.ndim <= self.end_dim < x.ndim) or start > end:
            raise ValueError(f"start_dim={self.start_dim}, end_dim={self.end_dim} do not name a range of axes of x "
                             f"with shape {x.shape}")
        self.x_shape = x.shape
        return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])

    def backward(self, dy):
        if self.x_shape is None:
            raise RuntimeError("Flatten.backward called before forward")
        dy = np.asarray(dy)
        if dy.size != int(np.prod(self.x_shape)):
            raise ValueError(f"dy has {dy.size} elements but the forward's input had shape {self.x_shape}")
        return dy.reshape(self.x_shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """``y = x``, ``dx = dy`` (a placeholder where a model has no normalizer)."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
