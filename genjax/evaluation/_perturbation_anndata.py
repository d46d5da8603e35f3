"""Perturbation metrics from AnnData files: real cells, predicted cells (``PerturbationModel.predict`` or any
method's counts) and, optionally, the training cells that the baselines are fitted on. What
``genjax evaluate --perturbation-key`` runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import PerturbationSpec, UnknownPerturbationError, normalize_log1p, take_rows, validate_counts
from ..models import BASELINES
from ._perturbation import evaluate_perturbations

__all__ = ["DEFAULT_BASELINES", "evaluate_predicted_perturbations"]

DEFAULT_BASELINES = ("no_change", "mean_delta", "additive", "matching_mean", "linear")


def _matrix(adata, layer: str | None, what: str):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"{what} has no layer {layer!r} (layers: {list(adata.layers.keys())})")
    return adata.layers[layer]


def _cov_text(spec: PerturbationSpec, cov: tuple) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in zip(spec.covariate_keys, cov, strict=True)) or "all cells"


def evaluate_predicted_perturbations(
    real,
    predicted,
    spec: PerturbationSpec,
    *,
    train=None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    layer: str | None = None,
    predicted_layer: str | None = None,
    target_sum: float = 1e4,
    seed: int = 0,
    **kwargs,
) -> pd.DataFrame:
    """Score predicted cells of every condition they cover against the real cells of that condition.

    A condition is a perturbation with one value of every covariate key (``spec``). For each condition in
    ``predicted``, the observed cells are ``real``'s cells of that condition and the controls ``real``'s control
    cells with the same covariate values; both and the predictions are normalised per cell to ``target_sum`` and
    ``log1p``-transformed, then scored by :func:`evaluate_perturbations` (its control / perturbed-mean /
    additive / ceiling rows included). With ``train``, the named baselines (``genjax.models.BASELINES``) are
    fitted on it and predict every condition from the same controls, in the same table; a baseline that cannot
    predict a condition (a perturbation or covariate value it never saw, ``mean_delta`` without covariates)
    leaves that row out. ``additive`` expectations of combinations (for ``interaction_corr``) come from the
    additive baseline when ``train`` has both singles. Rank metrics compare conditions that share covariate
    values (all conditions when ``spec`` has no covariate keys).

    Arguments:
        real: AnnData of raw counts with ``spec.key`` and the covariate columns: the observed perturbed cells and
            the controls to compare with (e.g. the test split).
        predicted: AnnData of predicted counts with the same genes and the same obs columns (the output of
            ``PerturbationModel.predict`` or ``genjax predict``; several conditions may be concatenated), or
            a mapping ``method name -> AnnData`` to score several methods side by side.
        spec: the perturbation key, control label, covariate keys and combination delimiter.
        train: AnnData of the training cells (raw counts, same genes) the baselines are fitted on; None: only
            the rows that need no training data (control, perturbed mean, ceiling).
        baselines: names in ``genjax.models.BASELINES`` fitted on ``train``.
        layer: layer of ``real`` and ``train`` holding raw counts (None: ``X``).
        predicted_layer: layer of ``predicted`` (None: ``X``).
        target_sum: per-cell total before ``log1p``.
        seed: seed of the metrics' PCA subset and split-half ceiling.
        **kwargs: passed to :func:`evaluate_perturbations` (``n_top_genes``, ``n_degs``, ...).

    Returns:
        The tidy table of :func:`evaluate_perturbations`: ``method, condition, metric, value, n_cells``; a
        condition reads ``"PERT"`` without covariates and ``"PERT | v1 | v2"`` with them; baseline methods are
        named ``"baseline <name>"``.

    Raises:
        KeyError: a missing obs column or layer (named).
        ValueError: counts that are negative, non-integer or not finite (cell and gene named), genes that differ
            (the first differing gene named), a predicted condition with fewer than 2 real cells or no real control
            with its covariates (named), an unknown baseline name, no predicted cells.
    """
    methods = dict(predicted) if isinstance(predicted, Mapping) else {"model": predicted}
    if not methods:
        raise ValueError("predicted holds no method")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r} (known: {sorted(BASELINES)})")
    genes = list(real.var_names)
    others = {f"predicted[{m!r}]" if len(methods) > 1 else "predicted": a for m, a in methods.items()}
    if train is not None:
        others["train"] = train
    for what, a in others.items():
        if list(a.var_names) != genes:
            diff = next((f"{i}: {g!r} vs {h!r}" for i, (g, h) in enumerate(zip(genes, a.var_names, strict=False))
                         if g != h), f"{len(genes)} vs {a.n_vars} genes")
            raise ValueError(f"{what} genes differ from real's (position {diff})")
        spec.check_keys(a)
    spec.check_keys(real)
    hint = "pass raw counts (e.g. --layer counts), not log-normalised values"
    for what, a, lay in [("real", real, layer), *[(w, a, predicted_layer if w.startswith("predicted") else layer)
                                                   for w, a in others.items()]]:
        validate_counts(_matrix(a, lay, what), obs_names=a.obs_names, var_names=a.var_names, allow_empty=True,
                        what=what, hint=hint)

    real_labels = spec.labels(real)
    real_cov = spec.covariates(real)
    real_x = _matrix(real, layer, "real")

    def rows_of(perturbation: str, cov: tuple) -> np.ndarray:
        mask = real_labels == perturbation
        for j, v in enumerate(cov):
            mask &= real_cov[:, j] == v
        return np.flatnonzero(mask)

    observed, controls, sources, preds, groups = {}, {}, {}, {}, {}
    for method, adata in methods.items():
        if adata.n_obs == 0:
            raise ValueError(f"predicted[{method!r}] has no cells")
        labels, cov = spec.labels(adata), spec.covariates(adata)
        x = _matrix(adata, predicted_layer, f"predicted[{method!r}]")
        codes, uniques = pd.factorize(pd.Series(["\x1f".join((p, *c)) for p, c in zip(labels, cov, strict=True)]))
        for code, joined in enumerate(uniques):
            p, *c = joined.split("\x1f")
            c = tuple(c)
            cond = " | ".join((p, *c))
            if cond not in observed:
                if p == spec.control:
                    raise ValueError(f"predicted[{method!r}] holds control cells ({_cov_text(spec, c)}); "
                                     "predictions are of perturbations")
                obs_rows, ctrl_rows = rows_of(p, c), rows_of(spec.control, c)
                if len(obs_rows) < 2:
                    raise ValueError(f"condition {cond!r}: real has {len(obs_rows)} cells of {p!r} with "
                                     f"{_cov_text(spec, c)}; at least 2 are needed")
                if len(ctrl_rows) < 2:
                    raise ValueError(f"condition {cond!r}: real has {len(ctrl_rows)} control cells "
                                     f"({spec.control!r}) with {_cov_text(spec, c)}; at least 2 are needed")
                observed[cond] = normalize_log1p(take_rows(real_x, obs_rows), target_sum)
                controls[cond] = normalize_log1p(take_rows(real_x, ctrl_rows), target_sum)
                sources[cond] = (p, real[ctrl_rows])
                groups[cond] = " | ".join(c)
            rows = np.flatnonzero(codes == code)
            preds.setdefault(method, {})[cond] = normalize_log1p(take_rows(x, rows), target_sum)

    additive = {}
    baseline_preds: dict[str, dict[str, np.ndarray]] = {}
    if train is not None:
        for name in baselines:
            try:
                fitted = BASELINES[name](spec, layer=layer, target_sum=target_sum).fit(train)
            except ValueError:  # e.g. mean_delta without covariates, linear without usable conditions
                continue
            for cond, (p, source) in sources.items():
                try:
                    if name == "additive" and len(spec.members(p)) > 1:
                        additive[cond] = fitted.predict_mean(source, p)
                    baseline_preds.setdefault(f"baseline {name}", {})[cond] = fitted.predict_cells(source, p)
                except UnknownPerturbationError:
                    continue
    clash = set(baseline_preds) & set(preds)
    if clash:
        raise ValueError(f"method name {sorted(clash)[0]!r} is reserved for a baseline")
    return evaluate_perturbations(observed, controls, {**baseline_preds, **preds}, additive=additive or None,
                                  groups=groups if spec.covariate_keys else None, seed=seed, **kwargs)
