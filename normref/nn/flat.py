"""The flat-parameter view of a model, and saving/loading it to ``.npz``.

Landscapes, Hessian-vector products and line searches treat a network as a function of one vector
:math:`\\theta \\in \\mathbb{R}^P`. This module is that view:

* :func:`flatten_params` concatenates every parameter, raveled in C order, in the order of
  ``model.named_parameters()`` (a module's own parameters in insertion order, then its children in registration
  order, recursively), as one 1-D float64 vector of length :func:`num_params`;
* :func:`flatten_grads` does the same for the accumulated gradients, in the *same* order, so ``flatten_grads(m)`` is
  :math:`\\nabla_\\theta L` for the last backward;
* :func:`set_flat_params` writes a vector back: each parameter is replaced by a new array (the old one is not written
  into) of its previous dtype and shape. A complex vector makes the parameters complex, so a complex step through the
  whole model is ``set_flat_params(m, theta + 1e-20j * v)``; :func:`param_layout` gives the ``(name, shape, slice)``
  triples.

:func:`save_npz` / :func:`load_npz` store ``model.state_dict()``: parameters under ``"param/<name>"`` and buffers
(running statistics, ``num_batches_tracked``, dropout's ``seed``/``step``) under ``"buffer/<name>"``, without pickle.
Integer buffers come back as Python ints, arrays with their dtype.
"""

from __future__ import annotations

import os

import numpy as np

from .module import Module


def _check_model(model) -> Module:
    if not isinstance(model, Module):
        raise TypeError(f"model must be a normref Module, got {type(model).__name__}")
    return model


def param_layout(model) -> list[tuple[str, tuple, slice]]:
    """``(name, shape, slice of the flat vector)`` for every parameter, in flat order."""
    layout, start = [], 0
    for name, value in _check_model(model).named_parameters():
        layout.append((name, value.shape, slice(start, start + value.size)))
        start += value.size
    return layout


def num_params(model) -> int:
    """``P``, the total number of scalar parameters."""
    return sum(value.size for _, value in _check_model(model).named_parameters())


def _flatten(arrays, dtype) -> np.ndarray:
    arrays = [np.asarray(a) for a in arrays]
    if not arrays:
        return np.zeros(0, dtype)
    if dtype is None:
        dtype = np.result_type(np.float64, *arrays)
    return np.concatenate([a.ravel() for a in arrays]).astype(dtype, copy=False)


def flatten_params(model, dtype=np.float64) -> np.ndarray:
    """Every parameter as one new 1-D vector ``(P,)``, float64 by default (``dtype=None``: complex if any is)."""
    return _flatten([value for _, value in _check_model(model).named_parameters()], dtype)


def flatten_grads(model, dtype=np.float64) -> np.ndarray:
    """Every accumulated gradient as one 1-D vector ``(P,)``, in :func:`flatten_params` order."""
    return _flatten([grad for _, grad in _check_model(model).named_grads()], dtype)


def set_flat_params(model, vector) -> None:
    """Replace every parameter by its slice of ``vector`` ``(P,)``, reshaped and cast to the parameter's dtype.

    Real vectors keep each parameter's real dtype (float32 stays float32), and make a parameter that a complex
    step left complex real again; a complex vector makes them complex.
    """
    model = _check_model(model)
    vector = np.asarray(vector)
    if vector.dtype.kind not in "fc":
        raise TypeError(f"vector must be a float or complex array, got dtype {vector.dtype}")
    total = num_params(model)
    if vector.shape != (total,):
        raise ValueError(f"vector must have shape ({total},) (the model's parameter count), got {vector.shape}")
    start = 0
    for module in model.modules():
        for name, value in module.params.items():
            chunk = vector[start:start + value.size].reshape(value.shape)
            start += value.size
            real_dtype = value.real.dtype  # complex128 -> float64 after a complex step; float32 stays float32
            dtype = real_dtype if vector.dtype.kind != "c" else np.result_type(real_dtype, vector.dtype)
            module.params[name] = chunk.astype(dtype, copy=True)


def save_npz(model, path) -> None:
    """Save parameters and buffers to ``path`` (``.npz``, uncompressed, no pickle)."""
    model = _check_model(model)
    arrays = {f"param/{name}": np.asarray(value) for name, value in model.named_parameters()}
    for name, value in model.named_buffers():
        if value is None or np.asarray(value).dtype == object:
            raise TypeError(f"buffer {name!r} ({type(value).__name__}) cannot be stored in .npz without pickle")
        arrays[f"buffer/{name}"] = np.asarray(value)
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)


def load_npz(model, path) -> None:
    """Load what :func:`save_npz` wrote into ``model`` (same architecture: names and shapes must match)."""
    model = _check_model(model)
    current = dict(model.named_buffers())
    state = {}
    with np.load(os.fspath(path), allow_pickle=False) as data:
        for key in data.files:
            kind, _, name = key.partition("/")
            value = data[key]
            if kind == "buffer" and name in current and not isinstance(current[name], np.ndarray):
                value = value.item()  # a Python scalar buffer (num_batches_tracked, dropout step) stays a scalar
            elif kind not in ("param", "buffer"):
                raise ValueError(f"{os.fspath(path)} holds an unexpected entry {key!r}: not written by save_npz")
            state[name] = value
    model.load_state_dict(state)
