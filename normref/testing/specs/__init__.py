"""The layer spec table: one entry per layer, and everything that iterates over it.

A :class:`LayerSpec` says how to build a layer for an input shape, which shapes to check it on, and which
properties it has. Adding a layer to normref means adding one entry to a ``SPECS`` list in a module of this
package; ``normref check``, the gradient tests, the backend-agreement tests and the property tests all pick it up
from :func:`all_specs`. Modules are discovered, so a new family file needs no edit anywhere else.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable

import numpy as np

from ..gradcheck import GradcheckReport, check_layer


def offset_input(rng, shape) -> np.ndarray:
    """The default test input: ``5·N(0,1) + 12``, a large offset and scale, so centering and scaling both matter."""
    return 5.0 * rng.standard_normal(shape) + 12.0


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """How to build, feed and check one layer."""

    name: str  # the layer's class name, as shown by `normref check --layer`
    make: Callable  # make(input_shape, affine) -> layer, on the default backend
    shapes: tuple  # input shapes for gradient checks; the first one is what `normref check` uses
    modes: tuple = ("train", "eval")
    affine: tuple = (True, False)  # affine settings to check (a layer without an affine switch lists (True,))
    op: str = ""  # registry name of the op the layer runs, for the backend table
    complex_safe: bool = True  # forward is the analytic continuation: the complex step applies (numpy backend)
    backward_kind: str = "exact"  # "exact" | "stop-gradient" | "surrogate": what finite differences are held to
    make_input: Callable = offset_input  # make_input(rng, shape) -> x
    set_ids: Callable | None = None  # set_ids(shape) -> int array like x: which normalized set each element is in
    # (declare it only if the training output with unit affine is x standardized over these sets: unit variance, or
    # unit mean square if not centered, up to eps; tests/test_properties.py then checks that and the invariances)
    centered: bool = True  # the normalized output has zero mean over each set
    tols: dict | None = None  # overrides of the checker's default tolerances, with the reason in a comment
    warmup_steps: int = 2  # training forwards before an eval check, so running statistics are not the init values
    citation: str = ""

    def build(self, shape, affine: bool, backend: str | None = None, rng=None, dtype=None):
        """A layer for ``shape``, on ``backend``, in training mode, with non-trivial running statistics; its
        parameters and buffers cast to ``dtype`` (and its warm-up inputs made in it) unless that is ``None``."""
        layer = self.make(tuple(shape), affine)
        if dtype is not None:
            layer.astype(dtype)
        if backend is not None:
            layer.backend = backend
        rng = np.random.default_rng(1) if rng is None else rng
        for _ in range(self.warmup_steps if layer.buffers else 0):
            x = self.make_input(rng, shape)
            layer.forward(x if dtype is None else x.astype(dtype))
        return layer


def check(spec: LayerSpec, *, mode: str, affine: bool, backend: str = "numpy", shape=None, seed: int = 0,
          methods=None) -> GradcheckReport:
    """Gradient-check ``spec``'s layer in ``mode`` with the given affine setting and backend (float64)."""
    shape = tuple(spec.shapes[0] if shape is None else shape)
    rng = np.random.default_rng(seed)
    layer = spec.build(shape, affine, backend, rng)
    layer.train(mode == "train")
    if methods is None:
        methods = ("central", "complex") if spec.complex_safe and backend == "numpy" else ("central",)
    title = f"{spec.name} mode={mode} affine={affine} backend={backend} shape={shape}"
    return check_layer(layer, spec.make_input(rng, shape), rng=rng, methods=methods, title=title,
                       tols=spec.tols)


_SPECS: list[LayerSpec] | None = None


def all_specs() -> list[LayerSpec]:
    """Every spec from every module of this package, in module then list order."""
    global _SPECS
    if _SPECS is None:
        specs = []
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{__name__}.{info.name}")
            specs.extend(getattr(module, "SPECS", []))
        names = [s.name for s in specs]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise RuntimeError(f"duplicate layer specs: {sorted(duplicated)}")
        _SPECS = specs
    return list(_SPECS)


def get_spec(name: str) -> LayerSpec:
    for spec in all_specs():
        if spec.name.lower() == name.lower():
            return spec
    raise KeyError(f"no layer spec named {name!r}; known: {[s.name for s in all_specs()]}")
