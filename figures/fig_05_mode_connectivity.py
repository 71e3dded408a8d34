"""Figure 5: linear mode connectivity of BatchNorm networks, and what the BN statistics do to the barrier
(Frankle, Dziugaite, Roy & Carbin, ICML 2020; Entezari, Sedghi, Saukh & Neyshabur, ICLR 2022; REPAIR, Jordan et al.,
ICLR 2023; landscape.md §5).

Claims tested.

* Frankle et al.: two *independent* SGD runs are separated by an error barrier on the straight line between them,
  while two *children* of one parent, copied after k epochs and trained on with different data orders, become
  linearly connected (barrier about 0) once k passes an early point of training ("stability to SGD noise").
* REPAIR / SWA / Git Re-Basin practice: an interpolated BN network must have its statistics *reset* (recomputed on
  training data); evaluated with stale running statistics, part of the measured barrier is an artefact of the
  statistics, not of the weights ("variance collapse").

Setup (full run). The VGG-style CNN of :func:`normref.models.build_vgg`, widths (8, 16), BatchNorm after every conv,
on the 8x8 digits (stratified split, seed 0: 1259 train / 359 test images), SGD lr 0.05, momentum 0.9, batch 32
(last incomplete batch dropped), constant rate, 10 epochs per network in total.

* independent pair: initializations seeds 1 and 2, data orders 101 and 102;
* spawned pairs: one parent (initialization seed 0, data order 100) trained for k epochs, k in {0, 1, 2, 4}; its
  parameters, running statistics and momentum buffers are copied into two children, which train for the remaining
  10 - k epochs with data orders 201 + 10k and 202 + 10k (k = 0: same initialization, different SGD noise).

Each pair is interpolated, :math:`\\theta(\\alpha) = (1-\\alpha)\\theta_A + \\alpha\\theta_B` on 21 points of
[0, 1], with :func:`normref.landscape.interpolate` under three BN-statistics modes:

* ``keep``: eval mode with endpoint A's running statistics at every alpha (stale);
* ``reset``: statistics recomputed on the 1259 training images at every alpha (momentum None, one pass in chunks of
  256, then eval mode: the REPAIR/SWA reset);
* ``interpolate``: running means and standard deviations interpolated like the weights (REPAIR's goal statistics).

Both barrier definitions are reported for test error and test loss: Frankle's (sup over alpha of v minus the mean of
the endpoints) and Entezari's (sup of v minus the linear interpolation of the endpoint values).

Resumable: each network checkpoints every epoch (``normref.train.train``) under
``out_dir/cache/fig_05_mode_connectivity/``, and every interpolation curve is a resumable point store there.
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
from normref.landscape import Objective, interpolate  # noqa: E402
from normref.models import build_vgg  # noqa: E402
from normref.nn import CrossEntropyLoss  # noqa: E402
from normref.train import CHECKPOINT_NAME, load_checkpoint, train  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

NAME = "fig_05_mode_connectivity"
MODES = ("keep", "reset", "interpolate")
MODE_LABELS = {"keep": "keep (A's running stats)", "reset": "reset (recomputed on train data)",
               "interpolate": "interpolate (REPAIR goal stats)"}
MODE_COLORS = {"keep": "tab:red", "reset": "tab:blue", "interpolate": "tab:green"}

FULL = dict(widths=(8, 16), epochs=10, spawn=(0, 1, 2, 4), lr=0.05, n_train=None, n_test=None, alphas=21, dpi=150)
QUICK = dict(widths=(4, 8), epochs=1, spawn=(0,), lr=0.05, n_train=192, n_test=96, alphas=5, dpi=80)


def splits(cfg):
    sp = train_val_test_split(load_digits(), seed=0)
    train_set, test_set = sp.train, sp.test
    if cfg["n_train"]:
        train_set = train_set.subset(np.arange(cfg["n_train"]))
    if cfg["n_test"]:
        test_set = test_set.subset(np.arange(cfg["n_test"]))
    return train_set, test_set


def new_net(cfg, seed):
    return build_vgg(1, 10, 8, widths=cfg["widths"], norm="batch", seed=seed)


def trained(cfg, run_dir: Path, train_set, *, init_seed, data_seed, epochs, start=None):
    """Train (or resume, or reload) one network for ``epochs`` epochs; ``start`` = ``(model_state, optimizer_state)``
    to continue from (a spawned child)."""
    net = new_net(cfg, init_seed)
    opt = optim.SGD(net, lr=cfg["lr"], momentum=0.9)
    if start is not None:
        net.load_state_dict(start[0])
        if start[1] is not None:
            opt.load_state_dict(start[1])
    loader = DataLoader(train_set, 32, seed=data_seed, drop_last=True)
    train(net, loader, opt, epochs=epochs, checkpoint_dir=run_dir, resume=True, quiet=True)
    return net, opt


def networks(cfg, cache: Path, train_set, progress=True) -> dict:
    """``{pair name: (net_a, net_b)}`` for the independent pair and every spawn epoch."""
    def log(msg):
        if progress:
            print(f"[{NAME}] {msg}", file=sys.stderr, flush=True)

    e = cfg["epochs"]
    pairs = {}
    log("independent runs")
    a, _ = trained(cfg, cache / "independent-a", train_set, init_seed=1, data_seed=101, epochs=e)
    b, _ = trained(cfg, cache / "independent-b", train_set, init_seed=2, data_seed=102, epochs=e)
    pairs["independent"] = (a, b)
    for k in cfg["spawn"]:
        log(f"parent to epoch {k}, then two children")
        if k == 0:
            parent = new_net(cfg, 0)
            start = (parent.state_dict(), None)
        else:
            trained(cfg, cache / f"parent-k{k}", train_set, init_seed=0, data_seed=100, epochs=k)
            state = load_checkpoint(cache / f"parent-k{k}" / CHECKPOINT_NAME)
            start = (state["model"], state["optimizer"])
        children = [trained(cfg, cache / f"child-k{k}-{i}", train_set, init_seed=0, data_seed=200 + 10 * k + i,
                            epochs=e - k, start=start)[0] for i in (1, 2)]
        pairs[f"spawn k={k}"] = tuple(children)
    return pairs


def measure(cfg, cache: Path, progress=True) -> dict:
    train_set, test_set = splits(cfg)
    pairs = networks(cfg, cache, train_set, progress)
    alphas = np.linspace(0, 1, cfg["alphas"])
    results = {}
    for pair, (net_a, net_b) in pairs.items():
        f = Objective(net_a, CrossEntropyLoss(), test_set.x, test_set.y, bn="recomputed",
                      train_data=train_set.x, recompute_batch_size=256)
        results[pair] = {}
        for mode in MODES:
            slug = pair.replace(" ", "-").replace("=", "")
            curve = interpolate(f, net_a, net_b, alphas, bn=mode, store=cache / f"interp-{slug}-{mode}", workers=1,
                                progress=progress)
            results[pair][mode] = {
                "alphas": alphas.tolist(), "error": curve.values["error"].tolist(),
                "loss": curve.values["loss"].tolist(),
                "barriers": {v: b._asdict() for v, b in curve.barriers.items()}}
    return results


def plot(results, cfg, path: Path):
    import matplotlib.pyplot as plt

    pairs = list(results)
    fig, axes = plt.subplots(2, len(pairs) + 1, figsize=(3.6 * (len(pairs) + 1), 7.2), constrained_layout=True)
    axes = np.atleast_2d(axes)
    for col, pair in enumerate(pairs):
        for row, value in enumerate(("error", "loss")):
            ax = axes[row, col]
            for mode in MODES:
                r = results[pair][mode]
                scale = 100.0 if value == "error" else 1.0
                b = r["barriers"][value]
                ax.plot(r["alphas"], np.asarray(r[value]) * scale, "o-", ms=2.5, lw=1.3, color=MODE_COLORS[mode],
                        label=f"{mode}: F {b['frankle'] * scale:.2g}, E {b['entezari'] * scale:.2g}")
            ax.set_xlabel("interpolation α  (θ = (1-α)θ_A + αθ_B)")
            ax.set_ylabel("test error (%)" if value == "error" else "test loss (cross-entropy)")
            if value == "loss":
                ax.set_yscale("log")
            ax.set_title(f"{pair}: test {value}", fontsize=10)
            ax.legend(fontsize=7, title="barrier (F=Frankle, E=Entezari)", title_fontsize=7)
            ax.grid(alpha=0.3, which="both")
    # summary: Frankle error barrier per pair and mode (bars), Entezari loss barrier below
    for row, (value, definition) in enumerate((("error", "frankle"), ("loss", "entezari"))):
        ax = axes[row, -1]
        width = 0.8 / len(MODES)
        x = np.arange(len(pairs))
        scale = 100.0 if value == "error" else 1.0
        for i, mode in enumerate(MODES):
            heights = [results[p][mode]["barriers"][value][definition] * scale for p in pairs]
            ax.bar(x + (i - 1) * width, heights, width, color=MODE_COLORS[mode], label=MODE_LABELS[mode])
        ax.set_xticks(x, [p.replace("spawn ", "") for p in pairs], fontsize=8, rotation=30)
        ax.set_ylabel(f"{definition.capitalize()} {value} barrier" + (" (% points)" if value == "error" else ""))
        ax.set_title(f"{definition.capitalize()} barrier of the test {value}", fontsize=10)
        ax.axhline(0, color="k", lw=0.6)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Linear mode connectivity of a BatchNorm CNN (VGG-style, widths {cfg['widths']}) on digits: two "
                 f"independent runs vs two children spawned from one parent after k epochs ({cfg['epochs']} epochs in "
                 f"all)\nBN statistics along the path: kept from endpoint A (stale), reset on training data, or "
                 f"interpolated (REPAIR)", fontsize=10)
    save(fig, path, dpi=cfg["dpi"])


def main(out_dir, quick: bool = False) -> dict:
    out_dir, cache = figure_dirs(out_dir, NAME, quick)
    cfg = QUICK if quick else FULL
    with one_blas_thread():
        results = measure(cfg, cache, progress=not quick)
    plot(results, cfg, out_dir / f"{NAME}.png")
    out = {}
    for pair, modes in results.items():
        for mode, r in modes.items():
            b = r["barriers"]
            out[f"{pair}/{mode}"] = {
                "endpoint_error": [r["error"][0], r["error"][-1]], "midpoint_error": r["error"][len(r["error"]) // 2],
                "error_barrier_frankle": b["error"]["frankle"], "error_barrier_entezari": b["error"]["entezari"],
                "loss_barrier_frankle": b["loss"]["frankle"], "loss_barrier_entezari": b["loss"]["entezari"]}
    return out


if __name__ == "__main__":
    cli(main)
