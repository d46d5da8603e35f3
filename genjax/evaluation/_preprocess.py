"""Inputs of the evaluation layer: count sets from AnnData or arrays, validation, normalisation, PCA, gene stats.

Everything here is host-side (numpy / scipy sparse) except the PCA, which runs in JAX. The conventions:

* expression is ``log1p`` of counts normalised to ``target_sum`` (1e4) total per cell; a cell with zero total
  counts normalises to all zeros (it cannot be scaled), which is counted in :attr:`CountSet.n_empty`;
* the PCA is fitted on the *real* (reference) cells only, centred and unscaled, and applied to every set;
* gene statistics are computed on counts normalised to ``target_sum`` (mean, variance with ``ddof=0``) and on
  the raw counts (fraction of zeros).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .._typing import Array, Float, PRNGKeyArray
from ..data import normalize_log1p, row_sums, validate_counts

__all__ = [
    "CountSet",
    "as_count_set",
    "normalize_log1p",
    "PCA",
    "pca_fit",
    "pca_transform",
    "gene_statistics",
    "pearson",
    "align_genes",
    "project",
    "project_counts",
]


@dataclasses.dataclass(frozen=True)
class CountSet:
    """A validated set of cells: counts, optional condition labels, optional gene names.

    Fields:
        counts: ``(cells, genes)`` non-negative counts, ``float32`` numpy array or scipy CSR matrix.
        labels: ``(cells,)`` condition labels as strings, or ``None``.
        gene_names: ``(genes,)`` gene names, or ``None`` for plain arrays.
        name: what the set is called in error messages (``"real"``, ``"generated"``, ``"control"``).
    """

    counts: Any
    labels: np.ndarray | None
    gene_names: np.ndarray | None
    name: str

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]

    def subset(self, rows: np.ndarray, name: str | None = None) -> CountSet:
        """The cells ``rows`` (an integer index array) as a new set."""
        labels = None if self.labels is None else self.labels[rows]
        return CountSet(self.counts[rows], labels, self.gene_names, name or self.name)


def _is_anndata(obj) -> bool:
    return hasattr(obj, "obs") and hasattr(obj, "var_names") and hasattr(obj, "X")


def _as_matrix(x, name: str, check_integer: bool):
    """Counts as float32 CSR (if sparse) or a C-contiguous float32 ndarray, validated."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        x.sum_duplicates()
        if x.ndim != 2:
            raise ValueError(f"{name} counts must be 2-D (cells, genes); got shape {x.shape}")
        _check_values(x, name, check_integer)
        return x
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} counts must be 2-D (cells, genes); got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{name} counts must be numeric; got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_values(x, name, check_integer)
    return x


def _check_values(x, name: str, check_integer: bool) -> None:
    """Finite, non-negative (and integer) counts, or a ``ValueError`` naming the first offending cell and gene."""
    validate_counts(x, what=name, integer=check_integer, allow_empty=True,
                    hint="pass raw counts (e.g. layer='counts'), or check_counts=False if non-integer expected "
                         "values are intended")


def as_count_set(
    data,
    *,
    name: str,
    condition_key: str | Sequence[str] | None = None,
    labels=None,
    layer: str | None = None,
    check_counts: bool = True,
) -> CountSet:
    """Validate one input (AnnData, numpy / JAX array or scipy sparse matrix of counts) into a :class:`CountSet`.

    Arguments:
        data: AnnData (counts in ``X`` or ``layers[layer]``) or a ``(cells, genes)`` array of counts.
        name: the set's name, used in error messages.
        condition_key: ``obs`` column(s) holding the condition of each cell (AnnData only). Several keys are
            joined into one label ``"a|b"``.
        labels: ``(cells,)`` condition labels for array input (ignored for AnnData when ``condition_key`` is set).
        layer: AnnData layer holding the counts (default ``X``).
        check_counts: also require integer values (catches log-normalised data passed by mistake).

    Returns:
        A :class:`CountSet`.

    Raises:
        ValueError: wrong dimensionality, no cells or genes, negative / non-finite / non-integer counts, missing
            layer or ``obs`` column, labels of the wrong length.
    """
    gene_names = None
    if _is_anndata(data):
        if layer is not None:
            if layer not in data.layers:
                raise ValueError(f"{name}: layer {layer!r} not found; available layers: {list(data.layers.keys())}")
            x = data.layers[layer]
        else:
            x = data.X
        if x is None:
            raise ValueError(f"{name}: AnnData has no X; pass layer=...")
        gene_names = np.asarray(data.var_names).astype(str)
        if condition_key is not None:
            keys = [condition_key] if isinstance(condition_key, str) else list(condition_key)
            for k in keys:
                if k not in data.obs.columns:
                    raise ValueError(
                        f"{name}: condition key {k!r} not found in obs; columns: {list(data.obs.columns)}"
                    )
            cols = [np.asarray(data.obs[k]).astype(str) for k in keys]
            labels = cols[0] if len(cols) == 1 else np.array(["|".join(t) for t in zip(*cols, strict=True)])
        elif labels is not None:
            labels = np.asarray(labels).astype(str)
    else:
        if layer is not None:
            raise ValueError(f"{name}: layer={layer!r} given but the input is an array, not AnnData")
        x = data
        if labels is not None:
            labels = np.asarray(labels).astype(str)
    if hasattr(x, "toarray") and not sp.issparse(x):  # e.g. anndata backed / array-api wrappers
        x = x.toarray()
    x = _as_matrix(x, name, check_counts)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} counts must have at least one cell and one gene; got shape {x.shape}")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name}: labels must have one entry per cell ({x.shape[0]}); got shape {labels.shape}"
            )
    return CountSet(x, labels, gene_names, name)


def align_genes(reference: CountSet, other: CountSet) -> CountSet:
    """Return ``other`` with its genes in ``reference``'s order, or raise if the gene sets differ.

    Raises:
        ValueError: different numbers of genes, or (when both have gene names) different gene names.
    """
    if reference.gene_names is not None and other.gene_names is not None:
        if len(set(reference.gene_names)) != len(reference.gene_names):
            raise ValueError(f"{reference.name} var_names are not unique")
        if len(other.gene_names) == len(reference.gene_names) and np.array_equal(
            other.gene_names, reference.gene_names
        ):
            return other
        ref, oth = set(reference.gene_names), set(other.gene_names)
        if ref != oth or len(oth) != len(other.gene_names):
            missing = [str(g) for g in reference.gene_names if g not in oth][:5]
            extra = [str(g) for g in other.gene_names if g not in ref][:5]
            raise ValueError(
                f"{other.name} genes do not match {reference.name} genes ({other.n_genes} vs {reference.n_genes} "
                f"genes; missing from {other.name}: {missing}, not in {reference.name}: {extra}"
                + ("; duplicated names" if len(oth) != len(other.gene_names) else "")
                + "). Subset both to the same var_names"
            )
        pos = {g: i for i, g in enumerate(other.gene_names)}
        order = np.array([pos[g] for g in reference.gene_names])
        counts = other.counts[:, order]
        return CountSet(counts, other.labels, reference.gene_names, other.name)
    if other.n_genes != reference.n_genes:
        raise ValueError(
            f"{other.name} has {other.n_genes} genes but {reference.name} has {reference.n_genes}; "
            "both count matrices must have the same genes in the same order"
        )
    return other


_CHUNK = 4096  # rows per chunk of the host-side passes over large count matrices


def project_counts(pca: PCA, counts, target_sum: float = 1e4) -> np.ndarray:
    """PC scores ``(cells, components)`` float32 of :func:`normalize_log1p` ``(counts)``, computed over row
    chunks so the dense normalised matrix of a large set is never held whole."""
    return np.concatenate([project(pca, normalize_log1p(counts[i:i + _CHUNK], target_sum))
                           for i in range(0, counts.shape[0], _CHUNK)])


class PCA(NamedTuple):
    """A fitted principal component analysis (centred, unscaled).

    Fields:
        mean: ``(genes,)`` mean of the fitted data.
        components: ``(n_components, genes)`` orthonormal principal axes, in order of decreasing variance; the
            sign of each axis makes its largest-magnitude loading positive.
        explained_variance: ``(n_components,)`` variance along each axis (``ddof=1``).
        explained_variance_ratio: ``(n_components,)`` fraction of the total variance.
    """

    mean: Float[Array, " genes"]
    components: Float[Array, "components genes"]
    explained_variance: Float[Array, " components"]
    explained_variance_ratio: Float[Array, " components"]


def _fix_signs(vt: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(vt), axis=1)
    sign = np.sign(vt[np.arange(vt.shape[0]), idx])
    return vt * np.where(sign == 0, 1.0, sign)[:, None]


@functools.partial(jax.jit, static_argnames=("k",))
def _pca_exact(x, k: int):
    # eigendecomposition of the smaller Gram matrix (cells x cells or genes x genes): an exact PCA that is much
    # cheaper than a full SVD of the data when one side is small (e.g. a few hundred held-out cells)
    xc = x - x.mean(0)
    n, g = xc.shape
    if n < g:
        w, u = jnp.linalg.eigh(xc @ xc.T)
        w, u = w[::-1][:k], u[:, ::-1][:, :k]
        s = jnp.sqrt(jnp.maximum(w, 0.0))
        vt = (xc.T @ u / jnp.where(s > 0, s, 1.0)).T
    else:
        w, v = jnp.linalg.eigh(xc.T @ xc)
        w, vt = w[::-1][:k], v[:, ::-1][:, :k].T
        s = jnp.sqrt(jnp.maximum(w, 0.0))
    return s, vt


@functools.partial(jax.jit, static_argnames=("rank", "n_iter"))
def _pca_randomized(key, x, rank: int, n_iter: int):
    # Halko, Martinsson & Tropp (2011), Algorithm 4.4 (subspace iteration with re-orthonormalisation).
    xc = x - x.mean(0)
    omega = jax.random.normal(key, (x.shape[1], rank), x.dtype)
    q, _ = jnp.linalg.qr(xc @ omega)

    def power(_, q):
        z, _ = jnp.linalg.qr(xc.T @ q)
        q, _ = jnp.linalg.qr(xc @ z)
        return q

    q = jax.lax.fori_loop(0, n_iter, power, q)
    _, s, vt = jnp.linalg.svd(q.T @ xc, full_matrices=False)
    return s, vt


def pca_fit(
    x: Float[Array, "cells genes"],
    n_components: int = 30,
    *,
    method: str = "auto",
    key: PRNGKeyArray | int | None = None,
    oversample: int = 50,
    n_iter: int = 8,
) -> PCA:
    """Fit a centred (unscaled) PCA to ``x``.

    Arguments:
        x: ``(cells, genes)`` data, e.g. :func:`normalize_log1p` of the real counts.
        n_components: number of axes kept; must be ``<= min(cells, genes)``.
        method: ``"exact"`` (eigendecomposition of the smaller Gram matrix of the centred data, cost
            ``O(cells genes min(cells, genes))``), ``"randomized"`` (Halko et al. 2011 subspace iteration with
            ``oversample`` extra columns and ``n_iter`` power iterations) or ``"auto"`` (exact when
            ``min(cells, genes) <= 3000``).
        key: PRNG key (or integer seed) of the randomized method (default seed 0).

    Returns:
        A :class:`PCA` (JAX arrays, the dtype of ``x``: float32 unless x64 is enabled).

    Raises:
        ValueError: ``x`` not 2-D, non-finite, ``n_components`` out of range or unknown ``method``.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (cells, genes); got shape {x.shape}")
    if not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError("x must be finite (found NaN or inf)")
    n, g = x.shape
    if not 1 <= n_components <= min(n, g):
        raise ValueError(f"n_components must be in [1, min(cells, genes) = {min(n, g)}]; got {n_components}")
    if n < 2:
        raise ValueError(f"PCA needs at least 2 cells; got {n}")
    if method == "auto":
        method = "randomized" if min(n, g) > 3000 else "exact"
    if method == "exact":
        s, vt = _pca_exact(x, n_components)
    elif method == "randomized":
        rank = min(n_components + oversample, n, g)
        key = jax.random.key(0 if key is None else key) if key is None or isinstance(key, int) else key
        s, vt = _pca_randomized(key, x, rank, n_iter)
    else:
        raise ValueError(f"method must be one of ('auto', 'exact', 'randomized'); got {method!r}")
    # post-processing on the host (eager JAX ops would compile once per shape)
    s, vt = np.asarray(s[:n_components]), _fix_signs(np.asarray(vt[:n_components]))
    xh = np.asarray(x)
    var = s**2 / (n - 1)
    total = np.sum(np.var(xh, axis=0, ddof=1, dtype=np.float64))
    return PCA(*(jnp.asarray(v, x.dtype) for v in (xh.mean(0), vt, var, var / total)))


@jax.jit
def pca_transform(pca: PCA, x: Float[Array, "cells genes"]) -> Float[Array, "cells components"]:
    """Project ``x`` (``(cells, genes)``) onto the axes of ``pca``: ``(x - mean) @ components.T``."""
    return (jnp.asarray(x) - pca.mean) @ pca.components.T


def project(pca: PCA, x: np.ndarray) -> np.ndarray:
    """:func:`pca_transform` on the host in numpy (float32; no compilation per input shape)."""
    mean = np.asarray(pca.mean, np.float32)
    return ((np.asarray(x, np.float32) - mean) @ np.asarray(pca.components, np.float32).T).astype(np.float32)


def gene_statistics(counts, target_sum: float = 1e4) -> dict[str, np.ndarray]:
    """Per-gene summary statistics of a count matrix.

    Arguments:
        counts: ``(cells, genes)`` counts (numpy or scipy sparse).
        target_sum: per-cell total of the normalisation.

    Returns:
        A dict of ``(genes,)`` float64 arrays: ``log_mean`` = ``log1p`` of the mean and ``log_var`` = ``log1p``
        of the variance (``ddof=0``) of counts normalised to ``target_sum`` per cell; ``zero_frac`` = fraction
        of cells with a zero raw count.
    """
    size = row_sums(counts)
    scale = np.where(size > 0, target_sum / np.where(size > 0, size, 1.0), 0.0)
    n, g = counts.shape
    if sp.issparse(counts):
        c = sp.csr_matrix(counts, dtype=np.float64)
        norm = c.multiply(scale[:, None]).tocsr()
        mean = np.asarray(norm.mean(axis=0)).ravel()
        var = np.asarray(norm.multiply(norm).mean(axis=0)).ravel() - mean**2
        nonzero = np.bincount(c.indices[c.data != 0], minlength=g)
    else:
        # float64 sums over row chunks: no float64 copy of the whole matrix
        total, total_sq, nonzero = np.zeros(g), np.zeros(g), np.zeros(g)
        for start in range(0, n, _CHUNK):
            c = np.asarray(counts[start:start + _CHUNK], dtype=np.float64)
            norm = c * scale[start:start + _CHUNK, None]
            total += norm.sum(0)
            total_sq += (norm * norm).sum(0)
            nonzero += (c != 0).sum(0)
        mean = total / n
        var = total_sq / n - mean**2
    return {
        "log_mean": np.log1p(mean),
        "log_var": np.log1p(np.maximum(var, 0.0)),
        "zero_frac": 1.0 - nonzero / n,
    }


def pearson(a, b) -> float:
    """Pearson correlation of two 1-D arrays (NaN when either is constant).

    Raises:
        ValueError: different lengths or fewer than 2 entries.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"pearson needs two 1-D arrays of equal length >= 2; got {a.shape} and {b.shape}")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")
