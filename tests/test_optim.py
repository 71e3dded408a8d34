"""Optimizers, schedules and clipping against independent transcriptions of their update rules.

Each reference below is written from the published rule (PyTorch's documented algorithms for SGD/Adam/AdamW, the
clovaai/AdamP reference code for SGDP/AdamP), on plain dicts of arrays, with the projection computed row by row in
a Python loop, so that it shares no code with :mod:`normref.optim`. Updates are compared over several steps with
random gradients; the only differences allowed are float64 rounding (tolerance 1e-12 relative, the operations being
the same up to reassociation).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from normref.nn import Linear, Sequential
from normref.optim import (SGD, SGDP, Adam, AdamP, AdamW, Chain, Constant, CosineDecay, LinearWarmup, LRScheduler,
                           MultiStepDecay, StepDecay, clip_grad_norm, grad_norm, projection)

TOL = 1e-12


def make_model(dtype=np.float64):
    return Sequential(Linear(5, 4, rng=1, dtype=dtype), Linear(4, 3, rng=2, dtype=dtype))


def params_of(model):
    return {name: np.array(p, copy=True) for name, p in model.named_parameters()}


def set_grads(model, grads):
    for module, prefix in model._modules_with_prefix():
        for key in module.params:
            module.grads[key] = np.array(grads[prefix + key], dtype=module.params[key].dtype)


def grad_sequence(model, steps, seed):
    rng = np.random.default_rng(seed)
    return [{name: rng.normal(size=p.shape) for name, p in model.named_parameters()} for _ in range(steps)]


def run_both(model, opt, ref_step, grads_seq):
    """Run the optimizer and the reference side by side; return the max relative difference over all steps and the
    reference's per-parameter state."""
    ref_params, ref_state, worst = params_of(model), {}, 0.0
    for t, grads in enumerate(grads_seq, start=1):
        set_grads(model, grads)
        opt.step()
        for name in ref_params:
            ref_params[name] = ref_step(name, ref_params[name], grads[name], ref_state.setdefault(name, {}), t)
        for name, p in model.named_parameters():
            worst = max(worst, np.max(np.abs(p - ref_params[name])) / np.max(np.abs(ref_params[name])))
    return worst, ref_state


# -- independent transcriptions ---------------------------------------------------------------------------------------
def ref_sgd(lr, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False):
    def step(name, p, g, st, t):
        if wd:
            g = g + wd * p
        if momentum:
            st["b"] = g.copy() if t == 1 else momentum * st["b"] + (1 - dampening) * g
            g = g + momentum * st["b"] if nesterov else st["b"]
        return p - lr * g
    return step


def ref_adam(lr, b1, b2, eps, wd=0.0, decoupled=False, amsgrad=False):
    def step(name, p, g, st, t):
        if wd and decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        st["m"] = b1 * st.get("m", 0) + (1 - b1) * g
        st["v"] = b2 * st.get("v", 0) + (1 - b2) * g ** 2
        v = st["v"]
        if amsgrad:
            st["vmax"] = np.maximum(st.get("vmax", 0), v)
            v = st["vmax"]
        m_hat = st["m"] / (1 - b1 ** t)
        return p - lr * m_hat / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return step


def ref_project(p, g, d, delta, eps):
    """The clovaai projection, row by row in Python loops. Returns (d', ratio applies?, view)."""
    if p.ndim < 2:
        return d, False, None
    for view in ("channel", "layer"):
        P = p.reshape(p.shape[0], -1) if view == "channel" else p.reshape(1, -1)
        G = g.reshape(P.shape)
        ok = True
        for r in range(P.shape[0]):
            cos = abs(float(P[r] @ G[r])) / (max(np.linalg.norm(G[r]), eps) * max(np.linalg.norm(P[r]), eps))
            ok = ok and cos < delta / math.sqrt(P.shape[1])
        if ok:
            D = d.reshape(P.shape).copy()
            for r in range(P.shape[0]):
                unit = P[r] / (np.linalg.norm(P[r]) + eps)
                D[r] = D[r] - unit * float(unit @ D[r])
            return D.reshape(p.shape), True, view
    return d, False, None


def ref_sgdp(lr, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False, eps=1e-8, delta=0.1, wd_ratio=0.1):
    def step(name, p, g, st, t):
        st["b"] = momentum * st.get("b", 0.0) + (1 - dampening) * g      # buffer starts at zero
        d = g + momentum * st["b"] if nesterov else st["b"]
        d, projected, st["view"] = ref_project(p, g, d, delta, eps)
        if wd > 0:
            p = p * (1 - lr * wd * (wd_ratio if projected else 1.0) / (1 - momentum))
        return p - lr * d
    return step


def ref_adamp(lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, delta=0.1, wd_ratio=0.1, nesterov=False):
    def step(name, p, g, st, t):
        st["m"] = b1 * st.get("m", 0) + (1 - b1) * g
        st["v"] = b2 * st.get("v", 0) + (1 - b2) * g ** 2
        denom = np.sqrt(st["v"]) / math.sqrt(1 - b2 ** t) + eps
        d = (b1 * st["m"] + (1 - b1) * g) / denom if nesterov else st["m"] / denom
        d, projected, st["view"] = ref_project(p, g, d, delta, eps)
        if wd > 0:
            p = p * (1 - lr * wd * (wd_ratio if projected else 1.0))
        return p - lr / (1 - b1 ** t) * d
    return step


def orthogonal_rows(p, g):
    """g with each row's component along the matching row of p removed (channel-view scale-invariant gradient)."""
    if p.ndim < 2:
        return g
    P, G = p.reshape(p.shape[0], -1), g.reshape(p.shape[0], -1)
    return (G - P * (P * G).sum(1, keepdims=True) / (P * P).sum(1, keepdims=True)).reshape(p.shape)


# -- update rules over several steps -----------------------------------------------------------------------------------
SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
]


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_transcription(kw):
    model = make_model()
    ref = ref_sgd(kw["lr"], kw.get("momentum", 0.0), kw.get("dampening", 0.0), kw.get("weight_decay", 0.0),
                  kw.get("nesterov", False))
    assert run_both(model, SGD(model, **kw), ref, grad_sequence(model, 6, seed=0))[0] < TOL


@pytest.mark.parametrize("cls,kw", [
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (AdamW, dict(lr=0.01)),
    (AdamW, dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.3, amsgrad=True)),
])
def test_adam_family_matches_transcription(cls, kw):
    model = make_model()
    b1, b2 = kw.get("betas", (0.9, 0.999))
    wd = kw.get("weight_decay", 1e-2 if cls is AdamW else 0.0)
    ref = ref_adam(kw["lr"], b1, b2, kw.get("eps", 1e-8), wd, decoupled=cls is AdamW, amsgrad=kw.get("amsgrad", False))
    assert run_both(model, cls(model, **kw), ref, grad_sequence(model, 7, seed=1))[0] < TOL


@pytest.mark.parametrize("orth", [False, True], ids=["random-grad", "orthogonal-grad"])
@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9, weight_decay=0.1),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05, wd_ratio=0.3),
    dict(lr=0.05, momentum=0.5, dampening=0.4, weight_decay=0.05, delta=0.5),
])
def test_sgdp_matches_transcription(kw, orth):
    model = make_model()
    ref = ref_sgdp(kw["lr"], kw.get("momentum", 0.0), kw.get("dampening", 0.0), kw.get("weight_decay", 0.0),
                   kw.get("nesterov", False), delta=kw.get("delta", 0.1), wd_ratio=kw.get("wd_ratio", 0.1))
    seq = grad_sequence(model, 6, seed=2)
    if orth:  # scale-invariant-like gradients, orthogonal to the weights they meet
        seq = _orthogonalized(model, SGDP(make_model(), **kw), seq)
    opt = SGDP(model, **kw)
    worst, ref_state = run_both(model, opt, ref, seq)
    assert worst < TOL
    assert opt.last_projection == {name: st["view"] for name, st in ref_state.items()}
    if orth:
        assert opt.last_projection == {"0.weight": "channel", "0.bias": None, "1.weight": "channel", "1.bias": None}


@pytest.mark.parametrize("orth", [False, True], ids=["random-grad", "orthogonal-grad"])
@pytest.mark.parametrize("kw", [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1, nesterov=True, wd_ratio=0.5),
])
def test_adamp_matches_transcription(kw, orth):
    model = make_model()
    b1, b2 = kw.get("betas", (0.9, 0.999))
    ref = ref_adamp(kw["lr"], b1, b2, wd=kw.get("weight_decay", 0.0), wd_ratio=kw.get("wd_ratio", 0.1),
                    nesterov=kw.get("nesterov", False))
    seq = grad_sequence(model, 6, seed=3)
    if orth:
        seq = _orthogonalized(model, AdamP(make_model(), **kw), seq)
    opt = AdamP(model, **kw)
    worst, ref_state = run_both(model, opt, ref, seq)
    assert worst < TOL
    assert opt.last_projection == {name: st["view"] for name, st in ref_state.items()}
    if orth:
        assert opt.last_projection == {"0.weight": "channel", "0.bias": None, "1.weight": "channel", "1.bias": None}


def _orthogonalized(model, shadow_opt, seq):
    """Gradients orthogonal (per row) to the weights they are applied to: run a shadow copy of the optimizer to
    know the weights at every step."""
    shadow, out = shadow_opt.model, []
    for grads in seq:
        current = params_of(shadow)
        grads = {n: orthogonal_rows(current[n], g) for n, g in grads.items()}
        out.append(grads)
        set_grads(shadow, grads)
        shadow_opt.step()
    # the shadow started from the same initialization as `model` (same seeds), so the weights coincide
    assert all(np.array_equal(a, b) for a, b in zip(params_of(make_model()).values(), params_of(model).values()))
    return out


# -- the projection: channel first, then layer, then none --------------------------------------------------------------
# The reference code normalizes with p/(‖p‖ + eps), so the projected d keeps a radial part: with d' = d − p̂⟨p̂, d⟩,
# ⟨d', p⟩ = ⟨d, p⟩·(1 − ‖p‖²/(‖p‖ + eps)²) ≈ ⟨d, p⟩·2·eps/‖p‖. The cosine between d' and p is therefore bounded by
# 2·eps/‖p‖·‖d‖/‖d'‖; the bound below doubles that (rounding adds ~1e-16). With eps = 0 the projection is exact to
# rounding, which the tests check separately.
def orthogonality_bound(p_rows, d, d_proj, eps):
    return 4 * eps / np.linalg.norm(p_rows, axis=-1).min() * np.linalg.norm(d) / np.linalg.norm(d_proj) + 1e-14


def _weight(rng, shape=(4, 6)):
    return rng.normal(size=shape) + 0.5


def test_projection_channel_view_passes():
    rng = np.random.default_rng(10)
    w = _weight(rng)
    g = orthogonal_rows(w, rng.normal(size=w.shape))          # every row orthogonal: channel test passes
    d = rng.normal(size=w.shape)
    d2, view = projection(w, g, d, delta=0.1, eps=1e-8)
    assert view == "channel"
    ref, _, ref_view = ref_project(w, g, d, 0.1, 1e-8)
    assert ref_view == "channel" and np.max(np.abs(d2 - ref)) < TOL
    cos = np.abs((d2 * w).sum(1)) / (np.linalg.norm(d2, axis=1) * np.linalg.norm(w, axis=1))
    assert cos.max() < orthogonality_bound(w, d, d2, 1e-8)    # the update is orthogonal to w, row by row
    assert not np.allclose(d2, d)                             # and it did change
    d0, _ = projection(w, g, d, delta=0.1, eps=0.0)
    cos0 = np.abs((d0 * w).sum(1)) / (np.linalg.norm(d0, axis=1) * np.linalg.norm(w, axis=1))
    assert cos0.max() < 1e-14


def test_projection_layer_view_only():
    rng = np.random.default_rng(11)
    w = _weight(rng)
    # radial parts that cancel over the layer: row r gets c_r·w_r with sum_r c_r‖w_r‖² = 0, plus tangent noise
    n2 = (w * w).sum(1)
    c = np.array([1.0, -1.0, 0.5, 0.0])
    c[3] = -(c[:3] * n2[:3]).sum() / n2[3]
    g = c[:, None] * w + 0.1 * orthogonal_rows(w, rng.normal(size=w.shape))
    assert abs((g * w).sum()) < 1e-12 * np.abs(g).max() * np.abs(w).max() * w.size
    d = rng.normal(size=w.shape)
    d2, view = projection(w, g, d, delta=0.1, eps=1e-8)
    assert view == "layer"
    ref, _, ref_view = ref_project(w, g, d, 0.1, 1e-8)
    assert ref_view == "layer" and np.max(np.abs(d2 - ref)) < TOL
    assert abs((d2 * w).sum()) / (np.linalg.norm(d2) * np.linalg.norm(w)) \
        < orthogonality_bound(w.reshape(1, -1), d, d2, 1e-8)                        # orthogonal as a whole
    assert np.abs((d2 * w).sum(1)).max() > 1e-3                                      # but not per row


def test_projection_neither_view():
    rng = np.random.default_rng(12)
    w = _weight(rng)
    g = w + 0.3 * rng.normal(size=w.shape)                     # far from orthogonal in both views
    d = rng.normal(size=w.shape)
    d2, view = projection(w, g, d, delta=0.1, eps=1e-8)
    assert view is None and d2 is d


def test_projection_threshold_is_strict_and_all_rows():
    """One row just above δ/√n makes the channel view fail (max over rows), and the layer view too here."""
    rng = np.random.default_rng(13)
    w = _weight(rng, (3, 8))
    g = orthogonal_rows(w, rng.normal(size=w.shape))
    target = 1.5 * 0.1 / math.sqrt(8)                          # cosine of row 0 set to 1.5× the threshold
    u, t = w[0] / np.linalg.norm(w[0]), g[0] / np.linalg.norm(g[0])
    g[0] = np.linalg.norm(g[0]) * (target * u + math.sqrt(1 - target ** 2) * t)
    _, view = projection(w, g, rng.normal(size=w.shape), delta=0.1)
    assert view == ref_project(w, g, np.zeros_like(w), 0.1, 1e-8)[2]
    assert view != "channel"
    _, view_loose = projection(w, g, rng.normal(size=w.shape), delta=0.2)   # threshold now 2/1.5 of the cosine
    assert view_loose == "channel"


def test_wd_ratio_applied_exactly_when_projected():
    lr, wd, mom, ratio = 0.1, 0.2, 0.5, 0.25
    for orth, expected_view in ((True, "channel"), (False, None)):
        model = Linear(6, 4, rng=0)
        w0, b0 = model.params["weight"].copy(), model.params["bias"].copy()
        rng = np.random.default_rng(5)
        gw = orthogonal_rows(w0, rng.normal(size=w0.shape)) if orth else w0 + rng.normal(size=w0.shape)
        gb = -b0 * 3.0  # a bias gradient; biases are never projected
        model.grads["weight"], model.grads["bias"] = gw, gb
        opt = SGDP(model, lr=lr, momentum=mom, weight_decay=wd, wd_ratio=ratio)
        opt.step()
        assert opt.last_projection == {"weight": expected_view, "bias": None}
        d = ref_project(w0, gw, gw, 0.1, 1e-8)[0]              # first step: buffer = g
        r = ratio if orth else 1.0
        assert np.allclose(model.params["weight"], w0 * (1 - lr * wd * r / (1 - mom)) - lr * d, rtol=0, atol=1e-14)
        assert np.allclose(model.params["bias"], b0 * (1 - lr * wd / (1 - mom)) - lr * gb, rtol=0, atol=1e-14)


def test_adamp_projected_update_orthogonal_per_row():
    model = Linear(7, 5, rng=3)
    rng = np.random.default_rng(4)
    opt = AdamP(model, lr=0.01)
    for _ in range(4):
        w = model.params["weight"]
        model.grads["weight"] = orthogonal_rows(w, rng.normal(size=w.shape))
        model.grads["bias"] = rng.normal(size=5)
        opt.step()
        delta = model.params["weight"] - w
        cos = np.abs((delta * w).sum(1)) / (np.linalg.norm(delta, axis=1) * np.linalg.norm(w, axis=1))
        assert opt.last_projection["weight"] == "channel"
        assert cos.max() < 4e-8 / np.linalg.norm(w, axis=1).min()   # eps-limited, see orthogonality_bound
        assert opt.last_projection["bias"] is None


def test_adam_update_is_not_orthogonal_without_projection():
    """The control for the test above: plain Adam on the same gradients has a radial component."""
    model = Linear(7, 5, rng=3)
    rng = np.random.default_rng(4)
    opt = Adam(model, lr=0.01)
    w = model.params["weight"]
    model.grads["weight"] = orthogonal_rows(w, rng.normal(size=w.shape))
    opt.step()
    delta = model.params["weight"] - w
    cos = np.abs((delta * w).sum(1)) / (np.linalg.norm(delta, axis=1) * np.linalg.norm(w, axis=1))
    assert cos.max() > 1e-3


def test_one_dimensional_params_never_projected():
    model = Linear(3, 4, rng=0)
    b = model.params["bias"]
    rng = np.random.default_rng(0)
    model.grads["bias"] = orthogonal_rows(b[None, :], rng.normal(size=(1, 4)))[0]   # orthogonal to b
    opt = AdamP(model, lr=0.1, weight_decay=0.1)
    opt.step()
    assert opt.last_projection["bias"] is None
    with pytest.raises(ValueError, match="ndim <= 1"):
        SGDP(model, lr=0.1, scale_invariant=["bias"])


def test_declared_scale_invariance_skips_the_test():
    model = make_model()
    rng = np.random.default_rng(7)
    grads = {n: p + rng.normal(size=p.shape) for n, p in model.named_parameters()}   # test would fail everywhere
    set_grads(model, grads)
    w0 = params_of(model)
    opt = SGDP(model, lr=0.1, scale_invariant={"0.weight": "channel"})
    opt.step()
    assert opt.last_projection == {"0.weight": "channel", "0.bias": None, "1.weight": None, "1.bias": None}
    delta, w = model[0].params["weight"] - w0["0.weight"], w0["0.weight"]
    cos = np.abs((delta * w).sum(1)) / (np.linalg.norm(delta, axis=1) * np.linalg.norm(w, axis=1))
    assert cos.max() < orthogonality_bound(w, grads["0.weight"], delta / 0.1, 1e-8)   # no momentum: d = g
    assert np.allclose(model[1].params["weight"], w0["1.weight"] - 0.1 * grads["1.weight"], atol=1e-15, rtol=0)
    opt = SGDP(model, lr=0.1, scale_invariant=["1.weight"])   # a plain collection means the layer view
    opt.step()
    assert opt.last_projection["1.weight"] == "layer"


# -- conventions: selection, assignment, dtype, checkpoint -------------------------------------------------------------
def test_selection_and_no_mutation():
    model = make_model()
    before = {n: p for n, p in model.named_parameters()}      # the arrays themselves, not copies
    copies = params_of(model)
    set_grads(model, grad_sequence(model, 1, seed=0)[0])
    SGD(model, lr=0.1, params=["0.weight", "1.bias"]).step()
    after = dict(model.named_parameters())
    for name in before:
        assert np.array_equal(before[name], copies[name])     # old arrays never written into
        assert np.array_equal(after[name], copies[name]) == (name not in ("0.weight", "1.bias"))
    with pytest.raises(ValueError, match="not parameters"):
        SGD(model, lr=0.1, params=["0.wieght"])
    opt = SGD(model, lr=0.1, params=lambda name, p: name.endswith("bias"))
    assert [n for n, _ in opt.named_parameters()] == ["0.bias", "1.bias"]


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW, SGDP, AdamP])
def test_float32_stays_float32(cls):
    model = make_model(np.float32)
    set_grads(model, grad_sequence(model, 1, seed=0)[0])
    opt = cls(model, lr=0.01, weight_decay=0.1)
    opt.step()
    opt.step()
    assert all(p.dtype == np.float32 for _, p in model.named_parameters())
    assert all(v.dtype == np.float32 for s in opt.state.values() for v in s.values() if isinstance(v, np.ndarray))


@pytest.mark.parametrize("cls,kw", [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)), (Adam, dict(lr=0.01, amsgrad=True)), (AdamW, dict(lr=0.01)),
    (SGDP, dict(lr=0.1, momentum=0.9, weight_decay=0.1)), (AdamP, dict(lr=0.01, weight_decay=0.1)),
])
def test_state_dict_resume_is_exact(cls, kw):
    seq = grad_sequence(make_model(), 6, seed=9)
    straight = make_model()
    opt = cls(straight, **kw)
    for grads in seq:
        set_grads(straight, grads)
        opt.step()
    first = make_model()
    opt1 = cls(first, **kw)
    for grads in seq[:3]:
        set_grads(first, grads)
        opt1.step()
    buffer = io.BytesIO()                                     # through np.savez, as a checkpoint would
    np.savez(buffer, **opt1.state_dict())
    buffer.seek(0)
    loaded = dict(np.load(buffer))
    resumed = make_model()
    resumed.load_state_dict(first.state_dict())
    opt2 = cls(resumed, lr=123.0) if cls is not SGD else cls(resumed, lr=123.0, momentum=0.1)
    opt2.load_state_dict(loaded)
    assert opt2.lr == kw["lr"] and opt2.step_count == 3
    for grads in seq[3:]:
        set_grads(resumed, grads)
        opt2.step()
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert np.array_equal(a, b), n
    with pytest.raises(ValueError, match="cannot load"):
        (SGD if cls is not SGD else Adam)(make_model(), lr=0.1).load_state_dict(loaded)


def test_bad_hyperparameters():
    model = make_model()
    with pytest.raises(ValueError, match="lr"):
        SGD(model, lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(model, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(model, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="betas"):
        Adam(model, betas=0.9)
    with pytest.raises(ValueError, match="eps"):
        AdamP(model, eps=0.0)
    with pytest.raises(TypeError, match="Module"):
        SGD("not a model", lr=0.1)
    with pytest.raises(TypeError, match="single string"):
        SGD(model, lr=0.1, params="0.weight")


# -- schedules ------------------------------------------------------------------------------------------------------
def test_schedule_values_at_known_steps():
    assert [StepDecay(3, 0.5)(t) for t in (0, 2, 3, 5, 6, 9)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    assert [MultiStepDecay([2, 5], 0.1)(t) for t in (0, 1, 2, 4, 5, 100)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rel=1e-15)
    cos = CosineDecay(8, final_factor=0.1)
    assert cos(0) == 1.0 and cos(8) == pytest.approx(0.1, abs=1e-15) and cos(20) == pytest.approx(0.1, abs=1e-15)
    assert cos(4) == pytest.approx(0.55, rel=1e-15)                           # halfway: the mean of 1 and 0.1
    assert cos(2) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-15)
    warm = LinearWarmup(4, start_factor=0.0)
    assert [warm(t) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert LinearWarmup(5)(0) == pytest.approx(1 / 3)                          # PyTorch LinearLR's default
    chain = Chain([LinearWarmup(2, start_factor=0.5), CosineDecay(4), Constant(0.0)], [2, 6])
    assert [chain(t) for t in (0, 1, 2, 4, 6, 7)] == pytest.approx([0.5, 0.75, 1.0, 0.5, 0.0, 0.0], abs=1e-15)
    product = LinearWarmup(2, start_factor=0.0) * StepDecay(1, 0.5)
    assert [product(t) for t in range(4)] == pytest.approx([0.0, 0.25, 0.25, 0.125])
    with pytest.raises(ValueError, match="increasing"):
        Chain([Constant(), Constant(), Constant()], [3, 3])
    with pytest.raises(ValueError, match="len"):
        Chain([Constant(), Constant()], [1, 2])
    with pytest.raises(ValueError, match="step"):
        StepDecay(2)(-1)


def test_lr_scheduler_drives_optimizer_and_resumes():
    opt = SGD(make_model(), lr=0.2)
    sched = LRScheduler(opt, Chain([LinearWarmup(2, start_factor=0.5), CosineDecay(4)], [2]))
    lrs = [opt.lr]
    for _ in range(6):
        sched.step()
        lrs.append(opt.lr)
    expected = [0.1, 0.15, 0.2, 0.1 * (1 + math.cos(math.pi / 4)), 0.1, 0.1 * (1 - math.cos(math.pi / 4)), 0.0]
    assert lrs == pytest.approx(expected, abs=1e-15)
    opt1 = SGD(make_model(), lr=0.2)
    sched1 = LRScheduler(opt1, Chain([LinearWarmup(2, start_factor=0.5), CosineDecay(4)], [2]))
    for _ in range(3):
        sched1.step()
    opt2 = SGD(make_model(), lr=0.2)
    sched2 = LRScheduler(opt2, Chain([LinearWarmup(2, start_factor=0.5), CosineDecay(4)], [2]))
    sched2.load_state_dict(sched1.state_dict())               # resume: the learning rate is re-applied
    assert opt2.lr == pytest.approx(expected[3], abs=1e-15)
    sched2.step()
    assert opt2.lr == pytest.approx(expected[4], abs=1e-15)


# -- clipping --------------------------------------------------------------------------------------------------------
def test_clip_grad_norm():
    model = make_model()
    grads = grad_sequence(model, 1, seed=4)[0]
    set_grads(model, grads)
    flat = np.concatenate([g.ravel() for g in grads.values()])
    total = float(np.sqrt((flat ** 2).sum()))
    assert grad_norm(model) == pytest.approx(total, rel=1e-15)
    returned = clip_grad_norm(model, 0.5)
    assert returned == pytest.approx(total, rel=1e-15)
    coef = 0.5 / (total + 1e-6)
    for name, g in model.named_grads():
        assert np.allclose(g, grads[name] * coef, rtol=1e-15, atol=0)     # one factor for all: direction kept
    assert grad_norm(model) == pytest.approx(0.5 * total / (total + 1e-6), rel=1e-14)
    set_grads(model, grads)
    clip_grad_norm(model, 10 * total)                                     # below the cap: untouched
    assert all(np.array_equal(g, grads[n]) for n, g in model.named_grads())
    assert grad_norm(model, np.inf) == pytest.approx(np.abs(flat).max())
    assert grad_norm(model, 1) == pytest.approx(np.abs(flat).sum())
    clip_grad_norm(model, 0.1, params=["1.bias"])                         # only the selected gradient changes
    assert np.linalg.norm(model[1].grads["bias"]) == pytest.approx(0.1, rel=1e-5)
    assert np.array_equal(model[0].grads["weight"], grads["0.weight"])
    model[0].grads["bias"] = model[0].grads["bias"] * np.nan
    with pytest.raises(FloatingPointError):
        clip_grad_norm(model, 1.0, error_if_nonfinite=True)


def test_clip_keeps_float32():
    model = make_model(np.float32)
    set_grads(model, grad_sequence(model, 1, seed=4)[0])
    clip_grad_norm(model, 0.1)
    assert all(g.dtype == np.float32 for _, g in model.named_grads())
