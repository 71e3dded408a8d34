"""Build any normref normalizer by name: ``make_norm("batch", 16)``. Models take ``norm=<name>`` and call this.

Names (:data:`NORM_NAMES`) and what they build for ``C = num_channels``:

================  ========================================================================================
``batch``         ``BatchNorm(C)``
``group``         ``GroupNorm(G, C)``, ``G`` from :func:`default_num_groups` (32 as in Wu & He 2018, but at least
                  4 channels per group so that small widths do not degenerate into InstanceNorm)
``layer``         channels first: ``GroupNorm(1, C)``: statistics over every non-batch axis ``(C, H, W)``, affine per
                  channel (Wu & He's "LN" for CNNs; on ``(N, C)`` it equals ``LayerNorm(C)`` exactly).
                  channels last: ``LayerNorm(C)``
``instance``      ``InstanceNorm(C, affine=True)`` (PyTorch's default is ``affine=False``; inside a network the
                  affine is wanted)
``rms``           ``RMSNorm(C)`` over the channel vector at each position (channels first: the channel axis is
                  moved last and back)
``power``         ``PowerNorm(C, backward="exact")``
``unified``       ``UnifiedNorm(C, backward="exact")``
``evonorm_b0``    ``EvoNormB0(C)``, normalizer and activation in one (models skip their own activation after it)
``evonorm_s0``    ``EvoNormS0(C)``, likewise
``bcn``           ``BatchChannelNorm(C, num_groups=G)``
``dyt``           ``DyT(C)``
``none``          ``Identity()`` (``None`` too)
================  ========================================================================================

Layout. ``channels_last=False`` (default) builds a layer for ``(N, C, *spatial)`` input, channel on axis 1 (CNNs,
MLPs). ``channels_last=True`` builds one for ``(..., C)`` (a Transformer's ``(B, T, C)``). Layers whose op wants the
other layout are wrapped in :class:`MoveChannelAxis`, a transpose in and out whose backward is the inverse transpose.

Defaults, stated because they are choices: PowerNorm and Unified Norm use their **exact** gradient (checked by finite
differences, so whole-model gradient checks pass); pass ``backward="approx"`` for the papers' surrogate. Any keyword
in ``**overrides`` goes to the layer's constructor and replaces the default (``make_norm("group", 64,
num_groups=8)``).
"""

from __future__ import annotations

import numpy as np

from .._validate import check_positive_int
from ..ops.evonorm import default_groups
from .batch_channel_norm import BatchChannelNorm
from .batch_norm import BatchNorm, InstanceNorm
from .containers import Identity
from .dyt import DyT
from .evonorm import EvoNormB0, EvoNormS0
from .layer_norm import GroupNorm, LayerNorm, RMSNorm
from .module import Module
from .power_norm import PowerNorm
from .unified_norm import UnifiedNorm

NORM_NAMES = ("batch", "group", "layer", "instance", "rms", "power", "unified", "evonorm_b0", "evonorm_s0", "bcn",
              "dyt", "none")


class MoveChannelAxis(Module):
    """Run ``inner`` on ``x`` with axis ``source`` moved to ``destination``, then move it back.

    ``y = moveaxis(inner(moveaxis(x, source, destination)), destination, source)``. A transpose is linear and
    orthogonal, so the backward is the same pair of moves around ``inner.backward``:
    ``dx = moveaxis(inner.backward(moveaxis(dy, source, destination)), destination, source)``.

    Examples:
        >>> layer = MoveChannelAxis(RMSNorm(3), source=1, destination=-1)
        >>> x = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
        >>> y = layer(x)
        >>> bool(np.allclose((y ** 2).mean(axis=1), 1.0, atol=1e-4)), layer.backward(np.ones_like(y)).shape
        (True, (2, 3, 4, 4))
    """

    def __init__(self, inner: Module, source: int, destination: int):
        super().__init__()
        if not isinstance(inner, Module):
            raise TypeError(f"inner must be a normref Module, got {type(inner).__name__}")
        self.children["inner"] = inner
        self.source, self.destination = int(source), int(destination)

    @property
    def inner(self) -> Module:
        return self.children["inner"]

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"x must have a batch and a channel axis, got shape {x.shape}")
        y = self.inner.forward(np.ascontiguousarray(np.moveaxis(x, self.source, self.destination)))
        return np.moveaxis(y, self.destination, self.source)

    def backward(self, dy):
        dx = self.inner.backward(np.ascontiguousarray(np.moveaxis(np.asarray(dy), self.source, self.destination)))
        return np.moveaxis(dx, self.destination, self.source)

    def __repr__(self) -> str:
        return f"MoveChannelAxis({self.inner!r}, source={self.source}, destination={self.destination})"


def default_num_groups(num_channels: int) -> int:
    """``G`` for GroupNorm/BCN: the largest divisor of ``C`` that is at most ``min(32, C // 4)`` (at least 1).

    Examples:
        >>> [default_num_groups(c) for c in (3, 8, 16, 64, 128, 256)]
        [1, 2, 4, 16, 32, 32]
    """
    num_channels = check_positive_int(num_channels, "num_channels")
    return default_groups(num_channels, max(1, min(32, num_channels // 4)))


def _channels_first_only(layer: Module, channels_last: bool) -> Module:
    return MoveChannelAxis(layer, source=-1, destination=1) if channels_last else layer


def make_norm(name, num_channels: int, *, channels_last: bool = False, dtype=np.float64, **overrides) -> Module:
    """A normalizer layer for ``num_channels`` channels, by name (see the module docstring for the table).

    Examples:
        >>> make_norm("batch", 8)
        BatchNorm(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
        >>> make_norm("group", 16).num_groups, make_norm("layer", 16).num_groups
        (4, 1)
        >>> type(make_norm(None, 4)).__name__, type(make_norm("batch", 4, channels_last=True)).__name__
        ('Identity', 'MoveChannelAxis')
    """
    if name is None:
        name = "none"
    if not isinstance(name, str):
        raise TypeError(f"name must be a normalizer name (str) or None, got {type(name).__name__}")
    key = name.lower()
    if key not in NORM_NAMES:
        raise ValueError(f"unknown normalizer {name!r}; known: {', '.join(NORM_NAMES)}")
    c = check_positive_int(num_channels, "num_channels")
    last = bool(channels_last)

    def build(cls, *args, **defaults):
        defaults.update(overrides)
        return cls(*args, dtype=dtype, **defaults)

    if key == "none":
        if overrides:
            raise TypeError(f"'none' takes no options, got {sorted(overrides)}")
        return Identity()
    if key == "batch":
        return _channels_first_only(build(BatchNorm, c), last)
    if key == "group":
        return _channels_first_only(build(GroupNorm, overrides.pop("num_groups", default_num_groups(c)), c), last)
    if key == "layer":
        return build(LayerNorm, c) if last else build(GroupNorm, 1, c)
    if key == "instance":
        return _channels_first_only(build(InstanceNorm, c, affine=True), last)
    if key == "rms":
        layer = build(RMSNorm, c)
        return layer if last else MoveChannelAxis(layer, source=1, destination=-1)
    if key == "power":
        return _channels_first_only(build(PowerNorm, c, backward="exact"), last)
    if key == "unified":
        return _channels_first_only(build(UnifiedNorm, c, backward="exact"), last)
    if key == "evonorm_b0":
        return _channels_first_only(build(EvoNormB0, c), last)
    if key == "evonorm_s0":
        return _channels_first_only(build(EvoNormS0, c), last)
    if key == "bcn":
        return _channels_first_only(build(BatchChannelNorm, c, num_groups=default_num_groups(c)), last)
    return build(DyT, c, channels_last=last)  # "dyt"
