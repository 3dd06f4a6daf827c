"""The fixed, seeded train / validation / test split every fine-tuning task's data uses.

One permutation of the N examples by `numpy.random.default_rng(seed)`: its first
round(N * val_fraction) indices are the validation split, the next round(N * test_fraction) the
test split, the rest training (each held-out split at least one example). The seed is recorded in
the run, so the split is the same on every machine; `train_subset` keeps the first N training
indices of that order for short CPU runs.
"""

from __future__ import annotations

import numpy as np

from lmforge.errors import UserError

SPLITS = ("train", "val", "test")


def split_indices(
    n: int,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
    unit: str = "examples",
    min_train: int = 2,
) -> dict[str, list[int]]:
    """Split name -> indices into the N `unit` (see above); a `UserError` when the fractions are
    out of range or fewer than `min_train` would be left to train on."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError("data.val_fraction and data.test_fraction must be in (0, 1), sum below 1")
    n_val, n_test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
    if n - n_val - n_test < min_train:
        raise UserError(f"{n} {unit} are too few to split into train, val and test; add more")
    order = np.random.default_rng(seed).permutation(n).tolist()
    parts = {
        "val": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "train": order[n_val + n_test :],
    }
    if train_subset > 0:
        parts["train"] = parts["train"][:train_subset]
    return parts
