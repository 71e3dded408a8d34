"""The Embedding layer (PyTorch's ``nn.Embedding``). Math: :mod:`normref.ops.embedding`."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._validate import check_positive_int
from ._op_layer import OpLayer, make_rng


class Embedding(OpLayer):
    """A table ``weight`` of shape ``(num_embeddings, embedding_dim)``, initialized ``N(0, 1)`` as PyTorch.

    ``forward(indices)`` takes an integer array of any shape ``S`` and returns ``(*S, embedding_dim)``.
    ``backward(dy)`` accumulates the scatter-added ``dweight`` and returns ``None``: integer indices have no gradient.
    With ``padding_idx`` that row starts at zero and never receives a gradient.

    Examples:
        >>> emb = Embedding(10, 4, rng=0)
        >>> emb(np.array([[1, 2, 1]])).shape
        (1, 3, 4)
    """

    op = "embedding"
    param_names = ("weight",)

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, *, rng=None, dtype=np.float64,
                 backend=None):
        super().__init__(backend=backend)
        self.num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        weight = make_rng(rng).standard_normal((self.num_embeddings, self.embedding_dim)).astype(dtype)
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must lie in [-{self.num_embeddings}, {self.num_embeddings}), "
                                 f"got {padding_idx}")
            padding_idx = int(padding_idx) % self.num_embeddings
            weight[padding_idx] = 0
        self.padding_idx = padding_idx
        self.add_param("weight", weight)

    def forward(self, indices):
        y, self.cache = F.forward(self.op, indices, self.params["weight"], backend=self.backend,
                                  padding_idx=self.padding_idx)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"
