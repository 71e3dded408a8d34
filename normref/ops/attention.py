r"""Multi-head self-attention (Vaswani et al. 2017) with optional causal and key-padding masks, and its full backward.

Shapes (batch first): ``x`` is ``(N, T, E)``; ``H`` heads of size ``D = E/H``. Parameters in PyTorch's
``nn.MultiheadAttention`` layout: ``in_proj_weight`` ``(3E, E)`` and ``in_proj_bias`` ``(3E,)`` (rows ``[0, E)`` make
``q``, ``[E, 2E)`` ``k``, ``[2E, 3E)`` ``v``), ``out_proj_weight`` ``(E, E)``, ``out_proj_bias`` ``(E,)``; the
biases may be ``None``. ``s = D^{-1/2}``.

Forward: the staged graph
-------------------------
====  ===========================================  ============  ==================================================
node  value                                        shape         local gradient (``d·`` = ∂L/∂·)
====  ===========================================  ============  ==================================================
1     ``qkv = x W_inᵀ + b_in``                     (N, T, 3E)    ``dx = dqkv W_in``; ``dW_in = Σ dqkvᵀ x``
2     ``q, k, v = split_heads(qkv)``               (N, H, T, D)  ``dqkv = merge(dq, dk, dv)``
3     ``S = s · q kᵀ``                             (N, H, T, T)  ``dq = s dS k``; ``dk = s dSᵀ q``
4     ``e = exp(S − m)`` allowed, 0 where masked   (N, H, T, T)  ``dS = e ⊙ de``
5     ``z = Σ_j e``                                (N, H, T, 1)  ``de += dz`` (broadcast over j)
6     ``P = e / z``                                (N, H, T, T)  ``de = dP / z``; ``dz = −Σ_j dP e / z²``
7     ``O = P v``                                  (N, H, T, D)  ``dP = dO vᵀ``; ``dv = Pᵀ dO``
8     ``y = merge_heads(O) W_outᵀ + b_out``        (N, T, E)     ``dO = split(dy W_out)``; ``dW_out = Σ dyᵀ Om``
====  ===========================================  ============  ==================================================

``m`` is the row maximum of ``Re S`` over the allowed entries. It is treated as a constant: softmax is invariant to a
per-row shift, so the gradient through ``m`` is exactly zero (it only prevents overflow, and under the complex step it
stays real, which keeps the forward analytic).

Masks
-----
An entry ``(i, j)`` (query ``i``, key ``j``) is *allowed* unless a mask removes it:

* ``causal=True`` removes ``j > i`` (a query attends to itself and to earlier positions), the ``(T, T)`` mask
  :func:`causal_mask`;
* ``key_padding_mask``, boolean ``(N, T)`` in PyTorch's convention (``nn.MultiheadAttention``,
  ``nn.TransformerEncoder``'s ``src_key_padding_mask``): ``True`` marks key ``j`` of sequence ``n`` as padding, and
  no query of that sequence attends to it. Only boolean masks are accepted (PyTorch also takes additive float masks).

Both together allow ``(j <= i) and not pad[n, j]``: the ``allowed`` array is ``(T, T)``, ``(N, 1, 1, T)`` or
``(N, 1, T, T)``, broadcast over the heads.

*How masked entries are removed.* Not by adding ``-inf`` or a large negative number to ``S``: the masked entries are
left out of the maximum, of ``exp`` and of the sum (node 4: ``e = 0`` exactly), so their weights are exactly 0 in
any precision and the forward stays analytic for the complex step. The additive forms differ only in the corner
case below, where both go wrong: ``-inf`` makes a row with no allowed key ``0/0 = NaN`` (PyTorch 2.13's
``nn.MultiheadAttention`` returns NaN there on its eval fast path), and a large negative constant makes it a
uniform average over the padding (finite, but the padding's values leak into the output).

*A query with no allowed key* (a sequence that is all padding; or, with ``causal``, a query at a padded position
that precedes every real token) is defined to have all weights 0: ``P_i = 0``, ``O_i = 0``, so the output there is
``y_i = b_out`` (zero without the bias). This is what PyTorch 2.13 returns from
``F.scaled_dot_product_attention`` with a boolean mask (its math kernel's "safe softmax") and from
``nn.MultiheadAttention`` in training mode (checked in ``tests/test_attention_mask.py``). Such rows are found
before the softmax and computed with every entry allowed (a finite, discarded value), then multiplied by 0.

Backward through the masks. A masked entry has ``e_ij = 0`` whatever ``S_ij`` is, so node 4's local derivative is 0
there: ``dS_ij = e_ij de_ij = 0``; in the fused form below ``dS_ij = P_ij (dP_ij - δ_i) = 0`` because
``P_ij = 0``. For a row with no allowed key ``P_i ≡ 0`` is a constant, so its whole ``dS_i`` is 0 (and
``δ_i = dO_i · O_i = 0``). Consequences, through nodes 3 and 7: a padded key ``j`` gets
``dk_j = s Σ_i dS_ij q_i = 0`` and ``dv_j = Σ_i P_ij dO_i = 0``, so the input at a padded position receives
gradient only through its own query (``dx_j = dq_j W_q``); and changing the input at padded positions changes the
output only at those positions (through their own queries), never at an unpadded one.

Fused softmax backward
----------------------
Substituting nodes 6, 5 and 4: :math:`dS = e\,(dP/z - \sum_j dP\,e/z^2) = P \odot (dP - \sum_j dP \odot P)`.
Moreover :math:`\sum_j dP_{ij} P_{ij} = \sum_j (dO_i \cdot v_j) P_{ij} = dO_i \cdot O_i`, so the row term is
:math:`\delta_i = \sum_d dO_{id} O_{id}` (FlashAttention's trick: a ``(T, D)`` product instead of a ``(T, T)`` one):

.. math::

    dS = P \odot (dP - \delta), \qquad \delta = \operatorname{rowsum}(dO \odot O) .

:func:`multihead_attention_backward` uses this fused form; :func:`multihead_attention_backward_staged` runs nodes 6,
5, 4 one by one. Tutorial 10 checks both against each other and against finite differences.

Complex step: the forward uses products, sums, ``exp`` and a division only, with the real shift ``m``: analytic.
Deviations from PyTorch: no dropout on the attention weights, self-attention only, boolean masks only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._registry import register
from .._validate import as_array, cast_like, check_dy, check_ndim, check_nonempty, check_param, check_positive_int
from .activations import softmax


class AttentionCache(NamedTuple):
    x: np.ndarray  # (N, T, E)
    in_proj_weight: np.ndarray  # (3E, E)
    out_proj_weight: np.ndarray  # (E, E)
    q: np.ndarray  # (N, H, T, D)
    k: np.ndarray  # (N, H, T, D)
    v: np.ndarray  # (N, H, T, D)
    scores: np.ndarray  # (N, H, T, T) S = s·q kᵀ before the mask (kept for the staged backward)
    mask: np.ndarray | None  # allowed entries, (T, T), (N, 1, 1, T) or (N, 1, T, T); None: all allowed
    p: np.ndarray  # (N, H, T, T) attention weights, 0 on masked entries and in rows with no allowed key
    o_merged: np.ndarray  # (N, T, E) heads concatenated, before the output projection
    has_in_bias: bool
    has_out_bias: bool
    num_heads: int
    dtype: np.dtype
    backend: str = "numpy"


def causal_mask(t: int) -> np.ndarray:
    """``(T, T)`` boolean: ``True`` where query ``i`` may attend to key ``j``, i.e. ``j <= i``."""
    return np.tril(np.ones((t, t), dtype=bool))


def check_key_padding_mask(key_padding_mask, n: int, t: int):
    """``None`` or a boolean ``(N, T)`` array (``True`` = padding); else a ``TypeError``/``ValueError`` naming it."""
    if key_padding_mask is None:
        return None
    if not isinstance(key_padding_mask, np.ndarray):
        raise TypeError(f"key_padding_mask must be None or a boolean numpy.ndarray of shape (N, T) = ({n}, {t}), "
                        f"got {type(key_padding_mask).__name__}")
    if key_padding_mask.dtype != np.bool_:
        raise TypeError(f"key_padding_mask must have dtype bool (True = this key is padding), got "
                        f"{key_padding_mask.dtype}; for token ids use tokens == pad_id")
    if key_padding_mask.shape != (n, t):
        raise ValueError(f"key_padding_mask must have shape (N, T) = ({n}, {t}) like x's first two axes, got "
                         f"{key_padding_mask.shape}")
    return key_padding_mask


def allowed_entries(t: int, causal: bool, key_padding_mask=None):
    """The allowed ``(query, key)`` entries for ``causal`` and a validated ``key_padding_mask`` (``None``: all)."""
    allowed = causal_mask(t) if causal else None
    if key_padding_mask is not None:
        keys = ~key_padding_mask[:, None, None, :]  # (N, 1, 1, T)
        allowed = keys if allowed is None else keys & allowed  # (N, 1, T, T) with both
    return allowed


def _split_heads(a, h):
    n, t, e = a.shape
    return a.reshape(n, t, h, e // h).transpose(0, 2, 1, 3)  # (N, H, T, D)


def _merge_heads(a):
    n, h, t, d = a.shape
    return a.transpose(0, 2, 1, 3).reshape(n, t, h * d)  # (N, T, E)


def multihead_attention_forward(x, in_proj_weight, in_proj_bias=None, out_proj_weight=None, out_proj_bias=None, *,
                                num_heads, causal=False, key_padding_mask=None):
    """Multi-head self-attention of ``x``.

    Args:
        x: ``(N, T, E)``.
        in_proj_weight: ``(3E, E)``; in_proj_bias: ``(3E,)`` or ``None``.
        out_proj_weight: ``(E, E)`` (required); out_proj_bias: ``(E,)`` or ``None``.
        num_heads: ``H``, dividing ``E``.
        causal: mask out keys after the query (``j > i``).
        key_padding_mask: ``None`` or boolean ``(N, T)``, ``True`` where the key is padding (PyTorch's convention);
            see the module docstring, also for a query left with no key.

    Returns:
        ``(y, cache)``, ``y`` of shape ``(N, T, E)`` in ``x``'s dtype.
    """
    x = as_array(x, "x")
    check_ndim(x, "x", (3,), "(N, T, E), batch first")
    check_nonempty(x, "x")
    n, t, e = x.shape
    h = check_positive_int(num_heads, "num_heads")
    if e % h:
        raise ValueError(f"num_heads={h} must divide the embedding size E={e} (x shape {x.shape})")
    if out_proj_weight is None:
        raise ValueError("out_proj_weight must be an array of shape (E, E), got None")
    w_in = cast_like(x, check_param(in_proj_weight, "in_proj_weight", (3 * e, e)))
    b_in = cast_like(x, check_param(in_proj_bias, "in_proj_bias", (3 * e,)))
    w_out = cast_like(x, check_param(out_proj_weight, "out_proj_weight", (e, e)))
    b_out = cast_like(x, check_param(out_proj_bias, "out_proj_bias", (e,)))
    key_padding_mask = check_key_padding_mask(key_padding_mask, n, t)

    qkv = x @ w_in.T  # node 1: (N, T, 3E)
    if b_in is not None:
        qkv = qkv + b_in
    q, k, v = (_split_heads(qkv[..., i * e:(i + 1) * e], h) for i in range(3))  # node 2: (N, H, T, D) each
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(e // h))  # node 3: (N, H, T, T)
    mask = allowed_entries(t, causal, key_padding_mask)
    if mask is None:
        p = softmax(scores, axis=-1)  # nodes 4-6
    else:
        has_key = mask.any(axis=-1, keepdims=True)  # rows with at least one allowed key
        # nodes 4-6; a row with no allowed key is computed unmasked (finite) and then set to 0 (module docstring)
        p = softmax(scores, axis=-1, where=mask | ~has_key) * has_key
    o_merged = _merge_heads(p @ v)  # node 7: (N, T, E)
    y = o_merged @ w_out.T  # node 8
    if b_out is not None:
        y = y + b_out
    cache = AttentionCache(x, w_in, w_out, q, k, v, scores, mask, p, o_merged, b_in is not None, b_out is not None, h,
                           y.dtype)
    return y, cache


def _softmax_vjp_fused(dp, do, cache):
    delta = (do * _split_heads(cache.o_merged, cache.num_heads)).sum(axis=-1, keepdims=True)  # (N, H, T, 1)
    return cache.p * (dp - delta)


def _softmax_vjp_staged(dp, do, cache):
    allowed = np.ones(cache.p.shape[-2:], dtype=bool) if cache.mask is None else cache.mask
    has_key = allowed.any(axis=-1, keepdims=True)  # rows with no allowed key have P = 0, a constant: dS = 0
    scores = cache.scores
    m = np.where(allowed, scores.real, -np.inf).max(axis=-1, keepdims=True)  # a constant (see the docstring)
    m = np.where(has_key, m, 0.0)
    e = np.where(allowed, np.exp(np.where(allowed, scores - m, 0)), 0)  # node 4: (N, H, T, T)
    z = e.sum(axis=-1, keepdims=True)  # node 5: (N, H, T, 1)
    z = np.where(has_key, z, 1.0)  # an empty row has e = 0: any nonzero z gives its dS = e de = 0
    de = dp / z  # node 6: P = e / z
    dz = -(dp * e).sum(axis=-1, keepdims=True) / (z * z)
    de = de + dz  # node 5: z = sum_j e (dz reaches every e_ij of the row)
    return e * de  # node 4: d exp(u)/du = exp(u) = e; masked entries have e = 0


def _backward(dy, cache: AttentionCache, softmax_vjp):
    n, t, e = cache.x.shape
    h = cache.num_heads
    dy = check_dy(dy, (n, t, e), cache.dtype)
    # node 8: y = Om W_outᵀ + b_out
    dw_out = dy.reshape(-1, e).T @ cache.o_merged.reshape(-1, e)  # (E, E)
    db_out = dy.sum(axis=(0, 1)) if cache.has_out_bias else None  # (E,)
    do = _split_heads(dy @ cache.out_proj_weight, h)  # (N, H, T, D)
    # node 7: O = P v
    dp = do @ cache.v.transpose(0, 1, 3, 2)  # (N, H, T, T)
    dv = cache.p.transpose(0, 1, 3, 2) @ do  # (N, H, T, D)
    # nodes 6-4: the softmax
    ds = softmax_vjp(dp, do, cache)  # (N, H, T, T)
    # node 3: S = s q kᵀ
    scale = 1.0 / math.sqrt(e // h)  # a Python float: keeps float32 float32
    dq = scale * (ds @ cache.k)  # (N, H, T, D)
    dk = scale * (ds.transpose(0, 1, 3, 2) @ cache.q)
    # node 2: split heads
    dqkv = np.concatenate([_merge_heads(dq), _merge_heads(dk), _merge_heads(dv)], axis=-1)  # (N, T, 3E)
    # node 1: qkv = x W_inᵀ + b_in
    dw_in = dqkv.reshape(-1, 3 * e).T @ cache.x.reshape(-1, e)  # (3E, E)
    db_in = dqkv.sum(axis=(0, 1)) if cache.has_in_bias else None  # (3E,)
    dx = dqkv @ cache.in_proj_weight  # (N, T, E)
    return dx, dw_in, db_in, dw_out, db_out


def multihead_attention_backward(dy, cache: AttentionCache):
    """Exact gradients with the fused softmax backward ``dS = P ⊙ (dP − rowsum(dO ⊙ O))``.

    Returns:
        ``(dx, din_proj_weight, din_proj_bias, dout_proj_weight, dout_proj_bias)``, shaped like the inputs
        (``None`` for an absent bias).
    """
    return _backward(dy, cache, _softmax_vjp_fused)


def multihead_attention_backward_staged(dy, cache: AttentionCache):
    """The same gradients, the softmax differentiated node by node (6, 5, 4 of the table): for teaching and tests."""
    return _backward(dy, cache, _softmax_vjp_staged)


register("multihead_attention", "numpy", multihead_attention_forward, multihead_attention_backward)
