"""The WeightNorm reparameterization layer. Math: :mod:`normref.ops.weight_norm`."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._validate import as_array, check_positive_int
from ._norm_base import NormLayer


class WeightNorm(NormLayer):
    """Weight normalization (Salimans & Kingma 2016): ``forward(v)`` returns ``w = g·v/‖v‖``, norm over all axes
    but ``dim``.

    Like :class:`~normref.nn.WeightStandardization`, it acts on a weight: the owning layer keeps the direction
    ``v`` as its parameter, calls ``w = wn.forward(v)``, and sends its weight gradient through ``wn.backward(dw)``
    to get ``dv``; ``g`` lives here and its gradient accumulates in ``grads["g"]``.

    Args:
        num_outputs: ``v.shape[dim]`` (ignored when ``dim is None``: ``g`` is then one scalar of shape ``()``).
        dim: the axis that keeps its own norm (0, the output axis; PyTorch's default), or ``None``. A negative
            ``dim`` counts from the end, as in NumPy; PyTorch's ``weight_norm`` instead reads ``dim=-1`` as ``None``
            (one norm over the whole tensor), so PyTorch's ``dim=-1`` is normref's ``dim=None``.
        affine: learn ``g`` (init 1; see :meth:`init_from` for PyTorch's ``g = ‖v‖``); ``False`` gives the bare
            direction ``v/‖v‖``.
    """

    op = "weight_norm"
    param_names = ("g",)

    def __init__(self, num_outputs, dim=0, affine=True, *, backend=None, dtype=np.float64):
        super().__init__(backend=backend)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer))):
            raise TypeError(f"dim must be an int or None, got {type(dim).__name__}")
        self.dim = None if dim is None else int(dim)
        self.num_outputs = check_positive_int(num_outputs, "num_outputs")
        if affine:
            self.add_param("g", np.ones(() if self.dim is None else (self.num_outputs,), dtype))

    def init_from(self, v) -> "WeightNorm":
        """Set ``g = ‖v‖`` (per output unit), so that ``forward(v)`` returns ``v`` itself, as PyTorch does."""
        v = as_array(v, "v")
        if "g" not in self.params:
            raise ValueError("init_from needs a layer with affine=True (a learnable g)")
        axes = tuple(range(v.ndim)) if self.dim is None else tuple(i for i in range(v.ndim) if i != self.dim % v.ndim)
        self.params["g"] = np.sqrt((v * v).sum(axis=axes)).astype(self.params["g"].dtype)
        return self

    def check_input(self, v) -> None:
        shape = getattr(v, "shape", None)
        if self.dim is not None and shape is not None and -len(shape) <= self.dim < len(shape) \
                and shape[self.dim] != self.num_outputs:
            raise ValueError(f"v has {shape[self.dim]} entries on axis {self.dim} (shape {tuple(shape)}) but the "
                             f"layer was built with num_outputs={self.num_outputs}")

    def op_hyper(self) -> dict:
        return {"dim": self.dim}

    def forward(self, v):
        # weight_norm_forward takes no statistics: bypass NormLayer's stats= keyword.
        self.check_input(v)
        w, self.cache = F.forward(self.op, v, *self.op_params(), backend=self.backend, **self.op_hyper())
        return w

    def extra_repr(self) -> str:
        return f"{self.num_outputs}, dim={self.dim}, affine={'g' in self.params}"
