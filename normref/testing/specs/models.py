"""Specs of the model zoo (:mod:`normref.models`): whole networks × normalizers at tiny sizes.

Each model joins ``normref check`` and ``tests/test_gradcheck.py`` with a representative subset of normalizers:
a batch-statistics one (``batch``), a per-sample one (``group`` or ``layer``) and ``none`` for the MLP, the VGG-style
CNN and the ResNet (plus the ResNet without skips); the Transformer with ``layer``, ``rms``, ``batch``, ``power``,
``unified`` and ``dyt``. The checker gradient-checks the input and every parameter tensor: elementwise up to 256
entries, along 4 random directions above. BatchNorm models are checked in train and eval (after warm-up forwards,
so that the running statistics are not their initial values); for the others the two modes compute the same function.

Complex step. The MLP here uses tanh and the Transformer GELU, so both are analytic and the complex step applies
exactly; their rows check it. The CNN and the ResNet use ReLU and max-pool, which are only *piecewise* analytic
(normref's versions branch on the real part, so the complex step differentiates the active piece): their rows use
central differences only, which also keeps ``normref check`` short. ``tests/test_models.py`` adds the complex step
for them too, along random directions of the flat parameter vector.

The Transformer's input is token ids, which have no gradient; :class:`TokenProbe` fixes a token batch (with pad
positions, so the masked pooling is exercised) and adds the float input ``x`` to the token embeddings, so ``x``'s
gradient is the gradient of the embedded sequence and the token table's scatter-add is checked as a parameter.
Sizes are tiny on purpose: ``normref check`` runs every row; the 20 rows of this file take about 12 s of CPU.
"""

from __future__ import annotations

import numpy as np

from ..._validate import cast_like
from ...models import build_mlp, build_resnet, build_transformer, build_vgg
from ...nn.module import Module
from . import LayerSpec
from .blocks import distinct_input, normal_input

NO_SWITCH = (True,)
TRAIN = ("train",)
BOTH = ("train", "eval")


def _warm(model, shape, make_input=normal_input, steps=2, seed=1):
    """A few training forwards, so that eval checks use non-initial running statistics."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model.forward(make_input(rng, shape))
    return model


class TokenProbe(Module):
    """``y = model(token_embedding(tokens) + x)`` for a fixed token batch of shape ``x.shape[:2]``, pooling over
    the non-pad positions; ``backward`` returns ``dx`` and accumulates every parameter gradient."""

    def __init__(self, model, shape, seed=0):
        super().__init__()
        b, t = shape[:2]
        vocab = model.vocab_size
        tokens = np.random.default_rng(seed).integers(1, vocab, size=(b, t))
        tokens[0, t // 2 + 1:] = model.pad_id  # the first sequence is padded after its first half
        self.tokens = tokens
        self.children["model"] = model

    def forward(self, x):
        model = self.children["model"]
        h = model.children["token_embedding"].forward(self.tokens)
        valid = self.tokens != model.pad_id
        # the table's rows take x's dtype (float32 x: float32 model), unless they are complex (a complex step)
        return model.forward(cast_like(x, h) + x, valid)

    def backward(self, dy):
        model = self.children["model"]
        dh = model.backward(dy)
        model.children["token_embedding"].backward(dh)
        return dh


def _mlp(norm):
    return lambda s, a: _warm(build_mlp(s[1], 3, hidden=(6, 5), norm=norm, activation="tanh", seed=0), s)


def _vgg(norm):
    return lambda s, a: _warm(build_vgg(s[1], 3, s[2], widths=(8,), norm=norm, seed=0), s, distinct_input)


def _resnet(norm, skip=True):
    return lambda s, a: _warm(build_resnet(s[1], 3, widths=(2, 4), norm=norm, skip=skip, seed=0), s)


def _transformer(norm, **options):
    def make(shape, affine):
        model = build_transformer(7, 3, max_len=shape[1], norm=norm, d_model=shape[2], num_heads=2, num_layers=1,
                                  pad_id=0, seed=0, **options)
        return _warm(TokenProbe(model, shape), shape)
    return make


MLP_SHAPE, IMAGE_SHAPE, TOKEN_SHAPE = (6, 4), (2, 1, 4, 4), (2, 4, 4)

SPECS = [
    LayerSpec(name=f"MLP-{norm}", make=_mlp(norm), shapes=(MLP_SHAPE,), modes=BOTH if norm == "batch" else TRAIN,
              affine=NO_SWITCH, make_input=normal_input)
    for norm in ("batch", "layer", "none")
] + [
    LayerSpec(name=f"VGG-{norm}", make=_vgg(norm), shapes=(IMAGE_SHAPE,), modes=BOTH if norm == "batch" else TRAIN,
              affine=NO_SWITCH, make_input=distinct_input, complex_safe=False, citation="Simonyan & Zisserman 2015")
    for norm in ("batch", "group", "none")
] + [
    LayerSpec(name=f"ResNet-{norm}", make=_resnet(norm), shapes=(IMAGE_SHAPE,),
              modes=BOTH if norm == "batch" else TRAIN, affine=NO_SWITCH, make_input=normal_input,
              complex_safe=False, citation="He et al. 2016")
    for norm in ("batch", "layer", "none")
] + [
    LayerSpec(name="ResNet-batch-noskip", make=_resnet("batch", skip=False), shapes=(IMAGE_SHAPE,), modes=TRAIN,
              affine=NO_SWITCH, make_input=normal_input, complex_safe=False,
              citation="He et al. 2016 (plain network)"),
] + [
    LayerSpec(name=f"Transformer-{norm}", make=_transformer(norm, **options), shapes=(TOKEN_SHAPE,),
              modes=BOTH if norm == "batch" else TRAIN, affine=NO_SWITCH, make_input=normal_input,
              citation="Vaswani et al. 2017; pre-norm: Xiong et al. 2020")
    # BatchNorm without biases: with BN at every reader of the residual stream, the biases that add to the stream
    # have an exactly zero training-mode gradient, and a norm-relative error of a zero gradient is meaningless (see
    # build_transformer's `bias`; tests/test_models.py checks that invariance).
    for norm, options in (("layer", {}), ("rms", {"positions": "sinusoidal"}), ("batch", {"bias": False}),
                          ("power", {}), ("unified", {"causal": True}), ("dyt", {}))
]
