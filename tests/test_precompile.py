"""`normref compile` (normref.testing.precompile) and `Module.astype`, which it builds float32 layers with."""

import contextlib
import io

import numpy as np
import pytest

from normref import nn
from normref._registry import available_op_backends, registered_ops
from normref.cli import main
from normref.testing import precompile as pc
from normref.testing.specs import all_specs, get_spec


# -- Module.astype ----------------------------------------------------------------------------------------------------
def test_astype_casts_parameters_gradients_and_float_buffers_only():
    layer = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm(4))
    layer.forward(np.random.default_rng(0).standard_normal((5, 3)))  # running stats and the int step counter move
    before = {name: np.array(v, copy=True) for name, v in layer.state_dict().items()}
    assert layer.astype(np.float32) is layer
    for name, value in layer.named_parameters():
        assert value.dtype == np.float32, name
        np.testing.assert_array_equal(value, before[name].astype(np.float32))
    for _, grad in layer.named_grads():
        assert grad.dtype == np.float32
    buffers = dict(layer.named_buffers())
    assert buffers["1.running_var"].dtype == np.float32
    assert buffers["1.num_batches_tracked"] == before["1.num_batches_tracked"]  # an integer: not cast
    assert np.asarray(buffers["1.num_batches_tracked"]).dtype.kind in "iu"
    assert layer.children["1"].dtype == np.float32  # new state is made in the new precision
    y = layer.forward(np.ones((5, 3), np.float32))
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32


def test_astype_refuses_a_non_floating_dtype():
    with pytest.raises(TypeError, match="astype: dtype must be a floating dtype"):
        nn.LayerNorm(3).astype(np.int32)


def test_spec_build_in_float32_warms_up_in_float32():
    layer = get_spec("PowerNorm-post").build((4, 4, 5), True, "numpy", dtype=np.float32)
    assert all(v.dtype == np.float32 for _, v in layer.named_parameters())
    assert layer.buffers["running_phi"].dtype == np.float32  # the warm-up forwards ran on float32 input


# -- the plan ---------------------------------------------------------------------------------------------------------
def test_plan_reaches_every_numba_op():
    """Every op with a "numba" kernel is a task's op, or the surrogate op its layers run with backward="approx"."""
    tasks = pc.plan(["numba"], ["float64"])
    task_ops = {t.op for t in tasks}
    approx_ops = set()
    for spec in all_specs():
        if spec.op in task_ops:
            layer = spec.make(tuple(spec.shapes[0]), True)
            approx_ops.add(getattr(layer, "approx_op", None))
    numba_ops = {op for op in registered_ops() if "numba" in available_op_backends(op)}
    assert numba_ops and numba_ops <= task_ops | approx_ops, numba_ops - task_ops - approx_ops
    assert all(t.backend == "numba" and t.dtype == "float64" for t in tasks)
    names = [n for t in tasks for n in t.spec_names]
    assert len(names) == len(set(names))  # each spec in one task


def test_plan_orders_by_dtype_then_backend_then_op_and_filters_layers():
    tasks = pc.plan(["numba", "numba-fast"], ["float32", "float64"], layers=["layernorm", "DyT"])
    assert [(t.dtype, t.backend, t.op) for t in tasks] == [
        ("float32", "numba", "layer_norm"), ("float32", "numba", "dyt"), ("float32", "numba-fast", "layer_norm"),
        ("float64", "numba", "layer_norm"), ("float64", "numba", "dyt"), ("float64", "numba-fast", "layer_norm")]


@pytest.mark.parametrize("kwargs,match", [
    (dict(backends=["numpy"]), "backends: each must be one of"),
    (dict(backends=["cuda"]), "backends: each must be one of"),
    (dict(dtypes=["float16"]), "dtypes: each must be one of"),
    (dict(layers=["LayerNorm", "NoSuchNorm"]), r"layers: unknown \['nosuchnorm'\]; known: \['"),
])
def test_plan_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pc.plan(**kwargs)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_precompile_refuses_bad_jobs(jobs):
    with pytest.raises(ValueError, match="jobs must be a positive int"):
        pc.precompile([], jobs)


def test_a_failing_task_is_reported_not_raised():
    result = pc.run_task(pc.Task("numba", "float64", "layer_norm", ("NoSuchLayer",)))
    assert result.error.startswith("KeyError") and "NoSuchLayer" in result.error


# -- compiling, in worker processes, into a fresh cache ---------------------------------------------------------------
def test_workers_fill_the_cache_that_a_later_run_loads(tmp_path, monkeypatch):
    """Two worker processes compile into an empty NUMBA_CACHE_DIR; new workers then load every kernel from it."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))  # read by the spawned workers when they import numba
    tasks = pc.plan(["numba"], ["float32", "float64"], layers=["WeightStandardization"])
    assert len(tasks) == 2
    seen = []
    first = pc.precompile(tasks, jobs=2, on_result=seen.append)
    assert seen == first and {r.task for r in first} == set(tasks)
    assert all(not r.error and r.compiled > 0 for r in first), first
    assert list(tmp_path.rglob("*.nbc"))  # the compiled kernels are on disk
    second = pc.precompile(tasks, jobs=2)
    assert all(not r.error and r.compiled == 0 and r.loaded > 0 for r in second), second


def test_cache_saves_in_a_worker_hold_the_lock(tmp_path, monkeypatch):
    """The wrapped save runs Numba's with the lock file locked (a second descriptor cannot take it), once wrapped."""
    fcntl = pytest.importorskip("fcntl", reason="POSIX only: without fcntl, normref compile uses one process")
    from numba.core.caching import IndexDataCacheFile

    lock = tmp_path / "cache.lock"
    seen = []

    def numba_save(self, key, data):
        with open(lock, "a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")

    monkeypatch.setattr(IndexDataCacheFile, "save", numba_save)  # restored to Numba's own after the test
    assert pc.serialize_cache_writes(lock) and pc.serialize_cache_writes(lock)
    assert IndexDataCacheFile.save._normref_original is numba_save  # wrapped once, not twice
    IndexDataCacheFile.save(None, "key", "data")
    assert seen == ["held"]
    with open(lock, "a") as probe:  # and released afterwards
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- the command ------------------------------------------------------------------------------------------------------
def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["compile", *argv])
    return status, out.getvalue(), err.getvalue()


def test_cli_prints_one_line_per_task_and_the_totals():
    status, out, _ = run_cli("--layer", "WeightStandardization", "--backend", "numba", "--dtype", "float64", "-j", "1")
    lines = out.strip().splitlines()
    assert status == 0
    assert lines[0].startswith("normref compile: 1 tasks on 1 worker process(es); cache: ")
    assert lines[1].startswith("[1/1] numba      float64 weight_standardization")
    assert lines[-1].startswith("1 tasks ran, 0 failed: ") and "loaded from the cache" in lines[-1]


@pytest.mark.parametrize("argv,message", [
    (("--layer", "Linear"), "no Numba kernel for layer(s) ['Linear']"),
    (("-j", "0", "--layer", "DyT"), "--jobs must be >= 1, got 0"),
    (("--layer", "NoSuchNorm"), "normref compile: layers: unknown ['nosuchnorm']"),
])
def test_cli_refuses(argv, message):
    status, _, err = run_cli(*argv)
    assert status == 2 and message in err
