"""The attention's key-padding mask: zero weights on padded keys, padding cannot reach real positions, a query with
no key outputs the output bias, the fused and staged backward agree, PyTorch parity, bad masks, and the
Transformer's ``mask_padding``."""

import numpy as np
import pytest

from normref import nn
from normref.cli import main
from normref.models import build_transformer
from normref.ops.attention import (causal_mask, multihead_attention_backward, multihead_attention_backward_staged,
                                   multihead_attention_forward)
from normref.testing.gradcheck import check_layer
from normref.testing.specs.blocks import padding_mask
from normref.testing.specs.models import TokenProbe

TORCH_SKIP = 'PyTorch parity needs the optional extra "torch": pip install -e ".[torch]"'
N, T, E, H = 3, 5, 6, 2
PAD = padding_mask((N, T, E))     # trailing pads, two leading pads, one all-padding sequence


def params(rng, bias=True):
    w_in, w_out = rng.standard_normal((3 * E, E)) / np.sqrt(E), rng.standard_normal((E, E)) / np.sqrt(E)
    b_in, b_out = (rng.standard_normal(3 * E), rng.standard_normal(E)) if bias else (None, None)
    return w_in, b_in, w_out, b_out


def allowed(causal):
    ok = ~PAD[:, None, :] & np.ones((T, T), bool)                          # (N, T_query, T_key)
    return ok & causal_mask(T) if causal else ok


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_padded_keys_get_zero_weight_and_rows_without_keys_output_the_bias(causal):
    rng = np.random.default_rng(0)
    x, p = rng.standard_normal((N, T, E)), params(rng)
    y, cache = multihead_attention_forward(x, *p, num_heads=H, causal=causal, key_padding_mask=PAD)
    ok = allowed(causal)[:, None]                                           # (N, 1, T, T)
    assert np.all(cache.p[~np.broadcast_to(ok, cache.p.shape)] == 0)       # masked entries: exactly 0
    has_key = ok.any(axis=-1)                                               # (N, 1, T)
    np.testing.assert_allclose(cache.p.sum(-1)[np.broadcast_to(has_key, (N, H, T))], 1.0, rtol=1e-14)
    empty = ~has_key[:, 0]                                                  # (N, T) queries with no allowed key
    assert empty[2].all() and (empty[1, :2].all() == causal) and empty.sum() == T + 2 * causal
    np.testing.assert_array_equal(y[empty], np.broadcast_to(p[3], (empty.sum(), E)))   # y = out_proj_bias
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_padding_does_not_reach_real_positions(causal):
    rng = np.random.default_rng(1)
    x, p = rng.standard_normal((N, T, E)), params(rng)
    other = x.copy()
    other[PAD] = 100.0 * rng.standard_normal((PAD.sum(), E))                # new content at every pad position
    y, _ = multihead_attention_forward(x, *p, num_heads=H, causal=causal, key_padding_mask=PAD)
    y2, _ = multihead_attention_forward(other, *p, num_heads=H, causal=causal, key_padding_mask=PAD)
    np.testing.assert_allclose(y2[~PAD], y[~PAD], rtol=1e-13, atol=1e-13)
    # without the mask the pads are attended to, so the same change moves the real positions
    y, _ = multihead_attention_forward(x, *p, num_heads=H, causal=causal)
    y2, _ = multihead_attention_forward(other, *p, num_heads=H, causal=causal)
    assert np.max(np.abs(y2[~PAD] - y[~PAD])) > 1e-3


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_fused_and_staged_backward_agree_and_padded_keys_get_no_key_or_value_gradient(causal):
    rng = np.random.default_rng(2)
    x, p = rng.standard_normal((N, T, E)), params(rng)
    dy = rng.standard_normal((N, T, E))
    with np.errstate(all="raise"):                                          # no 0/0 in rows without keys
        _, cache = multihead_attention_forward(x, *p, num_heads=H, causal=causal, key_padding_mask=PAD)
        fused = multihead_attention_backward(dy, cache)
        staged = multihead_attention_backward_staged(dy, cache)
    for a, b in zip(fused, staged):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    # dx at a padded position comes through its own query only: dx_j = dq_j W_q (dk_j = dv_j = 0)
    w_q = p[0][:E]
    dq = _query_gradient(dy, cache)
    np.testing.assert_allclose(fused[0][PAD], (dq @ w_q)[PAD], rtol=1e-12, atol=1e-13)


def _query_gradient(dy, cache):
    """``dq`` merged to ``(N, T, E)``, by the fused formulas (for the check above)."""
    from normref.ops.attention import _merge_heads, _split_heads

    do = _split_heads(dy @ cache.out_proj_weight, H)
    dp = do @ cache.v.transpose(0, 1, 3, 2)
    delta = (do * _split_heads(cache.o_merged, H)).sum(-1, keepdims=True)
    ds = cache.p * (dp - delta)
    return _merge_heads(ds @ cache.k / np.sqrt(E // H))


def test_layer_takes_the_mask_per_call_and_float32_stays_float32():
    layer = nn.MultiheadSelfAttention(E, H, causal=True, rng=0)
    x = np.random.default_rng(3).standard_normal((N, T, E))
    y_masked = layer(x, key_padding_mask=PAD)
    dx = layer.backward(np.ones_like(y_masked))
    y_plain = layer(x)
    assert dx.shape == x.shape and np.max(np.abs(y_masked - y_plain)) > 1e-3
    y32 = layer(x.astype(np.float32), PAD)
    assert y32.dtype == np.float32 and layer.backward(np.ones_like(y32)).dtype == np.float32
    np.testing.assert_allclose(y32, y_masked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask,error,match", [
    (PAD[:, :-1], ValueError, r"shape \(N, T\) = \(3, 5\)"),
    (PAD[None], ValueError, "shape"),
    (PAD.astype(np.int64), TypeError, "dtype bool"),
    (PAD.astype(np.float64), TypeError, "dtype bool"),
    (PAD.tolist(), TypeError, "numpy.ndarray"),
], ids=["short", "3d", "int", "float", "list"])
def test_bad_masks_raise_naming_the_argument(mask, error, match):
    rng = np.random.default_rng(4)
    x, p = rng.standard_normal((N, T, E)), params(rng)
    with pytest.raises(error, match=match) as info:
        multihead_attention_forward(x, *p, num_heads=H, key_padding_mask=mask)
    assert "key_padding_mask" in str(info.value)
    with pytest.raises(error, match="key_padding_mask"):
        nn.MultiheadSelfAttention(E, H, rng=0)(x, key_padding_mask=mask)


# -- PyTorch ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_matches_torch_multihead_attention(causal):
    torch = pytest.importorskip("torch", reason=TORCH_SKIP)
    rng = np.random.default_rng(5)
    x, p = rng.standard_normal((N, T, E)), params(rng)
    dy = rng.standard_normal((N, T, E))
    y, cache = multihead_attention_forward(x, *p, num_heads=H, causal=causal, key_padding_mask=PAD)
    dx, dw_in, db_in, dw_out, db_out = multihead_attention_backward(dy, cache)

    mha = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for name, value in zip(("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"), p):
            mha.get_parameter(name).copy_(torch.from_numpy(value))
    mha.train()                                   # the training path (the eval fast path returns NaN for empty rows)
    xt = torch.from_numpy(x).requires_grad_()
    attn_mask = torch.from_numpy(~causal_mask(T)) if causal else None      # torch: True = not allowed
    yt, _ = mha(xt, xt, xt, key_padding_mask=torch.from_numpy(PAD), attn_mask=attn_mask, need_weights=False)
    yt.backward(torch.from_numpy(dy))
    # every row, those without a key included: torch gives them 0 before out_proj too
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    for ours, name in [(dw_in, "in_proj_weight"), (db_in, "in_proj_bias"), (dw_out, "out_proj.weight"),
                       (db_out, "out_proj.bias")]:
        np.testing.assert_allclose(ours, mha.get_parameter(name).grad.numpy(), rtol=1e-11, atol=1e-12, err_msg=name)


def test_rows_without_keys_match_torch_scaled_dot_product_attention():
    torch = pytest.importorskip("torch", reason=TORCH_SKIP)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, T, E))
    w_in = rng.standard_normal((3 * E, E))
    w_out = np.eye(E)                                                       # y = merged heads: O itself
    y, cache = multihead_attention_forward(x, w_in, None, w_out, None, num_heads=H, causal=True,
                                           key_padding_mask=PAD)
    ok = torch.from_numpy(allowed(True)[:, None])                          # SDPA: True = allowed
    q, k, v = (torch.from_numpy(np.ascontiguousarray(a)) for a in (cache.q, cache.k, cache.v))
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=ok)
    np.testing.assert_allclose(cache.o_merged, o.transpose(1, 2).reshape(N, T, E).numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(y[~allowed(True).any(-1)], 0.0)


# -- the Transformer -------------------------------------------------------------------------------------------------
def test_transformer_mask_padding_makes_logits_independent_of_the_padding():
    tokens = np.array([[3, 4, 5, 6], [7, 8, 9, 2]])

    def padded(model, count, fill=0):
        return model(np.concatenate([tokens, np.full((2, count), fill, np.int64)], axis=1))

    masked = build_transformer(11, 3, 10, norm="layer", d_model=8, pad_id=0, mask_padding=True, seed=1)
    np.testing.assert_allclose(padded(masked, 2), padded(masked, 6), rtol=1e-12, atol=1e-12)
    plain = build_transformer(11, 3, 10, norm="layer", d_model=8, pad_id=0, seed=1)
    assert np.max(np.abs(padded(plain, 2) - padded(plain, 6))) > 1e-6       # the default still attends to pads
    # float embeddings with an explicit `valid`: the content of the pad positions does not matter either
    table = masked.children["token_embedding"].params["weight"]
    ids = np.concatenate([tokens, np.zeros((2, 3), np.int64)], axis=1)
    valid = ids != 0
    h = table[ids]
    junk = h.copy()
    junk[~valid] = np.random.default_rng(7).standard_normal((int((~valid).sum()), 8))
    np.testing.assert_allclose(masked(h, valid), masked(junk, valid), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="valid must have shape"):
        masked(h, valid[:, :-1])


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_transformer_with_mask_padding_passes_the_gradient_check(norm):
    # with BatchNorm the biases that add to the residual stream have an exactly zero gradient (see build_transformer),
    # where a norm-relative error means nothing: leave them out
    model = build_transformer(7, 3, max_len=5, norm=norm, d_model=4, num_heads=2, num_layers=1, pad_id=0,
                              mask_padding=True, bias=norm != "batch", seed=0)
    probe = TokenProbe(model, (2, 5, 4))
    probe.tokens[1, :2] = 0                                 # leading pads too (sequence 0 has trailing ones)
    rng = np.random.default_rng(8)
    report = check_layer(probe, rng.standard_normal((2, 5, 4)), rng=rng, methods=("central", "complex"))
    assert report.passed, report.table()


def test_cli_mask_padding(capsys):
    assert main(["train", "--model", "mlp", "--data", "blobs", "--mask-padding", "--quiet"]) == 2
    assert "--mask-padding applies to --model transformer only" in capsys.readouterr().err
