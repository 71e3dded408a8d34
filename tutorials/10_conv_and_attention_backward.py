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
# # 10 · Convolution and attention backward: im2col, its adjoint col2im, and a staged-then-fused softmax
#
# The networks that `normref`'s normalizers live in are built from two workhorses: the 2-D convolution and
# multi-head self-attention. Both have backward passes that are usually looked up. Here they are derived:
#
# 1. **im2col** turns a convolution into a matrix product by copying every receptive field into a column;
# 2. **col2im** is its *adjoint*: $\langle \mathrm{im2col}(x), c\rangle = \langle x, \mathrm{col2im}(c)\rangle$, checked
#    numerically and by building both maps as explicit matrices;
# 3. the **convolution backward** follows in three lines from the matrix-product form, and is checked against
#    central differences and the complex step;
# 4. **attention's backward** is written node by node (projections, scores, the softmax as exp → sum → divide,
#    the weighted sum of values), then the softmax nodes are **fused** into $dS = P \odot (dP - \delta)$ with
#    $\delta = \mathrm{rowsum}(dO \odot O)$, the form FlashAttention uses; both are checked.
#
# Every comparison is an assertion: a wrong derivation stops the script.

# %%
import inspect
import os

import numpy as np

from normref import nn
from normref.ops.attention import (multihead_attention_backward, multihead_attention_backward_staged,
                                   multihead_attention_forward)
from normref.ops.conv import col2im, conv2d_backward, conv2d_forward, im2col
from normref.testing.gradcheck import check_layer, norm_rel_error, numerical_vjp

QUICK = os.environ.get("QUICK", "0") not in ("", "0")  # QUICK=1: smaller shapes in the whole-layer checks
np.set_printoptions(precision=4, linewidth=110, suppress=True)
rng = np.random.default_rng(0)


def cmp(name, ours, reference, tol=1e-12):
    """Print exact / approx / maxdiff and assert agreement to ``tol`` (norm-relative)."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, (name, ours.shape, reference.shape)
    rel = norm_rel_error(ours, reference)
    print(f"{name:<40} exact: {np.array_equal(ours, reference)!s:<5}  approx: {rel <= tol!s:<5}  "
          f"maxdiff: {np.max(np.abs(ours - reference)):.1e}")
    assert rel <= tol, f"{name}: norm-relative error {rel:.2e} is above {tol:.0e}"


# %% [markdown]
# ## 1. im2col: receptive fields as columns
#
# A convolution (PyTorch's, which is a cross-correlation) of `x` `(N, C, H, W)` with a kernel `(O, C, kh, kw)` at
# stride $(s_h, s_w)$ and zero padding $(p_h, p_w)$ computes, at output position $(a, b)$, a dot product between the
# kernel and the patch of the padded input `xp` starting at $(a s_h, b s_w)$. `im2col` copies each patch out:
#
# $$\mathrm{cols}[n, c, i, j, a, b] = xp[n, c,\ a s_h + i,\ b s_w + j],$$
#
# shape `(N, C, kh, kw, Ho, Wo)`, which as a matrix is `(N, K, L)` with $K = C k_h k_w$ rows and $L = H_o W_o$
# columns. The implementation is one strided slice per kernel offset $(i, j)$:

# %%
print(inspect.getsource(im2col).split('"""')[-1])

# %% [markdown]
# On a 1-channel 4×4 image with a 3×3 kernel, stride 1 and no padding there are four receptive fields; each column
# below is one of them, flattened:

# %%
x_small = np.arange(16.0).reshape(1, 1, 4, 4)
print(x_small[0, 0])
cols_small = im2col(x_small, 3)
print("cols as a (K, L) matrix:\n", cols_small.reshape(9, 4))

# %% [markdown]
# With the columns in hand, the forward is a matrix product per sample, $Y_n = W_m\,\mathrm{cols}_n + b$ with
# $W_m$ the kernel reshaped to `(O, K)`. We check it against the definition written as loops:

# %%
def conv_by_loops(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    o, c, kh, kw = w.shape
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    y = np.zeros((x.shape[0], o, ho, wo))
    for a in range(ho):
        for b_ in range(wo):
            patch = xp[:, :, a * sh:a * sh + kh, b_ * sw:b_ * sw + kw]
            y[:, :, a, b_] = np.einsum("ncij,ocij->no", patch, w) + b
    return y


x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 2))
b = rng.standard_normal(4)
stride, padding = (2, 1), (1, 1)
y, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
cmp("conv2d_forward vs loops", y, conv_by_loops(x, w, b, stride, padding))

# %% [markdown]
# ## 2. col2im is the adjoint of im2col
#
# `im2col` is linear in `x`: padding, then *selection* (each output entry is one input entry or a zero from the
# padding). Call it $P$. In the backward we need $P^\top$. The transpose of a selection sends each column entry back
# to the pixel it was copied from, and where receptive fields overlap (stride < kernel) one pixel was copied several
# times, so it receives the **sum**. Dropping the padding is the transpose of adding it. That is `col2im`:

# %%
print(inspect.getsource(col2im).split('"""')[-1])

# %% [markdown]
# The defining property of the adjoint is $\langle P x, c\rangle = \langle x, P^\top c\rangle$ for all $x$ and $c$.
# We test it on random arrays for several kernel, stride and padding settings, including overlapping windows,
# non-square kernels and strides that skip pixels:

# %%
for kernel, stride_, padding_ in [(3, 1, 1), ((3, 2), (2, 1), (1, 0)), (2, 2, 0), (3, 3, 0), (5, 2, 2)]:
    xr = rng.standard_normal((2, 3, 8, 7))
    cols = im2col(xr, kernel, stride_, padding_)
    c = rng.standard_normal(cols.shape)
    lhs, rhs = np.sum(cols * c), np.sum(xr * col2im(c, xr.shape, kernel, stride_, padding_))
    print(f"kernel={kernel!s:<7} stride={stride_!s:<7} padding={padding_!s:<7} "
          f"<im2col(x), c> = {lhs:+.12f}   <x, col2im(c)> = {rhs:+.12f}")
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)

# %% [markdown]
# A stronger check on a tiny case: build $P$ as an explicit matrix by applying `im2col` to every basis image, build
# $Q$ by applying `col2im` to every basis column array, and compare $Q$ with $P^\top$ entry by entry. The matrix
# also shows the overlap counts: the column sums of $P$ say how many receptive fields contain each pixel.

# %%
shape, kernel, stride_, padding_ = (1, 1, 4, 5), 3, 1, 1
n_in = int(np.prod(shape))
n_out = im2col(np.zeros(shape), kernel, stride_, padding_).size
P = np.stack([im2col(np.eye(n_in)[k].reshape(shape), kernel, stride_, padding_).ravel() for k in range(n_in)], 1)
cols_shape = im2col(np.zeros(shape), kernel, stride_, padding_).shape
Q = np.stack([col2im(np.eye(n_out)[k].reshape(cols_shape), shape, kernel, stride_, padding_).ravel()
              for k in range(n_out)], 1)
cmp("col2im matrix vs im2col matrix transposed", Q, P.T, tol=0)
print("how many 3x3 windows (padding 1) cover each pixel of a 4x5 image:\n", P.sum(axis=0).reshape(4, 5))

# %% [markdown]
# ## 3. The convolution backward, derived
#
# Per sample the forward is $Y_n = W_m \mathrm{cols}_n + b\,\mathbf 1^\top$, with $\mathrm{cols} = P x$. The
# backward of a matrix product $Y = AB$ is $dA = dY B^\top$, $dB = A^\top dY$, and $W_m$ is shared by all samples,
# so its gradient sums over $n$:
#
# $$dW_m = \sum_n dY_n\,\mathrm{cols}_n^\top, \qquad db = \sum_{n, l} dY_{n\,\cdot\,l}, \qquad
#   d\mathrm{cols}_n = W_m^\top dY_n, \qquad dx = P^\top d\mathrm{cols} = \mathrm{col2im}(d\mathrm{cols}).$$
#
# Written out with the two helpers only:

# %%
dy = rng.standard_normal(y.shape)
n, o, ho, wo = y.shape
cols = im2col(x, w.shape[2:], stride, padding).reshape(n, -1, ho * wo)  # (N, K, L)
dY = dy.reshape(n, o, ho * wo)  # (N, O, L)
dW_by_hand = sum(dY[i] @ cols[i].T for i in range(n)).reshape(w.shape)
db_by_hand = dY.sum(axis=(0, 2))
dcols = w.reshape(o, -1).T @ dY  # (N, K, L)
dx_by_hand = col2im(dcols.reshape((n, 3) + w.shape[2:] + (ho, wo)), x.shape, w.shape[2:], stride, padding)

dx, dW, db = conv2d_backward(dy, cache)
cmp("dx: col2im(Wmᵀ dY) vs conv2d_backward", dx_by_hand, dx)
cmp("dW: Σ dY colsᵀ vs conv2d_backward", dW_by_hand, dW)
cmp("db vs conv2d_backward", db_by_hand, db)

# %% [markdown]
# And against numbers that know nothing of the derivation: central differences (error $O(h^2)$ plus rounding) and
# the complex step (no subtraction, so exact to rounding; the forward has no conjugation, so it applies):

# %%
f = lambda x, w, b: conv2d_forward(x, w, b, stride=stride, padding=padding)[0]  # noqa: E731
inputs = {"x": x, "w": w, "b": b}
for name, analytic in (("x", dx), ("w", dW), ("b", db)):
    central = numerical_vjp(f, inputs, name, dy, method="central")
    complex_step = numerical_vjp(f, inputs, name, dy, method="complex")
    cmp(f"d{name}: analytic vs central differences", analytic, central, tol=1e-8)
    cmp(f"d{name}: analytic vs complex step", analytic, complex_step, tol=1e-13)

# %% [markdown]
# In indices, $dx_{nchw} = \sum W_{ocij}\,dy_{noab}$ over all $(o, i, j, a, b)$ with $a s_h + i - p_h = h$ and
# $b s_w + j - p_w = w$: the "full" correlation of `dy` with the flipped kernel that textbooks quote. col2im computes
# it without flipping anything, and handles stride and padding for free, because it is just the transpose of the
# map the forward used.
#
# The layer (`normref.nn.Conv2d`) wraps the op; `check_layer` checks input, weight and bias together, with random
# parameters and a random upstream gradient:

# %%
conv_shape = (1, 2, 5, 4) if QUICK else (2, 3, 7, 6)
conv = nn.Conv2d(conv_shape[1], 3, (3, 2), stride=(2, 1), padding=1, rng=0)
report = check_layer(conv, rng.standard_normal(conv_shape), rng=rng, methods=("central", "complex"),
                     title=f"Conv2d on {conv_shape}")
print(report.table())
assert report.passed

# %% [markdown]
# ## 4. Attention: the staged graph
#
# Self-attention on `x` `(N, T, E)` with $H$ heads of size $D = E/H$, $s = D^{-1/2}$:
#
# | node | value | shape |
# |---|---|---|
# | 1 | $qkv = x W_{in}^\top + b_{in}$ | (N, T, 3E) |
# | 2 | $q, k, v$ = split into heads | (N, H, T, D) |
# | 3 | $S = s\, q k^\top$ | (N, H, T, T) |
# | 4 | $e = \exp(S - m)$ on allowed entries, 0 where masked | (N, H, T, T) |
# | 5 | $z = \sum_j e$ | (N, H, T, 1) |
# | 6 | $P = e / z$ | (N, H, T, T) |
# | 7 | $O = P v$ | (N, H, T, D) |
# | 8 | $y = \mathrm{merge}(O)\, W_{out}^\top + b_{out}$ | (N, T, E) |
#
# $m$ is the row maximum of the scores (of their real part). Softmax does not change when a row is shifted, so the
# gradient through $m$ is exactly zero and $m$ is a constant in the graph; it only keeps `exp` from overflowing.
#
# Backward through each node, in reverse:
#
# * node 8 and node 1 are Linear layers: $dO = \mathrm{split}(dy\, W_{out})$, $dW_{out} = \sum dy^\top O$, and
#   $dx = dqkv\, W_{in}$, $dW_{in} = \sum dqkv^\top x$;
# * node 7, a matrix product: $dP = dO\, v^\top$, $dv = P^\top dO$;
# * node 6, a division by a row constant: $de = dP / z$ and $dz = -\sum_j dP\, e / z^2$;
# * node 5, a row sum: every $e_{ij}$ of the row receives $dz$, so $de \mathrel{+}= dz$;
# * node 4, the exponential: $dS = e \odot de$ (and 0 where masked, since $e = 0$ there);
# * node 3: $dq = s\, dS\, k$, $dk = s\, dS^\top q$; node 2 concatenates $dq, dk, dv$ back into $dqkv$.
#
# `multihead_attention_backward_staged` runs nodes 6, 5, 4 exactly like this. We check the softmax nodes in
# isolation first, against central differences of $S \mapsto \mathrm{softmax}(S)$ with a causal mask:

# %%
from normref.ops.activations import softmax, softmax_backward  # noqa: E402

T = 4
mask = np.tril(np.ones((T, T), dtype=bool))
S = rng.standard_normal((T, T))
dP = rng.standard_normal((T, T))
e = np.where(mask, np.exp(np.where(mask, S - S.max(axis=1, keepdims=True), 0)), 0)  # node 4
z = e.sum(axis=1, keepdims=True)  # node 5
P = e / z  # node 6
de = dP / z  # back through node 6 ...
dz = -(dP * e).sum(axis=1, keepdims=True) / z**2
de = de + dz  # ... node 5 ...
dS_staged = e * de  # ... and node 4
dS_numeric = numerical_vjp(lambda S: softmax(S, where=mask), {"S": S}, "S", dP, method="central")
cmp("softmax, staged nodes 6-5-4 vs central differences", dS_staged, dS_numeric, tol=1e-8)

# %% [markdown]
# ## 5. Fusing the softmax backward
#
# Substitute node 6 and node 5 into node 4:
#
# $$dS = e \odot \Bigl(\frac{dP}{z} - \frac{\sum_j dP\,e}{z^2}\Bigr)
#     = P \odot \bigl(dP - \textstyle\sum_j dP \odot P\bigr),$$
#
# the familiar softmax VJP, with no exponentials and no $z$ left. For attention there is one more step: since
# $dP = dO\, v^\top$ and $O = P v$,
#
# $$\delta_i = \sum_j dP_{ij} P_{ij} = \sum_j (dO_i \cdot v_j) P_{ij} = dO_i \cdot \sum_j P_{ij} v_j = dO_i \cdot O_i,$$
#
# a row sum over the head dimension $D$ instead of over $T$ keys. FlashAttention computes it this way because it
# never stores $P$; here it simply makes the fused backward $dS = P \odot (dP - \delta)$ with
# $\delta = \mathrm{rowsum}(dO \odot O)$.

# %%
cmp("softmax: fused P(dP - Σ dP·P) vs staged", softmax_backward(dP, P), dS_staged)
v = rng.standard_normal((T, 3))
dO = rng.standard_normal((T, 3))
O = P @ v
cmp("δ = rowsum(dP ⊙ P) vs rowsum(dO ⊙ O)", ((dO @ v.T) * P).sum(axis=1), (dO * O).sum(axis=1))

# %% [markdown]
# The whole layer, staged against fused against the numbers, with a causal mask and random parameters:

# %%
n_, t_, e_, h_ = (1, 3, 4, 2) if QUICK else (2, 5, 6, 3)
xa = rng.standard_normal((n_, t_, e_))
params = [rng.standard_normal((3 * e_, e_)), rng.standard_normal(3 * e_), rng.standard_normal((e_, e_)),
          rng.standard_normal(e_)]
ya, acache = multihead_attention_forward(xa, *params, num_heads=h_, causal=True)
dya = rng.standard_normal(ya.shape)
fused = multihead_attention_backward(dya, acache)
staged = multihead_attention_backward_staged(dya, acache)
names = ["x", "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias"]
for name, a, s_ in zip(names, fused, staged):
    cmp(f"d{name}: fused vs staged", a, s_)

attn = nn.MultiheadSelfAttention(e_, h_, causal=True, rng=0)
report = check_layer(attn, xa, rng=rng, methods=("central", "complex"), title=f"causal attention on {xa.shape}")
print(report.table())
assert report.passed

# %% [markdown]
# Masked entries never receive gradient: $P = 0$ there, so $dS = 0$, and the output at position $i$ does not
# depend on inputs after $i$. Perturbing the last token changes only the last output:

# %%
y0 = attn(xa)
x_future = xa.copy()
x_future[:, -1] += 1.0
y1 = attn(x_future)
print("max change per position:", np.abs(y1 - y0).max(axis=(0, 2)))
assert np.array_equal(y0[:, :-1], y1[:, :-1]) and not np.allclose(y0[:, -1], y1[:, -1])

# %% [markdown]
# ## Summary
#
# * im2col is a padding plus a selection; col2im, its transpose, scatters back and **adds** where windows overlap.
#   With the two, the convolution backward is the backward of a matrix product: $dW = \sum dY\,\mathrm{cols}^\top$,
#   $dx = \mathrm{col2im}(W^\top dY)$.
# * Attention's backward is two Linear layers, two batched matrix products, and a softmax whose three nodes fuse
#   into $dS = P \odot (dP - \mathrm{rowsum}(dO \odot O))$.
# * Every formula above was checked against central differences and the complex step; `normref check` runs the
#   same checks on `Conv2d`, the pooling layers and attention (with and without the causal mask).
