"""The numba.cuda backend against the NumPy reference, the gradient checker, and the block reductions themselves.

These tests need the ``cuda`` backend to load: a real GPU, or the CUDA simulator, which must be switched on
(``NUMBA_ENABLE_CUDASIM=1``) before numba is first imported, so not inside an ordinary pytest process.
``tests/test_cuda_simulator.py`` runs this file in its own process with the simulator on and fails unless these tests
ran and passed; in a process without either, they are skipped with that reason.

Tolerances (norm-relative ``max|a-b|/max|b|``): 1e-12 in float64 (observed ~1e-15: Welford/Chan and the tree sum in a
different order from NumPy's pairwise sums) and 1e-5 in float32 (observed ~2e-7: both sides round to float32 once).
Shapes are tiny: the simulator runs one OS thread per CUDA thread. They still cover lengths that are not multiples of
the block size ``TPB`` (16 under the simulator), lengths below it, N = 1 and N = 2, non-contiguous inputs, given
statistics (eval) and affine off.
"""

from __future__ import annotations

import numpy as np
import pytest

import normref
from normref import functional as F
from normref.testing.gradcheck import norm_rel_error
from normref.testing.specs import check, get_spec

pytestmark = pytest.mark.cuda

_REASON = normref.available_backends()["cuda"]
if _REASON is not None:
    pytest.skip("the cuda backend did not load in this process; these tests run in their own process under "
                "NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_simulator.py), or on a GPU. Load error: " + _REASON,
                allow_module_level=True)

from numba import cuda, float64  # noqa: E402  (only once the backend is known to load)

from normref.kernels.cuda._block_reduce import (TPB, block_sum, block_welford, shared_bytes,  # noqa: E402
                                               welford_push)

TOL = {np.float64: 1e-12, np.float32: 1e-5}
PER_CHANNEL = ("batch_norm", "group_norm", "instance_norm")


def _params(op, shape, hyper, rng, affine, dtype):
    if not affine:
        return []
    if op in PER_CHANNEL:
        pshape = (shape[1],)
    else:
        ns = hyper["normalized_shape"]
        pshape = (ns,) if isinstance(ns, int) else tuple(ns)
    gamma = (1.0 + 0.5 * rng.standard_normal(pshape)).astype(dtype)
    if op == "rms_norm":
        return [gamma]
    return [gamma, rng.standard_normal(pshape).astype(dtype)]


def _given_stats(op, x, hyper, rng, per_instance=False):
    """Plausible statistics of the shape each op takes (positive variances)."""
    n, c = x.shape[:2]
    if op == "batch_norm":
        shape = (c,)
    elif op == "instance_norm":
        shape = (n, c) if per_instance else (c,)
    elif op == "group_norm":
        shape = (n, hyper["num_groups"])
    else:
        ns = hyper["normalized_shape"]
        shape = x.shape[:x.ndim - (1 if isinstance(ns, int) else len(ns))]
    mean = (12.0 + rng.standard_normal(shape)).astype(x.dtype)
    var = (20.0 + 5.0 * rng.random(shape)).astype(x.dtype)
    return (None, var + mean**2) if op == "rms_norm" else (mean, var)


def _non_contiguous(x):
    """The same values as ``x`` in a strided view (every other element of a twice-as-wide array)."""
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    wide[..., ::2] = x
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    return view


# (op, shape, hyper): odd lengths, lengths above and below TPB, N = 1 and N = 2.
CASES = [
    ("batch_norm", (5, 3), {}),  # (N, C): one value per sample and channel
    ("batch_norm", (2, 3, 19), {}),  # N = 2, m = 38 > TPB, not a multiple of it
    ("batch_norm", (1, 2, 3, 7), {}),  # N = 1, spatial
    ("layer_norm", (3, 37), {"normalized_shape": 37}),
    ("layer_norm", (1, 3, 5), {"normalized_shape": (3, 5)}),  # one row
    ("layer_norm", (2, 2, 3, 3), {"normalized_shape": (3, 3)}),  # m = 9 < TPB
    ("group_norm", (2, 6, 7), {"num_groups": 3}),
    ("group_norm", (1, 4, 3, 3), {"num_groups": 2}),  # N = 1
    ("group_norm", (2, 6), {"num_groups": 2}),  # no spatial axes: per-channel parameters with S = 1
    ("instance_norm", (2, 3, 19), {}),
    ("instance_norm", (1, 2, 3, 3), {}),
    ("rms_norm", (3, 37), {"normalized_shape": 37}),
    ("rms_norm", (2, 2, 9), {"normalized_shape": (2, 9)}),
]


def _compare(op, x, params, hyper, rng, stats=None):
    """Forward, cache statistics and backward on cuda against numpy; returns the worst error."""
    dtype = x.dtype.type
    y, cache = F.forward(op, x, *params, backend="cuda", stats=stats, **hyper)
    y_ref, cache_ref = F.forward(op, x, *params, backend="numpy", stats=stats, **hyper)
    assert cache.backend == "cuda" and y.dtype == x.dtype and y.shape == x.shape
    errors = {"y": norm_rel_error(y, y_ref), "var": norm_rel_error(cache.var, cache_ref.var)}
    assert cache.var.shape == cache_ref.var.shape
    if cache_ref.mean is None:
        assert cache.mean is None
    else:
        assert cache.mean.shape == cache_ref.mean.shape
        errors["mean"] = norm_rel_error(cache.mean, cache_ref.mean)
    dy = rng.standard_normal(x.shape).astype(dtype)
    grads, grads_ref = F.backward(op, dy, cache), F.backward(op, dy, cache_ref)
    assert len(grads) == len(grads_ref)
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        if g_ref is None:
            assert g is None
            continue
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
        errors[f"grad{i}"] = norm_rel_error(g, g_ref)
    worst = max(errors.values())
    assert worst <= TOL[dtype], errors
    return worst


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("op,shape,hyper", CASES, ids=[f"{op}-{'x'.join(map(str, s))}" for op, s, _ in CASES])
def test_agrees_with_numpy_batch_stats(op, shape, hyper, dtype):
    rng = np.random.default_rng(sum(shape))
    x = (5.0 * rng.standard_normal(shape) + 12.0).astype(dtype)
    _compare(op, x, _params(op, shape, hyper, rng, True, dtype), hyper, rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("op,shape,hyper", CASES[1::2],
                         ids=[f"{op}-{'x'.join(map(str, s))}" for op, s, _ in CASES[1::2]])
def test_agrees_with_numpy_given_stats_and_affine_off(op, shape, hyper, dtype):
    rng = np.random.default_rng(1 + sum(shape))
    x = (5.0 * rng.standard_normal(shape) + 12.0).astype(dtype)
    _compare(op, x, _params(op, shape, hyper, rng, True, dtype), hyper, rng, stats=_given_stats(op, x, hyper, rng))
    _compare(op, x, [], hyper, rng, stats=_given_stats(op, x, hyper, rng))
    _compare(op, x, [], hyper, rng)


@pytest.mark.parametrize("op,shape,hyper", CASES[::3],
                         ids=[f"{op}-{'x'.join(map(str, s))}" for op, s, _ in CASES[::3]])
def test_agrees_with_numpy_on_non_contiguous_input(op, shape, hyper):
    rng = np.random.default_rng(2)
    x = _non_contiguous(5.0 * rng.standard_normal(shape) + 12.0)
    _compare(op, x, _params(op, shape, hyper, rng, True, np.float64), hyper, rng)


def test_instance_norm_per_instance_stats_and_beta_only():
    rng = np.random.default_rng(3)
    hyper = {}
    x = 5.0 * rng.standard_normal((2, 3, 5)) + 12.0
    _compare("instance_norm", x, [None, rng.standard_normal(3)], hyper, rng,
             stats=_given_stats("instance_norm", x, hyper, rng, per_instance=True))
    _compare("layer_norm", x, [rng.standard_normal(5), None], {"normalized_shape": 5}, rng)


def test_rms_norm_default_eps_is_the_dtype_epsilon():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5)).astype(np.float32) * 1e-3
    _compare("rms_norm", x, [], {"normalized_shape": 5}, rng)


# The gradient checker (float64 central differences) on the cuda backend. One small shape per layer keeps the
# simulator run short; the agreement tests above cover the other shapes.
GRAD_SHAPES = {"BatchNorm": (2, 2, 3), "LayerNorm": (2, 2, 3), "GroupNorm": (1, 4, 3), "InstanceNorm": (2, 2, 3),
               "RMSNorm": (2, 5)}
GRAD_CASES = [(name, mode, affine) for name in GRAD_SHAPES for mode, affine in (("train", True), ("eval", True),
                                                                                  ("train", False))]


@pytest.mark.parametrize("name,mode,affine", GRAD_CASES, ids=[f"{n}-{m}-affine{a}" for n, m, a in GRAD_CASES])
def test_gradient_checker_on_cuda(name, mode, affine):
    report = check(get_spec(name), mode=mode, affine=affine, backend="cuda", shape=GRAD_SHAPES[name])
    assert report.passed, "\n" + report.table()


def test_layers_update_running_stats_like_numpy():
    """The layers read the cuda cache's mean/var through batch_norm_batch_stats / instance_norm_batch_stats."""
    rng = np.random.default_rng(5)
    x = 5.0 * rng.standard_normal((3, 2, 5)) + 12.0
    for make in (lambda b: normref.BatchNorm(2, backend=b),
                 lambda b: normref.InstanceNorm(2, track_running_stats=True, backend=b)):
        layers = {b: make(b) for b in ("numpy", "cuda")}
        for layer in layers.values():
            layer.forward(x)
            layer.forward(x + 1.0)
        for key in ("running_mean", "running_var"):
            assert norm_rel_error(layers["cuda"].buffers[key], layers["numpy"].buffers[key]) <= 1e-12


def test_results_are_bitwise_reproducible():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 5))
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    dy = rng.standard_normal(x.shape)
    runs = []
    for _ in range(2):
        y, cache = F.forward("layer_norm", x, gamma, beta, normalized_shape=5, backend="cuda")
        runs.append((y, *F.backward("layer_norm", dy, cache)))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_inputs_are_validated_like_numpy():
    x = np.ones((2, 3, 4))
    with pytest.raises(TypeError, match="x must have a float32 or float64 dtype"):
        F.forward("batch_norm", x.astype(np.complex128), backend="cuda")
    with pytest.raises(TypeError, match="gamma"):
        F.forward("layer_norm", x, np.ones(4, complex), normalized_shape=4, backend="cuda")
    with pytest.raises(ValueError, match="gamma must have shape"):
        F.forward("batch_norm", x, np.ones(4), backend="cuda")
    with pytest.raises(ValueError, match="num_groups must divide"):
        F.forward("group_norm", x, num_groups=2, backend="cuda")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.forward("batch_norm", np.ones((1, 3)), backend="cuda")
    with pytest.raises(ValueError, match="normalized_shape"):
        F.forward("rms_norm", x, normalized_shape=3, backend="cuda")
    _, cache = F.forward("layer_norm", x, normalized_shape=4, backend="cuda")
    with pytest.raises(ValueError, match="dy must have the shape"):
        F.backward("layer_norm", np.ones((2, 3)), cache)


# The block reductions on their own: lengths 1, below, at and above TPB, and many times it.
LENGTHS = [1, TPB - 1, TPB, TPB + 1, 3 * TPB + 5]


@cuda.jit
def _reduce_rows_kernel(x, sums, means, m2s):
    shared = cuda.shared.array(0, float64)  # dynamic (see _block_reduce: static arrays race in the simulator)
    buf_a = shared[:TPB]
    buf_b = shared[TPB:2 * TPB]
    buf_c = shared[2 * TPB:3 * TPB]
    row = cuda.blockIdx.x
    total = 0.0
    count, mean, m2 = 0.0, 0.0, 0.0
    for j in range(cuda.threadIdx.x, x.shape[1], TPB):
        total += x[row, j]
        count, mean, m2 = welford_push(count, mean, m2, x[row, j])
    total = block_sum(buf_a, total)
    again = block_sum(buf_a, 2.0 * total)  # the buffer is reused at once: needs the trailing barrier
    count, mean, m2 = block_welford(buf_a, buf_b, buf_c, count, mean, m2)
    if cuda.threadIdx.x == 0:
        sums[row] = again / (2 * TPB)  # every thread contributed the same total
        means[row] = mean
        m2s[row] = m2


@pytest.mark.parametrize("length", LENGTHS)
def test_block_sum_and_block_welford(length):
    rng = np.random.default_rng(length)
    x = 3.0 * rng.standard_normal((2, length)) + 100.0
    sums, means, m2s = np.zeros(2), np.zeros(2), np.zeros(2)
    _reduce_rows_kernel[2, TPB, 0, shared_bytes(3)](x, sums, means, m2s)
    assert norm_rel_error(sums, x.sum(axis=1)) <= 1e-14
    assert norm_rel_error(means, x.mean(axis=1)) <= 1e-14
    m2_ref = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    assert np.allclose(m2s, m2_ref, rtol=1e-11, atol=1e-9)
