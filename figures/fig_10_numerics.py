"""Figure 10: numerics of the moments and of the gradient checker.

Left: the relative error of four float32 variance algorithms against the mean offset |mu|/sigma of the data, 1 to
1e8, measured against the float64 variance of the *same stored float32 values*:

* naive one-pass ``E[x^2] - E[x]^2`` (``normref._moments.naive_var``, float32 throughout);
* two-pass in float32 (mean, then mean of squared deviations, both accumulated in float32), and normref's own
  ``normref._moments.mean_var`` (two-pass, float32 storage, sums accumulated in float64: the library's choice);
* Welford's streaming update in float32. ``normref._moments.welford`` is a Python loop over one sequence; here it
  runs vectorized over a batch of sequences (one NumPy step per element, the same three lines), checked bit for bit
  against ``welford`` on the first sequence;
* Chan's pairwise merge (``normref._moments.chan_merge``) over a binary tree of single-element leaves, in float32.

Beyond |mu|/sigma ~ 2^24 ~ 1.7e7 float32 cannot store the spread itself (its spacing at |mu| exceeds sigma): the
stored data are quantized, and a sequence whose stored values are all equal has no defined relative error and is
left out. The shaded band marks that regime.

Right: the error of a LayerNorm directional derivative ``<dy, J v>`` computed by central differences and by the
complex step (``normref.testing.gradcheck.numerical_vjp`` with an explicit step ``h``), against the analytic
backward, as a function of ``h``, for inputs centred at 0 and at 1e3.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, output_dir, save, write_json  # noqa: E402

from normref._moments import chan_merge, mean_var, naive_var, welford  # noqa: E402
from normref.ops.layer_norm import layer_norm_backward, layer_norm_forward  # noqa: E402
from normref.testing.gradcheck import numerical_vjp  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

NAME = "fig_10_numerics"
U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32, 2^-24


# ---------------------------------------------------------------------------------------------------------------
# variance algorithms, each taking (R, n) float32 rows and returning (R,) biased variances
# ---------------------------------------------------------------------------------------------------------------
def var_naive(x):
    return naive_var(x, (1,))[:, 0]


def var_two_pass_f32(x):
    mean = x.mean(axis=1, dtype=np.float32, keepdims=True)
    d = x - mean
    return (d * d).mean(axis=1, dtype=np.float32)


def var_mean_var(x):
    return mean_var(x, (1,))[1][:, 0]


def welford_rows(x):
    """Welford's update, one element at a time, vectorized over the rows; float32 state like the input."""
    rows, n = x.shape
    mean = np.zeros(rows, x.dtype)
    m2 = np.zeros(rows, x.dtype)
    for k in range(n):
        value = x[:, k]
        delta = value - mean
        mean = mean + delta / x.dtype.type(k + 1)
        m2 = m2 + delta * (value - mean)
    return mean, m2


def var_welford(x):
    return welford_rows(x)[1] / x.dtype.type(x.shape[1])


def var_chan_tree(x):
    """Pairwise (tree) merge of single-element partials with Chan et al.'s formula, in x's dtype."""
    count = np.ones(x.shape, x.dtype)
    mean = x.copy()
    m2 = np.zeros(x.shape, x.dtype)
    while count.shape[1] > 1:
        if count.shape[1] % 2:  # an odd element out merges with an empty partial
            pad = [(0, 0), (0, 1)]
            count, mean, m2 = (np.pad(a, pad) for a in (count, mean, m2))
        count, mean, m2 = chan_merge(count[:, 0::2], mean[:, 0::2], m2[:, 0::2],
                                     count[:, 1::2], mean[:, 1::2], m2[:, 1::2])
    return m2[:, 0] / count[:, 0]


ALGORITHMS = {
    "naive E[x²]−E[x]² (float32)": var_naive,
    "two-pass, float32 sums": var_two_pass_f32,
    "Welford (float32)": var_welford,
    "Chan pairwise merge (float32)": var_chan_tree,
    "two-pass mean_var (float64 sums)": var_mean_var,
}
STYLES = {
    "naive E[x²]−E[x]² (float32)": ("C3", "o"),
    "two-pass, float32 sums": ("C1", "s"),
    "Welford (float32)": ("C0", "^"),
    "Chan pairwise merge (float32)": ("C2", "v"),
    "two-pass mean_var (float64 sums)": ("k", "D"),
}


def variance_errors(offsets, n, rows, seed=0):
    """Median and max (over rows) relative error of each algorithm at each offset, plus the rows kept."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, n))
    out = {name: {"median": [], "max": []} for name in ALGORITHMS}
    kept = []
    for offset in offsets:
        x = (offset + z).astype(np.float32)  # sigma = 1
        x64 = x.astype(np.float64)
        mu = x64.mean(axis=1, keepdims=True)
        truth = ((x64 - mu) ** 2).mean(axis=1)  # float64 two-pass of the stored values: exact to ~1e-16
        ok = truth > 0
        kept.append(int(ok.sum()))
        for name, algorithm in ALGORITHMS.items():
            est = np.asarray(algorithm(x), dtype=np.float64)
            rel = np.abs(est[ok] - truth[ok]) / truth[ok]
            out[name]["median"].append(float(np.median(rel)) if rel.size else float("nan"))
            out[name]["max"].append(float(np.max(rel)) if rel.size else float("nan"))
    return out, kept


def check_welford_matches_library(n=64, seed=1):
    """The vectorized Welford is the library's loop: bit-identical on one float32 sequence."""
    x = (1e4 + np.random.default_rng(seed).standard_normal((1, n))).astype(np.float32)
    count, mean, m2 = welford(x[0])
    vmean, vm2 = welford_rows(x)
    assert count == n and np.float32(mean) == vmean[0] and np.float32(m2) == vm2[0], (mean, vmean, m2, vm2)


# ---------------------------------------------------------------------------------------------------------------
# central difference against complex step, for a LayerNorm directional derivative
# ---------------------------------------------------------------------------------------------------------------
def layer_norm_step_errors(steps_central, steps_complex, offset, seed=0):
    rng = np.random.default_rng(seed)
    shape = (8, 32)
    x = offset + rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(32), rng.standard_normal(32)
    dy, v = rng.standard_normal(shape), rng.standard_normal(shape)

    def f(x, gamma, beta):
        return layer_norm_forward(x, gamma, beta, normalized_shape=32)[0]

    _, cache = layer_norm_forward(x, gamma, beta, normalized_shape=32)
    exact = float(np.sum(layer_norm_backward(dy, cache)[0] * v))
    inputs = {"x": x, "gamma": gamma, "beta": beta}
    central = [abs(numerical_vjp(f, inputs, "x", dy, method="central", h=h, directions=[v])[0] - exact) / abs(exact)
               for h in steps_central]
    complex_ = [abs(numerical_vjp(f, inputs, "x", dy, method="complex", h=h, directions=[v])[0] - exact) / abs(exact)
                for h in steps_complex]
    return central, complex_


def _main(out_dir, quick) -> dict:
    import matplotlib.pyplot as plt

    out_dir = output_dir(out_dir)
    check_welford_matches_library()

    offsets = np.logspace(0, 8, 9 if quick else 33)
    n, rows = (512, 4) if quick else (4096, 32)
    errors, kept = variance_errors(offsets, n, rows)

    steps_central = np.logspace(-16, -1, 16 if quick else 61)
    steps_complex = np.logspace(-300, -1, 12 if quick else 61)
    steps_complex = np.concatenate([steps_complex[steps_complex < 1e-16], np.logspace(-16, -1, 16 if quick else 61)])
    ln = {offset: layer_norm_step_errors(steps_central, steps_complex, offset) for offset in (0.0, 1e3)}

    floor = 1e-17  # plot exact zeros here
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=150 if not quick else 72)
    ax1.axvspan(1 / (2 * U32), offsets[-1] * 1.5, color="0.92", zorder=0)
    ax1.text(2.2e7, 3e-9, "float32 cannot\nstore σ here:\ndata quantized", fontsize=7, color="0.35")
    for name, err in errors.items():
        color, marker = STYLES[name]
        med = np.maximum(np.array(err["median"]), floor)
        ax1.loglog(offsets, med, marker=marker, ms=4, color=color, label=name)
        ax1.fill_between(offsets, med, np.maximum(np.array(err["max"]), floor), color=color, alpha=0.12)
    guide = U32 * offsets ** 2
    ax1.loglog(offsets, guide, ":", color="C3", lw=1, label=r"$u\,(|\mu|/\sigma)^2$, $u=2^{-24}$")
    ax1.loglog(offsets, U32 * offsets, ":", color="C0", lw=1, label=r"$u\,|\mu|/\sigma$")
    ax1.set_ylim(1e-9, 1e12)
    ax1.set_xlim(offsets[0] * 0.8, offsets[-1] * 1.5)
    ax1.set_xlabel(r"mean offset $|\mu|/\sigma$ of the data ($\sigma = 1$)")
    ax1.set_ylabel("relative error of the variance (median over sequences; band: max)")
    ax1.set_title(f"float32 variance algorithms, n = {n} values per sequence")
    ax1.legend(fontsize=7, loc="upper left")
    ax1.grid(True, which="major", alpha=0.3)

    for (offset, (central, complex_)), ls in zip(ln.items(), ("-", "--")):
        label = f"x centred at {offset:g}"
        ax2.loglog(steps_central, np.maximum(central, floor), ls, color="C1", marker=".", ms=3,
                   label=f"central difference, {label}")
        ax2.loglog(steps_complex, np.maximum(complex_, floor), ls, color="C0", marker=".", ms=3,
                   label=f"complex step, {label}")
    ax2.axhline(np.finfo(np.float64).eps, color="0.5", lw=0.8, ls=":")
    ax2.text(2e-5, 1.3e-16, "float64 machine epsilon", fontsize=7, color="0.4")
    ax2.set_xlim(1e-16, 1)
    ax2.set_xlabel("step h (complex step continues flat down to h = 1e-300, off the left edge)")
    ax2.set_ylabel(r"relative error of $\langle dy, J v\rangle$ vs the analytic backward")
    ax2.set_title("LayerNorm directional derivative (8×32, float64)")
    ax2.legend(fontsize=7, loc="upper right")
    ax2.grid(True, which="major", alpha=0.3)
    fig.suptitle("Numerics: the naive one-pass variance loses ~2·log10(|μ|/σ) digits; Welford/Chan lose ~1·log10; "
                 "the complex step has no step-size trade-off", fontsize=10)
    fig.tight_layout()
    save(fig, out_dir / f"{NAME}.png")

    def at(name, offset):
        return errors[name]["median"][int(np.argmin(np.abs(np.log10(offsets) - np.log10(offset))))]

    results = {"offsets": offsets.tolist(), "n": n, "rows": rows, "rows_kept": kept,
               "median_rel_error": {name: err["median"] for name, err in errors.items()},
               "at_1e4": {name: at(name, 1e4) for name in errors},
               "at_1e6": {name: at(name, 1e6) for name in errors}}
    for offset, (central, complex_) in ln.items():
        i = int(np.argmin(central))
        results[f"layernorm_offset_{offset:g}"] = {
            "central_best_h": float(steps_central[i]), "central_best_error": float(central[i]),
            "central_error_at_1e-6": float(central[int(np.argmin(np.abs(np.log10(steps_central) + 6)))]),
            "complex_max_error_h_le_1e-8": float(max(e for h, e in zip(steps_complex, complex_) if h <= 1e-8))}
    if not quick:
        write_json(out_dir / "cache" / f"{NAME}.json", results, indent=1)
    return results


def main(out_dir, quick=False) -> dict:
    """Write ``{NAME}.png`` into ``out_dir`` and return the measured numbers (see the module docstring)."""
    with one_blas_thread():  # see normref.threads: small BLAS products run faster on one thread
        return _main(out_dir, quick)


if __name__ == "__main__":
    cli(main)
