"""SyncBatchNorm over MPI (or any communicator), and K simulated ranks in one process. Math:
:mod:`normref.ops.sync_batch_norm`.

MPI needs the optional extra: ``pip install -e ".[mpi]"`` (mpi4py and the MPICH wheel, which ships ``mpiexec``).
Run a script on K processes with ``mpiexec -n K python script.py``.
"""

from __future__ import annotations

import numpy as np

from ..ops.sync_batch_norm import SingleProcessCommunicator, ThreadGroup, check_comm, sync_batch_norm_batch_stats
from ._norm_base import TrackedNorm
from .module import Module

MPI_EXTRA_HINT = 'install the optional extra "mpi": pip install -e ".[mpi]" (mpi4py and the mpich wheel)'


class MPICommunicator:
    """The communicator protocol on an ``mpi4py`` communicator (``MPI.COMM_WORLD`` by default).

    Uses the buffer (upper-case) collectives on contiguous NumPy arrays: ``Allgather`` and ``Allreduce(SUM)``.
    """

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError(f"MPICommunicator needs mpi4py: {MPI_EXTRA_HINT}") from exc
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def allgather(self, array):
        send = np.ascontiguousarray(array)
        recv = np.empty((self.size,) + send.shape, send.dtype)
        self.comm.Allgather(send, recv)
        return list(recv)

    def allreduce_sum(self, array):
        send = np.ascontiguousarray(array)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=self._mpi.SUM)
        return recv


class SyncBatchNorm(TrackedNorm):
    """BatchNorm whose training statistics cover the batch of every rank (PyTorch's ``SyncBatchNorm``).

    Same arguments and defaults as :class:`normref.nn.BatchNorm`, plus ``comm``: a communicator
    (:class:`MPICommunicator`, a :class:`normref.ops.sync_batch_norm.ThreadGroup` member, or any object with
    ``rank``, ``size``, ``allgather`` and ``allreduce_sum``); ``None`` means MPI's ``COMM_WORLD``, as PyTorch's
    default process group is the world. Training: one all-gather in the forward (count, mean, M2 per channel, merged
    by Chan's formula), one all-reduce in the backward (``Σdy``, ``Σdy·xhat`` per channel); the running statistics
    are updated from the global batch, identically on every rank. Eval uses the running statistics, no
    communication. ``grads`` receive this rank's share of ``dgamma``/``dbeta`` (sum them over ranks, as a
    data-parallel gradient all-reduce does); ``dx`` is already exact.
    """

    op = "sync_batch_norm"
    batch_stats = staticmethod(sync_batch_norm_batch_stats)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, comm=None, *,
                 backend=None, dtype=np.float64):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, backend=backend, dtype=dtype)
        self.comm = MPICommunicator() if comm is None else check_comm(comm)

    @classmethod
    def from_batch_norm(cls, bn, comm=None) -> "SyncBatchNorm":
        """A SyncBatchNorm with ``bn``'s hyperparameters, parameters and buffers (copied)."""
        layer = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, comm,
                    backend=bn.backend, dtype=bn.dtype)
        layer.load_state_dict(bn.state_dict())
        return layer

    def op_hyper(self) -> dict:
        return {"eps": self.eps, "comm": self.comm}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ranks={self.comm.size}"


class ShardedSyncBatchNorm(Module):
    """One global batch split into uneven shards, each run by a :class:`SyncBatchNorm` on its own simulated rank.

    ``forward(x)`` splits ``x`` along axis 0 into ``shard_sizes`` (summing to ``N``), runs every rank's forward in
    its own thread over a :class:`ThreadGroup`, and concatenates; ``backward(dy)`` does the same and adds the ranks'
    ``dgamma``/``dbeta`` shares. As a function of the whole batch it must equal BatchNorm: that is what tests,
    the gradient checker and tutorial 07 use it for. The ranks share this module's parameters and running buffers.
    """

    def __init__(self, num_features, shard_sizes, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float64):
        super().__init__()
        sizes = [int(s) for s in shard_sizes]
        if not sizes or any(s < 1 for s in sizes):
            raise ValueError(f"shard_sizes must be positive ints, one per rank, got {shard_sizes}")
        self.shard_sizes = sizes
        self.eps = eps
        self.group = ThreadGroup(len(sizes))
        self.ranks = [SyncBatchNorm(num_features, eps, momentum, affine, track_running_stats, comm, dtype=dtype)
                      for comm in self.group.communicators]
        first = self.ranks[0]
        self.params, self.grads, self.buffers = dict(first.params), dict(first.grads), dict(first.buffers)

    def _split(self, a, name):
        if np.shape(a)[0] != sum(self.shard_sizes):
            raise ValueError(f"{name} has {np.shape(a)[0]} samples but shard_sizes {self.shard_sizes} sum to "
                             f"{sum(self.shard_sizes)}")
        return np.split(a, np.cumsum(self.shard_sizes)[:-1], axis=0)

    def forward(self, x):
        for rank in self.ranks:  # every rank sees the shared parameters and buffers
            rank.params, rank.buffers, rank.training = dict(self.params), dict(self.buffers), self.training
        ys = self.group.run(lambda r, comm, shard: self.ranks[r].forward(shard), self._split(x, "x"))
        self.buffers = dict(self.ranks[0].buffers)  # identical on every rank
        return np.concatenate(ys, axis=0)

    def backward(self, dy):
        for rank in self.ranks:
            rank.zero_grad()
        dxs = self.group.run(lambda r, comm, shard: self.ranks[r].backward(shard), self._split(dy, "dy"))
        for name in self.params:
            self.accumulate_grad(name, sum(rank.grads[name] for rank in self.ranks))
        return np.concatenate(dxs, axis=0)


__all__ = ["MPICommunicator", "ShardedSyncBatchNorm", "SingleProcessCommunicator", "SyncBatchNorm", "ThreadGroup"]
