"""A normalized multilayer perceptron: ``[Linear -> norm -> activation] x len(hidden) -> Linear``."""

from __future__ import annotations

import numpy as np

from ..nn import Linear, Sequential
from ..nn.factory import make_norm
from ._common import activation_after, is_normed, make_activation

SPATIAL_ONLY = ("instance", "evonorm_b0", "evonorm_s0")  # normalizers that need spatial axes: not for (N, F)


def build_mlp(in_features: int, num_classes: int, hidden=(64, 64), norm="batch", *, activation: str = "relu",
              seed: int = 0, dtype=np.float64) -> Sequential:
    """An MLP on ``(N, in_features)`` giving ``(N, num_classes)`` logits.

    Each hidden layer is ``Linear -> make_norm(norm, width) -> activation``. A Linear before a normalizer has no bias
    (BatchNorm's centering would cancel it and ``beta`` plays its part; for the per-sample normalizers the choice
    keeps the weight scale-invariant, see :func:`normref.train.scale_invariant_weights`); with ``norm=None`` or
    ``"none"`` it has one. After EvoNorm, which is normalizer and activation in one, no activation is added.

    Args:
        hidden: widths of the hidden layers.
        norm: any name of :data:`normref.nn.NORM_NAMES` except those in :data:`SPATIAL_ONLY`, or ``None``.
        activation: ``"relu"`` (default), ``"tanh"``, ``"gelu"``, ``"gelu_tanh"``, ``"silu"``. With a smooth one
            the whole network is analytic, so the complex step checks its gradient.
        seed: fixes the initialization (one generator, drawn layer by layer).

    Examples:
        >>> net = build_mlp(4, 3, hidden=(8,), norm="layer")
        >>> [type(m).__name__ for m in net], net(np.zeros((2, 4))).shape
        (['Linear', 'GroupNorm', 'ReLU', 'Linear'], (2, 3))
    """
    make_activation(activation)  # validate the name before building anything
    if isinstance(norm, str) and norm.lower() in SPATIAL_ONLY:
        raise ValueError(f"norm={norm!r} takes statistics over each sample's spatial positions (its op wants "
                         f"(N, C, *spatial)); an MLP's (N, features) input has none (use 'batch', 'layer', ...)")
    rng = np.random.default_rng(seed)
    normed = is_normed(norm)
    layers, width = [], in_features
    for h in hidden:
        layers.append(Linear(width, h, bias=not normed, rng=rng, dtype=dtype))
        if normed:
            layers.append(make_norm(norm, h, dtype=dtype))
            layers.extend(activation_after(layers[-1], activation))
        else:
            layers.append(make_activation(activation))
        width = h
    layers.append(Linear(width, num_classes, rng=rng, dtype=dtype))
    return Sequential(*layers)
