r"""Embedding lookup (PyTorch's ``F.embedding``): row ``i`` of a table for every integer index ``i``.

Shapes: ``indices`` is an integer array of any shape ``S`` with values in ``[0, V)``; ``weight`` is ``(V, D)``;
``y`` is ``(*S, D)``.

Forward: :math:`y_{s,:} = W_{\text{idx}_s,:}`, a selection, so linear in ``W``.

Backward: the transpose of a selection is a scatter-*add*:

.. math::

    dW_{v,:} = \sum_{s:\ \text{idx}_s = v} dy_{s,:} \qquad ((V, D)),

so a token that occurs several times in the batch collects the sum of its gradients (``np.add.at``, which, unlike
``dW[idx] += dy``, does not drop repeated indices). Rows never looked up get zero. The indices are integers: they have
no gradient, and the backward returns ``None`` in ``dx``'s place. With ``padding_idx`` (PyTorch's option) that row's
gradient is zeroed, so it stays as initialized.

Complex step: a selection is linear in ``W``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import as_array, check_dy, check_ndim


class EmbeddingCache(NamedTuple):
    indices: np.ndarray  # S, integers in [0, V)
    weight_shape: tuple  # (V, D)
    padding_idx: int | None
    dtype: np.dtype
    backend: str = "numpy"


def check_indices(indices, num_embeddings: int) -> np.ndarray:
    """Validate integer ``indices`` against a table of ``num_embeddings`` rows."""
    if not isinstance(indices, np.ndarray):
        indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= num_embeddings):
        raise ValueError(f"indices must lie in [0, {num_embeddings}) (num_embeddings), got values in "
                         f"[{indices.min()}, {indices.max()}]")
    return indices


def embedding_forward(indices, weight, *, padding_idx=None):
    """Look up ``weight[indices]``.

    Args:
        indices: integer array ``S``.
        weight: ``(V, D)`` float or complex.
        padding_idx: a row whose gradient is always zero, or ``None``.

    Returns:
        ``(y, cache)``, ``y`` of shape ``(*S, D)`` in ``weight``'s dtype.

    Examples:
        >>> y, _ = embedding_forward(np.array([[2, 0]]), np.arange(6.0).reshape(3, 2))
        >>> y.tolist()
        [[[4.0, 5.0], [0.0, 1.0]]]
    """
    weight = as_array(weight, "weight")
    check_ndim(weight, "weight", (2,), "(num_embeddings, embedding_dim)")
    indices = check_indices(indices, weight.shape[0])
    if padding_idx is not None and not -weight.shape[0] <= padding_idx < weight.shape[0]:
        raise ValueError(f"padding_idx must index a row of weight (0 <= padding_idx < {weight.shape[0]}), "
                         f"got {padding_idx}")
    pad = None if padding_idx is None else int(padding_idx) % weight.shape[0]
    y = weight[indices]
    return y, EmbeddingCache(indices.copy(), weight.shape, pad, weight.dtype)


def embedding_backward(dy, cache: EmbeddingCache):
    """Scatter-add ``dy`` into the rows that were looked up. Returns ``(None, dweight)`` (indices have no gradient)."""
    dy = check_dy(dy, cache.indices.shape + (cache.weight_shape[1],), cache.dtype)
    dweight = np.zeros(cache.weight_shape, dtype=dy.dtype)
    np.add.at(dweight, cache.indices.reshape(-1), dy.reshape(-1, cache.weight_shape[1]))
    if cache.padding_idx is not None:
        dweight[cache.padding_idx] = 0
    return None, dweight


register("embedding", "numpy", embedding_forward, embedding_backward)
