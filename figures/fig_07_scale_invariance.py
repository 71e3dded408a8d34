"""Figure 7: scale invariance, weight-norm growth and the effective step size under SGD/Adam against SGDP/AdamP.

Claim (Heo et al., ICLR 2021, "AdamP"): for a scale-invariant weight (one followed by a normalizer) the gradient is
orthogonal to the weight, so gradient descent can only grow its norm, and the effective step size
``eta/||w||^2`` shrinks. Momentum (and Adam's per-coordinate scaling) make the norm grow much faster, at first order
in ``eta``; SGDP/AdamP remove the radial part of the update and keep the norm, and with it the effective step size,
nearly constant.

Setup. The scikit-learn digits (flattened, 64 features), stratified split 80/20 (seed 0). An MLP 64-64-64-10 with
BatchNorm after each hidden Linear (``normref.models.build_mlp(norm="batch")``; the two hidden weights have no bias
and are scale invariant, ``normref.train.scale_invariant_weights`` finds them). Five runs from the same
initialization and the same batch order (batch 32, seed 0), no weight decay (so that only the optimizer moves the
norm): SGD without momentum, SGD with momentum 0.9, SGDP with momentum 0.9 (lr 0.1 for the three), Adam and AdamP
(lr 1e-2, default betas). ``normref.train.train`` records, per step, each scale-invariant weight's norm and its
``lr/||w||^2`` (``History.step_weight_norm``, ``step_effective_lr``); after every epoch the figure also measures the
angle each output row of those weights turned by during the epoch, an optimizer-independent effective step (for
Adam the angular step scales as ``lr/||w||``, not ``lr/||w||^2``).

Resumable: every run checkpoints after each epoch under ``out_dir/cache/fig_07/<run>/`` and the per-epoch angles are
saved beside the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, figure_dirs, save  # noqa: E402

from normref.data import load_digits, train_val_test_split  # noqa: E402
from normref.optim import SGD, SGDP, Adam, AdamP  # noqa: E402
from normref.train import load_checkpoint, save_checkpoint, scale_invariant_weights, train  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

try:  # the model zoo; fall back to the training module's builder where it does not exist yet
    from normref.models import build_mlp  # noqa: E402
except ImportError:  # pragma: no cover
    from normref.train import build_mlp  # noqa: E402

NAME = "fig_07_scale_invariance"

RUNS = {
    "SGD (μ=0)": (SGD, {"lr": 0.1}),
    "SGD (μ=0.9)": (SGD, {"lr": 0.1, "momentum": 0.9}),
    "SGDP (μ=0.9)": (SGDP, {"lr": 0.1, "momentum": 0.9}),
    "Adam": (Adam, {"lr": 1e-2}),
    "AdamP": (AdamP, {"lr": 1e-2}),
}
STYLES = {"SGD (μ=0)": ("0.45", ":"), "SGD (μ=0.9)": ("C3", "-"), "SGDP (μ=0.9)": ("C3", "--"),
          "Adam": ("C0", "-"), "AdamP": ("C0", "--")}


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label).strip("_")


def row_angles_deg(w_old: np.ndarray, w_new: np.ndarray) -> float:
    """Mean over output rows of the angle (degrees) between a row before and after."""
    a, b = w_old.reshape(len(w_old), -1), w_new.reshape(len(w_new), -1)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


class EpochAngles:
    """``on_epoch`` callback: the angle each scale-invariant weight's rows turned by during the epoch; resumable."""

    def __init__(self, model, names, path: Path):
        self.model, self.names, self.path = model, list(names), path
        params = dict(model.named_parameters())
        self.state = {"angles": {n: [] for n in self.names}, "last": {n: params[n].copy() for n in self.names}}
        if path.exists():
            self.state = load_checkpoint(path)

    def __call__(self, epoch, history):
        params = dict(self.model.named_parameters())
        for n in self.names:
            angles = self.state["angles"][n]
            while len(angles) < epoch - 1:  # an interruption between checkpoint and this file: unmeasured epochs
                angles.append(float("nan"))
            angles.append(row_angles_deg(self.state["last"][n], params[n]))
            self.state["last"][n] = params[n].copy()
        save_checkpoint(self.path, self.state)


def run_all(cache: Path, epochs: int, quick: bool) -> dict:
    data = load_digits(flatten=True)
    split = train_val_test_split(data, val=0.0, test=0.2, seed=0)
    train_set, test_set = split.train, split.test
    if quick:
        train_set = train_set.subset(np.arange(256))
    results = {}
    for label, (cls, kwargs) in RUNS.items():
        model = build_mlp(64, 10, hidden=(64, 64), norm="batch", seed=0)
        names = scale_invariant_weights(model)
        run_dir = cache / _slug(label)
        run_dir.mkdir(parents=True, exist_ok=True)
        angles = EpochAngles(model, names, run_dir / "angles.npz")
        print(f"[fig_07] {label}: {epochs} epochs (resumes from {run_dir})", flush=True)
        history = train(model, train_set, cls(model, **kwargs), epochs=epochs, batch_size=32, seed=0,
                        val_data=test_set, checkpoint_dir=run_dir, resume=True, quiet=quick, on_epoch=angles)
        results[label] = {"history": history, "angles": angles.state["angles"], "names": names}
    return results


def _main(out_dir, quick) -> dict:
    import matplotlib.pyplot as plt

    # quick and full runs share this cache folder and run names (kept so that the gallery's cache stays valid):
    # never point a quick run at a full run's OUT_DIR
    out_dir, cache = figure_dirs(out_dir, "fig_07", quick, split_cache=False)
    epochs = 2 if quick else 60
    results = run_all(cache, epochs, quick)

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4), dpi=150 if not quick else 72)
    (a, b), (c, d) = axes
    summary = {}
    for label, res in results.items():
        color, ls = STYLES[label]
        h, names = res["history"], res["names"]
        norms = np.array([h["step_weight_norm"][n] for n in names])  # (weights, steps), after each step
        eff = np.array([h["step_effective_lr"][n] for n in names])
        steps = np.arange(1, norms.shape[1] + 1)
        growth = (norms / norms[:, :1]).mean(axis=0)
        eff_rel = (eff / eff[:, :1]).mean(axis=0)
        angle = np.nanmean(np.array([res["angles"][n] for n in names]), axis=0)
        epochs_axis = np.arange(1, len(angle) + 1)
        acc = np.array(h["val_acc"])
        a.plot(steps, growth, ls, color=color, label=label)
        b.semilogy(steps, eff_rel, ls, color=color, label=label)
        c.semilogy(epochs_axis, angle, ls, color=color, marker=".", ms=3, label=label)
        d.plot(np.arange(1, len(acc) + 1), 100 * acc, ls, color=color, label=f"{label}: final {100 * acc[-1]:.1f}%")
        summary[label] = {
            "final_norm_ratio": float(growth[-1]), "final_effective_lr_ratio": float(eff_rel[-1]),
            "final_effective_lr": [float(e[-1]) for e in eff], "final_weight_norms": [float(x[-1]) for x in norms],
            "initial_weight_norms": [float(x[0]) for x in norms],
            "angle_epoch_1_deg": float(angle[0]), "angle_last_epoch_deg": float(angle[-1]),
            "final_test_acc": float(acc[-1]), "best_test_acc": float(acc.max()),
            "final_train_loss": float(h["train_loss"][-1]), "final_train_acc": float(h["train_acc"][-1]),
            "test_acc_per_epoch": [float(v) for v in acc]}
    a.set_ylabel(r"$\|w_t\|/\|w_0\|$ (mean over the 2 scale-invariant weights)")
    a.set_xlabel("optimizer step")
    a.set_title("(a) weight-norm growth of the scale-invariant weights")
    b.set_ylabel(r"effective step $\eta/\|w_t\|^2$, relative to step 1")
    b.set_xlabel("optimizer step")
    b.set_title(r"(b) effective step size $\eta/\|w\|^2$ (History.step_effective_lr)")
    c.set_ylabel("angle turned per epoch (degrees, mean over rows)")
    c.set_xlabel("epoch")
    c.set_title("(c) measured angular update of the weight rows per epoch")
    d.set_ylabel("test accuracy (%)")
    d.set_xlabel("epoch")
    d.set_title("(d) test accuracy (360 held-out digits)")
    lo = min(min(s["test_acc_per_epoch"]) for s in summary.values())
    d.set_ylim(max(100 * lo - 2, 0), 100)
    for ax in axes.ravel():
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Scale invariance (Heo et al. 2021): momentum and Adam inflate the norm of BN-preceded weights and "
                 "shrink their effective step;\nSGDP/AdamP project out the radial update "
                 f"(digits MLP 64-64-64-10 with BN, batch 32, {epochs} epochs, no weight decay, seed 0)", fontsize=9.5)
    fig.tight_layout()
    save(fig, out_dir / f"{NAME}.png")
    return {"epochs": epochs, "runs": summary}


def main(out_dir, quick=False) -> dict:
    """Write ``{NAME}.png`` into ``out_dir`` and return the measured numbers (see the module docstring)."""
    with one_blas_thread():  # see normref.threads: small BLAS products run faster on one thread
        return _main(out_dir, quick)


if __name__ == "__main__":
    cli(main)
