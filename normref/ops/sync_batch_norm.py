r"""Synchronized Batch Normalization: BatchNorm over a batch split across processes ("ranks").

Each of ``K`` ranks holds a shard ``x_k`` of shape ``(N_k, C, *spatial)`` of one global batch; the shards may have
different sizes. SyncBN normalizes every shard with the statistics of the *whole* batch, so the result equals
BatchNorm (:mod:`normref.ops.batch_norm`) on the concatenated batch, forward and backward. (PyTorch:
``torch.nn.SyncBatchNorm``; the idea is as old as data-parallel BN, e.g. Peng et al., MegDet, CVPR 2018.)

Communication goes through an injected *communicator* (any object with ``rank``, ``size``, ``allgather(array)`` and
``allreduce_sum(array)``; see :class:`Communicator`), so the same math runs with MPI
(:class:`normref.nn.sync_batch_norm.MPICommunicator`), with ``K`` simulated ranks in one process
(:class:`ThreadGroup`) and with one rank (:class:`SingleProcessCommunicator`, which makes it BatchNorm).

Forward: one all-gather of three numbers per channel
----------------------------------------------------
Rank ``k`` computes its local count :math:`m_k = N_k\prod\mathrm{spatial}`, mean :math:`\mu_k` and
:math:`M_{2,k} = \sum_{R_k}(x-\mu_k)^2` (two-pass, :func:`normref._moments.mean_var`). The triples are all-gathered
and folded in rank order with Chan's merge (:func:`normref._moments.chan_merge`):

.. math::

    m = m_a + m_b,\quad \delta = \mu_b-\mu_a,\quad \mu = \mu_a + \delta\,m_b/m,\quad
    M_2 = M_{2,a}+M_{2,b}+\delta^2 m_a m_b/m ,

which is exact for uneven counts and never forms :math:`E[x^2]-E[x]^2`. Every rank folds the same list in the same
order, so all ranks hold bit-identical :math:`(\mu, \sigma^2 = M_2/m)` and normalize their shard with them (the
primitive with given statistics). Summing :math:`\sum x` and :math:`\sum x^2` with an all-reduce would need one
collective too, but would bring back the cancellation of the one-pass variance.

Backward: one all-reduce of two numbers per channel
---------------------------------------------------
BatchNorm's fused backward over the global set :math:`R = \bigcup_k R_k` of :math:`m` positions is
:math:`dx = \mathrm{rstd}\,(g - c_2 - \hat x\,c_1)` with :math:`g=\gamma\,dy`,
:math:`c_2 = \operatorname{mean}_R g` and :math:`c_1 = \operatorname{mean}_R g\hat x`. Everything in it is local to a
position except the two means, and :math:`\gamma` is constant per channel, so

.. math::

    c_2 = \frac{\gamma}{m}\sum_k \Bigl(\sum_{R_k} dy\Bigr),\qquad
    c_1 = \frac{\gamma}{m}\sum_k \Bigl(\sum_{R_k} dy\,\hat x\Bigr):

exactly two sums per channel cross the ranks (sent as one ``(2, C)`` all-reduce). They are the local
:math:`d\beta` and :math:`d\gamma`, so after the all-reduce every rank also knows the global affine gradients.
Convention (PyTorch's): ``dgamma``/``dbeta`` returned by the backward are the **local** sums; summing them over the
ranks, as a data-parallel gradient all-reduce does, gives BatchNorm's. ``dx`` on rank ``k`` is the exact gradient of
:math:`\sum_j L_j` with respect to ``x_k``, where ``dy`` on rank ``j`` is :math:`\partial L_j/\partial y_j`.
The code runs the primitive's given-statistics backward (:math:`\mathrm{rstd}\cdot g` and the local parameter sums)
and subtracts :math:`\mathrm{rstd}(c_2 + \hat x c_1)`.

With given statistics (evaluation with running buffers) no communication happens, as in BatchNorm's eval.
The running statistics are updated from the global mean, biased variance and count
(:func:`sync_batch_norm_batch_stats`), so they match BatchNorm's on the concatenated batch. Every rank needs at least
one sample.
"""

from __future__ import annotations

import threading
from typing import NamedTuple, Protocol

import numpy as np

from .._moments import accumulation_dtype, chan_merge, mean_var
from .._registry import register
from .._validate import (as_array, check_affine, check_dy, check_ndim, check_nonempty, check_positive_float,
                         check_stats)
from ._normalize import NormalizeCache, normalize_backward, normalize_forward


class Communicator(Protocol):
    """What SyncBatchNorm needs from a process group."""

    rank: int  # this process's index, 0 <= rank < size
    size: int  # number of ranks

    def allgather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``array`` (same shape and dtype on all ranks), in rank order."""

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        """The elementwise sum of every rank's ``array``; the same result on every rank."""


class SingleProcessCommunicator:
    """One rank: every collective is the identity. SyncBatchNorm with it is BatchNorm."""

    rank, size = 0, 1

    def allgather(self, array):
        return [np.array(array, copy=True)]

    def allreduce_sum(self, array):
        return np.array(array, copy=True)


class ThreadGroup:
    """``size`` simulated ranks in one process: one thread per rank, collectives through shared slots.

    ``group.communicators[k]`` is rank ``k``'s communicator; :meth:`run` calls ``fn(rank, comm)`` on every rank in
    its own thread and returns the results in rank order. Each collective records ``(name, values per rank)`` in
    ``group.log`` (rank 0 writes it), which tutorials use to count what crosses the ranks. The all-reduce sums in
    rank order, so every rank gets the same bits.
    """

    def __init__(self, size: int, *, timeout: float = 60.0):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.size = size
        self._barrier = threading.Barrier(size, timeout=timeout)
        self._slots: list = [None] * size
        self.log: list[tuple[str, int]] = []
        self.communicators = [_ThreadCommunicator(self, rank) for rank in range(size)]

    def _exchange(self, rank: int, array, name: str) -> list[np.ndarray]:
        self._slots[rank] = np.array(array, copy=True)
        self._barrier.wait()  # every rank has written
        parts = [np.array(p, copy=True) for p in self._slots]
        if rank == 0:
            self.log.append((name, int(np.size(array))))
        self._barrier.wait()  # every rank has read: the slots may be reused
        return parts

    def run(self, fn, *args_per_rank):
        """``[fn(rank, comm, *args[rank]) for each rank]``, concurrently; re-raises the first rank's exception."""
        results, errors = [None] * self.size, [None] * self.size

        def target(rank):
            try:
                results[rank] = fn(rank, self.communicators[rank], *(a[rank] for a in args_per_rank))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                errors[rank] = exc
                self._barrier.abort()  # release the ranks waiting in a collective

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._barrier.broken:
            self._barrier.reset()
        first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
                     next((e for e in errors if e is not None), None))
        if first is not None:
            raise first
        return results


class _ThreadCommunicator:
    def __init__(self, group: ThreadGroup, rank: int):
        self.group, self.rank, self.size = group, rank, group.size

    def allgather(self, array):
        return self.group._exchange(self.rank, array, "allgather")

    def allreduce_sum(self, array):
        parts = self.group._exchange(self.rank, array, "allreduce_sum")
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total


def check_comm(comm):
    """Validate a communicator: ``rank``, ``size`` and the two collectives."""
    missing = [a for a in ("rank", "size", "allgather", "allreduce_sum") if not hasattr(comm, a)]
    if missing:
        raise TypeError(f"comm must be a communicator with rank, size, allgather and allreduce_sum "
                        f"(see normref.ops.sync_batch_norm.Communicator); {type(comm).__name__} lacks {missing}")
    return comm


class SyncBatchNormCache(NamedTuple):
    norm: NormalizeCache  # the primitive's cache, with the global statistics as given statistics
    count: int  # m, the global number of values per channel (0 with given statistics)
    comm: object  # the communicator the backward all-reduces over (None with given statistics)
    batch_stats: bool  # statistics came from the (global) batch
    backend: str = "numpy"


def sync_batch_norm_forward(x, gamma=None, beta=None, *, comm, eps=1e-5, stats=None):
    """BatchNorm of the global batch whose shard on this rank is ``x``.

    Args:
        x: ``(N_k, C, *spatial)`` this rank's shard, ``N_k >= 1``; every rank has the same ``C`` and spatial shape.
        gamma, beta: ``(C,)`` or ``None``, the same on every rank.
        comm: the communicator (module docstring).
        eps: added to the variance inside the square root.
        stats: ``None`` (global batch statistics, one all-gather) or ``(mean, var)`` (no communication).

    Returns:
        ``(y, cache)``: ``y`` like ``x``, normalized with the global statistics.
    """
    x = as_array(x, "x")
    check_ndim(x, "x", (2, 3, 4, 5), "(N, C, *spatial)")
    check_nonempty(x, "x")
    comm = check_comm(comm)
    num_channels = x.shape[1]
    gamma, beta = check_affine(x, gamma, beta, (num_channels,))
    eps = check_positive_float(eps, "eps", allow_zero=True)
    view = (1, num_channels) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    if stats is not None:
        mean, var = check_stats(stats, (num_channels,), x)
        y, norm = normalize_forward(x, gamma, beta, reduce_axes=axes, param_view_shape=view, eps=eps,
                                    stats=(mean.reshape(view), var.reshape(view)))
        return y, SyncBatchNormCache(norm, 0, None, False)
    local_count = x.size // num_channels
    local_mean, local_var = mean_var(x, axes)
    packet = np.stack([np.full(num_channels, local_count), local_mean.reshape(num_channels),
                       local_var.reshape(num_channels) * local_count]).astype(accumulation_dtype(x.dtype))
    parts = comm.allgather(packet)  # (3, C) from every rank: count, mean, M2
    count, mean, m2 = parts[0]
    for part in parts[1:]:
        count, mean, m2 = chan_merge(count, mean, m2, *part)
    total = int(round(float(np.real(count[0]))))
    if total < 2:
        raise ValueError(f"the global batch must hold more than 1 value per channel when training, got {total}")
    var = m2 / total
    y, norm = normalize_forward(x, gamma, beta, reduce_axes=axes, param_view_shape=view, eps=eps,
                                stats=(mean.astype(x.dtype).reshape(view), var.astype(x.dtype).reshape(view)))
    return y, SyncBatchNormCache(norm, total, comm, True)


def sync_batch_norm_backward(dy, cache: SyncBatchNormCache):
    """Exact gradients: ``(dx, dgamma, dbeta)``, ``dx`` for this shard, ``dgamma``/``dbeta`` this rank's share."""
    norm = cache.norm
    dy = check_dy(dy, norm.x_shape, norm.xhat.dtype)
    dx, dgamma, dbeta = normalize_backward(dy, norm)  # rstd·g and the local parameter sums
    if cache.batch_stats:
        axes = norm.reduce_axes
        local = np.stack([dy.sum(axis=axes).ravel(), (dy * norm.xhat).sum(axis=axes).ravel()])  # (2, C)
        sum_dy, sum_dy_xhat = cache.comm.allreduce_sum(local)  # the only communication of the backward
        view = norm.rstd.shape
        scale = 1.0 / cache.count if norm.gamma_b is None else norm.gamma_b / cache.count
        c2 = scale * sum_dy.reshape(view)
        c1 = scale * sum_dy_xhat.reshape(view)
        dx = dx - norm.rstd * (c2 + norm.xhat * c1)
    return dx, dgamma, dbeta


def sync_batch_norm_batch_stats(cache: SyncBatchNormCache):
    """The global statistics a training forward used: ``(mean (C,), biased var (C,), m)`` for the running update."""
    num_channels = cache.norm.x_shape[1]
    return cache.norm.mean.reshape(num_channels), cache.norm.var.reshape(num_channels), cache.count


register("sync_batch_norm", "numpy", sync_batch_norm_forward, sync_batch_norm_backward)
