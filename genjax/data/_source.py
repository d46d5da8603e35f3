"""Training data that lives on the host (fetched by rows), and the number of examples of any training data.

A :class:`HostSource` is the data protocol between the data layer and the training loop: a scipy CSR matrix, a
backed ``.h5ad`` or anything row-addressable becomes ``HostSource(n, fetch)``, and :func:`genjax.fit` fetches the
rows of one dispatch at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["HostSource", "num_examples"]

class HostSource:
    """Training data that lives on the host and is fetched in chunks of rows (e.g. a scipy CSR matrix).

    Arguments:
        n: number of examples.
        fetch: ``fetch(rows) -> pytree`` of numpy arrays with leading axis ``len(rows)``; ``rows`` is an int64
            numpy array of example indices (unsorted, in training order). For CSR counts this is typically
            ``lambda rows: {"x": X[rows].toarray()}``, densifying only the rows of one dispatch.
    """

    def __init__(self, n: int, fetch: Callable[[np.ndarray], Any]):
        if int(n) < 1:
            raise ValueError(f"HostSource needs at least one example; got n={n}")
        self.n = int(n)
        self.fetch = fetch

    def subset(self, rows: np.ndarray) -> HostSource:
        """The source restricted to ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return HostSource(len(rows), lambda r: self.fetch(rows[r]))


def num_examples(data) -> int:
    """Number of examples of a :class:`HostSource` or of a pytree of arrays with a common leading axis."""
    if isinstance(data, HostSource):
        return data.n
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("training data is an empty pytree")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        shapes = jax.tree.map(np.shape, data)
        raise ValueError(f"all data arrays need the same leading (examples) axis; got shapes {shapes}")
    return sizes.pop()
