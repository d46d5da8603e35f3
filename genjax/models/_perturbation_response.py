"""The response of cells to a perturbation as a shift of their VAE latent: estimated from the training
conditions' latent centroids, composed over the members of a combination, carried to covariate values (cell types,
cell lines) where the perturbation was never measured.

Notation: ``r = [z, log l]`` is a cell's latent posterior mean with its log library size appended (a perturbation
may change library sizes too); ``m(P, c)`` the centroid of ``r`` over the training cells of perturbation ``P``
with covariate values ``c``, ``b(c) = m(control, c)`` the basal centroid, and ``D(P, c) = m(P, c) - b(c)`` the
observed shift. A predicted cell of ``(P, c)`` is a control cell of ``c`` moved by the predicted shift
``delta(P, c)`` and decoded by the count decoder.

Two estimators of ``delta``:

* ``"scgen"`` (Lotfollahi et al. 2019, "scGen predicts single-cell perturbation responses", Nat. Methods): one
  shift per perturbation, the mean over covariate values of ``D(P, c')`` (scGen balances cell types before
  averaging); a combination's shift is the sum of its members' (latent arithmetic).
* ``"compositional"`` (CPA-class, Lotfollahi et al. 2023, Mol. Syst. Biol., with closed-form estimates in place of
  the adversarial autoencoder): ``delta(P, c) = offset + correction``, where the offset is the baseline (the shift
  averaged over the other covariate values, and the sum of member shifts for a combination) and the correction is
  learned and shrunk toward zero by cross-validation on the training conditions only:

  - covariates: a kernel-weighted average ``sum_c' w(c, c') D(P, c') / sum_c' w`` with
    ``w = exp(-|zb(c) - zb(c')|^2 / (2 h^2)) * n_eff / (n_eff + 10)`` over the covariate values ``c'`` where
    ``P`` was measured (``zb``: the latent part of the basal centroid; ``n_eff`` the harmonic mean of the two arm
    sizes, so tiny groups count less). The response depends on the basal state: monocytes respond like
    monocytes. ``h`` is chosen by leave-one-covariate-out error over the training conditions from multiples of
    the median distance between basal centroids; ``h = inf`` is the plain average (the mean-delta baseline in
    latent space), so the correction can only be taken when it predicted held-out training conditions better.
  - combinations: ``delta(A+B, c) = delta(A, c) + delta(B, c) + phi W``, with features
    ``phi = [sum_i delta_i, sum_{i<j} delta_i * delta_j]`` and ``W`` a ridge regression of the training
    combinations' residuals ``D(A+B, c) - delta(A, c) - delta(B, c)`` whose penalty is chosen by
    leave-one-combination-out error (``inf``, i.e. ``W = 0``, the additive model, is a candidate; fewer than
    three training combinations leave ``W = 0``).
  - or, pooled member effects (the latent analogue of PerturBench's linear model, and of CPA's embeddings learned
    from every condition): ``delta(A+B, c) = e_A + e_B`` with effects fitted to every condition measured at ``c``
    (singles and combinations) by ``min sum_P |D(P, c) - sum_{m in P} e_m|^2 + lambda sum_m |e_m - delta(m, c)|^2``,
    so that combinations sharing a member tell how it acts in combination (e.g. sub-additively). ``lambda`` comes
    from the same leave-one-combination-out error (``inf`` is the additive model again); the family with the lower
    error (ridge interaction or pooled effects) is used, ties keep the additive model.

Conditions measured in training are predicted by their own shift ``D(P, c)`` under either estimator.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Literal

import numpy as np

from ..data import PerturbationSpec, UnknownPerturbationError

__all__ = ["LatentResponse", "ResponseMethod"]

ResponseMethod = Literal["compositional", "scgen"]

_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
_RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, math.inf)
_POOLING_GRID = (0.0, 0.1, 0.3, 1.0, 3.0, math.inf)
_RELIABILITY = 10.0  # cells at which a condition's centroid counts half


@dataclasses.dataclass
class LatentResponse:
    """Latent centroids of the training conditions and the estimator of shifts built on them.

    Fields:
        spec: the :class:`~genjax.data.PerturbationSpec` (labels, control, covariate keys).
        method: ``"compositional"`` or ``"scgen"`` (module docstring).
        covariates: the covariate value tuples that have control cells, in a fixed order.
        basal: float64 ``(len(covariates), dim)`` control centroids ``b(c)`` of ``r = [z, log l]``.
        basal_n: int ``(len(covariates),)`` control cells per covariate value.
        conditions: ``[(perturbation, covariate index)]`` of the perturbed training conditions.
        means: float64 ``(len(conditions), dim)`` their centroids ``m(P, c)``; counts: their cell numbers.
        bandwidth: the kernel bandwidth ``h`` (``inf``: plain average); ridge: the interaction penalty
            (``inf``: none); interaction: float64 ``(2 dim, dim)`` ridge coefficients ``W``; pooling: the penalty
            ``lambda`` of pooled member effects (``inf``: the members' own shifts).
    """

    spec: PerturbationSpec
    method: str
    covariates: list[tuple[str, ...]]
    basal: np.ndarray
    basal_n: np.ndarray
    conditions: list[tuple[str, int]]
    means: np.ndarray
    counts: np.ndarray
    bandwidth: float = math.inf
    ridge: float = math.inf
    interaction: np.ndarray | None = None
    pooling: float = math.inf

    @classmethod
    def fit(cls, r: np.ndarray, labels: np.ndarray, covariates: np.ndarray, spec: PerturbationSpec,
            method: str = "compositional") -> LatentResponse:
        """Centroids of every training condition and (``"compositional"``) the cross-validated bandwidth and
        interaction penalty.

        Arguments:
            r: ``(cells, dim)`` latent means with the log library size as last column.
            labels: ``(cells,)`` canonical perturbation labels (:meth:`PerturbationSpec.labels`).
            covariates: ``(cells, n_keys)`` covariate values (strings).
            spec: the perturbation specification. method: ``"compositional"`` | ``"scgen"``.

        Raises:
            ValueError: no control cell, or a method name that is not one of the two.
        """
        if method not in ("compositional", "scgen"):
            raise ValueError(f"response method must be 'compositional' or 'scgen'; got {method!r}")
        r = np.asarray(r, np.float64)
        cov_keys = [tuple(row) for row in np.asarray(covariates, dtype=object)]
        control = labels == spec.control
        if not control.any():
            raise ValueError(f"no training cell has the control label {spec.control!r}")
        cov_values = sorted({k for k, c in zip(cov_keys, control, strict=True) if c})
        index = {c: i for i, c in enumerate(cov_values)}
        cov_idx = np.array([index.get(k, -1) for k in cov_keys])
        basal = np.stack([r[control & (cov_idx == i)].mean(0) for i in range(len(cov_values))])
        basal_n = np.array([int((control & (cov_idx == i)).sum()) for i in range(len(cov_values))])
        conditions, means, counts = [], [], []
        pert = ~control & (cov_idx >= 0)  # perturbed cells of covariate values without controls cannot be used
        keys = np.array([f"{p}\x00{c}" for p, c in zip(labels[pert], cov_idx[pert], strict=True)])
        rows = np.flatnonzero(pert)
        for key in np.unique(keys):
            p, c = key.split("\x00")
            sel = rows[keys == key]
            conditions.append((p, int(c)))
            means.append(r[sel].mean(0))
            counts.append(len(sel))
        dim = r.shape[1]
        self = cls(spec, method, cov_values, basal, basal_n, conditions,
                   np.asarray(means, np.float64).reshape(-1, dim), np.asarray(counts, np.int64))
        if method == "compositional":
            self.bandwidth = self._choose_bandwidth()
            self.ridge, self.interaction, self.pooling = self._fit_combinations()
        return self

    @property
    def dim(self) -> int:
        return self.basal.shape[1]

    def covariate_index(self, values: tuple[str, ...]) -> int:
        """Index of a covariate value tuple among those with training controls.

        Raises:
            UnknownPerturbationError: the tuple had no control cells in training.
        """
        try:
            return self.covariates.index(tuple(values))
        except ValueError:
            keys = dict(zip(self.spec.covariate_keys, values, strict=True))
            raise UnknownPerturbationError(
                f"covariate values {keys} had no control cells in training (seen: "
                f"{[dict(zip(self.spec.covariate_keys, c, strict=True)) for c in self.covariates][:8]})") from None

    def _observed(self) -> dict[tuple[str, int], int]:
        return {cond: i for i, cond in enumerate(self.conditions)}

    def _shifts_of(self, perturbation: str, exclude: int | None = None):
        """Observed shifts ``D(P, c')`` with their covariate indices and reliabilities (all ``c'`` but
        ``exclude``)."""
        idx = [i for i, (p, c) in enumerate(self.conditions) if p == perturbation and c != exclude]
        if not idx:
            return np.zeros((0, self.dim)), np.zeros(0, int), np.zeros(0)
        covs = np.array([self.conditions[i][1] for i in idx])
        shifts = self.means[idx] - self.basal[covs]
        n_p, n_b = self.counts[idx].astype(float), self.basal_n[covs].astype(float)
        n_eff = 2.0 / (1.0 / n_p + 1.0 / n_b)
        return shifts, covs, n_eff / (n_eff + _RELIABILITY)

    def _carried(self, perturbation: str, c: int, bandwidth: float, exclude: int | None = None) -> np.ndarray | None:
        """The shift of a measured perturbation at covariate ``c`` from its shifts elsewhere (kernel average;
        ``None`` when it was measured nowhere else)."""
        shifts, covs, reliability = self._shifts_of(perturbation, exclude)
        if not len(covs):
            return None
        if math.isinf(bandwidth):
            w = np.ones(len(covs))  # the plain average over covariate values (mean-delta / scGen)
        else:
            d2 = ((self._z(self.basal[covs]) - self._z(self.basal[c])) ** 2).sum(-1)
            w = np.exp(-(d2 - d2.min()) / (2.0 * bandwidth**2)) * reliability
        return (w[:, None] * shifts).sum(0) / w.sum()

    def _z(self, x: np.ndarray) -> np.ndarray:
        return x[..., :-1]  # the latent part (without the log library size)

    def _choose_bandwidth(self) -> float:
        """Leave-one-covariate-out choice of ``h`` over perturbations measured in >= 3 covariate values."""
        zb = self._z(self.basal)
        dists = np.sqrt(((zb[:, None] - zb[None]) ** 2).sum(-1))[np.triu_indices(len(zb), 1)]
        scale = float(np.median(dists)) if dists.size else 1.0
        cases = [(p, c) for (p, c) in self.conditions if sum(q == p for q, _ in self.conditions) >= 3]
        if not cases or scale <= 0:
            return math.inf
        observed = self._observed()
        best, best_err = math.inf, math.inf
        for factor in sorted(_BANDWIDTH_FACTORS, reverse=True):  # from the plain average: ties keep it
            h = scale * factor
            err = 0.0
            for p, c in cases:
                i = observed[(p, c)]
                pred = self._carried(p, c, h, exclude=c)
                err += float(((self.means[i] - self.basal[c] - pred) ** 2).sum())
            if err < best_err:
                best, best_err = h, err
        return best

    def _member_shift(self, member: str, c: int, bandwidth: float) -> np.ndarray:
        observed = self._observed()
        if (member, c) in observed:
            i = observed[(member, c)]
            return self.means[i] - self.basal[c]
        carried = self._carried(member, c, bandwidth)
        if carried is None:
            raise UnknownPerturbationError(f"perturbation {member!r} was never measured alone in training, so its "
                                           "effect cannot be composed")
        return carried

    @staticmethod
    def _features(member_shifts: list[np.ndarray]) -> np.ndarray:
        total = np.sum(member_shifts, axis=0)
        pairs = [a * b for a, b in itertools.combinations(member_shifts, 2)]
        return np.concatenate([total, np.sum(pairs, axis=0) if pairs else np.zeros_like(total)])

    def _interaction_data(self, with_rows: bool = False):
        """Features and residuals of the training combinations whose members were all measured alone (and their
        condition indices)."""
        phis, residuals, rows = [], [], []
        for i, (p, c) in enumerate(self.conditions):
            members = self.spec.members(p)
            if len(members) < 2:
                continue
            try:
                shifts = [self._member_shift(m, c, self.bandwidth) for m in members]
            except UnknownPerturbationError:
                continue
            phis.append(self._features(shifts))
            residuals.append(self.means[i] - self.basal[c] - np.sum(shifts, axis=0))
            rows.append(i)
        out = np.asarray(phis).reshape(-1, 2 * self.dim), np.asarray(residuals).reshape(-1, self.dim)
        return (*out, np.asarray(rows, np.int64)) if with_rows else out

    @staticmethod
    def _ridge(phi: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
        if math.isinf(lam):
            return np.zeros((phi.shape[1], y.shape[1]))
        return np.linalg.solve(phi.T @ phi + lam * np.eye(phi.shape[1]), phi.T @ y)

    def _fit_interaction(self, phi: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Leave-one-combination-out choice of the ridge penalty: ``(penalty, its error)``."""
        best, best_err = math.inf, math.inf
        for lam in sorted(_RIDGE_GRID, key=lambda v: -v):  # from the strongest penalty: ties keep the simplest
            err = 0.0
            for k in range(len(phi)):
                keep = np.arange(len(phi)) != k
                err += float(((y[k] - phi[k] @ self._ridge(phi[keep], y[keep], lam)) ** 2).sum())
            if err < best_err:
                best, best_err = lam, err
        return best, best_err

    def _combination_cases(self) -> list[tuple[int, tuple[str, ...], int]]:
        """``(condition index, members, covariate index)`` of the training combinations whose members were all
        measured alone (at their covariate value or carried from another)."""
        cases = []
        for i, (p, c) in enumerate(self.conditions):
            members = self.spec.members(p)
            if len(members) < 2:
                continue
            try:
                for m in members:
                    self._member_shift(m, c, self.bandwidth)
            except UnknownPerturbationError:
                continue
            cases.append((i, members, c))
        return cases

    def _pooled_effects(self, c: int, lam: float, exclude: int | None = None) -> dict[str, np.ndarray]:
        """Member effects at covariate ``c`` pooled over the conditions measured there (module docstring), the
        condition ``exclude`` left out; members that cannot be composed are left out."""
        rows, members = [], set()
        for i, (p, cc) in enumerate(self.conditions):
            if cc != c or i == exclude:
                continue
            ms = self.spec.members(p)
            try:
                for m in ms:
                    self._member_shift(m, c, self.bandwidth)
            except UnknownPerturbationError:
                continue
            rows.append((i, ms))
            members.update(ms)
        names = sorted(members)
        prior = np.stack([self._member_shift(m, c, self.bandwidth) for m in names]) if names else None
        if not names or math.isinf(lam):
            return dict(zip(names, prior, strict=True)) if names else {}
        col = {m: j for j, m in enumerate(names)}
        X = np.zeros((len(rows), len(names)))
        for r, (_, ms) in enumerate(rows):
            X[r, [col[m] for m in ms]] = 1.0
        Y = np.stack([self.means[i] - self.basal[c] for i, _ in rows])
        reg = max(lam, 1e-6)  # a member seen only inside combinations at c keeps a defined effect
        E = np.linalg.solve(X.T @ X + reg * np.eye(len(names)), X.T @ Y + reg * prior)
        return dict(zip(names, E, strict=True))

    def _fit_pooling(self, cases) -> tuple[float, float]:
        """Leave-one-combination-out choice of the pooling penalty: ``(penalty, its error)``."""
        best, best_err = math.inf, math.inf
        for lam in sorted(_POOLING_GRID, key=lambda v: -v):  # from inf (the additive model): ties keep it
            err = 0.0
            for i, members, c in cases:
                effects = self._pooled_effects(c, lam, exclude=i)
                if any(m not in effects for m in members):
                    effects = {m: self._member_shift(m, c, self.bandwidth) for m in members}
                pred = np.sum([effects[m] for m in members], axis=0)
                err += float(((self.means[i] - self.basal[c] - pred) ** 2).sum())
            if err < best_err:
                best, best_err = lam, err
        return best, best_err

    def _fit_combinations(self) -> tuple[float, np.ndarray, float]:
        """``(ridge, W, pooling)``: the ridge interaction or the pooled member effects, whichever predicted the
        held-out training combinations better (neither when the additive model did as well)."""
        none = (math.inf, np.zeros((2 * self.dim, self.dim)), math.inf)
        cases = self._combination_cases()
        if len(cases) < 2:
            return none
        pooling, pooled_err = self._fit_pooling(cases)
        ridge, ridge_err = math.inf, math.inf
        phi, y = self._interaction_data()
        if len(phi) >= 3:
            ridge, ridge_err = self._fit_interaction(phi, y)
        if math.isinf(pooling) and math.isinf(ridge):
            return none
        if not math.isinf(pooling) and (pooled_err <= ridge_err or math.isinf(ridge)):
            return math.inf, none[1], pooling
        return ridge, self._ridge(phi, y, ridge), math.inf

    def shift(self, perturbation: str, covariates: tuple[str, ...] = ()) -> tuple[np.ndarray, str]:
        """The predicted shift ``delta(P, c)`` (float64 ``(dim,)``) of ``perturbation`` at the covariate values
        ``covariates``, and which rule made it (``"measured"``, ``"carried"``, ``"composed"``).

        Raises:
            UnknownPerturbationError: the covariate values had no controls in training, a perturbation (or a
                member of a combination) was never measured, naming it.
        """
        p = self.spec.canonical(perturbation)
        c = self.covariate_index(covariates)
        if p == self.spec.control:
            return np.zeros(self.dim), "control"
        observed = self._observed()
        if (p, c) in observed:
            i = observed[(p, c)]
            return self.means[i] - self.basal[c], "measured"
        bandwidth = math.inf if self.method == "scgen" else self.bandwidth
        if self.method == "scgen" or any(q == p for q, _ in self.conditions):
            carried = self._carried(p, c, bandwidth)
            if carried is not None:
                return carried, "carried"
        members = self.spec.members(p)
        if len(members) < 2:
            raise UnknownPerturbationError(f"perturbation {p!r} was never seen in training")
        unseen = [m for m in members if not any(q == m for q, _ in self.conditions)]
        if unseen:
            raise UnknownPerturbationError(f"perturbation {p!r}: member {unseen[0]!r} was never measured alone in "
                                           "training")
        if self.method == "compositional" and not math.isinf(self.pooling):
            effects = self._pooled_effects(c, self.pooling)
            if all(m in effects for m in members):
                return np.sum([effects[m] for m in members], axis=0), "composed"
        shifts = [self._member_shift(m, c, bandwidth) for m in members]
        total = np.sum(shifts, axis=0)
        if self.method == "compositional" and self.interaction is not None:
            total = total + self._features(shifts) @ self.interaction
        return total, "composed"

    def left_out_shift(self, perturbation: str, c: int) -> tuple[np.ndarray | None, str]:
        """The shift of the *training* condition ``(perturbation, c)`` predicted without its own cells, and the
        rule that predicts it: carried from the other covariate values (``"carried"``), else composed from its
        members (``"composed"``; the pooled effects or the interaction refitted without it), else
        ``(None, "")``. The cases the baseline offset's weights are chosen on."""
        bandwidth = math.inf if self.method == "scgen" else self.bandwidth
        carried = self._carried(perturbation, c, bandwidth, exclude=c)
        if carried is not None:
            return carried, "carried"
        members = self.spec.members(perturbation)
        if len(members) < 2:
            return None, ""
        try:
            shifts = [self._member_shift(m, c, bandwidth) for m in members]
        except UnknownPerturbationError:
            return None, ""
        if self.method == "scgen":
            return np.sum(shifts, axis=0), "composed"
        i = self._observed()[(perturbation, c)]
        if not math.isinf(self.pooling):
            effects = self._pooled_effects(c, self.pooling, exclude=i)
            if all(m in effects for m in members):
                return np.sum([effects[m] for m in members], axis=0), "composed"
        total = np.sum(shifts, axis=0)
        if not math.isinf(self.ridge):
            phi, y, rows = self._interaction_data(with_rows=True)
            keep = rows != i
            total = total + self._features(shifts) @ self._ridge(phi[keep], y[keep], self.ridge)
        return total, "composed"

    def to_dict(self) -> dict:
        """JSON-ready fields (``inf`` written as ``None``)."""
        return {"spec": self.spec.to_dict(), "method": self.method, "covariates": [list(c) for c in self.covariates],
                "basal": self.basal.tolist(), "basal_n": self.basal_n.tolist(),
                "conditions": [[p, c] for p, c in self.conditions], "means": self.means.tolist(),
                "counts": self.counts.tolist(), "bandwidth": _finite_or_none(self.bandwidth),
                "ridge": _finite_or_none(self.ridge),
                "interaction": None if self.interaction is None else self.interaction.tolist(),
                "pooling": _finite_or_none(self.pooling)}

    @classmethod
    def from_dict(cls, d: dict) -> LatentResponse:
        """Inverse of :meth:`to_dict`."""
        dim = len(d["basal"][0]) if d["basal"] else 0
        return cls(PerturbationSpec.from_dict(d["spec"]), d["method"], [tuple(c) for c in d["covariates"]],
                   np.asarray(d["basal"], np.float64).reshape(-1, dim), np.asarray(d["basal_n"], np.int64),
                   [(p, int(c)) for p, c in d["conditions"]], np.asarray(d["means"], np.float64).reshape(-1, dim),
                   np.asarray(d["counts"], np.int64),
                   math.inf if d["bandwidth"] is None else float(d["bandwidth"]),
                   math.inf if d["ridge"] is None else float(d["ridge"]),
                   None if d["interaction"] is None else np.asarray(d["interaction"], np.float64),
                   math.inf if d.get("pooling") is None else float(d["pooling"]))


def _finite_or_none(x: float) -> float | None:
    return None if math.isinf(x) else float(x)
