"""Data for training normref networks: the scikit-learn digits, synthetic sets, splits and seeded mini-batches.

* :func:`load_digits`: the 8x8 digits shipped inside scikit-learn (optional extra ``data``: ``pip install -e
  ".[data]"``); no download.
* :func:`make_blobs`, :func:`make_spirals`, :func:`make_shapes`, :func:`make_token_task`: generated from a seed;
  :func:`batch_moment_fluctuation` measures how much mini-batch statistics vary (the token task's reason to exist).
* :class:`Dataset`, :func:`train_val_test_split` (stratified), :class:`DataLoader` (the order of epoch ``e`` depends
  only on ``(seed, e)``, so training resumes bit-identically).
"""

from .digits import MissingDependencyError, load_digits
from .loader import DataLoader, Dataset, Splits, train_val_test_split
from .synthetic import SHAPES, batch_moment_fluctuation, make_blobs, make_shapes, make_spirals, make_token_task

__all__ = ["DataLoader", "Dataset", "MissingDependencyError", "SHAPES", "Splits", "batch_moment_fluctuation",
           "load_digits", "make_blobs", "make_shapes", "make_spirals", "make_token_task", "train_val_test_split"]
