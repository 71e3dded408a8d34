"""Specs of the network building blocks: linear, convolution, pooling, activations, dropout, embedding, attention,
losses and containers. They join ``normref check`` and ``tests/test_gradcheck.py`` like the normalizers.

Inputs avoid the non-differentiable points: ReLU inputs are kept at least 0.2 away from 0, max-pool inputs are
distinct values at least 0.15 apart (no ties in a window). The central-difference step is about 1e-5, so a kink that
close cannot be crossed by a probe.

Two blocks are not maps ``x -> y`` of float arrays, so they are checked through small probe modules:

* :class:`EmbeddingProbe`: a fixed integer batch of tokens plus a float input, ``y = embedding(tokens) + x`` (a
  token embedding plus a given position embedding, as at a Transformer's input). ``x`` gets ``dx = dy``; the weight
  gets the scatter-add being checked.
* :class:`PaddedAttentionProbe`: self-attention with a fixed key-padding mask (:func:`padding_mask`), which covers
  trailing and leading padding, queries left with no key (causal + leading padding) and an all-padding sequence.
* :class:`LossProbe`: a loss with fixed targets, ``y = loss(x, targets)`` as a ``(1,)`` array, so the checker's random
  ``dy`` plays ``dloss``. The cross-entropy options (class weights, label smoothing, ignored items, spatial
  ``(N, C, d1, ...)`` logits, class-probability targets) each get their own spec.

``affine`` means ``bias`` for Linear, Conv2d and attention; blocks without the switch list ``(True,)``. Blocks whose
forward does not depend on the mode are checked in ``train`` only; Dropout and the BatchNorm model in both.
"""

from __future__ import annotations

import numpy as np

from ..._validate import cast_like

from ... import nn
from ...nn.module import Module
from . import LayerSpec


def normal_input(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape)


def away_from_zero(rng, shape) -> np.ndarray:
    """``±(0.2 + |N(0,1)|)``: no entry near ReLU's kink."""
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0) * (0.2 + np.abs(rng.standard_normal(shape)))


def distinct_input(rng, shape) -> np.ndarray:
    """A permutation of ``0.25·k`` plus noise in ``[0, 0.1)``: values at least 0.15 apart, so no max-pool ties."""
    size = int(np.prod(shape))
    return (0.25 * rng.permutation(size) + 0.1 * rng.random(size) - 0.125 * size).reshape(shape)


class EmbeddingProbe(Module):
    """``y = Embedding(tokens) + x`` with a fixed token batch of shape ``x.shape[:-1]``; ``dx = dy``."""

    def __init__(self, shape, num_embeddings=7, seed=0):
        super().__init__()
        # Fewer rows than tokens, so several tokens repeat and the scatter-add has collisions to sum.
        self.tokens = np.random.default_rng(seed).integers(0, num_embeddings, size=shape[:-1])
        self.children["embedding"] = nn.Embedding(num_embeddings, shape[-1], rng=seed)

    def forward(self, x):
        # the table's rows take x's dtype, so a float32 x gives a float32 y (the probe's contract, not Embedding's)
        return cast_like(x, self.children["embedding"].forward(self.tokens)) + x

    def backward(self, dy):
        self.children["embedding"].backward(dy)
        return dy


def padding_mask(shape) -> np.ndarray:
    """A boolean ``(N, T)`` key-padding mask for an ``(N, T, E)`` input: sequence 0 padded after its first half,
    sequence 1 padded at its first two positions (with a causal mask its first two queries have no key), sequence 2
    all padding, the rest none."""
    n, t = shape[:2]
    mask = np.zeros((n, t), dtype=bool)
    mask[0, t // 2 + 1:] = True
    if n > 1:
        mask[1, :2] = True
    if n > 2:
        mask[2] = True
    return mask


class PaddedAttentionProbe(Module):
    """``y = attention(x, key_padding_mask=padding_mask(x.shape))`` with a fixed mask; ``backend`` is the layer's."""

    def __init__(self, shape, affine, causal=False):
        super().__init__()
        self.key_padding_mask = padding_mask(shape)
        self.children["attn"] = nn.MultiheadSelfAttention(shape[-1], 2, bias=affine, causal=causal, rng=0)

    @property
    def backend(self):
        return self.children["attn"].backend

    @backend.setter
    def backend(self, value):
        self.children["attn"].backend = value

    def forward(self, x):
        return self.children["attn"].forward(x, self.key_padding_mask)

    def backward(self, dy):
        return self.children["attn"].backward(dy)


class LossProbe(Module):
    """``y = loss(x, targets)`` as a ``(1,)`` array (``"none"``: the per-item vector); backward passes ``dy`` as
    ``dloss``."""

    def __init__(self, loss, targets):
        super().__init__()
        self.loss, self.targets = loss, targets

    def forward(self, x):
        value = self.loss.forward(x, self.targets)
        return value.reshape(1) if self.loss.reduction != "none" else value

    def backward(self, dy):
        return self.loss.backward(dy.reshape(()) if self.loss.reduction != "none" else dy)


def _cross_entropy(shape, affine, reduction="mean"):
    targets = np.random.default_rng(5).integers(0, shape[1], size=shape[0])
    return LossProbe(nn.CrossEntropyLoss(reduction), targets)


def _cross_entropy_options(shape, affine, reduction="mean"):
    """Class weights, label smoothing 0.2 and ignored items (the first and every fifth): every term of the loss."""
    rng = np.random.default_rng(7)
    c = shape[1]
    targets = rng.integers(0, c, size=shape[:1] + shape[2:])
    targets.flat[::5] = -100
    loss = nn.CrossEntropyLoss(reduction, weight=rng.uniform(0.2, 2.0, c), ignore_index=-100, label_smoothing=0.2)
    return LossProbe(loss, targets)


def _cross_entropy_probs(shape, affine):
    """Class-probability targets (rows of a Dirichlet draw), with class weights and label smoothing 0.1."""
    rng = np.random.default_rng(8)
    c = shape[1]
    probs = np.moveaxis(rng.dirichlet(np.ones(c), size=shape[:1] + shape[2:]), -1, 1)
    return LossProbe(nn.CrossEntropyLoss(weight=rng.uniform(0.2, 2.0, c), label_smoothing=0.1), probs)


def _mse(shape, affine):
    return LossProbe(nn.MSELoss(), np.random.default_rng(6).standard_normal(shape))


def small_cnn(shape, affine=True, *, rng=0):
    """Conv2d -> BatchNorm -> ReLU -> MaxPool2d -> Flatten -> Linear for ``(N, C, H, W)`` input (H, W even).

    The convolution has no bias: a per-channel constant before a training-mode BatchNorm is removed by the centering,
    so its gradient is exactly zero (and a norm-relative error of a zero gradient is meaningless).
    """
    n, c, h, w = shape
    rng = np.random.default_rng(rng)
    return nn.Sequential(
        nn.Conv2d(c, 3, 3, padding=1, bias=False, rng=rng),
        nn.BatchNorm(3, affine=affine),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * (h // 2) * (w // 2), 4, bias=affine, rng=rng),
    )


def _warm(model, shape, steps=2, seed=1):
    """A few training forwards so that eval checks use non-initial running statistics."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model.forward(distinct_input(rng, shape))
    return model


def _residual_mlp(shape, affine):
    rng = np.random.default_rng(0)
    d = shape[-1]
    return nn.Residual(nn.Sequential(nn.Linear(d, 2 * d, bias=affine, rng=rng), nn.Tanh(),
                                     nn.Linear(2 * d, d, bias=affine, rng=rng)))


def _prenorm_attention(shape, affine):
    return nn.Residual(nn.Sequential(nn.LayerNorm(shape[-1], elementwise_affine=affine),
                                     nn.MultiheadSelfAttention(shape[-1], 2, bias=affine, causal=True, rng=0)))


def _projected_residual(shape, affine):
    c = shape[1]
    rng = np.random.default_rng(0)
    fn = nn.Sequential(nn.Conv2d(c, 4, 3, stride=2, padding=1, bias=False, rng=rng), nn.BatchNorm(4, affine=affine),
                       nn.SiLU())
    return _warm(nn.Residual(fn, shortcut=nn.Conv2d(c, 4, 1, stride=2, bias=affine, rng=rng)), shape)


TRAIN = ("train",)
NO_SWITCH = (True,)

SPECS = [
    LayerSpec(name="Linear", op="linear", make=lambda s, a: nn.Linear(s[-1], 3, bias=a, rng=0),
              shapes=((4, 5), (2, 3, 4), (6,)), modes=TRAIN, make_input=normal_input),
    LayerSpec(name="Conv2d", op="conv2d", make=lambda s, a: nn.Conv2d(s[1], 4, 3, padding=1, bias=a, rng=0),
              shapes=((2, 3, 5, 6), (1, 2, 3, 3)), modes=TRAIN, make_input=normal_input),
    LayerSpec(name="Conv2d-strided", op="conv2d",
              # overlapping windows (stride < kernel), a non-square kernel, asymmetric padding, odd sizes
              make=lambda s, a: nn.Conv2d(s[1], 2, (3, 2), stride=(2, 1), padding=(1, 0), bias=a, rng=0),
              shapes=((2, 2, 7, 5), (1, 3, 4, 4)), modes=TRAIN, make_input=normal_input),
    LayerSpec(name="MaxPool2d", op="max_pool2d", make=lambda s, a: nn.MaxPool2d(2),
              shapes=((2, 2, 4, 6), (1, 3, 5, 5)), modes=TRAIN, affine=NO_SWITCH, make_input=distinct_input),
    LayerSpec(name="MaxPool2d-overlap", op="max_pool2d", make=lambda s, a: nn.MaxPool2d(3, stride=2, padding=1),
              shapes=((2, 2, 5, 6),), modes=TRAIN, affine=NO_SWITCH, make_input=distinct_input),
    LayerSpec(name="AvgPool2d", op="avg_pool2d",
              make=lambda s, a: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
              shapes=((2, 2, 5, 6), (1, 1, 3, 3)), modes=TRAIN, affine=NO_SWITCH, make_input=normal_input),
    LayerSpec(name="GlobalAvgPool", op="global_avg_pool", make=lambda s, a: nn.GlobalAvgPool(),
              shapes=((2, 3, 4, 5), (3, 2, 5)), modes=TRAIN, affine=NO_SWITCH, make_input=normal_input),
    LayerSpec(name="Flatten", op="", make=lambda s, a: nn.Flatten(), shapes=((2, 3, 4),), modes=TRAIN,
              affine=NO_SWITCH, make_input=normal_input),
    LayerSpec(name="ReLU", op="relu", make=lambda s, a: nn.ReLU(), shapes=((3, 4, 5), (7,)), modes=TRAIN,
              affine=NO_SWITCH, make_input=away_from_zero),
    LayerSpec(name="GELU", op="gelu", make=lambda s, a: nn.GELU(), shapes=((3, 4, 5), (7,)), modes=TRAIN,
              affine=NO_SWITCH, make_input=lambda rng, s: 2.0 * rng.standard_normal(s)),
    LayerSpec(name="GELU-tanh", op="gelu", make=lambda s, a: nn.GELU("tanh"), shapes=((3, 4, 5), (7,)), modes=TRAIN,
              affine=NO_SWITCH, make_input=lambda rng, s: 2.0 * rng.standard_normal(s)),
    LayerSpec(name="SiLU", op="silu", make=lambda s, a: nn.SiLU(), shapes=((3, 4, 5), (7,)), modes=TRAIN,
              affine=NO_SWITCH, make_input=lambda rng, s: 3.0 * rng.standard_normal(s)),
    LayerSpec(name="Tanh", op="tanh", make=lambda s, a: nn.Tanh(), shapes=((3, 4, 5), (7,)), modes=TRAIN,
              affine=NO_SWITCH, make_input=lambda rng, s: 2.0 * rng.standard_normal(s)),
    LayerSpec(name="Sigmoid", op="sigmoid", make=lambda s, a: nn.Sigmoid(), shapes=((3, 4, 5), (7,)), modes=TRAIN,
              affine=NO_SWITCH, make_input=lambda rng, s: 3.0 * rng.standard_normal(s)),
    LayerSpec(name="Dropout", op="dropout", make=lambda s, a: nn.Dropout(0.3, seed=4), shapes=((4, 5), (2, 3, 3, 2)),
              affine=NO_SWITCH, make_input=normal_input),
    LayerSpec(name="Embedding", op="embedding", make=lambda s, a: EmbeddingProbe(s), shapes=((3, 4, 5), (6, 3)),
              modes=TRAIN, affine=NO_SWITCH, make_input=normal_input),
    LayerSpec(name="MultiheadSelfAttention", op="multihead_attention",
              make=lambda s, a: nn.MultiheadSelfAttention(s[-1], 2, bias=a, rng=0),
              shapes=((2, 4, 6), (1, 5, 4)), modes=TRAIN, make_input=normal_input, citation="Vaswani et al. 2017"),
    LayerSpec(name="MultiheadSelfAttention-causal", op="multihead_attention",
              make=lambda s, a: nn.MultiheadSelfAttention(s[-1], 3, bias=a, causal=True, rng=0),
              shapes=((2, 4, 6), (1, 3, 3)), modes=TRAIN, make_input=normal_input, citation="Vaswani et al. 2017"),
    LayerSpec(name="MultiheadSelfAttention-padded", op="multihead_attention",
              make=lambda s, a: PaddedAttentionProbe(s, a), shapes=((3, 5, 4), (2, 4, 6)), modes=TRAIN,
              make_input=normal_input, citation="Vaswani et al. 2017; key_padding_mask as in PyTorch"),
    LayerSpec(name="MultiheadSelfAttention-causal-padded", op="multihead_attention",
              make=lambda s, a: PaddedAttentionProbe(s, a, causal=True), shapes=((3, 5, 4), (2, 4, 6)),
              modes=TRAIN, make_input=normal_input, citation="Vaswani et al. 2017; key_padding_mask as in PyTorch"),
    LayerSpec(name="CrossEntropyLoss", op="cross_entropy", make=_cross_entropy, shapes=((4, 5), (1, 3), (6, 2)),
              modes=TRAIN, affine=NO_SWITCH, make_input=lambda rng, s: 3.0 * rng.standard_normal(s)),
    LayerSpec(name="CrossEntropyLoss-none", op="cross_entropy", make=lambda s, a: _cross_entropy(s, a, "none"),
              shapes=((4, 5),), modes=TRAIN, affine=NO_SWITCH, make_input=lambda rng, s: 3.0 * rng.standard_normal(s)),
    LayerSpec(name="CrossEntropyLoss-options", op="cross_entropy", make=_cross_entropy_options,
              shapes=((6, 4), (2, 3, 2, 3)), modes=TRAIN, affine=NO_SWITCH,
              make_input=lambda rng, s: 3.0 * rng.standard_normal(s), citation="PyTorch's F.cross_entropy"),
    LayerSpec(name="CrossEntropyLoss-options-none", op="cross_entropy",
              make=lambda s, a: _cross_entropy_options(s, a, "none"), shapes=((6, 4), (2, 3, 5)), modes=TRAIN,
              affine=NO_SWITCH, make_input=lambda rng, s: 3.0 * rng.standard_normal(s),
              citation="PyTorch's F.cross_entropy"),
    LayerSpec(name="CrossEntropyLoss-probs", op="cross_entropy", make=_cross_entropy_probs,
              shapes=((4, 5), (2, 3, 4)), modes=TRAIN, affine=NO_SWITCH,
              make_input=lambda rng, s: 3.0 * rng.standard_normal(s), citation="PyTorch's F.cross_entropy"),
    LayerSpec(name="MSELoss", op="mse_loss", make=_mse, shapes=((4, 5), (3,)), modes=TRAIN, affine=NO_SWITCH,
              make_input=normal_input),
    # Containers: op "" = a composite of numpy ops, checked on the numpy backend only.
    LayerSpec(name="Sequential-CNN", op="", make=lambda s, a: _warm(small_cnn(s, a), s), shapes=((2, 2, 4, 4),),
              make_input=distinct_input),
    LayerSpec(name="Residual-MLP", op="", make=_residual_mlp, shapes=((3, 5), (2, 2, 4)), modes=TRAIN,
              make_input=normal_input),
    LayerSpec(name="Residual-attention", op="", make=_prenorm_attention, shapes=((2, 4, 6),), modes=TRAIN,
              make_input=normal_input),
    LayerSpec(name="Residual-projection", op="", make=_projected_residual, shapes=((2, 2, 5, 5),),
              make_input=normal_input),
]
