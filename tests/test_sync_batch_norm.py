"""SyncBatchNorm: on uneven shards it equals BatchNorm on the concatenated batch (forward, dx, dgamma, dbeta, running
statistics, eval), with simulated ranks in one process and with real MPI processes (``mpiexec -n 2`` and ``-n 3``,
run when the optional extra ``mpi`` is installed)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import normref
from normref.ops.batch_norm import batch_norm_backward, batch_norm_forward
from normref.ops.sync_batch_norm import (SingleProcessCommunicator, ThreadGroup, sync_batch_norm_backward,
                                         sync_batch_norm_forward)
from normref.testing.gradcheck import norm_rel_error

MPI_SCRIPT = Path(__file__).parent / "mpi" / "sync_bn_check.py"


def run_sharded(x, dy, sizes, gamma, beta, dtype=np.float64):
    """Forward and backward of the op on ``len(sizes)`` simulated ranks.

    Returns ``(y, dx, [dgamma_k], [dbeta_k], group)``: the concatenated outputs, each rank's parameter shares.
    """
    group = ThreadGroup(len(sizes))
    cuts = np.cumsum(sizes)[:-1]

    def rank_fn(rank, comm, xs, dys):
        y, cache = sync_batch_norm_forward(xs, gamma, beta, comm=comm)
        return (y, *sync_batch_norm_backward(dys, cache))

    out = group.run(rank_fn, np.split(x.astype(dtype), cuts), np.split(dy.astype(dtype), cuts))
    return (np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]), [o[2] for o in out],
            [o[3] for o in out], group)


@pytest.mark.parametrize("sizes", [[3, 5], [1, 4, 2], [2, 2, 1, 6]])
def test_simulated_ranks_equal_batch_norm_on_the_whole_batch(sizes):
    rng = np.random.default_rng(len(sizes))
    x = 5 * rng.standard_normal((sum(sizes), 3, 2, 3)) + 12
    dy = rng.standard_normal(x.shape)
    gamma, beta = 1 + 0.5 * rng.standard_normal(3), rng.standard_normal(3)
    y, dx, dgammas, dbetas, _ = run_sharded(x, dy, sizes, gamma, beta)
    y_bn, cache = batch_norm_forward(x, gamma, beta)
    dx_bn, dgamma_bn, dbeta_bn = batch_norm_backward(dy, cache)
    assert norm_rel_error(y, y_bn) < 1e-14
    assert norm_rel_error(dx, dx_bn) < 1e-13
    assert norm_rel_error(sum(dgammas), dgamma_bn) < 1e-14 and norm_rel_error(sum(dbetas), dbeta_bn) < 1e-14
    # the check can fail: normalizing each shard by itself (plain BN per rank) is a different function
    y_local = np.concatenate([batch_norm_forward(s, gamma, beta)[0] for s in np.split(x, np.cumsum(sizes)[:-1])])
    assert norm_rel_error(y_local, y_bn) > 1e-2


def test_communication_is_one_allgather_of_3c_and_one_allreduce_of_2c():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4, 3))
    *_, group = run_sharded(x, rng.standard_normal(x.shape), [1, 4, 2], None, None)
    assert group.log == [("allgather", 3 * 4), ("allreduce_sum", 2 * 4)]


def test_chan_merge_keeps_the_precision_of_two_pass_statistics():
    """A large offset: the one-pass sum of squares would lose every digit in float32-like cancellation."""
    rng = np.random.default_rng(3)
    x = 1e8 + rng.standard_normal((9, 2, 5))
    y, dx, *_ = run_sharded(x, rng.standard_normal(x.shape), [2, 3, 4], None, None)
    assert norm_rel_error(y, batch_norm_forward(x)[0]) < 1e-6


def test_float32_stays_float32_and_matches():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 4))
    dy = rng.standard_normal(x.shape)
    y, dx, *_ = run_sharded(x, dy, [2, 4], None, None, dtype=np.float32)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    y_bn, cache = batch_norm_forward(x)
    assert norm_rel_error(y, y_bn) < 1e-5 and norm_rel_error(dx, batch_norm_backward(dy, cache)[0]) < 1e-5


def test_layers_match_batch_norm_over_training_steps_and_eval():
    rng = np.random.default_rng(5)
    sharded = normref.ShardedSyncBatchNorm(3, [1, 4, 2], momentum=0.2)
    bn = normref.BatchNorm(3, momentum=0.2)
    gamma, beta = 1 + 0.5 * rng.standard_normal(3), rng.standard_normal(3)
    for layer in (sharded, bn):
        layer.params["gamma"], layer.params["beta"] = gamma.copy(), beta.copy()
    for _ in range(3):
        x = 3 * rng.standard_normal((7, 3, 2, 2)) + 1
        dy = rng.standard_normal(x.shape)
        assert norm_rel_error(sharded(x), bn(x)) < 1e-14
        assert norm_rel_error(sharded.backward(dy), bn.backward(dy)) < 1e-13
    for name in ("gamma", "beta"):  # accumulated over three steps, in both
        assert norm_rel_error(sharded.grads[name], bn.grads[name]) < 1e-13
    for name in ("running_mean", "running_var"):
        assert norm_rel_error(sharded.buffers[name], bn.buffers[name]) < 1e-14
    assert sharded.buffers["num_batches_tracked"] == 3
    x = rng.standard_normal((7, 3, 2, 2))
    sharded.eval(), bn.eval()
    log_length = len(sharded.group.log)
    assert norm_rel_error(sharded(x), bn(x)) < 1e-14
    assert len(sharded.group.log) == log_length  # evaluation communicates nothing


def test_single_process_communicator_is_batch_norm():
    rng = np.random.default_rng(6)
    bn = normref.BatchNorm(2)
    sync = normref.SyncBatchNorm.from_batch_norm(bn, comm=SingleProcessCommunicator())
    x, dy = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 3))
    assert norm_rel_error(sync(x), bn(x)) < 1e-14 and norm_rel_error(sync.backward(dy), bn.backward(dy)) < 1e-13


def test_bad_inputs_and_failing_ranks():
    x = np.ones((4, 2, 3))
    with pytest.raises(TypeError, match="communicator"):
        sync_batch_norm_forward(x, comm=object())
    with pytest.raises(ValueError, match="more than 1 value"):
        sync_batch_norm_forward(np.ones((1, 2)), comm=SingleProcessCommunicator())
    with pytest.raises(ValueError, match="shard_sizes"):
        normref.ShardedSyncBatchNorm(2, [3, 0])
    with pytest.raises(ValueError, match="samples"):
        normref.ShardedSyncBatchNorm(2, [1, 2])(x)
    group = ThreadGroup(3, timeout=10)

    def rank_fn(rank, comm):  # rank 1 fails before the collective: the others must not hang
        if rank == 1:
            raise ValueError("rank 1 failed")
        return sync_batch_norm_forward(x, comm=comm)

    with pytest.raises(ValueError, match="rank 1 failed"):
        group.run(rank_fn)


def mpiexec_path():
    """The mpiexec installed with this Python's mpich wheel (beside the interpreter), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


@pytest.mark.parametrize("ranks,args,expect", [(2, [], "OK"), (3, [], "OK"), (2, ["--unsynced"], "FAIL")])
def test_mpi_processes_equal_batch_norm(ranks, args, expect):
    pytest.importorskip("mpi4py", reason='needs the optional extra "mpi": pip install -e ".[mpi]"')
    mpiexec = mpiexec_path()
    if mpiexec is None:
        pytest.skip('mpi4py is installed but no mpiexec was found: pip install -e ".[mpi]" brings the mpich wheel')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                   os.environ.get("PYTHONPATH")])))
    result = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, str(MPI_SCRIPT), *args],
                            capture_output=True, text=True, timeout=120, env=env)
    output = result.stdout + result.stderr
    assert output.startswith(f"{expect} ranks={ranks}"), output
    assert (result.returncode == 0) is (expect == "OK"), output
