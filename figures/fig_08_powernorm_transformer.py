"""Figure 8: batch-statistics fluctuation in a tiny Transformer (BN vs PowerNorm vs LN), and the angle between
PowerNorm's exact gradient and its surrogate.

Claim (Shen et al., ICML 2020, "PowerNorm: Rethinking Batch Normalization in Transformers", Fig. 2 and §4): in
Transformers on text the batch statistics of the features fluctuate strongly around their running averages, much
more than in CNNs on images, which hurts BatchNorm; PowerNorm drops the mean, divides by a running quadratic mean
after a warm-up, and back-propagates through it with an approximate ("surrogate") gradient.

Setup. ``normref.data.make_token_task(features=True)``: 1600 sequences of length 32, 16-dim embedded tokens with the
generator's NLP-like heavy tails (rare tokens, outlier channels, per-sequence scale, padding), 4 classes, stratified
80/20 split (seed 0). ``normref.models.build_transformer``: pre-norm encoder, d_model 16, 2 heads, 2 blocks, MLP
ratio 2, mean pooling over the non-pad positions, linear head; five normalizers per model (``norm1``/``norm2`` of each
block and the final one). Runs, same initialization and batch order (batch 32, seed 0), Adam lr 2e-3:

* ``LN``: LayerNorm; ``BN``: BatchNorm over all B·T positions of the batch (pads included, as the model does);
* ``PN (surrogate)``: PowerNorm with the paper's approximate backward (``backward="approx"``), warm-up 150 steps,
  ``group_num`` 2 (the heads, as the official code); ``PN (exact)``: the same layer trained with its exact gradient.

Measured:

* at every step, at the input of every normalizer (a tap records it), the per-channel batch mean, variance and
  quadratic mean over all positions against exponential running averages (momentum 0.1, BN's): the dimensionless
  deviations ``|mu_B - mu|/sigma``, ``|var_B - var|/var``, ``|q_B - q|/q``, channel averages;
* after training, ``normref.data.batch_moment_fluctuation`` (batches of 32) of each normalizer's input over the
  training set (eval-mode forward), and, as an image reference, of the BatchNorm inputs of the digits CNN
  (``build_vgg(widths=(8, 16))`` at initialization);
* in the surrogate run, at every step: the exact gradient (PowerNorm layers switched to ``backward="exact"``, which
  leaves their state alone) and then the surrogate one, from the same forward pass on the same batch; the angle
  between them, over all parameters and over the first block's parameters (the farthest from the loss), and
  the ratio of their norms. The surrogate drives the update, as in the paper.

Each run is cached as ``out_dir/cache/fig_08/<run>.json``; a finished run is not recomputed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, figure_dirs, save, write_json  # noqa: E402

from normref.data import DataLoader, batch_moment_fluctuation, load_digits, make_token_task  # noqa: E402
from normref.data import train_val_test_split  # noqa: E402
from normref.models import build_transformer, build_vgg  # noqa: E402
from normref.nn import BatchNorm, CrossEntropyLoss, Module, PowerNorm  # noqa: E402
from normref.optim import Adam  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

NAME = "fig_08_powernorm_transformer"
RUNS = {"LN": ("layer", None), "BN": ("batch", None), "PN (surrogate)": ("power", "approx"),
        "PN (exact)": ("power", "exact")}
COLORS = {"LN": "C2", "BN": "C3", "PN (surrogate)": "C0", "PN (exact)": "C9"}
MOMENTUM = 0.1


class Tap(Module):
    """Records the input of the wrapped normalizer; otherwise transparent."""

    def __init__(self, inner: Module):
        super().__init__()
        self.children["inner"] = inner
        self.x = None

    def forward(self, x):
        self.x = np.asarray(x)
        return self.children["inner"].forward(x)

    def backward(self, dy):
        return self.children["inner"].backward(dy)


def tap_norms(model) -> dict:
    """Wrap every normalizer of the transformer in a :class:`Tap`; returns ``{name: tap}`` in forward order."""
    taps = {}
    for i, block in enumerate(model.children["blocks"]):
        for key in ("norm1", "norm2"):
            block.children[key] = taps[f"block{i}.{key}"] = Tap(block.children[key])
    model.children["norm"] = taps["final"] = Tap(model.children["norm"])
    return taps


def power_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, PowerNorm)]


def valid_mask(x):
    return np.any(x != 0, axis=-1)  # pad positions are exactly zero in make_token_task's features


def flat_grads(model, prefix=""):
    return np.concatenate([np.ravel(g) for name, g in model.named_grads() if name.startswith(prefix)])


def angle_deg(a, b):
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def accuracy(model, data, batch=256):
    was = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch):
        x, y = data.x[start:start + batch], data.y[start:start + batch]
        correct += int(np.sum(np.argmax(model.forward(x, valid_mask(x)), axis=1) == y))
    model.train(was)
    return correct / len(data)


class Running:
    """Per-channel running mean/var/quadratic mean and the batch's deviations from them."""

    def __init__(self):
        self.mu = self.var = self.q = None

    def update(self, z):
        values = z.reshape(-1, z.shape[-1])
        mu_b, var_b, q_b = values.mean(axis=0), values.var(axis=0), (values ** 2).mean(axis=0)
        if self.mu is None:
            self.mu, self.var, self.q = mu_b, var_b, q_b
            return None
        dev = (float(np.mean(np.abs(mu_b - self.mu) / np.sqrt(self.var))),
               float(np.mean(np.abs(var_b - self.var) / self.var)),
               float(np.mean(np.abs(q_b - self.q) / self.q)))
        self.mu = (1 - MOMENTUM) * self.mu + MOMENTUM * mu_b
        self.var = (1 - MOMENTUM) * self.var + MOMENTUM * var_b
        self.q = (1 - MOMENTUM) * self.q + MOMENTUM * q_b
        return dev


def norm_inputs(model, taps, data, batch=256):
    """Eval-mode inputs of every normalizer over ``data``: ``{name: (N, T, C)}``."""
    was = model.training
    model.eval()
    out = {name: [] for name in taps}
    for start in range(0, len(data), batch):
        x = data.x[start:start + batch]
        model.forward(x, valid_mask(x))
        for name, tap in taps.items():
            out[name].append(tap.x)
    model.train(was)
    return {name: np.concatenate(v) for name, v in out.items()}


def run(label, split, cfg, cache: Path) -> dict:
    path = cache / f"{''.join(ch if ch.isalnum() else '_' for ch in label)}.json"
    if path.exists():
        return json.loads(path.read_text())
    norm, backward = RUNS[label]
    options = None if backward is None else {"backward": backward, "warmup_iters": cfg["warmup"], "group_num": 2}
    model = build_transformer(256, 4, 32, norm=norm, d_model=16, num_heads=2, num_layers=2, norm_options=options,
                              seed=0)
    taps = tap_norms(model)
    loss_fn = CrossEntropyLoss()
    opt = Adam(model, lr=2e-3)
    loader = DataLoader(split.train, 32, seed=0, drop_last=True)
    running = {name: Running() for name in taps}
    rec = {"deviation": {name: {"mean": [], "var": [], "q": []} for name in taps}, "angle_all": [],
           "angle_block0": [], "norm_ratio": [], "step_loss": [], "test_acc": [], "train_loss_epoch": []}
    pns = power_layers(model)
    surrogate = backward == "approx"
    step, t0 = 0, time.perf_counter()
    for epoch in range(cfg["epochs"]):
        losses = []
        for xb, yb in loader:
            model.zero_grad()
            out = model.forward(xb, valid_mask(xb))
            loss = float(loss_fn(out, yb))
            dout = loss_fn.backward()
            for name, tap in taps.items():
                dev = running[name].update(tap.x)
                if dev is not None:
                    for key, value in zip(("mean", "var", "q"), dev):
                        rec["deviation"][name][key].append(value)
            if surrogate:
                for layer in pns:
                    layer.backward_kind = "exact"  # the exact backward leaves the layer's state untouched
                model.backward(dout)
                exact_all, exact_b0 = flat_grads(model), flat_grads(model, "blocks.0.")
                if step == 0:  # a second backward through the same caches must give the same gradient
                    model.zero_grad()
                    model.backward(dout)
                    assert np.array_equal(flat_grads(model), exact_all), "backward is not repeatable"
                model.zero_grad()
                for layer in pns:
                    layer.backward_kind = "approx"
                model.backward(dout)
                approx_all, approx_b0 = flat_grads(model), flat_grads(model, "blocks.0.")
                rec["angle_all"].append(angle_deg(approx_all, exact_all))
                rec["angle_block0"].append(angle_deg(approx_b0, exact_b0))
                rec["norm_ratio"].append(float(np.linalg.norm(approx_all) / np.linalg.norm(exact_all)))
            else:
                model.backward(dout)
            opt.step()
            losses.append(loss)
            rec["step_loss"].append(loss)
            step += 1
        rec["train_loss_epoch"].append(float(np.mean(losses)))
        rec["test_acc"].append(accuracy(model, split.test))
        print(f"[fig_08] {label} epoch {epoch + 1}/{cfg['epochs']}: train loss {rec['train_loss_epoch'][-1]:.4f} "
              f"test acc {rec['test_acc'][-1]:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    feats = norm_inputs(model, taps, split.train)
    rec["fluctuation"] = {name: batch_moment_fluctuation(f, 32) for name, f in feats.items()}
    rec["steps"] = step
    write_json(path, rec)
    return rec


def image_reference(quick) -> dict:
    """batch_moment_fluctuation of the BatchNorm inputs of the digits CNN at initialization (batches of 32)."""
    digits = load_digits()
    x = digits.x[:256] if quick else digits.x
    net = build_vgg(1, 10, 8, widths=(8, 16), norm="batch", seed=0)
    inputs, h = [], x
    for layer in net:
        if isinstance(layer, BatchNorm):
            inputs.append(np.moveaxis(h, 1, -1))  # (N, H, W, C)
        h = layer.forward(h)
    return {f"CNN BN{i + 1}": batch_moment_fluctuation(f, 32) for i, f in enumerate(inputs)}


def _main(out_dir, quick) -> dict:
    import matplotlib.pyplot as plt

    # quick and full runs share this cache folder and file names (kept so that the gallery's cache stays valid):
    # never point a quick run at a full run's OUT_DIR
    out_dir, cache = figure_dirs(out_dir, "fig_08", quick, split_cache=False)
    cfg = {"n": 256, "epochs": 1, "warmup": 3} if quick else {"n": 1600, "epochs": 15, "warmup": 150}
    data = make_token_task(cfg["n"], 32, features=True, dim=16, seed=0)
    split = train_val_test_split(data, val=0.0, test=0.2, seed=0)
    labels = ["LN", "PN (surrogate)"] if quick else list(RUNS)
    runs = {label: run(label, split, cfg, cache) for label in labels}
    reference = image_reference(quick)
    raw = batch_moment_fluctuation(split.train.x, 32)

    fig, axes = plt.subplots(2, 2, figsize=(12.5, 8.6), dpi=150 if not quick else 72)
    (a, b), (c, d) = axes

    def smooth(v, k=10):
        v = np.asarray(v, float)
        return np.convolve(v, np.ones(k) / k, mode="valid") if len(v) > 3 * k else v

    summary = {}
    for label, rec in runs.items():
        col = COLORS[label]
        dev_var = np.mean([rec["deviation"][n]["var"] for n in rec["deviation"]], axis=0)
        dev_q = np.mean([rec["deviation"][n]["q"] for n in rec["deviation"]], axis=0)
        dev_mean = np.mean([rec["deviation"][n]["mean"] for n in rec["deviation"]], axis=0)
        sv = smooth(dev_var)
        a.plot(np.arange(len(dev_var) - len(sv), len(dev_var)) + 2, sv, color=col, label=f"{label}: variance")
        sq = smooth(dev_q)
        a.plot(np.arange(len(dev_q) - len(sq), len(dev_q)) + 2, sq, ":", color=col, label=f"{label}: quad. mean")
        acc = 100 * np.asarray(rec["test_acc"])
        d.plot(np.arange(1, len(acc) + 1), acc, "-o", ms=3, color=col, label=f"{label}: final {acc[-1]:.1f}%")
        summary[label] = {
            "deviation_var_median": float(np.median(dev_var)), "deviation_q_median": float(np.median(dev_q)),
            "deviation_mean_median": float(np.median(dev_mean)),
            "fluctuation_end": rec["fluctuation"], "final_test_acc": float(rec["test_acc"][-1]),
            "best_test_acc": float(max(rec["test_acc"])), "final_train_loss": float(rec["train_loss_epoch"][-1])}
    # (b) batch_moment_fluctuation of every normalizer's input at the end, against the image reference
    layer_names = list(next(iter(runs.values()))["fluctuation"])
    width = 0.8 / (len(runs) + 1)
    xs = np.arange(len(layer_names))
    for k, (label, rec) in enumerate(runs.items()):
        b.bar(xs + k * width, [rec["fluctuation"][n]["var"] for n in layer_names], width, color=COLORS[label],
              label=label)
    ref_x = len(layer_names) + np.arange(len(reference) + 1)
    b.bar(ref_x, [raw["var"]] + [v["var"] for v in reference.values()], 0.5, color="0.5",
          label="token features (raw) / digits CNN BN inputs")
    b.set_xticks(list(xs + width * (len(runs) - 1) / 2) + list(ref_x))
    b.set_xticklabels(layer_names + ["raw tokens"] + list(reference), rotation=30, fontsize=7, ha="right")
    b.set_yscale("log")
    b.set_ylabel(r"mean $|\sigma^2_B-\sigma^2|/\sigma^2$ over batches of 32")
    b.set_title("(b) batch_moment_fluctuation of the inputs, after training")
    # (c) the exact-vs-surrogate angle
    if "PN (surrogate)" in runs:
        rec = runs["PN (surrogate)"]
        steps = np.arange(1, len(rec["angle_all"]) + 1)
        c.plot(steps, rec["angle_all"], color="C0", alpha=0.25, lw=0.7)
        c.plot(steps[len(steps) - len(smooth(rec["angle_all"])):], smooth(rec["angle_all"]), color="C0",
               label="all parameters")
        c.plot(steps, rec["angle_block0"], color="C1", alpha=0.25, lw=0.7)
        c.plot(steps[len(steps) - len(smooth(rec["angle_block0"])):], smooth(rec["angle_block0"]), color="C1",
               label="first block's parameters")
        c.axvline(cfg["warmup"], color="k", ls="--", lw=0.8)
        c.text(cfg["warmup"], c.get_ylim()[1] * 0.95, " end of warm-up", fontsize=7, va="top")
        w = cfg["warmup"]
        angles, b0 = np.asarray(rec["angle_all"]), np.asarray(rec["angle_block0"])
        summary["PN (surrogate)"].update({
            "angle_all_median_warmup": float(np.median(angles[:w])),
            "angle_all_median_after": float(np.median(angles[w:])) if len(angles) > w else None,
            "angle_block0_median_warmup": float(np.median(b0[:w])),
            "angle_block0_median_after": float(np.median(b0[w:])) if len(b0) > w else None,
            "norm_ratio_median_after": float(np.median(rec["norm_ratio"][w:])) if len(angles) > w else None})
    a.set_yscale("log")
    a.set_xlabel("training step")
    a.set_ylabel(r"$|\sigma^2_B-\sigma^2_{\rm run}|/\sigma^2_{\rm run}$ (mean: channels, 5 norms)")
    a.set_title("(a) batch vs running statistics at the normalizers' inputs")
    c.set_xlabel("training step")
    c.set_ylabel("angle between surrogate and exact gradient (degrees)")
    c.set_title("(c) PowerNorm: surrogate vs exact gradient, same forward and batch")
    d.set_xlabel("epoch")
    d.set_ylabel("test accuracy (%)")
    d.set_title("(d) test accuracy (eval mode)")
    for ax in axes.ravel():
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle("PowerNorm (Shen et al. 2020) on a tiny pre-norm Transformer: batch-statistics fluctuation and the "
                 "surrogate gradient\n"
                 f"(make_token_task features, {cfg['n']} sequences × 32 tokens × 16 dims, 2 blocks, d_model 16, "
                 f"Adam 2e-3, batch 32, {cfg['epochs']} epochs, PN warm-up {cfg['warmup']} steps, seed 0)",
                 fontsize=9.5)
    fig.tight_layout()
    save(fig, out_dir / f"{NAME}.png")
    return {"config": cfg, "runs": summary, "image_reference": reference, "raw_token_features": raw}


def main(out_dir, quick=False) -> dict:
    """Write ``{NAME}.png`` into ``out_dir`` and return the measured numbers (see the module docstring)."""
    with one_blas_thread():  # see normref.threads: small BLAS products run faster on one thread
        return _main(out_dir, quick)


if __name__ == "__main__":
    cli(main)
