"""Seed layers on the "numba" backend against the NumPy reference: BCN, EvoNorm-B0/S0, (scaled) WS, PowerNorm,
DyT, test-time BN, Unified Norm, Region Norm.

Each has its own kernel module in normref/kernels/numba_cpu/ (BCN fuses its BatchNorm and GroupNorm stages).
Agreement is the norm-relative error max|a-b|/max|b| of y and every gradient: <= 1e-12 in float64, <= 1e-5 in float32
(the same tolerances, and reasons, as tests/test_backend_numba.py). The gradient checker runs on the seed specs.
"""

import numpy as np
import pytest

from normref import functional as F
from normref.testing.determinism import assert_bitwise_repeatable
from normref.testing.gradcheck import norm_rel_error
from normref.testing.specs import all_specs, check

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def run(backend, x, params, dy, **hyper):
    y, cache = F.forward("batch_channel_norm", x, *params, backend=backend, **hyper)
    return y, cache, F.backward("batch_channel_norm", dy, cache)


# Every GroupNorm-stage group holds >= 4 values: with 2 values (e.g. (5, 6), G=3) or with N=1, G=C (the BN stage
# then already normalizes each group) the stage's output barely depends on its input, dx is rounding noise ~1e-10,
# and a relative comparison of noise is meaningless.
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,groups", [((3, 6, 5, 3), 3), ((5, 12), 3), ((2, 4, 7), 2), ((3, 4, 700), 2)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("given", [False, True])
def test_batch_channel_norm_agrees(shape, groups, affine, given, dtype):
    rng = np.random.default_rng(0)
    c = shape[1]
    x = (4 * rng.standard_normal(shape) + 7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = ([rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype),
               rng.standard_normal(groups).astype(dtype), rng.standard_normal(groups).astype(dtype)]
              if affine else [None] * 4)
    stats = (rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 3, c).astype(dtype)) if given else None
    y_ref, _, grads_ref = run("numpy", x, params, dy, num_groups=groups, stats=stats)
    y, cache, grads = run("numba", x, params, dy, num_groups=groups, stats=stats)
    assert cache.backend == "numba" and y.dtype == dtype
    assert norm_rel_error(y, y_ref) <= TOL[dtype]
    for got, want in zip(grads, grads_ref):
        if want is None:
            assert got is None
            continue
        assert got.shape == want.shape and got.dtype == want.dtype
        assert norm_rel_error(got, want) <= TOL[dtype]


def test_batch_channel_norm_rejects_complex():
    x = np.ones((2, 4, 3), complex)
    with pytest.raises(TypeError, match="x must have a float32 or float64 dtype"):
        F.forward("batch_channel_norm", x, backend="numba", num_groups=2)
    with pytest.raises(TypeError, match="group_gamma"):
        F.forward("batch_channel_norm", x.real, None, None, np.ones(2, complex), backend="numba", num_groups=2)


SPECS = [s for s in all_specs() if s.op == "batch_channel_norm"]
CASES = [(s, mode, affine) for s in SPECS for mode in s.modes for affine in s.affine]


def test_specs_exist():
    assert len(SPECS) >= 1


@pytest.mark.parametrize("spec,mode,affine", CASES, ids=[f"{s.name}-{m}-affine{a}" for s, m, a in CASES])
def test_gradcheck_on_numba(spec, mode, affine):
    report = check(spec, mode=mode, affine=affine, backend="numba")
    assert report.passed, "\n" + report.table()


# ---------------------------------------------------------------------------------------------------------------
# EvoNorm-B0 / S0, Weight Standardization / Scaled WS, PowerNorm (exact and surrogate backward, pad_mask)


from normref import nn  # noqa: E402
from normref._registry import available_op_backends, get_impl  # noqa: E402
from normref.ops.power_norm import update_running_phi  # noqa: E402
from normref.testing.gradcheck import check_function  # noqa: E402


def assert_close(got, want, dtype, what=""):
    if want is None:
        assert got is None, what
        return
    assert got.shape == want.shape and got.dtype == want.dtype, what
    err = norm_rel_error(got, want)
    assert err <= TOL[dtype], (what, err)


def compare(op, x, params, dy, dtype, **hyper):
    """Forward and backward on both backends; y and every gradient agree. Returns both caches."""
    y_ref, cache_ref = F.forward(op, x, *params, backend="numpy", **hyper)
    y, cache = F.forward(op, x, *params, backend="numba", **hyper)
    assert cache.backend == "numba" and y.dtype == np.dtype(dtype) and y.shape == np.shape(x)
    assert_close(y, y_ref, dtype, "y")
    grads_ref, grads = F.backward(op, dy, cache_ref), F.backward(op, dy, cache)
    assert len(grads) == len(grads_ref)
    for i, (got, want) in enumerate(zip(grads, grads_ref)):
        assert_close(got, want, dtype, f"gradient {i}")
    return cache, cache_ref


def evo_input(rng, shape, dtype):
    """Zero-mean input with channel 0 scaled down, so both branches of B0's max are active (see its spec)."""
    x = rng.standard_normal(shape)
    x[:, 0] *= 0.2
    return x.astype(dtype)


EVO_SHAPES = [(4, 3, 5), (2, 6, 3, 4), (3, 4, 700), (1, 4, 3), (5, 2, 3, 2, 3)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", EVO_SHAPES, ids=["x".join(map(str, s)) for s in EVO_SHAPES])
@pytest.mark.parametrize("op", ["evonorm_b0", "evonorm_s0"])
def test_evonorm_agrees(op, shape, dtype):
    rng = np.random.default_rng(0)
    c = shape[1]
    x, dy = evo_input(rng, shape, dtype), rng.standard_normal(shape).astype(dtype)
    gamma, beta, v = (rng.standard_normal(c).astype(dtype) for _ in range(3))
    groups = 2 if c % 2 == 0 else 1
    hyper = {"num_groups": groups} if op == "evonorm_s0" else {}
    batch = op == "evonorm_s0" or x.size // c >= 2
    if batch:  # training: batch statistics (B0: and the batch variance the running update reads)
        cache, cache_ref = compare(op, x, [gamma, beta, v], dy, dtype, **hyper)
        if op == "evonorm_b0":
            assert_close(cache.batch_var, cache_ref.batch_var, dtype, "batch_var")
            assert cache.x.size // cache.x.shape[1] == cache_ref.x.size // cache_ref.x.shape[1]
    stat_shape = (c,) if op == "evonorm_b0" else (shape[0], groups)
    stats = (None, rng.uniform(0.5, 2.0, stat_shape).astype(dtype))  # eval (B0: running_var) / frozen (S0)
    compare(op, x, [gamma, beta, v], dy, dtype, stats=stats, **hyper)
    # affine off, and gamma without beta
    if batch:
        compare(op, x, [None, None, v], dy, dtype, **hyper)
        compare(op, x, [gamma, None, v], dy, dtype, **hyper)


def test_evonorm_affine_only_and_validation():
    """``v=None`` is the affine only (the reference's NumPy, recorded as "numba"); complex input is refused."""
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
    for op, hyper in (("evonorm_b0", {}), ("evonorm_s0", {"num_groups": 2})):
        compare(op, x, [rng.standard_normal(4), rng.standard_normal(4), None], dy, np.float64, **hyper)
        with pytest.raises(TypeError, match="x must have a float32 or float64 dtype"):
            F.forward(op, x.astype(complex), None, None, np.ones(4), backend="numba", **hyper)
        with pytest.raises(TypeError, match="v must"):
            F.forward(op, x, None, None, np.ones(4, complex), backend="numba", **hyper)
        _, cache = F.forward(op, x, None, None, np.ones(4), backend="numba", **hyper)
        with pytest.raises(TypeError, match="dy must be real"):
            F.backward(op, dy.astype(complex), cache)
    with pytest.raises(ValueError, match="num_groups must divide"):
        F.forward("evonorm_s0", x, backend="numba", num_groups=3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.forward("evonorm_b0", np.ones((1, 4, 1)), None, None, np.ones(4), backend="numba")


def test_evonorm_b0_layer_running_var_like_numpy():
    rng = np.random.default_rng(2)
    ref, fast = nn.EvoNormB0(3), nn.EvoNormB0(3, backend="numba")
    for name in ("gamma", "beta", "v"):
        fast.params[name][...] = ref.params[name][...] = rng.standard_normal(3)
    for _ in range(3):
        x, dy = evo_input(rng, (4, 3, 5), np.float64), rng.standard_normal((4, 3, 5))
        assert norm_rel_error(fast.forward(x), ref.forward(x)) <= 1e-12
        assert norm_rel_error(fast.backward(dy), ref.backward(dy)) <= 1e-12
    assert fast.buffers["num_batches_tracked"] == ref.buffers["num_batches_tracked"] == 3
    assert norm_rel_error(fast.buffers["running_var"], ref.buffers["running_var"]) <= 1e-12
    for name in ("gamma", "beta", "v"):  # accumulated over the three steps
        assert norm_rel_error(fast.grads[name], ref.grads[name]) <= 1e-12
    ref.eval(), fast.eval()
    x = evo_input(rng, (2, 3, 5), np.float64)
    assert norm_rel_error(fast.forward(x), ref.forward(x)) <= 1e-12


WS_CASES = [  # (op, keyword arguments, weight scale): the named variants; scale 1e-4 puts every row on the floor
    ("weight_standardization", {}, 3.0),
    ("weight_standardization", {"unbiased": True, "eps_mode": "outside"}, 3.0),
    ("weight_standardization", {"eps_mode": "floor", "eps": 1e-3}, 0.01),
    ("scaled_weight_standardization", {"gamma": 1.7139588594436646}, 3.0),
    ("scaled_weight_standardization", {}, 1e-4),
    ("scaled_weight_standardization", {"eps_mode": "inside"}, 3.0),
    ("scaled_weight_standardization", {"eps_mode": "outside", "unbiased": True}, 3.0),
]
WS_SHAPES = [(4, 3, 3, 3), (5, 7), (37, 1100), (3, 2, 5)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", WS_SHAPES, ids=["x".join(map(str, s)) for s in WS_SHAPES])
@pytest.mark.parametrize("op,hyper,scale", WS_CASES, ids=[f"{op[:6]}-{i}" for i, (op, _, _) in enumerate(WS_CASES)])
def test_weight_standardization_agrees(op, hyper, scale, shape, dtype):
    rng = np.random.default_rng(3)
    w = (scale * rng.standard_normal(shape) + scale / 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gain = rng.standard_normal(shape[0]).astype(dtype)
    for params in ([gain], [None]):
        compare(op, w, params, dy, dtype, **hyper)
    stats = (rng.standard_normal(shape[0]).astype(dtype), rng.uniform(0.5, 2, shape[0]).astype(dtype))
    compare(op, w, [gain], dy, dtype, stats=stats, **hyper)


def test_weight_standardization_floor_branch_is_exercised():
    """The floor case above really is on the floor (k = 0 for every row) on both backends."""
    w = 1e-4 * np.random.default_rng(4).standard_normal((5, 7))
    _, cache = F.forward("scaled_weight_standardization", w, backend="numba")
    _, cache_ref = F.forward("scaled_weight_standardization", w, backend="numpy")
    assert np.all(cache.k == 0) and np.all(cache_ref.k == 0)


def test_weight_standardization_validation():
    w = np.ones((3, 4))
    with pytest.raises(TypeError, match="w must have a float32 or float64 dtype"):
        F.forward("weight_standardization", w.astype(complex), backend="numba")
    with pytest.raises(TypeError, match="gain"):
        F.forward("scaled_weight_standardization", w, np.ones(3, complex), backend="numba")
    with pytest.raises(ValueError, match="eps_mode"):
        F.forward("weight_standardization", w, backend="numba", eps_mode="under")
    with pytest.raises(ValueError, match="fan-in of at least 2"):
        F.forward("weight_standardization", np.ones((3, 1)), backend="numba")
    with pytest.raises(TypeError, match="gamma must be a finite real number"):
        F.forward("scaled_weight_standardization", w, backend="numba", gamma=float("nan"))
    with pytest.raises(TypeError, match="stats must be real"):
        F.forward("weight_standardization", w, backend="numba", stats=(np.zeros(3, complex), np.ones(3)))


PN_CASES = [((4, 4, 5), 2), ((6, 4), 2), ((2, 6, 3, 2), 3), ((3, 8, 700), 4), ((1, 4, 33), 1), ((35, 4, 3), 2),
            ((2, 6, 7), 2), ((1, 6, 3, 5), 3)]


def pn_mask(rng, shape, frac=0.3):
    """A random padding mask ``(N, *spatial)`` (True = padding) with position 0 kept, so the statistic is defined."""
    pad = rng.random((shape[0],) + shape[2:]) < frac
    pad.flat[0] = False
    return pad


def pn_data(rng, shape, dtype):
    c = shape[1]
    x = (2 * rng.standard_normal(shape) + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    return x, dy, gamma, beta


def approx_both(dy, cache, cache_ref, ema, dtype, **options):
    """The surrogate on both backends from the same ``ema_gz``: dx, dgamma, dbeta and the new ema_gz agree."""
    got = get_impl("power_norm_approx", "numba").backward(dy, cache, ema, **options)
    want = get_impl("power_norm_approx", "numpy").backward(dy, cache_ref, ema, **options)
    assert len(got) == len(want) == 4
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, dtype, f"approx output {i}")
    return got, want


# Tolerances: TOL (1e-12 float64, 1e-5 float32, norm-relative), for the reasons of tests/test_backend_numba.py: the
# kernels sum in float64 lanes, the reference in the storage dtype, so the two differ by rounding only (measured
# here: <= 6e-16 in float64, <= 6e-7 in float32). A masked q is Σ_kept/m here and mean(x'²·keep)·M/m there, and the
# surrogate's E update is (Σ g z - ν Σ z²)/M here and mean(A z) there: rounding again, the same bounds.
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,groups", PN_CASES, ids=["x".join(map(str, s)) for s, _ in PN_CASES])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_power_norm_agrees(shape, groups, masked, dtype):
    rng = np.random.default_rng(5)
    c = shape[1]
    x, dy, gamma, beta = pn_data(rng, shape, dtype)
    pad = pn_mask(rng, shape) if masked else None
    phi = (None, rng.uniform(0.5, 2, c).astype(dtype))  # after warmup and in eval: the running statistic
    ema = rng.standard_normal(c).astype(dtype)
    for params, stats in (([gamma, beta], None), ([None, None], None), ([gamma, None], None), ([gamma, beta], phi),
                          ([None, None], phi)):
        cache, cache_ref = compare("power_norm", x, params, dy, dtype, group_num=groups, stats=stats, pad_mask=pad)
        assert_close(cache.batch_q, cache_ref.batch_q, dtype, "batch_q")  # feeds the running update
        assert cache.count == cache_ref.count
        for denominator in ("batch", "forward"):
            approx_both(dy, cache, cache_ref, ema, dtype, alpha_bkw=0.7, denominator=denominator)


def test_power_norm_mask_changes_what_it_should():
    """The masked path is exercised, not equal to the unmasked one by accident: with padding, q and (in warmup) dx
    change, and y at a padded position is the unmasked formula with the masked statistic (padding is normalized)."""
    rng = np.random.default_rng(11)
    shape = (3, 4, 6)
    x, dy, gamma, beta = pn_data(rng, shape, np.float64)
    pad = pn_mask(rng, shape, 0.4)
    y_m, cache_m = F.forward("power_norm", x, gamma, beta, backend="numba", group_num=2, pad_mask=pad)
    y_u, cache_u = F.forward("power_norm", x, gamma, beta, backend="numba", group_num=2)
    assert norm_rel_error(cache_m.batch_q, cache_u.batch_q) > 1e-3
    assert norm_rel_error(F.backward("power_norm", dy, cache_m)[0], F.backward("power_norm", dy, cache_u)[0]) > 1e-3
    # y with the mask = y computed with the masked statistic given, at every position (padding included)
    y_given, _ = F.forward("power_norm", x, gamma, beta, backend="numba", group_num=2,
                           stats=(None, cache_m.batch_q.reshape(4)))
    assert norm_rel_error(y_m, y_given) <= 1e-15
    # with a given statistic the mask is irrelevant to the exact backward
    given = (None, np.ones(4))
    _, given_m = F.forward("power_norm", x, gamma, beta, backend="numba", group_num=2, pad_mask=pad, stats=given)
    _, given_u = F.forward("power_norm", x, gamma, beta, backend="numba", group_num=2, stats=given)
    assert np.array_equal(F.backward("power_norm", dy, given_m)[0], F.backward("power_norm", dy, given_u)[0])


@pytest.mark.parametrize("warm", [True, False])
def test_power_norm_masked_exact_backward_matches_finite_differences_on_numba(warm):
    """The numba exact backward with a mask against central differences of the numba forward itself (float64)."""
    rng = np.random.default_rng(12)
    x = 3.0 * rng.standard_normal((3, 4, 5)) + 1.0
    gamma, beta = 1.0 + 0.5 * rng.standard_normal(4), rng.standard_normal(4)
    hyper = dict(group_num=2, eps=1e-3, pad_mask=pn_mask(rng, (3, 4, 5), 0.4),
                 stats=None if warm else (None, rng.uniform(0.5, 2.0, 4)))
    y, cache = F.forward("power_norm", x, gamma, beta, backend="numba", **hyper)
    dy = rng.standard_normal(y.shape)
    dx, dgamma, dbeta = F.backward("power_norm", dy, cache)

    def f(x, gamma, beta):
        return F.forward("power_norm", x, gamma, beta, backend="numba", **hyper)[0]

    report = check_function(f, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": dgamma, "beta": dbeta},
                            dy, methods=("central",), title="numba masked")
    assert report.passed, report.table()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_power_norm_surrogate_over_steps_like_numpy(masked, dtype):
    """Five training steps at the op level, each backend carrying its own running_phi and ema_gz: warmup (steps 1-2,
    batch statistic) then the running statistic; the surrogate and the carried state agree at every step."""
    rng = np.random.default_rng(13)
    shape, c = (4, 6, 5), 6
    phi = {b: np.ones(c, dtype) for b in ("numpy", "numba")}
    ema = {b: np.zeros(c, dtype) for b in ("numpy", "numba")}
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    for step in range(1, 6):
        x, dy, _, _ = pn_data(rng, shape, dtype)
        pad = pn_mask(rng, shape) if masked else None
        out = {}
        for b in ("numpy", "numba"):
            stats = None if step <= 2 else (None, phi[b])
            y, cache = F.forward("power_norm", x, gamma, beta, backend=b, group_num=3, stats=stats, pad_mask=pad)
            phi[b] = update_running_phi(phi[b], cache.batch_q, step=step, warmup_iters=2)
            dx, dgamma, dbeta, ema[b] = get_impl("power_norm_approx", b).backward(dy, cache, ema[b], alpha_bkw=0.8)
            out[b] = (y, dx, dgamma, dbeta, ema[b], phi[b])
            exact = F.backward("power_norm", dy, cache)[0]
        for i, (a, w) in enumerate(zip(out["numba"], out["numpy"])):
            assert_close(a, w, dtype, f"step {step} output {i}")
        if step > 1:  # ema_gz is non-zero from step 2 on: the surrogate is really not the exact gradient here
            assert norm_rel_error(out["numba"][1], exact) > 1e-3


def test_power_norm_approx_layer_like_numpy():
    """PowerNorm(backward="approx") on numba against numpy over warmup, the running statistic, a masked step, two
    backwards through one cache (gradient accumulation, ema_gz updated twice), then eval (exact backward)."""
    rng = np.random.default_rng(14)
    ref = nn.PowerNorm(6, group_num=2, warmup_iters=2, alpha_bkw=0.8, backward="approx")
    fast = nn.PowerNorm(6, group_num=2, warmup_iters=2, alpha_bkw=0.8, backward="approx", backend="numba")
    for name in ("gamma", "beta"):
        fast.params[name][...] = ref.params[name][...] = rng.standard_normal(6)
    for step in range(5):
        x, dy = 2 * rng.standard_normal((3, 6, 7)) + 1, rng.standard_normal((3, 6, 7))
        pad = pn_mask(rng, x.shape) if step == 3 else None
        assert norm_rel_error(fast(x, pad_mask=pad), ref(x, pad_mask=pad)) <= 1e-12
        assert fast.cache.backend == "numba"
        for _ in range(2 if step == 1 else 1):
            assert norm_rel_error(fast.backward(dy), ref.backward(dy)) <= 1e-12
            assert norm_rel_error(fast.buffers["ema_gz"], ref.buffers["ema_gz"]) <= 1e-12
    assert fast.buffers["iters"] == ref.buffers["iters"] == 5
    assert np.abs(fast.buffers["ema_gz"]).max() > 1e-3  # the state really moved
    assert norm_rel_error(fast.buffers["running_phi"], ref.buffers["running_phi"]) <= 1e-12
    for name in ("gamma", "beta"):
        assert norm_rel_error(fast.grads[name], ref.grads[name]) <= 1e-12
    ema = fast.buffers["ema_gz"].copy()
    ref.eval(), fast.eval()
    x, dy = rng.standard_normal((2, 6, 7)), rng.standard_normal((2, 6, 7))
    assert norm_rel_error(fast.forward(x), ref.forward(x)) <= 1e-12
    assert norm_rel_error(fast.backward(dy), ref.backward(dy)) <= 1e-12
    assert np.array_equal(fast.buffers["ema_gz"], ema)  # eval's backward is exact: the surrogate state is untouched


def test_power_norm_layer_like_numpy():
    """Warmup, then the running statistic, then eval: outputs, dx, grads and running_phi agree over the steps."""
    rng = np.random.default_rng(6)
    ref = nn.PowerNorm(4, group_num=2, warmup_iters=2, backward="exact")
    fast = nn.PowerNorm(4, group_num=2, warmup_iters=2, backward="exact", backend="numba")
    for name in ("gamma", "beta"):
        fast.params[name][...] = ref.params[name][...] = rng.standard_normal(4)
    for step in range(4):
        x, dy = 2 * rng.standard_normal((3, 4, 6)) + 1, rng.standard_normal((3, 4, 6))
        pad = pn_mask(rng, x.shape) if step % 2 else None
        assert norm_rel_error(fast.forward(x, pad_mask=pad), ref.forward(x, pad_mask=pad)) <= 1e-12
        assert norm_rel_error(fast.backward(dy), ref.backward(dy)) <= 1e-12
    assert fast.buffers["iters"] == ref.buffers["iters"] == 4
    assert norm_rel_error(fast.buffers["running_phi"], ref.buffers["running_phi"]) <= 1e-12
    for name in ("gamma", "beta"):
        assert norm_rel_error(fast.grads[name], ref.grads[name]) <= 1e-12
    ref.eval(), fast.eval()
    x, dy = rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 6))
    assert norm_rel_error(fast.forward(x), ref.forward(x)) <= 1e-12
    assert norm_rel_error(fast.backward(dy), ref.backward(dy)) <= 1e-12


def test_power_norm_validation_like_the_reference():
    """Bad masks and bad surrogate arguments raise the reference's errors; complex input is refused."""
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
    bad_masks = [(np.zeros((2, 3)), TypeError, "pad_mask must be a boolean"),
                 (np.zeros((3, 2), bool), ValueError, r"shape of the positions \(N, \*spatial\) = \(2, 3\)"),
                 (np.ones((2, 3), bool), ValueError, "every position as padding")]
    for pad, exc, match in bad_masks:
        for backend in ("numpy", "numba"):
            with pytest.raises(exc, match=match):
                F.forward("power_norm", x, backend=backend, group_num=2, pad_mask=pad)
    _, cache = F.forward("power_norm", x, backend="numba", group_num=2)
    approx = get_impl("power_norm_approx", "numba").backward
    with pytest.raises(ValueError, match=r"ema_gz must have shape \(4,\)"):
        approx(dy, cache, np.zeros(3))
    with pytest.raises(TypeError, match="ema_gz must have a float32 or float64 dtype"):
        approx(dy, cache, np.zeros(4, complex))
    with pytest.raises(ValueError, match="denominator"):
        approx(dy, cache, np.zeros(4), denominator="running")
    with pytest.raises(ValueError, match="alpha_bkw"):
        approx(dy, cache, np.zeros(4), alpha_bkw=2.0)
    with pytest.raises(TypeError, match="dy must be real"):
        approx(dy.astype(complex), cache, np.zeros(4))
    with pytest.raises(TypeError, match="x must have a float32 or float64 dtype"):
        F.forward("power_norm", x.astype(complex), backend="numba", group_num=2)
    with pytest.raises(TypeError, match="gamma"):
        F.forward("power_norm", x, np.ones(4, complex), backend="numba", group_num=2)


def test_power_norm_approx_out_and_nothing_mutated():
    """``out=`` receives dx (the same values as a fresh array); the cache, dy and ema_gz are not modified."""
    rng = np.random.default_rng(15)
    x, dy, gamma, beta = pn_data(rng, (3, 4, 5), np.float64)
    pad = pn_mask(rng, x.shape)
    _, cache = F.forward("power_norm", x, gamma, beta, backend="numba", group_num=2, pad_mask=pad)
    before = [np.copy(a) for a in (cache.x, cache.scale, cache.keep, cache.sumsq, dy)]
    ema = rng.standard_normal(4)
    ema_before = ema.copy()
    approx = get_impl("power_norm_approx", "numba").backward
    dx, *_ = approx(dy, cache, ema)
    buffer = np.empty_like(x)
    dx_out, *_ = approx(dy, cache, ema, out=buffer)
    assert dx_out is buffer and np.array_equal(buffer, dx)
    for a, b in zip(before, (cache.x, cache.scale, cache.keep, cache.sumsq, dy)):
        assert np.array_equal(a, b)
    assert np.array_equal(ema, ema_before)


def test_power_norm_approx_is_dispatched_on_the_cache_backend():
    """The layer looks the surrogate up under "power_norm_approx" for its cache's backend; the registry lists it on
    numpy and numba (a backend without it raises NotImplementedError naming those, through get_impl)."""
    assert {"numpy", "numba"} <= set(available_op_backends("power_norm_approx"))
    layer = nn.PowerNorm(4, group_num=2, backward="approx", backend="numba")
    x = np.random.default_rng(16).standard_normal((2, 4, 3))
    layer.forward(x)
    layer.backward(np.ones_like(x))
    assert layer.cache.backend == "numba" and layer.buffers["ema_gz"].dtype == np.float64


NONCONTIG = [("evonorm_b0", (4, 3, 6), {}, 3), ("evonorm_s0", (3, 4, 6), {"num_groups": 2}, 3),
             ("weight_standardization", (5, 3, 6), {}, 1), ("scaled_weight_standardization", (5, 3, 6), {}, 1),
             ("power_norm", (3, 4, 6), {"group_num": 2}, 2)]


@pytest.mark.parametrize("op,shape,hyper,nparams", NONCONTIG, ids=[c[0] for c in NONCONTIG])
def test_seed_non_contiguous_inputs(op, shape, hyper, nparams):
    rng = np.random.default_rng(8)
    x = evo_input(rng, shape[:-1] + (2 * shape[-1],), np.float64)[..., ::2]  # strided view
    dy = np.asfortranarray(rng.standard_normal(shape))
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    params = [rng.standard_normal(2 * shape[1 if op[0] in "ep" else 0])[::2] for _ in range(nparams)]
    for dtype in (np.float64, np.float32):
        compare(op, x.astype(dtype), [p.astype(dtype) for p in params], dy.astype(dtype), dtype, **hyper)
    compare(op, x, params, dy, np.float64, **hyper)


# float32, 70·4·300 values = 336 KB: above the 256 KB under which a kernel runs on the calling thread only
DETERMINISM = [("evonorm_b0", (70, 4, 300), {}, 3), ("evonorm_s0", (70, 4, 300), {"num_groups": 2}, 3),
               ("scaled_weight_standardization", (70, 4, 300), {}, 1),
               ("power_norm", (70, 4, 300), {"group_num": 2}, 2),
               ("power_norm", (70, 4, 300), {"group_num": 2, "pad_mask": np.random.default_rng(17).random((70, 300))
                                             < 0.2}, 2)]


@pytest.mark.parametrize("op,shape,hyper,nparams", DETERMINISM,
                         ids=[c[0] + ("-mask" if "pad_mask" in c[2] else "") for c in DETERMINISM])
def test_seed_deterministic(op, shape, hyper, nparams):
    """Bitwise equal runs, on two threads and on one; more samples/rows than the 32 chunks; above the size at which
    the kernels go parallel."""
    rng = np.random.default_rng(9)
    x = evo_input(rng, shape, np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    params = [rng.standard_normal(shape[0] if "weight" in op else shape[1]).astype(np.float32) for _ in range(nparams)]

    def run_once():
        y, cache = F.forward(op, x, *params, backend="numba", **hyper)
        outputs = [y, *F.backward(op, dy, cache)]
        if op == "power_norm":  # and the surrogate, from a non-zero ema_gz
            outputs += get_impl("power_norm_approx", "numba").backward(dy, cache, np.linspace(-1, 1, shape[1]))
        return outputs

    assert_bitwise_repeatable(run_once)


SEED_OPS = ("evonorm_b0", "evonorm_s0", "weight_standardization", "scaled_weight_standardization", "power_norm")
SEED_CASES = [(s, mode, affine) for s in all_specs() if s.op in SEED_OPS for mode in s.modes for affine in s.affine]


def test_seed_specs_registered_on_numba():
    assert {s.op for s, _, _ in SEED_CASES} == set(SEED_OPS)
    for op in SEED_OPS:
        assert "numba" in available_op_backends(op)


@pytest.mark.parametrize("spec,mode,affine", SEED_CASES, ids=[f"{s.name}-{m}-affine{a}" for s, m, a in SEED_CASES])
def test_seed_gradcheck_on_numba(spec, mode, affine):
    report = check(spec, mode=mode, affine=affine, backend="numba")
    assert report.passed, "\n" + report.table()


# ---------------------------------------------------------------------------------------------------------------
# DyT (normref/kernels/numba_cpu/dyt.py) and test-time BN calibration, alpha_batch_norm (.../test_time_bn.py)

import re  # noqa: E402


def dyt_params(rng, channels, dtype, affine):
    """Random alpha (either sign), and gamma/beta for affine "both", gamma only for "gamma", neither for "none"."""
    alpha = rng.uniform(-1.5, 1.5, 1).astype(dtype)
    gamma = rng.standard_normal(channels).astype(dtype) if affine != "none" else None
    beta = rng.standard_normal(channels).astype(dtype) if affine == "both" else None
    return [alpha, gamma, beta]


# (shape, channels_last): both layouts of the kernel (gamma per column / per row), N = 1 and 2, 1-D input, an (N, C)
# and an (N, C, 1, 1) input with channels first (per-column layout), rows longer than one BLOCK (1024) of the
# backward's pieces in both layouts, more rows than the 32 chunks and more than DEPTH = 16 rows per chunk.
DYT_CASES = [((3, 4, 5), True), ((3, 4, 5), False), ((1, 7), True), ((1, 3, 5), False), ((2, 5), False), ((7,), True),
             ((2, 3, 1, 1), False), ((2, 3, 1100), False), ((37, 1100), True), ((600, 5), True)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("affine", ["both", "gamma", "none"])
@pytest.mark.parametrize("shape,channels_last", DYT_CASES,
                         ids=["x".join(map(str, s)) + ("-last" if cl else "-first") for s, cl in DYT_CASES])
def test_dyt_agrees(shape, channels_last, affine, dtype):
    rng = np.random.default_rng(20)
    x = (1.5 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = dyt_params(rng, shape[-1] if channels_last else shape[1], dtype, affine)
    y_ref, cache_ref = F.forward("dyt", x, *params, backend="numpy", channels_last=channels_last)
    y, cache = F.forward("dyt", x, *params, backend="numba", channels_last=channels_last)
    assert cache.backend == "numba"
    assert_close(y, y_ref, dtype, "y")
    dx, dalpha, dgamma, dbeta = F.backward("dyt", dy, cache)
    dx_ref, dalpha_ref, dgamma_ref, dbeta_ref = F.backward("dyt", dy, cache_ref)
    for got, want, what in ((dx, dx_ref, "dx"), (dgamma, dgamma_ref, "dgamma"), (dbeta, dbeta_ref, "dbeta")):
        assert_close(got, want, dtype, what)
    assert dalpha.shape == (1,) and dalpha.dtype == dtype
    if dtype == np.float64:
        assert_close(dalpha, dalpha_ref, dtype, "dalpha")
        return
    # float32 dalpha is ONE sum of random-sign terms over every element, so it can cancel to far below the terms:
    # relative to |dalpha| neither backend is within 1e-5 of the float64 truth (worst of 400 random draws:
    # 2.7e-5 this kernel, 2.9e-5 NumPy's own float32). The kernel's error bound is in Σ|terms| (_common.py), so
    # compare with the float64 reference at the same float32 values on that scale.
    wide = [None if p is None else p.astype(np.float64) for p in params]
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    _, cache64 = F.forward("dyt", x64, *wide, backend="numpy", channels_last=channels_last)
    exact = F.backward("dyt", dy64, cache64)[1][0]
    g = dy64 if cache64.gamma_b is None else dy64 * cache64.gamma_b
    scale = np.abs(g * x64 * (1 - cache64.t ** 2)).sum()
    assert abs(float(dalpha[0]) - exact) <= TOL[dtype] * scale, (float(dalpha[0]), exact, scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_dyt_tanh_agrees_with_numpy(dtype):
    """With α = 1 and no affine, y is the kernel's tanh of x (float64: Numba's np.tanh, the C library's; float32:
    ``_tanh.tanh_f32``, ≤ 0.5006 ulp): NumPy's np.tanh to ≤ 1e-12 / 1e-5 norm-relative, and within 4 ulp elementwise
    (each is within ~2 ulp of the exact value), over 8 decades, ±inf."""
    rng = np.random.default_rng(21)
    x = np.concatenate([rng.standard_normal(2000) * s for s in (1e-6, 1e-2, 1.0, 10.0, 100.0)]
                       + [[0.0, -0.0, np.inf, -np.inf, 20.0, -20.0]]).astype(dtype)
    y, _ = F.forward("dyt", x, np.ones(1, dtype), backend="numba")
    want = np.tanh(x)
    assert norm_rel_error(y, want) <= TOL[dtype]
    assert np.all(np.abs(y - want) <= 4 * np.spacing(np.abs(want)))
    assert y[-4] == 1 and y[-3] == -1


def test_dyt_out_and_nothing_mutated():
    """``out=`` receives y and dx (the same values as fresh arrays); x, the parameters, dy and the cache are not
    modified; an ``out`` overlapping an input is refused."""
    impl = get_impl("dyt", "numba")
    rng = np.random.default_rng(22)
    for channels_last in (True, False):
        x, dy = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
        params = dyt_params(rng, 5 if channels_last else 4, np.float64, "both")
        before = [np.copy(a) for a in (x, dy, *params)]
        y, cache = impl.forward(x, *params, channels_last=channels_last)
        cached = [np.copy(a) for a in (cache.x, cache.t, cache.alpha, cache.gamma)]
        grads = impl.backward(dy, cache)
        buffer, dx_buffer = np.empty_like(x), np.empty_like(x)
        y_out, cache_out = impl.forward(x, *params, channels_last=channels_last, out=buffer)
        grads_out = impl.backward(dy, cache_out, out=dx_buffer)
        assert y_out is buffer and np.array_equal(buffer, y)
        assert grads_out[0] is dx_buffer
        for a, b in zip(grads, grads_out):
            assert np.array_equal(a, b)
        for a, b in zip(before + cached, (x, dy, *params, cache.x, cache.t, cache.alpha, cache.gamma)):
            assert np.array_equal(a, b)
        with pytest.raises(ValueError, match="overlap"):
            impl.forward(x, *params, channels_last=channels_last, out=x)
        with pytest.raises(ValueError, match="overlap"):
            impl.backward(dy, cache, out=dy)


def test_dyt_validation_like_the_reference_and_complex_refused():
    x = np.ones((2, 3, 4))
    bad = [(x, [None], {}), (x, [np.ones(2)], {}), (x, [np.ones(1), np.ones(3)], {}),
           (np.ones(4), [np.ones(1)], {"channels_last": False}), (np.ones((2, 0)), [np.ones(1)], {})]
    for xx, params, hyper in bad:
        with pytest.raises((TypeError, ValueError)) as ref:
            F.forward("dyt", xx, *params, backend="numpy", **hyper)
        with pytest.raises(type(ref.value), match=re.escape(str(ref.value))):
            F.forward("dyt", xx, *params, backend="numba", **hyper)
    with pytest.raises(TypeError, match="x must have a float32 or float64 dtype, got int64"):
        F.forward("dyt", x.astype(np.int64), np.ones(1), backend="numba")
    for name, args in (("x", (x.astype(complex), np.ones(1))), ("alpha", (x, np.ones(1, complex))),
                       ("gamma", (x, np.ones(1), np.ones(4, complex))),
                       ("beta", (x, np.ones(1), None, np.ones(4, complex)))):
        with pytest.raises(TypeError, match=name):
            F.forward("dyt", *args, backend="numba")
    _, cache = F.forward("dyt", x, np.ones(1), backend="numba")
    with pytest.raises(TypeError, match="dy"):
        F.backward("dyt", x.astype(complex), cache)


@pytest.mark.parametrize("channels_last", [True, False])
def test_dyt_non_contiguous_inputs(channels_last):
    rng = np.random.default_rng(23)
    x = rng.standard_normal((3, 4, 12))[..., ::2]
    dy = np.asfortranarray(rng.standard_normal((3, 4, 6)))
    c = 6 if channels_last else 4
    params = [rng.uniform(0.2, 1.0, 2)[::2], rng.standard_normal(2 * c)[::2], rng.standard_normal(2 * c)[::2]]
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous and not params[1].flags.c_contiguous
    compare("dyt", x, params, dy, np.float64, channels_last=channels_last)


def source_stats_for(rng, channels, dtype):
    """Source statistics far from any test batch's (as the calibration specs use)."""
    return ((10 + 3 * rng.standard_normal(channels)).astype(dtype), (20 + 5 * rng.random(channels)).astype(dtype))


# w_test: a scalar, per channel, 0 (BatchNorm eval), 1 (BatchNorm train); linear and mixture variance; unbiased;
# stop-gradient; given (pinned) test statistics. "pc" stands for a per-channel weight, "given" for random stats.
ABN_HYPER = [dict(w_test=0.3), dict(w_test="pc"), dict(w_test=0.0), dict(w_test=1.0),
             dict(w_test=0.3, mixture_variance=True), dict(w_test="pc", mixture_variance=True),
             dict(w_test=0.4, unbiased=True), dict(w_test=0.4, unbiased=True, mixture_variance=True),
             dict(w_test=0.3, stats_grad=False), dict(w_test=0.6, mixture_variance=True, stats="given")]
ABN_SHAPES = [(6, 3, 4), (5, 2), (2, 3, 3, 2), (1, 4, 7), (2, 3, 1100)]


def abn_hyper(rng, hyper, channels, dtype):
    out = dict(hyper, source_stats=source_stats_for(rng, channels, dtype))
    if isinstance(out["w_test"], str):
        out["w_test"] = np.linspace(0.1, 0.9, channels)
    if out.get("stats") == "given":
        out["stats"] = (rng.standard_normal(channels).astype(dtype), rng.uniform(0.5, 3, channels).astype(dtype))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("hyper", ABN_HYPER, ids=["-".join(f"{k}{v}" for k, v in h.items()) for h in ABN_HYPER])
@pytest.mark.parametrize("shape", ABN_SHAPES, ids=["x".join(map(str, s)) for s in ABN_SHAPES])
def test_alpha_batch_norm_agrees(shape, hyper, affine, dtype):
    rng = np.random.default_rng(24)
    c = shape[1]
    x = (4 * rng.standard_normal(shape) + 7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = [rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)] if affine else []
    cache, cache_ref = compare("alpha_batch_norm", x, params, dy, dtype, **abn_hyper(rng, hyper, c, dtype))
    assert_close(cache.test_mean, cache_ref.test_mean, dtype, "test_mean")
    assert_close(cache.test_var, cache_ref.test_var, dtype, "test_var")


def test_alpha_batch_norm_limits_are_batch_norm():
    """w_test = 1 is BatchNorm with batch statistics, w_test = 0 BatchNorm with the source statistics, on "numba"."""
    rng = np.random.default_rng(25)
    x, dy = 3 * rng.standard_normal((4, 3, 5)) + 2, rng.standard_normal((4, 3, 5))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    src = source_stats_for(rng, 3, np.float64)
    for w, stats in ((1.0, None), (0.0, src)):
        y, cache = F.forward("alpha_batch_norm", x, gamma, beta, backend="numba", source_stats=src, w_test=w)
        y_bn, cache_bn = F.forward("batch_norm", x, gamma, beta, backend="numba", stats=stats)
        assert norm_rel_error(y, y_bn) <= 1e-13
        for got, want in zip(F.backward("alpha_batch_norm", dy, cache), F.backward("batch_norm", dy, cache_bn)):
            assert norm_rel_error(got, want) <= 1e-13


def test_alpha_batch_norm_out_and_nothing_mutated():
    impl = get_impl("alpha_batch_norm", "numba")
    rng = np.random.default_rng(26)
    x, dy = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    src, w = source_stats_for(rng, 4, np.float64), np.linspace(0.2, 0.8, 4)
    hyper = dict(source_stats=src, w_test=w, mixture_variance=True)
    before = [np.copy(a) for a in (x, dy, gamma, beta, *src, w)]
    y, cache = impl.forward(x, gamma, beta, **hyper)
    grads = impl.backward(dy, cache)
    buffer, dx_buffer = np.empty_like(x), np.empty_like(x)
    y_out, cache_out = impl.forward(x, gamma, beta, out=buffer, **hyper)
    grads_out = impl.backward(dy, cache_out, out=dx_buffer)
    assert y_out is buffer and np.array_equal(buffer, y) and grads_out[0] is dx_buffer
    for a, b in zip(grads, grads_out):
        assert np.array_equal(a, b)
    for a, b in zip(before, (x, dy, gamma, beta, *src, w)):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="overlap"):
        impl.forward(x, gamma, beta, out=x, **hyper)


def test_alpha_batch_norm_validation_like_the_reference_and_complex_refused():
    x, src = np.ones((2, 3, 4)), (np.zeros(3), np.ones(3))
    bad = [(x, dict(source_stats=src, w_test=1.5)), (x, dict(source_stats=src, w_test=np.ones(4))),
           (x, dict(source_stats=src, eps=-1.0)), (x, dict(source_stats=(np.zeros(3),))),
           (x, dict(source_stats=(np.zeros(3), None))), (np.ones((1, 3)), dict(source_stats=src, unbiased=True)),
           (np.ones(3), dict(source_stats=src)), (x, dict(source_stats=src, stats=(np.zeros(2), np.ones(2))))]
    for xx, hyper in bad:
        with pytest.raises((TypeError, ValueError)) as ref:
            F.forward("alpha_batch_norm", xx, backend="numpy", **hyper)
        with pytest.raises(type(ref.value), match=re.escape(str(ref.value))):
            F.forward("alpha_batch_norm", xx, backend="numba", **hyper)
    complex_src = (np.zeros(3, complex), np.ones(3))
    for name, args, hyper in (("x", (x.astype(complex),), dict(source_stats=src)),
                              ("gamma", (x, np.ones(3, complex)), dict(source_stats=src)),
                              ("source_stats", (x,), dict(source_stats=complex_src)),
                              ("stats", (x,), dict(source_stats=src, stats=complex_src))):
        with pytest.raises(TypeError, match=re.escape(name)):
            F.forward("alpha_batch_norm", *args, backend="numba", **hyper)
    _, cache = F.forward("alpha_batch_norm", x, backend="numba", source_stats=src)
    with pytest.raises(TypeError, match="dy"):
        F.backward("alpha_batch_norm", x.astype(complex), cache)


def test_alpha_batch_norm_non_contiguous_inputs():
    rng = np.random.default_rng(27)
    x = (4 * rng.standard_normal((3, 4, 12)) + 7)[..., ::2]
    dy = np.asfortranarray(rng.standard_normal((3, 4, 6)))
    params = [rng.standard_normal(8)[::2], rng.standard_normal(8)[::2]]
    src = tuple(s[::2] for s in source_stats_for(rng, 8, np.float64))
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous and not src[0].flags.c_contiguous
    compare("alpha_batch_norm", x, params, dy, np.float64, source_stats=src, w_test=0.3, mixture_variance=True)


# float32, 336 KB each: above the 256 KB under which a kernel runs on the calling thread only. DyT per column: 600
# rows = 32 chunks of 19 rows (> DEPTH); per row: 280 rows of 300 values.
DYT_ABN_DETERMINISM = [("dyt", (600, 140), {"channels_last": True}), ("dyt", (70, 4, 300), {"channels_last": False}),
                       ("alpha_batch_norm", (70, 4, 300), {"w_test": np.linspace(0.2, 0.8, 4),
                                                           "mixture_variance": True, "unbiased": True})]


@pytest.mark.parametrize("op,shape,hyper", DYT_ABN_DETERMINISM,
                         ids=[f"{op}-{'x'.join(map(str, s))}" for op, s, _ in DYT_ABN_DETERMINISM])
def test_dyt_and_alpha_batch_norm_deterministic(op, shape, hyper):
    """Bitwise equal results on two threads, again, and on one thread."""
    rng = np.random.default_rng(28)
    x = (2 * rng.standard_normal(shape) + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    if op == "dyt":
        params = dyt_params(rng, shape[-1] if hyper["channels_last"] else shape[1], np.float32, "both")
    else:
        params = [rng.standard_normal(shape[1]).astype(np.float32) for _ in range(2)]
        hyper = dict(hyper, source_stats=source_stats_for(rng, shape[1], np.float32))

    def run_once():
        y, cache = F.forward(op, x, *params, backend="numba", **hyper)
        return [y, *F.backward(op, dy, cache)]

    assert_bitwise_repeatable(run_once)


DYT_ABN_SPECS = {"DyT", "AlphaBatchNorm", "AlphaBatchNorm-sg", "AlphaBatchNorm-ttn"}
DYT_ABN_CASES = [(s, mode, affine) for s in all_specs() if s.name in DYT_ABN_SPECS
                 for mode in s.modes for affine in s.affine]


def test_dyt_and_alpha_batch_norm_registered_on_numba():
    assert {s.name for s, _, _ in DYT_ABN_CASES} == DYT_ABN_SPECS
    for op in ("dyt", "alpha_batch_norm"):
        assert "numba" in available_op_backends(op)


@pytest.mark.parametrize("spec,mode,affine", DYT_ABN_CASES,
                         ids=[f"{s.name}-{m}-affine{a}" for s, m, a in DYT_ABN_CASES])
def test_dyt_and_alpha_batch_norm_gradcheck_on_numba(spec, mode, affine):
    report = check(spec, mode=mode, affine=affine, backend="numba")
    assert report.passed, "\n" + report.table()


# ---------------------------------------------------------------------------------------------------------------
# Unified Normalization (exact backward, the code's surrogate "unified_norm_approx", pad_mask, the windowed state)

from normref.ops.unified_norm import (UnifiedNormGradState, UnifiedNormState, initial_grad_state,  # noqa: E402
                                      initial_state, update_state)


def un_state(rng, channels, window, iters, dtype=np.float64):
    """A forward state ``iters`` steps in, with a full window of plausible quadratic means (0.5 to 2)."""
    return UnifiedNormState(iters, rng.uniform(0.5, 2.0, channels).astype(dtype),
                            rng.uniform(0.5, 2.0, (window, channels)).astype(dtype), 0)


def un_modes(rng, channels):
    """Every mode of the op: ``name -> (hyperparameters, input scale, expected (skip, outlier, w == 1, r == 1))``."""
    return {
        "stateless": (dict(), 1.0, (True, False, True, True)),
        "eval": (dict(stats=(None, rng.uniform(0.5, 2.0, channels))), 1.0, (True, False, False, True)),
        "warmup": (dict(state=un_state(rng, channels, 3, 1), warmup_iters=4), 1.0, (False, False, True, True)),
        "smoothed": (dict(state=un_state(rng, channels, 3, 6), warmup_iters=3, compensation_floor=0), 1.0,
                     (False, False, False, False)),
        # the input scaled by 20: AM - GM of the window is far above rho·W_f, the filter fires on any dtype
        "outlier": (dict(state=un_state(rng, channels, 3, 6), warmup_iters=3, compensation_floor=0,
                         outlier_filtration=True), 20.0, (True, True, True, True)),
        "window1": (dict(state=un_state(rng, channels, 1, 6), warmup_iters=1, compensation_floor=0), 1.0,
                    (True, False, True, True)),
    }


def un_surrogate_both(dy, cache, cache_ref, grad_state, dtype, what, momentum=0.7):
    """The surrogate on both backends from the same grad_state: dx, dgamma, dbeta and the new state agree."""
    got = get_impl("unified_norm_approx", "numba").backward(dy, cache, grad_state, momentum=momentum)
    want = get_impl("unified_norm_approx", "numpy").backward(dy, cache_ref, grad_state, momentum=momentum)
    for i, (a, b) in enumerate(zip(got[:3], want[:3])):
        assert_close(a, b, dtype, f"{what} approx output {i}")
    for name, a, b in zip(UnifiedNormGradState._fields, got[3], want[3]):
        assert_close(a, b, dtype, f"{what} approx {name}")
    return got


UN_SHAPES = [(4, 3, 5), (1, 3, 7), (2, 5), (2, 3, 2, 3), (3, 4, 700), (1, 2, 1100), (5, 3, 1, 2, 3)]


# Tolerances: TOL (1e-12 float64, 1e-5 float32, norm-relative). The kernels sum in float64 lanes, the reference in
# the storage dtype; q with a mask is Σ_kept/m here and mean(x²·keep)·M/m there; λ is r γ rstd Σ dy·x / M here and
# mean(ĝ z) there; dx is a·dy - b·κ·x with float64 coefficients here: rounding only (measured: <= 1.3e-15 in float64,
# <= 3.5e-7 in float32).
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", UN_SHAPES, ids=["x".join(map(str, s)) for s in UN_SHAPES])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_unified_norm_agrees(shape, masked, dtype):
    """Every mode (stateless, eval, warmup, smoothed, outlier, window 1) with full, no and half affine: y, the exact
    gradients, the cache's statistics, the updated forward state and (training steps) the surrogate agree."""
    rng = np.random.default_rng(21)
    c = shape[1]
    x0, dy, gamma, beta = pn_data(rng, shape, dtype)
    pad = pn_mask(rng, shape) if masked else None
    grad_state = UnifiedNormGradState(rng.standard_normal(c), rng.standard_normal((2, c)))
    for mode, (hyper, scale, expected) in un_modes(rng, c).items():
        x = (scale * x0).astype(dtype)
        for params in ([gamma, beta], [None, None], [gamma, None]):
            what = f"{mode} affine={[p is not None for p in params]}"
            cache, cache_ref = compare("unified_norm", x, params, dy, dtype, pad_mask=pad, **hyper)
            assert (cache.skip, cache.outlier, bool(np.all(cache.stat_weight == 1)), bool(np.all(cache.r == 1))) \
                == expected, what
            assert (cache.skip, cache.outlier, cache.iters) == (cache_ref.skip, cache_ref.outlier, cache_ref.iters)
            assert_close(cache.sigma2, cache_ref.sigma2, dtype, what + " sigma2")
            assert_close(cache.r, cache_ref.r.reshape(c).astype(np.float64), np.float64 if dtype == np.float64
                         else np.float32, what + " r")
            if mode != "eval":
                assert_close(cache.batch_q, cache_ref.batch_q, dtype, what + " batch_q")
            if "state" in hyper:
                new, new_ref = update_state(hyper["state"], cache), update_state(hyper["state"], cache_ref)
                assert (new.iters, new.skip_counter) == (new_ref.iters, new_ref.skip_counter)
                assert_close(new.running_var, new_ref.running_var, dtype, what + " running_var")
                assert_close(new.buffer_x2, new_ref.buffer_x2, dtype, what + " buffer_x2")
                un_surrogate_both(dy, cache, cache_ref, grad_state, dtype, what)


@pytest.mark.parametrize("regime", ["warmup", "smoothed", "outlier", "eval"])
def test_unified_norm_masked_exact_backward_matches_finite_differences_on_numba(regime):
    """The numba exact backward with a mask against central differences of the numba forward itself (float64): the
    path through this step's q (w = 1 in warmup and on the outlier step, σ²/(W_f q) smoothed, 0 in eval)."""
    rng = np.random.default_rng(22)
    hyper, scale, _ = un_modes(rng, 4)[regime]
    x = scale * (2.0 * rng.standard_normal((3, 4, 5)) + 0.5)
    gamma, beta = 1.0 + 0.5 * rng.standard_normal(4), rng.standard_normal(4)
    hyper = dict(hyper, eps=1e-3, pad_mask=pn_mask(rng, (3, 4, 5), 0.4))
    y, cache = F.forward("unified_norm", x, gamma, beta, backend="numba", **hyper)
    dy = rng.standard_normal(y.shape)
    dx, dgamma, dbeta = F.backward("unified_norm", dy, cache)

    def f(x, gamma, beta):
        return F.forward("unified_norm", x, gamma, beta, backend="numba", **hyper)[0]

    report = check_function(f, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": dgamma, "beta": dbeta},
                            dy, methods=("central",), title=f"numba UN {regime}")
    assert report.passed, report.table()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_unified_norm_surrogate_over_steps_like_numpy(dtype):
    """Ten training steps at the op level, each backend carrying its own forward and backward state: windows (3, 2),
    T_w = 3, the compensation floor at 4, the outlier filter on, an outlier at step 7 (input times 20), a mask on
    odd steps. The forward, both backwards and both states agree at every step."""
    rng = np.random.default_rng(23)
    shape, c = (4, 3, 5), 3
    scales = np.array([1.0, 1.5, 2.0]).reshape(1, 3, 1)  # similar channel scales: the threshold rho·W_f stays small
    state = {b: initial_state(c, 3) for b in ("numpy", "numba")}
    grad_state = {b: initial_grad_state(c, 2) for b in ("numpy", "numba")}
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    seen = set()
    for step in range(1, 11):
        x = rng.standard_normal(shape) * scales * rng.uniform(0.8, 1.25)
        x = (20.0 * x if step == 7 else x).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        pad = pn_mask(rng, shape) if step % 2 else None
        out = {}
        for b in ("numpy", "numba"):
            y, cache = F.forward("unified_norm", x, gamma, beta, backend=b, state=state[b], warmup_iters=3,
                                 outlier_filtration=True, compensation_floor=4, pad_mask=pad)
            state[b] = update_state(state[b], cache, momentum=0.8)
            exact = F.backward("unified_norm", dy, cache)
            dx, dgamma, dbeta, grad_state[b] = get_impl("unified_norm_approx", b).backward(dy, cache, grad_state[b],
                                                                                           momentum=0.8)
            out[b] = (y, *exact, dx, dgamma, dbeta, *grad_state[b], state[b].running_var, state[b].buffer_x2)
        seen.add("outlier" if cache.outlier else "skip" if cache.skip else
                 "compensated" if np.any(cache.r != 1) else "smoothed" if np.any(cache.stat_weight != 1) else "batch")
        assert state["numba"].skip_counter == state["numpy"].skip_counter
        for i, (a, w) in enumerate(zip(out["numba"], out["numpy"])):
            assert_close(a, w, dtype, f"step {step} output {i}")
        if step > 4:  # smoothing and a non-zero ema_gz: the surrogate is really not the exact gradient here
            assert norm_rel_error(out["numba"][4], out["numba"][1]) > 1e-3
    assert {"batch", "outlier", "compensated"} <= seen, seen
    assert state["numba"].skip_counter == 1


@pytest.mark.parametrize("backward", ["approx", "exact"])
def test_unified_norm_layer_like_numpy(backward):
    """UnifiedNorm on numba against numpy over warmup, smoothed and compensated steps (a masked one, two backwards
    through one cache: gradient accumulation and, for approx, the backward state updated twice), then eval."""
    rng = np.random.default_rng(24)
    kw = dict(window_size=(2, 3), warmup_iters=2, compensation_floor=3, momentum=0.8, backward=backward)
    ref, fast = nn.UnifiedNorm(5, **kw), nn.UnifiedNorm(5, backend="numba", **kw)
    for name in ("gamma", "beta"):
        fast.params[name][...] = ref.params[name][...] = rng.standard_normal(5)
    for step in range(6):
        x, dy = 2 * rng.standard_normal((3, 5, 7)) + 1, rng.standard_normal((3, 5, 7))
        pad = pn_mask(rng, x.shape) if step == 3 else None
        assert norm_rel_error(fast(x, pad_mask=pad), ref(x, pad_mask=pad)) <= 1e-12
        assert fast.cache.backend == "numba"
        for _ in range(2 if step == 1 else 1):
            assert norm_rel_error(fast.backward(dy), ref.backward(dy)) <= 1e-12
        for name in ("running_var", "buffer_x2", "ema_gz", "buffer_gz"):
            assert norm_rel_error(fast.buffers[name], ref.buffers[name]) <= 1e-12, name
    assert fast.buffers["iters"] == ref.buffers["iters"] == 6
    assert np.any(fast.cache.r != 1) and np.any(fast.cache.stat_weight != 1)  # compensated, smoothed
    assert (np.abs(fast.buffers["ema_gz"]).max() > 1e-3) == (backward == "approx")  # the state moved iff approx
    for name in ("gamma", "beta"):
        assert norm_rel_error(fast.grads[name], ref.grads[name]) <= 1e-12
    ema = fast.buffers["ema_gz"].copy()
    ref.eval(), fast.eval()
    x, dy = rng.standard_normal((2, 5, 7)), rng.standard_normal((2, 5, 7))
    assert norm_rel_error(fast.forward(x), ref.forward(x)) <= 1e-12
    assert norm_rel_error(fast.backward(dy), ref.backward(dy)) <= 1e-12
    assert np.array_equal(fast.buffers["ema_gz"], ema)  # eval's backward is exact: the surrogate state is untouched


def test_unified_norm_out_and_nothing_mutated():
    """``out=`` receives y and dx (the same values as fresh arrays); x, dy, the parameters, both states and the cache
    are not modified by the forward or by either backward."""
    rng = np.random.default_rng(25)
    x, dy, gamma, beta = pn_data(rng, (3, 4, 5), np.float64)
    pad = pn_mask(rng, x.shape)
    state = un_state(rng, 4, 3, 6)
    grad_state = UnifiedNormGradState(rng.standard_normal(4), rng.standard_normal((2, 4)))
    inputs = [x, dy, gamma, beta, pad, *state[1:3], *grad_state]
    before = [np.copy(a) for a in inputs]
    hyper = dict(state=state, warmup_iters=3, compensation_floor=0, pad_mask=pad)
    y, cache = F.forward("unified_norm", x, gamma, beta, backend="numba", **hyper)
    y_buffer = np.empty_like(x)
    y_out, _ = F.forward("unified_norm", x, gamma, beta, backend="numba", out=y_buffer, **hyper)
    assert y_out is y_buffer and np.array_equal(y_buffer, y)
    cache_before = [np.copy(a) for a in (cache.x, cache.keep, cache.rstd, cache.sigma2, cache.r, cache.buffer_x2)]
    impls = {"exact": (get_impl("unified_norm", "numba").backward, ()),
             "approx": (get_impl("unified_norm_approx", "numba").backward, (grad_state,))}
    for backward, extra in impls.values():
        dx = backward(dy, cache, *extra)[0]
        buffer = np.empty_like(x)
        dx_out = backward(dy, cache, *extra, out=buffer)[0]
        assert dx_out is buffer and np.array_equal(buffer, dx)
        with pytest.raises(ValueError, match="overlap"):
            backward(dy, cache, *extra, out=dy)
    for a, b in zip(before, inputs):
        assert np.array_equal(a, b)
    for a, b in zip(cache_before, (cache.x, cache.keep, cache.rstd, cache.sigma2, cache.r, cache.buffer_x2)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_unified_norm_deterministic(masked):
    """Bitwise equal runs on two threads and on one (float32, 70·4·300 values: above the size at which the kernels
    go parallel, more rows than the 32 chunks): forward, exact backward, surrogate, and the new states."""
    rng = np.random.default_rng(26)
    shape = (70, 4, 300)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    state = un_state(rng, 4, 3, 6)
    grad_state = UnifiedNormGradState(rng.standard_normal(4), rng.standard_normal((2, 4)))
    hyper = dict(state=state, warmup_iters=3, compensation_floor=0,
                 pad_mask=pn_mask(rng, shape, 0.2) if masked else None)

    def run_once():
        y, cache = F.forward("unified_norm", x, gamma, beta, backend="numba", **hyper)
        approx = get_impl("unified_norm_approx", "numba").backward(dy, cache, grad_state)
        return [y, *F.backward("unified_norm", dy, cache), *approx[:3], *approx[3], *update_state(state, cache)[1:3]]

    assert_bitwise_repeatable(run_once)


def test_unified_norm_validation_like_the_reference_and_complex_refused():
    """The reference's errors (shared validation) on numba; complex x, parameters, statistics, state, grad_state and
    dy raise TypeError; the surrogate needs a training step's cache."""
    rng = np.random.default_rng(27)
    x, dy = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
    bad = [(dict(pad_mask=np.ones((2, 3), bool)), ValueError, "every position as padding"),
           (dict(state=initial_state(3, 2)), ValueError, "running_var"),
           (dict(state=(0, 1, 2, 3)), TypeError, "UnifiedNormState"),
           (dict(state=initial_state(4, 2), stats=(None, np.ones(4))), ValueError, "not both"),
           (dict(compensation_floor=-1), ValueError, "compensation_floor"),
           (dict(eps=-1.0), ValueError, "eps")]
    for hyper, exc, match in bad:
        for backend in ("numpy", "numba"):
            with pytest.raises(exc, match=match):
                F.forward("unified_norm", x, backend=backend, **hyper)
    complex_calls = [((x.astype(complex),), {}, "x must have a float32 or float64 dtype"),
                     ((x, np.ones(4, complex)), {}, "gamma"),
                     ((x, None, np.ones(4, complex)), {}, "beta"),
                     ((x,), dict(stats=(None, np.ones(4, complex))), "stats"),
                     ((x,), dict(state=initial_state(4, 2)._replace(running_var=np.ones(4, complex))),
                      "state.running_var must be real"),
                     ((x,), dict(state=initial_state(4, 2)._replace(buffer_x2=np.ones((2, 4), complex))),
                      "state.buffer_x2 must be real")]
    for args, hyper, match in complex_calls:
        with pytest.raises(TypeError, match=match):
            F.forward("unified_norm", *args, backend="numba", **hyper)
    approx = get_impl("unified_norm_approx", "numba").backward
    _, stateless = F.forward("unified_norm", x, backend="numba")
    with pytest.raises(ValueError, match="training step"):
        approx(dy, stateless, initial_grad_state(4, 2))
    _, cache = F.forward("unified_norm", x, backend="numba", state=initial_state(4, 2))
    with pytest.raises(ValueError, match="grad_state"):
        approx(dy, cache, initial_grad_state(3, 2))
    with pytest.raises(TypeError, match="ema_gz must have a float32 or float64 dtype"):
        approx(dy, cache, initial_grad_state(4, 2)._replace(ema_gz=np.zeros(4, complex)))
    with pytest.raises(ValueError, match="momentum"):
        approx(dy, cache, initial_grad_state(4, 2), momentum=2.0)
    with pytest.raises(TypeError, match="dy must be real"):
        F.backward("unified_norm", dy.astype(complex), cache)
    with pytest.raises(TypeError, match="dy must be real"):
        approx(dy.astype(complex), cache, initial_grad_state(4, 2))


UN_SPEC_NAMES = {"UnifiedNorm", "UnifiedNorm-GM"}
UN_CASES = [(s, mode, affine) for s in all_specs() if s.name in UN_SPEC_NAMES for mode in s.modes
            for affine in s.affine]


def test_unified_norm_registered_on_numba():
    assert {s.name for s, _, _ in UN_CASES} == UN_SPEC_NAMES
    assert "numba" in available_op_backends("unified_norm")
    assert {"numpy", "numba"} <= set(available_op_backends("unified_norm_approx"))


@pytest.mark.parametrize("spec,mode,affine", UN_CASES, ids=[f"{s.name}-{m}-affine{a}" for s, m, a in UN_CASES])
def test_unified_norm_gradcheck_on_numba(spec, mode, affine):
    report = check(spec, mode=mode, affine=affine, backend="numba")
    assert report.passed, "\n" + report.table()


# ---------------------------------------------------------------------------------------------------------------
# Region Normalization (RN-B, RN-L) on "numba" (normref/kernels/numba_cpu/region_norm.py)

from normref.ops.region_norm import region_stats, rn_l_mask  # noqa: E402
from normref.testing.specs.region_and_calibration import fixed_mask, small_input  # noqa: E402


def rn_mask(rng, kind, shape):
    """A (N, 1, *spatial) 0/1 mask: random (30 % holes), all ones, all zeros, or one pixel of either region alone."""
    mask_shape = (shape[0], 1) + tuple(shape[2:])
    if kind == "random":
        return (rng.random(mask_shape) < 0.3).astype(np.float64)
    mask = np.full(mask_shape, 1.0 if kind in ("ones", "single_b") else 0.0)
    if kind.startswith("single"):
        mask.reshape(-1)[mask.size // 2] = 1.0 - mask.reshape(-1)[0]  # a region of exactly one pixel
    return mask


# (1, 2, 40, 41): 1640 values per slice, more than one lane block (BLOCK = 1024); (1, ...) and (2, ...): N = 1, 2
RN_SHAPES = [(2, 3, 5, 7), (1, 4, 33), (2, 3, 3, 5, 3), (1, 2, 40, 41)]
RN_MASKS = ["random", "ones", "zeros", "single_f", "single_b"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("regionwise_bias", [False, True], ids=["codebias", "paperbias"])
@pytest.mark.parametrize("kind", RN_MASKS)
@pytest.mark.parametrize("shape", RN_SHAPES, ids=["x".join(map(str, s)) for s in RN_SHAPES])
def test_rn_b_agrees(shape, kind, regionwise_bias, dtype):
    rng = np.random.default_rng(30)
    c = shape[1]
    x = (3 * rng.standard_normal(shape) + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = [rng.standard_normal(c).astype(dtype) for _ in range(4)]
    compare("rn_b", x, params, dy, dtype, mask=rn_mask(rng, kind, shape), regionwise_bias=regionwise_bias)


@pytest.mark.parametrize("present", [(False,) * 4, (True, False, False, False), (False, True, True, False),
                                     (False, False, False, True)])
def test_rn_b_affine_off_or_partial_agrees(present):
    rng = np.random.default_rng(31)
    shape = (2, 3, 4, 5)
    x, dy = 2 * rng.standard_normal(shape) - 1, rng.standard_normal(shape)
    params = [rng.standard_normal(3) if p else None for p in present]
    for regionwise_bias in (False, True):
        compare("rn_b", x, params, dy, np.float64, mask=rn_mask(rng, "random", shape),
                regionwise_bias=regionwise_bias)


def test_rn_b_float32_statistics_far_from_zero():
    """Holes filled with a constant, valid pixels 1000 + 0.01·N(0, 1): the corrected two-pass moments of each region
    in float32 keep the float64 statistics (the mean to 1e-5 of the standard deviation)."""
    rng = np.random.default_rng(32)
    shape = (3, 4, 37, 29)
    mask = rn_mask(rng, "random", shape)
    x = np.where(mask == 1, 0.5, 1000 + 0.01 * rng.standard_normal(shape)).astype(np.float32)
    x += (mask * 1e-3 * rng.standard_normal(shape)).astype(np.float32)  # the hole region: small spread too
    _, cache = F.forward("rn_b", x, backend="numba", mask=mask)
    exact = region_stats(x.astype(np.float64), mask)
    for column, region in ((0, 1), (1, 0)):
        mean, var, _ = exact[region]
        assert np.max(np.abs(cache.region.mean[:, column] - mean) / np.sqrt(var)) < 1e-5
        assert np.max(np.abs(cache.region.var[:, column] / var - 1)) < 1e-5


def test_rn_b_out_and_nothing_mutated():
    impl = get_impl("rn_b", "numba")
    rng = np.random.default_rng(33)
    shape = (2, 3, 5, 4)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    params = [rng.standard_normal(3) for _ in range(4)]
    mask = rn_mask(rng, "random", shape)
    before = [np.copy(a) for a in (x, dy, mask, *params)]
    y, cache = impl.forward(x, *params, mask=mask)
    grads = impl.backward(dy, cache)
    buffer, dx_buffer = np.empty_like(x), np.empty_like(x)
    y_out, cache_out = impl.forward(x, *params, mask=mask, out=buffer)
    grads_out = impl.backward(dy, cache_out, out=dx_buffer)
    assert y_out is buffer and np.array_equal(buffer, y) and grads_out[0] is dx_buffer
    for a, b in zip(grads, grads_out):
        assert np.array_equal(a, b)
    for a, b in zip(before, (x, dy, mask, *params)):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="overlap"):
        impl.forward(x, *params, mask=mask, out=x)
    with pytest.raises(ValueError, match="overlap"):
        impl.backward(dy, cache, out=dy)


def test_rn_b_validation_like_the_reference_and_complex_refused():
    x, mask = np.ones((2, 3, 4)), np.zeros((2, 1, 4))
    bad = [(x, (np.ones(4),), dict(mask=mask)), (x, (), dict(mask=mask, eps=-1.0)),
           (x, (), dict(mask=np.full((2, 1, 4), 0.5))), (x, (), dict(mask=np.zeros((3, 1, 4)))),
           (np.ones((2, 3)), (), dict(mask=mask)), (x, (), dict(mask=mask, stats=(np.zeros(3), np.ones(3)))),
           (x, (), dict(mask=mask.astype(complex)))]
    for xx, params, hyper in bad:
        with pytest.raises((TypeError, ValueError)) as ref:
            F.forward("rn_b", xx, *params, backend="numpy", **hyper)
        with pytest.raises(type(ref.value), match=re.escape(str(ref.value))):
            F.forward("rn_b", xx, *params, backend="numba", **hyper)
    for name, args in (("x", (x.astype(complex),)), ("gamma_f", (x, np.ones(3, complex))),
                       ("beta_b", (x, None, None, None, np.ones(3, complex)))):
        with pytest.raises(TypeError, match=name):
            F.forward("rn_b", *args, backend="numba", mask=mask)
    _, cache = F.forward("rn_b", x, backend="numba", mask=mask)
    with pytest.raises(TypeError, match="dy"):
        F.backward("rn_b", x.astype(complex), cache)


def test_rn_b_non_contiguous_inputs_and_resized_mask():
    rng = np.random.default_rng(34)
    x = (3 * rng.standard_normal((2, 3, 6, 10)) + 1)[..., ::2]
    dy = np.asfortranarray(rng.standard_normal((2, 3, 6, 5)))
    params = [rng.standard_normal(6)[::2] for _ in range(4)]
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    mask = (rng.random((2, 1, 3, 5)) < 0.4)[..., ::-1]  # bool, strided, half the height: resized (nearest)
    compare("rn_b", x, params, dy, np.float64, mask=mask)


# float32, 70·4·300 values = 336 KB: above the 256 KB under which a kernel runs on the calling thread only
def test_rn_b_and_rn_l_deterministic():
    """Bitwise equal results on two threads, again, and on one thread."""
    rng = np.random.default_rng(35)
    shape = (70, 4, 20, 15)
    x = (2 * rng.standard_normal(shape) + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    params = [rng.standard_normal(4).astype(np.float32) for _ in range(4)]
    mask = rn_mask(rng, "random", shape)
    layer = nn.RegionNormL(4, threshold=0.5, kernel_size=3, seed=2, backend="numba", dtype=np.float32)
    xl = (0.1 * x + 0.1).astype(np.float32)

    def run_once():
        y, cache = F.forward("rn_b", x, *params, backend="numba", mask=mask, regionwise_bias=True)
        yl = layer.forward(xl)
        return [y, *F.backward("rn_b", dy, cache), yl, layer.backward(dy)]

    assert_bitwise_repeatable(run_once)


def rn_l_params(rng, k, dtype, biases=True):
    shapes = [(1, 2, k, k), (1, 1, k, k), (1,), (1, 1, k, k), (1,)]
    params = [rng.uniform(-1, 1, s).astype(dtype) for s in shapes]
    if not biases:
        params[2] = params[4] = None
    return params


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,k,biases", [((2, 3, 6, 6), 3, True), ((1, 4, 5, 7), 3, False),
                                            ((2, 5, 9, 8), 5, True)])
def test_rn_l_agrees(shape, k, biases, dtype):
    rng = np.random.default_rng(36)
    x = small_input(rng, shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = rn_l_params(rng, k, dtype, biases)
    cache, cache_ref = compare("rn_l", x, params, dy, dtype, threshold=0.5)
    assert np.array_equal(rn_l_mask(cache), rn_l_mask(cache_ref))
    assert 0 < rn_l_mask(cache).sum() < rn_l_mask(cache).size  # both regions used


def test_rn_l_out_validation_and_complex_refused():
    impl = get_impl("rn_l", "numba")
    rng = np.random.default_rng(37)
    shape = (2, 3, 6, 5)
    x, dy = small_input(rng, shape), rng.standard_normal(shape)
    params = rn_l_params(rng, 3, np.float64)
    before = [np.copy(a) for a in (x, dy, *params)]
    y, cache = impl.forward(x, *params, threshold=0.5)
    grads = impl.backward(dy, cache)
    buffer, dx_buffer = np.empty_like(x), np.empty_like(x)
    y_out, cache_out = impl.forward(x, *params, threshold=0.5, out=buffer)
    grads_out = impl.backward(dy, cache_out, out=dx_buffer)
    assert y_out is buffer and np.array_equal(buffer, y) and grads_out[0] is dx_buffer
    for a, b in zip(grads, grads_out):
        assert np.array_equal(a, b)
    for a, b in zip(before, (x, dy, *params)):
        assert np.array_equal(a, b)
    bad = [((x, None, *params[1:]), {}), ((x, params[0][:, :, :2], *params[1:]), {}),
           ((x, *params), dict(eps=-1.0)), ((x[0], *params), {}), ((x, *params), dict(stats=(0, 1)))]
    for args, hyper in bad:
        with pytest.raises((TypeError, ValueError)) as ref:
            F.forward("rn_l", *args, backend="numpy", **hyper)
        with pytest.raises(type(ref.value), match=re.escape(str(ref.value))):
            F.forward("rn_l", *args, backend="numba", **hyper)
    with pytest.raises(TypeError, match="x"):
        F.forward("rn_l", x.astype(complex), *params, backend="numba")
    with pytest.raises(TypeError, match="w_sa"):
        F.forward("rn_l", x, params[0].astype(complex), *params[1:], backend="numba")
    with pytest.raises(TypeError, match="dy"):
        F.backward("rn_l", dy.astype(complex), cache)


def test_rn_layers_on_numba_like_numpy():
    """The layers dispatch to "numba" and keep their behaviour: RN-B's fixed mask, RN-L's last_mask."""
    rng = np.random.default_rng(38)
    shape = (2, 3, 6, 6)
    x, dy = small_input(rng, shape), rng.standard_normal(shape)
    for make in (lambda b: nn.RegionNormB(3, backend=b), lambda b: nn.RegionNormL(3, threshold=0.5, seed=4,
                                                                                   backend=b)):
        layers = [make(b) for b in ("numpy", "numba")]
        outs = []
        for layer in layers:
            if isinstance(layer, nn.RegionNormB):
                for name in layer.param_names:
                    layer.params[name][:] = np.linspace(-0.5, 0.5, 3)
                layer.set_mask(fixed_mask(shape))
            outs.append((layer.forward(x), layer.backward(dy), dict(layer.grads)))
        assert layers[1].cache.backend == "numba"
        (y0, dx0, g0), (y1, dx1, g1) = outs
        assert norm_rel_error(y1, y0) <= 1e-12 and norm_rel_error(dx1, dx0) <= 1e-12
        for name in g0:
            assert norm_rel_error(g1[name], g0[name]) <= 1e-12
        if isinstance(layers[0], nn.RegionNormL):
            assert np.array_equal(layers[0].last_mask(), layers[1].last_mask())


RN_SPECS = {"RegionNormB", "RegionNormB-paperbias", "RegionNormL"}
RN_CASES = [(s, mode, affine) for s in all_specs() if s.name in RN_SPECS for mode in s.modes for affine in s.affine]


def test_rn_registered_on_numba():
    assert {s.name for s, _, _ in RN_CASES} == RN_SPECS
    for op in ("rn_b", "rn_l"):
        assert "numba" in available_op_backends(op)


@pytest.mark.parametrize("spec,mode,affine", RN_CASES, ids=[f"{s.name}-{m}-affine{a}" for s, m, a in RN_CASES])
def test_rn_gradcheck_on_numba(spec, mode, affine):
    report = check(spec, mode=mode, affine=affine, backend="numba")
    assert report.passed, "\n" + report.table()


# ---------------------------------------------------------------------------------------------------------------
# BCN on "numba": the fused kernels (out=, far from zero, bitwise repeatable, bitwise equal to the composition)


def bcn_inputs(rng, shape, groups, dtype, loc=7.0, scale=4.0):
    c = shape[1]
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = [rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype),
              rng.standard_normal(groups).astype(dtype), rng.standard_normal(groups).astype(dtype)]
    return x, dy, params


def test_bcn_out_and_nothing_mutated():
    """``out=`` receives y and dx (the same values as fresh arrays); x, dy and the parameters are not modified; an
    ``out`` overlapping an input, or of the wrong dtype, is refused."""
    impl = get_impl("batch_channel_norm", "numba")
    x, dy, params = bcn_inputs(np.random.default_rng(31), (3, 6, 5, 4), 3, np.float64)
    before = [np.copy(a) for a in (x, dy, *params)]
    y, cache = impl.forward(x, *params, num_groups=3)
    grads = impl.backward(dy, cache)
    buffer, dx_buffer = np.full_like(x, np.nan), np.full_like(x, np.nan)
    y_out, cache_out = impl.forward(x, *params, num_groups=3, out=buffer)
    grads_out = impl.backward(dy, cache_out, out=dx_buffer)
    assert y_out is buffer and np.array_equal(buffer, y)
    assert grads_out[0] is dx_buffer
    for a, b in zip(grads, grads_out):
        assert np.array_equal(a, b)
    for a, b in zip(before, (x, dy, *params)):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="overlap"):
        impl.forward(x, *params, num_groups=3, out=x)
    with pytest.raises(ValueError, match="overlap"):
        impl.backward(dy, cache, out=dy)
    with pytest.raises(ValueError, match="dtype"):
        impl.forward(x, *params, num_groups=3, out=np.empty_like(x, np.float32))


@pytest.mark.parametrize("given", [False, True])
def test_bcn_float32_far_from_zero_agrees_with_numpy(given):
    """x = 1000 + 0.01·N(0, 1) in float32: within 1e-5 of the float32 reference (both round the BN mean to float32
    before ``x - m``; a fusion that expanded ``(x - m)·s`` or ``Σ dy₁·(x - m)`` would cancel here)."""
    rng = np.random.default_rng(32)
    shape, groups = (4, 6, 9, 7), 3
    x, dy, params = bcn_inputs(rng, shape, groups, np.float32, loc=1000.0, scale=0.01)
    stats = (np.full(6, 1000, np.float32), np.full(6, 1e-4, np.float32)) if given else None
    y_ref, _, grads_ref = run("numpy", x, params, dy, num_groups=groups, stats=stats)
    y, _, grads = run("numba", x, params, dy, num_groups=groups, stats=stats)
    assert norm_rel_error(y, y_ref) <= 1e-5
    for got, want in zip(grads, grads_ref):
        assert norm_rel_error(got, want) <= 1e-5


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loc,scale", [(7.0, 4.0), (1e5, 1.0)], ids=["near", "offset1e5"])
def test_bcn_fused_matches_the_composition(dtype, loc, scale):
    """The fused kernels agree with the "numba" BatchNorm kernel followed by the GroupNorm kernel (on a stored
    intermediate) to a few units of roundoff, also 1e5 standard deviations from zero: the GN statistics taken from
    the slice moments of ``x`` (not of the stored ``y₁``) keep the offset out exactly. (The float64 NumPy reference
    itself drifts by ~1e4 eps at that offset, so the composition is the sharper yardstick here.)"""
    rng = np.random.default_rng(33)
    shape, groups = (4, 8, 40, 50), 4  # > 256 KiB in both dtypes: the kernels run in parallel
    x, dy, params = bcn_inputs(rng, shape, groups, dtype, loc=loc, scale=scale)
    y, cache = F.forward("batch_channel_norm", x, *params, backend="numba", num_groups=groups)
    grads = F.backward("batch_channel_norm", dy, cache)
    y1, bn_cache = F.forward("batch_norm", x, params[0], params[1], backend="numba")
    tied = [np.repeat(p, shape[1] // groups) for p in params[2:]]
    y2, gn_cache = F.forward("group_norm", y1, *tied, backend="numba", num_groups=groups)
    dy1, dtg, dtb = F.backward("group_norm", dy, gn_cache)
    dx2, dgamma2, dbeta2 = F.backward("batch_norm", dy1, bn_cache)
    want = [y2, dx2, dgamma2, dbeta2, dtg.reshape(groups, -1).sum(axis=1), dtb.reshape(groups, -1).sum(axis=1)]
    tol = 16 * np.finfo(dtype).eps  # observed <= 6.3 eps (dbeta, a sum over 16000 values), both dtypes and offsets
    for got, expected in zip([y, *grads], want):
        assert norm_rel_error(got, expected) <= tol


@pytest.mark.parametrize("given", [False, True])
def test_bcn_bitwise_repeatable(given):
    rng = np.random.default_rng(34)
    shape, groups = (4, 8, 40, 50), 4
    x, dy, params = bcn_inputs(rng, shape, groups, np.float32)
    stats = (rng.standard_normal(8).astype(np.float32), rng.uniform(0.5, 3, 8).astype(np.float32)) if given else None

    def run_once():
        y, cache, grads = run("numba", x, params, dy, num_groups=groups, stats=stats)
        return [y, *grads]

    assert_bitwise_repeatable(run_once)


def test_bcn_layer_on_numba_tracks_running_stats_like_numpy():
    """The layer folds the BN stage's batch statistics from the fused cache (``cache.bn``) as from the reference's;
    y, dx, the gradients and the running buffers agree over two training steps and an eval step."""
    rng = np.random.default_rng(35)
    x, dy = 3 + 2 * rng.standard_normal((4, 8, 6, 5)), rng.standard_normal((4, 8, 6, 5))
    layers = [nn.BatchChannelNorm(8, num_groups=4, momentum=0.3, backend=b) for b in ("numpy", "numba")]
    outs = []
    for layer in layers:
        layer.params["gamma"][:] = np.linspace(0.5, 1.5, 8)
        layer.params["group_beta"][:] = np.linspace(-1, 1, 4)
        steps = [(layer.forward(x), layer.backward(dy)), (layer.forward(x + 1), layer.backward(dy))]
        outs.append((steps, dict(layer.grads), dict(layer.buffers), layer.eval().forward(x)))
    assert layers[1].cache.backend == "numba"
    (s0, g0, b0, e0), (s1, g1, b1, e1) = outs
    for (y0, dx0), (y1, dx1) in zip(s0, s1):
        assert norm_rel_error(y1, y0) <= 1e-12 and norm_rel_error(dx1, dx0) <= 1e-12
    for name in g0:
        assert norm_rel_error(g1[name], g0[name]) <= 1e-12
    for name in ("running_mean", "running_var"):
        assert norm_rel_error(b1[name], b0[name]) <= 1e-12
    assert norm_rel_error(e1, e0) <= 1e-12
