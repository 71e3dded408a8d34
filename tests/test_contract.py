"""The contract every op and layer keeps (see the package's contributor notes), checked on the spec table.

* layers: ``backward`` adds into ``.grads`` (two calls give the sum) and ``zero_grad`` resets them;
* ops: a ``None`` parameter gets a ``None`` gradient; the cache records its backend;
* nothing is mutated: not ``x``, ``dy``, the parameters, given statistics, nor the buffers' old arrays;
* the output and ``dx`` take ``x``'s dtype, whatever the parameters' dtype;
* the backend registry's precedence and its errors; the ``normref check`` command line.

Functional checks reach each layer's op through the :class:`normref.nn.NormLayer` interface (``op``,
``op_params()``, ``op_hyper()``, ``given_stats()``), so a new spec gets them without naming its op here.
"""

import json

import numpy as np
import pytest

import normref
from normref import _registry, functional as F, nn, ops
from normref.cli import main
from normref.nn import NormLayer
from normref.testing.specs import all_specs

CASES = [(spec, mode) for spec in all_specs() for mode in spec.modes]
CASE_IDS = [f"{s.name}-{m}" for s, m in CASES]


def built(spec, mode, shape=None, affine=None, seed=0):
    """A layer with random parameters and non-trivial running statistics, in ``mode``; an input and a dy for it."""
    shape = tuple(spec.shapes[0] if shape is None else shape)
    affine = spec.affine[0] if affine is None else affine

    def make():
        rng = np.random.default_rng(seed)
        layer = spec.build(shape, affine, rng=rng)
        for module in layer.modules():
            for name, value in module.params.items():
                noise = rng.normal(1.0 if name == "gamma" else 0.0, 0.5, value.shape)
                module.params[name] = noise.astype(value.dtype)
        layer.train(mode == "train")
        return layer, spec.make_input(rng, shape), rng

    layer, x, _ = make()
    y_shape = np.shape(layer.forward(x))
    layer, x, rng = make()  # afresh: the forward above may have updated running statistics
    return layer, x, rng.standard_normal(y_shape)


def uses_the_op_interface(spec):
    """Whether the layer's forward is NormLayer's: one registered op called with op_params, op_hyper, given_stats.

    For those layers the functional call is known without naming the op here; others run their own forward.
    """
    layer = spec.make(tuple(spec.shapes[0]), spec.affine[0])
    return isinstance(layer, NormLayer) and type(layer).forward is NormLayer.forward


def has_params(spec):
    return any(True for _ in spec.make(tuple(spec.shapes[0]), True in spec.affine).named_parameters())


OP_CASES = [(s, m) for s, m in CASES if uses_the_op_interface(s)]
OP_CASE_IDS = [f"{s.name}-{m}" for s, m in OP_CASES]


def snapshot(obj):
    """Deep copies of every array in a (nested) tuple, list, dict or NamedTuple."""
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(*map(snapshot, obj)) if hasattr(obj, "_fields") else type(obj)(map(snapshot, obj))
    return obj


def assert_same(a, b):
    if isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert_same(u, v)
    else:
        assert a == b


# -- gradients accumulate ------------------------------------------------------------------------------------------

AFFINE_CASES = [(s, m) for s, m in CASES if has_params(s)]


@pytest.mark.parametrize("spec,mode", AFFINE_CASES, ids=[f"{s.name}-{m}" for s, m in AFFINE_CASES])
def test_backward_accumulates_and_zero_grad_resets(spec, mode):
    layer, x, dy1 = built(spec, mode, affine=True in spec.affine)
    dy2 = np.random.default_rng(9).standard_normal(dy1.shape)
    single = []
    for dy in (dy1, dy2):
        fresh, _, _ = built(spec, mode, affine=True in spec.affine)
        fresh.zero_grad()
        fresh.forward(x)
        fresh.backward(dy)
        single.append(dict(fresh.named_grads()))
    layer.zero_grad()
    layer.forward(x)
    layer.backward(dy1)
    layer.backward(dy2)  # the same cache, a second upstream gradient: a parameter used twice gets the sum
    grads = dict(layer.named_grads())
    assert grads.keys() == single[0].keys() and grads
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, single[0][name] + single[1][name], rtol=1e-12, atol=1e-12)
    assert any(np.abs(g).max() > 0 for g in single[1].values())  # not vacuous
    layer.zero_grad()
    params = dict(layer.named_parameters())
    for name, grad in layer.named_grads():
        assert grad.shape == params[name].shape and not grad.any()


# -- None parameters, caches, backends -----------------------------------------------------------------------------

@pytest.mark.parametrize("spec,mode", OP_CASES, ids=OP_CASE_IDS)
def test_absent_parameters_get_none_gradients(spec, mode):
    """Every subset of the optional parameters: each present one gets an array of its shape, each absent one None.

    The optional ones are those the layer drops when built with ``affine=False`` (all of them for a layer without an
    affine switch are required, and only the full set is tried).
    """
    layer, x, dy = built(spec, mode, affine=True in spec.affine)
    params = layer.op_params()
    if False in spec.affine:
        without = spec.make(tuple(spec.shapes[0]), False).op_params()
        optional = [i for i, (p, q) in enumerate(zip(params, without)) if p is not None and q is None]
    else:
        optional = []
    for mask in range(2 ** len(optional)):
        given = list(params)
        for bit, i in enumerate(optional):
            if not (mask >> bit) & 1:
                given[i] = None
        _, cache = F.forward(layer.op, x, *given, stats=layer.given_stats(), **layer.op_hyper())
        dx, *dparams = F.backward(layer.op, dy, cache)
        assert dx.shape == x.shape
        assert len(dparams) == len(params)
        for p, d in zip(given, dparams):
            assert (d is None) if p is None else (d.shape == p.shape)


@pytest.mark.parametrize("spec,mode", OP_CASES, ids=OP_CASE_IDS)
def test_cache_records_its_backend(spec, mode):
    layer, x, _ = built(spec, mode)
    layer.forward(x)
    assert layer.cache.backend == "numpy"
    _, cache = F.forward(layer.op, x, *layer.op_params(), backend="numpy", stats=layer.given_stats(),
                         **layer.op_hyper())
    assert cache.backend == "numpy"


def test_registry_precedence(monkeypatch):
    """Explicit argument > innermost use_backend block > NORMREF_BACKEND > "numpy"."""
    monkeypatch.delenv("NORMREF_BACKEND", raising=False)
    assert normref.resolve_backend() == "numpy"
    monkeypatch.setenv("NORMREF_BACKEND", "cuda")
    assert normref.resolve_backend() == "cuda"
    with normref.use_backend("numba"):
        assert normref.resolve_backend() == "numba"
        with normref.use_backend("numpy"):
            assert normref.resolve_backend() == "numpy"
        assert normref.resolve_backend() == "numba"
        assert normref.resolve_backend("cuda") == "cuda"
    assert normref.resolve_backend() == "cuda"
    assert normref.resolve_backend("numpy") == "numpy"
    monkeypatch.setenv("NORMREF_BACKEND", "")
    assert normref.resolve_backend() == "numpy"
    monkeypatch.setenv("NORMREF_BACKEND", "fortran")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        normref.resolve_backend()


def test_precedence_reaches_the_ops_and_layers(monkeypatch):
    """The resolved backend is the one that runs: a missing one raises, an explicit "numpy" overrides it."""
    monkeypatch.setitem(_registry._LOAD_ERRORS, "cuda", "ImportError: pretend there is no GPU")
    x = np.random.default_rng(0).standard_normal((4, 3))
    layer = nn.BatchNorm(3)  # backend=None: resolved at each call
    monkeypatch.setenv("NORMREF_BACKEND", "cuda")
    with pytest.raises(NotImplementedError, match=r"'cuda' is not available.*available backends: \[.*'numpy'"):
        layer.forward(x)
    with normref.use_backend("numpy"):
        layer.forward(x)
        assert layer.cache.backend == "numpy"
        with normref.use_backend("cuda"), pytest.raises(NotImplementedError, match=r"pretend there is no GPU"):
            F.forward("batch_norm", x)
        _, cache = F.forward("batch_norm", x, backend="numpy")  # explicit beats the block
        assert cache.backend == "numpy"
    explicit = nn.BatchNorm(3, backend="numpy")
    explicit.forward(x)  # explicit beats the environment
    assert explicit.cache.backend == "numpy"


def test_missing_op_names_where_it_is_implemented(monkeypatch):
    """An op asked of a backend that lacks it names the backends that have it; an unknown op names none."""
    impl = _registry.Impl(ops.batch_norm_forward, ops.batch_norm_backward)
    monkeypatch.setitem(_registry._IMPLS, ("only_on_numpy", "numpy"), impl)
    monkeypatch.setitem(_registry._LOAD_ERRORS, "cuda", "ImportError: pretend there is no GPU")
    with pytest.raises(NotImplementedError, match=r"'cuda' is not available .*available backends: \['numpy'"):
        _registry.get_impl("only_on_numpy", "cuda")
    with pytest.raises(NotImplementedError, match=r"'no_such_op' has no 'numpy' implementation.*: \[\]"):
        _registry.get_impl("no_such_op", "numpy")
    assert _registry.available_op_backends("only_on_numpy") == ["numpy"]


def test_backward_runs_on_the_cache_backend(monkeypatch):
    """F.backward dispatches on cache.backend, not on the current context: a backward never mixes backends."""
    x, dy = np.random.default_rng(0).standard_normal((5, 3)), np.random.default_rng(1).standard_normal((5, 3))
    _, cache = F.forward("layer_norm", x, normalized_shape=3)
    monkeypatch.setitem(_registry._LOAD_ERRORS, "cuda", "ImportError: pretend there is no GPU")
    with normref.use_backend("cuda"):
        dx = F.backward("layer_norm", dy, cache)[0]
    np.testing.assert_array_equal(dx, ops.layer_norm_backward(dy, cache)[0])
    with pytest.raises(NotImplementedError, match=r"'cuda' is not available"):
        F.backward("layer_norm", dy, cache._replace(backend="cuda"))


# -- nothing is mutated --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,mode", OP_CASES, ids=OP_CASE_IDS)
def test_ops_mutate_nothing(spec, mode):
    layer, x, dy = built(spec, mode)
    params, stats, hyper = layer.op_params(), layer.given_stats(), layer.op_hyper()
    before = snapshot((x, dy, params, stats, hyper))
    y, cache = F.forward(layer.op, x, *params, stats=stats, **hyper)
    cache_before = snapshot(cache)
    y_before = y.copy()
    F.backward(layer.op, dy, cache)
    assert_same((x, dy, params, stats, hyper), before)
    assert_same(cache, cache_before)
    np.testing.assert_array_equal(y, y_before)


@pytest.mark.parametrize("spec,mode", CASES, ids=CASE_IDS)
def test_layers_mutate_nothing_in_place(spec, mode):
    """The layer may replace its buffers and gradients, but never write into x, dy, or an array it handed out."""
    layer, x, dy = built(spec, mode)
    handed_out = {"params": dict(layer.params), "buffers": dict(layer.buffers), "grads": dict(layer.grads)}
    before = snapshot((x, dy, handed_out))
    y = layer.forward(x)
    y_before = y.copy()
    layer.backward(dy)
    assert_same((x, dy, handed_out), before)
    np.testing.assert_array_equal(y, y_before)
    for name, value in layer.params.items():  # the parameters themselves only change by an optimizer step
        np.testing.assert_array_equal(value, before[2]["params"][name])


# -- dtypes --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,mode", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("x_dtype,param_dtype", [(np.float32, np.float64), (np.float64, np.float32)],
                         ids=["x32-p64", "x64-p32"])
def test_output_and_dx_take_the_input_dtype(spec, mode, x_dtype, param_dtype):
    layer, x, dy = built(spec, mode)
    for module in layer.modules():
        module.params = {k: v.astype(param_dtype) for k, v in module.params.items()}
        module.grads = {k: v.astype(param_dtype) for k, v in module.grads.items()}
    x, dy = x.astype(x_dtype), dy.astype(x_dtype)
    y = layer.forward(x)
    dx = layer.backward(dy)
    assert y.dtype == x_dtype and dx.dtype == x_dtype
    # And float32 is not float64 in disguise: the result agrees with float64 to float32 accuracy only.
    reference, x64, dy64 = built(spec, mode)
    np.testing.assert_allclose(y, reference.forward(x.astype(np.float64)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec,mode", OP_CASES, ids=OP_CASE_IDS)
def test_op_outputs_take_the_input_dtype(spec, mode):
    layer, x, dy = built(spec, mode)
    params64 = layer.op_params()
    for x_dtype in (np.float32, np.float64):
        y, cache = F.forward(layer.op, x.astype(x_dtype), *params64, stats=layer.given_stats(), **layer.op_hyper())
        dx, *_ = F.backward(layer.op, dy.astype(x_dtype), cache)
        assert y.dtype == x_dtype and dx.dtype == x_dtype


# -- the command line ----------------------------------------------------------------------------------------------

def test_check_command_json(capsys):
    """The JSON report parses and covers what was asked (the five standard layers on NumPy, to keep this fast)."""
    names = ["BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm"]
    status = main(["check", "--json", "--backend", "numpy"] + [f"--layer={name}" for name in names])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["passed"] is True
    assert {row["layer"] for row in report["checks"]} == set(names)
    specs = [s for s in all_specs() if s.name in names]
    assert len(report["checks"]) == sum(len(s.modes) * len(s.affine) for s in specs)
    assert all(row["backend"] == "numpy" and row["passed"] for row in report["checks"])


def test_check_command_one_layer_and_unknown_layer(capsys):
    assert main(["check", "--layer", "layernorm", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "LayerNorm" in out and "BatchNorm" not in out and "passed, 0 failed" in out
    assert main(["check", "--layer", "nosuch"]) == 2
    assert "unknown layer(s) ['nosuch']" in capsys.readouterr().err
