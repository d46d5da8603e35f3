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

Perturbation prediction (``_perturbation.py``): :func:`evaluate_perturbations` scores predicted mean profiles
(and cells) of perturbed conditions against the observed ones, per condition, beside the ``control``,
``perturbed_mean``, ``additive`` and split-half ``ceiling`` baselines, as a tidy table (:func:`summarise`
averages it): Pearson delta against control and against the perturbed centroid, MSE, RMSE / L2 on the top
expressed genes, PerturBench's cosine of log fold changes and rank metric (:func:`rank_metric`), R^2 and scGen's
squared Pearson on the top DEGs, cell-eval's DEG recall (:func:`deg_recall`), energy distance in PCA space
(:func:`split_half_ceiling`) and genetic-interaction recovery (:func:`interaction_genes`); one condition at a
time with :func:`perturbation_scores`, DE with :func:`de_test` / :func:`top_degs`, gene sets with
:func:`top_expressed`, log fold changes with :func:`logfc`. From AnnData files (real, predicted and training
cells, the baselines fitted on the latter): :func:`evaluate_predicted_perturbations`
(``_perturbation_anndata.py``), what ``genjax evaluate --perturbation-key`` runs.

Calibration of count forecasts (``_calibration.py``): randomised PIT (:func:`randomized_pit` from
:func:`nb_cdf` or :func:`sample_cdf`), interval coverage by level and expression bin (:func:`coverage_table`),
:func:`reliability_curve`, :func:`interval_score`, CRPS (:func:`crps_samples`, :func:`crps_nb`) and
:func:`energy_score`.
"""

from ._buffer import make_buffer as make_buffer
from ._calibration import DEFAULT_LEVELS as DEFAULT_LEVELS
from ._calibration import coverage_table as coverage_table
from ._calibration import crps_nb as crps_nb
from ._calibration import crps_samples as crps_samples
from ._calibration import energy_score as energy_score
from ._calibration import interval_score as interval_score
from ._calibration import nb_cdf as nb_cdf
from ._calibration import randomized_pit as randomized_pit
from ._calibration import reliability_curve as reliability_curve
from ._calibration import sample_cdf as sample_cdf
from ._disentanglement import DCI as DCI
from ._disentanglement import MIGDetails as MIGDetails
from ._disentanglement import dci as dci
from ._disentanglement import mig as mig
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
from ._integration import IntegrationDetails as IntegrationDetails
from ._integration import integration as integration
from ._knn import knn_loo_accuracy as knn_loo_accuracy
from ._knn import knn_two_sample_accuracy as knn_two_sample_accuracy
from ._label_classifier import LabelClassifier as LabelClassifier
from ._label_classifier import classifier_objective as classifier_objective
from ._label_classifier import fit_label_classifier as fit_label_classifier
from ._label_classifier import predict_labels as predict_labels
from ._perturbation import BASELINE_ROWS as BASELINE_ROWS
from ._perturbation import PERTURBATION_METRICS as PERTURBATION_METRICS
from ._perturbation import DETest as DETest
from ._perturbation import de_test as de_test
from ._perturbation import deg_recall as deg_recall
from ._perturbation import evaluate_perturbations as evaluate_perturbations
from ._perturbation import interaction_genes as interaction_genes
from ._perturbation import logfc as logfc
from ._perturbation import perturbation_scores as perturbation_scores
from ._perturbation import rank_metric as rank_metric
from ._perturbation import split_half_ceiling as split_half_ceiling
from ._perturbation import summarise as summarise
from ._perturbation import top_degs as top_degs
from ._perturbation import top_expressed as top_expressed
from ._perturbation_anndata import evaluate_predicted_perturbations as evaluate_predicted_perturbations
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
