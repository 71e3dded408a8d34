"""Figure 2: filter-normalized 2D loss contours of small ResNets with no normalizer, BatchNorm, GroupNorm and LayerNorm,
with and without skip connections (Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018; landscape.md §1).

Claim (Li et al.). With filter-normalized random directions, plots of different networks become comparable; skip
connections keep the landscape of a deep network smooth and nearly convex around the minimizer, while the same network
without them turns chaotic as depth grows (their ResNet-56/110 "noshort" panels); and BatchNorm's scale invariance
is the reason filter normalization is needed at all.

Setup (full run). :func:`normref.models.build_resnet` with widths (8, 16), two basic blocks per stage (9 convolutions
and a linear head: a ResNet-10), parameter-free shortcuts, so ``skip=True`` and ``skip=False`` have identical
parameters; normalizer none / BN / GN (``make_norm("group")``: 2 and 4 groups) / LN (``GroupNorm(1, C)``). Each of
the 8 networks is trained on the digits train split (1259 images, stratified, seed 0) for 8 epochs with **Adam,
lr 3e-3**, batch 32, same initialization seed 0 and batch order (SGD with momentum left both unnormalized networks
on the 10 % plateau at every rate tried, so a common optimizer that trains all eight is used).

Surface. :math:`L(\\theta^* + \\alpha\\delta + \\beta\\eta)` on a **21 x 21 grid over [-1, 1]^2** (coarser than Li et
al.'s 51 x 51, to keep the 8 planes within a few minutes on two shared cores), mean cross-entropy on a fixed set of
256 training images, two Gaussian directions with Li et al.'s filter normalization (:func:`random_directions`,
``norm="filter"``, seed 0; biases and normalizer parameters zero: ``--xignore biasbn``).

**BN-statistics policy of the contours: ``bn="running"``**: eval mode with the running statistics of
:math:`\\theta^*`, unchanged while the weights move; this is what Li et al.'s code computes (``--dir_type weights``),
and the claim is made under it. GN/LN have no running state, so the policy does not affect them. Because the choice
matters for BN, the bottom row shows, for the two BN networks, the loss along the first direction under all three
policies: ``running``, ``batch`` (train-mode statistics of the 256 evaluation images at every point) and
``recomputed`` (statistics reset and recomputed on 1024 training images at every point, then eval mode).

Resumable: the networks checkpoint every epoch and every plane/line is a resumable point store, all under
``out_dir/cache/fig_02_landscape_contours/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, figure_dirs, save  # noqa: E402

from normref import optim  # noqa: E402
from normref.data import DataLoader, load_digits, train_val_test_split  # noqa: E402
from normref.landscape import Objective, random_directions, surface  # noqa: E402
from normref.models import build_resnet  # noqa: E402
from normref.nn import CrossEntropyLoss  # noqa: E402
from normref.train import train  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

NAME = "fig_02_landscape_contours"
NORMS = ("none", "batch", "group", "layer")
NORM_LABELS = {"none": "no normalization", "batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm"}
POLICY_COLORS = {"running": "tab:red", "batch": "tab:blue", "recomputed": "tab:green"}

FULL = dict(widths=(8, 16), blocks=2, epochs=8, lr=3e-3, n_train=None, n_eval=256, n_recompute=1024, grid=21,
            line=31, workers=None, dpi=150)
QUICK = dict(widths=(4, 8), blocks=1, epochs=1, lr=3e-3, n_train=96, n_eval=32, n_recompute=64, grid=5, line=3,
             workers=1, dpi=80)


def trained_net(norm, skip, cfg, train_set, cache: Path):
    net = build_resnet(1, 10, widths=cfg["widths"], norm=None if norm == "none" else norm,
                       blocks_per_stage=cfg["blocks"], skip=skip, seed=0)
    loader = DataLoader(train_set, 32, seed=0, drop_last=True)
    history = train(net, loader, optim.Adam(net, lr=cfg["lr"]), epochs=cfg["epochs"], quiet=True,
                    checkpoint_dir=cache / f"net-{norm}-{'skip' if skip else 'noskip'}", resume=True)
    return net, history


def measure(cfg, cache: Path, progress=True) -> dict:
    train_set = train_val_test_split(load_digits(), seed=0).train
    if cfg["n_train"]:
        train_set = train_set.subset(np.arange(cfg["n_train"]))
    x_eval, y_eval = train_set.x[:cfg["n_eval"]], train_set.y[:cfg["n_eval"]]
    coords = np.linspace(-1, 1, cfg["grid"])
    results = {}
    for skip in (True, False):
        for norm in NORMS:
            key = f"{norm}-{'skip' if skip else 'noskip'}"
            if progress:
                print(f"[{NAME}] {key}: training", file=sys.stderr, flush=True)
            net, history = trained_net(norm, skip, cfg, train_set, cache)
            f = Objective(net, CrossEntropyLoss(), x_eval, y_eval, bn="running")
            dirs = random_directions(f, 2, seed=0, norm="filter", bias="zero", norm_params="zero")
            s = surface(f, dirs, coords, coords, store=cache / f"plane-{key}", workers=cfg["workers"],
                        progress=progress)
            center = s.loss[len(coords) // 2, len(coords) // 2]
            results[key] = {"x": coords.tolist(), "loss": s.loss.tolist(), "accuracy": s.accuracy.tolist(),
                            "train_acc": history["train_acc"][-1], "center_loss": float(center),
                            "max_loss": float(s.loss.max()),
                            "frac_below_2x_center": float(np.mean(s.loss < 2 * center + 0.1))}
            if norm == "batch":  # the same first direction under the three BN-statistics policies
                line = np.linspace(-1, 1, cfg["line"])
                results[key]["policies"] = {}
                for policy in ("running", "batch", "recomputed"):
                    extra = {"train_data": train_set.x[:cfg["n_recompute"]]} if policy == "recomputed" else {}
                    g = f.replace(bn=policy, **extra)
                    l1 = surface(g, dirs.vectors[0], line, store=cache / f"line-{key}-{policy}",
                                 workers=cfg["workers"], progress=progress)
                    results[key]["policies"][policy] = {"x": line.tolist(), "loss": l1.loss.tolist()}
    return results


def plot(results, cfg, path: Path):
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig = plt.figure(figsize=(17, 12.5), constrained_layout=True)
    grid = fig.add_gridspec(3, 4, height_ratios=[1, 1, 0.8])
    levels = np.arange(0.1, 10, 0.5)  # Li et al.'s contour levels
    fill_levels = np.logspace(-2, 1.5, 15)
    filled = None
    for row, skip in enumerate((True, False)):
        for col, norm in enumerate(NORMS):
            r = results[f"{norm}-{'skip' if skip else 'noskip'}"]
            ax = fig.add_subplot(grid[row, col])
            x = np.asarray(r["x"])
            loss = np.clip(np.asarray(r["loss"]), fill_levels[0], fill_levels[-1])
            filled = ax.contourf(x, x, loss, levels=fill_levels, norm=LogNorm(), cmap="viridis", extend="both")
            lines = ax.contour(x, x, np.asarray(r["loss"]), levels=levels, colors="white", linewidths=0.6)
            ax.clabel(lines, lines.levels[:4], fontsize=6, fmt="%.1f")
            ax.plot(0, 0, "r*", ms=9)
            ax.set_aspect("equal")
            ax.set_title(f"{NORM_LABELS[norm]}, {'with' if skip else 'without'} skip connections\n"
                         f"train acc {r['train_acc']:.2f}, L(θ*) = {r['center_loss']:.3f}, "
                         f"max L = {r['max_loss']:.3g}", fontsize=9)
            ax.set_xlabel("α (direction 1, filter-normalized)")
            ax.set_ylabel("β (direction 2)")
    fig.colorbar(filled, ax=fig.axes, shrink=0.6, label="training loss (cross-entropy, log color scale)")
    for col, skip in enumerate((True, False)):
        r = results[f"batch-{'skip' if skip else 'noskip'}"]["policies"]
        ax = fig.add_subplot(grid[2, 2 * col:2 * col + 2])
        for policy, line in r.items():
            ax.semilogy(line["x"], line["loss"], "o-", ms=3, color=POLICY_COLORS[policy], label=f'bn="{policy}"')
        ax.set_xlabel("α along direction 1 (filter-normalized)")
        ax.set_ylabel("training loss (log scale)")
        ax.set_title(f"BatchNorm ResNet {'with' if skip else 'without'} skips: the same line under three "
                     f"BN-statistics policies", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Filter-normalized loss contours (Li et al. 2018) of ResNet-{2 + 4 * cfg['blocks']} "
                 f"(widths {cfg['widths']}) on digits, {cfg['grid']}x{cfg['grid']} grid on [-1, 1]², loss on "
                 f"{cfg['n_eval']} training images\nBN-statistics policy of the contours: bn=\"running\" (eval mode, "
                 f"running statistics of θ*, as in Li et al.'s code)", fontsize=10)
    save(fig, path, dpi=cfg["dpi"])


def main(out_dir, quick: bool = False) -> dict:
    out_dir, cache = figure_dirs(out_dir, NAME, quick)
    cfg = QUICK if quick else FULL
    with one_blas_thread():
        results = measure(cfg, cache, progress=not quick)
    plot(results, cfg, out_dir / f"{NAME}.png")
    out = {}
    for key, r in results.items():
        out[key] = {k: r[k] for k in ("train_acc", "center_loss", "max_loss", "frac_below_2x_center")}
        if "policies" in r:
            out[key]["line_loss_at_alpha_1"] = {p: v["loss"][-1] for p, v in r["policies"].items()}
    return out


if __name__ == "__main__":
    cli(main)
