"""A small VGG-style CNN: stages of ``[Conv2d 3x3 -> norm -> ReLU] x convs_per_stage -> MaxPool2d(2)``."""

from __future__ import annotations

import numpy as np

from ..nn import Conv2d, Flatten, Linear, MaxPool2d, Sequential
from ..nn.factory import make_norm
from ._common import activation_after, is_normed, make_activation


def build_vgg(in_channels: int, num_classes: int, image_size: int, widths=(16, 32), norm="batch", *,
              convs_per_stage: int = 2, seed: int = 0, dtype=np.float64) -> Sequential:
    """A small VGG-style CNN (Simonyan & Zisserman 2015, scaled down) on ``(N, in_channels, S, S)``.

    Per width ``w`` in ``widths``: ``convs_per_stage`` blocks ``Conv2d(3x3, padding 1) -> norm -> ReLU``, then
    ``MaxPool2d(2)`` while the map is at least 2 pixels wide; then ``Flatten -> Linear``. Convolutions before a
    normalizer have no bias. With ``widths=(16, 32)`` on 8x8 digits: 1→16→16, pool to 4x4, 16→32→32, pool to 2x2,
    128 features, 10 logits: 17,754 parameters, 192 of them BatchNorm affines. ``normref train --model cnn`` and
    ``build_model("cnn")`` build this network.

    Examples:
        >>> net = build_vgg(1, 10, 8, widths=(4, 8))
        >>> net(np.zeros((2, 1, 8, 8))).shape
        (2, 10)
    """
    rng = np.random.default_rng(seed)
    normed = is_normed(norm)
    layers, channels, size = [], in_channels, image_size
    for width in widths:
        for _ in range(convs_per_stage):
            layers.append(Conv2d(channels, width, 3, padding=1, bias=not normed, rng=rng, dtype=dtype))
            if normed:
                layers.append(make_norm(norm, width, dtype=dtype))
                layers.extend(activation_after(layers[-1]))
            else:
                layers.append(make_activation("relu"))
            channels = width
        if size >= 2:
            layers.append(MaxPool2d(2))
            size //= 2
    layers += [Flatten(), Linear(channels * size * size, num_classes, rng=rng, dtype=dtype)]
    return Sequential(*layers)
