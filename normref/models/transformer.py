r"""A tiny pre-norm Transformer encoder for sequence classification, with any normref normalizer.

On token ids ``(B, T)`` (or token embeddings ``(B, T, C)``, see :meth:`TransformerClassifier.forward`):

.. math::

    h_0 &= E[\mathrm{tokens}] + P_{:T}                                    &&\text{(B, T, C)}\\
    a_l &= h_{l-1} + \mathrm{MHSA}_l(\mathrm{norm}_{l,1}(h_{l-1}))       &&\text{attention sub-block}\\
    h_l &= a_l + W_{l,2}\,\phi(W_{l,1}\,\mathrm{norm}_{l,2}(a_l) + b_{l,1}) + b_{l,2} &&\text{MLP sub-block}\\
    z &= \mathrm{pool}(\mathrm{norm}_f(h_L)),\qquad \mathrm{logits} = W_o z + b_o

``pool`` is the mean over the sequence positions (only the non-pad ones when ``pad_id`` is given); ``P`` is a learned
table or the fixed sinusoids of Vaswani et al. (2017); ``phi`` is GELU by default. This is the **pre-norm** layout
(Xiong et al. 2020; GPT-2, ViT): each sub-block normalizes its input and adds its output to the unnormalized
residual stream, and a final normalizer precedes the head. Layout is channels last, ``(B, T, C)``.

**Normalizers.** ``norm`` is any name of :data:`normref.nn.NORM_NAMES`, built by
``make_norm(norm, C, channels_last=True)``:

* ``"layer"`` (LayerNorm over ``C`` at each position, the standard choice), ``"rms"`` (RMSNorm), ``"dyt"`` (DyT,
  per-channel ``gamma·tanh(alpha·x) + beta``) act on each position alone;
* ``"batch"``, ``"power"`` (PowerNorm), ``"unified"`` (Unified Norm), ``"instance"``, ``"group"``... want the channel
  on axis 1: the factory wraps them in :class:`~normref.nn.MoveChannelAxis`, which runs them on
  ``(B, C, T)``. BatchNorm then takes its statistics per channel over all ``B·T`` positions of the batch, which is
  how PowerNorm's and Unified Norm's papers apply BN in a Transformer (the official code flattens ``(T, B, C)`` to
  ``(T·B, C)``); PowerNorm's quadratic mean and Unified Norm's statistics are likewise per channel over ``B·T``.
  PowerNorm and Unified Norm use their **exact** gradients here (the factory's default), so whole-model gradient
  checks apply; pass ``norm_options={"backward": "approx"}`` for the papers' surrogates.

**Decisions.** Padding: the pooling always skips the pad positions (``valid``, from ``pad_id`` or given). With
``mask_padding=True`` the attention of every block ignores them as keys too (the attention op's
``key_padding_mask = ~valid``, PyTorch's ``src_key_padding_mask``): a real position then never reads a pad position,
so with a per-position normalizer (LayerNorm, RMSNorm, DyT) the logits of a sequence do not depend on how many pads
follow it or on what the pad positions hold. Pad positions still compute their own outputs (attending to the real
keys), which nothing reads. The default, ``mask_padding=False``, keeps the earlier behaviour (pads are attended to
like ordinary tokens), so results computed before the option existed are unchanged. Either way pad positions enter
the batch statistics of BatchNorm-type normalizers (``MoveChannelAxis`` passes no mask; the official PowerNorm code
excludes them from its statistic), so with those normalizers padding still reaches the real positions.
Initialization: token and learned position tables ``N(0, 1)`` (PyTorch's ``nn.Embedding``), attention and
linear layers as their normref/PyTorch defaults. No dropout: the model is for gradient checks, landscapes and small
runs.

Backward: the chain rule through the stages in reverse, with the residual sum rule ``da = dh + J^T dh`` at each
sub-block (:class:`PreNormBlock`); the pooling's adjoint spreads ``dz`` over the positions with the pooling weights;
the learned position table receives ``sum_b dh_0[b, :T]`` and the token table the scatter-add of ``dh_0``.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._validate import cast_like, check_positive_int
from ..nn import Embedding, Linear, MultiheadSelfAttention, Sequential
from ..nn.factory import make_norm
from ..nn.module import Module
from ._common import make_activation

POSITIONS = ("learned", "sinusoidal")


def sinusoidal_table(max_len: int, dim: int) -> np.ndarray:
    r"""Vaswani et al.'s positions: :math:`P_{t,2i} = \sin(t/10000^{2i/C})`, :math:`P_{t,2i+1} = \cos(\cdot)`.

    Examples:
        >>> p = sinusoidal_table(4, 6)
        >>> p.shape, p[0].tolist()
        ((4, 6), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    """
    t = np.arange(max_len, dtype=np.float64)[:, None]
    freq = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((max_len, dim))
    table[:, 0::2] = np.sin(t * freq)
    table[:, 1::2] = np.cos(t * freq[: dim // 2])
    return table


class PositionalEncoding(Module):
    """``h + P[:T]`` on ``(B, T, C)``: a learned table ``weight`` ``(max_len, C)`` or fixed sinusoids.

    Backward: ``dh = dy``; a learned table also accumulates ``dweight[:T] += sum_b dy[b]`` (rows beyond ``T`` get 0).
    """

    def __init__(self, max_len: int, dim: int, kind: str = "learned", *, rng=None, dtype=np.float64):
        super().__init__()
        self.max_len, self.dim = check_positive_int(max_len, "max_len"), check_positive_int(dim, "dim")
        if kind not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {kind!r}")
        self.kind = kind
        if kind == "learned":
            self.add_param("weight", np.random.default_rng(rng).standard_normal((max_len, dim)).astype(dtype))
        else:
            self.table = sinusoidal_table(max_len, dim)
        self.seq_len = None

    def _table(self):
        return self.params["weight"] if self.kind == "learned" else self.table

    def forward(self, h):
        h = np.asarray(h)
        if h.ndim != 3 or h.shape[-1] != self.dim or h.shape[1] > self.max_len:
            raise ValueError(f"h must have shape (B, T <= {self.max_len}, {self.dim}), got {h.shape}")
        self.seq_len = h.shape[1]
        return h + cast_like(h, self._table()[:self.seq_len])

    def backward(self, dy):
        if self.seq_len is None:
            raise RuntimeError("PositionalEncoding.backward called before forward")
        if self.kind == "learned":
            grad = np.zeros(self.params["weight"].shape, dtype=np.result_type(dy.dtype, self.params["weight"]))
            grad[:self.seq_len] = np.sum(dy, axis=0)
            self.accumulate_grad("weight", grad)
        return dy

    def extra_repr(self) -> str:
        return f"{self.max_len}, {self.dim}, kind={self.kind!r}"


class SequenceMeanPool(Module):
    """Mean over the positions of ``(B, T, C)``, or over the valid ones: ``z_b = sum_t w_bt h_bt`` with
    ``w_bt = valid_bt / sum_t valid_bt``; backward ``dh_bt = w_bt dz_b``."""

    def __init__(self):
        super().__init__()
        self.weights = None

    def forward(self, h, valid=None):
        h = np.asarray(h)
        if h.ndim != 3:
            raise ValueError(f"h must have shape (B, T, C), got {h.shape}")
        if valid is None:
            w = np.full(h.shape[:2], 1.0 / h.shape[1])
        else:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != h.shape[:2]:
                raise ValueError(f"valid must have shape {h.shape[:2]} (B, T), got {valid.shape}")
            count = valid.sum(axis=1, keepdims=True)
            if np.any(count == 0):
                raise ValueError("a sequence has no valid (non-pad) position to pool over")
            w = valid / count
        self.weights = cast_like(h, w)
        return np.einsum("bt,btc->bc", self.weights, h)

    def backward(self, dy):
        if self.weights is None:
            raise RuntimeError("SequenceMeanPool.backward called before forward")
        return self.weights[:, :, None] * np.asarray(dy)[:, None, :]


class PreNormBlock(Module):
    """``a = x + attn(norm1(x))``, ``y = a + mlp(norm2(a))``; backward ``da = dy + J_{mlp∘norm2}^T dy``,
    ``dx = da + J_{attn∘norm1}^T da``."""

    def __init__(self, dim: int, num_heads: int, hidden: int, norm="layer", *, activation="gelu", causal=False,
                 bias=True, norm_options=None, rng=None, dtype=np.float64):
        super().__init__()
        opts = dict(norm_options or {})
        self.children["norm1"] = make_norm(norm, dim, channels_last=True, dtype=dtype, **opts)
        self.children["attn"] = MultiheadSelfAttention(dim, num_heads, bias=bias, causal=causal, rng=rng,
                                                       dtype=dtype)
        self.children["norm2"] = make_norm(norm, dim, channels_last=True, dtype=dtype, **opts)
        self.children["mlp"] = Sequential(Linear(dim, hidden, bias=bias, rng=rng, dtype=dtype),
                                          make_activation(activation), Linear(hidden, dim, bias=bias, rng=rng,
                                                                              dtype=dtype))

    def __call__(self, x, key_padding_mask=None):
        return self.forward(x, key_padding_mask)

    def forward(self, x, key_padding_mask=None):
        """``key_padding_mask``: boolean ``(B, T)``, ``True`` = a pad key the attention ignores (None: none)."""
        c = self.children
        a = x + c["attn"].forward(c["norm1"].forward(x), key_padding_mask)
        return a + c["mlp"].forward(c["norm2"].forward(a))

    def backward(self, dy):
        c = self.children
        da = dy + c["norm2"].backward(c["mlp"].backward(dy))
        return da + c["norm1"].backward(c["attn"].backward(da))

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({name}): {module!r}".replace("\n", "\n  ") for name, module in self.children.items())
        return f"PreNormBlock(\n{inner}\n)"


class TransformerClassifier(Module):
    """The tiny pre-norm Transformer encoder with a classification head (see the module docstring).

    Children, in flat-parameter order: ``token_embedding``, ``position``, ``blocks`` (a Sequential of
    :class:`PreNormBlock`), ``norm``, ``pool``, ``head``.

    ``forward(x, valid=None)`` (``valid``: boolean ``(B, T)``, ``True`` at the real, non-pad positions; the pooling
    averages over them and, with ``mask_padding``, the attention ignores the others as keys):

    * ``x`` integer token ids ``(B, T)``: embedded by ``token_embedding``; ``valid`` defaults to ``x != pad_id``
      (all positions when ``pad_id`` is None). ``backward`` then returns ``None`` (ids have no gradient) after
      accumulating every gradient, the token table's included.
    * ``x`` float token embeddings ``(B, T, d_model)`` (e.g. ``make_token_task(features=True)``): used in place of
      the table lookup (positions are still added); ``valid`` defaults to all positions. ``backward`` returns
      ``dx``, and the token table gets no gradient.
    """

    def __init__(self, vocab_size: int, num_classes: int, max_len: int, *, d_model: int = 16, num_heads: int = 2,
                 num_layers: int = 2, mlp_ratio: int = 2, norm="layer", positions: str = "learned",
                 activation: str = "gelu", pad_id=None, causal: bool = False, bias: bool = True, norm_options=None,
                 mask_padding: bool = False, seed: int = 0, dtype=np.float64):
        super().__init__()
        self.mask_padding = bool(mask_padding)
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        self.d_model = check_positive_int(d_model, "d_model")
        num_layers = check_positive_int(num_layers, "num_layers")
        hidden = check_positive_int(mlp_ratio, "mlp_ratio") * self.d_model
        if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, numbers.Integral)
                                   or not 0 <= pad_id < vocab_size):
            raise ValueError(f"pad_id must be None or a token id in [0, {vocab_size}), got {pad_id!r}")
        self.pad_id = None if pad_id is None else int(pad_id)
        make_activation(activation)
        rng = np.random.default_rng(seed)
        self.children["token_embedding"] = Embedding(vocab_size, d_model, rng=rng, dtype=dtype)
        self.children["position"] = PositionalEncoding(max_len, d_model, positions, rng=rng, dtype=dtype)
        self.children["blocks"] = Sequential(*[
            PreNormBlock(d_model, num_heads, hidden, norm, activation=activation, causal=causal, bias=bias,
                         norm_options=norm_options, rng=rng, dtype=dtype) for _ in range(num_layers)])
        self.children["norm"] = make_norm(norm, d_model, channels_last=True, dtype=dtype, **dict(norm_options or {}))
        self.children["pool"] = SequenceMeanPool()
        self.children["head"] = Linear(d_model, num_classes, rng=rng, dtype=dtype)
        self._input_was_tokens = None

    def __call__(self, x, valid=None):
        return self.forward(x, valid)

    def forward(self, x, valid=None):
        x = np.asarray(x)
        c = self.children
        if x.dtype.kind in "iu":
            if x.ndim != 2:
                raise ValueError(f"token ids must have shape (B, T), got {x.shape}")
            if valid is None and self.pad_id is not None:
                valid = x != self.pad_id
            h = c["token_embedding"].forward(x)
            self._input_was_tokens = True
        elif x.dtype.kind in "fc":
            if x.ndim != 3 or x.shape[-1] != self.d_model:
                raise ValueError(f"token embeddings must have shape (B, T, {self.d_model}), got {x.shape}")
            h = x
            self._input_was_tokens = False
        else:
            raise TypeError(f"x must be integer token ids or float embeddings, got dtype {x.dtype}")
        key_padding_mask = None
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != h.shape[:2]:
                raise ValueError(f"valid must have shape {h.shape[:2]} (B, T), got {valid.shape}")
            if self.mask_padding:
                key_padding_mask = ~valid
        h = c["position"].forward(h)
        for block in c["blocks"]:  # the blocks' Sequential runs the backward
            h = block.forward(h, key_padding_mask)
        return c["head"].forward(c["pool"].forward(c["norm"].forward(h), valid))

    def backward(self, dy):
        if self._input_was_tokens is None:
            raise RuntimeError("TransformerClassifier.backward called before forward")
        c = self.children
        dh = c["norm"].backward(c["pool"].backward(c["head"].backward(dy)))
        dh = c["position"].backward(c["blocks"].backward(dh))
        if self._input_was_tokens:
            c["token_embedding"].backward(dh)
            return None
        return dh

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({name}): {module!r}".replace("\n", "\n  ") for name, module in self.children.items())
        return f"TransformerClassifier(\n{inner}\n)"


def build_transformer(vocab_size: int, num_classes: int, max_len: int, norm="layer", *, d_model: int = 16,
                      num_heads: int = 2, num_layers: int = 2, mlp_ratio: int = 2, positions: str = "learned",
                      activation: str = "gelu", pad_id=None, causal: bool = False, bias: bool = True,
                      norm_options=None, mask_padding: bool = False, seed: int = 0,
                      dtype=np.float64) -> TransformerClassifier:
    """A :class:`TransformerClassifier`; ``norm`` is any normref normalizer name (``"layer"``, ``"rms"``,
    ``"batch"``, ``"power"``, ``"unified"``, ``"dyt"``, ...) or None.

    Args:
        vocab_size, num_classes, max_len: token ids lie in ``[0, vocab_size)``; sequences have ``T <= max_len``.
        d_model, num_heads, num_layers, mlp_ratio: width ``C``, attention heads, blocks, MLP width ``mlp_ratio·C``.
        positions: ``"learned"`` or ``"sinusoidal"``.
        activation: the MLP's nonlinearity (``"gelu"``, exact; ``"gelu_tanh"``, ``"relu"``, ...).
        pad_id: this token is skipped by the pooling (see the module docstring for what else sees it).
        mask_padding: the attention ignores pad positions as keys (``key_padding_mask = ~valid``; default False,
            the earlier behaviour: pads are attended to).
        causal: position ``i`` attends to ``j <= i`` only.
        bias: biases in the attention and MLP projections. With ``norm="batch"`` (or any normalizer that centers
            each channel over the batch) in every position of the network, the biases that add to the residual
            stream (``attn.out_proj_bias``, ``mlp.2.bias``) shift every reader's input by a per-channel constant that
            the reader's centering removes: their training-mode gradient is exactly zero (a true invariance, tested
            in ``tests/test_models.py``). ``bias=False`` removes them.
        norm_options: extra ``make_norm`` options for every normalizer (``{"backward": "approx"}``).
        seed: the initialization.

    Examples:
        >>> net = build_transformer(20, 3, 6, norm="rms", d_model=8, num_layers=1, pad_id=0)
        >>> tokens = np.array([[3, 4, 5, 0, 0, 0], [7, 8, 9, 10, 11, 12]])
        >>> logits = net(tokens)
        >>> logits.shape, net.backward(np.ones_like(logits)) is None
        ((2, 3), True)
    """
    return TransformerClassifier(vocab_size, num_classes, max_len, d_model=d_model, num_heads=num_heads,
                                 num_layers=num_layers, mlp_ratio=mlp_ratio, norm=norm, positions=positions,
                                 activation=activation, pad_id=pad_id, causal=causal, bias=bias,
                                 norm_options=norm_options, mask_padding=mask_padding, seed=seed, dtype=dtype)
