"""The model zoo: small networks built from normref layers, each with a ``norm=`` switch.

=================  ===============================================================  ====================
name               builder                                                          input
=================  ===============================================================  ====================
``mlp``            :func:`build_mlp`: ``[Linear -> norm -> act] x k -> Linear``      ``(N, F)``
``vgg`` / ``cnn``  :func:`build_vgg`: stages of ``[Conv3x3 -> norm -> ReLU] x 2 ->    ``(N, C, S, S)``
                   MaxPool``, then ``Flatten -> Linear``
``resnet``         :func:`build_resnet`: basic blocks, parameter-free shortcuts,    ``(N, C, H, W)``
                   ``skip=True/False`` with identical parameters
``transformer``    :func:`build_transformer`: pre-norm encoder (LN, RMSNorm, BN,    ``(B, T)`` token ids
                   PowerNorm, Unified Norm, DyT, ...), mean pooling, linear head
=================  ===============================================================  ====================

``norm`` takes any name of :data:`normref.nn.NORM_NAMES` (built by :func:`normref.nn.make_norm`), or ``None``.
:func:`build_model` builds any of them by name. Every model is a :class:`normref.nn.Module` with a hand-derived
backward, so :mod:`normref.nn.flat` (the flat-parameter view), the optimizers and :func:`normref.train.train` apply;
``tests/test_models.py`` checks each model's whole gradient against finite differences and the complex step.
"""

from __future__ import annotations

import numpy as np

from .mlp import build_mlp
from .resnet import BasicBlock, ZeroPadShortcut, build_resnet
from .transformer import (PositionalEncoding, PreNormBlock, SequenceMeanPool, TransformerClassifier,
                          build_transformer, sinusoidal_table)
from .vgg import build_vgg

MODELS = {"mlp": build_mlp, "vgg": build_vgg, "cnn": build_vgg, "resnet": build_resnet,
          "transformer": build_transformer}
MODEL_NAMES = tuple(MODELS)

_DEFAULT = object()


def build_model(name: str, norm=_DEFAULT, **kwargs):
    """Build the model ``name`` (one of :data:`MODEL_NAMES`) with normalizer ``norm`` (the builder's default when
    omitted: ``"batch"``, or ``"layer"`` for the transformer); ``kwargs`` go to the builder.

    Examples:
        >>> build_model("mlp", norm="layer", in_features=4, num_classes=3, hidden=(8,))(np.zeros((2, 4))).shape
        (2, 3)
        >>> build_model("cnn", norm=None, in_channels=1, num_classes=2, image_size=4, widths=(2,))[1]
        ReLU()
    """
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    if norm is not _DEFAULT:
        kwargs["norm"] = norm
    return MODELS[name.lower()](**kwargs)


__all__ = ["BasicBlock", "MODELS", "MODEL_NAMES", "PositionalEncoding", "PreNormBlock", "SequenceMeanPool",
           "TransformerClassifier", "ZeroPadShortcut", "build_mlp", "build_model", "build_resnet",
           "build_transformer", "build_vgg", "sinusoidal_table"]
