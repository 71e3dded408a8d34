r"""Synthetic data sets, generated from a seed (same seed, same arrays, on every machine).

* :func:`make_blobs`: isotropic Gaussian clusters, one per class, ``x`` ``(N, dim)``.
* :func:`make_spirals`: ``K`` interleaved spiral arms in the plane, ``x`` ``(N, 2)``: not linearly separable, the
  classic toy for a small MLP.
* :func:`make_shapes`: small grayscale images ``(N, 1, S, S)`` of six shape classes (horizontal bar, vertical bar,
  diagonal, anti-diagonal, box outline, plus sign) at random positions, sizes and intensities, with pixel noise:
  a CNN task that needs translation-tolerant features but trains in seconds.
* :func:`make_token_task`: sequence classification over a Zipf-distributed vocabulary whose **per-channel
  statistics fluctuate from batch to batch** as they do in NLP. It motivates PowerNorm (Shen et al. 2020, "PowerNorm:
  Rethinking Batch Normalization in Transformers"), whose Fig. 2 shows that the batch mean and variance of a
  Transformer's features deviate from their running averages far more on text than on images.
  :func:`batch_moment_fluctuation` measures that deviation on any array.

How the token task produces the fluctuation. Token ids are drawn from a Zipf law :math:`p(v) \propto v^{-s}` (id 0 is
the pad token), mixed with a few class-specific "topic" tokens that carry the label. With ``features=True`` each
token is replaced by a fixed random embedding :math:`e_v = a_v\, \mathrm{diag}(c)\, g_v`, :math:`g_v \sim N(0, I)`:

* :math:`a_v = (v / V)^{\rho}`: rare tokens get larger vectors (a trend seen in trained embeddings), so a batch that
  happens to hold a few rare tokens has a much larger variance than one that does not;
* :math:`c`: a few **outlier channels** with a 6x larger scale (the massive activations seen in Transformer
  features), the channels whose statistics swing most;
* one log-normal scale per sequence, :math:`\exp(\sigma_s z)` with :math:`\sigma_s = 1` (documents differ), the
  heavy tail that dominates a batch's variance: the batch variance is set by its few loudest sequences;
* variable lengths with zero padding, so the number of real tokens differs per batch.

Design decision, recorded because the reference material gives no recipe: the generator is a stylized model chosen
so that :func:`batch_moment_fluctuation` of its features is an order of magnitude above that of image-like data
(``tests/test_data.py`` measures both). Measured with batches of 32 sequences: the relative deviation of the batch
variance is about 0.6 for the token features (defaults, 2000 sequences) against about 0.05 for :func:`make_shapes`
(batches of 32 images). Without the sequence scale (``sequence_sigma=0``) it falls to about 0.13: the rare-token and
outlier-channel effects alone are milder. It is not a fit to any corpus.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._validate import check_positive_float, check_positive_int
from .loader import Dataset


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng(int(seed))


def _balanced_labels(n: int, num_classes: int, rng) -> np.ndarray:
    """``n`` labels, class sizes differing by at most one, in a seeded random order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def make_blobs(n: int = 600, num_classes: int = 3, dim: int = 2, *, spread: float = 1.0, separation: float = 3.0,
               seed: int = 0) -> Dataset:
    """``num_classes`` Gaussian clusters in ``dim`` dimensions.

    Centers are ``separation * N(0, I)``; each point is its class center plus ``spread * N(0, I)``.

    Examples:
        >>> ds = make_blobs(90, 3, seed=1)
        >>> ds.x.shape, np.bincount(ds.y).tolist()
        ((90, 2), [30, 30, 30])
    """
    n, num_classes, dim = (check_positive_int(v, k) for v, k in ((n, "n"), (num_classes, "num_classes"),
                                                                  (dim, "dim")))
    spread = check_positive_float(spread, "spread")
    separation = check_positive_float(separation, "separation", allow_zero=True)
    rng = _rng(seed)
    centers = separation * rng.standard_normal((num_classes, dim))
    y = _balanced_labels(n, num_classes, rng)
    x = centers[y] + spread * rng.standard_normal((n, dim))
    return Dataset(x, y, "blobs", num_classes, {"centers": centers})


def make_spirals(n: int = 600, num_classes: int = 2, *, turns: float = 1.0, noise: float = 0.1,
                 seed: int = 0) -> Dataset:
    r"""``num_classes`` interleaved spiral arms: arm ``k`` is :math:`r(\cos\theta, \sin\theta)` with
    :math:`r = t`, :math:`\theta = 2\pi(\text{turns}\cdot t + k/K)`, :math:`t \sim U(0.05, 1)`, plus
    ``noise * N(0, I)`` in the plane.

    Examples:
        >>> ds = make_spirals(100, 2, seed=0)
        >>> ds.x.shape, float(np.abs(ds.x).max()) < 1.5
        ((100, 2), True)
    """
    n, num_classes = check_positive_int(n, "n"), check_positive_int(num_classes, "num_classes")
    turns = check_positive_float(turns, "turns")
    noise = check_positive_float(noise, "noise", allow_zero=True)
    rng = _rng(seed)
    y = _balanced_labels(n, num_classes, rng)
    t = rng.uniform(0.05, 1.0, n)
    theta = 2 * np.pi * (turns * t + y / num_classes)
    x = np.stack([t * np.cos(theta), t * np.sin(theta)], axis=1) + noise * rng.standard_normal((n, 2))
    return Dataset(x, y, "spirals", num_classes)


SHAPES = ("horizontal", "vertical", "diagonal", "antidiagonal", "box", "plus")


def _draw_shape(kind: str, size: int, rng) -> np.ndarray:
    """One binary ``(size, size)`` image of ``kind`` at a random position and size."""
    img = np.zeros((size, size))
    length = int(rng.integers(size // 2, size - 1))          # bar / diagonal length, at least half the image
    if kind in ("horizontal", "vertical"):
        thick = int(rng.integers(1, 3))
        r, c = int(rng.integers(0, size - thick + 1)), int(rng.integers(0, size - length + 1))
        if kind == "horizontal":
            img[r:r + thick, c:c + length] = 1
        else:
            img[c:c + length, r:r + thick] = 1
    elif kind in ("diagonal", "antidiagonal"):
        r, c = int(rng.integers(0, size - length + 1)), int(rng.integers(0, size - length + 1))
        i = np.arange(length)
        cols = c + i if kind == "diagonal" else c + length - 1 - i
        img[r + i, cols] = 1
    elif kind == "box":
        side = int(rng.integers(4, size - 1))
        r, c = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        img[r:r + side, c:c + side] = 1
        img[r + 1:r + side - 1, c + 1:c + side - 1] = 0
    elif kind == "plus":
        arm = int(rng.integers(1, size // 2 - 1))
        r, c = int(rng.integers(arm, size - arm)), int(rng.integers(arm, size - arm))
        img[r, c - arm:c + arm + 1] = 1
        img[r - arm:r + arm + 1, c] = 1
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(kind)
    return img


def make_shapes(n: int = 1200, size: int = 12, *, noise: float = 0.15, seed: int = 0, dtype=np.float64) -> Dataset:
    """Images ``(n, 1, size, size)`` of the six :data:`SHAPES`, class ``k`` = ``SHAPES[k]``.

    Each image: the shape at a random position and size, intensity ``U(0.5, 1)``, plus ``noise * N(0, 1)`` per pixel.

    Examples:
        >>> ds = make_shapes(12, size=8, seed=0)
        >>> ds.x.shape, ds.num_classes, np.bincount(ds.y).tolist()
        ((12, 1, 8, 8), 6, [2, 2, 2, 2, 2, 2])
    """
    n, size = check_positive_int(n, "n"), check_positive_int(size, "size")
    if size < 6:
        raise ValueError(f"size must be at least 6 (room for every shape), got {size}")
    noise = check_positive_float(noise, "noise", allow_zero=True)
    rng = _rng(seed)
    y = _balanced_labels(n, len(SHAPES), rng)
    x = np.empty((n, 1, size, size))
    for i, label in enumerate(y):
        x[i, 0] = rng.uniform(0.5, 1.0) * _draw_shape(SHAPES[label], size, rng)
    x += noise * rng.standard_normal(x.shape)
    return Dataset(x.astype(dtype), y, "shapes", len(SHAPES), {"classes": SHAPES})


PAD = 0


def make_token_task(n: int = 1000, seq_len: int = 32, *, vocab_size: int = 256, num_classes: int = 4,
                    topic_tokens: int = 8, topic_rate: float = 0.25, zipf: float = 1.1, features: bool = False,
                    dim: int = 16, rare_growth: float = 2.0, outlier_channels: int = 2, sequence_sigma: float = 1.0,
                    seed: int = 0) -> Dataset:
    """Sequence classification with NLP-like batch statistics (see the module docstring for the generator).

    Each sequence has a length ``U{seq_len//4, ..., seq_len}``, is padded with token 0 to ``seq_len``, and its label
    is its topic: each real token is, with probability ``topic_rate``, one of the ``topic_tokens`` ids reserved for
    its class, else a background token from the Zipf law with exponent ``zipf`` over the ids ``1..vocab_size-1`` that
    are no class's topic.

    Args:
        features: return embedded features ``x`` ``(n, seq_len, dim)`` (pad positions exactly zero) instead of
            token ids ``(n, seq_len)`` int64. ``info["embedding"]`` is the ``(vocab_size, dim)`` table either way
            (row 0, the pad, is zero), so ``info["embedding"][tokens]`` reproduces the features up to the
            per-sequence scale.
        dim: embedding width.
        rare_growth: exponent ``rho`` of the per-token scale ``(v / V)^rho`` (0 turns the rare-token effect off).
        outlier_channels: how many channels get a 6x scale.
        sequence_sigma: standard deviation of the log of the per-sequence scale (0: every sequence scale 1).

    ``info`` holds ``pad_id`` (0), ``embedding``, ``topic_ids`` ``(num_classes, topic_tokens)``, ``lengths`` (n,).

    Examples:
        >>> ds = make_token_task(8, 12, seed=0)
        >>> ds.x.shape, ds.x.dtype.name, bool((ds.x[np.arange(8), ds.info["lengths"] - 1] != 0).all())
        ((8, 12), 'int64', True)
    """
    n, seq_len = check_positive_int(n, "n"), check_positive_int(seq_len, "seq_len")
    vocab_size, num_classes = check_positive_int(vocab_size, "vocab_size"), check_positive_int(num_classes,
                                                                                              "num_classes")
    topic_tokens, dim = check_positive_int(topic_tokens, "topic_tokens"), check_positive_int(dim, "dim")
    if num_classes * topic_tokens >= vocab_size - 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for {num_classes} classes x {topic_tokens} topic "
                         f"tokens plus background tokens")
    if seq_len < 4:
        raise ValueError(f"seq_len must be at least 4, got {seq_len}")
    if not 0.0 <= float(topic_rate) <= 1.0:
        raise ValueError(f"topic_rate must lie in [0, 1], got {topic_rate}")
    zipf = check_positive_float(zipf, "zipf", allow_zero=True)
    rare_growth = check_positive_float(rare_growth, "rare_growth", allow_zero=True)
    sequence_sigma = check_positive_float(sequence_sigma, "sequence_sigma", allow_zero=True)
    if isinstance(outlier_channels, bool) or not isinstance(outlier_channels, numbers.Integral) \
            or not 0 <= outlier_channels <= dim:
        raise ValueError(f"outlier_channels must be an int in [0, dim={dim}], got {outlier_channels!r}")
    rng = _rng(seed)

    ids = np.arange(1, vocab_size)
    # topic ids come from below the head of the frequency ranking; they are reserved for their class (never drawn as
    # background), so a topic token is label evidence, and the background is the Zipf law on the remaining ids
    pool = rng.permutation(ids[len(ids) // 8:])[:num_classes * topic_tokens]
    topic_ids = pool.reshape(num_classes, topic_tokens)
    background = np.where(np.isin(ids, pool), 0.0, ids ** -zipf)
    background /= background.sum()

    y = _balanced_labels(n, num_classes, rng)
    lengths = rng.integers(seq_len // 4, seq_len + 1, n)
    tokens = rng.choice(ids, size=(n, seq_len), p=background)
    is_topic = rng.random((n, seq_len)) < topic_rate
    topic_pick = topic_ids[y[:, None], rng.integers(0, topic_tokens, (n, seq_len))]
    tokens = np.where(is_topic, topic_pick, tokens)
    tokens[np.arange(seq_len)[None, :] >= lengths[:, None]] = PAD

    channel_scale = np.ones(dim)
    channel_scale[rng.permutation(dim)[:outlier_channels]] = 6.0
    token_scale = (np.arange(vocab_size) / vocab_size) ** rare_growth
    embedding = token_scale[:, None] * channel_scale[None, :] * rng.standard_normal((vocab_size, dim))
    embedding[PAD] = 0.0
    info = {"pad_id": PAD, "embedding": embedding, "topic_ids": topic_ids, "lengths": lengths}
    if not features:
        return Dataset(tokens.astype(np.int64), y, "tokens", num_classes, info)
    sequence_scale = np.exp(sequence_sigma * rng.standard_normal(n))
    x = embedding[tokens] * sequence_scale[:, None, None]
    return Dataset(x, y, "token-features", num_classes, info)


def batch_moment_fluctuation(x, batch_size: int, *, channel_axis: int = -1, mask=None, seed: int = 0) -> dict:
    r"""How far mini-batch statistics stray from the whole-set statistics, per channel, dimensionless.

    ``x`` is cut into random batches of ``batch_size`` samples (axis 0). For each batch ``B`` and channel ``c``
    (moments over every other axis, excluding positions where ``mask`` is true, e.g. padding):

    * ``mean``: the average over batches and channels of :math:`|\mu_{B,c} - \mu_c| / \sigma_c`;
    * ``var``: the average of :math:`|\sigma^2_{B,c} - \sigma^2_c| / \sigma^2_c`.

    These are the quantities of PowerNorm's Fig. 2 (there as norms over channels), made scale free.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> out = batch_moment_fluctuation(rng.normal(size=(512, 8)), 64)
        >>> sorted(out), out["var"] < 0.5
        (['mean', 'var'], True)
    """
    x = np.asarray(x, dtype=np.float64)
    batch_size = check_positive_int(batch_size, "batch_size")
    if x.ndim < 2 or len(x) < 2 * batch_size:
        raise ValueError(f"x must be (N, ...) with N >= 2 * batch_size = {2 * batch_size}, got shape {x.shape}")
    xc = np.moveaxis(x, channel_axis, -1)
    if mask is None:
        mask = np.zeros(xc.shape[:-1], bool)
    mask = np.asarray(mask, bool)
    if mask.shape != xc.shape[:-1]:
        raise ValueError(f"mask must have shape {xc.shape[:-1]} (x without the channel axis), got {mask.shape}")
    weight = (~mask)[..., None].astype(np.float64)

    def moments(xs, ws):
        axes = tuple(range(xs.ndim - 1))
        count = np.maximum(ws.sum(axis=axes), 1.0)
        mu = (xs * ws).sum(axis=axes) / count
        var = (((xs - mu) ** 2) * ws).sum(axis=axes) / count
        return mu, var

    mu, var = moments(xc, weight)
    sigma = np.sqrt(np.maximum(var, np.finfo(np.float64).tiny))
    order = _rng(seed).permutation(len(xc))
    dev_mean, dev_var = [], []
    for i in range(len(xc) // batch_size):
        index = order[i * batch_size:(i + 1) * batch_size]
        mu_b, var_b = moments(xc[index], weight[index])
        dev_mean.append(np.abs(mu_b - mu) / sigma)
        dev_var.append(np.abs(var_b - var) / sigma ** 2)
    return {"mean": float(np.mean(dev_mean)), "var": float(np.mean(dev_var))}
