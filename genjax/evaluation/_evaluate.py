"""``genjax.metrics``: how close are generated count cells to real ones, beside a real-vs-real control.

One call does the whole evaluation::

    ev = genjax.metrics.evaluate(heldout, generated, condition_key="cell_type", control=train)
    ev.table          # tidy pandas DataFrame: condition, metric, generated, control, n_real, n_generated, ...
    ev.wide()         # one row per condition, (metric, generated|control) columns
    genjax.report.write_report(ev, "out/")   # report.md + figures

Protocol (chosen to reproduce the PBMC3k reference figures of issue 6; see ``evaluate``):

1. Every set is ``log1p`` of counts normalised to 1e4 per cell.
2. A 30-component PCA (centred, unscaled) is fitted on the **real** cells only and applied to all sets; all
   distribution metrics are computed in that space.
3. For each group (all cells, then each condition) the generated cells and the control cells are compared with
   the same real cells: squared energy distance (U-statistic), multi-bandwidth RBF MMD^2, W2 by debiased
   Sinkhorn, balanced leave-one-out 5-NN two-sample accuracy, Pearson correlations over genes of the log mean,
   log variance and zero fraction, and the accuracy of a logistic-regression classifier fitted on the real
   cells' labels (conditions).
4. The control is a second set of real cells (e.g. the training cells when ``real`` is held out) or, by default,
   half of ``real`` split off stratified by condition; it shows what "as good as real data" looks like with the
   same sample sizes and protocol.

The array-level statistics (:func:`energy_distance`, :func:`mmd_rbf`, :func:`sinkhorn_w2`,
:func:`knn_two_sample_accuracy`, :func:`pca_fit`, ...) are public too, for use on any point clouds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._checks import check_choice, check_range
from .._typing import Statistic
from ..data import row_sums, stratified_split
from ._buffer import capacity, make_buffer
from ._energy_mmd import MMD_FACTORS, energy_and_mmd, median_distance, rbf_bandwidths
from ._knn import knn_buffers
from ._label_classifier import LabelClassifier, fit_label_classifier, predict_labels
from ._preprocess import (
    PCA,
    CountSet,
    align_genes,
    as_count_set,
    gene_statistics,
    normalize_log1p,
    pca_fit,
    pearson,
    project,
    project_counts,
)
from ._sinkhorn import default_epsilon, w2_from_buffers

__all__ = ["evaluate", "Evaluation", "SetSummary", "METRICS", "ALL"]

ALL = "all"
"""The ``condition`` value of the rows that use every cell."""

METRICS: dict[str, dict[str, Any]] = {
    "energy_distance": dict(label="energy distance", ideal=0.0, better="lower",
                            doc="squared energy distance 2E|X-Y|-E|X-X'|-E|Y-Y'| (U-statistic) in PC space"),
    "mmd_rbf": dict(label="MMD^2 (RBF)", ideal=0.0, better="lower",
                    doc="squared MMD (U-statistic), RBF kernel averaged over bandwidths (0.25, 0.5, 1, 2, 4) x "
                        "the median distance between real cells, in PC space"),
    "w2_sinkhorn": dict(label="W2 (Sinkhorn)", ideal=0.0, better="lower",
                        doc="Wasserstein-2 as sqrt of the debiased Sinkhorn divergence, eps = 0.05 x mean squared "
                            "distance between real cells, in PC space"),
    "knn_accuracy": dict(label="k-NN accuracy", ideal=0.5, better="closer to 0.5",
                         doc="balanced leave-one-out k-NN real-vs-generated accuracy in PC space "
                             "(0.5: indistinguishable, 1: separable)"),
    "label_accuracy": dict(label="label accuracy", ideal=1.0, better="higher",
                           doc="fraction of cells assigned their own condition by a logistic regression fitted "
                               "on the real cells in PC space"),
    "pearson_log_mean": dict(label="r(log mean)", ideal=1.0, better="higher",
                             doc="Pearson r over genes of log1p(mean of counts normalised to 1e4)"),
    "pearson_log_var": dict(label="r(log var)", ideal=1.0, better="higher",
                            doc="Pearson r over genes of log1p(variance of counts normalised to 1e4)"),
    "pearson_zero_frac": dict(label="r(zero frac)", ideal=1.0, better="higher",
                              doc="Pearson r over genes of the fraction of cells with zero counts"),
}
"""The metrics of :func:`evaluate`: display label, ideal value, direction and definition."""

_SAMPLE_CELLS = 300  # cells kept per set for the count / log1p value histograms of the figures


@dataclasses.dataclass
class SetSummary:
    """What the figures need from one set of cells.

    Fields:
        name: ``"real"``, ``"generated"`` or ``"control"``.
        pcs: ``(cells, components)`` float32 PC scores (in the real cells' PCA space).
        labels: ``(cells,)`` condition labels, or None.
        gene_stats: ``{"log_mean", "log_var", "zero_frac"}`` -> ``(genes,)`` (see :func:`gene_statistics`).
        library_size: ``(cells,)`` total counts per cell.
        count_values: flattened raw counts of up to 300 random cells (for histograms).
        log_values: the same entries as ``log1p`` of counts normalised to 1e4.
        predicted: ``(cells,)`` labels assigned by the real-cell classifier, or None.
    """

    name: str
    pcs: np.ndarray
    labels: np.ndarray | None
    gene_stats: dict[str, np.ndarray]
    library_size: np.ndarray
    count_values: np.ndarray
    log_values: np.ndarray
    predicted: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return self.pcs.shape[0]


@dataclasses.dataclass
class Evaluation:
    """The result of :func:`evaluate`.

    Fields:
        table: tidy ``pandas.DataFrame`` with one row per (condition, metric): columns ``condition`` (``"all"``
            for every cell, else a condition value), ``metric`` (a key of :data:`METRICS`), ``generated``,
            ``control`` (NaN without a control), ``n_real``, ``n_generated``, ``n_control``, ``note``.
        settings: the conventions and parameters used (JSON-serialisable).
        real, generated, control: :class:`SetSummary` of each set (``control`` None without one).
        pca: the :class:`PCA` fitted on the real cells.
        condition_key: the condition column (None when unconditional).
        notes: human-readable remarks (skipped conditions, unconverged Sinkhorn, ...).
    """

    table: Any
    settings: dict
    real: SetSummary
    generated: SetSummary
    control: SetSummary | None
    pca: PCA
    condition_key: str | None
    notes: list[str]

    @property
    def conditions(self) -> list[str]:
        """The conditions with a per-condition breakdown (in table order)."""
        return [c for c in dict.fromkeys(self.table["condition"]) if c != ALL]

    def value(self, metric: str, condition: str = ALL, which: str = "generated") -> float:
        """One entry of the table, e.g. ``ev.value("energy_distance", which="control")``.

        Raises:
            KeyError: unknown metric / condition, or ``which`` not ``"generated"`` / ``"control"``.
        """
        if which not in ("generated", "control"):
            raise KeyError(f"which must be 'generated' or 'control'; got {which!r}")
        t = self.table
        row = t[(t["metric"] == metric) & (t["condition"] == condition)]
        if row.empty:
            raise KeyError(f"no row for metric {metric!r}, condition {condition!r}; metrics: "
                           f"{sorted(set(t['metric']))}, conditions: {list(dict.fromkeys(t['condition']))}")
        return float(row[which].iloc[0])

    def wide(self):
        """The table with one row per condition and ``(metric, generated | control)`` columns."""
        t = self.table.pivot(index="condition", columns="metric", values=["generated", "control"])
        t = t.swaplevel(axis=1).sort_index(axis=1)
        metrics = [m for m in METRICS if m in set(self.table["metric"])]
        order = list(dict.fromkeys(self.table["condition"]))
        return t.reindex(index=order, columns=[(m, w) for m in metrics for w in ("generated", "control")])

    def to_dict(self) -> dict:
        """``{condition: {metric: {"generated": v, "control": v}}, "settings": ..., "notes": ...}`` (NaN as None)."""

        def clean(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        out: dict = {}
        for r in self.table.itertuples(index=False):
            out.setdefault(r.condition, {})[r.metric] = {"generated": clean(r.generated), "control": clean(r.control),
                                                         "n_real": int(r.n_real), "n_generated": int(r.n_generated),
                                                         "n_control": int(r.n_control)}
        return {"metrics": out, "settings": self.settings, "notes": list(self.notes)}

    def __repr__(self) -> str:
        lines = [f"Evaluation(real={self.real.n_cells}, generated={self.generated.n_cells}, "
                 f"control={None if self.control is None else self.control.n_cells}, "
                 f"condition_key={self.condition_key!r}, conditions={len(self.conditions)})"]
        for m in METRICS:
            try:
                g, c = self.value(m), self.value(m, which="control")
            except KeyError:
                continue
            lines.append(f"  {m:<18} generated {g:8.4f}   control {c:8.4f}")
        return "\n".join(lines)


_GENE_STATS = ("log_mean", "log_var", "zero_frac")
_TABLE_COLUMNS = ["condition", "metric", "generated", "control", "n_real", "n_generated", "n_control", "note"]


@dataclasses.dataclass(frozen=True)
class _EvaluateConfig:
    """The numeric knobs of :func:`evaluate` (see its Arguments); checked on construction.

    Raises:
        ValueError: ``k``, ``knn_repeats``, ``min_cells``, ``n_components`` or ``w2_max_cells`` out of range,
            ``min_cells`` too small for ``k``, ``target_sum`` not positive or an unknown ``statistic``.
    """

    n_components: int
    target_sum: float
    k: int
    knn_repeats: int
    mmd_factors: Sequence[float]
    w2_max_cells: int
    relative_epsilon: float
    statistic: Statistic
    control_fraction: float
    min_cells: int
    label_l2: float
    seed: int

    def __post_init__(self):
        """Checks the knobs in the order (and with the messages) :func:`evaluate` always used."""
        k, min_cells = self.k, self.min_cells
        if k < 1 or self.knn_repeats < 1 or min_cells < 2 or self.n_components < 1 or self.w2_max_cells < 2:
            raise ValueError(f"need k >= 1, knn_repeats >= 1, min_cells >= 2, n_components >= 1, w2_max_cells >= 2; "
                             f"got {k}, {self.knn_repeats}, {min_cells}, {self.n_components}, {self.w2_max_cells}")
        if min_cells < (k + 2) // 2:
            raise ValueError(f"min_cells={min_cells} is too small for k={k}; need >= {(k + 2) // 2}")
        check_range("target_sum", self.target_sum, low=0.0, low_open=True)
        check_choice("statistic", self.statistic, Statistic)


@dataclasses.dataclass
class _Prepared:
    """Everything the per-group comparisons share.

    Fields:
        sets: ``"real"`` (the reference cells), ``"generated"`` and, with a control, ``"control"`` count sets.
        pcs: set name -> ``(cells, components)`` PC scores in the reference cells' PCA space.
        summaries: set name -> :class:`SetSummary` (with ``predicted`` labels when there is a classifier).
        classifier: the label classifier fitted on the reference cells, or None.
    """

    sets: dict[str, CountSet]
    pcs: dict[str, np.ndarray]
    summaries: dict[str, SetSummary]
    classifier: LabelClassifier | None

    @property
    def samples(self) -> list[str]:
        """The sets compared with the reference cells: ``"generated"`` and, with a control, ``"control"``."""
        return [n for n in ("generated", "control") if n in self.sets]


def _summary(cs: CountSet, pcs: np.ndarray, target_sum: float, rng) -> SetSummary:
    """The :class:`SetSummary` of ``cs`` given its ``(cells, components)`` PC scores; draws the histogram cells."""
    rows = np.sort(rng.choice(cs.n_cells, min(cs.n_cells, _SAMPLE_CELLS), replace=False))
    counts = cs.counts[rows]
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    return SetSummary(
        name=cs.name,
        pcs=np.asarray(pcs, np.float32),
        labels=cs.labels,
        gene_stats=gene_statistics(cs.counts, target_sum),
        library_size=row_sums(cs.counts),
        count_values=counts.ravel().astype(np.float32),
        log_values=normalize_log1p(counts, target_sum).ravel(),
    )


class _Comparer:
    """Computes every metric of one (reference rows, sample rows) pair, reusing compiled functions."""

    def __init__(self, ref_pcs, caps, *, k, knn_repeats, mmd_factors, w2_max_cells, relative_epsilon,
                 unbiased, min_cells):
        self.ref = ref_pcs
        self.caps = caps
        self.k, self.knn_repeats, self.mmd_factors = k, knn_repeats, tuple(mmd_factors)
        self.w2_max_cells, self.relative_epsilon = w2_max_cells, relative_epsilon
        self.unbiased, self.min_cells = unbiased, min_cells
        self.max_sinkhorn_error = 0.0

    def distribution(self, ref_rows, pcs, rows, rng: np.random.Generator) -> tuple[dict[str, float], str]:
        """The PC-space metrics of reference rows ``ref_rows`` vs rows ``rows`` of ``pcs`` ``(cells, components)``,
        and a note (``""``, or why they are NaN)."""
        n, m = len(ref_rows), len(rows)
        names = ("energy_distance", "mmd_rbf", "w2_sinkhorn", "knn_accuracy")
        if min(n, m) < self.min_cells:
            return dict.fromkeys(names, math.nan), f"fewer than {self.min_cells} cells"
        x, y = self.ref[ref_rows], pcs[rows]
        if not default_epsilon(x) > 0 or not median_distance(x) > 0:
            return dict.fromkeys(names, math.nan), "real cells coincide in PC space"
        # every buffer has one of three sizes fixed for the whole evaluation (traced block counts), so all
        # groups and both samples reuse the same compiled functions
        bw = jnp.asarray(rbf_bandwidths(x, self.mmd_factors), np.float32)
        cap = self.caps["pairs"]
        energy, mmd = energy_and_mmd(make_buffer(x, cap), n, make_buffer(y, cap), m, bw, self.unbiased)
        # W2 on at most w2_max_cells cells per set (Sinkhorn costs O(n m) per iteration), tiled Sinkhorn
        xs = x if n <= self.w2_max_cells else x[rng.permutation(n)[: self.w2_max_cells]]
        ys = y if m <= self.w2_max_cells else y[rng.permutation(m)[: self.w2_max_cells]]
        cap = self.caps["w2"]
        w2, err = w2_from_buffers(make_buffer(xs, cap), make_buffer(ys, cap),
                                  default_epsilon(xs, self.relative_epsilon), dense=False)
        self.max_sinkhorn_error = max(self.max_sinkhorn_error, err)
        knn = knn_buffers(rng, x, y, self.k, self.knn_repeats, self.caps["knn"])
        return {"energy_distance": energy, "mmd_rbf": mmd, "w2_sinkhorn": w2, "knn_accuracy": knn}, ""


def _load_real_generated(load, real, generated, real_labels, generated_labels) -> tuple[CountSet, CountSet, bool]:
    """``(real, generated, conditional)``: both sets as :class:`CountSet` (generated genes aligned to real) and
    whether they carry conditions; ``load`` is :func:`as_count_set` with the shared options bound.

    Raises:
        ValueError: conditions for one set only (besides the errors of :func:`as_count_set` / :func:`align_genes`).
    """
    real_set = load(real, name="real", labels=real_labels)
    gen_set = align_genes(real_set, load(generated, name="generated", labels=generated_labels))
    conditional = real_set.labels is not None or gen_set.labels is not None
    if conditional and (real_set.labels is None or gen_set.labels is None):
        missing = "real" if real_set.labels is None else "generated"
        raise ValueError(f"conditions given for one set only: pass labels for the {missing} cells too "
                         "(condition_key for AnnData, *_labels for arrays)")
    return real_set, gen_set, conditional


def _resolve_control(control, real_set: CountSet, load, control_labels, *, conditional: bool, key_name: str | None,
                     control_fraction: float, rng: np.random.Generator) -> tuple[CountSet, CountSet | None, str]:
    """``(reference, control or None, description)`` for the ``control`` option of :func:`evaluate`; the split
    draws from ``rng``.

    Raises:
        ValueError: an unknown ``control`` string, ``control_fraction`` outside (0, 1), control cells without
            conditions in a conditional evaluation, fewer than 3 reference cells.
    """
    if isinstance(control, str):
        if control != "split":
            raise ValueError(f"control must be 'split', None, AnnData or an array of counts; got {control!r}")
        check_range("control_fraction", control_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        strata = real_set.labels if real_set.labels is not None else np.zeros(real_set.n_cells, dtype=str)
        ref_rows, ctl_rows = stratified_split(strata, control_fraction, rng, keep_both=True)
        ctl_set = real_set.subset(ctl_rows, "control")
        ref_set = real_set.subset(ref_rows, "real")
        control_desc = (f"real cells split {1 - control_fraction:.0%} / {control_fraction:.0%} stratified by "
                        "condition: generated and control cells are both compared with the reference part")
    elif control is None:
        ref_set, ctl_set, control_desc = real_set, None, "none"
    else:
        ctl_set = align_genes(real_set, load(control, name="control", labels=control_labels))
        if conditional and ctl_set.labels is None:
            raise ValueError("control cells have no conditions; pass control_labels (arrays) or use AnnData with "
                             f"obs[{key_name!r}]")
        ref_set = real_set
        control_desc = "a second set of real cells, compared with the real cells like the generated ones"
    if ref_set.n_cells < 3:
        raise ValueError(f"need at least 3 real (reference) cells; got {ref_set.n_cells}")
    return ref_set, ctl_set, control_desc


def _condition_groups(sets: dict[str, CountSet], conditions: Sequence[str] | None, *, conditional: bool,
                      key_name: str | None, notes: list[str]) -> list[str]:
    """The conditions with a per-condition breakdown (none when unconditional) of ``sets`` (``"real"``: the
    reference cells, ``"generated"``, optional ``"control"``); notes real conditions without generated cells.

    Raises:
        ValueError: ``conditions`` without conditions, a generated / control condition absent from the reference
            cells, or a requested condition absent from the reference or generated cells.
    """
    if not conditional:
        if conditions is not None:
            raise ValueError("conditions=... needs condition_key (or *_labels)")
        return []
    real_values = {str(v) for v in np.unique(sets["real"].labels)}
    for cs in (s for n, s in sets.items() if n != "real"):
        unknown = sorted(str(v) for v in set(np.unique(cs.labels)) - real_values)
        if unknown:
            raise ValueError(f"{cs.name} cells have {key_name} values absent from the real cells: {unknown[:5]}; "
                             f"real values: {sorted(map(str, real_values))}")
    gen_values = [str(v) for v in np.unique(sets["generated"].labels)]
    if conditions is None:
        missing = sorted(real_values - set(gen_values))
        if missing:
            notes.append(f"real {key_name} values without generated cells (no per-condition rows): "
                         f"{[str(v) for v in missing]}")
        return gen_values
    groups = [str(c) for c in conditions]
    for c in groups:
        where = [n for n, s in (("real", real_values), ("generated", set(gen_values))) if c not in s]
        if where:
            raise ValueError(f"condition {c!r} ({key_name}) has no {' or '.join(where)} cells; real values: "
                             f"{sorted(map(str, real_values))}")
    return groups


def _project_sets(sets: dict[str, CountSet], cfg: _EvaluateConfig,
                  notes: list[str]) -> tuple[PCA, int, dict[str, np.ndarray]]:
    """``(pca, n_components, pcs)``: a PCA of the log1p-normalised ``"real"`` set and every set's
    ``(cells, n_components)`` scores; notes a reduced component count and cells with zero total counts."""
    ref_set = sets["real"]
    ref_log = normalize_log1p(ref_set.counts, cfg.target_sum)
    n_comp = min(cfg.n_components, ref_set.n_cells - 1, ref_set.n_genes)
    if n_comp < cfg.n_components:
        notes.append(f"n_components reduced from {cfg.n_components} to {n_comp} (too few real cells or genes)")
    pca = pca_fit(ref_log, n_comp, key=cfg.seed)
    pcs = {"real": project(pca, ref_log)}
    del ref_log
    pcs |= {n: project_counts(pca, s.counts, cfg.target_sum) for n, s in sets.items() if n != "real"}
    for n, s in sets.items():
        empty = int(np.sum(row_sums(s.counts) == 0))
        if empty:
            notes.append(f"{empty} {n} cells have zero total counts (normalised to all zeros)")
    return pca, n_comp, pcs


def _fit_classifier(pcs: dict[str, np.ndarray], labels: np.ndarray, summaries: dict[str, SetSummary],
                      label_l2: float, notes: list[str]) -> LabelClassifier | None:
    """The classifier fitted on the reference cells' ``(cells, components)`` PCs and ``(cells,)`` labels, with
    every summary's ``predicted`` filled in; None (and a note) when the reference has a single condition."""
    if len(np.unique(labels)) < 2:
        notes.append("label accuracy not computed: the real cells have a single condition")
        return None
    classifier = fit_label_classifier(pcs["real"], labels, l2=label_l2)
    for n in summaries:
        if n != "real":
            summaries[n].predicted = predict_labels(classifier, pcs[n])[0]
    summaries["real"].predicted = predict_labels(classifier, pcs["real"])[0]
    return classifier


def _make_comparer(prep: _Prepared, cfg: _EvaluateConfig) -> _Comparer:
    """A :class:`_Comparer` whose buffer capacities fit the largest group of any set."""
    sets, n_ref = prep.sets, prep.sets["real"].n_cells
    n_max = max(s.n_cells for s in sets.values())
    caps = {"pairs": capacity(n_max), "w2": capacity(min(n_max, cfg.w2_max_cells)),
            "knn": capacity(2 * max(min(n_ref, sets[n].n_cells) for n in prep.samples))}
    return _Comparer(prep.pcs["real"], caps, k=cfg.k, knn_repeats=cfg.knn_repeats, mmd_factors=cfg.mmd_factors,
                     w2_max_cells=cfg.w2_max_cells, relative_epsilon=cfg.relative_epsilon,
                     unbiased=cfg.statistic == "u", min_cells=cfg.min_cells)


def _group_rows(cs: CountSet, group: str) -> np.ndarray:
    """``(n,)`` indices of the cells of ``cs`` in ``group`` (all cells for :data:`ALL`)."""
    return np.arange(cs.n_cells) if group == ALL else np.flatnonzero(cs.labels == group)


def _group_gene_stats(prep: _Prepared, name: str, group: str, rows: np.ndarray,
                      target_sum: float) -> dict[str, np.ndarray]:
    """The ``(genes,)`` gene statistics of rows ``rows`` (those of ``group``) of set ``name``."""
    if group == ALL:
        return prep.summaries[name].gene_stats
    return gene_statistics(prep.sets[name].counts[rows], target_sum)


def _sample_values(prep: _Prepared, comparer: _Comparer, name: str, group: str, ref_rows: np.ndarray,
                   ref_stats: dict[str, np.ndarray], rows: np.ndarray, rng: np.random.Generator,
                   target_sum: float) -> tuple[dict[str, float], str]:
    """Every metric of sample ``name``'s ``(n,)`` ``rows`` vs the reference's ``(n_ref,)`` ``ref_rows`` in one
    group, and the comparer's note."""
    vals, note = comparer.distribution(ref_rows, prep.pcs[name], rows, rng)
    if len(rows):
        stats = _group_gene_stats(prep, name, group, rows, target_sum)
        for stat in _GENE_STATS:
            vals[f"pearson_{stat}"] = pearson(ref_stats[stat], stats[stat])
    else:
        vals.update({f"pearson_{stat}": math.nan for stat in _GENE_STATS})
    if prep.classifier is not None:
        pred, truth = prep.summaries[name].predicted[rows], prep.sets[name].labels[rows]
        vals["label_accuracy"] = float(np.mean(pred == truth)) if len(rows) else math.nan
    return vals, note


def _compare_group(prep: _Prepared, comparer: _Comparer, gi: int, group: str, cfg: _EvaluateConfig) -> list[dict]:
    """The table rows (one per metric) of group number ``gi`` (:data:`ALL` or a condition value); sample ``si``
    draws from ``default_rng([seed, gi, si])``."""
    ref_rows = _group_rows(prep.sets["real"], group)
    ref_stats = _group_gene_stats(prep, "real", group, ref_rows, cfg.target_sum)
    values: dict[str, dict[str, float]] = {}
    counts = {"real": len(ref_rows)}
    group_notes = []
    for si, n in enumerate(prep.samples):
        rows = _group_rows(prep.sets[n], group)
        counts[n] = len(rows)
        rng = np.random.default_rng([cfg.seed, gi, si])
        values[n], note = _sample_values(prep, comparer, n, group, ref_rows, ref_stats, rows, rng, cfg.target_sum)
        if note:
            group_notes.append(f"{n}: {note}")
    return [dict(condition=group, metric=metric,
                 generated=values["generated"][metric],
                 control=values["control"][metric] if "control" in values else math.nan,
                 n_real=counts["real"], n_generated=counts["generated"], n_control=counts.get("control", 0),
                 note="; ".join(group_notes))
            for metric in METRICS if metric in values["generated"]]


def _settings(cfg: _EvaluateConfig, prep: _Prepared, *, key_name: str | None, control_desc: str,
              n_comp: int) -> dict:
    """The JSON-serialisable conventions and parameters of an evaluation (:attr:`Evaluation.settings`)."""
    statistic, sets = cfg.statistic.upper(), prep.sets
    return dict(
        condition_key=key_name,
        control=control_desc,
        n_real=sets["real"].n_cells, n_generated=sets["generated"].n_cells,
        n_control=sets["control"].n_cells if "control" in sets else 0,
        n_genes=sets["real"].n_genes,
        preprocessing=f"log1p of counts normalised to {cfg.target_sum:g} per cell",
        pca=f"{n_comp} components, centred, unscaled, fitted on the real (reference) cells only",
        n_components=n_comp,
        energy_distance=f"squared, {statistic}-statistic",
        mmd=f"RBF, bandwidths {list(cfg.mmd_factors)} x median distance of the real cells, {statistic}-statistic",
        w2=f"debiased Sinkhorn divergence, eps = {cfg.relative_epsilon} x mean squared distance of the real cells, "
           f"at most {cfg.w2_max_cells} cells per set",
        knn=f"k={cfg.k}, balanced subsample, leave-one-out majority vote, mean of {cfg.knn_repeats} subsamples",
        label_classifier=f"multinomial logistic regression on standardised PCs, l2={cfg.label_l2}"
        if prep.classifier is not None else None,
        gene_stats="Pearson r over genes; mean and variance of counts normalised per cell, log1p",
        min_cells=cfg.min_cells,
        seed=cfg.seed,
    )


def evaluate(
    real,
    generated,
    *,
    condition_key: str | Sequence[str] | None = None,
    control="split",
    conditions: Sequence[str] | None = None,
    layer: str | None = None,
    real_labels=None,
    generated_labels=None,
    control_labels=None,
    n_components: int = 30,
    target_sum: float = 1e4,
    k: int = 5,
    knn_repeats: int = 5,
    mmd_factors: Sequence[float] = MMD_FACTORS,
    w2_max_cells: int = 2000,
    relative_epsilon: float = 0.05,
    statistic: Statistic = "u",
    control_fraction: float = 0.5,
    min_cells: int = 10,
    check_counts: bool = True,
    label_l2: float = 1e-2,
    seed: int = 0,
) -> Evaluation:
    """Compare generated count cells with real ones, overall and per condition, beside a real-vs-real control.

    Arguments:
        real: real cells (the reference; e.g. held-out cells): AnnData with counts in ``X`` (or ``layer``) or a
            ``(cells, genes)`` array / scipy sparse matrix of counts.
        generated: generated cells, same genes (AnnData var_names are matched by name and reordered; arrays
            must have the same gene order).
        condition_key: ``obs`` column(s) with each cell's condition (several are joined as ``"a|b"``). Enables
            the per-condition breakdown and the label accuracy. For arrays pass ``*_labels`` instead (then
            ``condition_key`` only names the column, default ``"condition"``).
        control: ``"split"`` (default): split ``real`` stratified by condition into a reference part and a
            control part (``control_fraction`` of the cells) and compare *both* generated and control cells
            with the reference part; an AnnData / array: a second set of real cells (e.g. the training cells
            when ``real`` is held out), compared with all of ``real``; ``None``: no control.
        conditions: restrict the per-condition breakdown to these values (each must occur in real and generated
            cells); default: every condition of the generated cells (each must occur in the real cells). The
            ``"all"`` rows always use every cell.
        layer: AnnData layer holding the counts (for every AnnData input).
        real_labels, generated_labels, control_labels: ``(cells,)`` conditions for array inputs.
        n_components: PCs of the space the distribution metrics use (fitted on the reference real cells; at
            most ``cells - 1``).
        target_sum: per-cell total of the normalisation before ``log1p``.
        k: neighbours of the k-NN two-sample test; ``knn_repeats``: balanced subsamples averaged.
        mmd_factors: multipliers of the reference's median pairwise distance giving the MMD bandwidths.
        w2_max_cells: W2 uses at most this many random cells per set.
        relative_epsilon: Sinkhorn ``eps`` over the mean squared distance between reference cells.
        statistic: ``"u"`` (default) or ``"v"`` for energy distance and MMD (see :func:`energy_distance`).
        control_fraction: fraction of ``real`` that becomes the control with ``control="split"``.
        min_cells: two-sample metrics of a group with fewer cells in either set are NaN (with a note).
        check_counts: require integer counts (catches log-normalised input).
        label_l2: ridge penalty of the label classifier.
        seed: seeds the control split, subsampling, randomized PCA and k-NN subsamples.

    Returns:
        An :class:`Evaluation` (``.table``, ``.wide()``, ``.to_dict()``, data for :mod:`genjax.plots`).

    Raises:
        ValueError: invalid counts (negative, non-finite, non-integer), mismatched genes, missing
            ``condition_key`` column, a generated / control condition value absent from the real cells, a
            requested ``conditions`` value absent from real or generated cells, too few real cells, bad options.
    """
    cfg = _EvaluateConfig(n_components=n_components, target_sum=target_sum, k=k, knn_repeats=knn_repeats,
                          mmd_factors=mmd_factors, w2_max_cells=w2_max_cells, relative_epsilon=relative_epsilon,
                          statistic=statistic, control_fraction=control_fraction, min_cells=min_cells,
                          label_l2=label_l2, seed=seed)
    key_name = condition_key if isinstance(condition_key, str) or condition_key is None else "|".join(condition_key)
    load = functools.partial(as_count_set, condition_key=condition_key, layer=layer, check_counts=check_counts)
    real_set, gen_set, conditional = _load_real_generated(load, real, generated, real_labels, generated_labels)
    if conditional and key_name is None:
        key_name = "condition"
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    ref_set, ctl_set, control_desc = _resolve_control(control, real_set, load, control_labels, conditional=conditional,
                                                      key_name=key_name, control_fraction=control_fraction, rng=rng)
    sets = {"real": ref_set, "generated": gen_set} | ({} if ctl_set is None else {"control": ctl_set})
    groups = _condition_groups(sets, conditions, conditional=conditional, key_name=key_name, notes=notes)
    pca, n_comp, pcs = _project_sets(sets, cfg, notes)
    summaries = {n: _summary(s, pcs[n], target_sum, rng) for n, s in sets.items()}
    classifier = _fit_classifier(pcs, ref_set.labels, summaries, label_l2, notes) if conditional else None
    prep = _Prepared(sets=sets, pcs=pcs, summaries=summaries, classifier=classifier)
    comparer = _make_comparer(prep, cfg)
    rows = [row for gi, group in enumerate([ALL, *groups]) for row in _compare_group(prep, comparer, gi, group, cfg)]
    if comparer.max_sinkhorn_error > 1e-2:
        notes.append(f"Sinkhorn did not fully converge (marginal error up to {comparer.max_sinkhorn_error:.2g})")

    import pandas as pd

    settings = _settings(cfg, prep, key_name=key_name, control_desc=control_desc, n_comp=n_comp)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return Evaluation(table=pd.DataFrame(rows, columns=_TABLE_COLUMNS), settings=settings, real=summaries["real"],
                      generated=summaries["generated"], control=summaries.get("control"), pca=pca,
                      condition_key=key_name if conditional else None, notes=notes)
