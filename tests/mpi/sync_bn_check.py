"""Run under MPI: ``mpiexec -n K python tests/mpi/sync_bn_check.py``. tests/test_sync_batch_norm.py launches it.

Every rank draws the same global batch, keeps its own uneven shard, and runs SyncBatchNorm over MPI for two training
steps and one evaluation step. Each rank compares its shard's output and dx, the ranks' summed dgamma/dbeta, and the
running statistics with single-process BatchNorm on the whole batch. Rank 0 prints one line; the exit status is 0
only if every rank agrees to 1e-12 (norm-relative) with BatchNorm.

``--unsynced`` is the negative control: the layer gets a one-rank communicator, so each rank normalizes with its
shard's statistics only, and the comparison must FAIL (exit status 1).
"""

import sys

import numpy as np


def shard_sizes(size: int) -> list[int]:
    """Uneven shards: 2 ranks -> [2, 5]; 3 ranks -> [1, 4, 2]; K ranks -> 1, 4, 2, 1, 4, 2, ..."""
    return [2, 5] if size == 2 else [(1, 4, 2)[k % 3] for k in range(size)]


def main() -> int:
    from normref.nn import BatchNorm, MPICommunicator, SyncBatchNorm
    from normref.ops.sync_batch_norm import SingleProcessCommunicator
    from normref.testing.gradcheck import norm_rel_error

    comm = MPICommunicator()
    sizes = shard_sizes(comm.size)
    start, stop = sum(sizes[:comm.rank]), sum(sizes[:comm.rank + 1])
    rng = np.random.default_rng(2024)  # the same stream on every rank
    num_channels = 3
    unsynced = "--unsynced" in sys.argv[1:]
    sync = SyncBatchNorm(num_channels, momentum=0.3, comm=SingleProcessCommunicator() if unsynced else comm)
    bn = BatchNorm(num_channels, momentum=0.3)
    gamma, beta = 1 + 0.5 * rng.standard_normal(num_channels), rng.standard_normal(num_channels)
    for layer in (sync, bn):
        layer.params["gamma"], layer.params["beta"] = gamma.copy(), beta.copy()

    errors = {}

    def record(name, mine, reference):
        errors[name] = max(errors.get(name, 0.0), norm_rel_error(mine, reference))

    for step in range(2):
        x = 5 * rng.standard_normal((sum(sizes), num_channels, 2, 3)) + 12
        dy = rng.standard_normal(x.shape)
        y_full, y = bn.forward(x), sync.forward(x[start:stop])
        bn.zero_grad(), sync.zero_grad()
        dx_full, dx = bn.backward(dy), sync.backward(dy[start:stop])
        record("y", y, y_full[start:stop])
        record("dx", dx, dx_full[start:stop])
        for name in ("gamma", "beta"):  # each rank holds its share; their sum is BatchNorm's gradient
            record("d" + name, comm.allreduce_sum(sync.grads[name]), bn.grads[name])
        for name in ("running_mean", "running_var"):
            record(name, sync.buffers[name], bn.buffers[name])
    x = rng.standard_normal((sum(sizes), num_channels, 2, 3))
    record("y_eval", sync.eval().forward(x[start:stop]), bn.eval().forward(x)[start:stop])

    worst = {name: float(np.max(comm.allgather(np.array([err])))) for name, err in errors.items()}
    ok = all(err < 1e-12 for err in worst.values())
    if comm.rank == 0:
        summary = " ".join(f"{name}={err:.1e}" for name, err in worst.items())
        print(f"{'OK' if ok else 'FAIL'} ranks={comm.size} shards={sizes} {summary}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
