"""``genjax.LatentGenerator``: the latent generative pipeline for count data.

counts -> log1p -> VAE encoder -> z -> (standardise) -> diffusion or flow prior, conditional with guidance
-> z' -> VAE decoder -> NB / ZINB / Poisson(mu, theta) -> sampled counts, with library sizes drawn per condition.

Two spaces are supported:

* ``space="latent"`` (default, the seed's recommended pipeline): a count VAE (:class:`genjax.VAE`) is fitted,
  the training cells are encoded to their posterior means, and the prior is fitted on those latents.
* ``space="log1p"`` (the seed's "Solution 2" baseline): the prior is fitted directly on log1p of counts
  normalised to ``target_sum`` (standardised per gene); generated values are mapped back with ``expm1``,
  clipped at 0, rescaled to a drawn library size and rounded.

The prior is a denoising score model on an SDE (``prior="diffusion"``) or a flow-matching velocity model
(``prior="flow"``), conditioned on the categorical conditions through :class:`genjax.nn.Condition` with a null
token per attribute; condition dropout during training makes classifier-free guidance available at sampling.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_list, check_choice, check_int, check_range
from .._typing import LibrarySizes, PriorFamily, Space
from ..data import Condition, DataRegistry, get_matrix, kmeans_labels, row_sums, validate_counts
from ..training import FingerprintMismatchError, tree_digest
from ..vae import vae_decode, vae_sample_counts
from ._base import SavedModel, TrainingCells, cached_jit, generated_obs
from ._latent_prior import (
    FIELD_ARCHS,
    AbstractLatentPrior,
    FieldArch,
    field_settings,
    fit_prior,
    load_prior,
    sample_prior,
)
from ._vae import VAE

__all__ = ["LatentGenerator"]



class LatentGenerator(SavedModel):
    """Generate realistic count cells, by condition: a VAE plus a diffusion or flow prior on its latents.

    Arguments:
        adata: training cells, cells x genes, raw counts in ``X`` or ``layer`` (dense or sparse).
        likelihood: VAE observation model: ``"nb"`` (default) | ``"zinb"`` | ``"poisson"``.
        prior: ``"diffusion"`` (score model on a VP SDE, default) or ``"flow"`` (rectified flow matching).
        conditions: ``obs`` keys of categorical conditions (e.g. ``["cell_type"]``) that generation can request.
        layer: read counts from this layer instead of ``X``.
        space: ``"latent"`` (default) or ``"log1p"`` (the direct baseline, no VAE).
        decoder_conditions: also give the conditions to the VAE decoder (default ``True``): the latent then
            carries within-condition variation and the decoder the condition's expression programme.
        library_sizes: library sizes of generated cells: ``"empirical"`` (drawn from training cells with the same
            conditions, default) or ``"lognormal"`` (a log-normal fitted per condition combination).
        cond_dropout: probability of nulling each condition during prior training (classifier-free guidance).
        prior_clusters: if ``k > 0``, the prior is also conditioned on ``k`` k-means clusters of the standardised
            training points (unsupervised pseudo-conditions: no labels needed). Each generated cell takes the
            cluster of the training cell its library size (and unrequested conditions) are drawn from, so the
            clusters are sampled in training proportions. A multimodal latent distribution becomes ``k`` simpler
            conditional ones; meant for generators with few or no ``conditions``.
        vae_kwargs: extra arguments of :class:`genjax.VAE` (``n_latent``, ``n_hidden``, ``dispersion``, ...).
        prior_kwargs: extra arguments of the prior network / SDE (see :func:`genjax.fit_prior`).
        field: the prior's network: ``"mlp"`` (:class:`genjax.nn.FieldNet`, default) or ``"dit"``
            (:class:`genjax.nn.DiTField`, a transformer over tokens of grouped latent dimensions or genes).
        field_kwargs: the network's settings (JSON values; see :func:`genjax.fit_prior`), e.g. ``{"tokens": 2,
            "n_hidden": 64}``; for ``space="log1p"`` a DiT's ``tokens`` may be per-gene programme ids
            (:func:`genjax.nn.program_tokens`).
        target_sum: normalisation total of the ``"log1p"`` space.
        seed: seed of every initialisation.

    Raises:
        ValueError / KeyError: as :class:`genjax.VAE` for bad data, missing keys or bad option values (an unknown
            ``field`` or field settings that do not fit the prior's dimension included).
    """

    format_tag = "genjax.LatentGenerator/1"
    legacy_meta_files = ("generator.json",)

    def __init__(self, adata, likelihood: str = "nb", prior: str = "diffusion",
                 conditions: Sequence[str] | str | None = None, layer: str | None = None, *,
                 space: str = "latent", decoder_conditions: bool = True, library_sizes: str = "empirical",
                 cond_dropout: float = 0.1, prior_clusters: int = 0, vae_kwargs: dict | None = None,
                 prior_kwargs: dict | None = None, target_sum: float = 1e4, seed: int = 0, field: FieldArch = "mlp",
                 field_kwargs: dict | None = None):
        check_choice("space", space, Space)
        check_choice("library_sizes", library_sizes, LibrarySizes)
        check_choice("prior", prior, PriorFamily)
        check_choice("field", field, FIELD_ARCHS)
        check_range("cond_dropout", cond_dropout, low=0.0, high=1.0, high_open=True)
        prior_clusters = check_int("prior_clusters", prior_clusters, low=0)
        if prior_clusters > adata.n_obs:
            raise ValueError(f"prior_clusters={prior_clusters} is more than the {adata.n_obs} training cells")
        conditions = as_list(conditions)
        self.options = dict(likelihood=likelihood, prior=prior, conditions=conditions, layer=layer, space=space,
                            decoder_conditions=bool(decoder_conditions), library_sizes=library_sizes,
                            cond_dropout=float(cond_dropout), prior_clusters=int(prior_clusters),
                            vae_kwargs=dict(vae_kwargs or {}),
                            prior_kwargs=dict(prior_kwargs or {}), target_sum=float(target_sum), seed=int(seed),
                            field=field, field_kwargs=_json_settings(field_kwargs))
        self.adata = adata
        self.registry = DataRegistry.from_anndata(adata, conditions, [], layer)
        X = get_matrix(adata, layer)
        validate_counts(X, obs_names=adata.obs_names, var_names=adata.var_names, counts=True,
                        what="adata.X" if layer is None else f"adata.layers[{layer!r}]")
        # what generation draws library sizes and unrequested conditions from (and, with prior_clusters, the
        # k-means cluster of each training cell, set by fit)
        self.training_cells = TrainingCells(self.registry.encode_conditions(adata).astype(np.int32),
                                            np.zeros((adata.n_obs, 0), np.float32),
                                            np.log(row_sums(X)).astype(np.float32))
        self.vae: VAE | None = None
        if space == "latent":
            self.vae = VAE(adata, likelihood=likelihood, conditions=conditions if decoder_conditions else None,
                           layer=layer, seed=seed, **self.options["vae_kwargs"])
        self._check_field()
        self.prior_model: AbstractLatentPrior | None = None
        self._shift = self._scale = None  # standardisation of the prior's space
        self._log1p_max = None  # largest training value of the log1p space (generation clips there)
        self.history: dict[str, list] = {}

    def _check_field(self) -> None:
        """Refuse an unknown field or field settings that do not fit the prior's dimension (before any training)."""
        o = self.options
        clash = sorted({"field", "field_kwargs"} & set(o["prior_kwargs"]))
        if clash:
            raise ValueError(f"prior_kwargs must not hold {clash}; give them as LatentGenerator(field=..., "
                             f"field_kwargs=...)")
        dim = self.vae.config.n_latent if self.vae is not None else self.registry.n_genes
        sizes = {k: o["prior_kwargs"][k] for k in ("n_hidden", "n_layers") if k in o["prior_kwargs"]}
        field_settings(o["field"], dim, **sizes, field_kwargs=o["field_kwargs"])

    def _field_options(self) -> dict:
        """The ``field`` / ``field_kwargs`` arguments of :func:`fit_prior` (options of models saved before the DiT
        existed have none: the MLP)."""
        return {"field": self.options.get("field", "mlp"), "field_kwargs": self.options.get("field_kwargs") or None}

    @property
    def conditions(self) -> dict[str, tuple[str, ...]]:
        """Condition keys and their categories (training order)."""
        return self.registry.conditions

    @property
    def var_names(self) -> list[str]:
        return list(self.registry.var_names)

    def __repr__(self) -> str:
        o = self.options
        return (f"LatentGenerator(space={o['space']!r}, prior={o['prior']!r}, likelihood={o['likelihood']!r}, "
                f"conditions={o['conditions']}, genes={self.registry.n_genes}, fitted={self.prior_model is not None})")

    def _condition(self, cat: np.ndarray) -> Condition | None:
        """The prior's :class:`~genjax.data.Condition` of category codes ``cat`` (cells, k), or ``None``."""
        return Condition(labels=jnp.asarray(cat, jnp.int32)) if cat.shape[1] else None

    def _log1p_space(self, adata=None) -> np.ndarray:
        adata = self.adata if adata is None else adata
        X = get_matrix(adata, self.options["layer"])
        out = np.empty(X.shape, np.float32)
        lib = row_sums(X)
        for start in range(0, X.shape[0], 4096):
            block = X[start:start + 4096]
            block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
            out[start:start + 4096] = np.log1p(block * (self.options["target_sum"] / lib[start:start + 4096, None]))
        return out

    def prior_data(self) -> np.ndarray:
        """The training points of the prior (cells, dim), before standardisation: VAE posterior means
        (``space="latent"``) or normalised log1p expression (``space="log1p"``)."""
        if self.options["space"] == "latent":
            return np.asarray(self.vae.latent(self.adata), np.float32)
        return self._log1p_space()

    def fit(self, *, vae_epochs: int | None = None, prior_steps: int = 4000, batch_size: int = 128,
            prior_batch_size: int = 256, prior_lr: float = 1e-3, checkpoint_dir=None, resume: bool = False,
            restart: bool = False, progress: bool = True, seed: int = 0, vae_fit_kwargs: dict | None = None,
            fit_vae: bool = True) -> LatentGenerator:
        """Fit the VAE (latent space), encode the training cells, then fit the conditional prior.

        Arguments:
            vae_epochs: VAE epochs (default: scvi-tools' rule, capped by the data size).
            prior_steps: optimizer steps of the prior.
            batch_size: VAE batch size. prior_batch_size, prior_lr: prior batch size and Adam learning rate.
            checkpoint_dir: if given, ``vae/`` and ``prior/`` training checkpoints are written there (the prior
                every 200 steps and at the end). ``resume=True`` continues both stages from them when each was
                written with the same settings and data (otherwise
                :class:`~genjax.training.FingerprintMismatchError` names what differs). The prior's fingerprint
                includes a digest of the VAE's parameters: prior checkpoints trained on another VAE (e.g. after
                the VAE trained longer) are moved aside with a warning and the prior trains afresh.
                ``restart=True`` moves every stage's checkpoints aside (they are kept) and starts afresh.
            progress: tqdm progress bars.
            seed: seed of the training loops.
            vae_fit_kwargs: extra arguments of :meth:`genjax.VAE.fit`.
            fit_vae: ``False`` keeps the VAE of an earlier ``fit`` and refits only the prior (for instance
                with other ``prior_clusters`` or prior settings on the same latents).

        Returns:
            ``self``.

        Raises:
            ValueError: bad settings (checked before the VAE trains), or ``fit_vae=False`` before the VAE was ever
                fitted.
            FingerprintMismatchError, TrainingDivergedError: as :meth:`genjax.VAE.fit` and :func:`genjax.fit`.
        """
        if vae_epochs is not None:
            check_int("vae_epochs", vae_epochs)
        check_int("prior_steps", prior_steps)
        check_int("batch_size", batch_size)
        check_int("prior_batch_size", prior_batch_size)
        check_range("prior_lr", prior_lr, low=0.0, low_open=True)
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
        if not fit_vae and self.vae is not None and not self.vae.history:
            raise ValueError("fit_vae=False needs a fitted VAE; call fit() once with fit_vae=True first")
        if self.vae is not None and fit_vae:
            self.vae.fit(max_epochs=vae_epochs, batch_size=batch_size, seed=seed, progress=progress,
                         checkpoint_dir=None if ckpt is None else ckpt / "vae", resume=resume, restart=restart,
                         **(vae_fit_kwargs or {}))
            self.history["vae"] = list(self.vae.history)
        z, cond, n_categories = self._prior_training_points(seed)
        train = functools.partial(
            fit_prior, z, cond, kind=self.options["prior"], n_categories=n_categories, steps=prior_steps,
            batch_size=prior_batch_size, lr=prior_lr, cond_dropout=self.options["cond_dropout"], seed=seed,
            progress=progress, checkpoint_dir=None if ckpt is None else ckpt / "prior",
            fingerprint=self._prior_fingerprint(z, cond), **self._field_options(), **self.options["prior_kwargs"])
        try:
            self.prior_model, history = train(resume=resume, restart=restart)
        except FingerprintMismatchError as err:
            if not resume or set(err.fields) - {"vae_params", "points"}:
                raise
            warnings.warn("the prior's checkpoints were trained on another VAE; they are moved aside and the prior "
                          "trains afresh", stacklevel=2)
            self.prior_model, history = train(restart=True)
        self.history["prior"] = history
        return self

    def _prior_training_points(self, seed: int):
        """The standardised points ``(cells, dim)`` the prior is fitted on, their :class:`Condition` (conditions,
        then the k-means cluster with ``prior_clusters``) and the categories per attribute; sets the
        standardisation and the training cells' clusters."""
        points = self.prior_data()
        self._log1p_max = float(points.max()) if self.options["space"] == "log1p" else None
        self._shift = points.mean(axis=0).astype(np.float32)
        self._scale = (points.std(axis=0) + 1e-6).astype(np.float32)
        z = (points - self._shift) / self._scale
        n_categories = tuple(len(c) for c in self.registry.conditions.values())
        k = self.options.get("prior_clusters", 0)
        self.training_cells.cluster = kmeans_labels(z, k, seed) if k else None
        cond = self._condition(self._prior_cat(self.training_cells.cat, self.training_cells.cluster))
        return z, cond, n_categories + ((k,) if k else ())

    def _prior_fingerprint(self, z: np.ndarray, cond) -> dict:
        """The prior stage's part of its run fingerprint: the generator's options, the VAE's parameters (the
        earlier stage) and the training points and conditions."""
        # the field options are in the prior's own fingerprint (its network settings), so they are left out here and
        # checkpoints written before the DiT existed still resume
        skip = ("vae_kwargs", "field", "field_kwargs")
        return {**{f"option.{k}": v for k, v in self.options.items() if k not in skip},
                "vae_params": None if self.vae is None else tree_digest(self.vae.params),
                "points": tree_digest(z), "prior_conditions": None if cond is None else tree_digest(cond)}

    def _prior_cat(self, cat: np.ndarray, cluster: np.ndarray | None) -> np.ndarray:
        """The prior's category codes: the conditions, then the cluster column when ``prior_clusters > 0``."""
        if cluster is None:
            return cat
        return np.concatenate([cat, np.asarray(cluster, np.int32).reshape(-1, 1)], axis=1)

    def _require_fitted(self):
        if self.prior_model is None:
            raise RuntimeError("the generator is not fitted; call fit() first (or LatentGenerator.load(path))")

    def _draw_conditions(self, n: int, rng: np.random.Generator, conditions: dict,
                         library_conditions: dict | None = None):
        """Category codes (n, n_conditions), log library sizes (n,) and the training rows (n,) they came from,
        for ``n`` cells with ``conditions``.

        Conditions not given are drawn jointly with the library size from training cells that match the given
        ones, i.e. in training proportions.

        With ``library_conditions`` the training cells matching those values supply the library sizes and the
        unrequested conditions instead.

        Raises:
            NoMatchingCellsError: no training cell has some requested combination of conditions.
        """
        codes = self.registry.encode_values(n, **conditions)  # (n, k); -1 where not given; raises on unknowns
        source = codes if library_conditions is None else self.registry.encode_values(n, **library_conditions)
        rows = self.training_cells.draw(source, rng, self.registry)
        cat = np.where(codes >= 0, codes, self.training_cells.cat[rows]).astype(np.int32)
        if self.options["library_sizes"] == "empirical":
            log_lib = self.training_cells.log_lib[rows]
        else:  # log-normal per drawn condition combination
            log_lib = np.empty(n, np.float32)
            combos, inverse = np.unique(cat, axis=0, return_inverse=True)
            for j, combo in enumerate(combos):
                sel = np.all(self.training_cells.cat == combo, axis=1)
                ll = self.training_cells.log_lib[sel] if sel.any() else self.training_cells.log_lib
                m = inverse.reshape(-1) == j
                log_lib[m] = rng.normal(ll.mean(), ll.std() + 1e-6, m.sum())
        return cat, log_lib.astype(np.float32), rows

    def sample_latent(self, n: int, *, seed: int = 0, guidance: float | dict | None = None,
                      cat: np.ndarray | None = None, cluster: np.ndarray | None = None,
                      **sampler_kwargs) -> np.ndarray:
        """Draw ``n`` points from the fitted prior (in the VAE latent / log1p space, de-standardised).

        Arguments:
            n: number of points. seed: seed of the draw.
            guidance: classifier-free guidance weight (a float, or a dict per condition key); ``None`` or
                ``1.0`` samples the plain conditional model, ``0`` the unconditional one.
            cat: category codes (n, n_conditions) (``-1`` for a null / unrequested attribute).
            cluster: with ``prior_clusters > 0``, the cluster of each point (n,) int; default: the clusters of
                ``n`` training cells drawn at random with ``seed`` (training proportions), independently of
                ``cat`` (:meth:`generate` draws the clusters jointly with the conditions instead).
            sampler_kwargs: passed to the prior's sampler (e.g. ``method="sde"``, ``n_steps=...``).

        Returns:
            ``(n, dim)`` float32 numpy array.
        """
        self._require_fitted()
        clustered = self.training_cells.cluster is not None
        if clustered:
            if cluster is None:
                cluster = self.training_cells.cluster[np.random.default_rng(seed).integers(0, len(self.training_cells.cluster), n)]
            cluster = np.asarray(cluster)
            k = self.options["prior_clusters"]
            if (cluster.shape != (n,) or not np.issubdtype(cluster.dtype, np.integer)
                    or (n and (cluster.min() < 0 or cluster.max() >= k))):
                got = f"shape {cluster.shape}, dtype {cluster.dtype}"
                if cluster.size and np.issubdtype(cluster.dtype, np.number):
                    got += f", values in [{cluster.min()}, {cluster.max()}]"
                raise ValueError(f"cluster must be {n} integer codes in [0, {k}); got {got}")
            if cat is None:
                cat = np.full((n, len(self.registry.conditions)), -1, np.int32)
        cond = None if cat is None else self._condition(
            self._prior_cat(np.asarray(cat, np.int32), cluster if clustered else None))
        if isinstance(guidance, dict):
            unknown = set(guidance) - set(self.registry.conditions)
            if unknown:
                raise KeyError(f"guidance given for {sorted(unknown)}, which are not conditions of this model "
                               f"({list(self.registry.conditions)})")
            guidance = tuple(float(guidance.get(k, 1.0)) for k in self.registry.conditions)
            if clustered:
                guidance = guidance + (1.0,)
        z = sample_prior(self.prior_model, jax.random.key(seed), n, cond=cond, guidance=guidance,
                         **sampler_kwargs)
        return np.asarray(z) * self._scale + self._shift

    def generate(self, n: int, *, seed: int = 0, guidance: float | dict | None = None, batch_size: int = 4096,
                 sampler_kwargs: dict | None = None, library_conditions: dict | None = None, **conditions):
        """Generate ``n`` cells of sampled counts with the requested conditions.

        Arguments:
            n: number of cells.
            seed: seed of every draw (conditions, library sizes, latents, counts).
            guidance: classifier-free guidance weight(s), see :meth:`sample_latent`.
            batch_size: cells decoded per jitted call.
            sampler_kwargs: passed to the prior's sampler (see :meth:`sample_latent`), e.g. ``{"n_steps": 16}``.
            library_conditions: where library sizes (and unrequested conditions) come from instead of the
                training cells matching ``conditions``: condition values whose training cells supply them, e.g.
                ``{"cell_type": "CD14 Mono", "stim": "CTRL"}`` for a combination no training cell has
                (``stim="STIM"`` of a type only seen unstimulated), which the prior composes from its seen values.
            conditions: condition values, e.g. ``cell_type="B cells"``, or a sequence of ``n`` values (one per
                cell); the others are drawn in training proportions (jointly with the library size).

        Returns:
            AnnData (n x genes): ``X`` float32 sampled counts, ``obs`` the conditions (categoricals with the
            training categories) and ``library_size`` (the drawn library size), ``var_names`` the training genes.

        Raises:
            KeyError: a key that is not a condition. ValueError: an unknown category or ``n < 1``.
        """
        import anndata as ad
        import pandas as pd

        self._require_fitted()
        n = check_int("n", n)
        rng = np.random.default_rng(seed)
        cat, log_lib, rows = self._draw_conditions(n, rng, conditions, library_conditions)
        key_z, key_x = jax.random.split(jax.random.key(seed))
        cluster = None if self.training_cells.cluster is None else self.training_cells.cluster[rows]
        z = self.sample_latent(n, seed=int(jax.random.randint(key_z, (), 0, 2**31 - 1)), guidance=guidance,
                               cat=cat, cluster=cluster, **(sampler_kwargs or {}))
        if self.options["space"] == "latent":
            counts = self._decode(z, log_lib, cat, key_x, batch_size)
        else:
            # clip to the training range before expm1: an unconverged prior must not produce inf counts
            z = np.clip(z, 0.0, self._log1p_max)
            scaled = np.expm1(z) * (np.exp(log_lib)[:, None] / self.options["target_sum"])
            counts = np.round(scaled).astype(np.float32)
        obs = generated_obs(self.registry, cat, None, log_lib)
        return ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=self.var_names))

    def _decode(self, z, log_lib, cat, key, batch_size):
        """Counts (cells, genes) float32 drawn from the VAE decoder at latents ``z``, in jitted batches."""
        vae = self.vae
        use_cat = self.options["decoder_conditions"] and cat.shape[1] > 0
        f = cached_jit(vae.module, "decode-sample", functools.partial(_decode_sample, vae.module))
        parts = []
        for i, start in enumerate(range(0, len(z), batch_size)):
            sl = slice(start, start + batch_size)
            cond = vae.condition(cat[sl]) if use_cat else None
            parts.append(np.asarray(f(vae.params, jnp.asarray(z[sl]), jnp.asarray(log_lib[sl]), cond,
                                      jax.random.fold_in(key, i))))
        return np.concatenate(parts).astype(np.float32)

    @property
    def cell_clusters(self) -> np.ndarray | None:
        """The k-means cluster of each training cell (``prior_clusters > 0``, after :meth:`fit`), int32 (cells,)."""
        return self.training_cells.cluster

    def save(self, path, *, overwrite: bool = True) -> None:
        """Write the generator to the folder ``path`` atomically: ``model.json`` (settings, registry,
        standardisation, prior configuration, history), ``vae/`` (a :class:`genjax.VAE`), ``prior.msgpack`` (prior
        parameters) and ``train_cells.msgpack`` (training conditions, library sizes and clusters that generation
        draws from).

        Raises:
            RuntimeError: the generator is not fitted. FileExistsError: ``path`` exists and not ``overwrite``.
        """
        self._require_fitted()
        super().save(path, overwrite=overwrite)

    def _saved_state(self):
        meta = {"options": self.options, "registry": self.registry.to_dict(), "shift": self._shift.tolist(),
                "scale": self._scale.tolist(), "log1p_max": self._log1p_max, "prior": self.prior_model.config(),
                "history": self.history}
        arrays = {"prior": self.prior_model.params, "train_cells": self.training_cells.to_tree()}
        return meta, arrays, ({} if self.vae is None else {"vae": self.vae})

    @classmethod
    def _from_saved(cls, path: Path, meta: dict, arrays) -> LatentGenerator:
        self = cls.__new__(cls)
        self.options = dict(meta["options"])
        if "library" in self.options:  # saved by genjax <= 0.1
            self.options["library_sizes"] = self.options.pop("library")
        self.adata = None
        self.registry = DataRegistry.from_dict(meta["registry"])
        self.training_cells = TrainingCells.from_tree(arrays("train_cells"), len(self.registry.conditions), 0)
        self._shift = np.asarray(meta["shift"], np.float32)
        self._scale = np.asarray(meta["scale"], np.float32)
        self._log1p_max = meta["log1p_max"]
        self.vae = VAE.load(path / "vae") if (path / "vae").is_dir() else None
        self.prior_model = load_prior(meta["prior"], path / "prior.msgpack")
        self.history = meta["history"]
        return self

    @classmethod
    def load(cls, path) -> LatentGenerator:
        """Read a generator written by :meth:`save` (no training data needed to generate; folders written by
        genjax <= 0.1, with ``generator.json``, load too).

        Raises:
            FileNotFoundError: no generator at ``path``. ValueError: another kind of model or damaged files.
        """
        return super().load(path)


def _json_settings(settings: dict | None) -> dict:
    """``settings`` with tuples as lists (as ``model.json`` stores them), so a saved and a fresh model agree."""
    def plain(v):
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v.item() if isinstance(v, np.generic) else v
    return {str(k): plain(v) for k, v in (settings or {}).items()}


def _decode_sample(module, params, z, log_lib, cond, key):
    """Counts drawn from the VAE's observation model at latents ``z`` (cells, latent)."""
    return vae_sample_counts(key, module, vae_decode(module, params, z, log_lib, cond))
