"""Unsupervised pseudo-labels of points: k-means clusters (k-means++ start, best of several restarts)."""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_labels"]


def kmeans_labels(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means cluster codes of the rows of ``z``: int32 ``(n,)`` in ``[0, k)``.

    k-means++ initialisation (scipy's ``kmeans2``), the best of 4 seeded restarts by within-cluster sum of
    squares; the same ``seed`` gives the same labels.

    Arguments:
        z: ``(n, d)`` points. k: number of clusters. seed: integer seed.
    """
    from scipy.cluster.vq import kmeans2

    z = np.asarray(z, np.float64)
    best, best_inertia = None, np.inf
    for r in range(4):
        centroids, labels = kmeans2(z, k, minit="++", seed=np.random.default_rng([seed, r]))
        inertia = float(np.sum((z - centroids[labels]) ** 2))
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best.astype(np.int32)
