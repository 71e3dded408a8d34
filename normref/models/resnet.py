r"""A small ResNet (He et al. 2016, the CIFAR family), with a ``skip`` switch that removes the shortcuts.

Layout for ``widths=(w_1, ..., w_S)`` and ``blocks_per_stage=B`` on ``(N, C, H, W)``:

* stem: ``Conv2d(C, w_1, 3x3, padding 1) -> norm -> ReLU``;
* stage ``s``: ``B`` basic blocks of width ``w_s``; the first block of every stage after the first halves the map
  (stride 2);
* head: ``GlobalAvgPool -> Linear(w_S, num_classes)``.

A basic block (:class:`BasicBlock`) is :math:`y = \mathrm{ReLU}(F(x) + S(x))` with the branch
:math:`F = \mathrm{norm}\circ\mathrm{conv}_{3\times3}\circ\mathrm{ReLU}\circ\mathrm{norm}\circ
\mathrm{conv}_{3\times3,\,\mathrm{stride}}` and the shortcut :math:`S`; with ``skip=False`` the block is
:math:`y = \mathrm{ReLU}(F(x))`, the "plain" network of He et al. (the ``noshort`` networks of Li et al. 2018's loss
landscape figures).

**Design decision: parameter-free shortcuts ("option A", He et al. 2016 §4.2, their CIFAR networks).** Where a block
changes the shape, the shortcut subsamples with the stride and appends zero channels (:class:`ZeroPadShortcut`);
elsewhere it is the identity. A 1x1-convolution shortcut ("option B") would give the skip network parameters the
plain one lacks. With option A, ``build_resnet(..., skip=True)`` and ``skip=False`` have exactly the same parameters,
names and shapes, drawn from the same seed, so one flat parameter vector (:mod:`normref.nn.flat`) evaluates in both
networks: a landscape or Hessian comparison of the two changes only the architecture.

Backward of a block, with :math:`g = dy \odot \mathbb{1}[F(x) + S(x) > 0]` from the final ReLU:
:math:`dx = J_F^\top g + J_S^\top g` (``skip=True``; the fan-out of ``x`` sums its two gradients) or
:math:`dx = J_F^\top g` (``skip=False``).
"""

from __future__ import annotations

import numpy as np

from .._validate import check_positive_int
from ..nn import Conv2d, GlobalAvgPool, Linear, Sequential
from ..nn.factory import make_norm
from ..nn.module import Module
from ._common import activation_after, is_normed, make_activation, no_act_overrides


class ZeroPadShortcut(Module):
    r"""The parameter-free shortcut: ``x[:, :, ::s, ::s]`` followed by ``out_channels - in_channels`` zero channels.

    Forward: :math:`y_{n,c,i,j} = x_{n,c,si,sj}` for :math:`c < C_{in}`, 0 for the appended channels. It is linear,
    a selection, so its adjoint puts ``dy``'s first :math:`C_{in}` channels back at the sampled positions and zeros
    elsewhere: :math:`dx_{n,c,si,sj} = dy_{n,c,i,j}` (:math:`c < C_{in}`), all other entries 0. With ``stride=1``
    and equal channels it is the identity.

    Examples:
        >>> s = ZeroPadShortcut(2, 4, 2)
        >>> y = s(np.ones((1, 2, 5, 5)))
        >>> y.shape, float(y[:, :2].sum()), float(y[:, 2:].sum()), float(s.backward(np.ones_like(y)).sum())
        ((1, 4, 3, 3), 18.0, 0.0, 18.0)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.stride = check_positive_int(stride, "stride")
        if self.out_channels < self.in_channels:
            raise ValueError(f"out_channels ({out_channels}) must be at least in_channels ({in_channels}): the "
                             f"shortcut only appends zero channels")
        self.x_shape = None

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), got {x.shape}")
        self.x_shape = x.shape
        sub = x[:, :, ::self.stride, ::self.stride]
        if self.out_channels == self.in_channels:
            return sub
        pad = np.zeros((x.shape[0], self.out_channels - self.in_channels) + sub.shape[2:], dtype=x.dtype)
        return np.concatenate([sub, pad], axis=1)

    def backward(self, dy):
        if self.x_shape is None:
            raise RuntimeError("ZeroPadShortcut.backward called before forward")
        dy = np.asarray(dy)
        dx = np.zeros(self.x_shape, dtype=dy.dtype)
        dx[:, :, ::self.stride, ::self.stride] = dy[:, :self.in_channels]
        return dx

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(Module):
    """``ReLU(branch(x) + shortcut(x))``, or ``ReLU(branch(x))`` with ``skip=False`` (see the module docstring).

    Children: ``branch`` (a Sequential: conv, norm, ReLU, conv, norm), ``shortcut`` (:class:`ZeroPadShortcut`,
    parameter-free) and ``act``. The ``skip`` flag changes the computation only, never the parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm="batch", *, skip: bool = True,
                 rng=None, dtype=np.float64):
        super().__init__()
        normed = is_normed(norm)
        layers = [Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not normed, rng=rng,
                         dtype=dtype)]
        if normed:
            layers.append(make_norm(norm, out_channels, dtype=dtype))
            layers.extend(activation_after(layers[-1]))
        else:
            layers.append(make_activation("relu"))
        layers.append(Conv2d(out_channels, out_channels, 3, padding=1, bias=not normed, rng=rng, dtype=dtype))
        if normed:  # the second normalizer has no nonlinearity: the ReLU comes after the addition
            layers.append(make_norm(norm, out_channels, dtype=dtype, **no_act_overrides(norm)))
        self.children["branch"] = Sequential(*layers)
        self.children["shortcut"] = ZeroPadShortcut(in_channels, out_channels, stride)
        self.children["act"] = make_activation("relu")
        self.skip = bool(skip)

    def forward(self, x):
        h = self.children["branch"].forward(x)
        if self.skip:
            h = h + self.children["shortcut"].forward(x)
        return self.children["act"].forward(h)

    def backward(self, dy):
        g = self.children["act"].backward(dy)
        dx = self.children["branch"].backward(g)
        if self.skip:
            dx = dx + self.children["shortcut"].backward(g)
        return dx

    def extra_repr(self) -> str:
        return f"skip={self.skip}"

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({name}): {module!r}".replace("\n", "\n  ") for name, module in self.children.items())
        return f"BasicBlock(skip={self.skip},\n{inner}\n)"


def build_resnet(in_channels: int, num_classes: int, widths=(16, 32), norm="batch", *, blocks_per_stage: int = 1,
                 skip: bool = True, seed: int = 0, dtype=np.float64) -> Sequential:
    """A small ResNet on ``(N, in_channels, H, W)`` (any ``H, W``: the head pools globally).

    ``skip=False`` builds the same network without its shortcuts (same parameters; see the module docstring).
    ``blocks_per_stage=3`` with ``widths=(16, 32, 64)`` is He et al.'s ResNet-20 layout.

    Examples:
        >>> net = build_resnet(1, 10, widths=(4, 8))
        >>> plain = build_resnet(1, 10, widths=(4, 8), skip=False)
        >>> net(np.zeros((2, 1, 8, 8))).shape, [n for n, _ in net.named_parameters()] == \\
        ...     [n for n, _ in plain.named_parameters()]
        ((2, 10), True)
    """
    blocks_per_stage = check_positive_int(blocks_per_stage, "blocks_per_stage")
    widths = tuple(check_positive_int(w, "widths[i]") for w in widths)
    if not widths:
        raise ValueError("widths must name at least one stage")
    if any(b < a for a, b in zip(widths, widths[1:])):
        raise ValueError(f"widths must not decrease (the zero-padding shortcut only adds channels), got {widths}")
    rng = np.random.default_rng(seed)
    normed = is_normed(norm)
    layers = [Conv2d(in_channels, widths[0], 3, padding=1, bias=not normed, rng=rng, dtype=dtype)]
    if normed:
        layers.append(make_norm(norm, widths[0], dtype=dtype))
        layers.extend(activation_after(layers[-1]))
    else:
        layers.append(make_activation("relu"))
    channels = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(channels, width, stride, norm, skip=skip, rng=rng, dtype=dtype))
            channels = width
    layers += [GlobalAvgPool(), Linear(channels, num_classes, rng=rng, dtype=dtype)]
    return Sequential(*layers)
