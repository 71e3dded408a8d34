"""Figure 4: test error against batch size for BatchNorm, GroupNorm, LayerNorm and BCN+WS (Wu & He, ECCV 2018,
Fig. 1; Qiao, Wang, Liu, Shen & Yuille 2019, micro-batch training with BCN and Weight Standardization).

Setup. The VGG-style CNN of :func:`normref.models.build_vgg`, widths (8, 16), on the scikit-learn 8x8 digits
(stratified split, seed 0: 1259 training and 359 test images), with one normalizer after every conv:

* ``BN``: ``BatchNorm`` (PyTorch semantics: batch statistics in training, running statistics with momentum 0.1 at
  test time);
* ``GN``: ``GroupNorm`` with the factory's group count (2 groups of 4 channels at width 8, 4 groups at width 16);
* ``LN``: ``GroupNorm(1, C)`` (Wu & He's LN for CNNs: statistics over (C, H, W) of one sample);
* ``BCN+WS``: the factory's ``"bcn"`` (``BatchChannelNorm``: BN stage with batch statistics, ``estimate=False``,
  then a GN stage with the same group count) and every conv replaced by
  :class:`normref.nn.WSConv2d` (Weight Standardization of the kernel, biased variance, eps 1e-5 inside the root).

Training: SGD with momentum 0.9, no weight decay, constant rate, a fixed number of epochs at every batch size (so a
small batch takes more, smaller steps), incomplete last batch dropped. **Learning-rate rule (linear scaling, Goyal
et al. 2017): lr = 0.1 x B / 64**, i.e. 0.003125 at B = 2 and 0.1 at B = 64. Two initialization/order seeds per
point; the plot shows the mean and the two seeds as error bars.

Measured per run: test error (eval mode, i.e. BN's running statistics), and the test error when the test set is
normalized in train mode in batches of the training batch size B (each test batch with its own statistics; for GN
and LN this equals the eval error, for BN it isolates the "inaccurate batch statistics" at small B).

Each run is one point of :func:`normref.landscape.run_points` with ``store=out_dir/cache/fig_04_batch_size/...``:
progress on stderr, and an interrupted run resumes with the finished runs reloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, config_key, figure_dirs, save  # noqa: E402

from normref import optim  # noqa: E402
from normref.data import DataLoader, load_digits, train_val_test_split  # noqa: E402
from normref.landscape import run_points  # noqa: E402
from normref.nn import Conv2d, CrossEntropyLoss, WSConv2d  # noqa: E402
from normref.train import evaluate, train  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

try:  # the model zoo; build_cnn is the same network under its older name
    from normref.models import build_vgg as build_net
except ImportError:  # pragma: no cover
    from normref.train import build_cnn as build_net

NAME = "fig_04_batch_size"
NORMS = ("batch", "group", "layer", "bcn_ws")
LABELS = {"batch": "BN", "group": "GN", "layer": "LN", "bcn_ws": "BCN+WS"}
COLORS = {"batch": "tab:blue", "group": "tab:green", "layer": "tab:orange", "bcn_ws": "tab:purple"}
BASE_LR, BASE_BATCH = 0.1, 64

FULL = dict(widths=(8, 16), epochs=4, batch_sizes=(2, 4, 8, 16, 32, 64), seeds=(0, 1), momentum=0.9, n_train=None)
QUICK = dict(widths=(4, 8), epochs=1, batch_sizes=(4, 32), seeds=(0,), momentum=0.9, n_train=128)


def learning_rate(batch_size: int) -> float:
    """The linear scaling rule: ``0.1 * B / 64``."""
    return BASE_LR * batch_size / BASE_BATCH


def build(norm: str, widths, seed: int):
    """The digits CNN with ``norm`` after every conv; ``"bcn_ws"`` is BCN with Weight-Standardized convs."""
    model = build_net(1, 10, 8, widths=tuple(widths), norm="bcn" if norm == "bcn_ws" else norm, seed=seed)
    if norm == "bcn_ws":
        for key, layer in list(model.children.items()):
            if isinstance(layer, Conv2d):
                model.children[key] = WSConv2d.from_conv(layer)
    return model


def batch_stats_error(model, data, batch_size: int) -> float:
    """Test error with every normalizer in train mode, the test set cut into batches of ``batch_size`` (each batch
    normalized with its own statistics); running statistics are restored afterwards."""
    saved = model.state_dict()
    model.train()
    wrong, n = 0, 0
    usable = len(data) - len(data) % batch_size
    for start in range(0, usable, batch_size):
        out = model.forward(data.x[start:start + batch_size])
        wrong += int(np.sum(np.argmax(out, axis=1) != data.y[start:start + batch_size]))
        n += batch_size
    model.load_state_dict(saved)
    model.eval()
    return wrong / n


class TrainPoint:
    """``(norm index, batch size, seed) -> {test_error, test_error_batch_stats, train_loss}``: one training run."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        splits = train_val_test_split(load_digits(), val=0.1, test=0.2, seed=0)
        self.train_set = (splits.train if cfg["n_train"] is None
                          else splits.train.subset(np.arange(cfg["n_train"])))
        self.test_set = splits.test

    def __call__(self, point) -> dict:
        norm, batch_size, seed = NORMS[int(point[0])], int(point[1]), int(point[2])
        model = build(norm, self.cfg["widths"], seed)
        opt = optim.SGD(model, lr=learning_rate(batch_size), momentum=self.cfg["momentum"])
        loader = DataLoader(self.train_set, batch_size, seed=seed, drop_last=True)
        history = train(model, loader, opt, epochs=self.cfg["epochs"], loss_fn=CrossEntropyLoss(), quiet=True)
        result = evaluate(model, self.test_set)
        return {"test_error": 1.0 - result["accuracy"], "test_loss": result["loss"],
                "test_error_batch_stats": batch_stats_error(model, self.test_set, batch_size),
                "train_loss": history["train_loss"][-1]}


def plot(table: dict, cfg: dict, path: Path, quick: bool) -> None:
    import matplotlib.pyplot as plt

    sizes = np.array(cfg["batch_sizes"])
    fig, (ax, ax_gap) = plt.subplots(1, 2, figsize=(13, 5.0), gridspec_kw={"width_ratios": [1.35, 1]})
    for norm in NORMS:
        err = 100 * np.array(table[norm]["test_error"])  # (sizes, seeds)
        mean = err.mean(axis=1)
        ax.errorbar(sizes, mean, yerr=[mean - err.min(axis=1), err.max(axis=1) - mean], color=COLORS[norm],
                    marker="o", capsize=3, lw=1.6, label=LABELS[norm])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.invert_xaxis()  # as Wu & He: large batches on the left
    ax.set(xlabel="batch size (images per batch; lr = 0.1 x B / 64)", ylabel="test error (%)",
           title="test error (eval mode) vs batch size")
    ax.grid(alpha=0.3)
    ax.legend()
    for norm in ("batch", "bcn_ws"):
        running = 100 * np.array(table[norm]["test_error"]).mean(axis=1)
        batch = 100 * np.array(table[norm]["test_error_batch_stats"]).mean(axis=1)
        ax_gap.plot(sizes, running, color=COLORS[norm], marker="o", lw=1.6, label=f"{LABELS[norm]}: running stats")
        ax_gap.plot(sizes, batch, color=COLORS[norm], marker="s", ls="--", lw=1.2,
                    label=f"{LABELS[norm]}: test batches of size B")
    ax_gap.set_xscale("log", base=2)
    ax_gap.set_xticks(sizes, [str(s) for s in sizes])
    ax_gap.invert_xaxis()
    ax_gap.set(xlabel="batch size B (dashed: test set cut into batches of B, remainder dropped)",
               ylabel="test error (%)", title="BN statistics at test time: running vs per-batch")
    ax_gap.grid(alpha=0.3)
    ax_gap.legend(fontsize=8)
    fig.suptitle(f"Error vs batch size (Wu & He 2018; Qiao et al. 2019): VGG-style CNN widths "
                 f"{tuple(cfg['widths'])} on 8x8 digits ({len(table['batch']['test_error'][0])} seed(s) per point; "
                 f"bars: min-max over seeds)\n{cfg['epochs']} epochs at every batch size B, SGD momentum "
                 f"{cfg['momentum']}, linear scaling lr = 0.1 B/64; test error on 359 images (1 image = 0.28%)"
                 + (" [QUICK MODE]" if quick else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save(fig, path, dpi=80 if quick else 150)


def main(out_dir, quick: bool = False) -> dict:
    out_dir, cache = figure_dirs(out_dir, NAME, quick, split_cache=False)
    cfg = QUICK if quick else FULL
    points = [(i, b, s) for s in cfg["seeds"] for i in range(len(NORMS)) for b in cfg["batch_sizes"]]
    meta = {"figure": NAME, "cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "norms": list(NORMS), "lr_rule": f"{BASE_LR} * B / {BASE_BATCH}"}
    store = cache / f"{'quick' if quick else 'full'}-{config_key(meta)}"  # new settings, new store
    with one_blas_thread():
        values = run_points(TrainPoint(cfg), points, store=store, meta=meta, workers=1, label=NAME)
    index = {(int(p[0]), int(p[1]), int(p[2])): v for p, v in zip(points, values)}
    table = {norm: {key: [[index[(i, b, s)][key] for s in cfg["seeds"]] for b in cfg["batch_sizes"]]
                    for key in ("test_error", "test_error_batch_stats", "train_loss")}
             for i, norm in enumerate(NORMS)}
    plot(table, cfg, out_dir / f"{NAME}.png", quick)
    numbers = {"batch_sizes": list(cfg["batch_sizes"]), "lr": [learning_rate(b) for b in cfg["batch_sizes"]],
               "seeds": list(cfg["seeds"]), "epochs": cfg["epochs"]}
    for norm in NORMS:
        numbers[LABELS[norm]] = {
            "test_error_mean": [float(np.mean(e)) for e in table[norm]["test_error"]],
            "test_error_per_seed": table[norm]["test_error"],
            "test_error_batch_stats_mean": [float(np.mean(e)) for e in table[norm]["test_error_batch_stats"]],
            "final_train_loss_mean": [float(np.mean(e)) for e in table[norm]["train_loss"]],
        }
    return numbers


if __name__ == "__main__":
    cli(main)
