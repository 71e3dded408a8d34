r"""A convolution with a Weight-Standardized kernel: ``WSConv2d``, the conv layer of Qiao et al.'s "BCN+WS" and
"GN+WS" networks. Math: :mod:`normref.ops.conv` and :mod:`normref.ops.weight_standardization`.

Composition
-----------
The layer keeps a raw weight ``w`` ``(O, C, kh, kw)`` and standardizes it at every forward:

.. math::

    \hat w = \mathrm{WS}(w), \qquad y = \mathrm{conv2d}(x, \hat w) + b .

Reverse mode runs the two registered ops' backward passes in the opposite order: the convolution's backward gives
``dx``, ``db`` and the gradient ``dŵ`` with respect to the kernel it was *given*; the WS backward maps ``dŵ`` to the
raw weight's ``dw`` (removing the components along ``1`` and along ``ŵ`` per output channel, the WS paper's
projection; derivation in :mod:`normref.ops.weight_standardization`). No new derivative is derived here, so the
layer is exactly as correct as the two checked ops; its own spec (``normref/testing/specs/ws_conv.py``) checks the
composition against finite differences and the complex step anyway.

The WS step is a child module ``ws`` (a :class:`~normref.nn.WeightStandardization`), so its options (``eps``,
``eps_mode``, ``unbiased``, an optional learnable per-channel ``gain``, exposed as ``ws.gain``) are those of that
layer, with its default (biased variance, eps inside the square root, ``eps = 1e-5``). Without a gain the layer has
exactly the parameters of a :class:`Conv2d` (``weight`` and optionally ``bias``), and ``isinstance(layer, Conv2d)``
holds, so code that looks for convolutions (scale-invariance detection in :mod:`normref.train`, filter-normalized
directions in :mod:`normref.landscape`) treats it as one. A WS kernel is invariant to a positive rescaling and to a
constant shift of each output channel's raw weights (up to ``eps``), so ``w`` is scale-invariant by construction.

Convert a built network with :meth:`WSConv2d.from_conv` (same weight, bias, stride and padding), e.g. to turn
``build_vgg(..., norm="bcn")`` into BCN+WS.

Paper: Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization", arXiv:1903.10520 (their ``Conv2d`` subclass standardizes the kernel inside ``forward`` the same
way; the ``eps`` placement of their code is ``WS_VARIANTS["official"]``, available here through ``eps_mode`` and
``unbiased``).
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .conv import Conv2d
from .weight_standardization import WeightStandardization


class WSConv2d(Conv2d):
    """``Conv2d`` whose kernel is Weight-Standardized at every forward: ``y = conv2d(x, WS(weight)) + bias``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias, rng, dtype, backend: as :class:`Conv2d`
            (``backend`` applies to the convolution; the WS step runs on the default backend).
        eps, gain, unbiased, eps_mode: the :class:`~normref.nn.WeightStandardization` options.

    Examples:
        >>> conv = WSConv2d(3, 4, 3, padding=1, rng=0)
        >>> y = conv(np.ones((2, 3, 5, 5)))
        >>> y.shape, [name for name, _ in conv.named_parameters()]
        ((2, 4, 5, 5), ['weight', 'bias'])
        >>> bool(np.allclose(conv(np.ones((1, 3, 5, 5))), WSConv2d.from_conv(conv)(np.ones((1, 3, 5, 5)))))
        True
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, *, eps=1e-5,
                 gain=False, unbiased=False, eps_mode="inside", rng=None, dtype=np.float64, backend=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, rng=rng, dtype=dtype,
                         backend=backend)
        self.children["ws"] = WeightStandardization(self.out_channels, eps=eps, gain=gain, unbiased=unbiased,
                                                    eps_mode=eps_mode, dtype=dtype)

    @property
    def ws(self) -> WeightStandardization:
        return self.children["ws"]

    @classmethod
    def from_conv(cls, conv: Conv2d, **ws_options) -> "WSConv2d":
        """A ``WSConv2d`` with ``conv``'s geometry and copies of its weight and bias (``ws_options`` as above)."""
        if not isinstance(conv, Conv2d):
            raise TypeError(f"conv must be a normref Conv2d, got {type(conv).__name__}")
        weight = conv.params["weight"]
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias="bias" in conv.params, rng=0, dtype=weight.dtype, backend=conv.backend, **ws_options)
        layer.params["weight"] = np.array(weight, copy=True)
        if "bias" in conv.params:
            layer.params["bias"] = np.array(conv.params["bias"], copy=True)
        return layer

    def forward(self, x):
        w_hat = self.ws.forward(self.params["weight"])
        y, self.cache = F.forward(self.op, x, w_hat, self.params.get("bias"), backend=self.backend,
                                  **self.op_hyper())
        return y

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        dx, dw_hat, dbias = F.backward(self.op, dy, self.cache)
        self.accumulate_grad("weight", self.ws.backward(dw_hat))  # also accumulates ws.gain's gradient
        if "bias" in self.params:
            self.accumulate_grad("bias", dbias)
        return dx

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ws=({self.ws.extra_repr()})"
