"""``genjax.metrics``: how close are generated count cells to real ones, beside a real-vs-real control.

One call does the whole evaluation::

    ev = genjax.metrics.evaluate(heldout, generated, condition_key="cell_type", control=train)
    ev.table          # tidy pandas DataFrame: condition, metric, generated, control, n_real, n_generated, ...
    ev.wide()         # one row per condition, (metric, generated|control) columns
    genjax.report.write_report(ev, "out/")   # report.md + figures

The array-level statistics are public too, for use on any point clouds: energy distance and MMD
(``_energy_mmd.py``), Sinkhorn W2 (``_sinkhorn.py``), the k-NN two-sample test (``_knn.py``), the PCA and gene
statistics (``_preprocess.py``) and the label classifier (``_label_classifier.py``); the blockwise building blocks
(:func:`make_buffer`, :func:`pair_sums`, :func:`sinkhorn_buffers`, :func:`knn_loo_accuracy`) for reuse without
recompiling.
"""

from ._buffer import make_buffer as make_buffer
from ._energy_mmd import MMD_FACTORS as MMD_FACTORS
from ._energy_mmd import energy_distance as energy_distance
from ._energy_mmd import median_distance as median_distance
from ._energy_mmd import mmd_rbf as mmd_rbf
from ._energy_mmd import pair_sums as pair_sums
from ._energy_mmd import rbf_bandwidths as rbf_bandwidths
from ._evaluate import ALL as ALL
from ._evaluate import METRICS as METRICS
from ._evaluate import Evaluation as Evaluation
from ._evaluate import SetSummary as SetSummary
from ._evaluate import evaluate as evaluate
from ._knn import knn_loo_accuracy as knn_loo_accuracy
from ._knn import knn_two_sample_accuracy as knn_two_sample_accuracy
from ._label_classifier import LabelClassifier as LabelClassifier
from ._label_classifier import classifier_objective as classifier_objective
from ._label_classifier import fit_label_classifier as fit_label_classifier
from ._label_classifier import predict_labels as predict_labels
from ._preprocess import PCA as PCA
from ._preprocess import gene_statistics as gene_statistics
from ._preprocess import normalize_log1p as normalize_log1p
from ._preprocess import pca_fit as pca_fit
from ._preprocess import pca_transform as pca_transform
from ._preprocess import pearson as pearson
from ._sinkhorn import SinkhornOutput as SinkhornOutput
from ._sinkhorn import default_epsilon as default_epsilon
from ._sinkhorn import sinkhorn as sinkhorn
from ._sinkhorn import sinkhorn_buffers as sinkhorn_buffers
from ._sinkhorn import sinkhorn_w2 as sinkhorn_w2
