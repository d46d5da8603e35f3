"""``genjax.PerturbationModel``: predict the count profiles of cells under a perturbation never measured (a new
combination of measured perturbations, a measured perturbation in a cell type or cell line where it was not
measured), as cells, with a count likelihood.

Typical use::

    pm = genjax.PerturbationModel(train, perturbation_key="condition", control="control",
                                  covariate_keys=("cell_type",))
    pm.fit(max_epochs=200)
    pred = pm.predict(controls_of_the_target_cell_type, perturbation="KLF1+MAP2K6")  # AnnData of counts
    profile = pm.predict_mean(controls_of_the_target_cell_type, perturbation="KLF1+MAP2K6")  # log1p CP10k

How: a count VAE (NB / ZINB / Poisson decoder, :class:`genjax.VAE`) is trained on every training cell without
being told the perturbation, so its latent space carries the perturbation effects; the response of a condition
is a shift of the latent (:class:`LatentResponse`: measured, carried over covariate values by basal-state
similarity, composed over the members of a combination with a cross-validated interaction term or pooled
member effects); a source control cell is encoded, shifted and decoded with its own library size (moved by the
condition's library shift), and its own counts are carried to the decoded perturbed distribution
(:func:`genjax.likelihoods.carry_counts`; or a fresh draw from the decoder with ``noise="model"``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_choice, check_int, check_range
from .._typing import PredictionNoise
from ..data import (
    PerturbationSpec,
    UnknownPerturbationError,
    dense,
    get_matrix,
    normalize_log1p,
    row_sums,
    take_rows,
)
from ..likelihoods import carry_counts
from ..training import tree_digest
from ..vae import observation_model, vae_decode, vae_sample_counts
from ._base import SavedModel, cached_jit
from ._perturbation_baselines import NoChange
from ._perturbation_flow import LatentFlowResponse
from ._perturbation_offset import OFFSET_RULES, BaselineOffset, match_log1p_mean, mean_log1p
from ._perturbation_response import LatentResponse
from ._vae import VAE

__all__ = ["PerturbationModel", "PERTURBATION_METHODS"]

PERTURBATION_METHODS = ("compositional", "scgen", "flow")
"""The response models of :class:`PerturbationModel`: latent shifts (:class:`LatentResponse`) or a conditional
latent flow (:class:`LatentFlowResponse`)."""


class PerturbationModel(SavedModel):
    """A count VAE with a latent response model: cells under perturbations and covariates never measured.

    Arguments:
        adata: training cells, raw counts (``X`` or ``layer``), with controls and perturbed cells.
        perturbation_key: ``obs`` column of perturbation labels (combinations joined by ``delimiter``).
        control: the label of control cells.
        covariate_keys: ``obs`` columns the response may depend on (cell type, cell line, dose, donor).
        method: ``"compositional"`` (default; the response carried over covariates by basal-state similarity and
            composed with a learned interaction, each shrunk toward the baseline by cross-validation on training
            conditions), ``"scgen"`` (scGen's latent arithmetic: one average shift per perturbation) or ``"flow"``
            (a conditional flow-matching prior on the latents, unmeasured conditions sampled by compositional
            guidance over members and covariates; cells are drawn from the condition's distribution rather than
            moved from each source cell, whose library size and covariates they keep).
        likelihood: the decoder's count distribution, ``"nb"`` (default), ``"zinb"`` or ``"poisson"``.
        layer: read counts from this layer instead of ``X``.
        delimiter: what joins the members of a combination (``"+"``).
        vae_kwargs: other :class:`genjax.VAE` options (``n_latent``, ``n_hidden``, ``n_layers``, ``dispersion``, ...).
        seed: seed of the VAE initialisation.

    Raises:
        KeyError: the perturbation key or a covariate key is not an ``obs`` column.
        ValueError: no control cell, malformed labels (named with their cell), a bad option, or counts the VAE
            refuses (named by cell and gene).
    """

    format_tag = "genjax.PerturbationModel/1"

    def __init__(self, adata, perturbation_key: str, control: str, covariate_keys: Sequence[str] | str = (),
                 method: str = "compositional", *, likelihood: str = "nb", layer: str | None = None,
                 delimiter: str = "+", vae_kwargs: dict | None = None, seed: int = 0):
        covariate_keys = (covariate_keys,) if isinstance(covariate_keys, str) else tuple(covariate_keys)
        self.spec = PerturbationSpec(perturbation_key, control, covariate_keys, delimiter)
        check_choice("method", method, PERTURBATION_METHODS)
        check_choice("likelihood", likelihood, ("nb", "zinb", "poisson"))
        labels = self.spec.labels(adata)
        if not (labels == self.spec.control).any():
            raise ValueError(f"no cell of adata has the control label {control!r} in obs[{perturbation_key!r}] "
                             f"(labels: {sorted(set(labels))[:10]})")
        vae_kwargs = dict(vae_kwargs or {})
        for k in ("conditions", "likelihood", "layer"):
            if k in vae_kwargs:
                raise ValueError(f"vae_kwargs cannot set {k!r}: the perturbation model's VAE is unconditional and "
                                 "takes likelihood and layer from the model's own arguments")
        self.options = {"method": method, "likelihood": likelihood, "layer": layer, "vae_kwargs": vae_kwargs,
                        "seed": seed}
        self.vae = VAE(adata, likelihood=likelihood, layer=layer, seed=seed, **vae_kwargs)
        self.adata = adata
        self.response: LatentResponse | None = None
        self.offset: BaselineOffset | None = None
        self.flow: LatentFlowResponse | None = None
        self.history: dict[str, list] = {}

    @property
    def var_names(self) -> list[str]:
        """Training gene names, in model order."""
        return self.vae.var_names

    def __repr__(self) -> str:
        return (f"PerturbationModel(method={self.options['method']!r}, likelihood={self.options['likelihood']!r}, "
                f"perturbation_key={self.spec.key!r}, control={self.spec.control!r}, "
                f"covariate_keys={list(self.spec.covariate_keys)}, genes={len(self.var_names)}, "
                f"fitted={self.response is not None})")

    def fit(self, max_epochs: int | None = None, batch_size: int = 128, *, checkpoint_dir=None,
            resume: bool = False, restart: bool = False, seed: int = 0, progress: bool = True,
            flow_kwargs: dict | None = None, **vae_fit_kwargs) -> PerturbationModel:
        """Train the VAE on every training cell, then estimate the latent response of every training condition
        (and, for ``method="flow"``, fit the conditional latent flow).

        Arguments:
            max_epochs, batch_size: VAE training (default epochs: scvi-tools' rule).
            checkpoint_dir, resume, restart: checkpoints (``vae/``, and ``flow/`` for the flow) as
                :meth:`genjax.VAE.fit`; the flow's fingerprint includes the VAE's parameters. The shift estimate
                is closed-form and takes a second.
            seed: seed of the VAE's split, data order and draws.
            progress: progress bar.
            flow_kwargs: settings of the flow (``steps`` 4000, ``batch_size`` 256, ``lr``, ``cond_dropout`` 0.2,
                ``n_hidden``, ``n_layers``; :meth:`LatentFlowResponse.fit`).
            vae_fit_kwargs: other :meth:`genjax.VAE.fit` arguments (``lr``, ``early_stopping``, ...).

        Returns:
            ``self``.
        """
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
        if flow_kwargs and self.options["method"] != "flow":
            raise ValueError(f"flow_kwargs apply to method='flow' only; this model's method is "
                             f"{self.options['method']!r}")
        self.vae.fit(max_epochs=max_epochs, batch_size=batch_size, seed=seed, progress=progress,
                     checkpoint_dir=None if ckpt is None else ckpt / "vae", resume=resume, restart=restart,
                     **vae_fit_kwargs)
        self.history = {"vae": list(self.vae.history)}
        r = self._latent_with_library(self.adata)
        labels, covariates = self.spec.labels(self.adata), self.spec.covariates(self.adata)
        method = "scgen" if self.options["method"] == "scgen" else "compositional"
        self.response = LatentResponse.fit(r, labels, covariates, self.spec, method)
        self.offset = self._fit_offset(r, seed) if self.options["method"] == "compositional" else None
        if self.options["method"] == "flow":
            self.flow = LatentFlowResponse.fit(
                r[:, :-1], labels, covariates, self.spec, seed=seed, progress=progress,
                checkpoint_dir=None if ckpt is None else ckpt / "flow", resume=resume, restart=restart,
                fingerprint={"vae_params": tree_digest(self.vae.params)}, **(flow_kwargs or {}))
        return self

    def with_method(self, method: str) -> PerturbationModel:
        """A model sharing this one's trained VAE with another shift estimator (``"compositional"`` or
        ``"scgen"``), estimated on the same training cells: compares the estimators on one VAE.

        Raises:
            RuntimeError: not fitted, or fitted without its training data (a loaded model). ValueError: another
                method.
        """
        self._require_fitted()
        check_choice("method", method, ("compositional", "scgen"))
        if self.adata is None:
            raise RuntimeError("with_method needs the training data; a loaded model does not keep it")
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.options = {**self.options, "method": method}
        other.flow = None
        r = self._latent_with_library(self.adata)
        other.response = LatentResponse.fit(r, self.spec.labels(self.adata), self.spec.covariates(self.adata),
                                            self.spec, method)
        other.offset = other._fit_offset(r, self.options["seed"]) if method == "compositional" else None
        return other

    def _fit_offset(self, r: np.ndarray, seed: int, max_source: int = 256, n_per_cell: int = 2) -> BaselineOffset:
        """The training means behind the baseline offset and the weight of the model's correction per rule,
        chosen on every training condition a rule can predict with its own cells left out: up to
        ``max_source`` of its covariate value's training controls are moved by the left-out shift exactly as
        :meth:`predict` moves source cells, and their mean log1p(CP10k) is set against the baseline's (module
        :mod:`genjax.models._perturbation_offset`)."""
        stats = NoChange(self.spec, layer=self.options["layer"]).fit(self.adata).stats
        offset = BaselineOffset(self.spec, list(stats.keys), stats.means)
        labels = self.spec.labels(self.adata)
        covs = [tuple(str(v) for v in row) for row in self.spec.covariates(self.adata)]
        rng = np.random.default_rng(seed)
        cases: dict[str, list] = {rule: [] for rule in OFFSET_RULES}
        for k, (p, c) in enumerate(self.response.conditions):
            shift, rule = self.response.left_out_shift(p, c)
            cov = self.response.covariates[c]
            delta = None if shift is None else offset.baseline(p, cov, rule)
            if delta is None:
                continue
            ctrl = np.flatnonzero((labels == self.spec.control) & np.array([v == cov for v in covs]))
            ctrl = np.sort(rng.choice(ctrl, max_source, replace=False)) if len(ctrl) > max_source else ctrl
            source = self.adata[ctrl]
            model = mean_log1p(self._moved_cells(source, r[ctrl], np.full(len(ctrl), c), {c: shift}, n_per_cell,
                                                 seed + k, True, self._noise(None), 1024)[1])
            base = mean_log1p(get_matrix(source, self.options["layer"])) + delta
            cases[rule].append((c, base, model, offset.observed(p, cov)))
        offset.fit_weights(cases, self.response.basal[:, :-1])
        return offset

    def _latent_with_library(self, adata) -> np.ndarray:
        """``(cells, n_latent + 1)`` posterior means with the log library size appended."""
        z = self.vae.latent(adata)
        lib = row_sums(get_matrix(adata, self.options["layer"]))
        return np.concatenate([z, np.log(lib)[:, None]], axis=1)

    def _require_fitted(self):
        if self.response is None:
            raise RuntimeError("the perturbation model is not fitted; call fit() first (or "
                               "PerturbationModel.load(path))")

    def _check_source(self, source) -> np.ndarray:
        """The covariate index of each source cell; the source cells must be controls.

        Raises:
            ValueError: a source cell that is not a control (named). UnknownPerturbationError: covariate values
                without training controls.
        """
        labels = self.spec.labels(source)
        bad = np.flatnonzero(labels != self.spec.control)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"source cell {source.obs_names[i]!r} has {self.spec.key}={labels[i]!r}; predictions "
                             f"start from control cells ({self.spec.key}={self.spec.control!r}), {bad.size} of "
                             f"{source.n_obs} source cells are not")
        covs = self.spec.covariates(source)
        return np.array([self.response.covariate_index(tuple(row)) for row in covs], np.int64)

    def shift(self, perturbation: str, **covariates) -> tuple[np.ndarray, str]:
        """The predicted latent shift (float64 ``(n_latent + 1,)``, last entry: log library size) of
        ``perturbation`` at the given covariate values, and the rule used (``"measured"``, ``"carried"``,
        ``"composed"``); see :class:`LatentResponse`.

        Raises:
            KeyError: a covariate key missing. UnknownPerturbationError: as :meth:`predict`.
        """
        self._require_fitted()
        missing = [k for k in self.spec.covariate_keys if k not in covariates]
        if missing or set(covariates) - set(self.spec.covariate_keys):
            raise KeyError(f"give exactly the covariate keys {list(self.spec.covariate_keys)}; got "
                           f"{sorted(covariates)}")
        return self.response.shift(perturbation, tuple(str(covariates[k]) for k in self.spec.covariate_keys))

    def predict(self, source, perturbation: str, *, n_per_cell: int = 1, seed: int = 0, calibrate: bool = True,
                noise: PredictionNoise | None = None, batch_size: int = 1024,
                correction_weight: float | None = None):
        """Predicted cells of ``perturbation`` from the control cells ``source``.

        Each source cell is encoded (posterior mean), shifted by the condition's predicted latent shift at the
        cell's covariate values and decoded with its library size moved by the condition's library shift: the
        perturbed expected counts ``mu1`` beside the unperturbed ``mu0`` (the source cell decoded unshifted).
        ``n_per_cell`` cells are drawn per source cell, by ``noise``:

        * ``"source"`` (default for NB and Poisson decoders): the source cell's own counts ``x`` carried to the
          perturbed distribution by the Gamma-Poisson coupling, gene by gene with ``r = mu1 / mu0``: where
          ``r <= 1``, binomial thinning ``x' ~ Binomial(x, r)``; where ``r > 1``, ``x' = x + Poisson((r - 1)
          lam)`` with ``lam ~ Gamma(theta + x, rate theta / mu0 + 1)`` the posterior of the cell's Poisson rate
          (``lam = mu0`` for Poisson). If ``x ~ NB(mu0, theta)`` then exactly ``x' ~ NB(mu1, theta)``, and with
          no change (``r = 1``) ``x' = x``: the no-change baseline is the offset, the model contributes only
          the change, and the cell-to-cell variation of real cells (and what the decoder misses of it) carries
          over instead of being redrawn.
        * ``"model"``: a fresh draw from the decoder's count distribution at ``mu1``.

        Baseline offset (``method="compositional"``): for a condition the model carries over covariate values or
        composes from members, the prediction is the task baseline corrected by the model, ``(1 - a) ŷ_base + a
        ŷ_model`` per gene in mean log1p(CP10k) (``ŷ_base`` mean-delta for carried, additive for composed
        conditions, from the source cells' mean; ``a`` per rule chosen on training conditions with their own cells
        left out, weighted toward those of similar basal states where that predicted them better,
        :attr:`offset`). The drawn counts are then moved gene by gene to that mean
        (:func:`~genjax.models.match_log1p_mean`: thinning down, Poisson increments up). ``a = 1``: the model
        alone; ``a = 0``: the baseline's mean profile, in cells.

        Arguments:
            source: AnnData of control cells (raw counts, the training genes in any order), with the covariate
                columns.
            perturbation: a label (a combination joined by the delimiter, members in any order).
            n_per_cell: predicted cells per source cell.
            seed: seed of the draws.
            noise: ``"source"`` or ``"model"`` (above); None: ``"source"`` for NB / Poisson decoders, ``"model"``
                for ZINB (the coupling is exact for NB and Poisson only).
            calibrate: remove the decoder's per-gene bias on the source cells: the predicted means are multiplied
                per gene and covariate value by ``f_g = (sum_i x_ig + 1) / (sum_i mu_ig + 1)``, the source cells'
                observed counts over their own decoded (unshifted) expected counts. The model then predicts the
                source profile itself for a zero shift (the no-change baseline is its offset) and contributes
                only the change, and a VAE's reconstruction error does not count as a response.
            batch_size: cells decoded per jitted call.
            correction_weight: ``a`` in ``[0, 1]`` instead of the weight chosen in training (where the offset
                applies).

        Returns:
            AnnData ``(n_source * n_per_cell, genes)``: ``X`` float32 counts, ``layers["mean"]`` their expected
            value (``mu1``; with ``"source"`` noise given the source counts, ``r x`` or ``x + (r - 1) E[lam]``),
            ``obs`` the source cell (``source_cell``), the perturbation, the covariates and ``library_size``;
            ``uns["perturbation_rule"]`` how each covariate value's shift was made, ``uns["noise"]``,
            ``uns["correction_weight"]`` the weight ``a`` per covariate value where the baseline offset applied.

        Raises:
            RuntimeError: not fitted. ValueError: a source cell that is not a control, genes that do not match, a
                correction weight outside ``[0, 1]``.
            UnknownPerturbationError: a perturbation, combination member or covariate value never seen in
                training (named).
        """
        import anndata as ad
        import pandas as pd

        self._require_fitted()
        n_per_cell = check_int("n_per_cell", n_per_cell)
        if correction_weight is not None:
            correction_weight = check_range("correction_weight", correction_weight, low=0.0, high=1.0)
        noise = self._noise(noise)
        if self.vae.registry.gene_order(source) is not None:  # same genes in another order: the model's order
            source = source[:, self.var_names]
        cov_idx = self._check_source(source)
        canonical = self.spec.canonical(perturbation)
        r_source = self._latent_with_library(source)
        groups = {int(c): self.response.covariates[c] for c in np.unique(cov_idx)}
        names = {c: " | ".join(covs) or "all" for c, covs in groups.items()}
        rules, weights = {}, {}
        if self.flow is None:
            shifts = {}
            for c, covs in groups.items():
                shifts[c], rules[names[c]] = self.response.shift(canonical, covs)
            mean, counts, moved = self._moved_cells(source, r_source, cov_idx, shifts, n_per_cell, seed, calibrate,
                                                    noise, batch_size)
        else:
            def move(r, rows_cov):
                moved = np.empty_like(r)
                for c, covs in groups.items():
                    rows = np.flatnonzero(rows_cov == c)
                    z, rules[names[c]] = self.flow.sample(canonical, covs, len(rows), seed + c)
                    moved[rows, :-1] = z
                    moved[rows, -1] = r[rows, -1] + self._library_shift(canonical, covs)
                return moved

            mean, counts, moved = self._moved_cells(source, r_source, cov_idx, move, n_per_cell, seed, calibrate,
                                                    noise, batch_size)
        rows = np.repeat(np.arange(source.n_obs), n_per_cell)
        for c, covs in groups.items():  # the baseline as offset of what the model carries or composes
            delta = None if self.offset is None else self.offset.baseline(canonical, covs, rules[names[c]])
            if delta is None:
                continue
            a = (self.offset.weight(rules[names[c]], c, self.response.basal[:, :-1]) if correction_weight is None
                 else correction_weight)
            weights[names[c]] = a
            if a < 1.0:
                mine = cov_idx[rows] == c
                target = ((1.0 - a) * (mean_log1p(take_rows(get_matrix(source, self.options["layer"]),
                                                            np.flatnonzero(cov_idx == c))) + delta)
                          + a * mean_log1p(counts[mine]))
                counts[mine], mean[mine] = match_log1p_mean(counts[mine], mean[mine], target, seed=seed + c)
        obs = pd.DataFrame(index=pd.Index([f"pred-{i}" for i in range(len(rows))]))
        obs["source_cell"] = np.asarray(source.obs_names)[rows]
        obs[self.spec.key] = canonical
        for k in self.spec.covariate_keys:
            obs[k] = source.obs[k].astype(str).to_numpy()[rows]
        obs["library_size"] = np.rint(np.exp(moved[:, -1].astype(np.float64))).astype(np.int64)
        out = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=self.var_names))
        out.layers["mean"] = mean
        out.uns["perturbation_rule"] = rules
        out.uns["noise"] = noise
        out.uns["correction_weight"] = weights
        return out

    def _moved_cells(self, source, r_source: np.ndarray, cov_idx: np.ndarray, move, n_per_cell: int, seed: int,
                     calibrate: bool, noise: str, batch_size: int):
        """Expected and drawn counts (float32 ``(n_source * n_per_cell, genes)``) of the source cells moved in
        latent space, and the moved latents: ``move`` is ``{covariate index: shift}`` or a function of the
        repeated ``(r, covariate index)`` returning the moved ``r``."""
        log_factor = self._calibration(source, r_source, cov_idx, batch_size) if calibrate else None
        r = np.repeat(r_source, n_per_cell, axis=0)
        cov_rep = np.repeat(cov_idx, n_per_cell)
        if callable(move):
            moved = move(r, cov_rep)
        else:
            moved = r.copy()
            for c, shift in move.items():
                moved[cov_rep == c] += shift
        moved = moved.astype(np.float32)
        factor = None if log_factor is None else log_factor[cov_rep]
        rows = np.repeat(np.arange(source.n_obs), n_per_cell)
        if noise == "model":
            mean, counts = self._decode(moved[:, :-1], moved[:, -1], seed, batch_size, factor)
        else:
            mean, counts = self._transport(r.astype(np.float32), moved, get_matrix(source, self.options["layer"]),
                                           rows, seed, batch_size, factor)
        return mean, counts, moved

    def _noise(self, noise) -> str:
        likelihood = self.vae.module.likelihood
        if noise is None:
            return "source" if likelihood in ("nb", "poisson") else "model"
        noise = check_choice("noise", noise, PredictionNoise)
        if noise == "source" and likelihood not in ("nb", "poisson"):
            raise ValueError(f"noise='source' carries counts by the NB / Poisson coupling; this model's decoder is "
                             f"{likelihood!r}: use noise='model'")
        return noise

    def _transport(self, r0: np.ndarray, r1: np.ndarray, X, rows: np.ndarray, seed: int, batch_size: int,
                   log_factor: np.ndarray | None):
        """Expected and carried counts (float32 ``(cells, genes)``) of the source counts ``X[rows]`` moved from
        the decoded distribution at ``r0`` (latent + log library per row) to that at ``r1``."""
        def args(sl):
            x = dense(take_rows(X, rows[sl]))
            lf = np.zeros(x.shape, np.float32) if log_factor is None else log_factor[sl]
            return r0[sl, :-1], r0[sl, -1], r1[sl, :-1], r1[sl, -1], lf, np.asarray(x, np.float32)

        return self._batched("decode-transport", _decode_transport, len(r1), batch_size, seed, args)

    def _batched(self, name: str, fn, n: int, batch_size: int, seed: int, args):
        """Run the jitted ``fn(module, params, *args(rows), key)`` -> two ``(rows, genes)`` arrays over ``n``
        rows in batches (``args`` returns host arrays; each batch is padded to a power of two rows, so a few
        shapes are compiled); the concatenated float32 pair."""
        f = cached_jit(self.vae.module, name, functools.partial(fn, self.vae.module))
        key = jax.random.key(seed)
        first, second = [], []
        for i, start in enumerate(range(0, n, batch_size)):
            rows = min(batch_size, n - start)
            size = min(batch_size, max(256, 1 << (rows - 1).bit_length()))  # few batch shapes, few compilations
            padded = [np.pad(np.asarray(a), [(0, size - rows)] + [(0, 0)] * (np.ndim(a) - 1), mode="edge")
                      for a in args(slice(start, start + rows))]
            a, b = f(self.vae.params, *padded, jax.random.fold_in(key, i))
            first.append(np.asarray(a)[:rows])
            second.append(np.asarray(b)[:rows])
        return np.concatenate(first).astype(np.float32), np.concatenate(second).astype(np.float32)

    def _library_shift(self, perturbation: str, covariates: tuple[str, ...]) -> float:
        """The condition's predicted log-library shift (0 when the shift estimator cannot make one: the flow
        composes conditions the shift model cannot, e.g. a member seen only inside combinations)."""
        try:
            return float(self.response.shift(perturbation, covariates)[0][-1])
        except UnknownPerturbationError:
            return 0.0

    def _calibration(self, source, r: np.ndarray, cov_idx: np.ndarray, batch_size: int) -> np.ndarray:
        """float32 ``(covariate values, genes)`` log factors ``log f_g`` per covariate value of the source cells
        (zeros for values without source cells); see :meth:`predict`."""
        mean, _ = self._decode(r[:, :-1].astype(np.float32), r[:, -1].astype(np.float32), 0, batch_size)
        X = get_matrix(source, self.options["layer"])
        out = np.zeros((len(self.response.covariates), mean.shape[1]), np.float32)
        for c in np.unique(cov_idx):
            rows = np.flatnonzero(cov_idx == c)
            observed = np.asarray(take_rows(X, rows).sum(axis=0), np.float64).ravel()
            out[c] = np.log((observed + 1.0) / (mean[rows].sum(axis=0, dtype=np.float64) + 1.0))
        return out

    def _decode(self, z: np.ndarray, log_lib: np.ndarray, seed: int, batch_size: int,
                log_factor: np.ndarray | None = None):
        """Expected counts and one draw (each float32 ``(cells, genes)``) at latents ``z`` and log libraries, the
        means multiplied by ``exp(log_factor)`` (cells, genes) when given."""
        def args(sl):
            lf = (np.zeros((len(z[sl]), len(self.var_names)), np.float32) if log_factor is None
                  else log_factor[sl])
            return z[sl], log_lib[sl], lf

        return self._batched("decode-mean-sample", _decode_mean_sample, len(z), batch_size, seed, args)

    def predict_cells(self, source, perturbation: str, *, seed: int = 0, calibrate: bool = True,
                      n_per_cell: int = 1, noise: PredictionNoise | None = None,
                      correction_weight: float | None = None) -> np.ndarray:
        """``(n_source * n_per_cell, genes)`` float32 log1p(CP10k) values of predicted cells (the baselines'
        cell-level interface). The mean over them estimates the predicted mean profile with Monte Carlo noise of
        the count draws: about ``sd / sqrt(n_source * n_per_cell)`` per gene, which mean metrics over hundreds of
        genes add up (at 100 source cells and one draw each, an L2 of ~1.7 over 500 Norman genes), so score mean
        metrics with ``n_per_cell`` large enough for ~2000 cells or with :meth:`predict_mean`."""
        return normalize_log1p(self.predict(source, perturbation, n_per_cell=n_per_cell, seed=seed,
                                            calibrate=calibrate, noise=noise, correction_weight=correction_weight).X)

    def predict_mean(self, source, perturbation: str, *, n_per_cell: int | None = None, seed: int = 0,
                     calibrate: bool = True, noise: PredictionNoise | None = None,
                     correction_weight: float | None = None) -> np.ndarray:
        """``(genes,)`` float32 predicted mean of log1p(CP10k) over cells of ``perturbation`` with the source
        cells' covariates: the mean over ``n_per_cell`` predicted cells per source cell (the statistic observed
        cells are compared on, so the sampling noise of counts enters as it does in real cells). ``n_per_cell``
        None: enough for about 4000 predicted cells (at least 4 per source cell), so that the Monte Carlo noise of
        the count draws stays small beside the observed mean's."""
        if n_per_cell is None:
            n_per_cell = max(4, -(-4000 // max(source.n_obs, 1)))
        pred = self.predict(source, perturbation, n_per_cell=n_per_cell, seed=seed, calibrate=calibrate,
                            noise=noise, correction_weight=correction_weight)
        return normalize_log1p(pred.X).mean(axis=0)

    def _saved_state(self):
        self._require_fitted()
        meta = {"options": self.options, "spec": self.spec.to_dict(), "response": self.response.to_dict(),
                "offset": None if self.offset is None else self.offset.meta(),
                "flow": None if self.flow is None else self.flow.meta(), "history": self.history}
        arrays = {} if self.flow is None else {"flow": self.flow.prior.params}
        if self.offset is not None:
            arrays["offset"] = {"means": self.offset.means}
        return meta, arrays, {"vae": self.vae}

    @classmethod
    def _from_saved(cls, path: Path, meta: dict, arrays) -> PerturbationModel:
        self = cls.__new__(cls)
        self.options = dict(meta["options"])
        self.spec = PerturbationSpec.from_dict(meta["spec"])
        self.response = LatentResponse.from_dict(meta["response"])
        offset = meta.get("offset")
        self.offset = None if offset is None else BaselineOffset.from_meta(self.spec, offset,
                                                                           arrays("offset")["means"])
        flow = meta.get("flow")
        self.flow = None if flow is None else LatentFlowResponse.from_meta(self.spec, flow, path / "flow.msgpack")
        self.history = meta["history"]
        self.vae = VAE.load(path / "vae")
        self.adata = None
        return self

    def save(self, path, *, overwrite: bool = True) -> None:
        """Write the model to the folder ``path`` atomically: ``model.json`` (options, perturbation
        specification, the latent response statistics, the offset's weights), ``offset.msgpack`` (the training
        means of the baseline offset), ``flow.msgpack`` (the flow) and ``vae/`` (the :class:`genjax.VAE`).

        Raises:
            RuntimeError: not fitted. FileExistsError: ``path`` exists and not ``overwrite``.
        """
        self._require_fitted()
        super().save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> PerturbationModel:
        """Read a model written by :meth:`save` (JSON and msgpack only; no code runs).

        Raises:
            FileNotFoundError: no model at ``path``. ValueError: another kind of model or damaged files.
        """
        return super().load(path)


def _decode_transport(module, params, z0, log_lib0, z1, log_lib1, log_factor, x, key):
    """Counts ``x`` (cells, genes) of cells decoded at ``(z0, log_lib0)`` carried to the decoded distribution at
    ``(z1, log_lib1)`` by the Gamma-Poisson coupling (``PerturbationModel.predict``, ``noise="source"``); both
    means multiplied by ``exp(log_factor)``. Returns the expected carried counts given ``x`` and one draw."""
    out0 = vae_decode(module, params, z0, log_lib0, None)
    out1 = vae_decode(module, params, z1, log_lib1, None)
    mu0 = jnp.exp(out0["log_mu"] + log_factor)
    mu1 = jnp.exp(out1["log_mu"] + log_factor)
    theta = jnp.exp(out0["log_theta"]) if "log_theta" in out0 else None
    counts, expected = carry_counts(key, x, mu0, mu1, theta)
    return expected, counts


def _decode_mean_sample(module, params, z, log_lib, log_factor, key):
    """Expected counts and one draw from the decoder's observation model at latents ``z`` (cells, latent), the
    NB / Poisson means multiplied by ``exp(log_factor)`` (cells, genes)."""
    out = vae_decode(module, params, z, log_lib, None)
    out = {**out, "log_mu": out["log_mu"] + log_factor}
    return observation_model(module.likelihood).mean(out), vae_sample_counts(key, module, out)
