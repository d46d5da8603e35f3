"""The encoded arrays of one data set and the minibatches cut from them for the count VAE.

A batch is a dict of arrays with a leading ``cells`` axis, the contract with the model losses:

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
sharding and streaming from disk. :class:`CountData` hands out the *training data* of :func:`genjax.fit`: a dict
of arrays kept on the device (dense input), or a :class:`~genjax.data.HostSource` that densifies only the rows of
one dispatch (CSR or backed input).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from ._matrix import dense, row_chunks, take_rows
from ._source import HostSource

__all__ = ["CountData", "padded_entries"]


def padded_entries(block, k: int, above: float = 0) -> tuple[np.ndarray, np.ndarray]:
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
            for start, block in row_chunks(X):
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
        block = take_rows(self.X, rows)
        if self.gene_order is not None:
            block = block[:, self.gene_order]
        out = {"x": dense(block), "log_lib": self.log_lib[rows]}
        if self.cat.shape[1]:
            out["cat"] = self.cat[rows]
        if self.cont.shape[1]:
            out["cont"] = self.cont[rows]
        if self.sparse_fields:
            out["lfact"] = self.lfact[rows]
        if self.nonzeros is not None:
            prefix = "nz" if self.nonzeros == 0 else "nzl"
            out[f"{prefix}_idx"], out[f"{prefix}_val"] = padded_entries(block, self.k, self.nonzeros)
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
