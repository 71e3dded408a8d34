r"""Figure 11: Weight Standardization (Qiao et al. 2019): gradient-norm and Lipschitz proxies with and without WS.

Claim (Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization"): WS
"reduces the Lipschitz constants of the loss and the gradients", which smooths the landscape. The loss part is an
exact identity (landscape.md §8.2): with per-output-row statistics over the fan-in ``I``,
:math:`\hat W = (W-\mu)/\sigma`,

.. math::

    \|\nabla_W L\|^2 = \frac{1}{\sigma^2}\Big(\|\nabla_{\hat W} L\|^2 - \tfrac{1}{I}\langle 1, \nabla_{\hat W} L\rangle^2
                       - \tfrac{1}{I}\langle \hat W, \nabla_{\hat W} L\rangle^2\Big),

i.e. WS projects two components out of the gradient the convolution sees, and rescales by :math:`1/\sigma`.

Setup. The scikit-learn digits (8x8, stratified 80/20 split, seed 0). A small conv net,
``normref.models.build_vgg(1, 10, 8, widths=(8, 16), convs_per_stage=1, norm="group")``:
Conv3x3(1->8) - GroupNorm(2 groups) - ReLU - MaxPool - Conv3x3(8->16) - GroupNorm(4 groups) - ReLU - MaxPool - Linear.
"GN+WS" is the same network, with the same raw initial weights, whose convolutions standardize their weight first:
each ``Conv2d`` is replaced by ``normref.nn.WSConv2d.from_conv(conv)`` with the library defaults (biased variance
over the fan-in, eps = 1e-5 inside the square root, no gain; the convolutions are bias-free because a normalizer
follows). Both train with the same SGD (lr 0.05, momentum 0.9, batch 32, batch order seed 0).

Every ``every`` steps, on that step's mini-batch:

* the gradient norm :math:`\|\nabla_\theta L\|` (all parameters) and that of the conv weights alone;
* Santurkar et al.'s effective beta-smoothness :math:`\max_\eta \|\nabla L(\theta) - \nabla L(\theta - \eta g)\|/
  \|\eta g\|` and the gradient-predictiveness range (``normref.landscape.gradient_step_smoothness``, eta on
  [0.05, 0.4], same batch; GroupNorm has no running statistics, so the objective's BN policy is moot);
* for GN+WS, per conv layer, the two fractions of :math:`\|\nabla_{\hat W} L\|^2` that WS removes, and the
  identity above checked numerically. :math:`\nabla_{\hat W} L` is recomputed from the gradient reaching the layer's
  output (the convolution op's backward against the kernel it was given), :math:`\hat W` and :math:`1/\sigma` come
  from the layer's WS cache, and :math:`\nabla_W L` is what the layer accumulated, so the check covers the library
  layer's composition.

Each run's measurements are cached as ``out_dir/cache/fig_11/<run>.json``; a finished run is not recomputed.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, figure_dirs, save, write_json  # noqa: E402

from normref.data import DataLoader, load_digits, train_val_test_split  # noqa: E402
from normref.landscape import Objective, gradient_step_smoothness  # noqa: E402
from normref import functional as F  # noqa: E402
from normref.nn import Conv2d, CrossEntropyLoss, Sequential, WSConv2d  # noqa: E402
from normref.nn.flat import flatten_grads  # noqa: E402
from normref.optim import SGD  # noqa: E402
from normref.train import evaluate  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

from normref.models import build_vgg  # noqa: E402

NAME = "fig_11_weight_standardization"


def build_net(with_ws: bool, seed: int = 0) -> Sequential:
    net = build_vgg(1, 10, 8, widths=(8, 16), convs_per_stage=1, norm="group", seed=seed)
    if with_ws:
        layers = [WSConv2d.from_conv(m) if isinstance(m, Conv2d) else m for m in net]
        net = Sequential(*layers)
    return net


def ws_projection(layer: WSConv2d, dy) -> dict:
    """Fractions of ||dW_hat||^2 removed by WS (mean and radial components) and the identity's residual.

    Call after ``layer.backward(dy)``: ``dy`` is the gradient that reached the layer's output.
    """
    if "gain" in layer.ws.params or layer.ws.eps_mode != "inside" or layer.ws.unbiased:
        raise ValueError("the identity below is written for plain WS: no gain, biased variance, eps inside")
    _, g, _ = F.backward(layer.op, dy, layer.cache)  # dW_hat: the conv's gradient w.r.t. the kernel it was given
    ws = layer.ws.cache
    rows, rden = ws.uhat, ws.rden  # (O, I) standardized rows, (O, 1) 1/sigma
    grows = g.reshape(len(rows), -1)
    fan_in = rows.shape[1]
    total = float(np.sum(grows ** 2))
    mean_part = float(np.sum(grows.sum(axis=1) ** 2) / fan_in)
    # with eps inside the square root ||W_hat_r||^2 = I var/(var + eps) is a hair below I; the exact identity is
    # sigma^2||dW||^2 = ||g||^2 - <1,g>^2/I - (2 - ||W_hat||^2/I) <W_hat,g>^2/I, row by row (sigma^2 = var + eps)
    shrink = 2.0 - (rows * rows).sum(axis=1) / fan_in
    radial_part = float(np.sum(shrink * (rows * grows).sum(axis=1) ** 2) / fan_in)
    dw = layer.grads["weight"].reshape(len(rows), -1)  # the model's grads hold exactly this step's dW
    kept = float(np.sum((dw / rden) ** 2))  # sigma^2 ||dW||^2, row by row
    return {"mean": mean_part / total, "radial": radial_part / total, "kept": kept / total,
            "identity_residual": abs(kept - (total - mean_part - radial_part)) / total}


def run(with_ws: bool, seed: int, quick: bool, cache: Path) -> dict:
    label = "GN+WS" if with_ws else "GN"
    path = cache / f"{label.replace('+', '_')}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    data = load_digits()
    split = train_val_test_split(data, val=0.0, test=0.2, seed=0)
    train_set, test_set = split.train, split.test
    epochs, every = (1, 3) if quick else (10, 5)
    if quick:
        train_set = train_set.subset(np.arange(96))
    net = build_net(with_ws, seed)
    loss_fn = CrossEntropyLoss()
    opt = SGD(net, lr=0.05, momentum=0.9)
    loader = DataLoader(train_set, 32, seed=seed)
    rec = {k: [] for k in ("step", "loss", "grad_norm", "conv_grad_norm", "beta_eff", "grad_change_min",
                           "grad_change_max", "loss_min", "loss_max")}
    rec["ws"] = {}
    rec["test_acc"], rec["train_loss_epoch"] = [], []
    conv_names = [f"{i}.weight" for i, m in enumerate(net) if isinstance(m, Conv2d)]  # WSConv2d is a Conv2d
    step, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        losses = []
        for xb, yb in loader:
            net.zero_grad()
            loss = float(loss_fn(net.forward(xb), yb))
            # net.backward, keeping the gradient that reaches each WS conv's output (for ws_projection)
            dy, conv_dy = loss_fn.backward(), {}
            for i, m in reversed(list(enumerate(net))):
                if isinstance(m, WSConv2d):
                    conv_dy[i] = dy
                dy = m.backward(dy)
            losses.append(loss)
            if step % every == 0:
                grads = dict(net.named_grads())
                rec["step"].append(step)
                rec["loss"].append(loss)
                rec["grad_norm"].append(float(np.linalg.norm(flatten_grads(net))))
                rec["conv_grad_norm"].append(float(np.sqrt(sum(np.sum(grads[n] ** 2) for n in conv_names))))
                if with_ws:
                    for i, m in enumerate(net):
                        if isinstance(m, WSConv2d):
                            for key, value in ws_projection(m, conv_dy[i]).items():
                                rec["ws"].setdefault(f"{i}.{key}", []).append(value)
                sm = gradient_step_smoothness(Objective(copy.deepcopy(net), CrossEntropyLoss(), xb, yb, bn="batch"))
                rec["beta_eff"].append(sm.beta_eff)
                rec["grad_change_min"].append(sm.grad_change_range[0])
                rec["grad_change_max"].append(sm.grad_change_range[1])
                rec["loss_min"].append(sm.loss_range[0])
                rec["loss_max"].append(sm.loss_range[1])
            opt.step()
            step += 1
        rec["train_loss_epoch"].append(float(np.mean(losses)))
        rec["test_acc"].append(evaluate(net, test_set)["accuracy"])
        print(f"[fig_11] {label} seed {seed} epoch {epoch + 1}/{epochs}: train loss {rec['train_loss_epoch'][-1]:.4f} "
              f"test acc {rec['test_acc'][-1]:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rec["label"] = label
    write_json(path, rec)
    return rec


def _main(out_dir, quick) -> dict:
    import matplotlib.pyplot as plt

    # quick and full runs share this cache folder and file names (kept so that the gallery's cache stays valid):
    # never point a quick run at a full run's OUT_DIR
    out_dir, cache = figure_dirs(out_dir, "fig_11", quick, split_cache=False)
    seeds = [0] if quick else [0, 1, 2]
    runs = {label: [run(ws, seed, quick, cache) for seed in seeds] for label, ws in (("GN", False), ("GN+WS", True))}

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4), dpi=150 if not quick else 72)
    (a, b), (c, d) = axes
    colors = {"GN": "C1", "GN+WS": "C0"}

    def smooth(v, k=5):
        v = np.asarray(v, float)
        return np.convolve(v, np.ones(k) / k, mode="valid") if v.shape[-1] > 2 * k else v

    def band(ax, steps, values, col, label, ls="-"):
        """Median over seeds of the running mean, and the min-max band over seeds."""
        sm = np.array([smooth(v) for v in values])
        s = steps[len(steps) - sm.shape[1]:]
        ax.plot(s, np.median(sm, axis=0), ls, color=col, label=label)
        ax.fill_between(s, sm.min(axis=0), sm.max(axis=0), color=col, alpha=0.15)

    summary = {}
    for label, recs in runs.items():
        col = colors[label]
        steps = np.asarray(recs[0]["step"])
        band(a, steps, [r["grad_norm"] for r in recs], col, f"{label}: all parameters")
        band(a, steps, [r["conv_grad_norm"] for r in recs], col, f"{label}: conv weights only", "--")
        band(b, steps, [r["beta_eff"] for r in recs], col, label)
        loss = np.concatenate([r["loss"] for r in recs])
        gn = np.concatenate([r["grad_norm"] for r in recs])
        c.loglog(loss, gn, ".", ms=2.5, color=col, alpha=0.5, label=label)
        order = np.argsort(loss)
        bins = np.array_split(order, min(12, len(order)))
        c.loglog([np.median(loss[i]) for i in bins], [np.median(gn[i]) for i in bins], "-o", ms=4, color=col,
                 label=f"{label}: binned median")
        accs = 100 * np.array([r["test_acc"] for r in recs])
        ep = np.arange(1, accs.shape[1] + 1)
        d.plot(ep, accs.mean(axis=0), "-o", ms=3, color=col,
               label=f"{label}: final {accs[:, -1].mean():.1f}% (seeds {', '.join(f'{x:.1f}' for x in accs[:, -1])})")
        d.fill_between(ep, accs.min(axis=0), accs.max(axis=0), color=col, alpha=0.15)
        n = len(steps)
        early = [i for i, s in enumerate(steps) if s < 100]
        summary[label] = {
            "seeds": seeds,
            "grad_norm_median_first_100_steps": float(np.median([r["grad_norm"][i] for r in recs for i in early])),
            "grad_norm_median_second_half": float(np.median([v for r in recs for v in r["grad_norm"][n // 2:]])),
            "conv_grad_norm_median": float(np.median([v for r in recs for v in r["conv_grad_norm"]])),
            "beta_eff_median_first_100_steps": float(np.median([r["beta_eff"][i] for r in recs for i in early])),
            "beta_eff_median": float(np.median([v for r in recs for v in r["beta_eff"]])),
            "beta_eff_median_second_half": float(np.median([v for r in recs for v in r["beta_eff"][n // 2:]])),
            "grad_change_max_median": float(np.median([v for r in recs for v in r["grad_change_max"]])),
            "final_test_acc": [float(r["test_acc"][-1]) for r in recs],
            "final_train_loss": [float(r["train_loss_epoch"][-1]) for r in recs],
            "measurements_per_seed": n}
    ws_runs = runs["GN+WS"]
    inset = d.inset_axes([0.45, 0.12, 0.52, 0.42])
    layers = sorted({k.split(".")[0] for k in ws_runs[0]["ws"]}, key=int)
    for layer, col in zip(layers, ("C0", "C2")):
        steps = np.asarray(ws_runs[0]["step"])
        inset.plot(steps, ws_runs[0]["ws"][f"{layer}.mean"], "-", color=col, lw=0.8, label=f"layer {layer}: mean")
        inset.plot(steps, ws_runs[0]["ws"][f"{layer}.radial"], ":", color=col, lw=0.8, label=f"layer {layer}: radial")
        for key in ("mean", "radial"):
            summary["GN+WS"][f"conv{layer}_removed_{key}_median"] = float(
                np.median([v for r in ws_runs for v in r["ws"][f"{layer}.{key}"]]))
        residual = max(max(r["ws"][f"{layer}.identity_residual"]) for r in ws_runs)
        summary["GN+WS"][f"conv{layer}_identity_residual_max"] = float(residual)
        assert residual < 1e-10, f"the WS gradient identity fails for layer {layer}: {residual}"
    inset.set_title(r"GN+WS (seed 0): fraction of $\|\nabla_{\hat W}L\|^2$ removed", fontsize=7)
    inset.set_xlabel("step", fontsize=7)
    inset.tick_params(labelsize=6)
    inset.legend(fontsize=5.5, ncol=2)
    a.set_title(r"(a) gradient norm $\|\nabla_\theta L\|$ on the mini-batch")
    a.set_ylabel("gradient norm (running mean of 5; band: seeds)")
    a.set_yscale("log")
    b.set_title(r"(b) effective $\beta$-smoothness $\max_\eta \|\Delta\nabla L\|/\|\eta g\|$")
    b.set_ylabel(r"$\beta_{\rm eff}$ (Santurkar et al.; band: seeds)")
    b.set_yscale("log")
    c.set_title("(c) gradient norm against the mini-batch loss (all seeds)")
    c.set_xlabel("mini-batch loss")
    c.set_ylabel(r"$\|\nabla_\theta L\|$")
    d.set_title("(d) test accuracy per epoch (mean, band: seeds)")
    d.set_ylabel("test accuracy (%)")
    d.set_xlabel("epoch")
    for ax in (a, b):
        ax.set_xlabel("optimizer step")
    for ax in axes.ravel():
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left" if ax is not d else "lower left")
    epochs = len(runs["GN"][0]["test_acc"])
    fig.suptitle("Weight Standardization (Qiao et al.): gradient norm and smoothness proxies, GroupNorm conv net "
                 "with and without WS\n"
                 f"(digits 8×8, conv 1→8→16 with GN, SGD lr 0.05 momentum 0.9, batch 32, {epochs} epochs, same "
                 rf"initial raw weights, seeds {seeds}; $\eta \in [0.05, 0.4]$, same mini-batch)", fontsize=9.5)
    fig.tight_layout()
    save(fig, out_dir / f"{NAME}.png")
    return {"epochs": epochs, "runs": summary}


def main(out_dir, quick=False) -> dict:
    """Write ``{NAME}.png`` into ``out_dir`` and return the measured numbers (see the module docstring)."""
    with one_blas_thread():  # see normref.threads: small BLAS products run faster on one thread
        return _main(out_dir, quick)


if __name__ == "__main__":
    cli(main)
