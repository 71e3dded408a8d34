"""Specs of Region Normalization (RN-B, RN-L), test-time BN calibration (α-BN, TTN mixing) and SyncBatchNorm.

How each non-standard input is made fixed, so that the checker can differentiate ``forward(x)`` in ``x`` alone:

* RN-B: the spec's layer has a fixed mask set with ``set_mask`` (a deterministic function of the shape, both regions
  non-empty), so ``forward(x)`` uses it.
* RN-L: the mask is ``[s >= tau]`` of the layer's own response map. Inputs are small (``0.1·N(0,1) + 0.1``) so that
  ``s`` is not saturated with the checker's N(0,1) kernels and ``tau = 0.5`` splits the pixels into two regions;
  continuous random inputs have no max ties, and a point within the probe step (~1e-6) of the threshold has
  probability ~1e-5 (the margins are asserted in ``tests/test_region_norm.py``).
* α-BN with stop-gradient: FD must see the *frozen-statistics* function. The spec's layer pins the test statistics
  of the first forward after ``train()``/``eval()`` (the checker's base point), so the probes differentiate the
  function with those statistics held fixed, while the analytic side is the stop-gradient backward.
* SyncBatchNorm: three simulated ranks with uneven shards (:class:`normref.nn.ShardedSyncBatchNorm`); as a function
  of the whole batch it is BatchNorm, so finite differences check the distributed backward exactly.
"""

from __future__ import annotations

import numpy as np

from ... import nn
from . import LayerSpec


def fixed_mask(shape) -> np.ndarray:
    """A deterministic hole mask ``(N, 1, *spatial)`` for ``shape`` with at least 2 pixels in each region."""
    n, _, *spatial = shape
    mask = (np.random.default_rng(12345).random((n, 1, *spatial)) < 0.35).astype(np.float64)
    flat = mask.reshape(-1)
    flat[:2], flat[-2:] = 1.0, 0.0  # both regions non-empty whatever the draw
    return flat.reshape(mask.shape)


def _make_rn_b(shape, affine, regionwise_bias=False):
    # eps = 0: RN's effective epsilon is eps·P/|S_r| per region, not the eps the property tests assume
    # (tests/test_properties.py compares the output variance with v/(v + layer.eps)); the gradient check needs no eps
    # (every region has a positive variance), and tests/test_region_norm.py checks the effective epsilon itself.
    layer = nn.RegionNormB(shape[1], eps=0.0, affine=affine, regionwise_bias=regionwise_bias)
    layer.set_mask(fixed_mask(shape))
    return layer


def _rn_b_ids(shape):
    """RN-B: one set per (channel, region)."""
    channel = np.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    return 2 * channel + fixed_mask(shape).astype(int)


def small_input(rng, shape) -> np.ndarray:
    """RN-L's test input: small, so that the response map is not saturated (module docstring)."""
    return 0.1 * rng.standard_normal(shape) + 0.1


class PinOnFirstForward(nn.AlphaBatchNorm):
    """A stop-gradient α-BN whose first forward after ``train()``/``eval()`` pins its test statistics.

    The gradient checker calls the layer at its base point first and then at perturbed points; with the statistics
    pinned at the base point, the perturbed forwards are the frozen-statistics function that a stop-gradient
    backward is the exact derivative of.
    """

    def forward(self, x):
        if self.pinned_stats is None:
            self.pin_test_stats(x)
        return super().forward(x)

    def train(self, mode: bool = True):
        self.unpin_test_stats()
        return super().train(mode)


def _make_alpha(shape, affine, *, cls=nn.AlphaBatchNorm, **kwargs):
    layer = cls(shape[1], affine=affine, **kwargs)
    rng = np.random.default_rng(7)  # non-trivial source statistics, different from any test batch's
    layer.buffers["running_mean"] = 10.0 + 3.0 * rng.standard_normal(shape[1])
    layer.buffers["running_var"] = 20.0 + 5.0 * rng.random(shape[1])
    return layer


def _per_channel(shape):
    return np.linspace(0.2, 0.8, shape[1])


def _channel_ids(shape):
    ids = np.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    return np.broadcast_to(ids, shape)


def shard_sizes(n: int) -> list[int]:
    """Three uneven shards of ``n >= 4`` samples: ``[1, 2, n - 3]``."""
    return [1, 2, n - 3]


SPECS = [
    LayerSpec(
        name="RegionNormB", op="rn_b", make=_make_rn_b,
        shapes=((3, 2, 4, 5), (2, 3, 3, 3), (4, 2, 7)),
        set_ids=_rn_b_ids, citation="Yu et al. 2020, Region Normalization (AAAI)",
    ),
    LayerSpec(
        name="RegionNormB-paperbias", op="rn_b",
        make=lambda shape, affine: _make_rn_b(shape, affine, regionwise_bias=True),
        shapes=((3, 2, 4, 5),), affine=(True,),
        set_ids=_rn_b_ids, citation="Yu et al. 2020, Region Normalization (AAAI): region-wise biases",
    ),
    LayerSpec(
        name="RegionNormL", op="rn_l",
        make=lambda shape, affine: nn.RegionNormL(shape[1], threshold=0.5),
        shapes=((2, 3, 6, 6), (1, 4, 5, 7)), affine=(True,), make_input=small_input, centered=False,
        citation="Yu et al. 2020, Region Normalization (AAAI): RN-L",
    ),
    LayerSpec(
        name="AlphaBatchNorm", op="alpha_batch_norm", modes=("eval",),
        make=lambda shape, affine: _make_alpha(shape, affine, w_test=0.3),
        shapes=((6, 3, 4), (5, 2), (2, 3, 3, 2)), centered=False,
        citation="You, Li & Zhao 2021 (α-BN), gradient through the test statistics",
    ),
    LayerSpec(
        name="AlphaBatchNorm-sg", op="alpha_batch_norm", modes=("eval",), backward_kind="stop-gradient",
        make=lambda shape, affine: _make_alpha(shape, affine, cls=PinOnFirstForward, w_test=0.3, unbiased=True,
                                               stats_grad=False),
        shapes=((6, 3, 4), (2, 3, 3, 2)), centered=False,
        citation="robusta AlphaBatchNorm: stop-gradient, unbiased test variance",
    ),
    LayerSpec(
        name="AlphaBatchNorm-ttn", op="alpha_batch_norm", modes=("eval",),
        make=lambda shape, affine: _make_alpha(shape, affine, w_test=_per_channel(shape), mixture_variance=True),
        shapes=((6, 3, 4), (2, 4, 3, 2)), centered=False,
        citation="Lim et al. 2023 (TTN): per-channel weight, mixture variance",
    ),
    LayerSpec(
        name="SyncBatchNorm", op="sync_batch_norm",
        make=lambda shape, affine: nn.ShardedSyncBatchNorm(shape[1], shard_sizes(shape[0]), affine=affine),
        shapes=((6, 3, 4), (4, 2, 3, 3), (7, 3)), set_ids=_channel_ids,
        citation="SyncBatchNorm (as torch.nn.SyncBatchNorm), 3 simulated ranks",
    ),
]
