"""The "numba" and "numba-fast" backends against the NumPy reference, the gradient checker on them, and a smoke run
of `normref bench`.

Agreement is the norm-relative error max|a-b|/max|b| of y, dx, dgamma, dbeta: <= 1e-12 in float64 (the kernels sum
in a different order than NumPy, about 1e-15 apart) and <= 1e-5 in float32 (the kernels sum float32 in blocks of
at most 16 additions per lane before float64, NumPy pairwise in float32 or in float64: both within ~1e-6 of exact,
see the error bound in normref/kernels/numba_cpu/_common.py). Shapes are chosen so that row counts are not multiples
of the 32 chunks or of the 16-row flush depth, and row lengths not multiples of the 32 lanes; the "long" cases have
rows longer than one 512-value block (several blocks plus a tail).

"numba-fast" (reassociated sums, normref/kernels/numba_fast) is held to the same tolerances: its float32 sums run in
blocks of 256 values in float32 (whatever order the compiler picks, within 255u·Σ|t|; with the AVX2 order about
13u·Σ|t|, as accurate as the exact backend's 16u) and in float64 beyond. Every agreement test runs on both backends.
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
from normref.testing.determinism import assert_bitwise_repeatable
from normref.testing.gradcheck import norm_rel_error
from normref.testing.specs import all_specs, check

TOL = {np.float64: 1e-12, np.float32: 1e-5}
NUMBA_BACKENDS = ("numba", "numba-fast")

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


def assert_agree(op, x, params, dy, hyper, dtype, stats=None, backend="numba"):
    y_ref, cache_ref, grads_ref = run(op, "numpy", x, params, dy, hyper, stats)
    y, cache, grads = run(op, backend, x, params, dy, hyper, stats)
    assert cache.backend == backend and y.dtype == dtype and y.shape == x.shape
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


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("op,shape,hyper,has_beta", CASES, ids=IDS)
def test_train_agrees_with_numpy(op, shape, hyper, has_beta, dtype, backend):
    rng = np.random.default_rng(0)
    x = (5 * rng.standard_normal(shape) + 12).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    assert_agree(op, x, make_params(rng, op, shape, hyper, has_beta, dtype), dy, hyper, dtype, backend=backend)


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
@pytest.mark.parametrize("op,shape,hyper,has_beta", CASES, ids=IDS)
def test_affine_off_and_given_stats(op, shape, hyper, has_beta, backend):
    rng = np.random.default_rng(1)
    x = 3 * rng.standard_normal(shape) - 4
    dy = rng.standard_normal(shape)
    none = make_params(rng, op, shape, hyper, has_beta, np.float64, affine=False)
    assert_agree(op, x, none, dy, hyper, np.float64, backend=backend)
    if op == "group_norm":
        hyper = dict(hyper, num_groups=2) if shape[1] % 2 == 0 else hyper
        if shape[1] % 2:
            return
    params = make_params(rng, op, shape, hyper, has_beta, np.float64)
    for dtype in (np.float64, np.float32):
        stats = given_stats(rng, op, shape, hyper, dtype)
        assert_agree(op, x.astype(dtype), [p.astype(dtype) for p in params], dy.astype(dtype), hyper, dtype, stats,
                     backend=backend)
    assert_agree(op, x, none, dy, hyper, np.float64, given_stats(rng, op, shape, hyper, np.float64), backend=backend)


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
def test_instance_norm_per_instance_stats(backend):
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    stats = (rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (3, 4)))
    assert_agree("instance_norm", x, [rng.standard_normal(4), None], dy, {}, np.float64, stats, backend=backend)


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
def test_gamma_without_beta(backend):
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 3, 6)), rng.standard_normal((4, 3, 6))
    assert_agree("batch_norm", x, [rng.standard_normal(3), None], dy, {}, np.float64, backend=backend)
    assert_agree("layer_norm", x, [None, rng.standard_normal(6)], dy, {"normalized_shape": 6}, np.float64,
                 backend=backend)


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
@pytest.mark.parametrize("op,shape,hyper,has_beta", [CASES[0], CASES[3], CASES[5], CASES[8], CASES[11]],
                         ids=[IDS[0], IDS[3], IDS[5], IDS[8], IDS[11]])
def test_non_contiguous_inputs(op, shape, hyper, has_beta, backend):
    rng = np.random.default_rng(4)
    big = 5 * rng.standard_normal(shape[:-1] + (2 * shape[-1],)) + 12
    x = big[..., ::2]  # every other element: strided, not contiguous
    dy = np.asfortranarray(rng.standard_normal(shape))  # contiguous, but in the other order
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    params = [p[::-1] if p is not None else None for p in make_params(rng, op, shape, hyper, has_beta, np.float64)]
    assert_agree(op, x, params, dy, hyper, np.float64, backend=backend)
    assert_agree(op, x.astype(np.float32), [p.astype(np.float32) for p in params], dy.astype(np.float32), hyper,
                 np.float32, backend=backend)


# The factor D of each backend's float32 sum error bound D·u·Σ|t|: the exact backend's lane depth (16); for
# "numba-fast" the bound that holds whatever order the compiler picks inside a 256-value block (255, numba_fast/_sums).
SUM_DEPTH = {"numba": 16, "numba-fast": 255}


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
@pytest.mark.parametrize("n", [4096, 40_000])
def test_float32_statistics_are_offset_independent(n, backend):
    """Offset 1e5 standard deviations: float32 sums + the corrected two-pass keep the statistics to ~1e-6.

    The bound (``_common`` docstring): ``|mean error| <= 2·D·u·sigma`` and ``|var error| <= (D + 2)·u·var``,
    u = 2^-24; a plain float32 sum of x would be off by ~1e3 standard deviations here, E[x²] - E[x]² by more.
    """
    rng = np.random.default_rng(5)
    x = (1000.0 + 0.01 * rng.standard_normal((3, n))).astype(np.float32)
    y, cache = F.forward("layer_norm", x, backend=backend, normalized_shape=n, eps=0.0)
    exact = x.astype(np.float64)
    sigma = exact.std(axis=1)
    u, depth = 2.0**-24, SUM_DEPTH[backend]
    assert np.all(np.abs(cache.kernel_mean - exact.mean(axis=1)) <= 2 * depth * u * sigma)
    assert np.all(np.abs(cache.rstd**-2 - sigma**2) <= (depth + 2) * u * sigma**2)
    assert np.max(np.abs(y.astype(np.float64).std(axis=1) - 1)) < 1e-3


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
@pytest.mark.parametrize("op,shape,hyper,has_beta", [CASES[15], CASES[16], CASES[17], CASES[18], CASES[19]],
                         ids=[IDS[15], IDS[16], IDS[17], IDS[18], IDS[19]])
def test_float32_far_from_zero_agrees_with_numpy(op, shape, hyper, has_beta, backend):
    """x = 1000 + 0.01·N(0, 1) in float32, every op, train and eval: still within 1e-5 of the float32 reference.

    Both round the mean to float32 before ``x - m``, so they normalize with the same ``m``. What this catches is
    any reordering of ``(x - m)·s`` or ``Σ dy·(x - m)`` into ``x·s - m·s`` or ``Σ dy·x - m·Σ dy`` (which
    reassociation permits, and "numba-fast" must not do): those cancel, here with errors of ~1e-3.
    """
    rng = np.random.default_rng(9)
    x = (1000.0 + 0.01 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    params = make_params(rng, op, shape, hyper, has_beta, np.float32)
    assert_agree(op, x, params, dy, hyper, np.float32, backend=backend)
    mean, var = given_stats(rng, op, shape, hyper, np.float32)
    stats = (None if mean is None else (1000 + 0.01 * mean).astype(np.float32), (1e-4 * var).astype(np.float32))
    assert_agree(op, x, params, dy, hyper, np.float32, stats, backend=backend)


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
def test_out_buffers(backend):
    """``out=`` writes y and dx in place, bit-identical to the allocating call; bad buffers raise."""
    rng = np.random.default_rng(8)
    for op, shape, hyper in (("group_norm", (3, 4, 50), {"num_groups": 2}), ("batch_norm", (3, 4, 50), {}),
                             ("layer_norm", (7, 50), {"normalized_shape": 50})):
        impl = get_impl(op, backend)
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


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
@pytest.mark.parametrize("op,hyper", [("layer_norm", {"normalized_shape": 600}), ("group_norm", {"num_groups": 3}),
                                      ("batch_norm", {})])
def test_deterministic(op, hyper, backend):
    """Runs are bitwise equal, on two threads and on one, with more rows than chunks x flush depth.

    For "numba-fast" too: reassociation fixes the order of its sums at compile time (per machine), not per run.
    """
    rng = np.random.default_rng(6)
    shape = (1100, 600) if op == "layer_norm" else (67, 6, 110)
    x, dy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    params = make_params(rng, op, shape, hyper, True, np.float32)
    def run_once():
        y, _, grads = run(op, backend, x, params, dy, hyper)
        return [y, *grads]

    assert_bitwise_repeatable(run_once)


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
def test_layers_update_running_stats_like_numpy(backend):
    rng = np.random.default_rng(7)
    for make, batch_stats in ((lambda: normref.BatchNorm(3), batch_norm_batch_stats),
                              (lambda: normref.InstanceNorm(3, affine=True, track_running_stats=True),
                               instance_norm_batch_stats)):
        ref, fast = make(), make()
        fast.backend = backend
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


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
def test_validation_matches_reference(backend):
    x = np.ones((2, 3, 4))
    with pytest.raises(TypeError, match="x must have a float32 or float64 dtype"):
        F.forward("layer_norm", x.astype(complex), backend=backend, normalized_shape=4)
    with pytest.raises(TypeError, match="gamma"):
        F.forward("batch_norm", x, np.ones(3, complex), backend=backend)
    with pytest.raises(TypeError, match="dy must be real"):
        _, cache = F.forward("batch_norm", x, backend=backend)
        F.backward("batch_norm", np.ones(x.shape, complex), cache)
    with pytest.raises(TypeError, match="stats"):
        F.forward("batch_norm", x, backend=backend, stats=(np.zeros(3, complex), np.ones(3)))
    with pytest.raises(ValueError, match="num_groups must divide"):
        F.forward("group_norm", x, backend=backend, num_groups=2)
    with pytest.raises(ValueError, match="normalized_shape"):
        F.forward("rms_norm", x, backend=backend, normalized_shape=5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.forward("batch_norm", np.ones((1, 3)), backend=backend)
    with pytest.raises(ValueError, match="dy must have the shape"):
        _, cache = F.forward("layer_norm", x, backend=backend, normalized_shape=4)
        F.backward("layer_norm", np.ones((2, 3)), cache)
    with pytest.raises(TypeError, match="integer|int64|dtype"):
        F.forward("instance_norm", np.ones((2, 3, 4), dtype=np.int64), backend=backend)


STANDARD_OPS = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm")
GRAD_CASES = [(s, mode, affine) for s in all_specs() if s.op in STANDARD_OPS for mode in s.modes for affine in s.affine]


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
@pytest.mark.parametrize("spec,mode,affine", GRAD_CASES,
                         ids=[f"{s.name}-{m}-affine{a}" for s, m, a in GRAD_CASES])
def test_gradcheck_on_numba(spec, mode, affine, backend):
    report = check(spec, mode=mode, affine=affine, backend=backend)
    assert report.passed, "\n" + report.table()


@pytest.mark.parametrize("op,hyper", [("layer_norm", {"normalized_shape": 6}), ("batch_norm", {}),
                                      ("group_norm", {"num_groups": 3})])
def test_a_cache_runs_only_the_backward_of_its_backend(op, hyper):
    """A "numba-fast" cache records its backend: F.backward runs the fast backward, the exact one refuses it
    (and the other way round), so a backward never mixes the two kernel sets."""
    rng = np.random.default_rng(10)
    x, dy = rng.standard_normal((5, 3, 6)), rng.standard_normal((5, 3, 6))
    params = make_params(rng, op, x.shape, hyper, True, np.float64)
    exact, fast = get_impl(op, "numba"), get_impl(op, "numba-fast")
    _, fast_cache = F.forward(op, x, *params, backend="numba-fast", **hyper)
    _, exact_cache = F.forward(op, x, *params, backend="numba", **hyper)
    assert fast_cache.backend == "numba-fast" and exact_cache.backend == "numba"
    for got, want in zip(F.backward(op, dy, fast_cache), fast.backward(dy, fast_cache)):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="made by the 'numba-fast' backend, not 'numba'"):
        exact.backward(dy, fast_cache)
    with pytest.raises(ValueError, match="made by the 'numba' backend, not 'numba-fast'"):
        fast.backward(dy, exact_cache)


@pytest.mark.parametrize("backend", NUMBA_BACKENDS)
@pytest.mark.parametrize("op,shape,hyper,has_beta", [CASES[0], CASES[3], CASES[5], CASES[8], CASES[11]],
                         ids=[IDS[0], IDS[3], IDS[5], IDS[8], IDS[11]])
def test_nan_and_inf_propagate_like_numpy(op, shape, hyper, has_beta, backend):
    """A NaN or an inf in x makes the same outputs non-finite as in the reference ("numba-fast" is compiled
    without the nnan/ninf fast-math flags, which would let LLVM assume neither occurs)."""
    rng = np.random.default_rng(11)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    x.flat[0], x.flat[-1] = np.nan, np.inf
    params = make_params(rng, op, shape, hyper, has_beta, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        y_ref, _, grads_ref = run(op, "numpy", x, params, dy, hyper)
    y, _, grads = run(op, backend, x, params, dy, hyper)
    for got, want in zip((y,) + tuple(grads), (y_ref,) + tuple(grads_ref)):
        if want is not None:
            assert np.array_equal(np.isfinite(got), np.isfinite(want))


def test_bench_quick_smoke():
    """`normref bench --quick` runs and prints its tables (not timed: the numbers are not asserted)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["bench", "--quick", "--layer", "LayerNorm", "--layer", "BatchNorm"])
    text = out.getvalue()
    assert status == 0
    assert "triad" in text and "LayerNorm" in text and "BatchNorm" in text and "fwd+bwd" in text
    assert "Numba ms" in text and "floor ms" in text
    assert "Numba fast ms" in text and "%floor fast" in text


def _bench_blocks(text):
    """``{layer name: [its two pass lines split into cells]}`` of a `normref bench` printout."""
    blocks, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        if "  x=(" in line:
            blocks[line.split("  x=(")[0]] = [lines[i + 1].split("  ")] + [lines[i + k].split() for k in (2, 3)]
    return blocks


def test_bench_seed_quick_smoke():
    """`normref bench --seed --quick` runs every seed layer and only those; PyTorch is `-` where it has no peer."""
    from normref.bench import SEED_LAYERS

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["bench", "--seed", "--quick"])
    text = out.getvalue()
    assert status == 0
    blocks = _bench_blocks(text)
    assert sorted(blocks) == sorted(layer.name for layer in SEED_LAYERS)
    assert "PowerNorm (approx)" in blocks and "UnifiedNorm (approx)" in blocks
    assert "floor 2.33 / 5.67 passes of x" in text  # RN-B's mask, 1/C of x with C = 3, read once per pass
    for name, (_, fwd, fwd_bwd) in blocks.items():
        assert fwd[0] == "fwd" and fwd_bwd[0] == "fwd+bwd"
        if "xPyTorch" in text:
            has_peer = name == "DyT"
            assert (fwd_bwd[-2] != "-") == has_peer, (name, fwd_bwd)  # the xPyTorch cell


def test_bench_seed_runners_agree_with_numpy():
    """Each seed layer's timed fwd+bwd (a surrogate with its state) gives the same dx on "numba" as on "numpy"."""
    from normref import bench

    rng = np.random.default_rng(1)
    for layer in bench.SEED_LAYERS:
        x, dy, args = bench._inputs(layer, layer.quick_shapes[0], rng)
        got, want = (bench._normref_runner(layer, backend, x, dy, args, bench.FWD_BWD)()
                     for backend in ("numba", "numpy"))
        assert len(got) == len(want) == 1 + len(args.params) + bool(args.state)  # dx, one per param, new state
        assert norm_rel_error(got[0], want[0]) <= 1e-5, layer.name


def test_bench_layer_dyt_quick_smoke():
    """`normref bench --layer DyT --quick` runs DyT alone, with PyTorch timed as its three ops."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["bench", "--layer", "DyT", "--quick"])
    text = out.getvalue()
    assert status == 0
    blocks = _bench_blocks(text)
    assert list(blocks) == ["DyT"]
    if "PyTorch ms" in text:
        head, fwd, fwd_bwd = blocks["DyT"]
        column = [h.strip() for h in head if h.strip()].index("PyTorch ms")
        assert float(fwd[column]) > 0 and float(fwd_bwd[column]) > 0


def test_bitwise_repeatability_check_can_fail():
    """The repeatability helper the kernel tests share raises on a run that changes, or that changes its arity."""
    rng = np.random.default_rng(0)
    with pytest.raises(AssertionError, match="differs bitwise"):
        assert_bitwise_repeatable(lambda: [rng.standard_normal(3)])
    calls = iter(range(3))
    with pytest.raises(AssertionError, match="returned"):
        assert_bitwise_repeatable(lambda: [np.zeros(2)] * (1 + next(calls)))
    assert_bitwise_repeatable(lambda: [np.arange(3.0), None])
