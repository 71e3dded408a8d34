"""Figure 9: training only BatchNorm's affine parameters against training everything (Frankle, Schwab & Morcos,
"Training BatchNorm and Only BatchNorm", ICLR 2021).

Setup. The VGG-style CNN of :func:`normref.models.build_vgg` with BatchNorm after every conv, on the scikit-learn 8x8
digits (stratified split, seed 0: 1259 training and 359 test images), at three widths: (8, 16), (16, 32), (32, 64)
(two 3x3 convs per stage), two seeds (initialization, batch order and random subset). For a given seed every regime
starts from the same random initialization and trains one subset of the parameters; everything else stays at its
initial value:

* ``all``: every parameter;
* ``BN affine only``: the BatchNorm ``gamma``/``beta`` (2 per channel), exactly ``normref train --train-only
  norm-affine`` (the optimizer's ``params=`` selector on the names ``*.gamma``/``*.beta``). The output layer stays
  frozen too, as in the paper's main experiments;
* ``random subset``: the paper's control, the same *number* of entries as the affine parameters, chosen uniformly at
  random among the conv and linear weights and biases (gradients of all other entries are zeroed before every step;
  no weight decay, so they never move);
* ``output layer only``: the final ``Linear`` (weight and bias) on frozen random features, the classic
  random-feature baseline (BatchNorm keeps normalizing, with its affine at the identity).

Training: SGD, momentum 0.9, batch 32, constant rate, no weight decay, 8 epochs. Learning rate per regime: 0.05 for
``all`` and ``output layer only``, 0.2 for the two small subsets; picked from {0.05, 0.2} in a one-seed pilot at widths
(8, 16) and (32, 64) (the small subsets train too slowly at 0.05, and ``all`` is worse at 0.2). Measured: test
accuracy (eval mode), the number of trained parameters, and, for the affine-only runs, the distribution of the
learned ``gamma`` (Frankle et al. report that about a third of the features get disabled, ``gamma`` near 0).

Each run is one point of :func:`normref.landscape.run_points` (progress, resume) stored under
``out_dir/cache/fig_09_bn_affine_only/``; the learned ``gamma`` of every run is saved beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, config_key, figure_dirs, save  # noqa: E402

from normref import optim  # noqa: E402
from normref.data import DataLoader, load_digits, train_val_test_split  # noqa: E402
from normref.landscape import run_points  # noqa: E402
from normref.nn import BatchNorm, Linear  # noqa: E402
from normref.train import evaluate, train  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

try:  # the model zoo; build_cnn is the same network under its older name
    from normref.models import build_vgg as build_net
except ImportError:  # pragma: no cover
    from normref.train import build_cnn as build_net

NAME = "fig_09_bn_affine_only"
REGIMES = ("all", "affine", "random", "output")
LABELS = {"all": "all parameters", "affine": "BN affine only (gamma, beta)",
          "random": "random subset, same count as affine", "output": "output layer only (random features)"}
COLORS = {"all": "black", "affine": "tab:blue", "random": "tab:gray", "output": "tab:red"}
LR = {"all": 0.05, "affine": 0.2, "random": 0.2, "output": 0.05}
SMALL_GAMMA = 0.1  # |gamma| below this (init 1) counts as a disabled feature

FULL = dict(widths=((8, 16), (16, 32), (32, 64)), epochs=8, batch_size=32, momentum=0.9, seeds=(0, 1), n_train=None)
QUICK = dict(widths=((4, 8), (8, 16)), epochs=1, batch_size=32, momentum=0.9, seeds=(0,), n_train=160)


def is_affine(name: str, value=None) -> bool:
    """The selector of ``normref train --train-only norm-affine``: the normalizers' ``gamma`` and ``beta``."""
    return name.rsplit(".", 1)[-1] in ("gamma", "beta")


class MaskedSGD:
    """SGD on the entries where ``masks[name]`` is 1: every other gradient entry is zeroed before each step.

    With no weight decay a zero gradient leaves an entry (and its momentum buffer) at exactly its value, so the
    masked entries never move. Everything else (``lr``, ``state_dict``, ...) is the wrapped optimizer's.
    """

    def __init__(self, model, masks: dict, **kwargs):
        self.model, self.masks = model, masks
        self.inner = optim.SGD(model, params=list(masks), **kwargs)

    def step(self):
        for module, prefix in self.model._modules_with_prefix():
            for key in module.params:
                mask = self.masks.get(prefix + key)
                if mask is not None:
                    module.grads[key] = module.grads[key] * mask
        self.inner.step()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def random_masks(model, count: int, seed: int) -> dict:
    """``count`` entries chosen uniformly among all non-affine parameters (conv/linear weights and biases)."""
    names = [(n, v.shape) for n, v in model.named_parameters() if not is_affine(n)]
    sizes = [int(np.prod(s)) for _, s in names]
    chosen = np.random.default_rng([seed, 9]).choice(sum(sizes), size=count, replace=False)
    flat = np.zeros(sum(sizes))
    flat[chosen] = 1.0
    masks, start = {}, 0
    for (name, shape), size in zip(names, sizes):
        part = flat[start:start + size].reshape(shape)
        if part.any():
            masks[name] = part
        start += size
    return masks


class TrainPoint:
    """``(regime index, width index, seed) -> {test_accuracy, trained_params, ...}``: one training run."""

    def __init__(self, cfg: dict, gamma_dir: Path):
        self.cfg, self.gamma_dir = cfg, gamma_dir
        splits = train_val_test_split(load_digits(), val=0.1, test=0.2, seed=0)
        self.train_set = (splits.train if cfg["n_train"] is None
                          else splits.train.subset(np.arange(cfg["n_train"])))
        self.test_set = splits.test

    def __call__(self, point) -> dict:
        regime, w, seed = REGIMES[int(point[0])], int(point[1]), int(point[2])
        widths = tuple(self.cfg["widths"][w])
        model = build_net(1, 10, 8, widths=widths, norm="batch", seed=seed)
        kwargs = dict(lr=LR[regime], momentum=self.cfg["momentum"])
        n_affine = sum(v.size for n, v in model.named_parameters() if is_affine(n))
        if regime == "all":
            opt = optim.SGD(model, **kwargs)
        elif regime == "affine":
            opt = optim.SGD(model, params=is_affine, **kwargs)
        elif regime == "output":
            head = [k for k, m in model.children.items() if isinstance(m, Linear)][-1]
            opt = optim.SGD(model, params=[f"{head}.weight", f"{head}.bias"], **kwargs)
        else:
            opt = MaskedSGD(model, random_masks(model, n_affine, seed), **kwargs)
        trained = (int(sum(m.sum() for m in opt.masks.values())) if regime == "random"
                   else sum(dict(model.named_parameters())[n].size for n, _ in opt.named_parameters()))
        loader = DataLoader(self.train_set, self.cfg["batch_size"], seed=seed, drop_last=True)
        history = train(model, loader, opt, epochs=self.cfg["epochs"], quiet=True)
        result = evaluate(model, self.test_set)
        gammas = np.concatenate([m.params["gamma"] for m in model.modules() if isinstance(m, BatchNorm)])
        self.gamma_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.gamma_dir / f"gamma-{regime}-{w}-{seed}.npy", gammas)
        return {"test_accuracy": result["accuracy"], "train_loss": history["train_loss"][-1],
                "train_accuracy": history["train_acc"][-1], "trained_params": trained,
                "total_params": sum(v.size for _, v in model.named_parameters()),
                "frac_small_gamma": float(np.mean(np.abs(gammas) < SMALL_GAMMA))}


def plot(table: dict, cfg: dict, gammas: dict, path: Path, quick: bool) -> None:
    import matplotlib.pyplot as plt

    widths = [tuple(w) for w in cfg["widths"]]
    x = np.arange(len(widths))
    fig, (ax, ax_n, ax_g) = plt.subplots(1, 3, figsize=(17, 4.8))
    for regime in REGIMES:
        acc = 100 * np.array(table[regime]["test_accuracy"])  # (widths, seeds)
        n = np.array(table[regime]["trained_params"])[:, 0]
        ax.plot(x, acc.mean(axis=1), marker="o", color=COLORS[regime], lw=1.6, label=LABELS[regime])
        ax_n.plot(n, acc.mean(axis=1), marker="o", color=COLORS[regime], lw=1.6, label=LABELS[regime])
        if acc.shape[1] > 1:  # the seeds' spread
            ax.fill_between(x, acc.min(axis=1), acc.max(axis=1), color=COLORS[regime], alpha=0.15, lw=0)
            ax_n.fill_between(n, acc.min(axis=1), acc.max(axis=1), color=COLORS[regime], alpha=0.15, lw=0)
    ax.axhline(10, color="k", ls=":", lw=0.8)
    totals = [int(t) for t in np.array(table["all"]["total_params"])[:, 0]]
    ax.set_xticks(x, [f"{w}\n{t:,} params" for w, t in zip(widths, totals)])
    ax.set(xlabel="widths per stage (total parameters)", ylabel="test accuracy (%)",
           title="test accuracy by what is trained (band: min-max over seeds)", ylim=(0, 102))
    ax_n.set_xscale("log")
    ax_n.axhline(10, color="k", ls=":", lw=0.8)
    ax_n.set(xlabel="number of trained parameters", ylabel="test accuracy (%)",
             title="accuracy per trained parameter (chance: dotted)", ylim=(0, 102))
    for a in (ax, ax_n):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    last = len(widths) - 1
    shown = [gammas[(r, last)] for r in ("affine", "all") if (r, last) in gammas]
    if shown:
        values = np.concatenate(shown)
        bins = np.linspace(min(-1.0, values.min()), max(2.0, values.max()), 45)
        for regime, color in (("affine", "tab:blue"), ("all", "black")):
            g = gammas.get((regime, last))
            if g is not None:
                frac = np.mean(np.abs(g) < SMALL_GAMMA)
                ax_g.hist(g, bins=bins, color=color, alpha=0.5,
                          label=f"{LABELS[regime]}: {100 * frac:.0f}% with |gamma| < {SMALL_GAMMA}")
    ax_g.axvline(1.0, color="k", ls=":", lw=0.8)
    ax_g.axvline(0.0, color="k", lw=0.6)
    ax_g.set(xlabel="learned BN gamma (all BN layers, seeds pooled; init 1, dotted)", ylabel="channels",
             title=f"learned gamma at widths {widths[last]}")
    ax_g.legend(fontsize=8)
    fig.suptitle(f"Training only BatchNorm's affine parameters (Frankle et al. 2021): VGG-style CNN with BN, 8x8 "
                 f"digits, {cfg['epochs']} epochs, SGD momentum {cfg['momentum']}, batch {cfg['batch_size']}, lr "
                 f"{LR['all']} (all, output) / {LR['affine']} (affine, random subset), seeds {list(cfg['seeds'])}"
                 + (" [QUICK MODE]" if quick else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save(fig, path, dpi=80 if quick else 150)


def main(out_dir, quick: bool = False) -> dict:
    out_dir, cache = figure_dirs(out_dir, NAME, quick, split_cache=False)
    cfg = QUICK if quick else FULL
    points = [(r, w, s) for s in cfg["seeds"] for w in range(len(cfg["widths"])) for r in range(len(REGIMES))]
    meta = {"figure": NAME, "cfg": json.loads(json.dumps(cfg)), "regimes": list(REGIMES), "lr": LR}
    store = cache / f"{'quick' if quick else 'full'}-{config_key(meta)}"  # new settings, new store
    with one_blas_thread():
        values = run_points(TrainPoint(cfg, store / "gamma"), points, store=store, meta=meta, workers=1,
                            label=NAME)
    index = {(int(p[0]), int(p[1]), int(p[2])): v for p, v in zip(points, values)}
    keys = ("test_accuracy", "trained_params", "total_params", "frac_small_gamma", "train_loss")
    table = {regime: {key: [[index[(r, w, s)][key] for s in cfg["seeds"]] for w in range(len(cfg["widths"]))]
                      for key in keys} for r, regime in enumerate(REGIMES)}
    gammas = {}
    for r, regime in enumerate(REGIMES):
        for w in range(len(cfg["widths"])):
            files = [store / "gamma" / f"gamma-{regime}-{w}-{s}.npy" for s in cfg["seeds"]]
            if all(f.exists() for f in files):
                gammas[(regime, w)] = np.concatenate([np.load(f) for f in files])
    plot(table, cfg, gammas, out_dir / f"{NAME}.png", quick)
    numbers = {"widths": [list(w) for w in cfg["widths"]], "epochs": cfg["epochs"], "lr": LR,
               "seeds": list(cfg["seeds"])}
    for regime in REGIMES:
        numbers[regime] = {
            "test_accuracy_mean": [float(np.mean(a)) for a in table[regime]["test_accuracy"]],
            "trained_params": [int(n[0]) for n in table[regime]["trained_params"]],
            "final_train_loss_mean": [float(np.mean(a)) for a in table[regime]["train_loss"]],
            "frac_abs_gamma_below_0.1": [float(np.mean(a)) for a in table[regime]["frac_small_gamma"]],
        }
    return numbers


if __name__ == "__main__":
    cli(main)
