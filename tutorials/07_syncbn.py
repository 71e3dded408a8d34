# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · SyncBatchNorm: what must cross the processes, and why exactly two sums in the backward
#
# In data-parallel training every process ("rank") holds a shard of the batch. Plain BatchNorm then normalizes
# each shard with its own statistics: with small per-rank batches (detection, segmentation: 1–2 images per GPU)
# those statistics are noisy, and the model is not the one a single large batch would give. SyncBatchNorm
# normalizes every shard with the statistics of the whole batch, so that *as a function of the whole batch* it is
# BatchNorm, forward and backward.
#
# The question of this tutorial: what is the least each rank has to send? We derive it from the formulas:
#
# 1. forward: three numbers per channel (count, mean, $M_2$), merged with Chan's formula;
# 2. backward: two sums per channel, $\sum dy$ and $\sum dy\,\hat x$, read off BatchNorm's fused backward;
# 3. a demonstration that neither sum can be left local, and that the result equals BatchNorm.
#
# Everything runs in one process with simulated ranks (`ThreadGroup`: one thread per rank, collectives through
# shared memory), which also logs every collective. The same layer runs over MPI with
# `pip install -e ".[mpi]"` and `mpiexec -n 3 python tests/mpi/sync_bn_check.py`.

# %%
import inspect
import os

import numpy as np

import normref
from normref.ops.batch_norm import batch_norm_backward, batch_norm_forward
from normref.ops.sync_batch_norm import ThreadGroup, sync_batch_norm_backward, sync_batch_norm_forward
from normref._moments import chan_merge, mean_var
from normref.testing.gradcheck import norm_rel_error
from normref.testing.specs import check, get_spec

QUICK = os.environ.get("QUICK", "0") not in ("", "0")
rng = np.random.default_rng(0)

sizes = [1, 4, 2]  # three ranks with uneven shards
x = 5 * rng.standard_normal((sum(sizes), 3, 4, 4)) + 12
dy = rng.standard_normal(x.shape)
gamma, beta = 1 + 0.5 * rng.standard_normal(3), rng.standard_normal(3)
shards, dy_shards = np.split(x, np.cumsum(sizes)[:-1]), np.split(dy, np.cumsum(sizes)[:-1])

# %% [markdown]
# ## 1. The forward: merge (count, mean, M2)
#
# Rank $k$ has $m_k$ values per channel with mean $\mu_k$ and $M_{2,k} = \sum (x-\mu_k)^2$. The global mean and
# variance follow from these triples alone, by Chan's pairwise merge:
#
# $$m = m_a + m_b,\quad \delta = \mu_b - \mu_a,\quad \mu = \mu_a + \delta\,\frac{m_b}{m},\quad
#   M_2 = M_{2,a} + M_{2,b} + \delta^2\,\frac{m_a m_b}{m}.$$
#
# The last term is the between-shard part of the variance. Uneven $m_k$ are handled exactly. One *all-gather* of
# the $3C$ numbers suffices, and every rank folds the same list in the same order, so all ranks get the same bits.
# (An all-reduce of $\sum x$ and $\sum x^2$ would also be one collective, but $E[x^2]-E[x]^2$ cancels
# catastrophically when the mean is large compared with the spread.)

# %%
print(inspect.getsource(chan_merge))
triples = []
for shard in shards:
    m = shard.size // 3
    mean, var = mean_var(shard, (0, 2, 3))
    triples.append((m, mean.ravel(), var.ravel() * m))
count, mean, m2 = triples[0]
for triple in triples[1:]:
    count, mean, m2 = chan_merge(count, mean, m2, *triple)
print("merged mean:", mean, " whole-batch mean:", x.mean(axis=(0, 2, 3)))
print("merged var: ", m2 / count, " whole-batch var: ", x.var(axis=(0, 2, 3)))
assert norm_rel_error(mean, x.mean(axis=(0, 2, 3))) < 1e-14
assert norm_rel_error(m2 / count, x.var(axis=(0, 2, 3))) < 1e-13

# %% [markdown]
# ## 2. The backward: read the communication off the fused formula
#
# BatchNorm's backward over the global set $R$ of $m$ positions per channel (tutorial 01) is
#
# $$dx = \mathrm{rstd}\,\bigl(g - c_2 - \hat x\, c_1\bigr),\qquad g = \gamma\,dy,\qquad
#   c_2 = \tfrac1m\textstyle\sum_R g,\qquad c_1 = \tfrac1m\sum_R g\,\hat x .$$
#
# Go through the factors one by one. $\mathrm{rstd}$ is the global statistic the forward already shared. $g$ and
# $\hat x$ at a position are local to the rank that holds it. What remains are the two means over **all** ranks,
# $c_2$ and $c_1$. Since $\gamma$ is constant per channel,
#
# $$c_2 = \frac{\gamma}{m}\sum_k\Bigl(\sum_{R_k} dy\Bigr),\qquad
#   c_1 = \frac{\gamma}{m}\sum_k\Bigl(\sum_{R_k} dy\,\hat x\Bigr):$$
#
# exactly **two all-reduced sums per channel**, $\sum dy$ and $\sum dy\,\hat x$, which can travel in one message of
# $2C$ numbers. No more is needed (the formula is complete), and no fewer: the two sums are independent functions of
# the upstream gradient, and each one is needed by every rank, as the next cell shows. They are also the local
# $d\beta$ and $d\gamma$, so after the all-reduce each rank knows the global affine gradients too.
#
# Here is the library's backward: the primitive with the global statistics as *given* statistics supplies the
# direct path $\mathrm{rstd}\cdot g$, and the all-reduce supplies the rest.

# %%
print(inspect.getsource(sync_batch_norm_backward))

# %%
group = ThreadGroup(len(sizes))


def rank_step(rank, comm, shard, dy_shard):
    y, cache = sync_batch_norm_forward(shard, gamma, beta, comm=comm)
    return (y, *sync_batch_norm_backward(dy_shard, cache))


out = group.run(rank_step, shards, dy_shards)
y_sync, dx_sync = np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
dgamma_sync, dbeta_sync = sum(o[2] for o in out), sum(o[3] for o in out)
print("collectives (name, values sent per rank):", group.log)
assert group.log == [("allgather", 3 * 3), ("allreduce_sum", 2 * 3)]

y_bn, cache = batch_norm_forward(x, gamma, beta)
dx_bn, dgamma_bn, dbeta_bn = batch_norm_backward(dy, cache)
for name, a, b in (("y", y_sync, y_bn), ("dx", dx_sync, dx_bn), ("dgamma", dgamma_sync, dgamma_bn),
                   ("dbeta", dbeta_sync, dbeta_bn)):
    print(f"{name:>7}: SyncBN on 3 uneven shards vs BatchNorm on the whole batch, norm-relative error "
          f"{norm_rel_error(a, b):.1e}")
    assert norm_rel_error(a, b) < 1e-13

# %% [markdown]
# ## 3. Neither sum can stay local
#
# Replace one of the two global means by the rank's local mean (what a rank could compute without talking) and the
# gradient is wrong; the error is of the order of the gradient itself, not of rounding.

# %%
def dx_with(local_c2: bool, local_c1: bool):
    """dx on every shard, with c2 and/or c1 taken over the shard instead of the whole batch."""
    y, cache = batch_norm_forward(x, gamma, beta)  # global statistics, as SyncBN's forward has them
    xhat, rstd = cache.xhat, cache.rstd
    g = gamma.reshape(1, -1, 1, 1) * dy
    parts = []
    for sl in np.split(np.arange(x.shape[0]), np.cumsum(sizes)[:-1]):
        g_k, xhat_k = g[sl], xhat[sl]
        c2 = (g_k if local_c2 else g).mean(axis=(0, 2, 3), keepdims=True)
        c1 = ((g_k * xhat_k) if local_c1 else (g * xhat)).mean(axis=(0, 2, 3), keepdims=True)
        parts.append(rstd * (g_k - c2 - xhat_k * c1))
    return np.concatenate(parts)


for local_c2, local_c1 in ((False, False), (True, False), (False, True), (True, True)):
    err = norm_rel_error(dx_with(local_c2, local_c1), dx_bn)
    print(f"c2 {'local ' if local_c2 else 'global'}, c1 {'local ' if local_c1 else 'global'}: "
          f"error of dx {err:.1e}")
    assert (err < 1e-13) is (not local_c2 and not local_c1)

# %% [markdown]
# ## 4. The layer, over several steps
#
# `normref.SyncBatchNorm` wraps the op with PyTorch's conventions: running statistics updated from the *global*
# batch (so every rank holds the same buffers), `momentum` the weight of the new batch, eval without communication,
# and `grads` holding each rank's share of $d\gamma, d\beta$ (sum them over the ranks, as a data-parallel gradient
# all-reduce does). `ShardedSyncBatchNorm` runs $K$ such layers on simulated ranks behind one `forward`/`backward`,
# which is how the gradient checker and the tests see it.

# %%
sharded = normref.ShardedSyncBatchNorm(3, sizes, momentum=0.2)
bn = normref.BatchNorm(3, momentum=0.2)
for _ in range(2 if QUICK else 10):
    batch = 3 * rng.standard_normal(x.shape) + 1
    grad = rng.standard_normal(x.shape)
    assert norm_rel_error(sharded(batch), bn(batch)) < 1e-13
    assert norm_rel_error(sharded.backward(grad), bn.backward(grad)) < 1e-12
print("running mean, SyncBN:", sharded.buffers["running_mean"], " BatchNorm:", bn.buffers["running_mean"])
print("running var,  SyncBN:", sharded.buffers["running_var"], " BatchNorm:", bn.buffers["running_var"])
assert norm_rel_error(sharded.buffers["running_var"], bn.buffers["running_var"]) < 1e-13
report = check(get_spec("SyncBatchNorm"), mode="train", affine=True)  # the row `normref check` prints
print(report)
assert report.passed
