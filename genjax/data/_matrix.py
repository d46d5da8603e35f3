"""Count data for genjax models: AnnData / scipy CSR / dense handling, validation, conditions, batch sources.

The path from an ``AnnData`` to minibatches, host side, before any compute:

1. :func:`get_matrix` picks ``X`` or a layer (dense ``numpy``, any scipy sparse matrix, or a backed ``.h5ad``
   dataset); :func:`validate_counts` checks it (finite; for count likelihoods non-negative integers; no empty
   cells) and names the first offending cell and gene by their ``obs`` / ``var`` names.
2. :class:`DataRegistry` records what a model was trained on: gene names and order, the categories of every
   condition (``obs`` keys), the mean / standard deviation of every continuous covariate, and the layer. At
   inference it re-encodes new data the same way and raises on a gene-set mismatch, a missing ``obs`` key or an
   unseen category.
3. :class:`CountData` holds the encoded arrays of one data set and hands out the *training data* of
   :func:`genjax.fit`: a dict of arrays kept on the device (dense input), or a :class:`genjax.HostSource` that
   densifies only the rows of one dispatch (CSR or backed input, so the whole matrix is never densified).

The batch layout (a dict of arrays with a leading ``cells`` axis) is the contract with the model losses:

``x``        (cells, genes) float32: counts (or real values for a Gaussian likelihood)
``log_lib``  (cells,) float32: log library size, ``log sum_g x`` (or the log of a given size factor)
``cat``      (cells, n_conditions) int32: category codes, present when there are categorical conditions
``cont``     (cells, n_continuous) float32: standardised continuous covariates, present when there are any
``lfact``    (cells,) float32: ``sum_g lgamma(x + 1)``, the parameter-free part of every count log-likelihood
``nz_idx``   (cells, K) int32 and ``nz_val`` (cells, K) float32: the non-zero entries of each row (gene index and
             count), padded with index 0 / count 0 to the data set's largest number of non-zeros per row ``K``
             (the fast NB / ZINB losses evaluate the count-only special functions on these entries only)
``nzl_idx``, ``nzl_val``: the same for the entries above a threshold only (the fast NB / ZINB losses with
             gene-wise dispersion handle small counts with a per-gene table)

Every field is indexed by rows only, so the same layout works for on-device gathering, host fetching, ``pmap``
sharding and streaming from disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from ..training._loop import HostSource

__all__ = [
    "DataRegistry",
    "CountData",
    "get_matrix",
    "validate_counts",
    "row_sums",
]

_CHUNK_ROWS = 8192  # rows per chunk when scanning large / backed matrices on the host


# ---------------------------------------------------------------------------------------------------------------
# matrices
# ---------------------------------------------------------------------------------------------------------------


def _is_backed(X) -> bool:
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

    Raises:
        KeyError: ``layer`` is not a layer of ``adata`` (the message lists the layers there are).
        ValueError: the matrix is missing or not 2-D.
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
    elif not sp.issparse(X) and not _is_backed(X):
        X = np.asarray(X)
    if len(X.shape) != 2:
        raise ValueError(f"expression matrix must be 2-D (cells x genes), got shape {X.shape}")
    return X


def _row_chunks(X, rows: np.ndarray | None = None, chunk: int = _CHUNK_ROWS):
    """Yield ``(start, block)`` with ``block`` the rows ``rows[start:start+chunk]`` as numpy or CSR."""
    n = X.shape[0] if rows is None else len(rows)
    for start in range(0, n, chunk):
        sel = slice(start, min(n, start + chunk)) if rows is None else rows[start:start + chunk]
        yield start, _take_rows(X, sel)


def _take_rows(X, rows):
    """Rows of ``X`` (a slice or an int array, in that order) as a numpy array or CSR matrix."""
    if _is_backed(X) and not isinstance(rows, slice):
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        block = X[rows[order]]  # h5py-backed datasets need increasing indices
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return block[inv]
    block = X[rows]
    if sp.issparse(block) and not sp.isspmatrix_csr(block):
        block = sp.csr_matrix(block)
    return block


def row_sums(X) -> np.ndarray:
    """Per-row sums of a dense, CSR or backed matrix, float64 of shape (cells,)."""
    out = np.empty(X.shape[0], np.float64)
    for start, block in _row_chunks(X):
        out[start:start + block.shape[0]] = np.asarray(block.sum(axis=1), np.float64).ravel()
    return out


def _names(names, n: int, what: str) -> list[str]:
    return [f"{what} {i}" for i in range(n)] if names is None else [str(v) for v in names]


def validate_counts(
    X,
    *,
    obs_names: Sequence[str] | None = None,
    var_names: Sequence[str] | None = None,
    counts: bool = True,
    allow_empty: bool = False,
    what: str = "X",
) -> None:
    """Check an expression matrix before any compute; raise naming the first offending cell and gene.

    Arguments:
        X: dense array, scipy sparse matrix, or backed dataset (cells x genes).
        obs_names, var_names: names used in messages (default: positions).
        counts: require non-negative integers (count likelihoods); otherwise only finiteness is required.
        allow_empty: accept cells whose counts are all zero (otherwise an error: their library size is 0).
        what: how the matrix is called in messages (e.g. ``"adata.layers['counts']"``).

    Raises:
        ValueError: a NaN / infinite entry, a negative or non-integer count, or (unless ``allow_empty``) a cell
            with zero total count, naming the value, its cell and gene (by name and position).
    """
    n_cells, n_genes = X.shape
    if n_cells == 0 or n_genes == 0:
        raise ValueError(f"{what} is empty (shape {X.shape})")
    checks = [(lambda a: ~np.isfinite(a), "finite (found NaN or inf)")]
    if counts:
        checks.append((lambda a: a < 0, "non-negative counts"))
        checks.append((lambda a: a != np.floor(a), "integer counts (found a non-integer; pass raw counts, "
                       "not normalised data, or use likelihood='gaussian')"))
    for start, block in _row_chunks(X):
        for is_bad, requirement in checks:
            hit = _first_bad(block, is_bad)
            if hit is not None:
                i, j, value = hit
                i += start
                cell = _names(obs_names, n_cells, "cell")[i] if obs_names is not None else f"#{i}"
                gene = _names(var_names, n_genes, "gene")[j] if var_names is not None else f"#{j}"
                raise ValueError(f"{what} must hold {requirement}: value {value!r} at cell {cell!r} (row {i}), "
                                 f"gene {gene!r} (column {j})")
    if counts and not allow_empty:
        sums = row_sums(X)
        empty = np.flatnonzero(sums <= 0)
        if empty.size:
            i = int(empty[0])
            cell = str(obs_names[i]) if obs_names is not None else f"#{i}"
            raise ValueError(f"cell {cell!r} (row {i}) has zero total counts ({empty.size} empty cell(s) in {what});"
                             " remove empty cells first, e.g. adata = adata[adata.X.sum(1) > 0]")


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


# ---------------------------------------------------------------------------------------------------------------
# registry of what a model was trained on
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataRegistry:
    """What a model was trained on, to encode new data the same way (JSON-serialisable).

    Attributes:
        var_names: gene names in training order.
        conditions: ``{obs key: categories}`` of every categorical condition, in code order.
        continuous: ``{obs key: (mean, std)}`` of every continuous covariate (values are standardised).
        layer: the layer the model reads (``None``: ``X``).
    """

    var_names: tuple[str, ...]
    conditions: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    continuous: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    layer: str | None = None

    @classmethod
    def from_anndata(cls, adata, conditions: Sequence[str] = (), continuous: Sequence[str] = (),
                     layer: str | None = None) -> DataRegistry:
        """Record genes, condition categories and covariate statistics of a training ``adata``.

        Categories are those present in the data, in the order of a pandas categorical column (else sorted as
        strings). Continuous covariates are standardised with their training mean and standard deviation.

        Raises:
            KeyError: a condition / covariate key missing from ``adata.obs``.
            ValueError: duplicated keys or gene names, a missing (NaN) condition value, a non-finite covariate.
        """
        conditions, continuous = list(conditions or ()), list(continuous or ())
        dup = sorted({k for k in conditions + continuous if (conditions + continuous).count(k) > 1})
        if dup:
            raise ValueError(f"obs key(s) {dup} given more than once in conditions / continuous covariates")
        var_names = tuple(str(v) for v in adata.var_names)
        if len(set(var_names)) != len(var_names):
            seen, first = set(), None
            for v in var_names:
                if v in seen:
                    first = v
                    break
                seen.add(v)
            raise ValueError(f"gene names must be unique; {first!r} occurs more than once "
                             "(call adata.var_names_make_unique())")
        cats = {}
        for key in conditions:
            col = _obs_column(adata, key)
            values = _condition_strings(col, key, adata.obs_names)
            if hasattr(col, "cat"):
                present = set(values)
                order = [str(c) for c in col.cat.categories if str(c) in present]
            else:
                order = sorted(set(values))
            cats[key] = tuple(order)
        conts = {}
        for key in continuous:
            vals = _continuous_values(_obs_column(adata, key), key, adata.obs_names)
            std = float(vals.std())
            conts[key] = (float(vals.mean()), std if std > 0 else 1.0)
        return cls(var_names, cats, conts, layer)

    # -- encoding --------------------------------------------------------------------------------------------

    @property
    def n_genes(self) -> int:
        return len(self.var_names)

    @property
    def n_categories(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.conditions.values())

    def gene_order(self, adata) -> np.ndarray | None:
        """Column indices putting ``adata``'s genes in training order (``None`` if already in order).

        Raises:
            ValueError: a training gene is missing from ``adata`` or ``adata`` has genes the model does not know,
                naming the first few of each.
        """
        names = [str(v) for v in adata.var_names]
        if tuple(names) == self.var_names:
            return None
        pos = {v: i for i, v in enumerate(names)}
        missing = [v for v in self.var_names if v not in pos]
        extra = sorted(set(names) - set(self.var_names))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} training gene(s) missing, e.g. {missing[:5]}")
            if extra:
                parts.append(f"{len(extra)} unknown gene(s), e.g. {extra[:5]}")
            raise ValueError("gene set of the data does not match the model's "
                             f"({len(self.var_names)} genes): " + "; ".join(parts)
                             + ". Subset the data to the training genes (adata[:, model.var_names]).")
        return np.array([pos[v] for v in self.var_names], dtype=np.int64)

    def encode_conditions(self, adata) -> np.ndarray:
        """Category codes of ``adata.obs`` conditions, int32 (cells, n_conditions).

        Raises:
            KeyError: a condition key missing from ``adata.obs``.
            ValueError: a value not among the training categories (naming key, value and cell) or missing.
        """
        n = adata.n_obs
        codes = np.zeros((n, len(self.conditions)), np.int32)
        for j, (key, cats) in enumerate(self.conditions.items()):
            values = _condition_strings(_obs_column(adata, key), key, adata.obs_names)
            codes[:, j] = self._codes(key, cats, values, adata.obs_names)
        return codes

    def encode_values(self, n: int, **values) -> np.ndarray:
        """Codes for explicitly requested condition values (one value per key, repeated ``n`` times), or -1 for
        keys not given. Returns int32 (n, n_conditions).

        Raises:
            KeyError: a key that is not a condition of the model.
            ValueError: a value that is not one of the key's training categories.
        """
        unknown = [k for k in values if k not in self.conditions]
        if unknown:
            raise KeyError(f"{unknown[0]!r} is not a condition of this model (conditions: "
                           f"{list(self.conditions)})")
        codes = np.full((n, len(self.conditions)), -1, np.int32)
        for j, (key, cats) in enumerate(self.conditions.items()):
            if key in values:
                v = values[key]
                vals = [str(v)] * n if isinstance(v, str) or np.ndim(v) == 0 else [str(u) for u in v]
                if len(vals) != n:
                    raise ValueError(f"condition {key!r}: got {len(vals)} values for {n} cells")
                codes[:, j] = self._codes(key, cats, vals, None)
        return codes

    @staticmethod
    def _codes(key, cats, values, obs_names) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(cats)}
        out = np.empty(len(values), np.int32)
        for i, v in enumerate(values):
            code = lookup.get(v)
            if code is None:
                where = f" (cell {str(obs_names[i])!r})" if obs_names is not None else ""
                raise ValueError(f"unknown category {v!r} for condition {key!r}{where}; the model was trained on "
                                 f"{list(cats)}")
            out[i] = code
        return out

    def encode_continuous(self, adata) -> np.ndarray:
        """Standardised continuous covariates of ``adata.obs``, float32 (cells, n_continuous).

        Raises:
            KeyError: a covariate key missing from ``adata.obs``.
            ValueError: a non-numeric or non-finite value, naming the key and cell.
        """
        out = np.zeros((adata.n_obs, len(self.continuous)), np.float32)
        for j, (key, (mean, std)) in enumerate(self.continuous.items()):
            vals = _continuous_values(_obs_column(adata, key), key, adata.obs_names)
            out[:, j] = (vals - mean) / std
        return out

    def decode_conditions(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """Category labels (object arrays) from int codes (cells, n_conditions)."""
        return {key: np.asarray(cats, dtype=object)[codes[:, j]] for j, (key, cats) in
                enumerate(self.conditions.items())}

    # -- persistence -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"var_names": list(self.var_names), "conditions": {k: list(v) for k, v in self.conditions.items()},
                "continuous": {k: list(v) for k, v in self.continuous.items()}, "layer": self.layer}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataRegistry:
        return cls(tuple(d["var_names"]), {k: tuple(v) for k, v in d["conditions"].items()},
                   {k: (float(v[0]), float(v[1])) for k, v in d["continuous"].items()}, d.get("layer"))


def _obs_column(adata, key):
    if key not in adata.obs:
        raise KeyError(f"obs key {key!r} not found in adata.obs (columns: {list(adata.obs.columns)})")
    return adata.obs[key]


def _condition_strings(col, key, obs_names) -> list[str]:
    isna = np.asarray(col.isna())
    if isna.any():
        i = int(np.flatnonzero(isna)[0])
        raise ValueError(f"condition {key!r} is missing (NaN) for cell {str(obs_names[i])!r} (row {i})")
    return [str(v) for v in col]


def _continuous_values(col, key, obs_names) -> np.ndarray:
    try:
        vals = np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"continuous covariate {key!r} must be numeric ({err})") from err
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"continuous covariate {key!r} is {vals[i]!r} (not finite) for cell "
                         f"{str(obs_names[i])!r} (row {i})")
    return vals


# ---------------------------------------------------------------------------------------------------------------
# encoded data and batch sources
# ---------------------------------------------------------------------------------------------------------------


def _ell(block, k: int, above: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """Entries ``> above`` of each row of a dense / CSR block padded to ``k``: (gene index int32, value float32)."""
    csr = block if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
    if above > 0:
        csr = csr.multiply(csr > above).tocsr()
    else:
        csr = csr.copy()
    csr.eliminate_zeros()
    n = csr.shape[0]
    nnz = np.diff(csr.indptr)
    idx = np.zeros((n, k), np.int32)
    val = np.zeros((n, k), np.float32)
    pos = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], nnz)
    rows = np.repeat(np.arange(n), nnz)
    idx[rows, pos] = csr.indices
    val[rows, pos] = csr.data
    return idx, val


def _dense(block) -> np.ndarray:
    return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float32)


class CountData:
    """Encoded arrays of one data set for a genjax model, and the training data handed to :func:`genjax.fit`.

    Arguments:
        X: the matrix (dense, CSR or backed), cells x genes, already in the registry's gene order or with
            ``gene_order`` given.
        log_lib: (cells,) log library sizes.
        cat: (cells, n_conditions) int32 codes; cont: (cells, n_continuous) float32.
        gene_order: column indices (from :meth:`DataRegistry.gene_order`) or ``None``.
        sparse_fields: also provide ``lfact`` (for the fast count losses).
        nonzeros: also provide the padded lists of entries ``> nonzeros``: ``nz_idx`` / ``nz_val`` for 0 (all
            non-zeros), ``nzl_idx`` / ``nzl_val`` for a positive threshold. ``None``: neither.

    The matrix is only referenced, never densified whole unless it is dense already.
    """

    def __init__(self, X, log_lib, cat, cont, *, gene_order=None, sparse_fields: bool = False,
                 nonzeros: int | None = None):
        self.X = X
        self.n = X.shape[0]
        self.gene_order = gene_order
        self.log_lib = np.asarray(log_lib, np.float32)
        self.cat = np.asarray(cat, np.int32)
        self.cont = np.asarray(cont, np.float32)
        self.sparse_fields = sparse_fields
        self.nonzeros = nonzeros
        self.lfact = None
        self.k = 0
        if sparse_fields or nonzeros is not None:
            self.lfact = np.empty(self.n, np.float32)
            nnz_max = 0
            for start, block in _row_chunks(X):
                csr = block if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
                nnz = np.diff(csr.indptr)
                rows = np.repeat(np.arange(csr.shape[0]), nnz)
                self.lfact[start:start + csr.shape[0]] = np.bincount(
                    rows, weights=gammaln(np.asarray(csr.data, np.float64) + 1.0), minlength=csr.shape[0])
                listed = csr.data > (nonzeros or 0)
                nnz_max = max(nnz_max, int(listed.sum() and np.bincount(rows[listed], minlength=csr.shape[0]).max()))
            self.k = max(nnz_max, 1)

    @property
    def host(self) -> bool:
        """True when rows are fetched on the host (sparse or backed input)."""
        return not isinstance(self.X, np.ndarray)

    def _fields(self, rows) -> dict[str, np.ndarray]:
        """The batch dict for ``rows`` (an int array or a slice)."""
        block = _take_rows(self.X, rows)
        if self.gene_order is not None:
            block = block[:, self.gene_order]
        out = {"x": _dense(block), "log_lib": self.log_lib[rows]}
        if self.cat.shape[1]:
            out["cat"] = self.cat[rows]
        if self.cont.shape[1]:
            out["cont"] = self.cont[rows]
        if self.sparse_fields:
            out["lfact"] = self.lfact[rows]
        if self.nonzeros is not None:
            prefix = "nz" if self.nonzeros == 0 else "nzl"
            out[f"{prefix}_idx"], out[f"{prefix}_val"] = _ell(block, self.k, self.nonzeros)
        return out

    def batch(self, rows) -> dict[str, np.ndarray]:
        """The batch dict (numpy) of the given rows (int array, in that order)."""
        return self._fields(np.asarray(rows, np.int64))

    def source(self, rows: np.ndarray | None = None):
        """Training data for :func:`genjax.fit` restricted to ``rows`` (default: all).

        Dense input: a dict of numpy arrays (moved to the device once by ``fit``). Sparse or backed input: a
        :class:`genjax.HostSource` whose ``fetch`` densifies only the requested rows.
        """
        rows = np.arange(self.n) if rows is None else np.asarray(rows, np.int64)
        if not self.host:
            return self._fields(rows)
        return HostSource(len(rows), lambda r: self._fields(rows[np.asarray(r, np.int64)]))

    def iter_batches(self, batch_size: int, rows: np.ndarray | None = None):
        """Yield ``(rows, batch dict)`` over ``rows`` (default all) in order, for inference."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows, np.int64)
        for start in range(0, len(rows), batch_size):
            r = rows[start:start + batch_size]
            yield r, self._fields(r)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools' default number of epochs: ``min(round(20000 / n_cells * 400), 400)``."""
    return int(min(round(20000 / max(n_cells, 1) * 400), 400))

