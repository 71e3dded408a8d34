"""PyTorch as a test oracle: every normref layer that PyTorch also has, against the torch module, in float64.

normref follows PyTorch's conventions where PyTorch has the layer, so the torch module with the same parameters is
an independent implementation to compare with: forward output, ``dx`` (torch autograd of ``(y * dy).sum()``), every
parameter gradient, and, over several training steps followed by eval, the running buffers. Inputs, ``dy`` and
every parameter (gamma and beta included, never the initial ones) are random; batches change their per-channel
location and spread from step to step, so that the running averages' weights matter.

Error measure: the norm-relative error ``max|a - b| / max|b|``, with ``b`` torch's value.

Tolerance ``TOL = 1e-12``. Both sides evaluate the same float64 formulas in different orders (different reductions,
fused or staged backward), which differ by a few ulps times a modest condition number: measured errors are ~1e-16 to
~4e-15, and up to ~3e-14 for attention's parameter gradients (a softmax over logits of order 10, whose key-side
gradient is a sum of cancelling terms). Every convention that could differ is far above 1e-12: ``eps = 1e-5``
against variances of order 1 moves the output by ~1e-6, the unbiased factor ``m/(m-1)`` by >= 1e-2, a wrong momentum
by ~1e-1. The RMSNorm ``eps=None`` cases scale the input to ~1e-7, so that the machine epsilon (2.2e-16) against a
mean square of ~1e-14 moves the output by ~1e-2.

Known differences (not bugs, kept out of the comparison and stated here):

* ``weight_norm``'s ``dim=-1``: PyTorch treats it as ``dim=None`` (one norm over the whole tensor, a legacy of
  ``torch._weight_norm``); normref counts it from the end as NumPy does. The WeightNorm test maps normref's
  ``dim=-1`` to torch's ``dim=v.ndim - 1``.
* InstanceNorm's running buffers: torch never increments ``num_batches_tracked`` and reads ``momentum=None`` as 0
  (frozen buffers); normref counts batches and averages cumulatively, as BatchNorm (documented in
  :mod:`normref.ops.instance_norm`; :func:`test_instance_norm_counting_and_cumulative_average` checks it against
  torch with ``momentum=1``).
* ``Conv2d`` has no ``dilation`` or ``groups``; the attention's key-padding mask is tested in
  ``tests/test_attention_mask.py``. ``CrossEntropyLoss`` refuses a negative ``weight`` or ``label_smoothing``, which
  torch accepts (its values are compared on every option otherwise, at the end of this file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of this file: install the 'torch' extra "
                                             "(pip install -e '.[torch]')")

from normref import nn  # noqa: E402
from normref import optim  # noqa: E402

TOL = 1e-12  # see the module docstring: measured <= 3e-14, every convention difference >= 1e-6
F64 = {"dtype": torch.float64}
T = torch.nn
AFFINE = {"gamma": "weight", "beta": "bias"}
STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # Dropout's seed/step are not compared


def rel_err(ours, theirs) -> float:
    """``max|a - b| / max|b|`` (the absolute error when ``b`` is all zeros)."""
    a = np.asarray(ours, dtype=np.float64)
    b = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != torch's {b.shape}"
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def check(ours, theirs, what: str, tol: float = TOL) -> None:
    err = rel_err(ours, theirs)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"


def tensor(a, requires_grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=requires_grad)


# ---------------------------------------------------------------------------------------------------------------------
# The layer table: one entry per configuration.
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    ours: Callable[[], nn.Module]  # the normref layer
    theirs: Callable[[], "torch.nn.Module"]  # the torch module, float64
    shape: tuple[int, ...]  # input shape
    params: dict[str, str] = field(default_factory=dict)  # normref parameter name -> torch parameter name
    call: Callable | None = None  # how to call the torch module on x (default: module(x))
    scale: float = 1.0  # input scale
    steps: int = 3  # training steps before eval; 0: eval only (Dropout)


def mha_call(causal):
    def call(module, x):
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1) if causal else None  # True = not allowed, as normref
        return module(x, x, x, need_weights=False, attn_mask=mask)[0]
    return call


MHA = {"in_proj_weight": "in_proj_weight", "in_proj_bias": "in_proj_bias", "out_proj_weight": "out_proj.weight",
       "out_proj_bias": "out_proj.bias"}
MHA_NO_BIAS = {"in_proj_weight": "in_proj_weight", "out_proj_weight": "out_proj.weight"}
LINEAR = {"weight": "weight", "bias": "bias"}

CASES = [
    # BatchNorm1d/2d/3d: PyTorch's three classes are one normref class.
    Case("bn1d-NC", lambda: nn.BatchNorm(3), lambda: T.BatchNorm1d(3, **F64), (8, 3), AFFINE),
    # N = 2: the unbiased factor is 2. With two values per channel x̂ = ±(var/(var+eps))^½, and the training dx is
    # rstd·(g₁−g₂)/2·eps/(var+eps): a difference of O(1) terms that cancel to O(eps). With eps = 1e-5 the rounding
    # of both implementations (~1e-16 of the cancelled terms) is ~1e-11 of the result, an ill-conditioned quantity
    # rather than a disagreement; eps = 0.5 keeps the convention visible and dx well conditioned.
    Case("bn1d-N2", lambda: nn.BatchNorm(3, eps=0.5, momentum=0.3),
         lambda: T.BatchNorm1d(3, eps=0.5, momentum=0.3, **F64), (2, 3), AFFINE),
    Case("bn1d-NCL", lambda: nn.BatchNorm(4, eps=0.1), lambda: T.BatchNorm1d(4, eps=0.1, **F64), (5, 4, 6), AFFINE),
    Case("bn2d", lambda: nn.BatchNorm(3), lambda: T.BatchNorm2d(3, **F64), (4, 3, 5, 4), AFFINE),
    Case("bn2d-cumulative", lambda: nn.BatchNorm(3, momentum=None), lambda: T.BatchNorm2d(3, momentum=None, **F64),
         (4, 3, 3, 3), AFFINE),
    Case("bn2d-no-affine", lambda: nn.BatchNorm(3, affine=False), lambda: T.BatchNorm2d(3, affine=False, **F64),
         (4, 3, 3, 3)),
    Case("bn2d-untracked", lambda: nn.BatchNorm(3, track_running_stats=False),
         lambda: T.BatchNorm2d(3, track_running_stats=False, **F64), (4, 3, 3, 3), AFFINE),
    Case("bn3d", lambda: nn.BatchNorm(2, momentum=0.5), lambda: T.BatchNorm3d(2, momentum=0.5, **F64),
         (3, 2, 3, 2, 4), AFFINE),
    # LayerNorm
    Case("ln", lambda: nn.LayerNorm(6), lambda: T.LayerNorm(6, **F64), (4, 5, 6), AFFINE),
    Case("ln-2d-shape", lambda: nn.LayerNorm((3, 4), eps=0.1), lambda: T.LayerNorm((3, 4), eps=0.1, **F64),
         (5, 3, 4), AFFINE),
    Case("ln-no-affine", lambda: nn.LayerNorm(6, elementwise_affine=False),
         lambda: T.LayerNorm(6, elementwise_affine=False, **F64), (4, 6)),
    Case("ln-no-bias", lambda: nn.LayerNorm((2, 5), bias=False), lambda: T.LayerNorm((2, 5), bias=False, **F64),
         (3, 2, 5), {"gamma": "weight"}),
    # GroupNorm
    Case("gn", lambda: nn.GroupNorm(2, 6), lambda: T.GroupNorm(2, 6, **F64), (3, 6, 4, 3), AFFINE),
    Case("gn-1d-no-affine", lambda: nn.GroupNorm(3, 6, eps=0.1, affine=False),
         lambda: T.GroupNorm(3, 6, eps=0.1, affine=False, **F64), (4, 6, 5)),
    # InstanceNorm1d/2d/3d (PyTorch's defaults: affine=False, track_running_stats=False)
    Case("in1d", lambda: nn.InstanceNorm(3), lambda: T.InstanceNorm1d(3, **F64), (4, 3, 7)),
    Case("in1d-affine-tracked", lambda: nn.InstanceNorm(3, affine=True, track_running_stats=True),
         lambda: T.InstanceNorm1d(3, affine=True, track_running_stats=True, **F64), (4, 3, 7), AFFINE),
    Case("in2d-affine", lambda: nn.InstanceNorm(3, affine=True), lambda: T.InstanceNorm2d(3, affine=True, **F64),
         (2, 3, 4, 5), AFFINE),
    Case("in2d-tracked", lambda: nn.InstanceNorm(3, momentum=0.4, track_running_stats=True),
         lambda: T.InstanceNorm2d(3, momentum=0.4, track_running_stats=True, **F64), (3, 3, 4, 4)),
    Case("in2d-tracked-affine", lambda: nn.InstanceNorm(3, momentum=0.25, affine=True, track_running_stats=True),
         lambda: T.InstanceNorm2d(3, momentum=0.25, affine=True, track_running_stats=True, **F64), (2, 3, 3, 4),
         AFFINE),
    Case("in3d-tracked", lambda: nn.InstanceNorm(2, affine=True, track_running_stats=True),
         lambda: T.InstanceNorm3d(2, affine=True, track_running_stats=True, **F64), (2, 2, 3, 2, 3), AFFINE),
    # RMSNorm: eps=None is the machine epsilon of the input's dtype in both; the tiny input makes it matter.
    Case("rms-eps-none-tiny-input", lambda: nn.RMSNorm(6), lambda: T.RMSNorm(6, **F64), (4, 6), {"gamma": "weight"},
         scale=1e-7),
    Case("rms-eps", lambda: nn.RMSNorm((3, 4), eps=1e-3), lambda: T.RMSNorm((3, 4), eps=1e-3, **F64), (2, 5, 3, 4),
         {"gamma": "weight"}, scale=0.1),
    Case("rms-no-affine", lambda: nn.RMSNorm(5, elementwise_affine=False),
         lambda: T.RMSNorm(5, elementwise_affine=False, **F64), (3, 5), scale=1e-7),
    # Linear and Conv2d
    Case("linear", lambda: nn.Linear(5, 4), lambda: T.Linear(5, 4, **F64), (3, 2, 5), LINEAR),
    Case("linear-no-bias", lambda: nn.Linear(5, 4, bias=False), lambda: T.Linear(5, 4, bias=False, **F64), (3, 5),
         {"weight": "weight"}),
    Case("conv", lambda: nn.Conv2d(3, 4, 3), lambda: T.Conv2d(3, 4, 3, **F64), (2, 3, 6, 5), LINEAR),
    Case("conv-stride-pad", lambda: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 2)),
         lambda: T.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), **F64), (2, 2, 7, 5), LINEAR),
    Case("conv-no-bias", lambda: nn.Conv2d(2, 3, 2, stride=2, padding=1, bias=False),
         lambda: T.Conv2d(2, 3, 2, stride=2, padding=1, bias=False, **F64), (2, 2, 5, 6), {"weight": "weight"}),
    # Pooling
    Case("maxpool", lambda: nn.MaxPool2d(2), lambda: T.MaxPool2d(2), (2, 3, 6, 4)),
    Case("maxpool-stride-pad", lambda: nn.MaxPool2d(3, stride=2, padding=1),
         lambda: T.MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 6)),
    Case("avgpool", lambda: nn.AvgPool2d((2, 3)), lambda: T.AvgPool2d((2, 3)), (2, 3, 6, 6)),
    Case("avgpool-pad", lambda: nn.AvgPool2d(3, stride=2, padding=1),
         lambda: T.AvgPool2d(3, stride=2, padding=1), (2, 2, 7, 6)),
    Case("avgpool-pad-exclude", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
         lambda: T.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 2, 7, 6)),
    # Activations
    Case("relu", lambda: nn.ReLU(), lambda: T.ReLU(), (4, 7)),
    Case("gelu", lambda: nn.GELU(), lambda: T.GELU(), (4, 7), scale=2.0),
    Case("gelu-tanh", lambda: nn.GELU("tanh"), lambda: T.GELU(approximate="tanh"), (4, 7), scale=2.0),
    Case("silu", lambda: nn.SiLU(), lambda: T.SiLU(), (4, 7), scale=2.0),
    Case("tanh", lambda: nn.Tanh(), lambda: T.Tanh(), (4, 7)),
    Case("sigmoid", lambda: nn.Sigmoid(), lambda: T.Sigmoid(), (4, 7), scale=3.0),
    # Dropout: the masks come from different generators, so only eval (the identity) is comparable.
    Case("dropout-eval", lambda: nn.Dropout(0.3), lambda: T.Dropout(0.3), (4, 7), steps=0),
    # Multi-head self-attention (no key-padding mask: tests/test_attention_mask.py covers it)
    Case("mha", lambda: nn.MultiheadSelfAttention(8, 2), lambda: T.MultiheadAttention(8, 2, batch_first=True, **F64),
         (2, 5, 8), MHA, call=mha_call(False)),
    Case("mha-causal", lambda: nn.MultiheadSelfAttention(6, 3, causal=True),
         lambda: T.MultiheadAttention(6, 3, batch_first=True, **F64), (3, 4, 6), MHA, call=mha_call(True)),
    Case("mha-no-bias", lambda: nn.MultiheadSelfAttention(4, 1, bias=False),
         lambda: T.MultiheadAttention(4, 1, bias=False, batch_first=True, **F64), (2, 3, 4), MHA_NO_BIAS,
         call=mha_call(False)),
]


def random_batch(rng, shape, scale):
    """A batch whose per-channel (axis 1) location and spread are drawn anew at every call."""
    if len(shape) < 2:
        return scale * rng.normal(size=shape)
    view = (1, shape[1]) + (1,) * (len(shape) - 2)
    loc = rng.uniform(-3, 3, view)
    spread = rng.uniform(0.5, 3, view)
    return scale * (loc + spread * rng.normal(size=shape))


def run_step(case, ours, theirs, x, dy, step_name):
    """One forward and backward on both; compare y, dx and every parameter gradient."""
    ours.zero_grad()
    y = ours.forward(x)
    dx = ours.backward(dy)
    theirs.zero_grad()
    xt = tensor(x, requires_grad=True)
    yt = case.call(theirs, xt) if case.call else theirs(xt)
    (yt * tensor(dy)).sum().backward()
    check(y, yt, f"{case.id} {step_name}: y")
    check(dx, xt.grad, f"{case.id} {step_name}: dx")
    for name, tname in case.params.items():
        check(ours.grads[name], theirs.get_parameter(tname).grad, f"{case.id} {step_name}: d{name}")


def check_buffers(case, ours, theirs, step_name):
    """The running buffers where torch has them (none when untracked), with the same names and values."""
    tbuffers = {name: value for name, value in theirs.named_buffers() if name in STAT_BUFFERS}
    ours_names = {name for name in ours.buffers if name in STAT_BUFFERS}
    assert ours_names == set(tbuffers), f"{case.id}: buffers {sorted(ours_names)} != {sorted(tbuffers)}"
    for name, value in tbuffers.items():
        if name == "num_batches_tracked":
            if isinstance(ours, nn.InstanceNorm):
                continue  # torch's InstanceNorm never counts: test_instance_norm_counting_and_cumulative_average
            assert ours.buffers[name] == int(value), f"{case.id} {step_name}: {name}"
        else:
            check(ours.buffers[name], value, f"{case.id} {step_name}: {name}")


def output_shape(case):
    """The output shape, from a throw-away torch module in eval mode (so no buffer of the compared one moves)."""
    probe = case.theirs().eval()
    with torch.no_grad():
        x = tensor(np.ones(case.shape))
        return tuple((case.call(probe, x) if case.call else probe(x)).shape)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_layer_matches_torch(case):
    rng = np.random.default_rng(sum(map(ord, case.id)))
    ours, theirs = case.ours(), case.theirs()
    # The parameters correspond one to one, and all of them are set to the same random values.
    assert set(case.params) == set(ours.params)
    assert set(case.params.values()) == {name for name, _ in theirs.named_parameters()}
    with torch.no_grad():
        for name, tname in case.params.items():
            value = rng.uniform(-1.5, 1.5, ours.params[name].shape)
            ours.params[name] = value
            theirs.get_parameter(tname).copy_(tensor(value))
    out_shape = output_shape(case)
    ours.train(), theirs.train()
    for step in range(case.steps):
        x, dy = random_batch(rng, case.shape, case.scale), rng.normal(size=out_shape)
        run_step(case, ours, theirs, x, dy, f"train step {step}")
        check_buffers(case, ours, theirs, f"after train step {step}")
    ours.eval(), theirs.eval()
    for step in range(2):
        x, dy = random_batch(rng, case.shape, case.scale), rng.normal(size=out_shape)
        run_step(case, ours, theirs, x, dy, f"eval step {step}")
        check_buffers(case, ours, theirs, f"after eval step {step}")  # eval leaves the buffers alone


# ---------------------------------------------------------------------------------------------------------------------
# InstanceNorm's batch counter and momentum=None: where torch's InstanceNorm is no oracle.
# ---------------------------------------------------------------------------------------------------------------------
def test_instance_norm_counting_and_cumulative_average():
    """torch's InstanceNorm passes ``momentum=None`` on as 0.0 (the buffers never move) and never increments
    ``num_batches_tracked``; normref follows BatchNorm's documented convention instead (count the batches,
    ``None`` = cumulative average). The oracle for that is torch itself with ``momentum=1``, whose buffers after a
    step hold that batch's statistics exactly: their running average over the steps is the cumulative average."""
    rng = np.random.default_rng(7)
    ours = nn.InstanceNorm(3, momentum=None, track_running_stats=True)
    per_batch = T.InstanceNorm2d(3, momentum=1.0, track_running_stats=True, **F64)
    means, variances = [], []
    for step in range(1, 5):
        x = random_batch(rng, (2, 3, 4, 3), 1.0)
        y = ours.forward(x)
        per_batch(tensor(x))
        means.append(per_batch.running_mean.numpy().copy())
        variances.append(per_batch.running_var.numpy().copy())
        check(ours.buffers["running_mean"], np.mean(means, axis=0), f"step {step}: running_mean")
        check(ours.buffers["running_var"], np.mean(variances, axis=0), f"step {step}: running_var")
        assert ours.buffers["num_batches_tracked"] == step
        check(y, T.functional.instance_norm(tensor(x)), f"step {step}: y")  # training normalizes per instance
    ours.eval()
    x = random_batch(rng, (2, 3, 4, 3), 1.0)
    expected = T.functional.instance_norm(tensor(x), tensor(np.mean(means, axis=0)), tensor(np.mean(variances, axis=0)),
                                          use_input_stats=False)
    check(ours.forward(x), expected, "eval y with the cumulative buffers")


# ---------------------------------------------------------------------------------------------------------------------
# WeightNorm: the normref layer acts on a weight; torch's is a parametrization of a module.
# ---------------------------------------------------------------------------------------------------------------------
WEIGHT_NORM_CASES = [  # (owner, normref dim, torch dim)
    ("linear", 0, 0), ("linear", 1, 1), ("linear", None, None),
    # normref counts a negative dim from the end (NumPy); torch's weight_norm reads dim=-1 as None (whole tensor)
    ("linear", -1, 1),
    ("conv", 0, 0), ("conv", 1, 1), ("conv", None, None), ("conv", -1, 3),
]


@pytest.mark.parametrize("owner,dim,torch_dim", WEIGHT_NORM_CASES)
def test_weight_norm_matches_torch(owner, dim, torch_dim):
    from torch.nn.utils.parametrizations import weight_norm

    rng = np.random.default_rng(11)
    if owner == "linear":
        module, ours_layer, x_shape = T.Linear(5, 4, **F64), nn.Linear(5, 4), (3, 5)
    else:
        module, ours_layer = T.Conv2d(3, 4, (3, 2), padding=1, **F64), nn.Conv2d(3, 4, (3, 2), padding=1)
        x_shape = (2, 3, 5, 4)
    v = rng.normal(size=tuple(module.weight.shape))
    bias = rng.normal(size=4)
    with torch.no_grad():
        module.weight.copy_(tensor(v))
        module.bias.copy_(tensor(bias))
    weight_norm(module, dim=torch_dim)
    g_torch = module.parametrizations.weight.original0
    wn = nn.WeightNorm(1 if dim is None else v.shape[dim], dim=dim)
    # PyTorch starts from g = ‖v‖ (w = v); init_from does the same.
    check(wn.init_from(v).params["g"], g_torch.reshape(wn.params["g"].shape), "init g = ‖v‖")
    g = rng.uniform(0.5, 2.0, wn.params["g"].shape) * rng.choice([-1, 1], wn.params["g"].shape)
    with torch.no_grad():
        g_torch.copy_(tensor(g).reshape(g_torch.shape))
    wn.params["g"] = g
    ours_layer.params.update(bias=bias)
    originals = module.parametrizations.weight
    for step in range(2):
        x = rng.normal(size=x_shape)
        module.zero_grad()
        xt = tensor(x, requires_grad=True)
        yt = module(xt)
        dy = rng.normal(size=tuple(yt.shape))
        (yt * tensor(dy)).sum().backward()
        wn.zero_grad(), ours_layer.zero_grad()
        ours_layer.params["weight"] = w = wn.forward(v)
        y = ours_layer.forward(x)
        dx = ours_layer.backward(dy)
        dv = wn.backward(ours_layer.grads["weight"])  # the owner's weight gradient, sent through WeightNorm
        check(w, module.weight, f"step {step}: w")
        check(y, yt, f"step {step}: y")
        check(dx, xt.grad, f"step {step}: dx")
        check(dv, originals.original1.grad, f"step {step}: dv")
        check(wn.grads["g"], originals.original0.grad.reshape(g.shape), f"step {step}: dg")
        check(ours_layer.grads["bias"], module.bias.grad, f"step {step}: dbias")


# ---------------------------------------------------------------------------------------------------------------------
# Embedding and the losses: integer inputs, different call signatures.
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_matches_torch(padding_idx):
    rng = np.random.default_rng(3)
    ours = nn.Embedding(7, 4, padding_idx=padding_idx, rng=0)
    theirs = T.Embedding(7, 4, padding_idx=padding_idx, **F64)
    if padding_idx is not None:  # both start the padding row at zero
        assert not ours.params["weight"][padding_idx].any() and not theirs.weight[padding_idx].any()
    weight = rng.normal(size=(7, 4))  # the padding row too: the lookup returns it, only its gradient is zero
    ours.params["weight"] = weight
    with torch.no_grad():
        theirs.weight.copy_(tensor(weight))
    indices = rng.integers(0, 7, size=(3, 5))
    indices[0, :3] = [2, 6, 2]  # repeats (the gradient scatter-adds) and both padding rows
    for step in range(2):
        ours.zero_grad(), theirs.zero_grad()
        dy = rng.normal(size=(3, 5, 4))
        y = ours.forward(indices)
        assert ours.backward(dy) is None
        yt = theirs(torch.from_numpy(indices))
        (yt * tensor(dy)).sum().backward()
        check(y, yt, f"step {step}: y")
        check(ours.grads["weight"], theirs.weight.grad, f"step {step}: dweight")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(reduction):
    rng = np.random.default_rng(5)
    logits, targets = 3.0 * rng.normal(size=(6, 5)), rng.integers(0, 5, size=6)
    logits[0] += 800.0  # far beyond exp's range: both must shift by the row maximum
    dloss = rng.normal(size=6) if reduction == "none" else rng.normal()
    ours = nn.CrossEntropyLoss(reduction=reduction)
    loss = ours(logits, targets)
    dlogits = ours.backward(dloss)
    zt = tensor(logits, requires_grad=True)
    losst = T.CrossEntropyLoss(reduction=reduction)(zt, torch.from_numpy(targets))
    (losst * tensor(dloss)).sum().backward()
    check(loss, losst, "loss")
    check(dlogits, zt.grad, "dlogits")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch(reduction):
    rng = np.random.default_rng(6)
    pred, target = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    dloss = rng.normal(size=(4, 3)) if reduction == "none" else rng.normal()
    ours = nn.MSELoss(reduction=reduction)
    loss = ours(pred, target)
    dpred = ours.backward(dloss)
    pt = tensor(pred, requires_grad=True)
    losst = T.MSELoss(reduction=reduction)(pt, tensor(target))
    (losst * tensor(dloss)).sum().backward()
    check(loss, losst, "loss")
    check(dpred, pt.grad, "dpred")


# ---------------------------------------------------------------------------------------------------------------------
# Optimizers: the same gradients, several steps; parameters and every state slot compared after each step.
# ---------------------------------------------------------------------------------------------------------------------
OPTIMIZERS = [  # (id, normref class, torch class, keyword arguments shared by both)
    ("sgd", optim.SGD, torch.optim.SGD, {"lr": 0.1}),
    ("sgd-momentum", optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    ("sgd-dampening-wd", optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "dampening": 0.3,
                                                      "weight_decay": 0.1}),
    ("sgd-nesterov-wd", optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True,
                                                     "weight_decay": 0.05}),
    ("adam", optim.Adam, torch.optim.Adam, {"lr": 0.01}),
    ("adam-wd-betas", optim.Adam, torch.optim.Adam, {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-3,
                                                     "weight_decay": 0.1}),
    ("adam-amsgrad", optim.Adam, torch.optim.Adam, {"lr": 0.01, "amsgrad": True}),
    ("adamw-default-wd", optim.AdamW, torch.optim.AdamW, {"lr": 0.01}),
    ("adamw-amsgrad-wd", optim.AdamW, torch.optim.AdamW, {"lr": 0.05, "weight_decay": 0.3, "amsgrad": True}),
]


@pytest.mark.parametrize("name,ours_cls,torch_cls,kwargs", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_matches_torch(name, ours_cls, torch_cls, kwargs):
    rng = np.random.default_rng(sum(map(ord, name)))
    model = nn.Linear(4, 3, rng=0)
    tparams = {key: tensor(value, requires_grad=True) for key, value in model.params.items()}
    ours, theirs = ours_cls(model, **kwargs), torch_cls(list(tparams.values()), **kwargs)
    for step in range(5):
        for key, value in model.params.items():
            # gradient scales differ by coordinate and over time, so Adam's per-coordinate denominators matter
            grad = rng.normal(size=value.shape) * rng.uniform(0.01, 3.0, size=value.shape)
            model.grads[key] = grad
            tparams[key].grad = tensor(grad)
        ours.step()
        theirs.step()
        for key, tp in tparams.items():
            check(model.params[key], tp, f"step {step}: {key}")
            tstate = theirs.state[tp]
            assert set(ours.state[key]) == set(tstate), f"state slots {sorted(ours.state[key])} != {sorted(tstate)}"
            for slot, value in tstate.items():
                if slot == "step":
                    assert ours.state[key][slot] == int(value) == step + 1
                else:
                    check(ours.state[key][slot], value, f"step {step}: {key} {slot}")


# ---------------------------------------------------------------------------------------------------------------------
# CrossEntropyLoss's options: weight x ignore_index x label_smoothing x reduction x (index | probability) targets, on
# (N, C) and spatial (N, C, d1, d2) logits; the loss and dlogits against torch's autograd of (loss * dloss).sum().
# ---------------------------------------------------------------------------------------------------------------------
CE_IGNORE = {  # id: (ignore_index, which index targets are set to it)
    "noignore": (-100, None),  # the default, but no target equals it
    "ignored": (-100, "every third item"),  # the default, with ignored items
    "ignoreclass": (2, "class 2"),  # an index inside [0, C): every target of class 2 is ignored
}
CE_INDEX_CASES = [(w, ig, ls, red, shape) for w in (False, True) for ig in CE_IGNORE for ls in (0.0, 0.3)
                  for red in ("mean", "sum", "none") for shape in ((6, 5), (3, 4, 2, 3))]
CE_PROB_CASES = [(w, ls, red, shape) for w in (False, True) for ls in (0.0, 0.3) for red in ("mean", "sum", "none")
                 for shape in ((6, 5), (3, 4, 2, 3))]


def ce_against_torch(logits, targets, reduction, dtype=np.float64, **options):
    """normref's loss and dlogits (on ``logits`` cast to ``dtype``) for a random dloss, and torch's in float64."""
    rng = np.random.default_rng(17)
    ours = nn.CrossEntropyLoss(reduction, **options)
    loss = ours(logits.astype(dtype), targets)
    dloss = rng.normal(size=np.shape(loss)) if reduction == "none" else rng.normal()
    dlogits = ours.backward(dloss)
    if options.get("weight") is not None:
        options = {**options, "weight": tensor(options["weight"])}
    zt = tensor(logits, requires_grad=True)
    tt = torch.from_numpy(targets) if targets.dtype.kind in "iu" else tensor(targets)
    losst = T.CrossEntropyLoss(reduction=reduction, **options)(zt, tt)
    (losst * tensor(dloss)).sum().backward()
    return loss, dlogits, losst, zt.grad


def ce_logits(rng, shape):
    logits = 3.0 * rng.normal(size=shape)
    logits[0] += 800.0  # far beyond exp's range: both must shift by the maximum over the classes
    return logits


@pytest.mark.parametrize("weighted,ignore,smoothing,reduction,shape", CE_INDEX_CASES,
                         ids=[f"{'w' if w else 'now'}-{ig}-ls{ls}-{red}-{len(s)}d" for w, ig, ls, red, s in
                              CE_INDEX_CASES])
def test_cross_entropy_options_match_torch(weighted, ignore, smoothing, reduction, shape):
    rng = np.random.default_rng(len(shape))
    c = shape[1]
    logits = ce_logits(rng, shape)
    targets = rng.integers(0, c, size=shape[:1] + shape[2:])
    ignore_index, which = CE_IGNORE[ignore]
    if which == "every third item":
        targets.flat[::3] = ignore_index
    elif which == "class 2":
        targets.flat[1::4] = 2  # make sure class 2 occurs
    assert which is None or 0 < (targets == ignore_index).sum() < targets.size  # some ignored, some kept
    # weights spread over a factor of 10, so a mean divided by N (or by the count of kept items) is far off
    weight = rng.uniform(0.2, 2.0, c) if weighted else None
    loss, dlogits, losst, dlogitst = ce_against_torch(logits, targets, reduction, weight=weight,
                                                      ignore_index=ignore_index, label_smoothing=smoothing)
    check(loss, losst, "loss")
    check(dlogits, dlogitst, "dlogits")
    if which is not None:  # ignored items: loss 0 ("none") and exactly zero gradient
        ignored = np.moveaxis(dlogits, 1, -1)[targets == ignore_index]
        assert not ignored.any()
        if reduction == "none":
            assert not loss[targets == ignore_index].any()


@pytest.mark.parametrize("weighted,smoothing,reduction,shape", CE_PROB_CASES,
                         ids=[f"{'w' if w else 'now'}-ls{ls}-{red}-{len(s)}d" for w, ls, red, s in CE_PROB_CASES])
def test_cross_entropy_probability_targets_match_torch(weighted, smoothing, reduction, shape):
    rng = np.random.default_rng(10 + len(shape))
    c = shape[1]
    logits = ce_logits(rng, shape)
    if len(shape) == 2:  # proper distributions
        probs = np.moveaxis(rng.dirichlet(np.ones(c), size=shape[:1] + shape[2:]), -1, 1)
    else:  # rows that do not sum to 1: neither side checks, and the formulas hold for any targets
        probs = rng.uniform(0.0, 1.5, size=shape)
    weight = rng.uniform(0.2, 2.0, c) if weighted else None
    loss, dlogits, losst, dlogitst = ce_against_torch(logits, probs, reduction, weight=weight,
                                                      label_smoothing=smoothing)
    check(loss, losst, "loss")
    check(dlogits, dlogitst, "dlogits")


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_degenerate_denominators_match_torch(weighted, smoothing):
    """A mean over no kept item is 0/0: NaN loss and, for the ignored items, exactly zero gradient (torch's masking);
    kept items whose weights total 0 get 0·(1/0) = NaN gradients in both. ``"sum"`` of nothing is 0."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 3))
    weight = rng.uniform(0.5, 1.5, 3) if weighted else None
    all_ignored = np.full(4, -100)
    loss, dlogits, losst, dlogitst = ce_against_torch(logits, all_ignored, "mean", weight=weight,
                                                      label_smoothing=smoothing)
    assert np.isnan(loss) and torch.isnan(losst)
    assert not dlogits.any() and not dlogitst.any()
    loss, dlogits, losst, dlogitst = ce_against_torch(logits, all_ignored, "sum", weight=weight,
                                                      label_smoothing=smoothing)
    assert float(loss) == losst.item() == 0.0 and not dlogits.any() and not dlogitst.any()
    if weighted:
        zero_weight = np.array([0.0, 0.0, 1.0])  # every kept target is of a zero-weight class
        loss, dlogits, losst, dlogitst = ce_against_torch(logits, np.array([0, 1, -100, 1]), "mean",
                                                          weight=zero_weight, label_smoothing=smoothing)
        # NaN also with smoothing, where the smoothing part alone is positive over 0: torch's one-hot part is 0/0
        assert np.isnan(loss) and torch.isnan(losst)
        np.testing.assert_array_equal(np.isnan(dlogits), torch.isnan(dlogitst).numpy())
        assert np.isnan(dlogits[[0, 1, 3]]).all() and not dlogits[2].any()


def test_cross_entropy_options_keep_float32():
    """float32 logits with float64 weights and targets: float32 loss and gradient, within float32 rounding of torch's
    float64 (eps32 = 6e-8 times sums over at most 4·5 terms of order 1; 1e-5 leaves a margin and is far below any
    convention difference, e.g. ε/C = 0.06)."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(4, 5))
    for targets in (np.array([0, 4, -100, 2]), np.moveaxis(rng.dirichlet(np.ones(5), size=4), -1, 1)):
        options = {"weight": rng.uniform(0.2, 2.0, 5), "label_smoothing": 0.3}
        loss, dlogits, losst, dlogitst = ce_against_torch(logits, targets, "mean", dtype=np.float32, **options)
        assert loss.dtype == np.float32 and dlogits.dtype == np.float32
        check(loss, losst, "float32 loss", tol=1e-5)
        check(dlogits, dlogitst, "float32 dlogits", tol=1e-5)
