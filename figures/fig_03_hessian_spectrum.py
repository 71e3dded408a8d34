"""Figure 3: the Hessian spectrum, bulk plus outliers, with and without BatchNorm (Sagun et al. 2017; Papyan 2018;
Ghorbani, Krishnan & Xiao, ICML 2019).

Claims tested.

* Sagun, Evci, Güney, Dauphin & Bottou ("Empirical analysis of the Hessian of over-parametrized neural networks",
  seed paper): the spectrum is a *bulk* near zero plus a few *outliers*; the outliers depend on the data (more
  clusters, more outliers), and Papyan measured about one outlier per class (C, or C - 1 for the softmax).
* Ghorbani et al.: networks without BN grow large isolated eigenvalues early in training; with BN they are "almost
  absent"; and when a BN network's Hessian is taken with population statistics instead of batch statistics, the
  outliers come back.

Setup (full run). A tanh MLP 64-64-64-C (:func:`normref.models.build_mlp`; analytic, so every Hessian-vector product
is an exact complex step) on the digits of the first C classes, C in {2, 4, 6, 8, 10} (the stratified train split,
seed 0: about 126 images per class), trained for 2 epochs with SGD (lr 0.05, momentum 0.9, batch 32, seed 0): a point
in mid-training, where the loss is still well above zero (at convergence the cross-entropy Hessian shrinks towards 0
and the outliers with it). The Hessian is of the mean cross-entropy over all training images of those classes.

Three Hessians per C:

* ``none``: no normalizer;
* ``BN, bn="batch"``: BN after each hidden Linear, Hessian of the train-mode loss with *one ghost batch of all the
  training images* (the function that full-batch training with BN would descend);
* ``BN, bn="running"``: the *same BN weights*, Hessian of the eval-mode loss with population statistics (the
  buffers set to the mean and unbiased variance of all training images at these weights).

Measured: the top C + 10 eigenvalues (``eigsh``, relative tolerance 1e-4, residuals reported), and for C = 10 the
spectral density by stochastic Lanczos quadrature (:func:`normref.landscape.slq`, m = 80 steps, 3 Rademacher runs,
Gaussian broadening with Ghorbani et al.'s variance rule, sigma^2 = 1e-5 x range). Outlier count, two explicit rules
(small networks have no perfectly clean gap, so both are reported):

* ``threshold``: eigenvalues larger than twice the bulk level, the bulk level being the (C + 10)-th largest eigenvalue;
* ``gap``: the position of the largest ratio lambda_i / lambda_(i+1) among the top C + 5.

Results are cached per (C, network) under ``out_dir/cache/fig_03_hessian_spectrum/`` (JSON) and the SLQ runs are
resumable point stores there.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, figure_dirs, save, write_json  # noqa: E402

from normref import optim  # noqa: E402
from normref.data import DataLoader, Dataset, load_digits, train_val_test_split  # noqa: E402
from normref.landscape import Objective, slq, top_eigenpairs  # noqa: E402
from normref.models import build_mlp  # noqa: E402
from normref.nn import CrossEntropyLoss  # noqa: E402
from normref.train import train  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

NAME = "fig_03_hessian_spectrum"
CONFIGS = ("none", "bn-batch", "bn-running")
LABELS = {"none": "no normalization", "bn-batch": 'BatchNorm, bn="batch" (batch statistics)',
          "bn-running": 'BatchNorm, bn="running" (population statistics)'}
COLORS = {"none": "tab:red", "bn-batch": "tab:blue", "bn-running": "tab:purple"}

FULL = dict(classes=(2, 4, 6, 8, 10), hidden=(64, 64), epochs=2, lr=0.05, n_per_class=None, extra=10, tol=1e-4,
            slq_m=80, slq_runs=3, seed=0, dpi=150)
QUICK = dict(classes=(2, 4), hidden=(16, 16), epochs=1, lr=0.05, n_per_class=40, extra=4, tol=1e-3, slq_m=20,
             slq_runs=1, seed=0, dpi=80)


def class_subset(train: Dataset, num_classes: int, n_per_class) -> Dataset:
    keep = np.flatnonzero(train.y < num_classes)
    if n_per_class is not None:
        keep = np.concatenate([keep[train.y[keep] == c][:n_per_class] for c in range(num_classes)])
    return Dataset(train.x[keep], train.y[keep], f"digits<{num_classes}", num_classes)


def population_buffers(model, x) -> dict:
    """Running buffers holding the population statistics of ``x`` (momentum ``None``: a cumulative average over one
    batch gives the mean and the unbiased variance of all of ``x``)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "reset_running_stats") and hasattr(module, "momentum"):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    model.forward(x)
    return {name: np.array(value, copy=True) for name, value in model.named_buffers()}


def outlier_counts(values, num_classes: int) -> dict:
    """The two counting rules of the module docstring on descending eigenvalues ``values`` (length C + extra)."""
    values = np.asarray(values)
    bulk = float(values[-1])
    threshold = int(np.sum(values > 2 * bulk))
    head = values[:num_classes + 5]
    positive = head[head > 0]
    ratios = positive[:-1] / positive[1:]
    gap = int(np.argmax(ratios)) + 1 if len(ratios) else 0
    return {"threshold": threshold, "gap": gap, "bulk_level": bulk,
            "largest_gap_ratio": float(ratios.max()) if len(ratios) else float("nan")}


def trained_net(norm, data: Dataset, cfg):
    net = build_mlp(data.x.shape[1], data.num_classes, hidden=cfg["hidden"], norm=norm, activation="tanh",
                    seed=cfg["seed"])
    loader = DataLoader(data, 32, seed=cfg["seed"], drop_last=True)
    train(net, loader, optim.SGD(net, lr=cfg["lr"], momentum=0.9), epochs=cfg["epochs"], quiet=True)
    return net


def objectives(num_classes: int, cfg) -> dict:
    data = class_subset(train_val_test_split(load_digits(flatten=True), seed=0).train, num_classes,
                        cfg["n_per_class"])
    plain = trained_net(None, data, cfg)
    bn = trained_net("batch", data, cfg)
    loss = CrossEntropyLoss()
    return {"none": Objective(plain, loss, data.x, data.y, bn="running"),  # no BN layer: the policy is moot
            "bn-batch": Objective(bn, loss, data.x, data.y, bn="batch"),  # one ghost batch: all images
            "bn-running": Objective(bn, loss, data.x, data.y, bn="running",
                                    buffers=population_buffers(bn, data.x))}


def measure(num_classes: int, cfg, cache: Path, progress: bool) -> dict:
    path = cache / f"C{num_classes}-{'x'.join(map(str, cfg['hidden']))}-e{cfg['epochs']}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = {}
    for name, f in objectives(num_classes, cfg).items():
        if progress:
            print(f"[{NAME}] C={num_classes}, {name}: top {num_classes + cfg['extra']} eigenvalues",
                  file=sys.stderr, flush=True)
        top = top_eigenpairs(f, num_classes + cfg["extra"], tol=cfg["tol"], progress=progress)
        ev = f.evaluate(f.theta0)
        out[name] = {"eigenvalues": top.values.tolist(), "max_residual": float(top.residuals.max()),
                     "n_hvp": top.n_hvp, "method": top.method, "loss": ev["loss"], "accuracy": ev["accuracy"],
                     "num_params": f.num_params, **outlier_counts(top.values, num_classes)}
        if num_classes == max(cfg["classes"]):
            run = slq(f, cfg["slq_m"], cfg["slq_runs"], store=cache / f"slq-C{num_classes}-{name}", progress=progress)
            out[name]["slq_nodes"] = [x.tolist() for x in run.nodes]
            out[name]["slq_weights"] = [w.tolist() for w in run.weights]
    write_json(path, out)
    return out


def plot(results: dict, cfg, path: Path):
    import matplotlib.pyplot as plt
    from normref.landscape import spectral_density

    classes = cfg["classes"]
    cmax = max(classes)
    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5), constrained_layout=True)
    for col, name in enumerate(CONFIGS):
        r = results[cmax][name]
        ax = axes[0, col]
        t, phi = spectral_density(r["slq_nodes"], r["slq_weights"], rule="variance")
        ax.semilogy(t, phi + 1e-7, color=COLORS[name], lw=1.0)
        for lam in r["eigenvalues"][:r["threshold"]]:
            ax.axvline(lam, color="k", lw=0.5, alpha=0.4)
        ax.set_title(f"{LABELS[name]}\nC = {cmax} classes, loss {r['loss']:.3f}", fontsize=10)
        ax.set_xlabel("Hessian eigenvalue λ")
        ax.set_ylabel("spectral density (SLQ, log scale)")
        ax.set_ylim(1e-6, None)
        ax.text(0.97, 0.95, f"λ_max = {r['eigenvalues'][0]:.2f}\noutliers: {r['threshold']} (threshold), "
                f"{r['gap']} (gap)", transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox=dict(fc="white", ec="0.8"))
        ax = axes[1, col]
        cmap = plt.get_cmap("viridis")
        for i, c in enumerate(classes):
            ev = np.asarray(results[c][name]["eigenvalues"])
            color = cmap(i / max(len(classes) - 1, 1))
            ax.semilogy(np.arange(1, len(ev) + 1), ev / results[c][name]["bulk_level"], "o-", ms=3, lw=1,
                        color=color, label=f"C = {c}")
            ax.axvline(c + 0.5, color=color, ls=":", lw=1)
        ax.axhline(2, color="k", ls="--", lw=0.8)
        ax.set_xlabel("eigenvalue rank i (dotted: i = C + ½)")
        ax.set_ylabel("λ_i / bulk level (λ_(C+10))")
        ax.set_title(f"top eigenvalues, {name}", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    ax = axes[0, 3]
    for name in CONFIGS:
        ax.plot(classes, [results[c][name]["threshold"] for c in classes], "o-", color=COLORS[name],
                label=f"{name} (threshold rule)")
        ax.plot(classes, [results[c][name]["gap"] for c in classes], "s--", color=COLORS[name], alpha=0.6,
                label=f"{name} (gap rule)")
    ax.plot(classes, classes, "k-", lw=0.8, label="C")
    ax.plot(classes, [c - 1 for c in classes], "k:", lw=0.8, label="C - 1")
    ax.set_xlabel("number of classes C")
    ax.set_ylabel("number of outlier eigenvalues")
    ax.set_title("outliers vs classes", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1, 3]
    for name in CONFIGS:
        ax.semilogy(classes, [results[c][name]["eigenvalues"][0] for c in classes], "o-", color=COLORS[name],
                    label=f"λ_max, {name}")
        ax.semilogy(classes, [results[c][name]["bulk_level"] for c in classes], "x:", color=COLORS[name],
                    label=f"bulk level, {name}")
    ax.set_xlabel("number of classes C")
    ax.set_ylabel("eigenvalue (log scale)")
    ax.set_title("top eigenvalue and bulk level", fontsize=10)
    ax.legend(fontsize=7)
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    fig.suptitle(f"Hessian spectrum of a tanh MLP 64-{'-'.join(map(str, cfg['hidden']))}-C on the digits of the "
                 f"first C classes after {cfg['epochs']} epochs of SGD: bulk plus outliers, without BN, with BN "
                 f"(batch statistics) and the same BN weights with population statistics\nexact complex-step HVPs; "
                 f"top C+{cfg['extra']} eigenvalues by Lanczos (eigsh); density by SLQ ({cfg['slq_runs']} runs x "
                 f"{cfg['slq_m']} steps)", fontsize=10)
    save(fig, path, dpi=cfg["dpi"])


def main(out_dir, quick: bool = False) -> dict:
    out_dir, cache = figure_dirs(out_dir, NAME, quick)
    cfg = QUICK if quick else FULL
    with one_blas_thread():
        results = {c: measure(c, cfg, cache, progress=not quick) for c in cfg["classes"]}
    plot(results, cfg, out_dir / f"{NAME}.png")
    keys = ("loss", "accuracy", "threshold", "gap", "bulk_level", "largest_gap_ratio", "max_residual", "num_params")
    return {f"C={c}/{name}": dict({k: results[c][name][k] for k in keys},
                                  top5=results[c][name]["eigenvalues"][:5])
            for c in cfg["classes"] for name in CONFIGS}


if __name__ == "__main__":
    cli(main)
