"""Seed layers on the "numba" backend against the NumPy reference: BCN, EvoNorm-B0/S0, (scaled) WS, PowerNorm.

BCN on "numba" is the BatchNorm and GroupNorm kernels composed (normref/kernels/numba_cpu/batch_channel_norm.py); the
others have their own kernels (evonorm.py, weight_standardization.py, power_norm.py there).
Agreement is the norm-relative error max|a-b|/max|b| of y and every gradient: <= 1e-12 in float64, <= 1e-5 in float32
(the same tolerances, and reasons, as tests/test_backend_numba.py). The gradient checker runs on the seed specs.
"""

import numpy as np
import pytest

from normref import functional as F
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

import numba  # noqa: E402

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

    first, second = run_once(), run_once()
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = run_once()
    finally:
        numba.set_num_threads(previous)
    for other in (second, single):
        for a, b in zip(first, other):
            assert np.array_equal(a, b)


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
