"""Seeded splits of cells: random train / validation indices, and splits stratified by a label.

Every splitter returns sorted integer index arrays that partition the rows; the same seed gives the same split.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_range

__all__ = ["split_indices", "stratified_split"]

def split_indices(n: int, train_size: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random train / validation split of ``range(n)``.

    Arguments:
        n: number of examples.
        train_size: fraction in (0, 1] used for training (scvi-tools default 0.9). With ``1.0`` the validation
            part is empty.
        seed: integer seed.

    Returns:
        ``(train_idx, val_idx)``: sorted int64 arrays partitioning ``range(n)``.

    Raises:
        ValueError: ``train_size`` outside ``(0, 1]``.
    """
    check_range("train_size", train_size, low=0.0, high=1.0, low_open=True)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n if train_size == 1.0 else max(1, min(n - 1, int(round(train_size * n))))
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def stratified_split(labels, test_fraction: float = 0.2, seed: int | np.random.Generator = 0, *,
                     keep_both: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Split rows so that each label group is divided ``1 - test_fraction : test_fraction`` at random.

    Within each group (in sorted label order) the rows are permuted and the first ``round(test_fraction * size)``
    go to the test part.

    Arguments:
        labels: ``(cells,)`` labels (any values; compared as strings).
        test_fraction: fraction of each group in the test part, in ``[0, 1]``.
        seed: integer seed, or a ``numpy`` generator to draw from.
        keep_both: keep at least one row on each side in every group of two or more rows (a group of one row
            stays in the train part), so that each label that has a test row also has a train row.

    Returns:
        ``(train, test)``: sorted int64 index arrays partitioning ``range(cells)``.

    Raises:
        ValueError: ``test_fraction`` outside ``[0, 1]``.
    """
    check_range("test_fraction", test_fraction, low=0.0, high=1.0)
    labels = np.asarray(labels).astype(str)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    train, test = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for value in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == value))
        n_test = int(round(test_fraction * idx.size))
        if keep_both:
            n_test = min(max(n_test, 1), idx.size - 1) if idx.size > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
