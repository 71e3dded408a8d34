"""Figure 6: the edge of stability (Cohen, Kaur, Li, Kolter & Talwalkar, ICLR 2021), with and without BatchNorm.

Claim. Under full-batch gradient descent with step size :math:`\\eta`, the sharpness :math:`S(\\theta) =
\\lambda_{max}(\\nabla^2 L(\\theta))` first rises ("progressive sharpening") and then stops rising at about the
stability threshold :math:`2/\\eta` of a quadratic, hovering at or just above it while the loss keeps decreasing,
non-monotonically (landscape.md §6).

Setup (full run). A tanh MLP 64-32-32-10 (:func:`normref.models.build_mlp`, ``activation="tanh"``, so the model is
analytic and every Hessian-vector product is an exact complex step) on the first 500 images of the digits train split
(stratified split, seed 0), **mean squared error against one-hot targets** (Cohen et al.'s main loss; normref's
``MSELoss`` averages over all N x 10 entries, which only rescales the loss), plain GD (no momentum: the threshold is
exactly :math:`2/\\eta`) for 3000 steps at :math:`\\eta \\in \\{0.5, 1, 2\\}`, from the same initialization (seed 0).
Two networks: no normalizer, and BatchNorm after each hidden Linear.

BN-statistics policy. The BN net is trained *and* its Hessian measured with ``bn="batch"`` and one ghost batch of all
500 examples: train-mode statistics of the full batch, which is exactly the function full-batch GD descends (Cohen et
al.'s code uses fixed chunks of 1000, the same idea). Buffers are not updated during GD. Because eval-mode sharpness
differs (landscape.md §6 pitfall), the script also reports, at the end of every BN run, the sharpness under
``bn="running"`` with the population statistics of the 500 examples put into the buffers.

Sharpness: :func:`normref.landscape.gd_sharpness` (Lanczos via ``eigsh``, relative tolerance 1e-4) every 50 steps,
before that step's update. Each run checkpoints to ``out_dir/cache/fig_06_edge_of_stability/<run>.npz`` after every
measurement and resumes from it.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, figure_dirs, save  # noqa: E402

from normref.data import load_digits, train_val_test_split  # noqa: E402
from normref.landscape import Objective, gd_sharpness, top_eigenpairs  # noqa: E402
from normref.models import build_mlp  # noqa: E402
from normref.nn import MSELoss  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

NAME = "fig_06_edge_of_stability"
NORMS = ("none", "batch")
TITLES = {"none": "no normalization", "batch": 'BatchNorm (train-mode statistics, bn="batch")'}
COLORS = ("tab:blue", "tab:orange", "tab:green")

FULL = dict(n=500, hidden=(32, 32), lrs=(0.5, 1.0, 2.0), steps=3000, every=50, tol=1e-4, seed=0, dpi=150)
QUICK = dict(n=128, hidden=(16,), lrs=(0.5, 1.0, 2.0), steps=80, every=20, tol=1e-3, seed=0, dpi=80)


def data(cfg):
    train = train_val_test_split(load_digits(flatten=True), seed=0).train
    x, y = train.x[:cfg["n"]], train.y[:cfg["n"]]
    return x, np.eye(10)[y]


def objective(norm, cfg, x, targets):
    net = build_mlp(x.shape[1], 10, hidden=cfg["hidden"], norm=norm, activation="tanh", seed=cfg["seed"])
    if norm == "batch":
        return Objective(net, MSELoss(), x, targets, bn="batch")  # one ghost batch: all of x
    return Objective(net, MSELoss(), x, targets, bn="running")  # no BN layer: the policy changes nothing


def population_buffers(f: Objective, theta, x) -> dict:
    """The BN running buffers that hold the population statistics of ``x`` at ``theta`` (one train-mode pass with
    momentum ``None``, a cumulative average over a single batch: mean and unbiased variance of all of ``x``)."""
    from normref.nn.flat import set_flat_params

    model = copy.deepcopy(f.model)
    set_flat_params(model, theta)
    for module in model.modules():
        if hasattr(module, "reset_running_stats") and hasattr(module, "momentum"):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    model.forward(x)
    return {name: np.array(value, copy=True) for name, value in model.named_buffers()}


def first_crossing(steps, sharpness, level):
    hit = np.flatnonzero(sharpness >= level)
    return int(steps[hit[0]]) if len(hit) else None


def run_all(cfg, cache: Path, progress=True) -> dict:
    x, targets = data(cfg)
    results = {}
    for norm in NORMS:
        f = objective(norm, cfg, x, targets)
        for lr in cfg["lrs"]:
            store = cache / f"{norm}-lr{lr:g}-n{cfg['n']}-steps{cfg['steps']}.npz"
            if progress:
                print(f"[{NAME}] {norm}, lr {lr:g}", file=sys.stderr, flush=True)
            r = gd_sharpness(f, lr, cfg["steps"], every=cfg["every"], tol=cfg["tol"], store=store, progress=progress)
            s = r.sharpness[:, 0]
            last = r.eig_steps >= 2 * cfg["steps"] // 3
            out = {"lr": lr, "threshold": 2 / lr, "eig_steps": r.eig_steps.tolist(), "sharpness": s.tolist(),
                   "loss": r.loss.tolist(), "initial_sharpness": float(s[0]), "max_sharpness": float(s.max()),
                   "final_sharpness": float(s[-1]),
                   "last_third_mean_over_threshold": float(np.mean(s[last]) * lr / 2),
                   "first_step_above_90pct": first_crossing(r.eig_steps, s, 0.9 * 2 / lr),
                   "final_loss": float(r.loss[-1]), "method": r.method}
            if norm == "batch":
                buffers = population_buffers(f, r.theta, x)
                f_eval = f.replace(bn="running", buffers=buffers)
                out["final_sharpness_eval_mode"] = float(top_eigenpairs(f_eval, 1, theta=r.theta,
                                                                        tol=cfg["tol"]).values[0])
            results[(norm, lr)] = out
    return results


def plot(results, cfg, path: Path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True, constrained_layout=True)
    for col, norm in enumerate(NORMS):
        ax_s, ax_l = axes[0, col], axes[1, col]
        for color, lr in zip(COLORS, cfg["lrs"]):
            r = results[(norm, lr)]
            ax_s.plot(r["eig_steps"], r["sharpness"], color=color, lw=1.6, label=f"η = {lr:g}")
            ax_s.axhline(2 / lr, color=color, ls="--", lw=1.0)
            ax_s.text(cfg["steps"], 2 / lr, f" 2/η = {2 / lr:g}", color=color, va="bottom", ha="right", fontsize=8)
            ax_l.semilogy(np.arange(len(r["loss"])), r["loss"], color=color, lw=1.0, label=f"η = {lr:g}")
        ax_s.set_title(TITLES[norm])
        ax_s.set_ylabel("sharpness λ_max(∇²L)")
        ax_s.set_ylim(0, 1.25 * max(max(2 / lr for lr in cfg["lrs"]),
                                    max(results[(norm, lr)]["max_sharpness"] for lr in cfg["lrs"])))
        ax_s.legend(loc="upper left", fontsize=8)
        ax_l.set_xlabel("gradient-descent step")
        ax_l.set_ylabel("training loss (MSE, log scale)")
        ax_l.legend(loc="upper right", fontsize=8)
        ax_s.grid(alpha=0.3)
        ax_l.grid(alpha=0.3, which="both")
    fig.suptitle(f"Edge of stability: full-batch GD on {cfg['n']} digits, tanh MLP {64}-"
                 f"{'-'.join(map(str, cfg['hidden']))}-10, MSE on one-hot targets, same initialization\n"
                 f"sharpness (top Hessian eigenvalue by Lanczos, exact complex-step HVPs) every {cfg['every']} "
                 f"steps vs the threshold 2/η (dashed)", fontsize=10)
    save(fig, path, dpi=cfg["dpi"])


def main(out_dir, quick: bool = False) -> dict:
    out_dir, cache = figure_dirs(out_dir, NAME, quick, split_cache=False)  # the file names tell modes apart
    cfg = QUICK if quick else FULL
    with one_blas_thread():
        results = run_all(cfg, cache, progress=not quick)
    plot(results, cfg, out_dir / f"{NAME}.png")
    keys = ("threshold", "initial_sharpness", "max_sharpness", "final_sharpness", "last_third_mean_over_threshold",
            "first_step_above_90pct", "final_loss", "final_sharpness_eval_mode")
    return {f"{norm}/lr={lr:g}": {k: r[k] for k in keys if k in r} for (norm, lr), r in results.items()}


if __name__ == "__main__":
    cli(main)
