"""Figure 12: Region Normalization (Yu et al., AAAI 2020): the mean and variance shift against the hole ratio.

Setup. The scikit-learn digits, upsampled to 24x24 (bilinear), pixel values in [0, 1]. Each image gets an irregular
hole: a smoothed random field thresholded so that exactly a fraction rho of the pixels is a hole (the masks are
nested: a larger rho grows the same blobs). The hole is filled with a constant: 0 (black, the digits' own
background), the data set's mean pixel, or 1 (white). A fixed random 3x3 convolution (8 channels, no bias, seed 0)
gives the feature maps that a normalizer would see. At the feature level a pixel counts as a hole when its 3x3
receptive field touches the hole (the input mask dilated by one pixel): those features are corrupted by the fill,
the others equal the hole-free features exactly. The x axis is the input hole ratio; the feature-level ratio is a
little larger and is returned as ``feature_hole_ratio``.

Measured, per hole ratio, against the hole-free image (rho = 0):

* the statistics a full-image BatchNorm uses, ``mu_rho`` and ``sigma_rho^2`` per channel over all pixels, against the
  hole-free ``mu_0``, ``sigma_0^2``: the mean shift ``|mu_rho - mu_0|/sigma_0`` and the variance ratio
  ``sigma_rho^2/sigma_0^2`` (channel averages); and the same for the statistics RN-B uses on the valid region
  (``normref.ops.region_norm.region_stats``);
* the valid pixels after normalization: their mean and standard deviation after full-image BN and after RN-B
  (``normref.nn.RegionNormB``, affine at its identity init);
* the distortion: the RMS difference, over valid pixels and channels, between the normalized features of the holed
  image and those of the hole-free image normalized by full-image BN.

Everything is deterministic (seeds 0) and cheap; there is nothing to cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figure import cli, output_dir, save  # noqa: E402

from normref.data import load_digits  # noqa: E402
from normref.nn import BatchNorm, Conv2d, RegionNormB  # noqa: E402
from normref.ops.region_norm import region_stats  # noqa: E402
from normref.threads import one_blas_thread  # noqa: E402

NAME = "fig_12_region_norm"


def upsampled_digits(n, size, seed=0):
    from scipy.ndimage import zoom

    ds = load_digits()
    index = np.random.default_rng(seed).permutation(len(ds))[:n]
    images = ds.x[index, 0]
    up = np.stack([zoom(img, size / 8, order=1) for img in images])
    return np.clip(up, 0.0, 1.0)[:, None]  # (n, 1, size, size)


def hole_scores(n, size, seed=0, smooth=2.5):
    """One smoothed random field per image; the holes of ratio rho are its top rho fraction (nested in rho)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed + 1)
    field = rng.standard_normal((n, size, size))
    return np.stack([gaussian_filter(f, smooth, mode="wrap") for f in field])


def masks_at(scores, ratio):
    n, h, w = scores.shape
    k = int(round(ratio * h * w))
    mask = np.zeros((n, h * w))
    if k:
        top = np.argsort(-scores.reshape(n, -1), axis=1)[:, :k]
        np.put_along_axis(mask, top, 1.0, axis=1)
    return mask.reshape(n, 1, h, w)


def channel_stats(features, keep=None):
    """Per-channel mean and variance over samples and pixels (``keep`` (N,1,H,W) bool selects pixels)."""
    rows = np.moveaxis(features, 1, 0).reshape(features.shape[1], -1)
    if keep is not None:
        rows = rows[:, np.broadcast_to(keep, (features.shape[0], 1) + features.shape[2:]).reshape(-1)]
    return rows.mean(axis=1), rows.var(axis=1)


def valid_values(y, mask):
    valid = mask[:, 0] == 0
    return np.moveaxis(y, 1, 0)[:, valid]  # (C, number of valid pixels)


def feature_mask(mask):
    """The hole as the features see it: a feature is corrupted when its 3x3 receptive field touches the hole."""
    from scipy.ndimage import maximum_filter

    return maximum_filter(mask, size=(1, 1, 3, 3), mode="constant", cval=0.0)


def measure(ratios, images, fills):
    n, size = len(images), images.shape[-1]
    scores = hole_scores(n, size)
    conv = Conv2d(1, 8, 3, padding=1, bias=False, rng=0)
    clean = conv(images)
    mu0, var0 = channel_stats(clean)
    sigma0 = np.sqrt(var0)
    bn = BatchNorm(8, affine=False).train()
    y_clean = bn(clean)
    rn = RegionNormB(8)
    out = {}
    for fill_name, fill in fills.items():
        rec = {key: [] for key in ("bn_mean_shift", "bn_var_ratio", "rn_mean_shift", "rn_var_ratio",
                                   "bn_valid_mean", "bn_valid_std", "rn_valid_mean", "rn_valid_std",
                                   "bn_distortion", "rn_distortion", "feature_hole_ratio")}
        for ratio in ratios:
            pixel_mask = masks_at(scores, ratio)
            holed = conv(np.where(pixel_mask == 1, fill, images))
            mask = feature_mask(pixel_mask)
            rec["feature_hole_ratio"].append(float(mask.mean()))
            mu, var = channel_stats(holed)
            rec["bn_mean_shift"].append(float(np.mean(np.abs(mu - mu0) / sigma0)))
            rec["bn_var_ratio"].append(float(np.mean(var / var0)))
            stats = region_stats(holed, mask)
            if 0 not in stats:
                raise ValueError(f"no valid feature left at hole ratio {ratio}")
            mu_v, var_v, _ = stats[0]  # region 0 = valid pixels
            rec["rn_mean_shift"].append(float(np.mean(np.abs(mu_v - mu0) / sigma0)))
            rec["rn_var_ratio"].append(float(np.mean(var_v / var0)))
            reference = valid_values(y_clean, mask)
            for key, y in (("bn", bn(holed)), ("rn", rn(holed, mask))):
                values = valid_values(y, mask)
                rec[f"{key}_valid_mean"].append(float(values.mean()))
                rec[f"{key}_valid_std"].append(float(values.std(axis=1).mean()))
                rec[f"{key}_distortion"].append(float(np.sqrt(np.mean((values - reference) ** 2))))
        out[fill_name] = rec
    return out


def _main(out_dir, quick) -> dict:
    import matplotlib.pyplot as plt

    out_dir = output_dir(out_dir)
    ratios = np.round(np.linspace(0.0, 0.9, 5 if quick else 19), 3)
    n, size = (32, 16) if quick else (400, 24)
    images = upsampled_digits(n, size)
    mean_pixel = float(images.mean())
    fills = {"fill 0 (black = background)": 0.0, f"fill {mean_pixel:.2f} (data mean)": mean_pixel,
             "fill 1 (white)": 1.0}
    data = measure(ratios, images, fills)

    colors = dict(zip(fills, ("C0", "C2", "C3")))
    recs = list(data.values())
    for key in ("rn_mean_shift", "rn_var_ratio", "rn_valid_mean", "rn_valid_std", "rn_distortion"):
        # the valid features do not depend on the fill value, so neither does anything RN-B computes from them
        assert all(np.allclose(r[key], recs[0][key], rtol=1e-9, atol=1e-12) for r in recs), key
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4), dpi=150 if not quick else 72)
    (a, b), (c, d) = axes
    for fill_name, rec in data.items():
        col = colors[fill_name]
        a.plot(ratios, rec["bn_mean_shift"], "-o", ms=3, color=col, label=f"full-image BN, {fill_name}")
        b.semilogy(ratios, rec["bn_var_ratio"], "-o", ms=3, color=col)
        c.plot(ratios, rec["bn_valid_mean"], "-o", ms=3, color=col)
        c.plot(ratios, rec["bn_valid_std"], "-^", ms=3, color=col)
        d.plot(ratios, rec["bn_distortion"], "-o", ms=3, color=col)
    rn = recs[0]
    a.plot(ratios, rn["rn_mean_shift"], "--s", ms=3, color="k", label="RN-B, valid region (any fill: identical)")
    b.semilogy(ratios, rn["rn_var_ratio"], "--s", ms=3, color="k")
    c.plot(ratios, rn["rn_valid_mean"], "--s", ms=3, color="k")
    c.plot(ratios, rn["rn_valid_std"], "--v", ms=3, color="k")
    d.plot(ratios, rn["rn_distortion"], "--s", ms=3, color="k")
    a.set_ylabel(r"mean shift $|\mu_\rho-\mu_0|/\sigma_0$ (channel average)")
    a.set_title("(a) mean used by the normalizer vs the hole-free image")
    a.legend(fontsize=6.5, loc="upper left")
    b.axhline(1.0, color="0.5", lw=0.8)
    b.set_ylabel(r"variance ratio $\sigma_\rho^2/\sigma_0^2$ (channel average)")
    b.set_title("(b) variance used by the normalizer vs the hole-free image")
    c.axhline(0.0, color="0.5", lw=0.8)
    c.axhline(1.0, color="0.5", lw=0.8)
    c.set_ylabel("valid pixels after normalization")
    c.set_title("(c) valid pixels after normalization: mean (o, s) and std (^, v)")
    d.set_ylabel("RMS difference to hole-free BN output (valid pixels)")
    d.set_title("(d) distortion of the valid pixels' normalized features")
    for ax in axes.ravel():
        ax.set_xlabel(r"hole ratio $\rho$ (fraction of pixels)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Region Norm (Yu et al. 2020): a hole shifts the mean and variance a full-image normalizer uses; "
                 f"region-wise statistics stay put\n(digits upsampled to {size}×{size}, N={n}, fixed random 3×3 conv "
                 f"with 8 channels; solid = full-image BN, dashed = RN-B on the valid region)", fontsize=9.5)
    fig.tight_layout()
    save(fig, out_dir / f"{NAME}.png")
    return {"ratios": ratios.tolist(), "n": n, "size": size, "fills": {k: float(v) for k, v in fills.items()},
            "measurements": data}


def main(out_dir, quick=False) -> dict:
    """Write ``{NAME}.png`` into ``out_dir`` and return the measured numbers (see the module docstring)."""
    with one_blas_thread():  # see normref.threads: small BLAS products run faster on one thread
        return _main(out_dir, quick)


if __name__ == "__main__":
    cli(main)
