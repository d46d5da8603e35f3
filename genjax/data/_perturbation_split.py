"""Seeded splits of perturbation data into train / validation / test cells, by the task being benchmarked.

Every splitter returns ``{"train", "val", "test"}`` boolean ``(cells,)`` masks that partition the cells of
``adata`` (``val`` may be empty); the same arguments and seed give the same split. The unit held out is a
*condition* (a perturbation with one value of every covariate key): every cell of a held-out condition lands in
``val`` or ``test``, never in ``train``.

* :func:`combination_split`: the combination task (PerturBench's ``combination_prediction_task``): every single
  perturbation trains; a fraction of the combinations is held out, half validation half test; controls
  50 / 25 / 25.
* :func:`heldout_condition_split`: one perturbation in one cell type (Kang et al. 2018 / scGen): its cells are
  the test set, the controls of that cell type stay in training (they are the source cells).
* :func:`heldout_covariate_split`: perturbations held out in one covariate value (one cell line) and seen in
  the others (McFaline-Figueroa et al. 2023, three glioblastoma lines).
* :func:`leave_one_double_out`: one combination is the test set (for small files such as the devel Norman data).
* :func:`combinations_with_singles`: the combinations whose members all were measured alone with the same
  covariates (the ones an additive prediction can be made for).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._checks import check_range
from ._perturbation import PerturbationSpec, UnknownPerturbationError
from ._split import stratified_split

__all__ = ["combination_split", "heldout_condition_split", "heldout_covariate_split", "leave_one_double_out",
           "combinations_with_singles"]

SPLITS = ("train", "val", "test")


def combinations_with_singles(adata, spec: PerturbationSpec) -> pd.DataFrame:
    """The combination conditions of ``adata`` (two or more members) with, for each, the members never measured
    alone with the same covariates.

    Returns:
        :meth:`PerturbationSpec.conditions` rows of the combinations plus ``missing_singles`` (a tuple of member
        names, empty when every member has cells of its own with the combination's covariates) and
        ``has_singles`` (bool).
    """
    cond = spec.conditions(adata)
    keys = list(spec.covariate_keys)
    seen = set(zip(cond["perturbation"], *(cond[k] for k in keys), strict=True))
    combos = cond[cond["n_members"] >= 2].reset_index(drop=True)
    missing = []
    for _, row in combos.iterrows():
        covs = tuple(row[k] for k in keys)
        missing.append(tuple(m for m in spec.members(row["perturbation"]) if (m, *covs) not in seen))
    combos["missing_singles"] = pd.Series(missing, dtype=object)
    combos["has_singles"] = [not m for m in missing]
    return combos


def combination_split(adata, spec: PerturbationSpec, *, heldout_fraction: float = 0.7, val_fraction: float = 0.5,
                      control_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
                      require_singles: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """The combination task: predict combinations from their members measured alone.

    Within each covariate combination (each cell type), in sorted order, the eligible combinations are shuffled
    and the first ``floor(heldout_fraction * n_eligible)`` are held out wholesale (every cell of a held-out
    combination goes to ``val`` or ``test``); of those, ``floor(val_fraction * n_heldout)`` go to ``val`` and
    the rest (``ceil``, so a lone held-out combination is a test one) to ``test``. Every single perturbation
    and every combination not held out is in ``train``. The controls of each covariate combination are shuffled
    and cut at ``floor(0.5 n)`` / ``floor(0.75 n)``: 50 / 25 / 25 by default.

    This follows PerturBench's ``PerturbationDataSplitter.split_combinations`` (``combination_prediction_task``;
    ``max_heldout_fraction_per_covariate: 0.7`` in their Norman 2019 experiments; the fraction is floored,
    per covariate combination, and the held-out combinations are split in half between val and test) with
    three differences: PerturBench holds out any combination, whether or not its members were measured alone
    (``require_singles=False`` does the same); it drops the cells of a covariate combination that has a single
    held-out combination (here they are test cells); and it splits controls at random over all covariate
    values at once (here within each covariate combination, so each cell type keeps 50 / 25 / 25).

    Arguments:
        adata: AnnData with the perturbation and covariate columns of ``spec`` in ``obs``.
        spec: where the labels are.
        heldout_fraction: fraction of the eligible combinations held out in each covariate combination, in
            ``[0, 1]``.
        val_fraction: fraction of the held-out combinations that go to ``val`` (the rest to ``test``), in
            ``[0, 1]``.
        control_fractions: train / val / test fractions of the controls (non-negative, summing to 1).
        require_singles: only combinations whose members all have cells alone with the same covariates are
            eligible (the others stay in ``train``); on the PerturBench devel file only 5 of the 13 Norman
            doubles are eligible. ``False``: every combination is eligible (PerturBench).
        seed: integer seed.

    Returns:
        ``{"train", "val", "test"}``: bool ``(cells,)`` masks partitioning the cells.

    Raises:
        ValueError: a fraction out of range, no control cell, or no combination in ``adata``.
        UnknownPerturbationError: with ``require_singles``, no combination whose members were all measured
            alone (the combinations and their missing members are named).
    """
    heldout_fraction = check_range("heldout_fraction", heldout_fraction, low=0.0, high=1.0)
    val_fraction = check_range("val_fraction", val_fraction, low=0.0, high=1.0)
    control_fractions = _check_fractions(control_fractions)
    labels = spec.labels(adata)
    covs = spec.covariates(adata)
    controls = labels == spec.control
    if not controls.any():
        raise ValueError(f"no cell has the control label {spec.control!r} in obs[{spec.key!r}]")
    combos = combinations_with_singles(adata, spec)
    if combos.empty:
        raise ValueError(f"no combination (label with {spec.delimiter!r}) in obs[{spec.key!r}]: the "
                         "combination task needs some")
    if require_singles and not combos["has_singles"].any():
        missing = "; ".join(f"{p}: {', '.join(m)}" for p, m in
                            zip(combos["perturbation"], combos["missing_singles"], strict=True))
        raise UnknownPerturbationError(
            f"no combination has all its members measured alone with the same covariates ({missing}); pass "
            "require_singles=False to hold out combinations anyway")
    rng = np.random.default_rng(seed)
    val, test = [], []
    keys = list(spec.covariate_keys)
    eligible = combos[combos["has_singles"]] if require_singles else combos
    for cov_value, group in _groups(eligible, keys):
        chosen = rng.permutation(group["perturbation"].to_numpy())[: int(math.floor(heldout_fraction * len(group)
                                                                                     + 1e-9))]
        n_val = int(math.floor(val_fraction * len(chosen) + 1e-9))
        val += [(p, *cov_value) for p in chosen[:n_val]]
        test += [(p, *cov_value) for p in chosen[n_val:]]
    out = _empty(adata.n_obs)
    key = _condition_keys(labels, covs)
    out["val"] = np.isin(key, [_join(c) for c in val])
    out["test"] = np.isin(key, [_join(c) for c in test])
    for part, idx in _split_controls(covs, controls, control_fractions, rng).items():
        out[part][idx] = True
    out["train"] = ~(out["val"] | out["test"])
    return out


def heldout_condition_split(adata, spec: PerturbationSpec, perturbation: str, covariates: dict, *,
                            val_fraction: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """One perturbation held out in one covariate value (the scGen task on Kang et al. 2018: IFN-beta response
    of one cell type, learnt from the other cell types).

    ``test``: the cells of ``perturbation`` whose covariates equal ``covariates``; everything else trains,
    including the controls with those covariates (the source cells a prediction starts from). With
    ``val_fraction > 0`` that fraction of the cells of each remaining perturbed condition (rounded, at least one
    cell kept in training per condition of two or more cells) goes to ``val``.

    Arguments:
        adata, spec: the cells and where their labels are.
        perturbation: the held-out perturbation (not the control; members in any order).
        covariates: ``{covariate key: value}`` of the held-out condition (keys not given are not constrained).
        val_fraction: fraction in ``[0, 1)`` of the other perturbed cells used for validation.
        seed: integer seed (only the validation cells are random).

    Returns:
        ``{"train", "val", "test"}``: bool ``(cells,)`` masks partitioning the cells.

    Raises:
        KeyError: a covariate key not in ``spec``. ValueError: ``perturbation`` is the control, or the
            perturbation and the covariate values exist but never together (no cell to hold out).
        UnknownPerturbationError: a perturbation or covariate value with no cell in ``adata`` (named, with the
            values there are).
    """
    val_fraction = check_range("val_fraction", val_fraction, low=0.0, high=1.0, high_open=True)
    labels = spec.labels(adata)
    canonical = _check_perturbation(spec, labels, perturbation)
    _check_covariates(spec, adata, covariates)
    test = spec.condition_mask(adata, canonical, covariates, labels=labels)
    if not test.any():
        raise ValueError(f"no cell has perturbation {canonical!r} with covariates {covariates}: nothing to hold "
                         f"out (its cells have covariates {_where_seen(spec, adata, labels, canonical)})")
    return _finish(adata, spec, labels, test, val_fraction, seed)


def heldout_covariate_split(adata, spec: PerturbationSpec, covariate_key: str, value: str,
                            perturbations=None, *, val_fraction: float = 0.0,
                            seed: int = 0) -> dict[str, np.ndarray]:
    """Perturbations held out in one covariate value and seen in the others (the McFaline-Figueroa 2023 task:
    a knockout measured in two glioblastoma lines, predicted in the third).

    The cells of each held-out perturbation with ``obs[covariate_key] == value`` are held out; its cells with
    the other values, every other perturbation and every control (those of ``value`` too: the source cells)
    train. Of the held-out perturbations (shuffled), ``floor(val_fraction * n)`` go to ``val`` wholesale, the
    rest to ``test``.

    Arguments:
        adata, spec: the cells and where their labels are.
        covariate_key: one of ``spec.covariate_keys``.
        value: the covariate value the perturbations are held out in.
        perturbations: one label or a list; ``None``: every perturbation with cells in ``value`` and in at
            least one other value of ``covariate_key``.
        val_fraction: fraction in ``[0, 1)`` of the held-out perturbations that go to ``val``.
        seed: integer seed (only the val / test assignment is random).

    Returns:
        ``{"train", "val", "test"}``: bool ``(cells,)`` masks partitioning the cells.

    Raises:
        KeyError: ``covariate_key`` not a covariate key of ``spec``.
        UnknownPerturbationError: ``value`` or a perturbation with no cell in ``adata``, or a perturbation never
            measured in another value (nothing to transfer from), named.
        ValueError: the control among ``perturbations``, a perturbation with no cell in ``value``, or
            (``perturbations=None``) no perturbation measured both in ``value`` and elsewhere.
    """
    val_fraction = check_range("val_fraction", val_fraction, low=0.0, high=1.0, high_open=True)
    if covariate_key not in spec.covariate_keys:
        raise KeyError(f"{covariate_key!r} is not a covariate key (covariate keys: {list(spec.covariate_keys)})")
    labels = spec.labels(adata)
    _check_covariates(spec, adata, {covariate_key: value})
    column = adata.obs[covariate_key].astype(str).to_numpy()
    inside = column == str(value)
    perturbed = labels != spec.control
    here, elsewhere = set(labels[inside & perturbed]), set(labels[~inside & perturbed])
    if perturbations is None:
        chosen = sorted(here & elsewhere)
        if not chosen:
            raise ValueError(f"no perturbation has cells both with {covariate_key}={value!r} and with another "
                             f"{covariate_key}: nothing to hold out")
    else:
        chosen = []
        for p in [perturbations] if isinstance(perturbations, str) else list(perturbations):
            p = _check_perturbation(spec, labels, p)
            if p not in here:
                raise ValueError(f"perturbation {p!r} has no cell with {covariate_key}={value!r}: nothing to "
                                 f"hold out (its cells have {_where_seen(spec, adata, labels, p)})")
            if p not in elsewhere:
                raise UnknownPerturbationError(
                    f"perturbation {p!r} has cells only with {covariate_key}={value!r}: held out there, it would "
                    "never be seen in training")
            if p not in chosen:
                chosen.append(p)
    order = np.random.default_rng(seed).permutation(np.asarray(chosen, dtype=object))
    n_val = int(math.floor(val_fraction * len(order) + 1e-9))
    val = inside & np.isin(labels, order[:n_val])
    test = inside & np.isin(labels, order[n_val:])
    out = _empty(adata.n_obs)
    out["val"], out["test"] = val, test
    out["train"] = ~(val | test)
    return out


def leave_one_double_out(adata, spec: PerturbationSpec, double: str, *, covariates: dict | None = None,
                         require_singles: bool = True) -> dict[str, np.ndarray]:
    """One combination is the test set (``covariates`` restricts it to some covariate values); every other
    cell trains; ``val`` is empty. Deterministic (nothing random).

    Arguments:
        adata, spec: the cells and where their labels are.
        double: the combination (two or more members, in any order).
        covariates: ``{covariate key: value}`` restricting the held-out cells (default: all of its cells).
        require_singles: every member must have cells alone with the covariates of each held-out condition.

    Returns:
        ``{"train", "val", "test"}``: bool ``(cells,)`` masks partitioning the cells.

    Raises:
        ValueError: ``double`` is not a combination, or has no cell with ``covariates``.
        UnknownPerturbationError: ``double`` or a covariate value has no cell in ``adata``; with
            ``require_singles``, a member never measured alone with those covariates (named).
    """
    labels = spec.labels(adata)
    canonical = _check_perturbation(spec, labels, double)
    if len(spec.members(canonical)) < 2:
        raise ValueError(f"{double!r} is not a combination (members are joined by {spec.delimiter!r})")
    _check_covariates(spec, adata, covariates or {})
    test = spec.condition_mask(adata, canonical, covariates, labels=labels)
    if not test.any():
        raise ValueError(f"no cell has perturbation {canonical!r} with covariates {covariates}: nothing to hold "
                         f"out (its cells have covariates {_where_seen(spec, adata, labels, canonical)})")
    if require_singles:
        combos = combinations_with_singles(adata, spec)
        held = {tuple(c) for c in spec.covariates(adata)[test]}
        for _, row in combos[combos["perturbation"] == canonical].iterrows():
            cov_value = tuple(row[k] for k in spec.covariate_keys)
            if cov_value in held and row["missing_singles"]:
                where = _describe(spec, cov_value)
                raise UnknownPerturbationError(
                    f"combination {canonical!r}{where}: member(s) {', '.join(map(repr, row['missing_singles']))} "
                    "never measured alone there, so the task has nothing to combine; pass require_singles=False "
                    "to hold it out anyway")
    out = _empty(adata.n_obs)
    out["test"] = test
    out["train"] = ~test
    return out


# ---------------------------------------------------------------------------------------------------------------


def _empty(n: int) -> dict[str, np.ndarray]:
    return {s: np.zeros(n, bool) for s in SPLITS}


def _check_fractions(fractions) -> tuple[float, float, float]:
    fractions = tuple(fractions)
    ok = len(fractions) == 3
    if ok:
        try:
            fractions = tuple(check_range("control_fractions", f, low=0.0, high=1.0) for f in fractions)
        except ValueError:
            ok = False
    if not ok or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"control_fractions must be three fractions in [0, 1] (train, val, test) summing to 1; "
                         f"got {fractions!r}")
    return fractions


def _join(cond: tuple) -> str:
    return "\x1f".join(str(c) for c in cond)


def _condition_keys(labels: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """One string per cell identifying its condition (perturbation and covariate values)."""
    if covs.shape[1] == 0:
        return np.asarray(labels, dtype=object).astype(str)
    parts = [np.asarray(labels, dtype=object).astype(str)] + [covs[:, j].astype(str) for j in range(covs.shape[1])]
    out = parts[0]
    for p in parts[1:]:
        out = np.char.add(np.char.add(out, "\x1f"), p)
    return out


def _groups(frame: pd.DataFrame, keys: list[str]):
    """``(covariate value tuple, rows)`` per covariate combination of ``frame``, in sorted order."""
    if not keys:
        yield (), frame
        return
    for value, group in frame.groupby(keys, sort=True):
        yield (value if isinstance(value, tuple) else (value,)), group


def _split_controls(covs: np.ndarray, controls: np.ndarray, fractions, rng) -> dict[str, np.ndarray]:
    """Control cells of each covariate combination (sorted) shuffled and cut at floor(f_train n) and
    floor((f_train + f_val) n)."""
    idx = np.flatnonzero(controls)
    key = _condition_keys(np.full(len(idx), ""), covs[idx])
    out = {s: [np.zeros(0, np.int64)] for s in SPLITS}
    for value in np.unique(key):
        cells = rng.permutation(idx[key == value])
        a = int(math.floor(fractions[0] * len(cells) + 1e-9))
        b = int(math.floor((fractions[0] + fractions[1]) * len(cells) + 1e-9))
        out["train"].append(cells[:a])
        out["val"].append(cells[a:b])
        out["test"].append(cells[b:])
    return {s: np.concatenate(v) for s, v in out.items()}


def _check_perturbation(spec: PerturbationSpec, labels: np.ndarray, perturbation: str) -> str:
    canonical = spec.canonical(perturbation)
    if canonical == spec.control:
        raise ValueError(f"the control {spec.control!r} cannot be held out as a perturbation")
    if not np.any(labels == canonical):
        present = sorted(set(labels) - {spec.control})
        raise UnknownPerturbationError(f"perturbation {perturbation!r} has no cell in obs[{spec.key!r}] "
                                       f"(perturbations: {_preview(present)})")
    return canonical


def _check_covariates(spec: PerturbationSpec, adata, covariates: dict) -> None:
    for k, v in covariates.items():
        if k not in spec.covariate_keys:
            raise KeyError(f"{k!r} is not a covariate key (covariate keys: {list(spec.covariate_keys)})")
        values = adata.obs[k].astype(str).to_numpy()
        if not np.any(values == str(v)):
            raise UnknownPerturbationError(f"covariate {k}={v!r} has no cell (values: "
                                           f"{_preview(sorted(set(values)))})")


def _where_seen(spec: PerturbationSpec, adata, labels: np.ndarray, perturbation: str) -> str:
    covs = spec.covariates(adata)[labels == perturbation]
    seen = sorted({tuple(c) for c in covs})
    return "; ".join(_describe(spec, c).strip(" ()") or "no covariates" for c in seen[:12])


def _describe(spec: PerturbationSpec, cov_value: tuple) -> str:
    if not spec.covariate_keys:
        return ""
    return " (" + ", ".join(f"{k}={v!r}" for k, v in zip(spec.covariate_keys, cov_value, strict=True)) + ")"


def _finish(adata, spec, labels, test, val_fraction, seed):
    """Masks with ``test`` held out and ``val_fraction`` of the other perturbed cells (per condition) in val."""
    out = _empty(adata.n_obs)
    out["test"] = test
    val = np.zeros(adata.n_obs, bool)
    if val_fraction > 0:
        pool = np.flatnonzero(~test & (labels != spec.control))
        key = _condition_keys(labels[pool], spec.covariates(adata)[pool])
        _, picked = stratified_split(key, val_fraction, seed, keep_both=True)
        val[pool[picked]] = True
    out["val"] = val
    out["train"] = ~(test | val)
    return out


def _preview(values, limit: int = 12) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
