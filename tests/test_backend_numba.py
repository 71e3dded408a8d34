"""The "numba" backend against the NumPy reference, the gradient checker on it, and a smoke run of `normref bench`.

Agreement is the norm-relative error max|a-b|/max|b| of y, dx, dgamma, dbeta: <= 1e-12 in float64 (the kernels sum
in a different order than NumPy, about 1e-15 apart) and <= 1e-5 in float32 (the kernels sum float32 in blocks of
at most 16 additions per lane before float64, NumPy pairwise in float32 or in float64: both within ~1e-6 of exact,
see the error bound in normref/kernels/numba_cpu/_common.py). Shapes are chosen so that row counts are not multiples
of the 32 chunks or of the 16-row flush depth, and row lengths not multiples of the 32 lanes; the "long" cases have
rows longer than one 512-value block (several blocks plus a tail).
"""

import contextlib
import io

import numpy as np
import pytest

import normref
from normref import functional as F
from normref.cli import main
from normref._registry import get_impl
from normref.ops.batch_norm import batch_norm_batch_stats
from normref.ops.instance_norm import instance_norm_batch_stats
from normref.testing.gradcheck import norm_rel_error
from normref.testing.specs import all_specs, check

TOL = {np.float64: 1e-12, np.float32: 1e-5}

# (op, shape, hyperparameters, has beta)
CASES = [
    ("layer_norm", (37, 5, 7), {"normalized_shape": (5, 7)}, True),
    ("layer_norm", (1, 13), {"normalized_shape": 13}, True),
    ("layer_norm", (2, 3, 9), {"normalized_shape": 9}, True),
    ("rms_norm", (37, 13), {"normalized_shape": 13}, False),
    ("rms_norm", (2, 3, 2, 5), {"normalized_shape": (2, 5), "eps": 1e-6}, False),
    ("group_norm", (3, 6, 5, 3), {"num_groups": 3}, True),
    ("group_norm", (2, 6), {"num_groups": 2}, True),
    ("group_norm", (1, 4, 7), {"num_groups": 1}, True),
    ("instance_norm", (2, 3, 7), {}, True),
    ("instance_norm", (1, 5, 3, 3), {}, True),
    ("instance_norm", (3, 2, 2, 3, 3), {}, True),
    ("batch_norm", (2, 3, 5), {}, True),
    ("batch_norm", (5, 3), {}, True),
    ("batch_norm", (1, 4, 3, 3), {}, True),
    ("batch_norm", (3, 2, 2, 3, 5), {}, True),
    # long rows: several lane blocks plus a tail, and (layer_norm) more rows per chunk than the flush depth
    ("layer_norm", (1100, 1100), {"normalized_shape": 1100}, True),
    ("rms_norm", (3, 1100), {"normalized_shape": 1100}, False),
    ("group_norm", (2, 4, 300), {"num_groups": 2}, True),
    ("instance_norm", (2, 3, 1037), {}, True),
    ("batch_norm", (3, 2, 700), {}, True),
]
IDS = [f"{op}-{'x'.join(map(str, shape))}" for op, shape, _, _ in CASES]


def param_shape(op, shape, hyper):
    if op in ("layer_norm", "rms_norm"):
        ns = hyper["normalized_shape"]
        return (ns,) if isinstance(ns, int) else tuple(ns)
    return (shape[1],)


def make_params(rng, op, shape, hyper, has_beta, dtype, affine=True):
    if not affine:
        return [None, None] if has_beta else [None]
    p = param_shape(op, shape, hyper)
    params = [rng.standard_normal(p).astype(dtype)]
    if has_beta:
        params.append(rng.standard_normal(p).astype(dtype))
    return params


def given_stats(rng, op, shape, hyper, dtype):
    """Random statistics of the shape each op takes in eval / frozen mode; the variance positive."""
    lead = shape[:len(shape) - len(param_shape(op, shape, hyper))]
    stat = {"batch_norm": (shape[1],), "instance_norm": (shape[1],), "group_norm": (shape[0], 2),
            "layer_norm": lead, "rms_norm": lead}[op]
    var = rng.uniform(0.5, 3.0, stat).astype(dtype)
    return (None, var) if op == "rms_norm" else (rng.standard_normal(stat).astype(dtype), var)


def run(op, backend, x, params, dy, hyper, stats=None):
    y, cache = F.forward(op, x, *params, backend=backend, stats=stats, **hyper)
    return y, cache, F.backward(op, dy, cache)


def assert_agree(op, x, params, dy, hyper, dtype, stats=None):
    y_ref, cache_ref, grads_ref = run(op, "numpy", x, params, dy, hyper, stats)
    y, cache, grads = run(op, "numba", x, params, dy, hyper, stats)
    assert cache.backend == "numba" and y.dtype == dtype and y.shape == x.shape
    tol = TOL[dtype]
    assert norm_rel_error(y, y_ref) <= tol
    for name, got, want in zip(("dx", "dgamma", "dbeta"), grads, grads_ref):
        if want is None:
            assert got is None, name
            continue
        assert got.shape == want.shape and got.dtype == want.dtype, name
        assert norm_rel_error(got, want) <= tol, (name, norm_rel_error(got, want))
    # the cache's statistics have the reference's shapes, so the layers' running-stat updates read them alike
    assert cache.var.shape == cache_ref.var.shape and norm_rel_error(cache.var, cache_ref.var) <= tol
    if cache_ref.mean is None:
        assert cache.mean is None
    else:
        assert cache.mean.shape == cache_ref.mean.shape
        assert np.max(np.abs(cache.mean - cache_ref.mean)) <= tol * np.max(np.abs(cache_ref.mean)) + tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("op,shape,hyper,has_beta", CASES, ids=IDS)
def test_train_agrees_with_numpy(op, shape, hyper, has_beta, dtype):
    rng = np.random.default_rng(0)
    x = (5 * rng.standard_normal(shape) + 12).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    assert_agree(op, x, make_params(rng, op, shape, hyper, has_beta, dtype), dy, hyper, dtype)


@pytest.mark.parametrize("op,shape,hyper,has_beta", CASES, ids=IDS)
def test_affine_off_and_given_stats(op, shape, hyper, has_beta):
    rng = np.random.default_rng(1)
    x = 3 * rng.standard_normal(shape) - 4
    dy = rng.standard_normal(shape)
    none = make_params(rng, op, shape, hyper, has_beta, np.float64, affine=False)
    assert_agree(op, x, none, dy, hyper, np.float64)
    if op == "group_norm":
        hyper = dict(hyper, num_groups=2) if shape[1] % 2 == 0 else hyper
        if shape[1] % 2:
            return
    params = make_params(rng, op, shape, hyper, has_beta, np.float64)
    for dtype in (np.float64, np.float32):
        stats = given_stats(rng, op, shape, hyper, dtype)
        assert_agree(op, x.astype(dtype), [p.astype(dtype) for p in params], dy.astype(dtype), hyper, dtype, stats)
    assert_agree(op, x, none, dy, hyper, np.float64, given_stats(rng, op, shape, hyper, np.float64))


def test_instance_norm_per_instance_stats():
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    stats = (rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (3, 4)))
    assert_agree("instance_norm", x, [rng.standard_normal(4), None], dy, {}, np.float64, stats)


def test_gamma_without_beta():
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 3, 6)), rng.standard_normal((4, 3, 6))
    assert_agree("batch_norm", x, [rng.standard_normal(3), None], dy, {}, np.float64)
    assert_agree("layer_norm", x, [None, rng.standard_normal(6)], dy, {"normalized_shape": 6}, np.float64)


@pytest.mark.parametrize("op,shape,hyper,has_beta", [CASES[0], CASES[3], CASES[5], CASES[8], CASES[11]],
                         ids=[IDS[0], IDS[3], IDS[5], IDS[8], IDS[11]])
def test_non_contiguous_inputs(op, shape, hyper, has_beta):
    rng = np.random.default_rng(4)
    big = 5 * rng.standard_normal(shape[:-1] + (2 * shape[-1],)) + 12
    x = big[..., ::2]  # every other element: strided, not contiguous
    dy = np.asfortranarray(rng.standard_normal(shape))  # contiguous, but in the other order
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    params = [p[::-1] if p is not None else None for p in make_params(rng, op, shape, hyper, has_beta, np.float64)]
    assert_agree(op, x, params, dy, hyper, np.float64)
    assert_agree(op, x.astype(np.float32), [p.astype(np.float32) for p in params], dy.astype(np.float32), hyper,
                 np.float32)


@pytest.mark.parametrize("n", [4096, 40_000])
def test_float32_statistics_are_offset_independent(n):
    """Offset 1e5 standard deviations: the float32 lane sums + corrected two-pass keep the statistics to ~1e-6.

    The bound (``_common`` docstring): ``|mean error| <= 2·16·u·sigma`` and ``|var error| <= 18·u·var``,
    u = 2^-24; a plain float32 sum of x would be off by ~1e3 standard deviations here.
    """
    rng = np.random.default_rng(5)
    x = (1000.0 + 0.01 * rng.standard_normal((3, n))).astype(np.float32)
    y, cache = F.forward("layer_norm", x, backend="numba", normalized_shape=n, eps=0.0)
    exact = x.astype(np.float64)
    sigma = exact.std(axis=1)
    u = 2.0**-24
    assert np.all(np.abs(cache.kernel_mean - exact.mean(axis=1)) <= 32 * u * sigma)
    assert np.all(np.abs(cache.rstd**-2 - sigma**2) <= 18 * u * sigma**2)
    assert np.max(np.abs(y.astype(np.float64).std(axis=1) - 1)) < 1e-3


def test_out_buffers():
    """``out=`` writes y and dx in place, bit-identical to the allocating call; bad buffers raise."""
    rng = np.random.default_rng(8)
    for op, shape, hyper in (("group_norm", (3, 4, 50), {"num_groups": 2}), ("batch_norm", (3, 4, 50), {}),
                             ("layer_norm", (7, 50), {"normalized_shape": 50})):
        impl = get_impl(op, "numba")
        x, dy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
        params = make_params(rng, op, shape, hyper, True, np.float32)
        y_ref, cache = impl.forward(x, *params, **hyper)
        grads_ref = impl.backward(dy, cache)
        y_buf, dx_buf = np.full_like(x, np.nan), np.full_like(x, np.nan)
        y, cache = impl.forward(x, *params, out=y_buf, **hyper)
        grads = impl.backward(dy, cache, out=dx_buf)
        assert y is y_buf and grads[0] is dx_buf
        assert np.array_equal(y, y_ref)
        for a, b in zip(grads, grads_ref):
            assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="out must have shape"):
        impl.forward(x, *params, out=np.empty((7, 49), np.float32), **hyper)
    with pytest.raises(ValueError, match="out must have shape"):
        impl.forward(x, *params, out=np.empty(shape), **hyper)  # float64 buffer for float32 input
    with pytest.raises(ValueError, match="C-contiguous"):
        impl.forward(x, *params, out=np.empty(shape[::-1], np.float32).T, **hyper)
    with pytest.raises(ValueError, match="overlap"):
        impl.forward(x, *params, out=x, **hyper)
    with pytest.raises(ValueError, match="overlap"):
        impl.backward(dy, cache, out=dy)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        impl.forward(x, *params, out=[0.0], **hyper)


@pytest.mark.parametrize("op,hyper", [("layer_norm", {"normalized_shape": 600}), ("group_norm", {"num_groups": 3}),
                                      ("batch_norm", {})])
def test_deterministic(op, hyper):
    """Runs are bitwise equal, on two threads and on one, with more rows than chunks x flush depth."""
    import numba

    rng = np.random.default_rng(6)
    shape = (1100, 600) if op == "layer_norm" else (67, 6, 110)
    x, dy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    params = make_params(rng, op, shape, hyper, True, np.float32)
    first, second = (run(op, "numba", x, params, dy, hyper) for _ in range(2))
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = run(op, "numba", x, params, dy, hyper)
    finally:
        numba.set_num_threads(previous)
    for other in (second, single):
        assert np.array_equal(first[0], other[0])
        for a, b in zip(first[2], other[2]):
            assert np.array_equal(a, b)


def test_layers_update_running_stats_like_numpy():
    rng = np.random.default_rng(7)
    for make, batch_stats in ((lambda: normref.BatchNorm(3), batch_norm_batch_stats),
                              (lambda: normref.InstanceNorm(3, affine=True, track_running_stats=True),
                               instance_norm_batch_stats)):
        ref, fast = make(), make()
        fast.backend = "numba"
        for _ in range(3):
            x = 2 * rng.standard_normal((4, 3, 5)) + 1
            ref.forward(x), fast.forward(x)
        for name in ("running_mean", "running_var"):
            assert norm_rel_error(fast.buffers[name], ref.buffers[name]) <= 1e-12
        for got, want in zip(batch_stats(fast.cache), batch_stats(ref.cache)):
            assert np.allclose(got, want, rtol=1e-12, atol=0)
        ref.eval(), fast.eval()
        x = rng.standard_normal((2, 3, 5))
        assert norm_rel_error(fast.forward(x), ref.forward(x)) <= 1e-12


def test_validation_matches_reference():
    x = np.ones((2, 3, 4))
    with pytest.raises(TypeError, match="x must have a float32 or float64 dtype"):
        F.forward("layer_norm", x.astype(complex), backend="numba", normalized_shape=4)
    with pytest.raises(TypeError, match="gamma"):
        F.forward("batch_norm", x, np.ones(3, complex), backend="numba")
    with pytest.raises(TypeError, match="dy must be real"):
        _, cache = F.forward("batch_norm", x, backend="numba")
        F.backward("batch_norm", np.ones(x.shape, complex), cache)
    with pytest.raises(TypeError, match="stats"):
        F.forward("batch_norm", x, backend="numba", stats=(np.zeros(3, complex), np.ones(3)))
    with pytest.raises(ValueError, match="num_groups must divide"):
        F.forward("group_norm", x, backend="numba", num_groups=2)
    with pytest.raises(ValueError, match="normalized_shape"):
        F.forward("rms_norm", x, backend="numba", normalized_shape=5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.forward("batch_norm", np.ones((1, 3)), backend="numba")
    with pytest.raises(ValueError, match="dy must have the shape"):
        _, cache = F.forward("layer_norm", x, backend="numba", normalized_shape=4)
        F.backward("layer_norm", np.ones((2, 3)), cache)
    with pytest.raises(TypeError, match="integer|int64|dtype"):
        F.forward("instance_norm", np.ones((2, 3, 4), dtype=np.int64), backend="numba")


STANDARD_OPS = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm")
GRAD_CASES = [(s, mode, affine) for s in all_specs() if s.op in STANDARD_OPS for mode in s.modes for affine in s.affine]


@pytest.mark.parametrize("spec,mode,affine", GRAD_CASES,
                         ids=[f"{s.name}-{m}-affine{a}" for s, m, a in GRAD_CASES])
def test_gradcheck_on_numba(spec, mode, affine):
    report = check(spec, mode=mode, affine=affine, backend="numba")
    assert report.passed, "\n" + report.table()


def test_bench_quick_smoke():
    """`normref bench --quick` runs and prints its tables (not timed: the numbers are not asserted)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["bench", "--quick", "--layer", "LayerNorm", "--layer", "BatchNorm"])
    text = out.getvalue()
    assert status == 0
    assert "triad" in text and "LayerNorm" in text and "BatchNorm" in text and "fwd+bwd" in text
    assert "Numba ms" in text and "floor ms" in text
