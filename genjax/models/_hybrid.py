"""``genjax.HybridModel``: any mean predictor wrapped in a generative model of what the mean leaves out, so every
prediction comes with count cells and calibrated per-gene intervals.

Typical use (metadata -> expression on Kang: conditions are cell type x stimulation)::

    hm = genjax.HybridModel(train, predictor="mean_delta", conditions=["seurat_annotations", "stim"],
                            perturbation_key="stim", control="CTRL")
    hm.fit(max_epochs=100)
    cells = hm.sample({"seurat_annotations": "CD14 Mono", "stim": "STIM"}, n=2000)   # AnnData of counts
    mean = hm.predict_mean({"seurat_annotations": "CD14 Mono", "stim": "STIM"})        # the predictor's profile
    lower, upper = hm.predict_interval({"seurat_annotations": "CD14 Mono", "stim": "STIM"}, level=0.9)

How. A *condition* is a combination of values of the ``conditions`` obs keys. The **predictor** maps conditions
to mean log1p(CP10k) profiles: a genjax perturbation baseline by name (``"mean_delta"``, ``"additive"``,
``"linear"``, ...; with ``perturbation_key`` / ``control``), a table (DataFrame or dict: condition label ->
profile; a foundation model's output), or a function of a condition table. The **residual model** is a count VAE
(NB decoder) trained on all training cells and a conditional flow-matching (``residual="flow"``) or diffusion
prior on its latents, conditioned on the condition's values (categorical, with dropout so unseen combinations of
seen values compose) and on an embedding of the *predicted* profile (its coordinates on the first principal
axes of the training conditions' predicted profiles). Sampled latents are decoded to NB counts with library sizes
of training cells that share the condition's values; the counts are then moved gene by gene
(:func:`~genjax.models.match_log1p_mean`) so that their mean log1p(CP10k) is ``(1 - w) predictor + w model``:
with the default ``mean_weight=0`` the mean is the predictor's exactly and the residual model supplies the
distribution around it (zeros, cell-to-cell variability, cell states); ``w = 1`` keeps the residual model's own
mean; :meth:`HybridModel.choose_mean_weight` picks ``w`` by leaving training conditions out.

**Intervals** (:meth:`HybridModel.predict_interval`):

* ``kind="cell"``: where a new cell of the condition falls, per gene: the central integer interval of the sampled
  cells (:func:`~genjax.models.sample_interval`), conformalised per expression bin
  (:func:`~genjax.models.conformalized_quantiles`) on calibration conditions (:meth:`HybridModel.calibrate`; by
  default the training conditions, which the residual model has seen, so the correction catches its
  misspecification, e.g. a too narrow spread, but is no finite-sample guarantee for new conditions; calibrate on
  held-out conditions for that). Coverage is judged by randomised PIT (:func:`genjax.metrics.coverage_table`):
  counts are discrete, and an integer interval rarely has mass exactly ``level``.
* ``kind="mean"``: where the condition's mean log1p profile falls: for a baseline predictor, jackknife+ over the
  training conditions (:func:`~genjax.models.jackknife_plus`: each leave-one-condition-out baseline's residual
  at its left-out condition and its prediction at the new one; coverage >= ``1 - 2 alpha`` for exchangeable
  conditions); for a table or function predictor, split-conformal on the calibration conditions' residuals
  (valid when the predictor was not fitted on them). With ``K`` conditions the smallest attainable miscoverage is
  ``1 / (K + 1)``: intervals at higher levels are infinite.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._checks import check_choice, check_int, check_range
from ..data import (
    Condition,
    PerturbationSpec,
    UnknownPerturbationError,
    dense,
    get_matrix,
    log1p_group_sums,
    map_row_blocks,
    row_sums,
    take_rows,
)
from ..vae import vae_decode
from ._base import SavedModel, cached_jit
from ._condition_regressor import ConditionRegressor
from ._conformal import CALIBRATED_LEVELS, conformal_quantile, jackknife_plus, sample_interval
from ._latent_prior import fit_prior, load_prior
from ._perturbation_baselines import BASELINES, ConditionMeans
from ._perturbation_offset import match_log1p_mean, mean_log1p
from ._vae import VAE

__all__ = ["HybridModel", "RESIDUAL_MODELS"]

RESIDUAL_MODELS = ("flow", "diffusion")
"""Latent prior families of the residual model."""

_SEP = " | "
_N_BINS = 3  # expression bins of the cell-level calibration
_DRAW_BLOCK = 2048  # rows of count draws per generator (and per thread)


def _bucket(n: int) -> int:
    """Rows actually sampled for ``n``: a power of two from 64 up to 1024, then multiples of 1024."""
    return max(64, 1 << (n - 1).bit_length()) if n <= 1024 else -(-n // 1024) * 1024


def condition_label(values: Sequence[str]) -> str:
    """The label of a condition: its values joined by ``" | "``."""
    return _SEP.join(str(v) for v in values)


def labels_of(conditions: Sequence[Sequence[str]]) -> list[str]:
    """The labels of several conditions."""
    return [condition_label(c) for c in conditions]


class _Predictor:
    """The mean predictor behind a hybrid model: ``(conditions table) -> (n, genes)`` mean log1p(CP10k)."""

    def __init__(self, predictor, keys: list[str], genes: list[str], spec: PerturbationSpec | None):
        self.keys, self.genes, self.spec = keys, genes, spec
        self.baseline = None
        self.table: dict[str, np.ndarray] | None = None
        self.function: Callable | None = None
        self.regressor: ConditionRegressor | None = None
        if isinstance(predictor, str) and predictor == "regressor":
            self.kind = self.name = "regressor"
        elif isinstance(predictor, str):
            check_choice("predictor", predictor, (*BASELINES, "regressor"))
            if spec is None:
                raise ValueError(f"predictor={predictor!r} is a perturbation baseline: give perturbation_key and "
                                 "control (the key among the conditions that holds the perturbation)")
            self.kind = "baseline"
            self.name = predictor
        elif isinstance(predictor, pd.DataFrame | Mapping):
            self.kind, self.name = "table", "table"
            self.table = self._read_table(predictor)
        elif callable(predictor):
            self.kind, self.name = "function", getattr(predictor, "__name__", "function")
            self.function = predictor
        else:
            raise TypeError(f"predictor must be a baseline name, a DataFrame / dict of profiles or a function; got "
                            f"{type(predictor).__name__}")

    def _read_table(self, predictor) -> dict[str, np.ndarray]:
        if isinstance(predictor, pd.DataFrame):
            missing = [g for g in self.genes if g not in predictor.columns]
            if missing:
                raise ValueError(f"the predictor table lacks {len(missing)} training genes (first: {missing[:3]})")
            rows = {str(i): predictor.loc[i, self.genes].to_numpy(np.float64) for i in predictor.index}
        else:
            rows = {str(k): np.asarray(v, np.float64) for k, v in predictor.items()}
        for label, row in rows.items():
            self._check(row[None, :], [label])
        return rows

    def _check(self, out: np.ndarray, labels: list[str]) -> np.ndarray:
        out = np.asarray(out, np.float64)
        if out.shape != (len(labels), len(self.genes)):
            raise ValueError(f"the predictor returned shape {out.shape} for {len(labels)} conditions; expected "
                             f"({len(labels)}, {len(self.genes)}) (conditions, training genes)")
        bad = np.argwhere(~np.isfinite(out))
        if bad.size:
            i, g = bad[0]
            raise ValueError(f"the predictor returned {out[i, g]!r} for condition {labels[i]!r}, gene "
                             f"{self.genes[g]!r}: predictions must be finite")
        return out

    def fit(self, adata, layer, conditions: list[tuple[str, ...]], regressor_kwargs: dict | None = None):
        """Fit a baseline's statistics or the regressor on the observed means of ``conditions`` (the cells'
        condition tuples)."""
        if self.kind == "baseline":
            self.baseline = BASELINES[self.name](self.spec, layer=layer).fit(adata)
        elif self.kind == "regressor":
            keys = sorted(set(conditions))
            self.observed = dict(zip(keys, _condition_means(adata, layer, conditions, keys), strict=True))
            self.regressor = ConditionRegressor(**dict(regressor_kwargs or {})).fit(
                keys, np.stack([self.observed[c] for c in keys]))
        return self

    def _split(self, values: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        i = self.keys.index(self.spec.key)
        cov = tuple(v for j, v in enumerate(values) if j != i)
        return self.spec.canonical(values[i]), cov

    def _baseline_predict(self, baseline, values: tuple[str, ...]) -> np.ndarray:
        p, cov = self._split(values)
        source = baseline.stats.get(self.spec.control, cov)
        if source is None:
            raise UnknownPerturbationError(f"condition {condition_label(values)!r}: no training control cells with "
                                           f"{dict(zip(self.spec.covariate_keys, cov, strict=True))} to start from")
        return baseline._predict(source, cov, p)

    def __call__(self, conditions: list[tuple[str, ...]]) -> np.ndarray:
        labels = [condition_label(c) for c in conditions]
        if self.kind == "baseline":
            out = np.stack([self._baseline_predict(self.baseline, c) for c in conditions])
        elif self.kind == "regressor":
            out = self.regressor.predict(conditions)
        elif self.kind == "table":
            unknown = [lab for lab in labels if lab not in self.table]
            if unknown:
                raise UnknownPerturbationError(f"the predictor table has no row {unknown[0]!r} (rows: "
                                               f"{sorted(self.table)[:6]})")
            out = np.stack([self.table[lab] for lab in labels])
        else:
            out = self.function(pd.DataFrame(conditions, columns=self.keys))
        return self._check(out, labels)

    def observed_mean(self, condition: tuple[str, ...]) -> np.ndarray:
        """The observed mean profile of a training condition (a fitted baseline or regressor keeps them)."""
        if self.kind == "regressor":
            return self.observed[condition]
        return self.baseline.stats.get(*self._split(condition))

    def leave_one_out(self, conditions: list[tuple[str, ...]], new: list[tuple[str, ...]]):
        """The residual-free ingredients of jackknife+ / CV+: per training condition ``k`` a predictor fitted
        without it (a baseline refitted without ``k``; the regressor's fold model that did not see ``k``),
        predicting ``k`` and each of ``new`` (None where it cannot)."""
        if self.kind == "regressor":
            return self.regressor.cross_fit(conditions, new)
        at_k, at_new = [], []
        for values in conditions:
            p, cov = self._split(values)
            stats = self.baseline.stats
            keep = [i for i, key in enumerate(stats.keys) if key != (p, cov)]
            loo = copy.copy(self.baseline)
            loo.stats = ConditionMeans([stats.keys[i] for i in keep], stats.means[keep], stats.counts[keep],
                                       stats.var_names)
            try:
                at = [self._baseline_predict(loo, c) for c in new]
                pair = self._baseline_predict(loo, values), (np.stack(at) if at else None)
            except UnknownPerturbationError:
                pair = None, None
            at_k.append(pair[0])
            at_new.append(pair[1])
        return at_k, at_new


class HybridModel(SavedModel):
    """A mean predictor plus a generative residual model of counts, with calibrated per-gene intervals (module
    docstring).

    Arguments:
        adata: training cells, raw counts (``X`` or ``layer``), with the ``conditions`` obs columns.
        predictor: a perturbation baseline name (:data:`genjax.models.BASELINES`: ``"mean_delta"``,
            ``"additive"``, ``"linear"``, ...), ``"regressor"`` (an MLP on condition embeddings trained here on the
            training conditions' means, :class:`genjax.models.ConditionRegressor`), a DataFrame (index: condition labels ``"v1 | v2"``, columns: gene
            names) or dict (label -> ``(genes,)`` profile) of mean log1p(CP10k) profiles, or a function from a
            DataFrame of conditions (one column per key) to a ``(conditions, genes)`` array.
        conditions: the obs keys whose values make a condition (e.g. ``["cell_type", "stim"]``).
        residual: latent prior family, ``"flow"`` (default) or ``"diffusion"``.
        likelihood: the VAE's count distribution, ``"nb"`` (default) or ``"poisson"``.
        perturbation_key, control: for a baseline predictor, which condition key holds the perturbation and its
            control label (the other keys are the baseline's covariates).
        layer: read counts from this layer instead of ``X``.
        n_embedding: principal axes of the predicted profiles the residual model is conditioned on.
        sample_steps: fixed Heun steps of the flow sampler (``None``: adaptive Dopri5).
        vae_kwargs: other :class:`genjax.VAE` options.
        predictor_kwargs: options of the ``"regressor"`` predictor (:class:`genjax.models.ConditionRegressor`).
        seed: seed of the initialisation.

    Raises:
        KeyError: a condition key missing from ``obs``. ValueError: a bad option, a predictor table that lacks
            training genes or holds non-finite values (named). TypeError: a predictor of another kind.
    """

    format_tag = "genjax.HybridModel/1"

    def __init__(self, adata, predictor, conditions: Sequence[str] | str, residual: str = "flow",
                 likelihood: str = "nb", *, perturbation_key: str | None = None, control: str | None = None,
                 layer: str | None = None, n_embedding: int = 8, sample_steps: int | None = 24,
                 vae_kwargs: dict | None = None, predictor_kwargs: dict | None = None, seed: int = 0):
        keys = [conditions] if isinstance(conditions, str) else [str(k) for k in conditions]
        missing = [k for k in keys if k not in adata.obs.columns]
        if missing or not keys:
            raise KeyError(f"condition keys {missing or keys} are not obs columns (obs: {list(adata.obs.columns)[:10]})")
        check_choice("residual", residual, RESIDUAL_MODELS)
        check_choice("likelihood", likelihood, ("nb", "poisson"))
        spec = None
        if perturbation_key is not None:
            if perturbation_key not in keys or control is None:
                raise ValueError(f"perturbation_key must be one of the conditions {keys} and control given; got "
                                 f"{perturbation_key!r}, control={control!r}")
            spec = PerturbationSpec(perturbation_key, control, tuple(k for k in keys if k != perturbation_key))
        self.vae = VAE(adata, likelihood=likelihood, layer=layer, seed=seed, **dict(vae_kwargs or {}))
        self.keys = keys
        self.predictor = _Predictor(predictor, keys, list(self.vae.var_names), spec)
        self.options = {"residual": residual, "likelihood": likelihood, "layer": layer, "seed": seed,
                        "n_embedding": check_int("n_embedding", n_embedding), "vae_kwargs": dict(vae_kwargs or {}),
                        "sample_steps": None if sample_steps is None else check_int("sample_steps", sample_steps),
                        "perturbation_key": perturbation_key, "control": control,
                        "predictor_kwargs": dict(predictor_kwargs or {})}
        self.adata = adata
        self.prior = None
        self.history: dict[str, list] = {}

    @property
    def var_names(self) -> list[str]:
        """Training gene names, in model order."""
        return list(self.vae.var_names)

    def __repr__(self) -> str:
        return (f"HybridModel(predictor={self.predictor.name!r}, conditions={self.keys}, "
                f"residual={self.options['residual']!r}, genes={len(self.var_names)}, fitted={self.prior is not None})")

    # -- fitting -----------------------------------------------------------------------------------------------

    def _cell_conditions(self, adata) -> list[tuple[str, ...]]:
        return [tuple(str(v) for v in row) for row in adata.obs[self.keys].astype(str).to_numpy()]

    def fit(self, max_epochs: int | None = None, batch_size: int = 128, *, prior_steps: int = 3000,
            prior_kwargs: dict | None = None, seed: int = 0, progress: bool = True, calibrate: bool = True,
            **vae_fit_kwargs) -> HybridModel:
        """Fit the predictor (a baseline's statistics), the VAE, the conditional latent prior and, with
        ``calibrate``, the intervals on the training conditions (:meth:`calibrate`).

        Arguments:
            max_epochs, batch_size: VAE training. prior_steps: optimizer steps of the latent prior.
            prior_kwargs: other :func:`genjax.models.fit_prior` options (defaults here: ``n_hidden=128``,
                ``n_layers=3``, ``cond_dropout=0.2``: a 10-d latent needs no wider field, and sampling cost grows
                with the square of the width).
            seed, progress: seed of the splits and draws; progress bars.
            vae_fit_kwargs: other :meth:`genjax.VAE.fit` arguments.

        Returns:
            ``self``.
        """
        cells = self._cell_conditions(self.adata)
        self.predictor.fit(self.adata, self.options["layer"], cells, self.options.get("predictor_kwargs"))
        self.vae.fit(max_epochs=max_epochs, batch_size=batch_size, seed=seed, progress=progress, **vae_fit_kwargs)
        self.train_conditions = sorted(set(cells))
        index = {c: i for i, c in enumerate(self.train_conditions)}
        cell_cond = np.array([index[c] for c in cells])
        predicted = self._training_profiles()
        self.vocab = [sorted({c[j] for c in self.train_conditions}) for j in range(len(self.keys))]
        k = max(1, min(self.options["n_embedding"], len(self.train_conditions) - 1, predicted.shape[1]))
        self.embed_center = predicted.mean(0)
        _, s, vt = np.linalg.svd(predicted - self.embed_center, full_matrices=False)
        self.embed_axes = vt[:k]
        emb = (predicted - self.embed_center) @ self.embed_axes.T
        self.embed_scale = float(emb.std()) if emb.std() > 0 else 1.0
        z = np.asarray(self.vae.latent(self.adata), np.float64)
        self.z_shift, self.z_scale = z.mean(0), z.std(0) + 1e-6
        cond = self._condition(self.train_conditions, predicted)
        cond = Condition(labels=cond.labels[cell_cond], covariates=cond.covariates[cell_cond])
        self._prior_fit = {"kind": self.options["residual"], "n_categories": tuple(len(v) for v in self.vocab),
                           "n_continuous": k, "steps": prior_steps, "seed": seed,
                           **{"cond_dropout": 0.2, "n_hidden": 128, "n_layers": 3, **(prior_kwargs or {})}}
        self._prior_data = (((z - self.z_shift) / self.z_scale).astype(np.float32), cond, cell_cond)
        self.prior, hist = fit_prior(self._prior_data[0], cond, progress=progress, **self._prior_fit)
        self.options["mean_weight"] = None  # chosen by choose_mean_weight
        self.history = {"vae": list(self.vae.history), "prior": hist}
        self.log_lib = np.log(row_sums(get_matrix(self.adata, self.options["layer"])))
        self.lib_conditions = cells
        self.__dict__.pop("_pools", None)  # library pools of an earlier fit
        self.__dict__.pop("_prefix_codes", None)
        self.calibration = None
        if calibrate:
            self.calibrate(self.adata, seed=seed)
        return self

    def _training_profiles(self) -> np.ndarray:
        """The predictor's profile of every training condition; for a baseline, a training condition it cannot
        predict (no controls of its covariate values to start from) takes its observed mean instead."""
        if self.predictor.kind != "baseline":
            return self.predictor(self.train_conditions)
        rows = []
        for c in self.train_conditions:
            try:
                rows.append(self.predictor([c])[0])
            except UnknownPerturbationError:
                rows.append(self.predictor.baseline.stats.get(*self.predictor._split(c)))
        return np.stack(rows)

    def _condition(self, conditions: list[tuple[str, ...]], predicted: np.ndarray) -> Condition:
        labels = np.array([[self.vocab[j].index(v) if v in self.vocab[j] else -1 for j, v in enumerate(c)]
                           for c in conditions], np.int32).reshape(len(conditions), len(self.keys))
        emb = ((predicted - self.embed_center) @ self.embed_axes.T) / self.embed_scale
        return Condition(labels=jnp.asarray(labels), covariates=jnp.asarray(emb, jnp.float32))

    # -- conditions ---------------------------------------------------------------------------------------------

    def _parse(self, conditions) -> list[tuple[str, ...]]:
        """Condition tuples from one condition (a dict, a tuple of values, a label ``"v1 | v2"``), a list of them,
        or a DataFrame with the keys."""
        if isinstance(conditions, Mapping | tuple | str):
            conditions = [conditions]
        if isinstance(conditions, pd.DataFrame):
            missing = [k for k in self.keys if k not in conditions.columns]
            if missing:
                raise KeyError(f"the conditions table lacks the keys {missing}")
            return [tuple(str(v) for v in row) for row in conditions[self.keys].astype(str).to_numpy()]
        out = []
        for c in conditions:
            if isinstance(c, Mapping):
                missing = [k for k in self.keys if k not in c]
                if missing:
                    raise KeyError(f"condition {dict(c)} lacks the keys {missing} (conditions: {self.keys})")
                out.append(tuple(str(c[k]) for k in self.keys))
            else:
                vals = tuple(str(v) for v in (c.split(_SEP) if isinstance(c, str) else c))
                if len(vals) != len(self.keys):
                    raise ValueError(f"condition {c!r} has {len(vals)} values; the keys are {self.keys}")
                out.append(vals)
        if not out:
            raise ValueError("no condition given: pass a dict {key: value}, a tuple of values, a label, or a list "
                             "of them")
        return out

    def _require_fitted(self):
        if self.prior is None:
            raise RuntimeError("the hybrid model is not fitted; call fit() first (or HybridModel.load(path))")

    # -- prediction ---------------------------------------------------------------------------------------------

    def predict_mean(self, conditions, *, mean_weight: float | None = None, n: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
        """Predicted mean log1p(CP10k) per condition and gene (DataFrame: condition labels x genes): the
        predictor's profile, or with ``mean_weight > 0`` the mean of :meth:`sample`'s cells (``None``: the weight
        :meth:`choose_mean_weight` chose, else 0)."""
        self._require_fitted()
        conds = self._parse(conditions)
        mean_weight = self._mean_weight(mean_weight)
        if mean_weight == 0.0:
            values = self.predictor(conds)
        else:
            values = np.stack([mean_log1p(self.sample(dict(zip(self.keys, c, strict=True)), n, seed=seed,
                                                      mean_weight=mean_weight).X) for c in conds])
        return pd.DataFrame(values, index=[condition_label(c) for c in conds], columns=self.var_names)

    def _mean_weight(self, mean_weight: float | None) -> float:
        if mean_weight is None:
            mean_weight = self.options.get("mean_weight") or 0.0
        return check_range("mean_weight", mean_weight, low=0.0, high=1.0)

    def sample(self, conditions, n: int, *, seed: int = 0, mean_weight: float | None = None,
               interval: float | None = None, batch_size: int = 4096):
        """``n`` cells of each condition: latents from the residual prior, NB counts from the decoder, moved so
        their mean log1p(CP10k) is ``(1 - mean_weight) predictor + mean_weight model`` (module docstring).

        Arguments:
            conditions: one condition (a dict ``{key: value}``, a tuple of values in key order, a label
                ``"v1 | v2"``), a list of them, or a DataFrame with the keys.
            n: cells per condition.
            seed: seed of every draw.
            mean_weight: ``w`` in ``[0, 1]`` (``None``: the weight :meth:`choose_mean_weight` chose, else 0).
            interval: a calibrated level: also the cell-level integer bounds of each condition, from the same
                sampled cells (what :meth:`predict_interval` with ``kind="cell"``, ``n`` and ``seed`` returns,
                without sampling twice), as ``layers["lower"]`` / ``layers["upper"]``.

        Returns:
            AnnData ``(n * conditions, genes)``: ``X`` float32 counts, ``layers["mean"]`` their expected values,
            ``obs`` the condition keys and ``library_size``.

        Raises:
            RuntimeError: not fitted, or ``interval`` given before the intervals are calibrated.
            KeyError: a condition lacks a key.
            ValueError: malformed conditions, ``mean_weight`` outside ``[0, 1]``, an uncalibrated ``interval``.
            UnknownPerturbationError: a condition the predictor cannot predict (named).
        """
        import anndata as ad

        self._require_fitted()
        n = check_int("n", n)
        mean_weight = self._mean_weight(mean_weight)
        if interval is not None:
            self._cell_quantiles(interval)  # a bad or uncalibrated level fails before any sampling
        conds = self._parse(conditions)
        predicted = self.predictor(conds)
        cond = self._condition(conds, predicted)
        key = jax.random.key(seed)
        counts, means, obs, bounds = [], [], [], []
        for i, c in enumerate(conds):
            mu, x, log_lib = self._draw_cells(self.prior, cond, i, c, n, jax.random.fold_in(key, i),
                                              seed + i, seed * 7919 + i, batch_size)
            target = (1.0 - mean_weight) * predicted[i] + mean_weight * mean_log1p(x)
            x, mu = match_log1p_mean(x, mu, target, seed=seed + i)
            if interval is not None:
                bounds.append(self._cell_bounds(x, predicted[i], interval))
            counts.append(x)
            means.append(mu)
            obs.append(pd.DataFrame({**{k: [v] * n for k, v in zip(self.keys, c, strict=True)},
                                     "library_size": np.rint(np.exp(log_lib.astype(np.float64))).astype(np.int64)}))
        obs = pd.concat(obs, ignore_index=True)
        obs.index = pd.Index([f"hybrid-{i}" for i in range(len(obs))])
        out = ad.AnnData(X=np.concatenate(counts), obs=obs, var=pd.DataFrame(index=self.var_names))
        out.layers["mean"] = np.concatenate(means)
        if interval is not None:
            out.layers["lower"] = np.repeat(np.stack([b[0] for b in bounds]), n, axis=0).astype(np.float32)
            out.layers["upper"] = np.repeat(np.stack([b[1] for b in bounds]), n, axis=0).astype(np.float32)
            out.uns["interval_level"] = float(interval)
        return out

    def choose_mean_weight(self, *, max_conditions: int = 4, min_cells: int = 30, n: int = 500,
                           prior_steps: int | None = None, seed: int = 0, progress: bool = False) -> dict:
        """Choose ``mean_weight`` by leave-one-condition-out: how far to trust the residual model's own mean over
        the predictor's at a condition neither has seen.

        For each of up to ``max_conditions`` training conditions ``k`` (those with at least ``min_cells`` cells
        that the predictor can predict without them, and, for a baseline, not a control; the most populous
        first): the predictor fitted without ``k`` predicts ``p_k`` (as for jackknife+), the latent prior is
        refitted without ``k``'s cells (same settings, ``prior_steps`` steps) and its ``n`` sampled cells of ``k``
        give the model's own mean ``f_k`` (mean log1p(CP10k)); with ``o_k`` the observed mean, the weight is the
        least-squares blend over those conditions and all genes::

            w = clip( sum_k <o_k - p_k, f_k - p_k> / sum_k |f_k - p_k|^2 , 0, 1 )

        which :meth:`sample` and :meth:`predict_mean` then use when no ``mean_weight`` is given (saved with the
        model). The VAE is not refitted: it has seen ``k``'s cells, which can only flatter the residual model's
        mean, so ``w`` leans towards the model; with few conditions ``w`` is a coarse estimate.

        Arguments:
            max_conditions: conditions left out (one prior refit each).
            min_cells: conditions with fewer training cells are not used.
            n: cells sampled per left-out condition.
            prior_steps: optimizer steps of each refit (default: those of :meth:`fit`).
            seed, progress: seed of the refits and draws; progress bars.

        Returns:
            ``{"weight", "conditions", "mse_predictor", "mse_model", "mse_blend"}`` (squared errors of the mean
            profile per gene, averaged over the left-out conditions), also kept in ``self.mean_weight_choice``.

        Raises:
            RuntimeError: not fitted in this session (the training cells are needed), or no condition qualifies.
        """
        self._require_fitted()
        if self.adata is None or "_prior_data" not in self.__dict__:
            raise RuntimeError("choose_mean_weight refits the latent prior on the training cells: call it after "
                               "fit() on the same model (a loaded model has no training cells)")
        max_conditions = check_int("max_conditions", max_conditions, low=1)
        z, cond, cell_cond = self._prior_data
        sizes = np.bincount(cell_cond, minlength=len(self.train_conditions))
        if self.predictor.kind in ("baseline", "regressor"):
            at_k, _ = self.predictor.leave_one_out(self.train_conditions, [])
        else:  # a table or function was not fitted on these cells: its profiles are out of sample already
            at_k = list(self.predictor(self.train_conditions))
        spec = self.predictor.spec
        eligible = [k for k in np.argsort(-sizes, kind="stable") if sizes[k] >= min_cells and at_k[k] is not None
                    and not (spec is not None and self.predictor._split(self.train_conditions[k])[0] == spec.control)]
        chosen = [int(k) for k in eligible[:max_conditions]]
        if not chosen:
            raise RuntimeError(f"no training condition has >= {min_cells} cells and a prediction by the "
                               f"{self.predictor.name} predictor fitted without it")
        settings = {**self._prior_fit, **({} if prior_steps is None else {"steps": check_int("prior_steps",
                                                                                                prior_steps)})}
        observed = _condition_means(self.adata, self.options["layer"], self.lib_conditions,
                                    [self.train_conditions[k] for k in chosen])
        f_all, p_all = [], []
        for j, k in enumerate(chosen):
            c = self.train_conditions[k]
            keep = cell_cond != k
            prior, _ = fit_prior(z[keep], Condition(labels=cond.labels[keep], covariates=cond.covariates[keep]),
                                 progress=progress, **{**settings, "seed": settings["seed"] + 1 + j})
            # the left-out condition as a new one: the predictor's profile from its leave-one-out fit
            row = self._condition([c], at_k[k][None, :])
            _, x, _ = self._draw_cells(prior, row, 0, c, n, jax.random.key(seed + 1 + j), seed + j,
                                       seed * 7919 + j, 4096)
            f_all.append(mean_log1p(x))
            p_all.append(np.asarray(at_k[k], np.float64))
        f, p, o = np.stack(f_all), np.stack(p_all), observed
        num, den = float(np.sum((o - p) * (f - p))), float(np.sum((f - p) ** 2))
        w = float(np.clip(num / den, 0.0, 1.0)) if den > 0 else 0.0
        blend = (1.0 - w) * p + w * f
        choice = {"weight": w, "conditions": [condition_label(self.train_conditions[k]) for k in chosen],
                  "mse_predictor": float(np.mean((o - p) ** 2)), "mse_model": float(np.mean((o - f) ** 2)),
                  "mse_blend": float(np.mean((o - blend) ** 2))}
        self.options["mean_weight"] = w
        self.mean_weight_choice = choice
        if self.calibration is not None:  # the cell-level conformity scores were taken at the earlier weight
            adata, kwargs = self._calibrated_on
            self.calibrate(adata, **kwargs)
        return choice

    def _draw_cells(self, prior, cond: Condition, i: int, c: tuple[str, ...], n: int, key, lib_seed: int,
                    count_seed: int, batch_size: int):
        """``n`` cells of condition ``c`` (row ``i`` of ``cond``) from ``prior``, before any mean move: expected
        counts, counts and log library sizes."""
        m = _bucket(n)
        ci = Condition(labels=jnp.repeat(cond.labels[i:i + 1], m, 0),
                       covariates=jnp.repeat(cond.covariates[i:i + 1], m, 0))
        z = np.asarray(prior.sample(key, m, cond=ci, **self._sampler()), np.float64)
        z = (z * self.z_scale + self.z_shift).astype(np.float32)
        log_lib = self._draw_libraries(c, m, lib_seed).astype(np.float32)
        mu, x = self._decode(z, log_lib, count_seed, batch_size)
        return mu[:n], x[:n], log_lib[:n]  # m >= n rows were drawn: few compiled sizes

    def _cell_quantiles(self, level: float) -> np.ndarray:
        """The conformal widenings per expression bin at a calibrated ``level``."""
        level = check_range("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.calibration is None:
            raise RuntimeError("the intervals are not calibrated; call calibrate(adata) (fit(calibrate=True) does)")
        q = self.calibration["quantiles"].get(float(level))
        if q is None:
            raise ValueError(f"level {level} is not calibrated (calibrated: {sorted(self.calibration['quantiles'])}"
                             "); call calibrate(adata, levels=[...])")
        return q

    def _cell_bounds(self, sim: np.ndarray, predicted: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Integer bounds ``(genes,)`` from sampled cells: the central interval widened by the calibration."""
        a, b, _ = sample_interval(sim, level)
        widen = self._cell_quantiles(level)[np.searchsorted(self.calibration["edges"], predicted)]
        return np.maximum(np.floor(a - widen), 0.0), np.ceil(b + widen)

    def _sampler(self) -> dict:
        """Solver settings of the latent prior's sampler: ``sample_steps`` fixed Heun steps for a flow (the
        adaptive default costs several times more field evaluations at this accuracy), the adaptive
        probability-flow ODE for a diffusion prior."""
        if self.options["residual"] == "flow" and self.options.get("sample_steps"):
            return {"n_steps": int(self.options["sample_steps"]), "solver": diffrax.Heun()}
        return {}

    def _draw_libraries(self, condition: tuple[str, ...], n: int, seed: int) -> np.ndarray:
        """Log library sizes of training cells sharing the most leading values of ``condition`` (all values,
        then all but the last, ...; every cell as the last resort)."""
        rng = np.random.default_rng(seed)
        return self.log_lib[rng.choice(self._library_pool(tuple(condition)), n)]

    def _library_pool(self, condition: tuple[str, ...]) -> np.ndarray:
        """Indices of the training cells whose library sizes a condition draws from (cached per condition)."""
        cache = self.__dict__.setdefault("_pools", {})
        if condition not in cache:
            if "_prefix_codes" not in self.__dict__:  # per key, each cell's value as an integer code
                self._prefix_codes = [pd.factorize(np.array([c[j] for c in self.lib_conditions]))
                                      for j in range(len(self.keys))]
            match = np.ones(len(self.lib_conditions), bool)
            pools = [np.arange(len(self.lib_conditions))]
            for j, (codes, uniques) in enumerate(self._prefix_codes):
                hit = np.flatnonzero(uniques == condition[j])
                match &= codes == (hit[0] if hit.size else -2)
                pools.append(np.flatnonzero(match))
            cache[condition] = next(p for p in reversed(pools) if p.size)
        return cache[condition]

    def _decode(self, z, log_lib, seed: int, batch_size: int):
        """Expected counts and one draw (float64 ``(cells, genes)``) at latents ``z``: the decoder's NB / Poisson
        means in jitted batches, the draws on the host (numpy's Gamma-Poisson sampler is several times faster on
        CPU than XLA's rejection samplers at millions of entries)."""
        f = cached_jit(self.vae.module, "decode-mean-theta", functools.partial(_decode_mean_theta, self.vae.module))
        mus, thetas = [], []
        for start in range(0, len(z), batch_size):
            sl = slice(start, start + batch_size)
            m, th = f(self.vae.params, jnp.asarray(z[sl]), jnp.asarray(log_lib[sl]))
            mus.append(np.asarray(m, np.float64))
            thetas.append(np.asarray(th, np.float64))
        mu = np.concatenate(mus)
        theta = None if self.options["likelihood"] == "poisson" else np.concatenate(thetas)
        # one generator per block of rows (the draws do not depend on how many threads run the blocks)
        streams = np.random.SeedSequence(seed).spawn(-(-len(mu) // _DRAW_BLOCK))

        def draw(rows: slice) -> np.ndarray:
            rng = np.random.default_rng(streams[rows.start // _DRAW_BLOCK])
            if theta is None:
                return rng.poisson(mu[rows]).astype(np.float64)
            return rng.poisson(rng.gamma(theta[rows], mu[rows] / theta[rows])).astype(np.float64)

        return mu, np.concatenate(map_row_blocks(draw, len(mu), block=_DRAW_BLOCK))

    # -- intervals ----------------------------------------------------------------------------------------------

    def calibrate(self, adata, *, n: int = 500, levels: Sequence[float] = CALIBRATED_LEVELS, seed: int = 0,
                  max_conditions: int = 40) -> HybridModel:
        """Calibrate the intervals on the conditions of ``adata`` (raw counts with the condition keys; by default
        :meth:`fit` uses the training cells): per condition, ``n`` sampled cells give integer bounds at each of
        ``levels`` and the observed cells' conformity scores, pooled per expression bin (of the predicted
        profile, :data:`_N_BINS` quantile bins); and the predictor's residuals on the observed condition means
        (mean-level intervals).

        Raises:
            ValueError: ``adata`` without the condition keys' columns or with other genes.
        """
        self._require_fitted()
        if self.vae.registry.gene_order(adata) is not None:
            adata = adata[:, self.var_names]
        cells = self._cell_conditions(adata)
        conds = []
        for c in sorted(set(cells)):  # the conditions the predictor can predict
            try:
                self.predictor([c])
                conds.append(c)
            except UnknownPerturbationError:
                continue
        if not conds:
            raise ValueError("the predictor can predict none of the calibration conditions")
        self._calibrated_on = (adata, {"n": n, "levels": tuple(levels), "seed": seed,
                                       "max_conditions": max_conditions})
        rng = np.random.default_rng(seed)
        if len(conds) > max_conditions:
            conds = [conds[i] for i in np.sort(rng.choice(len(conds), max_conditions, replace=False))]
        X = get_matrix(adata, self.options["layer"])
        labels = np.array([condition_label(c) for c in cells])
        predicted = self.predictor(conds)
        edges = np.quantile(predicted, np.linspace(0, 1, _N_BINS + 1)[1:-1])
        scores = {float(v): [[] for _ in range(_N_BINS)] for v in levels}
        residuals = []
        for i, c in enumerate(conds):
            rows = np.flatnonzero(labels == condition_label(c))
            y = np.asarray(dense(take_rows(X, rows)), np.float64)
            residuals.append(np.abs(mean_log1p(y) - predicted[i]))
            sim = np.asarray(self.sample(dict(zip(self.keys, c, strict=True)), n, seed=seed + i).X, np.float64)
            b = np.searchsorted(edges, predicted[i])
            for level in scores:
                lo, hi, _ = sample_interval(sim, level)
                e = np.maximum(lo[None] - y, y - hi[None])  # (cells, genes) conformity scores
                for j in range(_N_BINS):
                    scores[level][j].append(e[:, b == j].ravel())
        self.calibration = {
            "edges": edges, "conditions": [condition_label(c) for c in conds],
            "residuals": np.stack(residuals),
            "quantiles": {lv: np.array([conformal_quantile(np.concatenate(s), lv) if sum(map(len, s)) else 0.0
                                        for s in per_bin]) for lv, per_bin in scores.items()}}
        return self

    def predict_interval(self, conditions, level: float = 0.9, kind: str = "cell", *, n: int = 2000,
                         seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per-gene lower and upper bounds for each condition (module docstring).

        Arguments:
            conditions: as :meth:`sample`.
            level: nominal level in ``(0, 1)``; cell-level intervals need a calibrated level
                (:meth:`calibrate`'s ``levels``, default 0.5, 0.8, 0.9, 0.95).
            kind: ``"cell"`` (integer counts of a new cell) or ``"mean"`` (the condition's mean log1p(CP10k)).
            n: sampled cells per condition (cell level). seed: seed of the draws.

        Returns:
            ``(lower, upper)`` DataFrames (condition labels x genes).

        Raises:
            RuntimeError: not fitted or not calibrated.
            ValueError: ``level`` outside ``(0, 1)`` or not calibrated, an unknown ``kind``.
        """
        self._require_fitted()
        check_choice("kind", kind, ("cell", "mean"))
        level = check_range("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.calibration is None:
            raise RuntimeError("the intervals are not calibrated; call calibrate(adata) (fit(calibrate=True) does)")
        conds = self._parse(conditions)
        labels = labels_of(conds)
        if kind == "cell":  # the bounds of n sampled cells per condition, widened by the calibration
            rows = np.arange(len(conds)) * n
            cells = self.sample(conds, n, seed=seed, interval=level)
            return tuple(pd.DataFrame(cells.layers[side][rows].astype(np.float64), index=labels,
                                      columns=self.var_names) for side in ("lower", "upper"))
        predicted = self.predictor(conds)
        if self.predictor.kind in ("baseline", "regressor"):
            lo, hi = self._jackknife_plus(conds, level)
        else:  # split-conformal on the calibration conditions' residuals |observed - predicted|
            q = conformal_quantile(self.calibration["residuals"], level, axis=0)
            lo, hi = predicted - q, predicted + q
        return (pd.DataFrame(lo, index=labels, columns=self.var_names),
                pd.DataFrame(hi, index=labels, columns=self.var_names))

    def _jackknife_plus(self, conds, level):
        at_k, at_new = self.predictor.leave_one_out(self.train_conditions, conds)
        observed = {c: self.predictor.observed_mean(c) for c in self.train_conditions}
        rows = [k for k, v in enumerate(at_k) if v is not None and at_new[k] is not None]
        if not rows:
            raise RuntimeError(f"no training condition can be predicted by the {self.predictor.name} predictor "
                               "fitted without it: mean-level intervals need at least one")
        resid = np.stack([np.abs(observed[self.train_conditions[k]] - at_k[k]) for k in rows])
        lo, hi = [], []
        for i in range(len(conds)):
            a, b = jackknife_plus(resid, np.stack([at_new[k][i] for k in rows]), level)
            lo.append(a)
            hi.append(b)
        return np.stack(lo), np.stack(hi)

    # -- saving -------------------------------------------------------------------------------------------------

    def _saved_state(self):
        self._require_fitted()  # a function predictor is not saved: load(path, predictor=...) takes it again
        meta = {"options": self.options, "keys": self.keys, "predictor": {"kind": self.predictor.kind,
                                                                          "name": self.predictor.name},
                "train_conditions": [list(c) for c in self.train_conditions], "vocab": self.vocab,
                "embed_scale": self.embed_scale, "prior": self.prior.config(), "history": self.history,
                "lib_conditions": [list(c) for c in self.lib_conditions],
                "calibration": None if self.calibration is None else {
                    "conditions": self.calibration["conditions"],
                    "quantiles": {str(k): v.tolist() for k, v in self.calibration["quantiles"].items()}}}
        arrays = {"prior": self.prior.params,
                  "state": {"embed_center": self.embed_center, "embed_axes": self.embed_axes, "z_shift": self.z_shift,
                            "z_scale": self.z_scale, "log_lib": self.log_lib}}
        if self.calibration is not None:
            arrays["calibration"] = {"edges": self.calibration["edges"], "residuals": self.calibration["residuals"]}
        if self.predictor.kind == "baseline":
            st = self.predictor.baseline.stats
            meta["predictor"]["keys"] = [[p, list(c)] for p, c in st.keys]
            arrays["baseline"] = {"means": st.means, "counts": st.counts}
        elif self.predictor.kind == "regressor":
            reg_meta, reg_arrays = self.predictor.regressor.state()
            meta["predictor"]["regressor"] = reg_meta
            meta["predictor"]["observed"] = [list(c) for c in self.predictor.observed]
            arrays["regressor"] = reg_arrays
            arrays["observed"] = {"means": np.stack(list(self.predictor.observed.values()))}
        elif self.predictor.kind == "table":
            meta["predictor"]["labels"] = list(self.predictor.table)
            arrays["table"] = {"values": np.stack(list(self.predictor.table.values()))}
        return meta, arrays, {"vae": self.vae}

    @classmethod
    def _from_saved(cls, path: Path, meta: dict, arrays, predictor=None) -> HybridModel:
        self = cls.__new__(cls)
        self.options = dict(meta["options"])
        self.keys = list(meta["keys"])
        self.vae = VAE.load(path / "vae")
        self.adata = None
        spec = None
        if self.options["perturbation_key"] is not None:
            spec = PerturbationSpec(self.options["perturbation_key"], self.options["control"],
                                    tuple(k for k in self.keys if k != self.options["perturbation_key"]))
        kind = meta["predictor"]["kind"]
        if kind == "function":
            if predictor is None or not callable(predictor):
                raise ValueError("this hybrid model's predictor is a function, which is not saved: pass it again, "
                                 "HybridModel.load(path, predictor=f)")
            self.predictor = _Predictor(predictor, self.keys, self.var_names, spec)
        elif kind == "regressor":
            self.predictor = _Predictor("regressor", self.keys, self.var_names, spec)
            self.predictor.regressor = ConditionRegressor.from_state(meta["predictor"]["regressor"], arrays)
            conds = [tuple(c) for c in meta["predictor"]["observed"]]
            means = np.asarray(arrays("observed")["means"], np.float64).reshape(len(conds), -1)
            self.predictor.observed = dict(zip(conds, means, strict=True))
        elif kind == "table":
            values = np.asarray(arrays("table")["values"], np.float64).reshape(len(meta["predictor"]["labels"]), -1)
            self.predictor = _Predictor(dict(zip(meta["predictor"]["labels"], values, strict=True)), self.keys,
                                        self.var_names, spec)
        else:
            self.predictor = _Predictor(meta["predictor"]["name"], self.keys, self.var_names, spec)
            st = arrays("baseline")
            keys = [(p, tuple(c)) for p, c in meta["predictor"]["keys"]]
            base = BASELINES[meta["predictor"]["name"]](spec, layer=self.options["layer"])
            base.stats = ConditionMeans(keys, np.asarray(st["means"], np.float64).reshape(len(keys), -1),
                                np.asarray(st["counts"], np.int64).reshape(-1), np.asarray(self.var_names))
            base._fit_statistics()
            self.predictor.baseline = base
        self.train_conditions = [tuple(c) for c in meta["train_conditions"]]
        self.vocab = [list(v) for v in meta["vocab"]]
        self.embed_scale = float(meta["embed_scale"])
        state = arrays("state")
        self.embed_axes = np.asarray(state["embed_axes"], np.float64).reshape(-1, len(self.var_names))
        self.embed_center = np.asarray(state["embed_center"], np.float64)
        self.z_shift, self.z_scale = np.asarray(state["z_shift"]), np.asarray(state["z_scale"])
        self.log_lib = np.asarray(state["log_lib"], np.float64)
        self.lib_conditions = [tuple(c) for c in meta["lib_conditions"]]
        self.prior = load_prior(meta["prior"], path / "prior.msgpack")
        self.history = meta["history"]
        cal = meta.get("calibration")
        if cal is None:
            self.calibration = None
        else:
            arr = arrays("calibration")
            self.calibration = {"conditions": cal["conditions"], "edges": np.asarray(arr["edges"], np.float64),
                                "residuals": np.asarray(arr["residuals"], np.float64).reshape(
                                    len(cal["conditions"]), -1),
                                "quantiles": {float(k): np.asarray(v, np.float64) for k, v in cal["quantiles"].items()}}
        return self

    def save(self, path, *, overwrite: bool = True) -> None:
        """Write the model to the folder ``path`` atomically (``model.json``, array files, ``vae/``). A function
        predictor is not saved (no code is): :meth:`load` takes it again.

        Raises:
            RuntimeError: not fitted. FileExistsError: ``path`` exists and not ``overwrite``.
        """
        super().save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path, predictor=None) -> HybridModel:
        """Read a model written by :meth:`save` (JSON and msgpack; no code runs). ``predictor``: the function of a
        model saved with a function predictor.

        Raises:
            FileNotFoundError: no model at ``path``. ValueError: another kind of model, damaged files, a function
                predictor not given again.
        """
        return super().load(path, predictor=predictor)


def _decode_mean_theta(module, params, z, log_lib):
    """The decoder's expected counts and NB inverse dispersion (ones for Poisson), each ``(cells, genes)``."""
    out = vae_decode(module, params, z, log_lib, None)
    mu = jnp.exp(out["log_mu"])
    theta = jnp.broadcast_to(jnp.exp(out["log_theta"]), mu.shape) if "log_theta" in out else jnp.ones_like(mu)
    return mu, theta


def _condition_means(adata, layer, conditions: list[tuple[str, ...]], keys: list[tuple[str, ...]]) -> np.ndarray:
    """float64 ``(len(keys), genes)`` mean log1p(CP10k) of the cells of each condition in ``keys`` (cells' tuples
    in ``conditions``; cells of other conditions are left out)."""
    index = {c: i for i, c in enumerate(keys)}
    group = np.array([index.get(c, -1) for c in conditions], np.int64)
    sums = log1p_group_sums(get_matrix(adata, layer), group, len(keys))
    counts = np.bincount(group[group >= 0], minlength=len(keys))
    return sums / np.maximum(counts, 1)[:, None]
