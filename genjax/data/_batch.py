"""The encoded arrays of one data set, and the typed minibatch (:class:`CountBatch`) cut from them for the count
VAE.

A :class:`CountBatch` is a pytree (a ``NamedTuple``) whose every field has a leading ``cells`` axis and is indexed by
rows only, so the same batch works for on-device gathering, host fetching, ``pmap`` sharding and streaming from
disk. The optional fields are the precomputed parts of the fused count losses (:mod:`genjax.likelihoods`): a batch
built for a model carries exactly the fields its loss reads, and :class:`CountData` decides which from the model's
settings. :class:`CountData` hands out the *training data* of :func:`genjax.fit`: a batch of arrays kept on the
device (dense input), or a :class:`~genjax.data.HostSource` that densifies only the rows of one dispatch (CSR or
backed input).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from .._typing import Array, Float, Int
from ._condition import Condition
from ._matrix import dense, row_chunks, take_rows
from ._source import HostSource

__all__ = ["CountData", "CountBatch", "PaddedEntries", "padded_entries"]


class PaddedEntries(NamedTuple):
    """Selected entries of each row (cell), padded to a common length ``K`` with index 0 / count 0.

    Fields:
        idx: int32 ``(cells, K)`` gene indices.
        val: float32 ``(cells, K)`` counts (0 marks padding).
    """

    idx: Int[Array, "cells K"]
    val: Float[Array, "cells K"]


class CountBatch(NamedTuple):
    """A minibatch of cells for the count VAE (a pytree; ``None`` fields are absent).

    Fields:
        x: float32 ``(cells, genes)``: counts (or real values for a Gaussian likelihood).
        log_lib: float32 ``(cells,)``: log library size, ``log sum_g x`` (or the log of a given size factor).
        cond: a :class:`~genjax.data.Condition` with the category codes of the model's conditions
            (``labels``, int32 ``(cells, n_conditions)``) and its standardised continuous covariates
            (``covariates``, ``(cells, n_continuous)``), or ``None`` without conditions.
        lfact: float32 ``(cells,)``: ``sum_g lgamma(x + 1)``, the parameter-free part of every count
            log-likelihood; present when the fused count loss is used.
        nonzero: every non-zero entry of each row (:class:`PaddedEntries`), for the fused NB / ZINB loss with
            per-cell or per-category dispersion (the count-only special functions are evaluated there only).
        large: the entries above :data:`genjax.likelihoods.SMALL` only, for the fused NB / ZINB loss with gene-wise
            dispersion (smaller counts come from a per-gene table).
    """

    x: Float[Array, "cells genes"]
    log_lib: Float[Array, " cells"]
    cond: Condition | None = None
    lfact: Float[Array, " cells"] | None = None
    nonzero: PaddedEntries | None = None
    large: PaddedEntries | None = None


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
        sparse_fields: also provide ``lfact`` (for the fused count losses).
        nonzeros: also provide the padded lists of entries ``> nonzeros``: :attr:`CountBatch.nonzero` for 0 (all
            non-zeros), :attr:`CountBatch.large` for a positive threshold. ``None``: neither.

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

    def condition(self, rows) -> Condition | None:
        """The :class:`Condition` of ``rows``: category codes as ``labels``, standardised covariates as
        ``covariates``; ``None`` when the data set has neither."""
        labels = self.cat[rows] if self.cat.shape[1] else None
        covariates = self.cont[rows] if self.cont.shape[1] else None
        return None if labels is None and covariates is None else Condition(labels, covariates)

    def _fields(self, rows) -> CountBatch:
        """The batch of ``rows`` (an int array or a slice), numpy arrays."""
        block = take_rows(self.X, rows)
        if self.gene_order is not None:
            block = block[:, self.gene_order]
        listed = None
        if self.nonzeros is not None:
            listed = PaddedEntries(*padded_entries(block, self.k, self.nonzeros))
        return CountBatch(
            x=dense(block), log_lib=self.log_lib[rows], cond=self.condition(rows),
            lfact=self.lfact[rows] if self.sparse_fields else None,
            nonzero=listed if self.nonzeros == 0 else None,
            large=listed if self.nonzeros else None,
        )

    def batch(self, rows) -> CountBatch:
        """The :class:`CountBatch` (numpy arrays) of the given rows (int array, in that order)."""
        return self._fields(np.asarray(rows, np.int64))

    def source(self, rows: np.ndarray | None = None):
        """Training data for :func:`genjax.fit` restricted to ``rows`` (default: all).

        Dense input: a :class:`CountBatch` of numpy arrays (moved to the device once by ``fit``). Sparse or backed input: a
        :class:`genjax.HostSource` whose ``fetch`` densifies only the requested rows.
        """
        rows = np.arange(self.n) if rows is None else np.asarray(rows, np.int64)
        if not self.host:
            return self._fields(rows)
        return HostSource(len(rows), lambda r: self._fields(rows[np.asarray(r, np.int64)]))

    def iter_batches(self, batch_size: int, rows: np.ndarray | None = None):
        """Yield ``(rows, CountBatch)`` over ``rows`` (default all) in order, for inference."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows, np.int64)
        for start in range(0, len(rows), batch_size):
            r = rows[start:start + batch_size]
            yield r, self._fields(r)
