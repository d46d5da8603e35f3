"""Baseline predictors of perturbation responses: the references every perturbation model is compared with.

Each baseline has the prediction interface of :class:`genjax.PerturbationModel`: ``fit`` on a training AnnData
of raw counts (controls and perturbed cells), then ``predict_mean(source, perturbation)`` and
``predict_cells(source, perturbation)`` from ``source`` control cells of one covariate combination (one cell
type, one cell line). Everything is in log1p(CP10k) space (counts scaled to ``target_sum`` per cell, then
``log1p``), per covariate combination where ``spec`` has covariates; ``fit`` keeps only the mean and the number
of cells of each training condition, so baselines are cheap to fit and to keep.

Notation: ``m(p, c)`` is the training mean of perturbation ``p`` with covariates ``c``, ``m(ctrl, c)`` that of
the controls, ``s`` the mean of the source cells and ``c`` their covariates.

=================  ==========================================================================================
``no_change``      ``s``
``control_mean``   ``m(ctrl, c)``
``noncontrol_mean`` mean of every perturbed training cell with covariates ``c``
``matching_mean``  mean over the members ``a`` of ``m(a, c)`` (``noncontrol_mean`` for a member never measured
                   alone); ``m(p, c)`` itself for a condition seen in training
``additive``       ``s + sum_a [m(a, c) - m(ctrl, c)]``
``mean_delta``     ``s + mean over the other covariate values c' of [m(p, c') - m(ctrl, c')]``
``linear``         ``s + [multi-hot(p), one-hot(c)] @ W``, ``W`` a ridge regression of the training shifts
=================  ==========================================================================================

``predict_cells`` moves every source cell by the predicted shift of the mean: ``x_i + (predict_mean - s)``,
clipped at 0.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .._checks import check_range
from ..data import (
    PerturbationSpec,
    UnknownPerturbationError,
    get_matrix,
    log1p_group_sums,
    normalize_log1p,
    row_chunks,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ConditionMeans", "PerturbationBaseline", "NoChange", "ControlMean", "NonControlMean", "MatchingMean", "Additive",
           "MeanDelta", "LinearBaseline", "BASELINES"]

_CHUNK_VALUES = 1 << 22  # values (cells x genes) normalised at a time: a few MiB of float32
RIDGE_ALPHAS = tuple(float(10.0**e) for e in np.arange(-3.0, 3.01, 0.5))
"""Ridge strengths the linear baseline chooses from by default (1e-3 to 1e3, half decades)."""


@dataclasses.dataclass
class ConditionMeans:
    """Per-condition means of log1p(CP10k) and cell counts of a training set (what a fitted baseline keeps, as
    ``baseline.stats``): ``keys`` ``[(perturbation, covariate values)]``, ``means`` float64 ``(conditions,
    genes)``, ``counts`` int64 ``(conditions,)``, ``var_names``."""

    keys: list[tuple[str, tuple[str, ...]]]  # (perturbation, covariate values) per row
    means: np.ndarray  # (conditions, genes) float64
    counts: np.ndarray  # (conditions,) int64
    var_names: np.ndarray

    def __post_init__(self):
        self.index = {k: i for i, k in enumerate(self.keys)}

    def get(self, perturbation: str, cov: tuple) -> np.ndarray | None:
        i = self.index.get((perturbation, cov))
        return None if i is None else self.means[i]

    def covariate_values(self) -> list[tuple]:
        return sorted({c for _, c in self.keys})


def _log1p_chunks(adata, layer: str | None, target_sum: float):
    """``(start, block)``: log1p(CP``target_sum``) of consecutive rows of ``adata``'s matrix, as float32 numpy
    arrays of at most ~4M values (a sparse or backed matrix is never densified whole)."""
    X = get_matrix(adata, layer)
    for start, block in row_chunks(X, chunk=max(1, _CHUNK_VALUES // max(1, X.shape[1]))):
        yield start, normalize_log1p(block, target_sum)


def _cov_text(spec: PerturbationSpec, cov: tuple) -> str:
    if not spec.covariate_keys:
        return "(no covariates)"
    return ", ".join(f"{k}={v!r}" for k, v in zip(spec.covariate_keys, cov, strict=True))


class PerturbationBaseline(abc.ABC):
    """A baseline predictor: fitted on training cells, predicting from control cells of one covariate
    combination.

    Arguments:
        spec: where the perturbation labels and covariates are (:class:`genjax.data.PerturbationSpec`).
        layer: the layer of raw counts (``None``: ``X``), in training and source cells alike.
        target_sum: counts per cell before ``log1p`` (1e4: log1p CP10k).
    """

    name: ClassVar[str]

    def __init__(self, spec: PerturbationSpec, *, layer: str | None = None, target_sum: float = 1e4):
        if not isinstance(spec, PerturbationSpec):
            raise TypeError(f"spec must be a PerturbationSpec; got {type(spec).__name__}")
        self.spec = spec
        self.layer = layer
        self.target_sum = check_range("target_sum", target_sum, low=0.0, low_open=True)
        self.stats: ConditionMeans | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.stats is not None else "not fitted"
        return f"{type(self).__name__}(key={self.spec.key!r}, {state})"

    # -- fitting ---------------------------------------------------------------------------------------------

    def fit(self, adata) -> Self:
        """Keep the mean log1p(CP10k) profile and the number of cells of every condition of ``adata`` (training
        cells: raw counts, controls and perturbed cells).

        Raises:
            KeyError: a perturbation or covariate column missing from ``adata.obs``. ValueError: a malformed
                perturbation label (named with its cell), an empty AnnData.
        """
        if adata.n_obs == 0:
            raise ValueError("cannot fit a baseline on an AnnData with no cells")
        labels = self.spec.labels(adata)
        covs = self.spec.covariates(adata)
        rows = [(str(p), tuple(str(v) for v in c)) for p, c in zip(labels, covs, strict=True)]
        keys = sorted(set(rows))
        index = {k: i for i, k in enumerate(keys)}
        groups = np.fromiter((index[r] for r in rows), np.int64, len(rows))
        counts = np.bincount(groups, minlength=len(keys)).astype(np.int64)
        sums = log1p_group_sums(get_matrix(adata, self.layer), groups, len(keys), self.target_sum)
        self.stats = ConditionMeans(keys, sums / counts[:, None], counts, np.asarray(adata.var_names).astype(str))
        self._fit_statistics()
        return self

    def _fit_statistics(self) -> None:  # noqa: B027 (a hook: most baselines learn nothing more)
        """Anything a baseline learns beyond the condition means (the linear model's weights)."""

    def _require_fitted(self) -> ConditionMeans:
        if self.stats is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train_adata) first")
        return self.stats

    # -- prediction ------------------------------------------------------------------------------------------

    def predict_mean(self, source, perturbation: str) -> np.ndarray:
        """``(genes,)`` float32 predicted mean of log1p(CP10k) over the cells of ``perturbation`` with the
        covariates of the ``source`` control cells.

        Raises:
            RuntimeError: not fitted. ValueError: a source cell that is not a control (named), source cells
                of several covariate combinations (the values are named), genes other than the training genes.
            UnknownPerturbationError: what the baseline needs was never seen in training (the member or
                covariate value is named).
        """
        mean, _, cov = self._source(source, cells=False)
        return self._predict(mean, cov, self.spec.canonical(perturbation)).astype(np.float32)

    def predict_cells(self, source, perturbation: str) -> np.ndarray:
        """``(n_source, genes)`` float32: each source cell's log1p(CP10k) values moved by the predicted shift of
        the mean (``predict_mean - mean of the source cells``), clipped at 0. Raises as :meth:`predict_mean`."""
        mean, cells, cov = self._source(source, cells=True)
        pred = self._predict(mean, cov, self.spec.canonical(perturbation))
        return np.maximum(cells + (pred - mean)[None, :], 0.0).astype(np.float32)

    @abc.abstractmethod
    def _predict(self, source_mean: np.ndarray, cov: tuple, perturbation: str) -> np.ndarray:
        """Predicted mean (float64 ``(genes,)``) of canonical ``perturbation`` with covariates ``cov``."""

    def _source(self, source, *, cells: bool):
        """The source cells' mean log1p(CP10k) (float64), their values (float32, or ``None``) and covariates."""
        stats = self._require_fitted()
        names = np.asarray(source.var_names).astype(str)
        if names.shape != stats.var_names.shape or not np.array_equal(names, stats.var_names):
            raise ValueError(f"source genes differ from the training genes ({len(names)} vs "
                             f"{len(stats.var_names)}, first difference at "
                             f"{_first_difference(names, stats.var_names)}); subset both to the same genes")
        if source.n_obs == 0:
            raise ValueError("source has no cells")
        labels = self.spec.labels(source)
        bad = np.flatnonzero(labels != self.spec.control)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"source cell {str(source.obs_names[i])!r} is not a control: its perturbation is "
                             f"{labels[i]!r} (source cells must all be {self.spec.control!r}; {bad.size} are not)")
        covs = self.spec.covariates(source)
        unique = sorted({tuple(str(v) for v in c) for c in covs})
        if len(unique) > 1:
            shown = "; ".join(_cov_text(self.spec, c) for c in unique[:6])
            raise ValueError(f"source cells must share one covariate combination; got {len(unique)}: {shown}")
        total = np.zeros(source.n_vars, np.float64)
        values = []
        for _, block in _log1p_chunks(source, self.layer, self.target_sum):
            total += block.sum(axis=0, dtype=np.float64)
            if cells:
                values.append(block)
        return total / source.n_obs, (np.concatenate(values) if cells else None), (unique[0] if unique else ())

    # -- training statistics used by several baselines -------------------------------------------------------

    def _control(self, cov: tuple) -> np.ndarray:
        m = self._require_fitted().get(self.spec.control, cov)
        if m is None:
            raise UnknownPerturbationError(f"{self.name}: no training control cell has {_cov_text(self.spec, cov)}")
        return m

    def _noncontrol(self, cov: tuple) -> np.ndarray:
        stats = self._require_fitted()
        rows = [i for i, (p, c) in enumerate(stats.keys) if c == cov and p != self.spec.control]
        if not rows:
            raise UnknownPerturbationError(f"{self.name}: no perturbed training cell has "
                                           f"{_cov_text(self.spec, cov)}")
        w = stats.counts[rows].astype(np.float64)
        return (w[:, None] * stats.means[rows]).sum(axis=0) / w.sum()

    def _single(self, member: str, cov: tuple, perturbation: str) -> np.ndarray:
        m = self._require_fitted().get(member, cov)
        if m is None:
            raise UnknownPerturbationError(
                f"{self.name}: perturbation {perturbation!r}: member {member!r} was never seen alone in training "
                f"with {_cov_text(self.spec, cov)}")
        return m


class NoChange(PerturbationBaseline):
    """No change: the prediction is the source cells themselves, ``ŷ = s`` (mean of the source cells).

    The "no change" baseline of Ahlmann-Eltze, Huber & Anders (Nat. Methods 2025, "Deep-learning-based gene
    perturbation effect prediction does not yet outperform simple linear baselines"), where it predicts the
    control expression; every metric of a response is zero for it."""

    name: ClassVar[str] = "no_change"

    def _predict(self, source_mean, cov, perturbation):
        return source_mean.copy()


class ControlMean(PerturbationBaseline):
    """Control mean: ``ŷ = m(ctrl, c)``, the mean of the training controls with the source's covariates.

    Systema's control reference (Viñas Torné et al. 2025; ``control_mean`` in ``src/run_nonctl-mean.py`` of
    mlbio-epfl/systema), per covariate combination here. Raises :class:`UnknownPerturbationError` when no
    training control has the source's covariates."""

    name: ClassVar[str] = "control_mean"

    def _predict(self, source_mean, cov, perturbation):
        return self._control(cov).copy()


class NonControlMean(PerturbationBaseline):
    """Non-control mean: ``ŷ`` = mean over every perturbed training cell with the source's covariates
    (cell-weighted, whatever the perturbation).

    Systema's "non-control mean" (``pert_mean = mean of train cells with control == 0`` in
    ``src/run_nonctl-mean.py`` of mlbio-epfl/systema), per covariate combination here. Raises
    :class:`UnknownPerturbationError` when no perturbed training cell has the source's covariates."""

    name: ClassVar[str] = "noncontrol_mean"

    def _predict(self, source_mean, cov, perturbation):
        return self._noncontrol(cov)


class MatchingMean(PerturbationBaseline):
    """Matching mean: ``ŷ = mean over the members a of m(a, c)``, where a member never measured alone with
    the source's covariates contributes the non-control mean instead; a condition seen in training predicts its
    own training mean ``m(p, c)``; the control predicts ``m(ctrl, c)``.

    Systema's "matching mean" (``src/run_matching-mean.py`` of mlbio-epfl/systema: for ``A+B`` the average of
    the training means of ``A+ctrl`` and ``B+ctrl``, ``pert_mean`` for a member without one), per covariate
    combination here. Systema predicts only test conditions; using the own mean of a condition seen in
    training is our extension (it agrees with theirs for single perturbations)."""

    name: ClassVar[str] = "matching_mean"

    def _predict(self, source_mean, cov, perturbation):
        stats = self._require_fitted()
        own = stats.get(perturbation, cov)
        if own is not None:
            return own.copy()
        members = self.spec.members(perturbation)
        if not members:
            return self._control(cov).copy()
        parts = []
        for m in members:
            single = stats.get(m, cov)
            parts.append(single if single is not None else self._noncontrol(cov))
        return np.mean(parts, axis=0)


class Additive(PerturbationBaseline):
    """Additive: ``ŷ = s + sum over the members a of [m(a, c) - m(ctrl, c)]`` (training means with the
    source's covariates); with the training controls as source, ``ŷ_AB = m_A + m_B - m_ctrl``.

    The "additive" baseline of Ahlmann-Eltze, Huber & Anders (Nat. Methods 2025): the sum of the single
    perturbations' log fold changes, in log1p(CP10k) space. The control predicts ``s``. Raises
    :class:`UnknownPerturbationError` naming a member never seen alone with these covariates (or no training
    control with them)."""

    name: ClassVar[str] = "additive"

    def _predict(self, source_mean, cov, perturbation):
        members = self.spec.members(perturbation)
        if not members:
            return source_mean.copy()
        ctrl = self._control(cov)
        return source_mean + sum(self._single(m, cov, perturbation) - ctrl for m in members)


class MeanDelta(PerturbationBaseline):
    """Mean delta (for a perturbation held out in one covariate value): ``ŷ = s + δ(p)``, ``δ(p)`` the average,
    over the *other* covariate combinations ``c'`` with training cells of ``p`` and controls, of
    ``m(p, c') - m(ctrl, c')`` (each covariate combination weighs the same).

    The gene-space form of scGen's vector arithmetic (Lotfollahi, Wolf & Theis, Nat. Methods 2019): on Kang
    2018 with a cell type held out, that type's controls plus the average STIM - CTRL shift of the other types.
    A combination never seen in another covariate combination is the sum of its members' deltas,
    ``δ(A+B) = δ(A) + δ(B)``; one seen elsewhere uses its own delta. The control predicts ``s``. Raises
    :class:`UnknownPerturbationError` when the perturbation (or, for a combination, a member) was never seen
    with any other covariate combination that has controls."""

    name: ClassVar[str] = "mean_delta"

    def _fit_statistics(self) -> None:
        if not self.spec.covariate_keys:
            raise ValueError(f"{self.name} carries a perturbation's shift over from other covariate values; the "
                             "PerturbationSpec has no covariate_keys")

    def _delta(self, p: str, cov: tuple) -> np.ndarray | None:
        stats = self._require_fitted()
        deltas = []
        for c in stats.covariate_values():
            if c == cov:
                continue
            m, ctrl = stats.get(p, c), stats.get(self.spec.control, c)
            if m is not None and ctrl is not None:
                deltas.append(m - ctrl)
        return np.mean(deltas, axis=0) if deltas else None

    def _predict(self, source_mean, cov, perturbation):
        members = self.spec.members(perturbation)
        if not members:
            return source_mean.copy()
        own = self._delta(perturbation, cov)
        if own is not None:
            return source_mean + own
        if len(members) == 1:
            raise UnknownPerturbationError(
                f"{self.name}: perturbation {perturbation!r} was never seen in training with a covariate "
                f"combination other than {_cov_text(self.spec, cov)} that has controls")
        total = source_mean.copy()
        for m in members:
            d = self._delta(m, cov)
            if d is None:
                raise UnknownPerturbationError(
                    f"{self.name}: perturbation {perturbation!r}: neither it nor its member {m!r} was seen in "
                    f"training with a covariate combination other than {_cov_text(self.spec, cov)} that has "
                    "controls")
            total += d
        return total


class LinearBaseline(PerturbationBaseline):
    """Linear: ``ŷ = s + x(p, c) @ W``, ``x(p, c) = [multi-hot of the members of p, one-hot of each covariate
    value of c]`` and ``W`` (features x genes) a ridge regression of the training shifts.

    PerturBench's ``LinearAdditive`` (``src/perturbench/modelcore/models/linear_additive.py`` of
    altoslabs/perturbench) predicts a cell as ``softplus(x_ctrl + Linear([perturbation multi-hot,
    covariate one-hots]))`` from a random control cell ``x_ctrl`` of the same covariates, trained by per-cell MSE
    on every training cell, the controls included (multi-hot zero), with Adam and weight decay (~1e-8, early
    stopping). At the level of condition means that is a least-squares fit of the shift ``m(p, c) - m(ctrl, c)``
    on ``x(p, c)``, with the controls' shift (0) as rows too; here it is solved in closed form:

    * one row per training condition ``(p, c)`` with controls of ``c``: target ``m(p, c) - m(ctrl, c)``; with
      ``covariates=True`` one more row per covariate combination with controls: ``x = [0, one-hot(c)]``,
      target 0 (PerturBench's control cells); rows weigh the same (PerturBench's per-cell loss weighs them by
      their numbers of cells);
    * ``W = (XᵀX + α I)⁻¹ Xᵀ Y`` with ``α`` given, or chosen on the training conditions only by
      leave-one-condition-out error (closed form, the perturbed rows left out one at a time) over ``alphas``;
    * no softplus: ``predict_cells`` clips at 0 instead, as every baseline does.

    Raises :class:`UnknownPerturbationError` naming a member never seen in training, or (``covariates=True``)
    a covariate value never seen in training.

    Arguments (besides the base class's):
        covariates: add the covariate one-hots (PerturBench's ``inject_covariates``; default ``True`` as in
            their model config).
        alpha: fixed ridge strength (``None``: chosen by leave-one-condition-out).
        alphas: the ridge strengths tried.
    """

    name: ClassVar[str] = "linear"

    def __init__(self, spec: PerturbationSpec, *, layer: str | None = None, target_sum: float = 1e4,
                 covariates: bool = True, alpha: float | None = None,
                 alphas=RIDGE_ALPHAS):
        super().__init__(spec, layer=layer, target_sum=target_sum)
        self.covariates = bool(covariates) and bool(spec.covariate_keys)
        self.alpha = None if alpha is None else check_range("alpha", alpha, low=0.0)
        self.alphas = tuple(check_range("alphas", a, low=0.0, low_open=True) for a in alphas)
        if self.alpha is None and not self.alphas:
            raise ValueError("alphas must hold at least one ridge strength when alpha is None; got ()")
        self.vocabulary: list[str] = []
        self.covariate_vocabulary: list[list[str]] = []
        self.weights: np.ndarray | None = None
        self.cv_errors: dict[float, float] = {}
        self.alpha_: float | None = None

    def _features(self, perturbation: str, cov: tuple) -> np.ndarray:
        x = [self.spec.multi_hot([perturbation], self.vocabulary)[0]]
        if self.covariates:
            for k, values, v in zip(self.spec.covariate_keys, self.covariate_vocabulary, cov, strict=True):
                if v not in values:
                    raise UnknownPerturbationError(f"{self.name}: covariate {k}={v!r} was never seen in training "
                                                   f"(values: {', '.join(map(repr, values))})")
                one = np.zeros(len(values), np.float32)
                one[values.index(v)] = 1.0
                x.append(one)
        return np.concatenate(x).astype(np.float64)

    def _fit_statistics(self) -> None:
        stats = self._require_fitted()
        control = self.spec.control
        perturbed = [(p, c) for p, c in stats.keys if p != control and stats.get(control, c) is not None]
        if not perturbed:
            raise ValueError(f"{self.name}: no perturbed training condition has controls with the same "
                             "covariates: nothing to learn a shift from")
        self.vocabulary = self.spec.vocabulary(p for p, _ in perturbed)
        with_controls = sorted({c for p, c in stats.keys if p == control})
        self.covariate_vocabulary = [sorted({c[j] for c in with_controls} | {c[j] for _, c in perturbed})
                                     for j in range(len(self.spec.covariate_keys))] if self.covariates else []
        rows = perturbed + ([(control, c) for c in with_controls] if self.covariates else [])
        X = np.stack([self._features(p, c) for p, c in rows])
        Y = np.stack([stats.get(p, c) - stats.get(control, c) for p, c in rows])
        n_pert = len(perturbed)
        if self.alpha is not None:
            self.alpha_ = self.alpha
        else:
            self.cv_errors = {a: _loo_error(X, Y, a, n_pert) for a in self.alphas}
            self.alpha_ = min(self.cv_errors, key=lambda a: (self.cv_errors[a], -a))
        self.weights = _ridge(X, Y, self.alpha_)

    def _predict(self, source_mean, cov, perturbation):
        return source_mean + self._features(perturbation, cov) @ self.weights


def _ridge(X: np.ndarray, Y: np.ndarray, alpha: float) -> np.ndarray:
    A = X.T @ X + alpha * np.eye(X.shape[1])
    return np.linalg.lstsq(A, X.T @ Y, rcond=None)[0]


def _loo_error(X: np.ndarray, Y: np.ndarray, alpha: float, n_rows: int) -> float:
    """Mean squared leave-one-row-out error (per gene) of the first ``n_rows`` rows of a ridge fit."""
    A = X.T @ X + alpha * np.eye(X.shape[1])
    H = X @ np.linalg.lstsq(A, X.T, rcond=None)[0]
    resid = (Y - H @ Y)[:n_rows]
    lever = 1.0 - np.diag(H)[:n_rows]
    loo = resid / np.maximum(lever, 1e-12)[:, None]
    return float(np.mean(loo**2))


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {i}: {x!r} vs {y!r}"
    return f"position {min(len(a), len(b))} (one list is longer)"


BASELINES: dict[str, type[PerturbationBaseline]] = {
    cls.name: cls for cls in (NoChange, ControlMean, NonControlMean, MatchingMean, Additive, MeanDelta,
                              LinearBaseline)
}
"""The baselines by name: ``no_change``, ``control_mean``, ``noncontrol_mean``, ``matching_mean``, ``additive``,
``mean_delta``, ``linear``."""
