"""The 8×8 handwritten digits shipped inside scikit-learn (the UCI "optical recognition of handwritten digits" test
set: 1797 images, 10 classes, about 180 per class, integer pixel values 0..16).

scikit-learn stores the file in its own package (``sklearn/datasets/data/digits.csv.gz``), so loading it needs no
network. scikit-learn is an optional dependency of normref, installed by the ``data`` extra::

    pip install -e ".[data]"

Without it, :func:`load_digits` raises :class:`MissingDependencyError` (an ``ImportError``) that says so.
"""

from __future__ import annotations

import numpy as np

from .loader import Dataset

INSTALL_HINT = 'pip install -e ".[data]"   (or: pip install scikit-learn)'


class MissingDependencyError(ImportError):
    """An optional dependency of a normref data set is not installed."""


def _sklearn_load_digits():
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise MissingDependencyError(
            "the digits data set is the copy shipped inside scikit-learn, which is not installed; install the "
            f"optional 'data' extra: {INSTALL_HINT}") from exc
    return sk_load_digits()


def load_digits(*, flatten: bool = False, dtype=np.float64) -> Dataset:
    """The 1797 digits as a :class:`~normref.data.Dataset`, pixels scaled from 0..16 to [0, 1].

    Args:
        flatten: ``x`` of shape ``(1797, 64)`` (for an MLP) instead of images ``(1797, 1, 8, 8)`` (NCHW, for a CNN).
        dtype: float dtype of ``x``.

    ``y`` is ``(1797,)`` int64 in 0..9. The order is the file's; split with
    :func:`~normref.data.train_val_test_split`.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a float dtype, got {dtype}")
    bunch = _sklearn_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    x = x.reshape(-1, 64) if flatten else x.reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(x.astype(dtype), y, "digits", 10, {"source": "sklearn.datasets.load_digits", "pixel_max": 16})
