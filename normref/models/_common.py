"""Helpers shared by the model builders: activations by name, and the activation that follows a normalizer."""

from __future__ import annotations

from ..nn import GELU, ReLU, SiLU, Tanh
from ..nn.evonorm import EvoNormB0, EvoNormS0
from ..nn.factory import MoveChannelAxis
from ..nn.module import Module

ACTIVATIONS = {"relu": ReLU, "gelu": GELU, "gelu_tanh": lambda: GELU("tanh"), "silu": SiLU, "tanh": Tanh}


def make_activation(name: str) -> Module:
    """``"relu"``, ``"gelu"`` (exact, erf), ``"gelu_tanh"``, ``"silu"`` or ``"tanh"``."""
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name.lower()]()


def is_normed(norm) -> bool:
    """Whether ``norm`` names a normalizer (``None`` and ``"none"`` do not)."""
    return not (norm is None or (isinstance(norm, str) and norm.lower() == "none"))


def is_evonorm_with_act(layer: Module) -> bool:
    """EvoNorm-B0/S0 with its activation: normalizer and nonlinearity in one layer."""
    inner = layer.inner if isinstance(layer, MoveChannelAxis) else layer
    return isinstance(inner, (EvoNormB0, EvoNormS0)) and getattr(inner, "apply_act", True)


def activation_after(norm: Module, activation: str = "relu") -> list[Module]:
    """``[activation]`` after a normalizer, except ``[]`` after EvoNorm, which already is one."""
    return [] if is_evonorm_with_act(norm) else [make_activation(activation)]


def no_act_overrides(norm) -> dict:
    """``make_norm`` options for a normalizer that must *not* apply a nonlinearity (EvoNorm's ``apply_act=False``),
    e.g. the second normalizer of a residual branch, whose ReLU comes after the addition."""
    return {"apply_act": False} if isinstance(norm, str) and norm.lower().startswith("evonorm") else {}
