"""Multi-head self-attention (PyTorch's ``nn.MultiheadAttention`` with q = k = v = x, batch first).

Math, the staged graph, the masks and the fused backward: :mod:`normref.ops.attention`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .._validate import check_positive_int
from ._op_layer import OpLayer, make_rng, uniform_init


class MultiheadSelfAttention(OpLayer):
    """Self-attention over ``(N, T, embed_dim)`` with ``num_heads`` heads, an optional causal mask and an optional
    per-call key-padding mask: ``forward(x, key_padding_mask=None)``, boolean ``(N, T)``, ``True`` = that key is
    padding and is ignored (PyTorch's convention). A query left with no key (all padding) outputs ``out_proj_bias``.

    Parameters in PyTorch's layout and initialization: ``in_proj_weight`` ``(3E, E)`` Xavier-uniform,
    ``in_proj_bias`` ``(3E,)`` zeros, ``out_proj_weight`` ``(E, E)`` ``U(±1/√E)``, ``out_proj_bias`` ``(E,)`` zeros.

    Args:
        embed_dim: ``E``.
        num_heads: ``H``, must divide ``E``.
        bias: learn the two biases.
        causal: position ``i`` attends only to positions ``j <= i``.
        rng: a ``numpy.random.Generator`` or int seed for the initialization (``None``: unseeded).
        dtype: dtype of the parameters.

    Examples:
        >>> attn = MultiheadSelfAttention(8, 2, causal=True, rng=0)
        >>> attn(np.zeros((2, 5, 8))).shape
        (2, 5, 8)
        >>> pad = np.array([[False, False, False, True, True], [False] * 5])
        >>> attn(np.zeros((2, 5, 8)), key_padding_mask=pad).shape
        (2, 5, 8)
    """

    op = "multihead_attention"
    param_names = ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias")

    def __init__(self, embed_dim, num_heads, bias=True, causal=False, *, rng=None, dtype=np.float64, backend=None):
        super().__init__(backend=backend)
        self.embed_dim = check_positive_int(embed_dim, "embed_dim")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide embed_dim={self.embed_dim}")
        self.causal = bool(causal)
        rng = make_rng(rng)
        e = self.embed_dim
        self.add_param("in_proj_weight", uniform_init(rng, (3 * e, e), math.sqrt(6.0 / (4 * e)), dtype))
        if bias:
            self.add_param("in_proj_bias", np.zeros(3 * e, dtype))
        self.add_param("out_proj_weight", uniform_init(rng, (e, e), 1.0 / math.sqrt(e), dtype))
        if bias:
            self.add_param("out_proj_bias", np.zeros(e, dtype))

    def __call__(self, x, key_padding_mask=None):
        return self.forward(x, key_padding_mask)

    def forward(self, x, key_padding_mask=None):
        hyper = self.op_hyper()
        if key_padding_mask is not None:  # passed only when given, so a backend without masks still runs the rest
            hyper["key_padding_mask"] = key_padding_mask
        y, self.cache = F.forward(self.op, x, *self.op_params(), backend=self.backend, **hyper)
        return y

    def op_hyper(self) -> dict:
        return {"num_heads": self.num_heads, "causal": self.causal}

    def extra_repr(self) -> str:
        return f"{self.embed_dim}, num_heads={self.num_heads}, causal={self.causal}"
