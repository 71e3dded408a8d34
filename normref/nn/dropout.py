"""The Dropout layer (PyTorch's ``nn.Dropout``), seeded and replayable. Math: :mod:`normref.ops.dropout`."""

from __future__ import annotations

import numbers

from .. import functional as F
from .._validate import check_fraction
from ..ops.dropout import dropout_mask
from ._op_layer import OpLayer


class Dropout(OpLayer):
    """Zero each element with probability ``p`` in training and scale the rest by ``1/(1−p)``; identity in eval.

    The randomness is part of the layer's state: the buffers ``seed`` and ``step`` (both ints) pick the mask
    (``dropout_mask(shape, p, seed, step)``, counter based), and every training forward advances ``step``. So

    * two layers with the same ``seed`` drop the same elements, whatever else the program draws;
    * restoring the buffers replays the mask: the gradient checker restores them before every probe, so all probes
      see one fixed mask and dropout is checked like any linear layer; a checkpoint (``save_npz``) resumes the stream.

    Args:
        p: drop probability in ``[0, 1]``.
        seed: the int seed of this layer's mask stream.

    Examples:
        >>> import numpy as np
        >>> drop = Dropout(0.5, seed=1)
        >>> y = drop(np.ones(8))
        >>> sorted(set(y.tolist())), drop.buffers["step"]
        ([0.0, 2.0], 1)
        >>> bool((drop.eval()(np.ones(8)) == 1).all())
        True
    """

    op = "dropout"

    def __init__(self, p=0.5, *, seed=0, backend=None):
        super().__init__(backend=backend)
        self.p = check_fraction(p, "p")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        self.buffers.update(seed=int(seed), step=0)

    def forward(self, x):
        mask = None
        if self.training:
            shape = getattr(x, "shape", None)
            if shape is None:
                raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
            mask = dropout_mask(shape, self.p, self.buffers["seed"], self.buffers["step"])
            self.buffers["step"] = self.buffers["step"] + 1
        y, self.cache = F.forward(self.op, x, backend=self.backend, p=self.p, mask=mask)
        return y

    def extra_repr(self) -> str:
        return f"p={self.p}"
