"""Model-based differential expression from a count VAE's posterior: scvi-tools' ``differential_expression``.

Two groups of cells ``A`` (``group1``) and ``B`` (``group2``, default: every other cell) are compared through
their decoded normalised expression ``rho`` (each cell's proportions, summing to 1 over genes). For each group,
``n`` samples are drawn from the aggregate posterior: cells of the group are picked uniformly, ``z ~ q(z | x)`` is
drawn for each pick and decoded to ``rho``. Sample ``i`` of ``A`` is paired with sample ``i`` of ``B`` (both pools
are in random order, so the pairs are independent draws of the two aggregate posteriors).

* ``mode="vanilla"`` (Lopez et al. 2018, scVI): the hypotheses ``M1: rho_A > rho_B`` and ``M2: rho_A <= rho_B``
  per gene, ``p(M1) = mean_i 1[rho_A,i > rho_B,i]`` and the log Bayes factor
  ``log(p(M1) + eps) - log(p(M2) + eps)`` (``eps = 1e-8``). Rows are sorted by the Bayes factor, largest first
  (genes up in ``A``).
* ``mode="change"`` (Boyeau et al. 2019 / 2023, lvm-DE): the log2 fold change
  ``r_i = log2(rho_A,i + c) - log2(rho_B,i + c)`` with a pseudocount ``c`` is an effect size with a posterior;
  a gene is differentially expressed when ``|r| >= delta``. ``test_mode="two"`` (the paper's) takes
  ``proba_de = mean_i 1[|r_i| >= delta]``; ``test_mode="three"`` (the default, as scvi-tools 1.x) the more
  probable tail, ``max(mean_i 1[r_i >= delta], mean_i 1[r_i <= -delta])``, which does not count a wide posterior
  centred on zero as evidence (the pairs mix cells, so cell-to-cell spread widens every gene's posterior: on
  Kang 2018's CD14 monocytes "two" calls 1448 of 2000 genes at FDR 0.05, 22 of them with ``|lfc_mean| < 0.25``;
  "three" calls 458, none of them). Genes are tagged DE by controlling the posterior expected false
  discovery rate: sorted by ``proba_de``, the largest top set whose mean ``1 - proba_de`` is at most
  ``fdr_target``. Rows are sorted by ``proba_de``, largest first.

Conventions as scvi-tools 1.4: ``pseudocounts=None`` estimates ``c`` from the genes a group does not express
(mean count below ``threshold_counts = 0.01``): the 0.9 quantile over those genes of their largest sampled ``rho``
(the larger of the two groups' values) divided by the number of genes (:func:`estimate_pseudocounts`);
``delta=None`` sets ``delta`` from the distribution of the genes' mean fold changes (a three-component Gaussian
mixture; ``0.6`` times the mean absolute value of its two outer means, at least ``0.1``).
``batch_correction=True`` decodes each group's cells under every category of the model's batch condition and
pairs samples decoded under the same batch.

The pure functions (:func:`vanilla_mode_test`, :func:`change_mode_test`, :func:`log_fold_changes`,
:func:`fdr_selection`, :func:`estimate_pseudocounts`, :func:`estimate_delta`) work on sample arrays and are
independent of any model; :func:`differential_expression` draws the samples from a model and assembles the table.

References:
    Lopez, Regier, Cole, Jordan & Yosef (2018), Deep generative modeling for single-cell transcriptomics,
    Nature Methods 15:1053. Boyeau, Lopez, Regier, Gayoso, Jordan & Yosef (2019), Deep generative models for
    detecting differential expression in single cells, bioRxiv 794289 (Mol. Syst. Biol. 2023, lvm-DE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from .._checks import check_choice, check_int, check_range
from ..data import dense, get_matrix, take_rows

__all__ = ["differential_expression", "vanilla_mode_test", "change_mode_test", "log_fold_changes",
           "fdr_selection", "estimate_pseudocounts", "estimate_delta", "DEMode", "DETestMode"]

DEMode = Literal["vanilla", "change"]
"""Differential expression test: Bayes factor of ``rho_A > rho_B`` (vanilla) or of ``|LFC| >= delta`` (change)."""

DETestMode = Literal["two", "three"]
"""Change-mode event: ``|LFC| >= delta`` ("two": both tails together) or the more probable tail ("three")."""

BAYES_FACTOR_EPS = 1e-8
"""Added to both probabilities of a Bayes factor, so that a probability of 0 or 1 gives a finite value."""

PSEUDOCOUNT_FLOOR = 1e-10
"""The smallest estimated pseudocount (also when no gene is unexpressed in either group), as scvi-tools."""

_GENE_CHUNK = 1024  # genes per block in the sample-array tests (bounds the (samples, genes) temporaries)
_CELL_CHUNK = 4096  # rows per block when reading raw counts


# ----------------------------------------------------------------------------------------------- pure core


def _paired(scales1, scales2) -> tuple[np.ndarray, np.ndarray]:
    """Validate two paired sample arrays (samples, genes): same shape, finite, non-negative."""
    s1, s2 = np.asarray(scales1), np.asarray(scales2)
    for name, s in (("scales1", s1), ("scales2", s2)):
        if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
            raise ValueError(f"{name} must be a non-empty 2-D array (samples, genes); got shape {s.shape}")
        if not np.issubdtype(s.dtype, np.number):
            raise ValueError(f"{name} must hold numbers; got dtype {s.dtype}")
    if s1.shape != s2.shape:
        raise ValueError(f"scales1 and scales2 are paired samples and must have the same shape; got {s1.shape} "
                         f"and {s2.shape}")
    for name, s in (("scales1", s1), ("scales2", s2)):
        bad = ~np.isfinite(s) | (s < 0)
        if bad.any():
            i, g = (int(v[0]) for v in np.nonzero(bad))
            raise ValueError(f"{name} must be finite and >= 0; found {float(s[i, g])!r} at sample {i}, gene {g}")
    return s1, s2


def log_fold_changes(scales1, scales2, pseudocounts: float = 0.0) -> np.ndarray:
    """Paired log2 fold changes ``log2(scales1 + c) - log2(scales2 + c)`` (positive: higher in group 1).

    Arguments:
        scales1, scales2: paired samples of normalised expression, (samples, genes), non-negative.
        pseudocounts: ``c >= 0`` added to both before the logarithm.

    Returns:
        float64 (samples, genes).

    Raises:
        ValueError: shapes differ, negative or non-finite values or pseudocount, or ``c = 0`` with a zero scale
            (naming the sample and gene).
    """
    s1, s2 = _paired(scales1, scales2)
    c = check_range("pseudocounts", pseudocounts, low=0.0)
    if c == 0:
        for name, s in (("scales1", s1), ("scales2", s2)):
            if (s == 0).any():
                i, g = (int(v[0]) for v in np.nonzero(s == 0))
                raise ValueError(f"{name} is 0 at sample {i}, gene {g}: its log fold change is infinite; "
                                 "pass pseudocounts > 0")
    return np.log2(s1.astype(np.float64) + c) - np.log2(s2.astype(np.float64) + c)


def _bayes_factor(p1: np.ndarray) -> np.ndarray:
    return np.log(p1 + BAYES_FACTOR_EPS) - np.log(1.0 - p1 + BAYES_FACTOR_EPS)


def vanilla_mode_test(scales1, scales2) -> dict[str, np.ndarray]:
    """scVI's Bayes factor test of ``M1: rho_1 > rho_2`` against ``M2: rho_1 <= rho_2`` per gene (Lopez et al. 2018).

    Arguments:
        scales1, scales2: paired posterior samples of normalised expression of the two groups, (samples, genes).

    Returns:
        ``{name: float64 (genes,)}``: ``proba_m1 = mean_i 1[s1_i > s2_i]``, ``proba_m2 = 1 - proba_m1``,
        ``bayes_factor = log(proba_m1 + 1e-8) - log(proba_m2 + 1e-8)`` (natural log), ``scale1`` and ``scale2``
        (the sample means).

    Raises:
        ValueError: shapes differ; negative or non-finite samples.
    """
    s1, s2 = _paired(scales1, scales2)
    p1 = np.mean(s1 > s2, axis=0, dtype=np.float64)
    return {"proba_m1": p1, "proba_m2": 1.0 - p1, "bayes_factor": _bayes_factor(p1),
            "scale1": s1.mean(0, dtype=np.float64), "scale2": s2.mean(0, dtype=np.float64)}


def change_mode_test(scales1, scales2, *, delta: float, pseudocounts: float = 0.0,
                     test_mode: DETestMode = "three") -> dict[str, np.ndarray]:
    """Boyeau et al.'s change-mode test: the posterior of the log2 fold change and ``P(|LFC| >= delta)`` per gene.

    Arguments:
        scales1, scales2: paired posterior samples of normalised expression of the two groups, (samples, genes).
        delta: ``>= 0``; fold changes inside ``(-delta, delta)`` (log2 units) do not count as differential.
        pseudocounts: ``c >= 0`` of :func:`log_fold_changes`.
        test_mode: ``"three"`` (default, as scvi-tools 1.x): the more probable tail,
            ``proba_de = max(mean_i 1[r_i >= delta], mean_i 1[r_i <= -delta])``; ``"two"`` (Boyeau et al.):
            ``proba_de = mean_i 1[|r_i| >= delta]``.

    Returns:
        ``{name: float64 (genes,)}``: ``proba_de``, ``proba_not_de = 1 - proba_de``, ``bayes_factor =
        log(proba_de + 1e-8) - log(proba_not_de + 1e-8)``, ``scale1``, ``scale2`` (sample means, without the
        pseudocount), and ``lfc_mean``, ``lfc_median``, ``lfc_std`` (population, ``ddof=0``), ``lfc_min``,
        ``lfc_max`` of the paired fold changes ``r_i = log2(s1_i + c) - log2(s2_i + c)``.

    Raises:
        ValueError: bad ``delta`` / ``pseudocounts`` / ``test_mode`` or sample arrays (see
            :func:`log_fold_changes`).
    """
    delta = check_range("delta", delta, low=0.0)
    check_choice("test_mode", test_mode, DETestMode)
    s1, s2 = _paired(scales1, scales2)
    c = check_range("pseudocounts", pseudocounts, low=0.0)
    out = {k: np.empty(s1.shape[1]) for k in ("proba_de", "lfc_mean", "lfc_median", "lfc_std", "lfc_min",
                                               "lfc_max")}
    for g in range(0, s1.shape[1], _GENE_CHUNK):
        sl = slice(g, g + _GENE_CHUNK)
        r = log_fold_changes(s1[:, sl], s2[:, sl], c)
        if test_mode == "two":
            out["proba_de"][sl] = np.mean(np.abs(r) >= delta, axis=0)
        else:
            out["proba_de"][sl] = np.maximum(np.mean(r >= delta, axis=0), np.mean(r <= -delta, axis=0))
        out["lfc_mean"][sl] = r.mean(0)
        out["lfc_median"][sl] = np.median(r, axis=0)
        out["lfc_std"][sl] = r.std(0)
        out["lfc_min"][sl] = r.min(0)
        out["lfc_max"][sl] = r.max(0)
    p = out["proba_de"]
    return {"proba_de": p, "proba_not_de": 1.0 - p, "bayes_factor": _bayes_factor(p),
            "scale1": s1.mean(0, dtype=np.float64), "scale2": s2.mean(0, dtype=np.float64),
            **{k: out[k] for k in ("lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max")}}


def fdr_selection(proba_de, fdr_target: float = 0.05) -> np.ndarray:
    """Genes called DE at a posterior expected false discovery rate of at most ``fdr_target``.

    With genes sorted by ``proba_de`` (largest first; ties in input order), the expected FDR of calling the top
    ``k`` is ``(1 / k) sum_{j <= k} (1 - proba_de_(j))``; the call is the largest top set whose expected FDR is
    ``<= fdr_target`` (up to 1e-12 of rounding; possibly empty). (Boyeau et al. 2019, "Bayesian decision
    making".)

    Arguments:
        proba_de: (genes,) posterior probabilities of differential expression, in [0, 1].
        fdr_target: in (0, 1).

    Returns:
        bool (genes,), in the input order.

    Raises:
        ValueError: ``fdr_target`` outside (0, 1); ``proba_de`` not 1-D or with values outside [0, 1] / NaN.
    """
    fdr_target = check_range("fdr_target", fdr_target, low=0.0, high=1.0, low_open=True, high_open=True)
    p = np.asarray(proba_de, np.float64)
    if p.ndim != 1:
        raise ValueError(f"proba_de must be 1-D (genes,); got shape {p.shape}")
    bad = ~((p >= 0) & (p <= 1))
    if bad.any():
        g = int(np.flatnonzero(bad)[0])
        raise ValueError(f"proba_de must lie in [0, 1]; found {float(p[g])!r} at gene {g}")
    order = np.argsort(-p, kind="stable")
    expected_fdr = np.cumsum(1.0 - p[order]) / np.arange(1, p.size + 1)
    ok = np.flatnonzero(expected_fdr <= fdr_target + 1e-12)  # "at most", up to rounding of the running mean
    k = int(ok[-1]) + 1 if ok.size else 0
    out = np.zeros(p.size, bool)
    out[order[:k]] = True
    return out


def estimate_pseudocounts(scales1, scales2, unexpressed1, unexpressed2, *, quantile: float = 0.9) -> float:
    """The change-mode pseudocount from the genes a group does not express (scvi-tools 1.4's estimate).

    Per group, take each unexpressed gene's largest sampled scale; the group's value is the ``quantile`` of these
    over its unexpressed genes (``1e-10`` if it has none). The pseudocount is the larger of the two groups' values
    divided by the number of genes ``G``, and at least ``1e-10``:
    ``c = max(1e-10, max(q_1, q_2) / G)``.

    The division matters: the largest of thousands of samples is an extreme value, of the order of a typical
    gene's proportion ``1 / G`` (on Kang 2018's CD14 monocytes with 2000 genes, ``max(q_1, q_2) = 1e-3``, twice
    the mean proportion, and undivided it shrinks most fold changes towards 0). Divided, ``c`` only tempers the
    fold changes of genes expressed far below the model's floor for unexpressed genes.

    Arguments:
        scales1, scales2: posterior samples of normalised expression, (samples, genes) each (any sample counts).
        unexpressed1, unexpressed2: bool (genes,), genes group 1 / group 2 does not express (in
            :func:`differential_expression`: mean count below ``threshold_counts``).
        quantile: in [0, 1].

    Returns:
        The pseudocount, a float ``>= 1e-10``.

    Raises:
        ValueError: shapes that do not match, non-finite or negative scales, ``quantile`` outside [0, 1].
    """
    quantile = check_range("quantile", quantile, low=0.0, high=1.0)
    values = []
    n_genes = None
    for i, (s, m) in enumerate(((scales1, unexpressed1), (scales2, unexpressed2)), start=1):
        s, m = np.asarray(s), np.asarray(m, bool)
        if s.ndim != 2 or m.shape != (s.shape[1],) or (n_genes is not None and s.shape[1] != n_genes):
            raise ValueError(f"scales{i} must be (samples, genes) and unexpressed{i} (genes,), for the same genes "
                             f"in both groups; got shapes {s.shape} and {m.shape}")
        n_genes = s.shape[1]
        if not np.all(np.isfinite(s) & (s >= 0)):
            raise ValueError(f"scales{i} must be finite and >= 0")
        values.append(float(np.quantile(s[:, m].max(0), quantile)) if m.any() else PSEUDOCOUNT_FLOOR)
    return max(PSEUDOCOUNT_FLOOR, max(values) / n_genes)


def estimate_delta(lfc_means, *, coef: float = 0.6, min_threshold: float = 0.1, n_iter: int = 500) -> float:
    """A fold-change threshold from the genes' mean log2 fold changes (scvi-tools' ``delta=None``).

    Fits a three-component Gaussian mixture (components: down, unchanged, up) to the mean fold changes by EM
    (means started at the 5%, 50% and 95% quantiles) and returns ``max(min_threshold, coef * (|m_low| +
    |m_high|) / 2)`` with ``m_low`` / ``m_high`` the smallest and largest component means.

    Arguments:
        lfc_means: (genes,) mean log2 fold change per gene, at least 3 genes.
        coef: ``> 0``, the fraction of the outer modes' size taken as the threshold.
        min_threshold: ``>= 0``, the smallest threshold returned.
        n_iter: EM iterations at most (stops earlier when the log-likelihood changes by < 1e-10 per gene).

    Returns:
        ``delta`` (float, log2 units).

    Raises:
        ValueError: fewer than 3 values, non-finite values, bad ``coef`` / ``min_threshold``.
    """
    coef = check_range("coef", coef, low=0.0, low_open=True)
    min_threshold = check_range("min_threshold", min_threshold, low=0.0)
    x = np.asarray(lfc_means, np.float64).ravel()
    if x.size < 3 or not np.all(np.isfinite(x)):
        raise ValueError(f"lfc_means must hold at least 3 finite values; got {x.size} values"
                         + ("" if np.all(np.isfinite(x)) else " with NaN or infinities"))
    means = np.quantile(x, [0.05, 0.5, 0.95])
    var_floor = 1e-6 * max(float(x.var()), 1e-12)
    variances = np.full(3, max(float(x.var()), var_floor))
    weights = np.full(3, 1.0 / 3.0)
    previous = -np.inf
    for _ in range(check_int("n_iter", n_iter)):
        log_dens = (np.log(weights) - 0.5 * np.log(2 * np.pi * variances)
                    - 0.5 * (x[:, None] - means) ** 2 / variances)
        top = log_dens.max(1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_dens - top).sum(1))
        resp = np.exp(log_dens - log_norm[:, None])
        nk = resp.sum(0) + 1e-12
        weights = nk / x.size
        means = (resp * x[:, None]).sum(0) / nk
        variances = np.maximum((resp * (x[:, None] - means) ** 2).sum(0) / nk, var_floor)
        ll = float(log_norm.mean())
        if abs(ll - previous) < 1e-10:
            break
        previous = ll
    outer = np.sort(means)[[0, -1]]
    return max(min_threshold, coef * float(np.abs(outer).mean()))


# ---------------------------------------------------------------------------------------------- orchestration


def _sample_scale(model, adata, indices: np.ndarray, n_samples: int, transform_batch, seed: int) -> np.ndarray:
    """Posterior samples of normalised expression (library size 1) of cells ``indices`` of ``adata``: float32
    (n_samples, cells, genes), ``z ~ q(z | x)`` drawn independently for each sample and cell, decoded under the
    cell's own conditions or, with ``transform_batch``, with the model's batch condition set to that category
    (``model.get_normalized_expression(..., return_mean=False, return_numpy=True)``, scvi-tools' form)."""
    out = np.asarray(model.get_normalized_expression(
        adata=adata, indices=indices, transform_batch=transform_batch, library_size=1.0, n_samples=n_samples,
        return_mean=False, return_numpy=True, seed=seed), np.float32)
    return out[None] if out.ndim == 2 else out  # one draw comes back as (cells, genes)


def _pooled_scales(model, adata, rows: np.ndarray, n: int, transform_batch, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples (n, genes), in random order, of the group's aggregate posterior: cells drawn uniformly (each
    at most ``ceil(n / cells)`` times), one posterior draw of ``rho`` per pick."""
    if rows.size >= n:
        picks, per_cell = np.sort(rng.choice(rows, n, replace=False)), 1
    else:
        picks, per_cell = rows, math.ceil(n / rows.size)
    s = _sample_scale(model, adata, picks, per_cell, transform_batch, int(rng.integers(2**31 - 1)))
    expected = (per_cell, picks.size, len(model.var_names))
    if s.shape != expected:
        raise ValueError(f"the model's normalised expression samples have shape {s.shape}; expected {expected} "
                         "(samples, cells, genes)")
    s = s.reshape(-1, s.shape[-1])
    return s[rng.choice(s.shape[0], n, replace=False)]


def _group_stats(X, rows: np.ndarray, order: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw mean, fraction of non-zero cells and mean of counts per 1e4 (per-cell normalised), each (genes,)."""
    rows = np.sort(rows)
    n_genes = X.shape[1] if order is None else order.size
    total, nonzero, normalised = (np.zeros(n_genes) for _ in range(3))
    for start in range(0, rows.size, _CELL_CHUNK):
        block = dense(take_rows(X, rows[start:start + _CELL_CHUNK])).astype(np.float64)
        lib = block.sum(1, keepdims=True)  # the cell's total over all of the matrix's genes
        if order is not None:
            block = block[:, order]
        total += block.sum(0)
        nonzero += (block > 0).sum(0)
        normalised += (block / np.where(lib > 0, lib, 1.0) * 1e4).sum(0)
    return total / rows.size, nonzero / rows.size, normalised / rows.size


def _group_rows(adata, groupby: str, group1, group2) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices of the two groups and the name of group 2 (``"rest"`` for every other labelled cell)."""
    if groupby not in adata.obs:
        raise KeyError(f"groupby {groupby!r} not found in adata.obs (columns: {list(adata.obs.columns)})")
    col = adata.obs[groupby]
    labelled = col.notna().to_numpy()
    labels = col.astype(str).to_numpy()
    present = sorted(set(labels[labelled]))
    for name, g in (("group1", group1), ("group2", group2)):
        if g is not None and str(g) not in present:
            raise ValueError(f"{name} {g!r} is not a value of adata.obs[{groupby!r}] in these cells "
                             f"(values: {present[:20]}{' ...' if len(present) > 20 else ''})")
    if group2 is not None and str(group1) == str(group2):
        raise ValueError(f"group1 and group2 must differ; both are {group1!r}")
    in1 = labelled & (labels == str(group1))
    in2 = labelled & ((labels == str(group2)) if group2 is not None else (labels != str(group1)))
    name2 = "rest" if group2 is None else str(group2)
    if not in2.any():
        raise ValueError(f"group2 ({name2}) of adata.obs[{groupby!r}] has no cells: every labelled cell is "
                         f"{group1!r}")
    return np.flatnonzero(in1), np.flatnonzero(in2), name2


def differential_expression(
    model,
    adata=None,
    *,
    groupby: str,
    group1,
    group2=None,
    mode: DEMode = "change",
    delta: float | None = 0.25,
    batch_correction: bool = False,
    fdr_target: float = 0.05,
    n_samples: int = 5000,
    pseudocounts: float | None = None,
    threshold_counts: float = 0.01,
    test_mode: DETestMode = "three",
    all_stats: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Differential expression between two groups of cells from a count VAE's posterior (scvi-tools' API).

    For each group, ``n_samples`` draws of normalised expression ``rho`` (cells picked uniformly from the group,
    ``z ~ q(z | x)`` per pick, decoded with library size 1) are paired with the other group's and tested per gene
    (see the module docstring and :func:`vanilla_mode_test` / :func:`change_mode_test`).

    Arguments:
        model: a trained count model with ``var_names``, ``adata`` and ``get_normalized_expression`` (scvi-tools'
            keywords plus ``seed``; every draw with ``return_mean=False``), e.g. :class:`genjax.VAE`; for
            ``batch_correction`` also ``batch_key`` and ``conditions``.
        adata: the cells (default: the model's training data); raw counts in the model's layer, all the model's
            genes.
        groupby: ``adata.obs`` column of the groups.
        group1: the group tested (a value of ``groupby``), or a sequence of values: one comparison each,
            concatenated (scvi-tools' ``group1`` list).
        group2: the reference group; ``None``: every other cell with a ``groupby`` value ("rest").
        mode: ``"change"`` (default; Boyeau et al.) or ``"vanilla"`` (Lopez et al.).
        delta: change mode: log2 fold-change threshold ``>= 0``; ``None`` estimates it (:func:`estimate_delta`).
        batch_correction: decode every cell under each category of the model's ``batch_key`` condition and pair
            samples decoded under the same category (``n_samples`` split evenly over the categories); without it,
            cells are decoded under their own conditions.
        fdr_target: in (0, 1); change mode adds ``is_de_fdr_<fdr_target>`` (:func:`fdr_selection`).
        n_samples: posterior samples per group (scvi-tools' ``n_samples_overall``, default 5000).
        pseudocounts: change mode: ``c >= 0`` of the fold changes; ``None`` estimates it from the genes a group
            does not express (:func:`estimate_pseudocounts`).
        threshold_counts: ``>= 0``; a gene whose mean count in a group is below it counts as unexpressed there
            (for the pseudocount estimate; scvi-tools' default 0.01).
        test_mode: change mode: ``"three"`` (default, as scvi-tools 1.x: the more probable tail,
            ``max(P(LFC >= delta), P(LFC <= -delta))``) or ``"two"`` (``P(|LFC| >= delta)``, the paper's).
        all_stats: add the observed statistics per group: ``raw_mean1/2`` (mean count), ``non_zeros_proportion1/2``,
            ``raw_normalized_mean1/2`` (mean of counts per 1e4 total).
        seed: seed of the cell picks, the posterior draws and the pairing.

    Returns:
        ``pandas.DataFrame`` indexed by gene (the model's genes), float64 columns. Change mode: ``proba_de``,
        ``proba_not_de``, ``bayes_factor``, ``scale1``, ``scale2``, ``pseudocounts``, ``delta``, ``lfc_mean``,
        ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max``, the raw statistics, ``is_de_fdr_<target>`` (bool),
        ``comparison`` (``"<group1> vs <group2>"``), ``group1``, ``group2``; sorted by ``proba_de`` (ties by
        ``|lfc_mean|``), largest first. Vanilla mode: ``proba_m1``, ``proba_m2``, ``bayes_factor``, ``scale1``,
        ``scale2``, the raw statistics and the comparison columns; sorted by ``bayes_factor`` (ties by
        ``scale1 / scale2``), largest first (genes up in group 1 at the top). Fold changes are group 1 over group 2.

    Raises:
        TypeError: a model without ``get_normalized_expression``.
        KeyError: ``groupby`` not in ``adata.obs``.
        ValueError: a group value absent from the cells, ``group1 == group2``, an empty group, bad option values
            (``delta < 0``, ``fdr_target`` outside (0, 1), unknown ``mode`` / ``test_mode``, ``n_samples < 1``,
            ``pseudocounts < 0``, ``threshold_counts < 0``), no data, a model that does not decode counts,
            ``batch_correction`` on a model without a ``batch_key`` or with ``groupby`` equal to it.
    """
    check_choice("mode", mode, DEMode)
    check_choice("test_mode", test_mode, DETestMode)
    if delta is not None:
        delta = check_range("delta", delta, low=0.0)
    fdr_target = check_range("fdr_target", fdr_target, low=0.0, high=1.0, low_open=True, high_open=True)
    n_samples = check_int("n_samples", n_samples)
    if pseudocounts is not None:
        pseudocounts = check_range("pseudocounts", pseudocounts, low=0.0)
    threshold_counts = check_range("threshold_counts", threshold_counts, low=0.0)
    if not isinstance(groupby, str):
        raise ValueError(f"groupby must be an adata.obs column name (str); got {groupby!r}")
    if not hasattr(model, "get_normalized_expression"):
        raise TypeError(f"differential expression needs a model with get_normalized_expression (posterior samples "
                        f"of normalised expression), e.g. genjax.VAE; got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is not None and not getattr(config, "counts", True):
        raise ValueError(f"differential expression needs a count model (normalised expression); this model's "
                         f"likelihood is {getattr(config, 'likelihood', '?')!r}")
    adata = getattr(model, "adata", None) if adata is None else adata
    if adata is None:
        raise ValueError("no data: pass adata=... (this model was loaded without data)")
    batches: list = [None]
    if batch_correction:
        batch_key = getattr(model, "batch_key", None)
        if batch_key is None:
            raise ValueError("batch_correction=True needs a model trained with a batch_key (decoding under each "
                             "batch category); this model has none")
        if batch_key == groupby:
            raise ValueError(f"groupby {groupby!r} is the model's batch_key: batch correction would decode both "
                             "groups under the same batches and remove the difference tested")
        batches = list(model.conditions[batch_key])
    groups1 = [group1] if isinstance(group1, str) or np.ndim(group1) == 0 else list(group1)
    if not groups1:
        raise ValueError("group1 must be a value of groupby or a non-empty sequence of values")
    rows = [_group_rows(adata, groupby, g, group2) for g in groups1]  # every check before any compute
    for g, (r1, _, _) in zip(groups1, rows, strict=True):
        if r1.size == 0:
            raise ValueError(f"group1 {g!r} of adata.obs[{groupby!r}] has no cells")

    layer = getattr(getattr(model, "registry", None), "layer", None)
    X = get_matrix(adata, layer)
    registry = getattr(model, "registry", None)
    order = registry.gene_order(adata) if registry is not None else None
    rng = np.random.default_rng(seed)
    frames = []
    for g, (r1, r2, name2) in zip(groups1, rows, strict=True):
        frames.append(_compare(model, adata, X, order, r1, r2, batches, rng, mode=mode, delta=delta,
                               pseudocounts=pseudocounts, threshold_counts=threshold_counts,
                               test_mode=test_mode, fdr_target=fdr_target,
                               n_samples=n_samples, all_stats=all_stats, name1=str(g), name2=name2))
    return frames[0] if len(frames) == 1 else pd.concat(frames)


def _compare(model, adata, X, order, r1, r2, batches: Sequence, rng, *, mode, delta, pseudocounts,
             threshold_counts, test_mode, fdr_target, n_samples, all_stats, name1, name2) -> pd.DataFrame:
    """One comparison's table (see :func:`differential_expression`)."""
    per_batch = math.ceil(n_samples / len(batches))
    s1, s2 = [], []
    for b in batches:  # samples decoded under the same batch are paired
        s1.append(_pooled_scales(model, adata, r1, per_batch, b, rng))
        s2.append(_pooled_scales(model, adata, r2, per_batch, b, rng))
    s1, s2 = np.concatenate(s1), np.concatenate(s2)
    stats1 = _group_stats(X, r1, order)
    stats2 = _group_stats(X, r2, order)
    if mode == "vanilla":
        res = vanilla_mode_test(s1, s2)
        tiebreak = np.log(res["scale1"] + 1e-30) - np.log(res["scale2"] + 1e-30)
        key = "bayes_factor"
    else:
        if pseudocounts is None:
            pseudocounts = estimate_pseudocounts(s1, s2, stats1[0] < threshold_counts, stats2[0] < threshold_counts)
        if delta is None:
            delta = estimate_delta(log_fold_changes(s1, s2, pseudocounts).mean(0))
        res = change_mode_test(s1, s2, delta=delta, pseudocounts=pseudocounts, test_mode=test_mode)
        n_genes = res["proba_de"].size
        res = {**{k: res[k] for k in ("proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2")},
               "pseudocounts": np.full(n_genes, pseudocounts), "delta": np.full(n_genes, delta),
               **{k: res[k] for k in ("lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max")}}
        tiebreak = np.abs(res["lfc_mean"])
        key = "proba_de"
    if all_stats:
        res.update({"raw_mean1": stats1[0], "raw_mean2": stats2[0], "non_zeros_proportion1": stats1[1],
                    "non_zeros_proportion2": stats2[1], "raw_normalized_mean1": stats1[2],
                    "raw_normalized_mean2": stats2[2]})
    frame = pd.DataFrame(res, index=pd.Index(list(model.var_names), name="gene"))
    if mode == "change":
        frame[f"is_de_fdr_{fdr_target}"] = fdr_selection(frame["proba_de"].to_numpy(), fdr_target)
    frame["comparison"] = f"{name1} vs {name2}"
    frame["group1"] = name1
    frame["group2"] = name2
    ranking = np.lexsort((-tiebreak, -frame[key].to_numpy()))
    return frame.iloc[ranking]
