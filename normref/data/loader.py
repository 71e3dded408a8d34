"""Datasets, splits and deterministic mini-batch iteration.

A :class:`Dataset` is two aligned arrays, inputs ``x`` ``(N, ...)`` and targets ``y`` ``(N,)`` (class indices for
classification), with a name, the number of classes and a free-form ``info`` dict (what the generator knows that the
arrays do not say: the pad token, the embedding table of a synthetic task, ...).

Splits (:func:`train_val_test_split`) are **stratified** for classification: each class is cut in the requested
proportions separately, so a 20 % test split of a balanced set stays balanced; the order within each split is a
seeded shuffle. The same ``seed`` gives the same split on every machine (NumPy's ``PCG64`` is platform independent).

Mini-batches (:class:`DataLoader`) follow one rule that makes training resumable without storing any generator
state: **the order of epoch** ``e`` **is a permutation drawn from** ``default_rng([seed, e])``. The order of an epoch
depends on the seed and the epoch number only, not on how many epochs ran before in this process, so a run that
stops after epoch 1 and is resumed at epoch 2 sees exactly the batches a straight run sees.
:meth:`DataLoader.state_dict` is therefore just ``{"seed", "epoch"}``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import numpy as np

from .._validate import check_positive_int


@dataclass
class Dataset:
    """Inputs ``x`` ``(N, ...)`` and targets ``y`` ``(N,)``; ``num_classes`` is ``None`` for regression."""

    x: np.ndarray
    y: np.ndarray
    name: str = "dataset"
    num_classes: int | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.x, self.y = np.asarray(self.x), np.asarray(self.y)
        if self.x.ndim < 1 or self.y.ndim < 1 or len(self.x) != len(self.y):
            raise ValueError(f"x and y must have the same length along axis 0, got shapes {self.x.shape} and "
                             f"{self.y.shape}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index, name: str | None = None) -> "Dataset":
        """The samples at ``index`` (an int array or a boolean mask), as a new dataset sharing ``info``."""
        index = np.asarray(index)
        return Dataset(self.x[index], self.y[index], name or self.name, self.num_classes, self.info)

    def __repr__(self) -> str:
        classes = "" if self.num_classes is None else f", num_classes={self.num_classes}"
        return f"Dataset({self.name!r}, x={self.x.shape} {self.x.dtype}, y={self.y.shape}{classes})"


class Splits(NamedTuple):
    train: Dataset
    val: Dataset
    test: Dataset


def _check_fraction(value, name) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return float(value)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def train_val_test_split(dataset: Dataset, val: float = 0.1, test: float = 0.2, *, seed: int = 0,
                         stratify: bool | None = None) -> Splits:
    """Cut ``dataset`` into train / validation / test parts of fractions ``1 - val - test``, ``val``, ``test``.

    Stratified by class when ``stratify`` is true (default: when ``dataset.num_classes`` is set): within each class
    ``round(n_c * test)`` samples go to test and ``round(n_c * val)`` to validation. Every part is shuffled with the
    seed. Disjoint and exhaustive: the three index sets partition ``range(N)``.

    Examples:
        >>> ds = Dataset(np.arange(20.0)[:, None], np.repeat([0, 1], 10), num_classes=2)
        >>> parts = train_val_test_split(ds, val=0.2, test=0.2, seed=0)
        >>> [len(p) for p in parts], [int(np.bincount(p.y).min()) for p in parts]
        ([12, 4, 4], [6, 2, 2])
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a normref.data.Dataset, got {type(dataset).__name__}")
    val, test, seed = _check_fraction(val, "val"), _check_fraction(test, "test"), _check_seed(seed)
    if val + test >= 1.0:
        raise ValueError(f"val + test must be below 1 (something must be left to train on), got {val + test}")
    if stratify is None:
        stratify = dataset.num_classes is not None
    rng = np.random.default_rng(seed)
    groups = ([np.flatnonzero(dataset.y == c) for c in np.unique(dataset.y)] if stratify
              else [np.arange(len(dataset))])
    parts = {"train": [], "val": [], "test": []}
    for idx in groups:
        idx = rng.permutation(idx)
        n_test, n_val = int(round(len(idx) * test)), int(round(len(idx) * val))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    out = {}
    for key, chunks in parts.items():
        index = rng.permutation(np.concatenate(chunks).astype(np.int64))
        out[key] = dataset.subset(index, f"{dataset.name}/{key}")
    if len(out["train"]) == 0:
        raise ValueError(f"the split leaves no training samples (N={len(dataset)}, val={val}, test={test})")
    return Splits(out["train"], out["val"], out["test"])


class DataLoader:
    """Seeded mini-batches of a :class:`Dataset`: ``for x, y in loader`` runs one epoch and advances ``epoch``.

    Args:
        dataset: the samples.
        batch_size: samples per batch; the last batch of an epoch is smaller unless ``drop_last``.
        shuffle: draw the epoch's order from ``default_rng([seed, epoch])`` (else: dataset order every epoch).
        seed: the order's seed.
        drop_last: drop the last, incomplete batch (BatchNorm with a batch of 1 has zero variance).

    Examples:
        >>> ds = Dataset(np.arange(5.0), np.arange(5))
        >>> loader = DataLoader(ds, batch_size=2, seed=3)
        >>> first = [y.tolist() for _, y in loader]
        >>> second = [y.tolist() for _, y in loader]
        >>> first != second, DataLoader(ds, batch_size=2, seed=3).batches(epoch=1)[0][1].tolist() == second[0]
        (True, True)
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be a normref.data.Dataset, got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.dataset = dataset
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.shuffle = bool(shuffle)
        self.seed = _check_seed(seed)
        self.drop_last = bool(drop_last)
        if self.drop_last and len(dataset) < self.batch_size:
            raise ValueError(f"drop_last with batch_size={self.batch_size} > {len(dataset)} samples leaves no batch")
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (a permutation of ``range(N)``)."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def batches(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``(x, y)`` batches of ``epoch``, without changing ``self.epoch``."""
        return list(self._iterate(epoch))

    def _iterate(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.order(epoch)
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.dataset.x[index], self.dataset.y[index]

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self._iterate(epoch)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = _check_seed(state["seed"]), int(state["epoch"])
