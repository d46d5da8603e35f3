"""Perturbation-prediction metrics: predicted vs observed profiles of perturbed conditions, beside baselines.

Inputs are ``log1p`` of counts normalised to 1e4 per cell (:func:`genjax.data.normalize_log1p`). A *condition*
is a string label (a perturbation, maybe with covariates, e.g. ``"KLF1+MAP2K6"`` or ``"STIM | CD14 Mono"``).
For one condition write ``x`` for the observed mean profile of its perturbed cells (``(genes,)``), ``xh`` for
the predicted mean profile (the mean of the predicted cells when cells are given), ``c`` for the mean of its
control cells and ``r`` for a reference profile (default: the *perturbed centroid*, the mean over all observed
conditions of ``x``). ``corr`` is Pearson's correlation over genes; ``cos(u, v) = u.v / (|u| |v|)``.

Mean-profile metrics (:func:`perturbation_scores`, one condition; batched in JAX over conditions in blocks of
16 by :func:`evaluate_perturbations`):

* ``pearson_delta_ctrl = corr(xh - c, x - c)`` over all genes: cell-eval's ``pearson_delta``
  (ArcInstitute/cell-eval ``src/cell_eval/metrics/_anndata.py``; mean differences from control). Trap: a shift
  shared by every perturbation (e.g. a stress signature of all perturbed cells vs control) is "predicted" by
  any model that learnt it, so a model returning one profile for every perturbation scores well. Hence also
* ``pearson_delta_ref = corr(xh - r, x - r)``, the same correlation against the perturbed centroid (the
  reference of Vinas Torne et al. 2025, "Systema"), which removes the shared shift.
* ``mse = mean_g (xh - x)^2`` over all genes: cell-eval's ``mse`` (same file). Trap: unweighted MSE rewards
  shrinking towards the mean profile; read it beside the baselines.
* ``rmse_top = sqrt(mean_{g in T} (xh - x)^2)`` and ``l2_top = sqrt(sum_{g in T} (xh - x)^2)`` on the set ``T``
  of the 1,000 most expressed genes (highest mean of the control cells; all genes when fewer): the L2 distance
  of Ahlmann-Eltze, Huber & Anders (Nature Methods 2025) and PerturBench's RMSE of averages.
* ``cosine_logfc = cos(l(xh), l(x))`` over all genes with PerturBench's log fold change of log-normalised means
  ``l(v) = log2(v + 0.1) - log2(c + 0.1)`` (Wu et al. 2024, altoslabs/perturbench
  ``src/perturbench/analysis/benchmarks/aggregation.py`` ``logFC_helper``, pseudocount 0.1, and
  ``metrics.py`` ``compute_metric(metric="cosine")``). Predicted means below 0 are clipped to 0 in ``l``.
* ``r2_mean_deg = 1 - sum_D (x - xh)^2 / sum_D (x - mean_D x)^2``: the coefficient of determination with the
  observed values as ``y_true`` (``sklearn.metrics.r2_score(x_D, xh_D)``) over ``D``, the top-100 DEGs;
  ``pearson2_mean_deg = corr_D(xh, x)^2``: the squared Pearson correlation that scGen (Lotfollahi et al.,
  Nature Methods 2019) reports as "R^2" (``scipy.stats.linregress``' ``r**2``), labelled as such for
  comparison; ``r2_logfc_deg``: the coefficient of determination of ``l(xh)`` vs ``l(x)`` over ``D``. DEGs
  rather than all genes because R^2 over all genes rewards predicting no change (most genes do not move).
  Undefined (NaN) when ``x`` is constant on ``D``. (PerturBench's ``compute_metric`` passes the prediction as
  ``y_true``; we use the observed values, the usual convention.)
* ``deg_recall_k`` (k = 20, 100): cell-eval's ``overlap_at_k`` (``src/cell_eval/_types/_de.py``
  ``DEComparison.compute_overlap``, ``metrics/_de.py`` ``de_overlap_metric``). The observed DE list is the genes
  with Benjamini-Hochberg FDR < 0.05 in a two-sided Mann-Whitney (Wilcoxon rank-sum) test of the perturbed vs
  the control cells, ordered by ``|log2 FC|`` with pdex's fold change of back-transformed means
  ``log2(expm1(x) / expm1(c))`` (0 when both are 0); the predicted list is the same for the predicted cells
  vs the (real) control cells; ``recall = |observed[:k'] & predicted[:k']| / k'`` with
  ``k' = min(k, #observed significant)`` (NaN when no observed gene is significant; cell-eval reports 0 there).
  It needs predicted *cells* (a test of the prediction), so it is a distribution metric like the energy
  distance: a mean profile alone cannot be tested, and ranking its genes by fold change without a test lets
  large, noisy fold changes of lowly expressed genes in (a perfect mean prediction scores about 0.75 on
  synthetic data). :func:`deg_recall` also takes an ungated predicted fold change.
* ``interaction_corr = corr_I(xh - a, x - a)`` for a combination with additive expectation ``a`` (e.g.
  ``a = c + (x_A - c) + (x_B - c)`` from the observed single perturbations), over the genes ``I`` with a clear
  interaction: ``|x - a| > max(3 se, 0.1)`` with ``se`` the standard error of the observed mean
  (:func:`interaction_genes`); NaN when fewer than 3 genes qualify.

DEGs for the R^2 metrics (:func:`top_degs`): genes ordered by the absolute tie-corrected z-score of the
Mann-Whitney test, i.e. scanpy's ``rank_genes_groups(method="wilcoxon", rankby_abs=True)`` order. scGen took
its top-100 DEGs from the same Wilcoxon ranking by signed score (up-regulated genes first); the absolute value
also counts down-regulated genes. Wilcoxon rather than Welch's t: log1p values of sparse counts are
zero-inflated and far from normal, and it is the test of both scGen and cell-eval (via pdex).

Across conditions (PerturBench's rank metric, ``src/perturbench/analysis/benchmarks/metrics.py`` ``rank_helper``
and ``evaluation.py`` ``evaluate_rank``; :func:`rank_metric`): for the observed profile ``x_p`` of each of the
``N`` conditions, the predictions ``xh_q`` of all conditions are ordered by their similarity to ``x_p`` and
``rank_p = #{q != p : s(xh_q, x_p) better than s(xh_p, x_p)} / N``, ties counting one half (PerturBench breaks
ties by a random shuffle; one half is its expectation). 0: every prediction is closest to its own condition;
``(N - 1) / (2 N)`` (about 0.5): one profile for every condition, which fit metrics cannot catch.
``rank_cosine_logfc`` uses ``cos(l(xh_q), l(x_p))`` (each with its own control), ``rank_rmse_mean`` the RMSE of
means over all genes (PerturBench's two ranked pipelines). cell-eval's ``discrimination_score`` ranks the other
way round (observed profiles around one prediction).

Distribution metrics (only for methods that give predicted cells): ``energy_distance``, the squared energy
distance (U-statistic, :func:`~genjax.metrics.energy_distance`) between observed and predicted cells in one
PCA space fitted on the real cells (observed + control); the pseudo-method ``ceiling`` gives, per condition,
the same distance between two random disjoint halves of the observed cells (:func:`split_half_ceiling`, the
real-vs-real floor of cell-eval's ``compute_ceiling`` split): a prediction near it is as close as a second
sample of real cells would be (at half depth).

Baselines beside every method (``baselines=True``): ``control`` (predicts the control mean, i.e. no effect and
no DEGs; its cells are as many random control cells as there are observed cells), ``perturbed_mean`` (predicts
the perturbed centroid, one profile for every condition) and ``additive`` (the additive expectation, when
given).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import ndtr

from ._buffer import float_dtype_of
from ._energy_mmd import energy_distance
from ._preprocess import PCA, pca_fit, project

__all__ = [
    "PERTURBATION_METRICS",
    "BASELINE_ROWS",
    "DETest",
    "de_test",
    "top_degs",
    "top_expressed",
    "deg_recall",
    "interaction_genes",
    "logfc",
    "rank_metric",
    "split_half_ceiling",
    "perturbation_scores",
    "evaluate_perturbations",
    "summarise",
]

PSEUDOCOUNT = 0.1
_FDR = 0.05
_BLOCK = 16  # conditions per batched JAX call (padded): one compilation per gene count
_RANK_BLOCK = 64  # observed profiles per block of the rank similarity matrix
_DE_GENES = 1024  # genes per block of the rank-sum test

PERTURBATION_METRICS: dict[str, dict[str, Any]] = {
    "pearson_delta_ctrl": dict(ideal=1.0, better="higher", doc="corr(pred - ctrl, obs - ctrl), all genes"),
    "pearson_delta_ref": dict(ideal=1.0, better="higher",
                              doc="corr(pred - ref, obs - ref), all genes, ref = perturbed centroid"),
    "mse": dict(ideal=0.0, better="lower", doc="mean squared error of the mean profile, all genes"),
    "rmse_top": dict(ideal=0.0, better="lower", doc="RMSE of the mean profile on the top expressed genes"),
    "l2_top": dict(ideal=0.0, better="lower", doc="L2 distance of the mean profile on the top expressed genes"),
    "cosine_logfc": dict(ideal=1.0, better="higher",
                         doc="cosine of log2(mean + 0.1) - log2(ctrl + 0.1), all genes (PerturBench)"),
    "rank_cosine_logfc": dict(ideal=0.0, better="lower", doc="PerturBench rank of cosine_logfc (0.5 random)"),
    "rank_rmse_mean": dict(ideal=0.0, better="lower", doc="PerturBench rank of the RMSE of means (0.5 random)"),
    "r2_mean_deg": dict(ideal=1.0, better="higher", doc="coefficient of determination of means, top DEGs"),
    "pearson2_mean_deg": dict(ideal=1.0, better="higher", doc="squared Pearson of means, top DEGs (scGen R^2)"),
    "r2_logfc_deg": dict(ideal=1.0, better="higher", doc="coefficient of determination of logFC, top DEGs"),
    "deg_recall_20": dict(ideal=1.0, better="higher", doc="cell-eval overlap of the top 20 DEGs"),
    "deg_recall_100": dict(ideal=1.0, better="higher", doc="cell-eval overlap of the top 100 DEGs"),
    "energy_distance": dict(ideal=0.0, better="lower", doc="squared energy distance of cells in PCA space"),
    "interaction_corr": dict(ideal=1.0, better="higher",
                             doc="corr(pred - additive, obs - additive) on genes with a clear interaction"),
}
"""The metrics of :func:`evaluate_perturbations`: ideal value, direction and a one-line definition (see the
module docstring for the formulas and references). ``deg_recall_<k>`` exists for every ``k`` of ``recall_at``."""

BASELINE_ROWS = ("control", "perturbed_mean", "additive", "ceiling")
"""Method names reserved for the baseline rows of :func:`evaluate_perturbations`."""


# ----------------------------------------------------------------------------------------------------------------
# validation helpers


def _matrix(x, name: str, genes: int | None = None, min_rows: int = 1) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (cells, genes) matrix; got shape {x.shape}")
    if genes is not None and x.shape[1] != genes:
        raise ValueError(f"{name} has {x.shape[1]} genes; expected {genes} (shape {x.shape})")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} cells; got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _vector(x, name: str, genes: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D (genes,) profile; got shape {x.shape}")
    if genes is not None and x.shape[0] != genes:
        raise ValueError(f"{name} has {x.shape[0]} genes; expected {genes}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _indices(idx, genes: int, name: str) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape != (genes,):
            raise ValueError(f"{name}: a boolean mask must have shape ({genes},); got {idx.shape}")
        return np.flatnonzero(idx)
    idx = idx.astype(np.int64).ravel()
    if idx.size and (idx.min() < -genes or idx.max() >= genes):
        raise ValueError(f"{name}: gene indices out of range for {genes} genes")
    return np.unique(idx % genes)


# ----------------------------------------------------------------------------------------------------------------
# differential expression, gene sets


class DETest(NamedTuple):
    """A per-gene two-sample test of perturbed vs control cells (all ``(genes,)`` float64).

    Fields:
        log2fc: pdex's fold change ``log2(expm1(mean x) / expm1(mean y))`` of back-transformed log1p means (0
            when both are 0, +-inf when one is).
        z: tie-corrected Mann-Whitney z-score of the perturbed cells (positive: higher than control), without
            continuity correction (0 where every value is tied).
        pvalue: two-sided asymptotic p-value with tie and continuity corrections (scipy's
            ``mannwhitneyu(method="asymptotic")``, numba-mwu's), 1 where every value is tied.
        fdr: Benjamini-Hochberg adjusted p-values.
    """

    log2fc: np.ndarray
    z: np.ndarray
    pvalue: np.ndarray
    fdr: np.ndarray


def _geo_log2fc(mean, ctrl_mean) -> np.ndarray:
    """pdex's ``log2(expm1(m) / expm1(c))`` (epsilon 0), 0 where both back-transformed means are 0."""
    a = np.expm1(np.asarray(mean, np.float64))
    b = np.expm1(np.asarray(ctrl_mean, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log2(a / b)
    return np.where((a == 0) & (b == 0), 0.0, out)


def _rank_sums(both: np.ndarray, n1: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``both`` ``(genes, n)``: the sum of the average ranks (1-based, ties averaged) of the first
    ``n1`` entries and the tie term ``sum_t (t^3 - t)`` over the runs of equal values."""
    g, n = both.shape
    order = np.argsort(both, axis=1)
    s = np.take_along_axis(both, order, 1)
    pos = np.broadcast_to(np.arange(n), (g, n))
    new = np.ones((g, n), bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)  # first position of each entry's run
    last = np.ones((g, n), bool)
    last[:, :-1] = new[:, 1:]
    end = n - 1 - np.maximum.accumulate(np.where(last[:, ::-1], pos, 0), axis=1)[:, ::-1]  # its last position
    t = (end - start + 1).astype(np.float64)
    avg = (start + end) / 2.0 + 1.0
    return np.sum(np.where(order < n1, avg, 0.0), axis=1), np.sum(t * t - 1.0, axis=1)


def _bh(p: np.ndarray) -> np.ndarray:
    m = p.size
    order = np.argsort(p, kind="stable")
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def de_test(cells, ctrl_cells) -> DETest:
    """Two-sided Mann-Whitney (Wilcoxon rank-sum) test per gene of perturbed vs control cells, with BH FDR and
    pdex's log2 fold change (cell-eval's differential expression).

    Arguments:
        cells: ``(n, genes)`` log1p expression of the perturbed cells, ``n >= 1``.
        ctrl_cells: ``(m, genes)`` log1p expression of the control cells, ``m >= 1``.

    Returns:
        A :class:`DETest` of ``(genes,)`` float64 arrays.

    Raises:
        ValueError: not 2-D, different gene counts, no cells, NaN or inf.
    """
    x = _matrix(cells, "cells")
    y = _matrix(ctrl_cells, "ctrl_cells", genes=x.shape[1])
    n1, n2 = x.shape[0], y.shape[0]
    n, g = n1 + n2, x.shape[1]
    u1, tie = np.empty(g), np.empty(g)
    dtype = np.result_type(x.dtype, y.dtype, np.float32)
    for lo in range(0, g, _DE_GENES):  # gene blocks: bounded memory for many cells x genes
        hi = min(lo + _DE_GENES, g)
        both = np.concatenate([x[:, lo:hi], y[:, lo:hi]]).astype(dtype).T.copy()  # rows: genes (contiguous)
        r1, tie[lo:hi] = _rank_sums(both, n1)
        u1[lo:hi] = r1 - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else np.zeros(g)
    sd = np.sqrt(np.maximum(var, 0.0))
    ok = sd > 0
    safe = np.where(ok, sd, 1.0)
    z = np.where(ok, (u1 - mu) / safe, 0.0)
    zc = (np.abs(u1 - mu) - 0.5) / safe  # continuity-corrected, for the p-value
    p = np.where(ok, np.clip(2.0 * ndtr(-zc), 0.0, 1.0), 1.0)
    return DETest(_geo_log2fc(x.mean(0, dtype=np.float64), y.mean(0, dtype=np.float64)), z, p, _bh(p))


def top_degs(cells, ctrl_cells, n: int = 100) -> np.ndarray:
    """The ``n`` most differentially expressed genes of perturbed vs control cells.

    Genes are ordered by the absolute tie-corrected Mann-Whitney z-score (:func:`de_test`), i.e. scanpy's
    ``rank_genes_groups(method="wilcoxon", rankby_abs=True)`` order (scGen's top-100 DEGs come from the signed
    version of this ranking); ties keep gene order.

    Arguments:
        cells: ``(n_cells, genes)`` log1p expression of the perturbed cells, or a :class:`DETest` (then
            ``ctrl_cells`` is ignored).
        ctrl_cells: ``(m, genes)`` log1p expression of the control cells.
        n: number of genes (all genes when fewer).

    Returns:
        ``(min(n, genes),)`` int64 gene indices, most significant first.

    Raises:
        ValueError: bad shapes or values (see :func:`de_test`), ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    de = cells if isinstance(cells, DETest) else de_test(cells, ctrl_cells)
    return np.argsort(-np.abs(de.z), kind="stable")[:n].astype(np.int64)


def top_expressed(cells, n: int = 1000) -> np.ndarray:
    """The ``n`` genes with the highest mean log1p expression (e.g. of the control cells).

    Arguments:
        cells: ``(n_cells, genes)`` log1p expression, or a ``(genes,)`` mean profile.
        n: number of genes (all genes when fewer).

    Returns:
        ``(min(n, genes),)`` int64 gene indices, highest mean first (ties keep gene order).

    Raises:
        ValueError: not 1-D or 2-D, NaN or inf, ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    x = np.asarray(cells)
    mean = _vector(x, "cells") if x.ndim == 1 else _matrix(x, "cells").mean(0, dtype=np.float64)
    return np.argsort(-mean, kind="stable")[:n].astype(np.int64)


def deg_recall(true_de: DETest, pred, k: int, *, fdr: float = _FDR) -> float:
    """cell-eval's ``overlap_at_k`` of the observed and predicted DE gene lists.

    The observed list holds the genes with ``true_de.fdr < fdr`` ordered by ``|true_de.log2fc|``; the predicted
    list the genes with ``pred.fdr < fdr`` ordered by ``|pred.log2fc|`` (exactly cell-eval), or, when ``pred``
    is a fold-change vector, all genes ordered by its absolute value (ties keep gene order). With
    ``k' = min(k, len(observed list))`` the recall is ``|observed[:k'] & predicted[:k']| / k'``.

    Arguments:
        true_de: :func:`de_test` of the observed vs control cells.
        pred: :func:`de_test` of the predicted vs control cells, or a ``(genes,)`` predicted log2 fold change
            in pdex's units (e.g. ``log2(expm1(pred_mean) / expm1(ctrl_mean))``), not gated.
        k: list length.
        fdr: significance threshold (cell-eval's 0.05).

    Returns:
        A float in [0, 1]; NaN when no observed gene is significant.

    Raises:
        ValueError: shape mismatch, ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    g = true_de.log2fc.shape[0]
    lfc = np.asarray(pred.log2fc if isinstance(pred, DETest) else pred, np.float64)
    if lfc.shape != (g,):
        raise ValueError(f"the predicted fold change must have shape ({g},); got {lfc.shape}")
    sig = np.flatnonzero(true_de.fdr < fdr)
    true_list = sig[np.argsort(-np.abs(true_de.log2fc[sig]), kind="stable")]
    cand = np.flatnonzero(pred.fdr < fdr) if isinstance(pred, DETest) else np.arange(g)
    key = np.abs(lfc[cand])
    key = np.where(np.isnan(key), -np.inf, key)
    pred_list = cand[np.argsort(-key, kind="stable")]
    k_eff = min(k, true_list.size)
    if k_eff == 0:
        return math.nan
    return np.intersect1d(true_list[:k_eff], pred_list[:k_eff]).size / k_eff


def interaction_genes(true_cells, additive_mean, *, z: float = 3.0, min_effect: float = 0.1) -> np.ndarray:
    """Genes with a clear genetic interaction: the observed mean departs from the additive expectation.

    A gene qualifies when ``|mean(true_cells) - additive_mean| > max(z * se, min_effect)`` with ``se`` the
    standard error of the observed mean (``std(ddof=1) / sqrt(n)``): beyond sampling noise and not negligible
    (the floor also guards genes that are constant, e.g. never detected, in the observed cells).

    Arguments:
        true_cells: ``(n, genes)`` observed log1p expression of the combination, ``n >= 2``.
        additive_mean: ``(genes,)`` additive expectation in log1p units (e.g. ``x_A + x_B - c``).
        z: number of standard errors.
        min_effect: smallest departure counted, in log1p units.

    Returns:
        int64 gene indices (ascending).

    Raises:
        ValueError: bad shapes, fewer than 2 cells, NaN or inf.
    """
    x = _matrix(true_cells, "true_cells", min_rows=2).astype(np.float64)
    a = _vector(additive_mean, "additive_mean", genes=x.shape[1])
    se = x.std(0, ddof=1) / math.sqrt(x.shape[0])
    return np.flatnonzero(np.abs(x.mean(0) - a) > np.maximum(z * se, min_effect)).astype(np.int64)


def logfc(mean, ctrl_mean, pseudocount: float = PSEUDOCOUNT):
    """PerturBench's log fold change of log-normalised means: ``log2(max(mean, 0) + p) - log2(ctrl + p)``.

    Arguments:
        mean: ``(..., genes)`` mean log1p profile(s).
        ctrl_mean: ``(..., genes)`` control mean profile(s), broadcastable against ``mean``.
        pseudocount: ``p`` (PerturBench's 0.1).

    Returns:
        numpy float64 array of the broadcast shape.
    """
    m = np.maximum(np.asarray(mean, np.float64), 0.0)
    c = np.maximum(np.asarray(ctrl_mean, np.float64), 0.0)
    return np.log2(m + pseudocount) - np.log2(c + pseudocount)


# ----------------------------------------------------------------------------------------------------------------
# batched mean-profile metrics (JAX)


def _wmean(v, w):
    return jnp.sum(v * w, -1, keepdims=True) / jnp.sum(w, -1, keepdims=True)


def _wpearson(a, b, w):
    a = a - _wmean(a, w)
    b = b - _wmean(b, w)
    den = jnp.sqrt(jnp.sum(w * a * a, -1) * jnp.sum(w * b * b, -1))
    return jnp.where(den > 0, jnp.sum(w * a * b, -1) / jnp.where(den > 0, den, 1.0), jnp.nan)


def _wr2(y_true, y_pred, w):
    ss_res = jnp.sum(w * (y_true - y_pred) ** 2, -1)
    ss_tot = jnp.sum(w * (y_true - _wmean(y_true, w)) ** 2, -1)
    return jnp.where(ss_tot > 0, 1.0 - ss_res / jnp.where(ss_tot > 0, ss_tot, 1.0), jnp.nan)


def _cosine(a, b):
    den = jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))
    return jnp.where(den > 0, jnp.sum(a * b, -1) / jnp.where(den > 0, den, 1.0), jnp.nan)


@jax.jit
def _profile_block(pred, true, ctrl, ref, lfc_pred, lfc_true, top, deg, add, gi):
    """Mean-profile metrics of a block of conditions; every argument is ``(B, genes)`` (masks in {0, 1})."""
    ones = jnp.ones_like(pred)
    d2 = (pred - true) ** 2
    sq_top = jnp.sum(top * d2, -1)
    return {
        "pearson_delta_ctrl": _wpearson(pred - ctrl, true - ctrl, ones),
        "pearson_delta_ref": _wpearson(pred - ref, true - ref, ones),
        "mse": jnp.mean(d2, -1),
        "rmse_top": jnp.sqrt(sq_top / jnp.sum(top, -1)),
        "l2_top": jnp.sqrt(sq_top),
        "cosine_logfc": _cosine(lfc_pred, lfc_true),
        "r2_mean_deg": _wr2(true, pred, deg),
        "pearson2_mean_deg": _wpearson(pred, true, deg) ** 2,
        "r2_logfc_deg": _wr2(lfc_true, lfc_pred, deg),
        "interaction_corr": _wpearson(pred - add, true - add, gi),
    }


class _Truth(NamedTuple):
    """What the metrics of one condition need from the observed data."""

    true_mean: np.ndarray
    ctrl_mean: np.ndarray
    ref_mean: np.ndarray
    top: np.ndarray | None  # gene indices
    degs: np.ndarray | None
    de: DETest | None
    additive: np.ndarray | None
    gi: np.ndarray | None  # interaction gene indices


def _profile_scores(pred_means: np.ndarray, truths: Sequence[_Truth], pred_des: Sequence[DETest | None],
                    recall_at: Sequence[int], pseudocount: float) -> list[dict[str, float]]:
    """Mean-profile metrics (and the DEG recall where ``pred_des[i]`` is known) for each row of ``pred_means``
    ``(C, genes)`` against ``truths[i]``."""
    c, g = pred_means.shape
    dtype = float_dtype_of(pred_means)
    out: list[dict[str, float]] = []
    for start in range(0, c, _BLOCK):
        rows = range(start, min(start + _BLOCK, c))
        arrs = {k: np.zeros((_BLOCK, g), np.float64) for k in
                ("pred", "true", "ctrl", "ref", "lfc_pred", "lfc_true", "top", "deg", "add", "gi")}
        for j, i in enumerate(rows):
            t = truths[i]
            arrs["pred"][j], arrs["true"][j], arrs["ctrl"][j] = pred_means[i], t.true_mean, t.ctrl_mean
            arrs["ref"][j] = t.ref_mean
            arrs["lfc_pred"][j] = logfc(pred_means[i], t.ctrl_mean, pseudocount)
            arrs["lfc_true"][j] = logfc(t.true_mean, t.ctrl_mean, pseudocount)
            arrs["top"][j, slice(None) if t.top is None else t.top] = 1.0
            if t.degs is not None:
                arrs["deg"][j, t.degs] = 1.0
            if t.additive is not None:
                arrs["add"][j] = t.additive
                arrs["gi"][j, slice(None) if t.gi is None else t.gi] = 1.0
        res = _profile_block(**{k: jnp.asarray(v, dtype) for k, v in arrs.items()})
        res = {k: np.asarray(v, np.float64) for k, v in res.items()}
        for j, i in enumerate(rows):
            t = truths[i]
            d = {k: float(v[j]) for k, v in res.items()}
            if t.degs is None:
                for k in ("r2_mean_deg", "pearson2_mean_deg", "r2_logfc_deg"):
                    del d[k]
            if t.additive is None:
                del d["interaction_corr"]
            elif t.gi is not None and t.gi.size < 3:
                d["interaction_corr"] = math.nan
            if t.de is not None and pred_des[i] is not None:
                for k in recall_at:
                    d[f"deg_recall_{k}"] = deg_recall(t.de, pred_des[i], k)
            out.append(d)
    return out


# ----------------------------------------------------------------------------------------------------------------
# rank metric (JAX)


@functools.partial(jax.jit, static_argnames=("metric",))
def _similarity(pred, true_block, metric: str):
    """``(Cp, B)`` similarities of every prediction to a block of observed profiles (higher is closer)."""
    if metric == "cosine":
        def unit(v):
            norm = jnp.sqrt(jnp.sum(v * v, -1, keepdims=True))
            return jnp.where(norm > 0, v / jnp.where(norm > 0, norm, 1.0), jnp.nan)

        return unit(pred) @ unit(true_block).T
    d2 = (jnp.sum(pred * pred, -1)[:, None] + jnp.sum(true_block * true_block, -1)[None, :]
          - 2.0 * pred @ true_block.T)
    return -jnp.sqrt(jnp.maximum(d2, 0.0) / pred.shape[-1])


def _pow2(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, n - 1).bit_length())


def rank_metric(pred, true, *, metric: str = "cosine", groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """PerturBench's rank metric: for each condition, the fraction of the predictions that are closer to its
    observed profile than its own prediction is.

    ``rank_p = #{q != p in group(p) : s(pred_q, true_p) better than s(pred_p, true_p)} / N_group``, ties
    counting one half (the expectation of PerturBench's random tie-breaking). 0: perfect; about 0.5
    (``(N - 1) / (2 N)``): a prediction that ignores the condition, e.g. one profile for every condition.

    Arguments:
        pred: ``(conditions, genes)`` predicted profiles (row ``i`` predicts condition ``i``).
        true: ``(conditions, genes)`` observed profiles, same order.
        metric: ``"cosine"`` (similarity; pass log fold changes, see :func:`logfc`, for PerturBench's
            ``rank_cosine_logfc``) or ``"rmse"`` (distance over genes; pass mean profiles for
            ``rank_rmse_mean``).
        groups: optional ``(conditions,)`` labels (e.g. a covariate such as the cell type); conditions are only
            ranked against others of their group, as PerturBench does per covariate.

    Returns:
        ``(conditions,)`` float64 ranks in [0, 1); NaN where the own similarity is undefined (a zero vector
        for ``"cosine"``).

    Raises:
        ValueError: shapes differ or are not 2-D, NaN or inf, unknown ``metric``, wrong ``groups`` length.
    """
    if metric not in ("cosine", "rmse"):
        raise ValueError(f"metric must be one of ('cosine', 'rmse'); got {metric!r}")
    p = _matrix(pred, "pred")
    t = _matrix(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same shape; got {p.shape} and {t.shape}")
    c, g = p.shape
    labels = np.zeros(c, np.int64) if groups is None else pd.factorize(pd.Index(list(groups)))[0]
    if labels.shape != (c,):
        raise ValueError(f"groups must have one label per condition ({c}); got {len(labels)}")
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    if metric == "rmse":  # centre both (a shared shift leaves distances unchanged) for float32 accuracy
        centre = t64.mean(0)
        p64, t64 = p64 - centre, t64 - centre
    dtype = float_dtype_of(p, t)
    cap = _pow2(c, _RANK_BLOCK)
    pp = np.zeros((cap, g), dtype)
    pp[:c] = p64
    pred_dev = jnp.asarray(pp)
    ranks = np.full(c, np.nan)
    for start in range(0, c, _RANK_BLOCK):
        cols = np.arange(start, min(start + _RANK_BLOCK, c))
        tb = np.zeros((_RANK_BLOCK, g), dtype)
        tb[: cols.size] = t64[cols]
        sim = np.asarray(_similarity(pred_dev, jnp.asarray(tb), metric), np.float64)[:c, : cols.size]
        for j, col in enumerate(cols):
            own = sim[col, j]
            if not np.isfinite(own):
                continue
            others = (labels == labels[col]) & (np.arange(c) != col)
            s = sim[others, j]
            tol = 1e-6 * max(1.0, abs(own)) if metric == "cosine" else 1e-5 * abs(own) + 1e-7
            better = np.sum(s > own + tol)
            ties = np.sum(np.abs(s - own) <= tol)
            ranks[col] = (better + 0.5 * ties) / (others.sum() + 1)
    return ranks


# ----------------------------------------------------------------------------------------------------------------
# distribution metrics


def split_half_ceiling(true_cells, *, pca: PCA | None = None, seed: int = 0) -> float:
    """Squared energy distance (U-statistic) between two random disjoint halves of the observed cells.

    The real-vs-real ceiling of the energy distance of predicted cells: each half has ``floor(n / 2)`` cells
    (one left out when ``n`` is odd), the split is a seeded permutation.

    Arguments:
        true_cells: ``(n, genes)`` observed log1p expression (or already PC scores when ``pca`` is None),
            ``n >= 4``.
        pca: the PCA space of the comparison (:func:`~genjax.metrics.pca_fit` of the real cells); None: the
            space of ``true_cells`` as given.
        seed: numpy seed of the split.

    Returns:
        A Python float (0 in expectation).

    Raises:
        ValueError: fewer than 4 cells, NaN or inf, a gene count other than the PCA's.
    """
    x = _matrix(true_cells, "true_cells", min_rows=4)
    if pca is not None:
        if x.shape[1] != pca.mean.shape[0]:
            raise ValueError(f"true_cells has {x.shape[1]} genes; the PCA has {pca.mean.shape[0]}")
        x = project(pca, x)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    h = x.shape[0] // 2
    return energy_distance(x[perm[:h]], x[perm[h:2 * h]])


# ----------------------------------------------------------------------------------------------------------------
# one condition


def perturbation_scores(
    pred_mean,
    true_mean,
    ctrl_mean,
    *,
    reference_mean=None,
    top_genes=None,
    degs=None,
    true_de: DETest | None = None,
    pred_de: DETest | None = None,
    pred_cells=None,
    true_cells=None,
    ctrl_cells=None,
    pca: PCA | None = None,
    additive_mean=None,
    interaction_genes_idx=None,
    n_degs: int = 100,
    recall_at: Sequence[int] = (20, 100),
    pseudocount: float = PSEUDOCOUNT,
) -> dict[str, float]:
    """The metrics of one condition (module docstring for the definitions); the rank metrics need every
    condition of a method (:func:`rank_metric`).

    Arguments:
        pred_mean: ``(genes,)`` predicted mean log1p profile; None: the mean of ``pred_cells``.
        true_mean: ``(genes,)`` observed mean log1p profile of the perturbed cells; None: the mean of
            ``true_cells``.
        ctrl_mean: ``(genes,)`` mean log1p profile of the matching control cells; None: the mean of
            ``ctrl_cells``.
        reference_mean: ``(genes,)`` reference of ``pearson_delta_ref`` (the perturbed centroid); omitted when
            None.
        top_genes: gene indices (or a boolean mask) of ``rmse_top`` / ``l2_top``; None: all genes.
        degs: gene indices of the DEG metrics (``r2_mean_deg``, ``pearson2_mean_deg``, ``r2_logfc_deg``); None:
            the top ``n_degs`` of ``true_de`` (:func:`top_degs`) when it is known, else those metrics are
            omitted.
        true_de: :func:`de_test` of the observed vs control cells (DEGs and ``deg_recall_<k>``); None: computed
            when ``true_cells`` and ``ctrl_cells`` are given.
        pred_de: :func:`de_test` of the predicted vs control cells (``deg_recall_<k>``); None: computed when
            ``pred_cells`` and ``ctrl_cells`` are given. The recall is omitted without both tests.
        pred_cells: ``(m, genes)`` predicted cells (``m >= 2``), for ``energy_distance`` and the recall.
        true_cells: ``(n, genes)`` observed perturbed cells (``n >= 2``).
        ctrl_cells: ``(k, genes)`` control cells.
        pca: the PCA space of ``energy_distance`` (:func:`~genjax.metrics.pca_fit` of the real cells); None:
            the gene space.
        additive_mean: ``(genes,)`` additive expectation of a combination, for ``interaction_corr``.
        interaction_genes_idx: the genes of ``interaction_corr``; None: :func:`interaction_genes` of
            ``true_cells`` when given, else all genes.
        n_degs: number of DEGs when ``degs`` is None.
        recall_at: the ``k`` of ``deg_recall_<k>``.
        pseudocount: of the PerturBench log fold change (:func:`logfc`).

    Returns:
        ``{metric: float}`` with the metrics that the inputs allow (NaN where a metric is undefined, e.g. a
        correlation with a constant vector).

    Raises:
        ValueError: shape mismatches, NaN or inf, a missing mean without its cells.
    """
    def cells_or_none(x, name):
        return None if x is None else _matrix(x, name, min_rows=1)

    pred_cells = cells_or_none(pred_cells, "pred_cells")
    true_cells = cells_or_none(true_cells, "true_cells")
    ctrl_cells = cells_or_none(ctrl_cells, "ctrl_cells")

    def mean_of(m, cells, name):
        if m is not None:
            return _vector(m, name)
        if cells is None:
            raise ValueError(f"{name} is None and no cells were given to average")
        return cells.mean(0, dtype=np.float64)

    true = mean_of(true_mean, true_cells, "true_mean")
    g = true.shape[0]
    pred = _vector(mean_of(pred_mean, pred_cells, "pred_mean"), "pred_mean", g)
    ctrl = _vector(mean_of(ctrl_mean, ctrl_cells, "ctrl_mean"), "ctrl_mean", g)
    for name, x in (("pred_cells", pred_cells), ("true_cells", true_cells), ("ctrl_cells", ctrl_cells)):
        if x is not None and x.shape[1] != g:
            raise ValueError(f"{name} has {x.shape[1]} genes; expected {g} (shape {x.shape})")
    ref = None if reference_mean is None else _vector(reference_mean, "reference_mean", g)
    if true_de is None and true_cells is not None and ctrl_cells is not None:
        true_de = de_test(true_cells, ctrl_cells)
    if pred_de is None and pred_cells is not None and ctrl_cells is not None:
        pred_de = de_test(pred_cells, ctrl_cells)
    for name, de in (("true_de", true_de), ("pred_de", pred_de)):
        if de is not None and de.log2fc.shape != (g,):
            raise ValueError(f"{name} has shape {de.log2fc.shape}; expected ({g},)")
    if degs is not None:
        degs = _indices(degs, g, "degs")
    elif true_de is not None:
        degs = top_degs(true_de, None, n_degs)
    add = gi = None
    if additive_mean is not None:
        add = _vector(additive_mean, "additive_mean", g)
        if interaction_genes_idx is not None:
            gi = _indices(interaction_genes_idx, g, "interaction_genes_idx")
        elif true_cells is not None and true_cells.shape[0] >= 2:
            gi = interaction_genes(true_cells, add)
    truth = _Truth(true, ctrl, ref if ref is not None else ctrl,
                   None if top_genes is None else _indices(top_genes, g, "top_genes"), degs, true_de, add, gi)
    scores = _profile_scores(pred[None, :], [truth], [pred_de], recall_at, pseudocount)[0]
    if ref is None:
        del scores["pearson_delta_ref"]
    if pred_cells is not None and true_cells is not None:
        if pred_cells.shape[0] < 2 or true_cells.shape[0] < 2:
            raise ValueError("energy_distance needs at least 2 predicted and 2 observed cells; got "
                             f"{pred_cells.shape[0]} and {true_cells.shape[0]}")
        if pca is not None and pca.mean.shape[0] != g:
            raise ValueError(f"the PCA has {pca.mean.shape[0]} genes; expected {g}")
        a, b = (true_cells, pred_cells) if pca is None else (project(pca, true_cells), project(pca, pred_cells))
        scores["energy_distance"] = energy_distance(a, b)
    return scores


# ----------------------------------------------------------------------------------------------------------------
# many conditions, many methods


def _fit_pca(real: list[np.ndarray], n_components: int, max_cells: int, seed: int) -> PCA:
    sizes = np.array([m.shape[0] for m in real])
    total = int(sizes.sum())
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, max_cells, replace=False)) if total > max_cells else np.arange(total)
    offsets = np.r_[0, np.cumsum(sizes)]
    rows = [m[pick[(pick >= lo) & (pick < hi)] - lo] for m, lo, hi in zip(real, offsets[:-1], offsets[1:],
                                                                           strict=True)]
    x = np.concatenate(rows).astype(np.float32)
    k = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    return pca_fit(x, k)


def evaluate_perturbations(
    observed: Mapping[str, Any],
    controls,
    predictions: Mapping[str, Mapping[str, Any]],
    *,
    reference=None,
    additive: Mapping[str, Any] | None = None,
    groups: Mapping[str, Hashable] | None = None,
    baselines: bool = True,
    n_top_genes: int = 1000,
    n_degs: int = 100,
    recall_at: Sequence[int] = (20, 100),
    n_components: int = 50,
    max_pca_cells: int = 10000,
    pseudocount: float = PSEUDOCOUNT,
    seed: int = 0,
) -> pd.DataFrame:
    """Every perturbation metric of every method and condition, beside the baselines, as a tidy table.

    Per condition: the observed mean, the control mean, the top ``n_top_genes`` expressed genes of the control
    cells, the DE test of observed vs control cells (its top ``n_degs`` genes by Wilcoxon ``|z|`` for the R^2
    metrics; its FDR-gated fold-change list for ``deg_recall_<k>``, which, like ``energy_distance``, is only
    computed for predicted cells) and, for combinations in ``additive``, the genes
    with a clear interaction. One PCA (``n_components``, centred, fitted on up to ``max_pca_cells`` random real
    cells: observed + controls) serves every energy distance and the split-half ``ceiling``. The rank metrics
    are computed over all conditions of a method (within ``groups`` when given).

    Arguments:
        observed: condition -> ``(cells, genes)`` log1p expression of the real perturbed cells (>= 2 cells).
        controls: condition -> ``(cells, genes)`` log1p expression of the matching control cells, or one
            matrix for every condition.
        predictions: method -> condition -> a ``(genes,)`` predicted mean profile or a ``(cells, genes)``
            matrix of predicted cells (>= 2; ``energy_distance`` and ``deg_recall_<k>`` only for these). A
            method may cover a subset
            of the conditions.
        reference: reference of ``pearson_delta_ref``: None (the perturbed centroid, the mean of the observed
            condition means), one ``(genes,)`` profile, or condition -> ``(genes,)``.
        additive: condition -> ``(genes,)`` additive expectation of a combination (log1p units), for
            ``interaction_corr`` and the ``additive`` baseline.
        groups: condition -> group label (e.g. the cell type) for the rank metrics; None: one group.
        baselines: add the ``control``, ``perturbed_mean``, ``additive`` (when given) and ``ceiling`` rows.
        n_top_genes: genes of ``rmse_top`` / ``l2_top`` (all genes when fewer).
        n_degs: DEGs of the R^2 metrics.
        recall_at: the ``k`` of ``deg_recall_<k>``.
        n_components: PCA components of ``energy_distance`` (at most cells - 1 and genes).
        max_pca_cells: real cells the PCA is fitted on (a seeded random subset when more).
        pseudocount: of the PerturBench log fold change.
        seed: numpy seed of the PCA subset and of the split-half ceiling.

    Returns:
        A pandas DataFrame with columns ``method, condition, metric, value, n_cells`` (``n_cells``: observed
        cells of the condition), one row per computed metric, methods in the order baselines, then
        ``predictions``; NaN values mark undefined metrics (e.g. a correlation with a constant vector).

    Raises:
        ValueError: no observed conditions, shape mismatches (naming the condition), NaN or inf, a predicted
            condition that is not observed, a control missing for a condition, a method named like a
            baseline, fewer than 2 cells.
    """
    if not observed:
        raise ValueError("observed has no conditions")
    conditions = list(observed)
    first = np.asarray(observed[conditions[0]])
    if first.ndim != 2:
        raise ValueError(f"observed[{conditions[0]!r}] must be 2-D (cells, genes); got shape {first.shape}")
    g = first.shape[1]
    obs = {c: _matrix(observed[c], f"observed[{c!r}]", genes=g, min_rows=2) for c in conditions}
    if isinstance(controls, Mapping):
        missing = [c for c in conditions if c not in controls]
        if missing:
            raise ValueError(f"controls has no entry for condition {missing[0]!r}")
        ctrl_in = dict(controls)
    else:
        ctrl_in = {c: controls for c in conditions}
    ctrls: dict[str, np.ndarray] = {}
    checked: dict[int, np.ndarray] = {}
    for c in conditions:
        raw = ctrl_in[c]
        if id(raw) not in checked:
            checked[id(raw)] = _matrix(raw, f"controls[{c!r}]", genes=g, min_rows=1)
        ctrls[c] = checked[id(raw)]
    bad = [m for m in predictions if m in BASELINE_ROWS]
    if bad:
        raise ValueError(f"method name {bad[0]!r} is reserved for a baseline; rename it")
    for m, preds in predictions.items():
        for c, v in preds.items():
            if c not in obs:
                raise ValueError(f"predictions[{m!r}] has condition {c!r}, which is not in observed")
            v = np.asarray(v)
            if v.ndim not in (1, 2) or v.shape[-1] != g:
                raise ValueError(f"predictions[{m!r}][{c!r}] must be (genes,) or (cells, genes) with {g} genes; "
                                 f"got shape {v.shape}")
            if v.ndim == 2 and v.shape[0] < 2:
                raise ValueError(f"predictions[{m!r}][{c!r}] needs at least 2 predicted cells; got {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"predictions[{m!r}][{c!r}] contains NaN or inf")
    additive = dict(additive or {})
    for c, v in additive.items():
        if c not in obs:
            raise ValueError(f"additive has condition {c!r}, which is not in observed")
        _vector(v, f"additive[{c!r}]", g)
    group_of = None
    if groups is not None:
        missing = [c for c in conditions if c not in groups]
        if missing:
            raise ValueError(f"groups has no entry for condition {missing[0]!r}")
        group_of = dict(groups)

    # observed side, once per condition
    true_means = {c: obs[c].mean(0, dtype=np.float64) for c in conditions}
    ctrl_means = {id(m): m.mean(0, dtype=np.float64) for m in checked.values()}
    centroid = np.mean(np.stack([true_means[c] for c in conditions]), 0)
    if reference is None:
        refs = {c: centroid for c in conditions}
    elif isinstance(reference, Mapping):
        refs = {}
        for c in conditions:
            if c not in reference:
                raise ValueError(f"reference has no entry for condition {c!r}")
            refs[c] = _vector(reference[c], f"reference[{c!r}]", g)
    else:
        r = _vector(reference, "reference", g)
        refs = {c: r for c in conditions}
    tops = {i: top_expressed(ctrl_means[i], n_top_genes) for i in ctrl_means}
    truths: dict[str, _Truth] = {}
    for c in conditions:
        de = de_test(obs[c], ctrls[c])
        add = None if c not in additive else np.asarray(additive[c], np.float64)
        gi = None if add is None else interaction_genes(obs[c], add)
        truths[c] = _Truth(true_means[c], ctrl_means[id(ctrls[c])], refs[c], tops[id(ctrls[c])],
                           top_degs(de, None, n_degs), de, add, gi)

    pca = _fit_pca([obs[c] for c in conditions] + list(checked.values()), n_components, max_pca_cells, seed)
    true_pcs = {c: project(pca, obs[c]) for c in conditions}

    # method -> condition -> (mean profile, cells or None, DE test of the cells or None)
    methods: dict[str, dict[str, tuple]] = {}
    if baselines:
        rng = np.random.default_rng(seed)
        no_degs = DETest(np.zeros(g), np.zeros(g), np.ones(g), np.ones(g))
        methods["control"] = {}
        for c in conditions:  # no change: the control mean; as cells, random control cells (observed count)
            k = ctrls[c].shape[0]
            pick = np.sort(rng.choice(k, obs[c].shape[0], replace=False)) if k > obs[c].shape[0] else slice(None)
            cells = ctrls[c][pick] if k >= 2 else None
            methods["control"][c] = (truths[c].ctrl_mean, cells, no_degs)
        methods["perturbed_mean"] = {c: (centroid, None, None) for c in conditions}
        if additive:
            methods["additive"] = {c: (np.asarray(v, np.float64), None, None) for c, v in additive.items()}
    for m, preds in predictions.items():
        methods[m] = {}
        for c, v in preds.items():
            v = np.asarray(v)
            methods[m][c] = ((v, None, None) if v.ndim == 1 else
                             (v.mean(0, dtype=np.float64), v, de_test(v, ctrls[c])))

    rows: list[tuple] = []
    for method, preds in methods.items():
        conds = [c for c in conditions if c in preds]
        if not conds:
            continue
        pred_means = np.stack([preds[c][0] for c in conds])
        scores = _profile_scores(pred_means, [truths[c] for c in conds], [preds[c][2] for c in conds], recall_at,
                                 pseudocount)
        for c, d in zip(conds, scores, strict=True):
            if preds[c][1] is not None:
                d["energy_distance"] = energy_distance(true_pcs[c], project(pca, preds[c][1]))
        labels = None if group_of is None else [group_of[c] for c in conds]
        true_stack = np.stack([truths[c].true_mean for c in conds])
        ctrl_stack = np.stack([truths[c].ctrl_mean for c in conds])
        ranks = {
            "rank_cosine_logfc": rank_metric(logfc(pred_means, ctrl_stack, pseudocount),
                                             logfc(true_stack, ctrl_stack, pseudocount),
                                             metric="cosine", groups=labels),
            "rank_rmse_mean": rank_metric(pred_means, true_stack, metric="rmse", groups=labels),
        }
        for i, (c, d) in enumerate(zip(conds, scores, strict=True)):
            for name, r in ranks.items():
                d[name] = float(r[i])
            for name, v in d.items():
                rows.append((method, c, name, float(v), obs[c].shape[0]))
    if baselines:
        for c in conditions:
            v = split_half_ceiling(true_pcs[c], seed=seed) if obs[c].shape[0] >= 4 else math.nan
            rows.append(("ceiling", c, "energy_distance", v, obs[c].shape[0]))
    return pd.DataFrame(rows, columns=["method", "condition", "metric", "value", "n_cells"])


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over conditions of every metric, one row per method (for printing).

    Arguments:
        table: a table of :func:`evaluate_perturbations` (columns ``method, condition, metric, value``).

    Returns:
        A wide DataFrame: index ``method`` (in order of appearance), one column per metric (in the order of
        :data:`PERTURBATION_METRICS`, others after), each the mean over the conditions with a value (NaN values
        are left out of the mean; a cell is NaN when a method has no value of that metric).

    Raises:
        ValueError: a required column is missing.
    """
    missing = {"method", "metric", "value"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)}")
    wide = table.groupby(["method", "metric"], sort=False)["value"].mean().unstack("metric")
    wide = wide.reindex(index=pd.unique(table["method"]))
    known = [m for m in PERTURBATION_METRICS if m in wide.columns]
    recall = sorted((m for m in wide.columns if m.startswith("deg_recall_") and m not in known),
                    key=lambda m: int(m.rsplit("_", 1)[1]) if m.rsplit("_", 1)[1].isdigit() else 0)
    rest = [m for m in wide.columns if m not in known and m not in recall]
    wide = wide[known + recall + rest]
    wide.columns.name = None
    return wide
