"""Expression matrices of AnnData, scipy sparse or backed ``.h5ad`` data, read by rows, and their validation.

:func:`get_matrix` picks ``X`` or a layer (dense ``numpy``, any scipy sparse matrix, or a backed ``.h5ad``
dataset); :func:`validate_counts` checks it before any compute (finite; for count likelihoods non-negative
integers; no empty cells) and names the first offending cell and gene by their ``obs`` / ``var`` names. Large or
backed matrices are scanned in chunks of rows (:func:`row_chunks`), never densified whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

__all__ = ["get_matrix", "validate_counts", "row_sums", "row_chunks", "take_rows", "is_backed", "dense",
           "normalize_log1p"]


CHUNK_ROWS = 8192  # rows per chunk when scanning large / backed matrices on the host


def is_backed(X) -> bool:
    """True for anndata's on-disk datasets (backed mode): sliced by rows, never loaded whole."""
    return not isinstance(X, np.ndarray) and not sp.issparse(X) and hasattr(X, "shape") and hasattr(X, "dtype")


def get_matrix(adata, layer: str | None = None):
    """The expression matrix of ``adata``: ``adata.X`` or ``adata.layers[layer]``.

    Arguments:
        adata: an ``AnnData`` (in memory or backed).
        layer: name of a layer, or ``None`` for ``X``.

    Returns:
        A 2-D ``numpy`` array, a scipy CSR matrix (other sparse formats are converted to CSR), or the backed
        dataset itself (read by rows later).

    Dense ``float16`` (and ``bool``) matrices are converted to ``float32`` (scipy and the fused losses have no
    half-precision path); backed half-precision data are converted row block by row block.

    Raises:
        KeyError: ``layer`` is not a layer of ``adata`` (the message lists the layers there are).
        ValueError: the matrix is missing, not 2-D, or not numeric (naming its dtype).
    """
    if layer is None:
        X = adata.X
        if X is None:
            raise ValueError("adata.X is None; pass layer=... to use a layer")
    else:
        if layer not in adata.layers:
            raise KeyError(f"layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())})")
        X = adata.layers[layer]
    if sp.issparse(X) and not sp.isspmatrix_csr(X) and not isinstance(X, sp.csr_array):
        X = sp.csr_matrix(X)
    elif not sp.issparse(X) and not is_backed(X):
        X = np.asarray(X)
    if len(X.shape) != 2:
        raise ValueError(f"expression matrix must be 2-D (cells x genes); got shape {X.shape}")
    dtype = np.dtype(X.dtype)
    if dtype.kind not in "biuf":
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise ValueError(f"{where} must hold numbers; got dtype {dtype}")
    if not is_backed(X) and dtype in (np.float16, np.bool_):
        X = X.astype(np.float32)
    return X


def row_chunks(X, rows: np.ndarray | None = None, chunk: int = CHUNK_ROWS):
    """Yield ``(start, block)`` with ``block`` the rows ``rows[start:start+chunk]`` as numpy or CSR."""
    n = X.shape[0] if rows is None else len(rows)
    for start in range(0, n, chunk):
        sel = slice(start, min(n, start + chunk)) if rows is None else rows[start:start + chunk]
        yield start, take_rows(X, sel)


def take_rows(X, rows):
    """Rows of ``X`` (a slice or an int array, in that order) as a numpy array or CSR matrix."""
    if is_backed(X) and not isinstance(rows, slice):
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        block = X[rows[order]]  # h5py-backed datasets need increasing indices
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        block = block[inv]
    else:
        block = X[rows]
    if sp.issparse(block) and not sp.isspmatrix_csr(block):
        block = sp.csr_matrix(block)
    if np.dtype(block.dtype) in (np.float16, np.bool_):  # backed half-precision / boolean data
        block = block.astype(np.float32)
    return block


def row_sums(X) -> np.ndarray:
    """Per-row sums of a dense, CSR or backed matrix, float64 of shape (cells,)."""
    out = np.empty(X.shape[0], np.float64)
    for start, block in row_chunks(X):
        out[start:start + block.shape[0]] = np.asarray(block.sum(axis=1), np.float64).ravel()
    return out


def validate_counts(
    X,
    *,
    obs_names: Sequence[str] | None = None,
    var_names: Sequence[str] | None = None,
    counts: bool = True,
    integer: bool | None = None,
    allow_empty: bool = False,
    what: str = "X",
    hint: str = "pass raw counts, not normalised data (e.g. layer='counts'), or use likelihood='gaussian'",
) -> None:
    """Check an expression matrix before any compute; raise naming the first offending cell and gene.

    Arguments:
        X: dense array, scipy sparse matrix, or backed dataset (cells x genes), scanned in chunks of rows.
        obs_names, var_names: cell and gene names used in messages (default: positions only).
        counts: require non-negative values (count data); otherwise only finiteness is required.
        integer: also require integer values (default: ``counts``).
        allow_empty: accept cells whose counts are all zero (otherwise an error: their library size is 0).
        what: how the matrix is called in messages (e.g. ``"adata.layers['counts']"``, ``"generated"``).
        hint: what to do about non-integer values, appended to that message.

    Raises:
        ValueError: ``"<what> counts must be finite / non-negative; found <value> at cell <cell>, gene <gene>"``,
            ``"<what> must hold raw counts (integers); ..."`` or ``"cell <cell> has zero total counts"``; cells and
            genes by name and position when names are given (``cell 'c7' (row 7), gene 'CD3E' (column 3)``), else
            by position (``cell 7, gene 3``).
    """
    n_cells, n_genes = X.shape
    if n_cells == 0 or n_genes == 0:
        raise ValueError(f"{what} is empty (shape {X.shape}); it needs at least one cell and one gene")
    integer = counts if integer is None else integer
    checks = [(lambda a: ~np.isfinite(a), f"{what} counts must be finite")]
    if counts:
        checks.append((lambda a: a < 0, f"{what} counts must be non-negative"))
    if integer:
        checks.append((lambda a: a != np.floor(a), f"{what} must hold raw counts (integers)"))
    for start, block in row_chunks(X):
        for is_bad, requirement in checks:
            hit = _first_bad(block, is_bad)
            if hit is not None:
                i, j, value = hit
                where = _where(i + start, j, obs_names, var_names)
                fix = f". Hint: {hint}" if requirement.endswith("(integers)") else ""
                raise ValueError(f"{requirement}; found {value!r} at {where}{fix}")
    if counts and integer:
        _warn_if_normalised(X, what)
    if counts and not allow_empty:
        empty = np.flatnonzero(row_sums(X) <= 0)
        if empty.size:
            i = int(empty[0])
            cell = f"{str(obs_names[i])!r} (row {i})" if obs_names is not None else f"{i}"
            raise ValueError(f"cell {cell} has zero total counts ({empty.size} empty cell(s) in {what}); remove "
                             "empty cells first, e.g. adata = adata[adata.X.sum(1) > 0]")


def _warn_if_normalised(X, what: str, max_rows: int = 2000) -> None:
    """Warn when integer data look normalised rather than raw counts (judged on the first ``max_rows`` cells):
    every cell summing to nearly the same total (counts per 10k, rounded), or every value at most 10 with the
    non-zero values of genes far less variable than counts can be. For rounded log1p values the variance / mean of
    a gene's non-zero values is ~0.15 (the log compresses them); for raw counts it is >= ~0.8 once their mean is
    >= 3 (zero-truncated Poisson, larger when overdispersed). The median over genes with >= 5 non-zero values of
    mean >= 3 is compared with 0.4."""
    import warnings

    block = next(row_chunks(X, chunk=max_rows))[1]
    block = block.toarray() if sp.issparse(block) else np.asarray(block, np.float64)
    if block.shape[0] < 10 or block.shape[1] < 20:
        return
    sums = block.sum(axis=1)
    hint = "; pass the raw counts (layer='counts', CLI --layer counts), or likelihood='gaussian' for normalised data"
    if sums.mean() > 0 and sums.std() < 1e-3 * sums.mean():
        warnings.warn(f"every cell of {what} sums to about {sums.mean():.6g}: the data look normalised (e.g. "
                      f"counts per 10k), not raw counts{hint}", stacklevel=4)
        return
    if block.max() > 10:
        return
    nonzero = block > 0
    n = nonzero.sum(axis=0)
    total = np.where(nonzero, block, 0.0).sum(axis=0)
    squares = np.where(nonzero, block * block, 0.0).sum(axis=0)
    keep = n >= 5
    mean = total[keep] / n[keep]
    var = (squares[keep] - n[keep] * mean**2) / (n[keep] - 1)
    high = mean >= 3
    if high.sum() < 5:
        return
    dispersion = float(np.median(var[high] / mean[high]))
    if dispersion < 0.4:
        warnings.warn(f"every value of {what} is at most {block.max():g} and genes' non-zero values vary far less "
                      f"than counts do (median variance/mean {dispersion:.2g}; raw counts have >= ~0.8): the data "
                      f"look like rounded log-normalised values, not raw counts{hint}", stacklevel=4)


def _where(i: int, j: int, obs_names, var_names) -> str:
    """``cell 'name' (row i), gene 'name' (column j)``, or ``cell i, gene j`` without names."""
    cell = f"{str(obs_names[i])!r} (row {i})" if obs_names is not None else f"{i}"
    gene = f"{str(var_names[j])!r} (column {j})" if var_names is not None else f"{j}"
    return f"cell {cell}, gene {gene}"


def _first_bad(block, is_bad):
    """First ``(row, col, value)`` in row-major order where ``is_bad`` holds, or ``None``."""
    if sp.issparse(block):
        data = np.asarray(block.data)
        bad = is_bad(data.astype(np.float64, copy=False))
        if not bad.any():
            return None
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        k = np.flatnonzero(bad)
        r = rows[k].min()
        in_row = k[rows[k] == r]
        k0 = in_row[np.argmin(block.indices[in_row])]
        return int(r), int(block.indices[k0]), float(data[k0])
    arr = np.asarray(block)
    bad = is_bad(arr.astype(np.float64, copy=False))
    if not bad.any():
        return None
    i, j = np.argwhere(bad)[0]
    return int(i), int(j), float(arr[i, j])


def dense(block) -> np.ndarray:
    """A block of rows (numpy or scipy sparse) as a dense float32 numpy array."""
    return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float32)


def normalize_log1p(counts, target_sum: float = 1e4) -> np.ndarray:
    """``log1p`` of counts normalised to ``target_sum`` total per cell (the scanpy ``normalize_total`` +
    ``log1p`` convention).

    Arguments:
        counts: ``(cells, genes)`` non-negative counts (numpy, JAX or scipy sparse).
        target_sum: total each cell is scaled to before ``log1p``.

    Returns:
        ``(cells, genes)`` ``float32`` numpy array. Cells with zero total counts map to all zeros.
    """
    size = row_sums(counts)
    scale = np.where(size > 0, target_sum / np.where(size > 0, size, 1.0), 0.0)
    if sp.issparse(counts):
        out = sp.csr_matrix(counts, dtype=np.float32).multiply(scale[:, None].astype(np.float32)).tocsr()
        out.data = np.log1p(out.data)
        return out.toarray().astype(np.float32)
    counts = np.asarray(counts, dtype=np.float32)
    return np.log1p(counts * scale[:, None].astype(np.float32)).astype(np.float32)


def log1p_group_sums(X, groups: np.ndarray, n_groups: int, target_sum: float = 1e4, *,
                     chunk_values: int = 1 << 22) -> np.ndarray:
    """Per-group sums of log1p(counts normalised to ``target_sum``), read in row chunks so a sparse or backed
    matrix is never densified whole.

    Arguments:
        X: ``(cells, genes)`` counts (numpy, scipy sparse or a backed matrix).
        groups: ``(cells,)`` integer group of each cell in ``[0, n_groups)``; ``-1`` leaves the cell out.
        n_groups: number of groups.
        target_sum: total each cell is scaled to before ``log1p`` (:func:`normalize_log1p`).
        chunk_values: cells x genes values normalised at a time (a few MiB of float32 by default).

    Returns:
        ``(n_groups, genes)`` float64 sums (divide by ``np.bincount(groups[groups >= 0], minlength=n_groups)``
        for the group means).

    Raises:
        ValueError: ``groups`` of the wrong length or with a value outside ``[-1, n_groups)``.
    """
    groups = np.asarray(groups)
    if groups.shape != (X.shape[0],):
        raise ValueError(f"groups has shape {groups.shape}; expected ({X.shape[0]},), one per cell")
    if groups.size and (groups.min() < -1 or groups.max() >= n_groups):
        bad = groups[(groups < -1) | (groups >= n_groups)][0]
        raise ValueError(f"group {bad} is outside [-1, {n_groups}) (n_groups={n_groups})")
    out = np.zeros((n_groups, X.shape[1]), np.float64)
    for start, block in row_chunks(X, chunk=max(1, chunk_values // max(1, X.shape[1]))):
        g = groups[start:start + block.shape[0]]
        keep = np.flatnonzero(g >= 0)
        if not len(keep):
            continue
        ind = sp.csr_matrix((np.ones(len(keep)), (g[keep], keep)), shape=(n_groups, len(g)))
        out += ind @ normalize_log1p(block, target_sum).astype(np.float64)
    return out


def map_row_blocks(fn, n_rows: int, *, block: int = 2048, workers: int | None = None) -> list:
    """``[fn(slice) for slice in row blocks]`` over ``range(n_rows)``, the blocks run on a thread pool.

    For host-side numpy work on large (cells, genes) arrays (random draws, quantile searches): numpy releases the
    GIL in its array loops, so blocks of rows run on several cores at once. Results keep the blocks' order, so
    the outcome is the same for any ``workers`` when ``fn`` depends only on its block.

    Arguments:
        fn: ``fn(slice) -> result`` for one block of rows.
        n_rows: rows in all.
        block: rows per block.
        workers: threads (default: the CPU cores this process may use, at most 8; 1 runs serially).

    Returns:
        The list of ``fn``'s results, one per block in row order.
    """
    slices = [slice(s, min(s + block, n_rows)) for s in range(0, n_rows, max(1, int(block)))]
    if workers is None:
        workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= 1 or len(slices) <= 1:
        return [fn(s) for s in slices]
    with ThreadPoolExecutor(min(workers, len(slices))) as pool:
        return list(pool.map(fn, slices))
