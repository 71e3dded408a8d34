"""Figure 1: BatchNorm and the smoothness of the loss along training (Santurkar, Tsipras, Ilyas & Madry, NeurIPS 2018,
Fig. 4): loss variation along the gradient, gradient predictiveness and effective beta-smoothness.

Setup. The VGG-style CNN of :func:`normref.models.build_vgg` (``build_cnn`` before the model zoo existed: the same
network), widths (8, 16) (two 3x3 convs per stage, max-pool after each), on the scikit-learn 8x8 digits (train split
1259 images, stratified, seed 0), with BatchNorm after every conv and without any normalizer. Both nets are trained
with **the same optimizer: SGD, learning rate 0.05, momentum 0.9, batch 32**, no weight decay, constant rate, same
initialization seed and batch order. (Plain SGD at 0.1 leaves the unnormalized net on its initial plateau for the
whole budget, so there would be nothing to compare; with momentum both nets train.)

Every ``every`` steps, at the current parameters :math:`x_t` and on that step's mini-batch (train-mode BN, i.e. the
objective's ``bn="batch"`` policy, which is what SGD differentiates), :func:`normref.landscape.gradient_step_smoothness`
steps along the negative gradient by :math:`\\eta \\in` ``DEFAULT_ETAS`` (8 values evenly spaced on [0.05, 0.4], raw
parameters, no filter normalization) and records

* the range over :math:`\\eta` of :math:`L(x_t - \\eta g_t)` ("loss landscape");
* the range of :math:`\\lVert g_t - \\nabla L(x_t - \\eta g_t)\\rVert_2` ("gradient predictiveness");
* :math:`\\max_\\eta \\lVert g_t - \\nabla L(x_t - \\eta g_t)\\rVert_2 / \\lVert \\eta g_t\\rVert_2` ("effective
  beta-smoothness").

The lower row plots the same measurements against the mini-batch loss at :math:`x_t`: the two nets reach a given
loss at different steps (the unnormalized one first sits on a plateau), so "over steps" mixes smoothness with
training progress; at matched loss the comparison isolates the normalizer. ``main`` returns medians over the first
and second half of the measured steps and over the steps whose loss lies in ``MATCHED_LOSS``.

Resumable: each run writes a checkpoint (model, optimizer, measurements so far) after every epoch under
``out_dir/cache/fig_01_bn_smoothness/``; a finished run is reloaded, an interrupted one continues from its last epoch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, config_key, figure_dirs, save  # noqa: E402

from normref import optim  # noqa: E402
from normref.data import DataLoader, load_digits, train_val_test_split  # noqa: E402
from normref.landscape import DEFAULT_ETAS, Objective, gradient_step_smoothness  # noqa: E402
from normref.nn import CrossEntropyLoss  # noqa: E402
from normref.train import evaluate, load_checkpoint, save_checkpoint  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

try:  # the model zoo; build_cnn is the same network under its older name
    from normref.models import build_vgg as build_net
except ImportError:  # pragma: no cover
    from normref.train import build_cnn as build_net

NAME = "fig_01_bn_smoothness"
NORMS = ("batch", "none")
LABELS = {"batch": "with BatchNorm", "none": "without normalization"}
COLORS = {"batch": "tab:blue", "none": "tab:red"}

FULL = dict(widths=(8, 16), epochs=8, batch_size=32, lr=0.05, momentum=0.9, every=4, n_train=None, seed=0)
MATCHED_LOSS = (0.05, 0.5)  # measured steps whose mini-batch loss lies in this band, for the matched-progress summary
QUICK = dict(widths=(4, 8), epochs=1, batch_size=32, lr=0.05, momentum=0.9, every=6, n_train=192, seed=0)



def load_data(cfg):
    splits = train_val_test_split(load_digits(), val=0.1, test=0.2, seed=0)
    train = splits.train if cfg["n_train"] is None else splits.train.subset(np.arange(cfg["n_train"]))
    return train, splits.test


def run(norm: str, cfg: dict, cache: Path, log=sys.stderr) -> dict:
    """Train one net and measure along the way; resumes from ``cache/<norm>-<key>.npz``."""
    path = cache / f"{norm}-{config_key(cfg)}.npz"
    train_set, test_set = load_data(cfg)
    model = build_net(1, 10, 8, widths=tuple(cfg["widths"]), norm=norm, seed=cfg["seed"])
    opt = optim.SGD(model, lr=cfg["lr"], momentum=cfg["momentum"])
    loader = DataLoader(train_set, cfg["batch_size"], seed=cfg["seed"], drop_last=True)
    loss_fn = CrossEntropyLoss()
    rec = {"step": [], "loss": [], "loss_min": [], "loss_max": [], "gc_min": [], "gc_max": [], "beta": [],
           "grad_norm": [], "train_loss": []}
    epoch = 0
    if path.exists():
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rec, epoch = state["records"], int(state["epoch"])
        if epoch < cfg["epochs"]:
            print(f"[{NAME}] {norm}: resuming after epoch {epoch}", file=log, flush=True)
    step = epoch * len(loader)
    t0 = time.perf_counter()
    for epoch in range(epoch, cfg["epochs"]):
        model.train()
        for xb, yb in loader.batches(epoch):
            if step % cfg["every"] == 0:
                f = Objective(model, loss_fn, xb, yb, bn="batch")
                s = gradient_step_smoothness(f, etas=DEFAULT_ETAS)
                for key, value in (("step", step), ("loss", s.loss), ("loss_min", s.loss_range[0]),
                                   ("loss_max", s.loss_range[1]), ("gc_min", s.grad_change_range[0]),
                                   ("gc_max", s.grad_change_range[1]), ("beta", s.beta_eff),
                                   ("grad_norm", s.grad_norm)):
                    rec[key].append(float(value))
            model.zero_grad()
            loss = float(loss_fn(model.forward(xb), yb))
            model.backward(loss_fn.backward())
            opt.step()
            rec["train_loss"].append(loss)
            step += 1
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "records": rec,
                               "epoch": epoch + 1})
        recent = np.mean(rec["train_loss"][-len(loader):])
        print(f"[{NAME}] {norm}: epoch {epoch + 1}/{cfg['epochs']}, train loss {recent:.3f}, "
              f"{time.perf_counter() - t0:.0f} s", file=log, flush=True)
    result = {key: np.asarray(value) for key, value in rec.items()}
    result["test_accuracy"] = evaluate(model, test_set)["accuracy"]
    return result


def summary(res: dict) -> dict:
    """Medians over the measured steps (first half, second half) of the three quantities."""
    n = len(res["step"])
    halves = {"early": slice(0, max(1, n // 2)), "late": slice(n // 2, n)}
    out = {"test_accuracy": float(res["test_accuracy"]), "final_train_loss": float(np.mean(res["train_loss"][-20:]))}
    band = (res["loss"] >= MATCHED_LOSS[0]) & (res["loss"] <= MATCHED_LOSS[1])  # matched training progress
    out["matched_loss_band"] = list(MATCHED_LOSS)
    out["matched_n_steps"] = int(band.sum())
    out["beta_median_matched_loss"] = float(np.median(res["beta"][band])) if band.any() else float("nan")
    out["grad_change_max_median_matched_loss"] = float(np.median(res["gc_max"][band])) if band.any() else float("nan")
    out["loss_range_median_matched_loss"] = (float(np.median((res["loss_max"] - res["loss_min"])[band]))
                                             if band.any() else float("nan"))
    for name, part in halves.items():
        out[f"loss_range_median_{name}"] = float(np.median((res["loss_max"] - res["loss_min"])[part]))
        out[f"grad_change_max_median_{name}"] = float(np.median(res["gc_max"][part]))
        out[f"beta_median_{name}"] = float(np.median(res["beta"][part]))
    return out


def rolling_median(values, k: int) -> np.ndarray:
    """Centred running median over ``k`` points (shorter windows at the ends)."""
    values = np.asarray(values)
    h = k // 2
    return np.array([np.median(values[max(0, i - h):i + h + 1]) for i in range(len(values))])


def plot(results: dict, cfg: dict, path: Path, quick: bool) -> None:
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 3, figsize=(17, 9))
    (ax_loss, ax_range, ax_gc), (ax_beta, ax_beta_loss, ax_gc_loss) = grid
    axes = grid.ravel()
    for norm, res in results.items():
        c, label = COLORS[norm], LABELS[norm]
        steps_all = np.arange(len(res["train_loss"]))
        ax_loss.plot(steps_all, res["train_loss"], color=c, alpha=0.25, lw=0.8)
        k = 10
        if len(steps_all) > k:
            smooth = np.convolve(res["train_loss"], np.ones(k) / k, mode="valid")
            ax_loss.plot(steps_all[k - 1:], smooth, color=c, lw=1.6, label=f"{label} (test acc "
                         f"{100 * res['test_accuracy']:.1f}%)")
        else:
            ax_loss.plot(steps_all, res["train_loss"], color=c, lw=1.6, label=label)
        s = res["step"]
        for ax, lo, hi in ((ax_range, res["loss_min"], res["loss_max"]), (ax_gc, res["gc_min"], res["gc_max"])):
            ax.fill_between(s, lo, hi, color=c, alpha=0.35, lw=0, label=f"{label} (min-max over $\\eta$)")
            ax.plot(s, lo, color=c, lw=0.5)  # edges, so that a thin band (a plateau) stays visible
            ax.plot(s, hi, color=c, lw=0.5)
        ax_beta.plot(s, res["beta"], color=c, lw=0.6, alpha=0.4)
        ax_beta.plot(s, rolling_median(res["beta"], 5), color=c, lw=1.6, label=f"{label} (5-point running median)")
        # the same measurements against the mini-batch loss at x_t: a comparison at matched training progress
        ax_beta_loss.scatter(res["loss"], res["beta"], color=c, s=10, alpha=0.7, label=label)
        ax_gc_loss.scatter(res["loss"], res["gc_max"], color=c, s=10, alpha=0.7, label=label)
    ax_loss.set(title="training loss (per step; line: 10-step mean)", xlabel="training step",
                ylabel="cross-entropy")
    ax_range.set(title=r"loss landscape: range of $L(x_t-\eta g_t)$", xlabel="training step",
                 ylabel="cross-entropy on the step's batch", yscale="log")
    ax_gc.set(title=r"gradient predictiveness: range of $\|g_t-\nabla L(x_t-\eta g_t)\|$",
              xlabel="training step", ylabel=r"$\ell_2$ gradient change", yscale="log")
    ax_beta.set(title=r"effective $\beta$-smoothness", xlabel="training step",
                ylabel=r"$\max_\eta \|\Delta g\| / \|\eta g_t\|$", yscale="log")
    ax_beta_loss.set(title=r"effective $\beta$-smoothness at matched loss", xscale="log", yscale="log",
                     xlabel=r"mini-batch loss $L(x_t)$ at the measured step", ylabel=r"$\beta_{eff}$")
    ax_gc_loss.set(title=r"largest gradient change at matched loss", xscale="log", yscale="log",
                   xlabel=r"mini-batch loss $L(x_t)$ at the measured step",
                   ylabel=r"$\max_\eta \|g_t-\nabla L(x_t-\eta g_t)\|$")
    for ax in axes:
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=8)
    etas = DEFAULT_ETAS
    fig.suptitle(f"BatchNorm and smoothness along training (Santurkar et al. 2018, Fig. 4): VGG-style CNN, widths "
                 f"{tuple(cfg['widths'])}, 8x8 digits; both nets SGD lr {cfg['lr']}, momentum {cfg['momentum']}, "
                 f"batch {cfg['batch_size']};\n"
                 rf"$\eta\in$[{etas[0]:.2f}, {etas[-1]:.2f}] ({len(etas)} steps) along $-g_t$ on the step's "
                 f"mini-batch, train-mode BN" + (" [QUICK MODE: tiny run]" if quick else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    save(fig, path, dpi=80 if quick else 150)


def main(out_dir, quick: bool = False) -> dict:
    out_dir, cache = figure_dirs(out_dir, NAME, quick, split_cache=False)  # the config key tells modes apart
    cfg = QUICK if quick else FULL
    with one_blas_thread():
        results = {norm: run(norm, cfg, cache) for norm in NORMS}
    plot(results, cfg, out_dir / f"{NAME}.png", quick)
    numbers = {norm: summary(res) for norm, res in results.items()}
    numbers["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    numbers["etas"] = [float(e) for e in DEFAULT_ETAS]
    return numbers


if __name__ == "__main__":
    cli(main)
