"""Data layer: from an ``AnnData`` (in memory or backed), a scipy CSR or a dense matrix to validated, encoded
minibatches, host side and before any compute.

* matrices: :func:`get_matrix`, :func:`validate_counts`, :func:`row_sums`, :func:`normalize_log1p`, :func:`log1p_group_sums`,
  :func:`map_row_blocks` (``_matrix.py``);
* what a model was trained on: :class:`DataRegistry` (``_registry.py``);
* encoded arrays and typed batches: :class:`CountData`, :class:`CountBatch` (``_batch.py``);
* data that stays on the host: :class:`HostSource` (``_source.py``);
* conditions of cells and points: :class:`Condition`, :func:`check_condition` (``_condition.py``);
* perturbation labels, combinations and covariates: :class:`PerturbationSpec` (``_perturbation.py``);
* highly variable genes from raw counts (seurat_v3): :func:`highly_variable_genes` (``_hvg.py``);
* seeded splits: :func:`split_indices`, :func:`stratified_split` (``_split.py``);
* perturbation benchmark splits (``_perturbation_split.py``): :func:`combination_split`,
  :func:`heldout_condition_split`, :func:`heldout_covariate_split`, :func:`leave_one_double_out`,
  :func:`combinations_with_singles`;
* data sets: :mod:`genjax.data.datasets` (bundled PBMC3k, synthetic generators with known truth).
"""

from . import datasets as datasets
from ._batch import CountBatch as CountBatch
from ._batch import CountData as CountData
from ._batch import PaddedEntries as PaddedEntries
from ._batch import padded_entries as padded_entries
from ._cluster import kmeans_labels as kmeans_labels
from ._condition import NULL_LABEL as NULL_LABEL
from ._condition import Condition as Condition
from ._condition import check_condition as check_condition
from ._hvg import highly_variable_genes as highly_variable_genes
from ._hvg import loess_fit as loess_fit
from ._matrix import dense as dense
from ._matrix import get_matrix as get_matrix
from ._matrix import log1p_group_sums as log1p_group_sums
from ._matrix import map_row_blocks as map_row_blocks
from ._matrix import normalize_log1p as normalize_log1p
from ._matrix import row_chunks as row_chunks
from ._matrix import row_sums as row_sums
from ._matrix import take_rows as take_rows
from ._matrix import validate_counts as validate_counts
from ._perturbation import PerturbationSpec as PerturbationSpec
from ._perturbation import UnknownPerturbationError as UnknownPerturbationError
from ._perturbation_split import combination_split as combination_split
from ._perturbation_split import combinations_with_singles as combinations_with_singles
from ._perturbation_split import heldout_condition_split as heldout_condition_split
from ._perturbation_split import heldout_covariate_split as heldout_covariate_split
from ._perturbation_split import leave_one_double_out as leave_one_double_out
from ._registry import DataRegistry as DataRegistry
from ._source import HostSource as HostSource
from ._source import num_examples as num_examples
from ._split import split_indices as split_indices
from ._split import stratified_split as stratified_split
