"""``genjax.VAE``: the scverse-style model object over the pure VAE functions of :mod:`genjax.vae`.

Typical use::

    model = genjax.VAE(adata, likelihood="nb", conditions=["cell_type"])
    model.fit(max_epochs=100)                      # genjax.fit: checkpoints, resume, early stopping, progress
    z = model.latent(adata)                        # (cells, n_latent) posterior means
    fake = model.generate(500, cell_type="B cells")  # AnnData of sampled counts, conditions in .obs
    model.save("vae/"); model = genjax.VAE.load("vae/")

The same in scvi-tools' words (thin wrappers of the calls above; see :class:`VAE`)::

    model = genjax.VAE(adata, layer="counts", batch_key="batch", labels_key="cell_type", gene_likelihood="nb")
    model.train(max_epochs=100, plan_kwargs={"lr": 1e-3})
    model.history["elbo_train"]                    # a DataFrame per metric; model.history[-1] the last epoch
    adata.obsm["X_genjax"] = model.get_latent_representation()
    model.get_normalized_expression(gene_list=["CD3E", "MS4A1"], transform_batch=["b1", "b2"])  # DataFrame
    model.differential_expression(groupby="cell_type", group1="B cells", group2="T cells")
    query_model = genjax.VAE.load_query_data(query_adata, "vae/"); query_model.train(max_epochs=50)

Working with arrays directly (the latent generator, custom training loops): ``model.module`` is the Flax
:class:`~genjax.vae.VAEModule`, ``model.params`` its parameters, and ``model.functions()`` returns pure, jittable
functions of ``(params, arrays)`` (``encode``, ``decode``, ``prior``, ``sample``, ``loss``); ``model.batch(adata)``
gives the :class:`~genjax.data.CountBatch` of a data set and ``model.condition(n, **values)`` the
:class:`~genjax.data.Condition` of requested values.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from .._checks import check_choice, check_int, check_range
from ..data import (
    Condition,
    CountBatch,
    CountData,
    DataRegistry,
    get_matrix,
    row_sums,
    split_indices,
    validate_counts,
)
from ..likelihoods import SMALL
from ..training import TrainingDivergedError, json_digest, tree_digest, zero_frozen_updates
from ..training import fit as _fit
from ..vae import (
    VAEModule,
    draw_noise,
    dummy_batch,
    make_vae_eval_loss,
    make_vae_loss,
    observation_model,
    vae_decode,
    vae_elbo_terms,
    vae_encode,
    vae_init,
    vae_iwae_log_likelihood,
    vae_prior,
    vae_sample_counts,
)
from ._base import SavedModel, TrainingCells, cached_jit, generated_obs
from ._history import TrainingHistory
from ._vae_config import VAEConfig, resolve_scvi_aliases

__all__ = ["VAE", "VAEFunctions", "default_max_epochs"]


class VAEFunctions(NamedTuple):
    """Pure, jittable functions of a VAE's parameters (``model.functions()``); arrays have a leading cells axis.

    Fields:
        encode: ``encode(params, x, cond=None) -> {"z_mean", "z_var"[, "l_mean", "l_var"]}``; ``x`` raw counts
            (cells, genes) (log1p is applied inside) or Gaussian data, ``cond`` a :class:`~genjax.data.Condition`.
        decode: ``decode(params, z, log_lib, cond=None) -> {"log_scale", "log_mu", "log_theta", ...}``
            (:meth:`~genjax.vae.VAEModule.decode`); ``log_lib`` (cells,) is the log library size.
        prior: ``prior(params, cond=None, n=None) -> (mean, var)`` of ``z``, each (cells, latent).
        sample: ``sample(key, out) -> counts`` (cells, genes) drawn from decoder outputs ``out``.
        loss: ``loss(params, batch, key, step) -> (loss, aux)``, the training loss (negative ELBO with warm-up, or the
            model's IWAE objective: :func:`genjax.vae.make_vae_loss`).
    """

    encode: Any
    decode: Any
    prior: Any
    sample: Any
    loss: Any


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools' default number of epochs: ``min(round(20000 / n_cells * 400), 400)``."""
    return int(min(round(20000 / max(n_cells, 1) * 400), 400))


class VAE(SavedModel):
    """A (conditional) count VAE on an ``AnnData``: scvi-tools' SCVI model class, in JAX.

    Arguments:
        adata: training data, cells x genes (``X`` or ``layer``: dense, scipy sparse or backed); raw counts for
            count likelihoods, log-normalised values for ``"gaussian"``.
        likelihood: ``"nb"`` (default) | ``"zinb"`` | ``"poisson"`` | ``"gaussian"``.
        conditions: ``obs`` keys of categorical conditions (cell type, batch, tissue, perturbation, ...), given to
            the decoder (and the encoder, see ``encode_covariates``); a single key may be given as a string.
        layer: read this layer instead of ``X``.
        continuous: ``obs`` keys of continuous covariates (standardised with their training mean and std).
        n_hidden, n_latent, n_layers, dropout: network sizes; defaults as scvi-tools (128, 10, 1, 0.1).
        dispersion: ``"gene"`` (default) | ``"gene-category"`` (per gene and category of ``dispersion_key``)
            | ``"gene-cell"`` (a decoder output); scvi-tools' ``"gene-batch"`` is ``"gene-category"`` over
            ``batch_key``, its ``"gene-label"`` the same over ``labels_key`` where that is also a condition. For
            ``"gaussian"`` it is where the log variance varies.
        dispersion_key: condition indexing ``"gene-category"`` dispersion (default: the first condition).
        library: ``"observed"`` (default; log of the cell's total count, or of ``size_factor_key``) or ``"latent"``
            (inferred, with a log-normal prior per category of ``library_key``, as scvi-tools'
            ``use_observed_lib_size=False``).
        library_key: condition whose categories get separate library priors (default: one prior).
        size_factor_key: ``obs`` key of positive size factors used as the library size instead of total counts.
        conditional_prior: learn ``p(z | conditions)`` so ``generate`` samples each condition's own region of the
            latent space (the seed's cVAE); otherwise ``z ~ N(0, I)``.
        encode_covariates: give the conditions to the encoder as well (default ``True``; scvi-tools: ``False``).
        inject_all_layers: add the conditions to every hidden layer (scvi-tools' ``deeply_inject_covariates``).
        norm: ``"layer"`` (default; LayerNorm) or ``"none"``. scvi-tools uses BatchNorm, whose running statistics
            would make the loss impure; see :mod:`genjax.vae`.
        fast_loss: train count likelihoods with the fused loss (non-zero entries for the count-only special
            functions; same value as the public log-pmfs, several times faster). ``False`` uses the public
            ``nb_log_prob_log`` / ``zinb_log_prob_log`` / ``poisson_log_prob_log`` directly.
        compute_dtype: ``None`` (float32) or ``"bfloat16"`` / ``"float16"``: mixed precision, the matrix
            multiplies of the encoder and decoder in that dtype (for GPU / TPU; on CPU it is slower), parameters,
            likelihoods and optimizer state in float32.
        seed: seed of the parameter initialisation.
        batch_key: (scvi-tools' keywords from here on, mapped onto the options above by
            :func:`~genjax.models.resolve_scvi_aliases`) ``obs`` key of the batch: a condition (added to
            ``conditions``) remembered as :attr:`batch_key`, the condition that ``transform_batch``
            (:meth:`get_normalized_expression`) and batch-corrected differential expression decode under.
        labels_key: ``obs`` key of cell labels, remembered as :attr:`labels_key` (not given to the networks, as in
            scvi-tools' SCVI).
        categorical_covariate_keys: more categorical conditions. continuous_covariate_keys: more ``continuous``.
        gene_likelihood: scvi-tools' name of ``likelihood`` (``"normal"`` is ``"gaussian"``). Note that genjax's
            default is ``"nb"`` where scvi-tools' is ``"zinb"``.
        objective: training objective of :meth:`fit`: ``"elbo"`` (default), ``"iwae"`` (the importance-weighted
            bound with ``n_importance`` posterior draws per cell, Burda et al. 2016; a latent library is drawn as
            often) or ``"iwae-dreg"`` (the same bound, doubly reparameterised encoder gradient, Tucker et al.
            2019); see :func:`genjax.vae.make_vae_loss`. Validation then reports the IWAE bound as ``val_loss``.
        n_importance: draws per cell ``K`` of the IWAE objectives (default 5; ``K = 1`` is the ELBO); only with
            ``objective="iwae"`` / ``"iwae-dreg"``.

    Raises:
        ValueError: bad option values (see :class:`~genjax.models.VAEConfig`); non-finite data; negative, non-integer or all-zero cells for count
            likelihoods (naming the first offending cell and gene); duplicate gene names; missing condition values;
            a genjax keyword and its scvi-tools alias with different values (``likelihood`` / ``gene_likelihood``,
            ``dispersion_key`` / ``dispersion="gene-batch"``).
        KeyError: a condition, covariate, size-factor key, ``batch_key``, ``labels_key`` or layer missing from
            ``adata``.

    Attributes:
        config: the :class:`~genjax.models.VAEConfig` (``options`` is it as a dict).
        module: the Flax :class:`~genjax.vae.VAEModule`.
        params: its parameters.
        registry: the :class:`~genjax.data.DataRegistry` (genes, categories, covariate statistics).
        history: the :class:`~genjax.models.TrainingHistory` of the last :meth:`fit`: per-epoch records (``len``,
            ``h[-1]["loss"]``, iteration; ``loss``, ``rec``, ``kl_z``, ``val_loss``, ``val_elbo``, ...) that also
            read as scvi-tools' dict of DataFrames (``h["elbo_train"]``, ``h["elbo_validation"]``, ...).
        batch_key, labels_key: as given.

    scvi-tools vocabulary: :meth:`train` (:meth:`fit`), :meth:`get_latent_representation` (:meth:`latent`),
    :meth:`get_normalized_expression` (:meth:`normalized_expression`), :meth:`get_elbo` (:meth:`elbo`),
    :meth:`get_marginal_ll` (:meth:`marginal_ll`), :meth:`get_reconstruction_error`,
    :meth:`get_likelihood_parameters`, :meth:`get_latent_library_size`, :meth:`differential_expression`,
    :meth:`load_query_data`.
    """

    format_tag = "genjax.VAE/1"

    def __init__(
        self,
        adata,
        likelihood: str | None = None,
        conditions: Sequence[str] | str | None = None,
        layer: str | None = None,
        *,
        continuous: Sequence[str] | str | None = None,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout: float = 0.1,
        dispersion: str = "gene",
        dispersion_key: str | None = None,
        library: str = "observed",
        library_key: str | None = None,
        size_factor_key: str | None = None,
        conditional_prior: bool = False,
        encode_covariates: bool = True,
        inject_all_layers: bool = False,
        norm: str = "layer",
        fast_loss: bool = True,
        compute_dtype: str | None = None,
        seed: int = 0,
        batch_key: str | None = None,
        labels_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | str | None = None,
        continuous_covariate_keys: Sequence[str] | str | None = None,
        gene_likelihood: str | None = None,
        objective: str = "elbo",
        n_importance: int | None = None,
    ):
        options = resolve_scvi_aliases(
            likelihood=likelihood, gene_likelihood=gene_likelihood, conditions=conditions, continuous=continuous,
            batch_key=batch_key, labels_key=labels_key, categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys, dispersion=dispersion, dispersion_key=dispersion_key)
        config = VAEConfig(
            **options, layer=layer, n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers, dropout=dropout,
            library=library, library_key=library_key, size_factor_key=size_factor_key,
            conditional_prior=bool(conditional_prior), encode_covariates=bool(encode_covariates),
            inject_all_layers=bool(inject_all_layers), norm=norm, fast_loss=bool(fast_loss),
            compute_dtype=compute_dtype, seed=seed, objective=objective, n_importance=n_importance)
        if config.labels_key is not None and config.labels_key not in adata.obs:
            raise KeyError(f"labels_key {config.labels_key!r} not found in adata.obs (columns: "
                           f"{list(adata.obs.columns)})")
        registry = DataRegistry.from_anndata(adata, config.conditions, config.continuous, config.layer)
        data = _prepare(adata, registry, config, training=True)
        self._setup(config, registry, _library_prior(config, registry, data), data)
        self.adata = adata
        self.params = vae_init(self.module, config.seed)
        self.history = []
        # what generate() samples conditions, covariates and library sizes from
        self.training_cells = TrainingCells(data.cat, data.cont, data.log_lib)

    def _setup(self, config: VAEConfig, registry: DataRegistry, library_prior, data: CountData | None):
        """Set the configuration, registry, Flax module and default data."""
        self.config = config
        self.registry = registry
        keys = list(registry.conditions)
        disp_key = config.dispersion_key or (keys[0] if keys else None)
        self.module = VAEModule(
            n_genes=registry.n_genes, likelihood=config.likelihood, dispersion=config.dispersion,
            dispersion_index=keys.index(disp_key) if config.dispersion == "gene-category" else 0,
            n_categories=registry.n_categories, n_continuous=len(registry.continuous), n_hidden=config.n_hidden,
            n_latent=config.n_latent, n_layers=config.n_layers, dropout=config.dropout, norm=config.norm,
            encode_covariates=config.encode_covariates, inject_all_layers=config.inject_all_layers,
            library=config.library,
            library_index=keys.index(config.library_key) if config.library_key else None,
            library_prior=library_prior, conditional_prior=config.conditional_prior,
            dtype=None if config.compute_dtype is None else jnp.dtype(config.compute_dtype),
        )
        self._data = data

    def _data_for(self, adata) -> CountData:
        """The encoded data of ``adata`` (validated against the registry), or the default data."""
        if adata is None:
            if self._data is None:
                raise ValueError("this model was loaded without data; pass adata=... (or load(path, adata))")
            return self._data
        if adata is self.adata and self._data is not None:
            return self._data
        return _prepare(adata, self.registry, self.config)

    @property
    def history(self) -> TrainingHistory:
        """The :class:`~genjax.models.TrainingHistory` of the last :meth:`fit`; assigning a list of per-epoch
        dicts wraps it."""
        return self._history

    @history.setter
    def history(self, records) -> None:
        self._history = records if isinstance(records, TrainingHistory) else TrainingHistory(records)

    @property
    def batch_key(self) -> str | None:
        """The ``obs`` key of the batch condition (scvi-tools' ``batch_key``), or ``None``."""
        return self.config.batch_key

    @property
    def labels_key(self) -> str | None:
        """The ``obs`` key of cell labels given as ``labels_key``, or ``None``."""
        return self.config.labels_key

    @property
    def options(self) -> dict:
        """The settings as a dict (a copy of :attr:`config`)."""
        return self.config.to_dict()

    @property
    def var_names(self) -> list[str]:
        """Training gene names, in model order."""
        return list(self.registry.var_names)

    @property
    def conditions(self) -> dict[str, tuple[str, ...]]:
        """``{obs key: categories}`` of the model's categorical conditions."""
        return dict(self.registry.conditions)

    def __repr__(self) -> str:
        c = self.config
        return (f"VAE(likelihood={c.likelihood!r}, genes={self.registry.n_genes}, "
                f"conditions={list(self.registry.conditions)}, continuous={list(self.registry.continuous)}, "
                f"n_latent={c.n_latent}, n_hidden={c.n_hidden}, n_layers={c.n_layers}, "
                f"dispersion={c.dispersion!r}, library={c.library!r}, "
                f"conditional_prior={c.conditional_prior}, trained_epochs={len(self.history)})")

    def fit(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        *,
        lr: float = 1e-3,
        eps: float = 0.01,
        weight_decay: float = 1e-6,
        kl_warmup_epochs: float | None = 400,
        beta: float = 1.0,
        train_size: float = 0.9,
        early_stopping: bool = False,
        patience: int = 45,
        checkpoint_dir=None,
        resume: bool = False,
        restart: bool = False,
        seed: int = 0,
        progress: bool = True,
        devices=None,
        trainable=None,
        **train_config,
    ) -> list[dict]:
        """Train with :func:`genjax.fit` (jitted scanned steps, validation, early stopping, checkpoints, resume).

        Arguments:
            max_epochs: passes over the training cells; default scvi-tools' ``min(round(20000 / n * 400), 400)``.
            batch_size: cells per step (128).
            lr, eps, weight_decay: Adam settings (scvi-tools: 1e-3, 0.01, 1e-6; the weight decay is L2 added to
                the gradient, like ``torch.optim.Adam(weight_decay=...)``).
            kl_warmup_epochs: the KL weight rises linearly from 0 to ``beta`` over this many epochs (scvi-tools:
                400, regardless of ``max_epochs``); ``None`` or 0: no warm-up.
            beta: final KL weight (1: the ELBO).
            train_size: fraction of cells used for training, the rest validates (scvi-tools: 0.9).
            early_stopping, patience: stop when the validation loss has not improved for ``patience`` epochs.
            checkpoint_dir: orbax checkpoints (periodic and best) of the run; ``resume=True`` continues from the
                newest one exactly as the uninterrupted run would have, if it was written by this model on these
                data with these settings (its fingerprint, :meth:`fingerprint` plus the optimiser and schedule
                settings; otherwise :class:`~genjax.training.FingerprintMismatchError` names what differs);
                ``restart=True`` moves the folder's checkpoints aside (kept) and starts afresh.
            seed: seed of the split, the data order and every random draw of the run.
            progress: tqdm progress bar with the running loss.
            devices: data-parallel training over devices (see :func:`genjax.fit`).
            trainable: which parameter entries training may change: a pytree with the structure of ``params``
                whose leaves are booleans or boolean arrays broadcastable to the parameter (``None``: all). Frozen
                entries stay bit-identical (:func:`genjax.training.zero_frozen_updates`); the mask's digest joins
                the run fingerprint.
            train_config: other :class:`genjax.TrainConfig` fields (``steps_per_dispatch``, ``ema_decay``, ...).

        Returns:
            The history as a list: one dict per epoch with ``loss``, ``rec``, ``kl_z``, ``kl_l``, ``kl_weight``,
            ``elbo`` and, with a validation split, ``val_loss``, ``val_elbo``, ...; ``self.history`` holds the
            same records as a :class:`~genjax.models.TrainingHistory` (also scvi-tools' dict of DataFrames).

        Raises:
            ValueError: bad settings (named, before any compute; see also :func:`genjax.fit`), or no training data
                after the split.
            FingerprintMismatchError: ``resume`` with checkpoints of another run.
            TrainingDivergedError: a step's loss or gradient was not finite; the model keeps the parameters of
                the last finite step.
        """
        _check_fit_args(max_epochs=max_epochs, batch_size=batch_size, lr=lr, eps=eps, weight_decay=weight_decay,
                        kl_warmup_epochs=kl_warmup_epochs, beta=beta, train_size=train_size, patience=patience)
        data = self._data_for(None)
        n = data.n
        max_epochs = default_max_epochs(n) if max_epochs is None else int(max_epochs)
        train_idx, val_idx = split_indices(n, train_size, seed)
        steps_per_epoch = max(1, len(train_idx) // min(batch_size, len(train_idx)))
        warmup = int(round(kl_warmup_epochs * steps_per_epoch)) if kl_warmup_epochs else None
        if beta != 1.0 and kl_warmup_epochs and kl_warmup_epochs > max_epochs:
            warnings.warn(f"beta={beta:g} is never reached: the KL weight rises over kl_warmup_epochs="
                          f"{kl_warmup_epochs:g} but training stops after max_epochs={max_epochs}, at KL weight "
                          f"{beta * max_epochs / kl_warmup_epochs:.3g}; pass a shorter kl_warmup_epochs (or None)",
                          UserWarning, stacklevel=2)
        optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr, eps=eps))
        fingerprint = {**self.fingerprint(data), "lr": lr, "eps": eps, "weight_decay": weight_decay,
                       "kl_warmup_steps": warmup, "beta": beta, "train_size": train_size}
        if trainable is not None:
            _check_trainable(trainable, self.params)
            optimizer = optax.chain(optimizer, zero_frozen_updates(trainable))
            fingerprint["trainable"] = tree_digest(jax.tree.map(np.asarray, trainable))
        objective = {"objective": self.config.objective, "n_importance": self.config.n_importance}
        loss_fn = make_vae_loss(self.module, beta=beta, warmup_steps=warmup, **objective)
        try:
            result = _fit(
                loss_fn, self.params, data.source(train_idx), optimizer=optimizer,
                val_data=data.source(val_idx) if len(val_idx) else None, eval_fn=make_vae_eval_loss(self.module, **objective),
                seed=seed, checkpoint_dir=checkpoint_dir, resume=resume, restart=restart, fingerprint=fingerprint,
                devices=devices, description="VAE", max_epochs=max_epochs, batch_size=batch_size,
                early_stopping=early_stopping, patience=patience, progress=progress, **train_config)
        except TrainingDivergedError as err:  # keep the last finite parameters, then report
            self.params = jax.tree.map(jnp.asarray, err.result.state.params)
            self.history = err.result.history
            raise
        self.params = jax.tree.map(jnp.asarray, result.state.params)
        self.history = result.history
        self.train_indices, self.validation_indices = train_idx, val_idx
        return self.history.records

    def fingerprint(self, data: CountData | None = None) -> dict:
        """What identifies this model and its training data in a checkpoint's run fingerprint: every option, the
        genes, the condition categories and covariate statistics, and digests of the cell names and of the
        encoded data (library sizes, codes, covariates) of ``data`` (default: the training data)."""
        data = self._data_for(None) if data is None else data
        adata_names = None if self.adata is None else list(map(str, self.adata.obs_names))
        names = ("batch_key", "labels_key")  # names of roles, not of computations: old checkpoints still match
        if self.config.objective == "elbo":  # the default objective: checkpoints from before the option match
            names = (*names, "objective", "n_importance")
        return {**{f"option.{k}": v for k, v in self.config.to_dict().items() if k not in names},
                "genes": json_digest(list(self.registry.var_names)),
                "conditions": {k: list(v) for k, v in self.registry.conditions.items()},
                "continuous": {k: list(v) for k, v in self.registry.continuous.items()},
                "cells": json_digest(adata_names),
                "data": tree_digest([data.log_lib, data.cat, data.cont])}

    def functions(self, *, beta: float = 1.0, warmup_steps: int | None = None) -> VAEFunctions:
        """Pure, jittable functions of ``(params, arrays)`` for this model (see :class:`VAEFunctions`)."""
        m = self.module
        return VAEFunctions(
            encode=lambda params, x, cond=None: vae_encode(m, params, x, cond),
            decode=lambda params, z, log_lib, cond=None: vae_decode(m, params, z, log_lib, cond),
            prior=lambda params, cond=None, n=None: vae_prior(m, params, cond, n),
            sample=lambda key, out: vae_sample_counts(key, m, out),
            loss=make_vae_loss(m, beta=beta, warmup_steps=warmup_steps, objective=self.config.objective,
                               n_importance=self.config.n_importance),
        )

    def batch(self, adata=None, rows=None) -> CountBatch:
        """The :class:`~genjax.data.CountBatch` (numpy arrays) of ``adata`` (validated; default the training data)
        or of its ``rows``."""
        data = self._data_for(adata)
        return data.batch(np.arange(data.n) if rows is None else rows)

    def encode_conditions(self, n: int, **values) -> np.ndarray:
        """int32 codes (n, n_conditions) of the given condition values (-1 for conditions not given)."""
        return self.registry.encode_values(n, **values)

    def condition(self, codes: np.ndarray, cont: np.ndarray | None = None) -> Condition | None:
        """The :class:`~genjax.data.Condition` of category ``codes`` (n, n_conditions) and standardised covariates
        ``cont`` (n, n_continuous; default zeros), as the model's functions take it (``None`` without either)."""
        n = codes.shape[0]
        labels = np.asarray(codes, np.int32) if codes.shape[1] else None
        n_cont = len(self.registry.continuous)
        covariates = (np.zeros((n, n_cont), np.float32) if cont is None else np.asarray(cont, np.float32)) \
            if n_cont else None
        return None if labels is None and covariates is None else Condition(labels, covariates)

    def _jit(self, name: str, fn: Callable) -> Callable:
        """``jax.jit(fn)`` shared by models with the same module (``fn`` depends only on it and ``name``)."""
        return cached_jit(self.module, name, fn)

    def _imap(self, fn, data: CountData, batch_size: int, key=None, extra=None, rows=None):
        """Apply jitted ``fn(params, batch, extras, key)`` over the cells ``rows`` (default all) in batches of one
        fixed size (the last one padded, so each function compiles once); ``extra(rows)`` gives per-cell arrays
        for ``extras``. ``fn``'s outputs have the cells axis first; yields ``(rows, output as numpy)`` per batch
        (the key of batch ``i`` is ``fold_in(key, i)``)."""
        for i, (r, b) in enumerate(data.iter_batches(batch_size, rows)):
            extras = {} if extra is None else extra(r)
            k = jax.random.fold_in(key, i) if key is not None else jax.random.key(0)
            out = fn(self.params, _pad_rows(b, batch_size), _pad_rows(extras, batch_size), k)
            m = len(r)
            yield r, jax.tree.map(lambda a, m=m: np.asarray(a)[:m], out)

    def _map(self, fn, data: CountData, batch_size: int, key=None, extra=None, rows=None) -> list:
        """The per-batch outputs of :meth:`_imap`, as a list."""
        return [out for _, out in self._imap(fn, data, batch_size, key, extra, rows)]

    def _encode(self, data: CountData, batch_size: int, rows=None) -> dict[str, np.ndarray]:
        """The encoder's outputs for the cells ``rows`` (default all): ``z_mean``, ``z_var`` (cells, n_latent)
        and, for a latent library, ``l_mean``, ``l_var`` (cells,); float32, deterministic (no dropout)."""
        m = self.module
        fn = self._jit("encode", lambda p, b, e, k: vae_encode(m, p, b.x, b.cond))
        outs = self._map(fn, data, batch_size, rows=rows)
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def latent(self, adata=None, *, give_var: bool = False, batch_size: int = 1024):
        """Posterior means of ``z``, float32 (cells, n_latent); with ``give_var`` also the variances.

        Raises:
            ValueError / KeyError: the data do not match the model (genes, categories, obs keys, counts).
        """
        enc = self._encode(self._data_for(adata), batch_size)
        return (enc["z_mean"], enc["z_var"]) if give_var else enc["z_mean"]

    def _posterior_batches(self, data: CountData, batch_size: int, n_draws: int, sample_z: bool, seed: int,
                           new_codes, emit: Callable, name: str, *, rows=None, genes=None):
        """Decode each cell's posterior ``n_draws`` times, at the posterior mean of ``z`` or, with ``sample_z``,
        at draws from it, under its own conditions or ``new_codes`` ((cells, n_conditions), -1: keep), with its
        own library size (a latent library at its posterior mean). ``emit(out, key) -> (cells, ...)`` makes the
        result of one draw from the decoder outputs. Yields ``(rows, (draws, rows, ...))`` per batch of the cells
        ``rows`` (default all), the last axis restricted to ``genes`` where given. One compilation per
        ``(name, n_draws)`` serves every other setting."""
        m = self.module
        lib_latent = self.config.library == "latent"

        def fn(params, b, e, key):
            enc = vae_encode(m, params, b.x, b.cond)
            cond = b.cond
            if cond is not None and cond.labels is not None:
                cond = cond._replace(labels=jnp.where(e["new_cat"] >= 0, e["new_cat"], cond.labels))
            log_lib = enc["l_mean"] if lib_latent else b.log_lib

            def one(k):
                key_z, key_x = jax.random.split(k)
                eps = draw_noise(key_z, enc["z_mean"].shape[0], m.n_latent, 0)[0]
                z = enc["z_mean"] + e["z_noise"][:, None] * jnp.sqrt(enc["z_var"]) * eps
                return emit(vae_decode(m, params, z, log_lib, cond), key_x)

            return jnp.swapaxes(jax.lax.map(one, jax.random.split(key, n_draws)), 0, 1)  # cells first

        codes = np.full((data.n, len(self.registry.conditions)), -1, np.int32) if new_codes is None else new_codes
        noise = np.full(data.n, 1.0 if sample_z else 0.0, np.float32)
        for r, out in self._imap(self._jit(f"decode-{name}-{n_draws}", fn), data, batch_size,
                                 jax.random.key(seed), lambda r: {"new_cat": codes[r], "z_noise": noise[r]}, rows):
            out = np.swapaxes(out, 0, 1)  # draws first
            yield r, (out if genes is None else out[..., genes])

    def _decode_posterior(self, data: CountData, batch_size: int, n_draws: int, sample_z: bool, seed: int,
                          new_codes, emit: Callable, name: str, *, rows=None, genes=None, reduce=None):
        """:meth:`_posterior_batches` assembled: ``(draws, cells, ...)``, or with ``reduce`` (a function of one
        batch's ``(draws, rows, ...)`` to ``(rows, ...)``, e.g. the mean over draws) ``(cells, ...)``."""
        parts = [out if reduce is None else reduce(out) for _, out in self._posterior_batches(
            data, batch_size, n_draws, sample_z, seed, new_codes, emit, name, rows=rows, genes=genes)]
        return np.concatenate(parts, axis=0 if reduce is not None else 1)

    def _expression(self, data: CountData, *, library_size, n_draws: int, sample_z: bool, seed: int,
                    batch_size: int, codes=(None,), rows=None, genes=None, mean: bool = True) -> np.ndarray:
        """Decoded normalised expression of the cells ``rows``: ``library_size * rho`` (``"latent"``: the expected
        counts ``mu`` at the cell's own library), averaged over decoding under each of ``codes`` (new condition
        codes, ``None``: the cell's own) with the same draws of ``z``. Returns float32 ``(draws, cells, genes)``,
        or with ``mean`` the mean over draws ``(cells, genes)``."""
        obs = observation_model(self.config.likelihood)
        latent_lib = isinstance(library_size, str)
        emit = functools.partial(_emit_rate if latent_lib else _emit_scale, obs)
        reduce = (lambda a: a.mean(axis=0)) if mean else None
        total = None
        for c in codes:
            out = self._decode_posterior(data, batch_size, n_draws, sample_z, seed, c, emit,
                                         "rate" if latent_lib else "scale", rows=rows, genes=genes, reduce=reduce)
            total = out if total is None else total + out
        if len(codes) > 1:
            total = total / np.float32(len(codes))
        return total * library_size if self.config.counts and not latent_lib else total

    def normalized_expression(self, adata=None, *, library_size: float = 1.0, n_samples: int = 0,
                              seed: int = 0, batch_size: int = 256, **conditions) -> np.ndarray:
        """Decoded normalised expression ``library_size * rho`` (cells, genes), as scvi-tools.

        Arguments:
            adata: cells to encode (default: the training data).
            library_size: scale of the proportions (1: they sum to 1 per cell; 1e4: counts per 10k).
            n_samples: 0 decodes the posterior mean of ``z``; ``k > 0`` averages over ``k`` posterior draws.
            seed: seed of the draws.
            conditions: decode under these condition values instead of each cell's own (counterfactual).

        Returns:
            float32 (cells, genes); for a Gaussian model the decoded mean (not scaled).

        See also:
            :meth:`get_normalized_expression` (scvi-tools' form: a DataFrame, gene and cell subsets, averages over
            batches, per-draw arrays).
        """
        data = self._data_for(adata)
        return self._expression(data, library_size=library_size, n_draws=max(n_samples, 1),
                                sample_z=n_samples > 0, seed=seed, batch_size=batch_size,
                                codes=(self._new_codes(data.n, conditions),))

    def posterior_predictive(self, adata=None, *, n_samples: int = 1, seed: int = 0, batch_size: int = 256,
                             indices=None, gene_list=None, layout: str = "samples-first", sparse: bool = False):
        """Counts drawn from ``p(x | z)`` with ``z ~ q(z | x)`` (library: observed, or the posterior mean).

        The draws are made one batch of ``batch_size`` cells at a time and written straight into the result, so
        the peak memory is the result plus one batch: ``sparse=True`` keeps it to the non-zero counts (a 50k x 2k
        x 10 dense float32 result is 4 GB; CSR stores 8 bytes per non-zero, a float32 count and an int32 column,
        so at a typical 5-10% non-zero it is 5-10 times smaller).

        Arguments:
            adata: cells to encode (default: the training data).
            n_samples: draws per cell.
            seed: seed of the draws (the same seed gives the same counts in every layout).
            batch_size: cells per device call.
            indices: positions (or a boolean mask) of the cells of ``adata`` to draw for (default all).
            gene_list: names of the genes to return (default all, in model order).
            layout: ``"samples-first"`` (default) ``(n_samples, cells, genes)`` or ``"samples-last"``
                ``(cells, genes, n_samples)``, the layout of scvi-tools' ``posterior_predictive_sample`` (which
                also drops the last axis when ``n_samples == 1``; genjax keeps it).
            sparse: return a list of ``n_samples`` ``scipy.sparse.csr_matrix`` (cells, genes), one per draw
                (``scipy.sparse.vstack`` stacks them along cells), instead of a dense array.

        Returns:
            float32 counts: a dense array in ``layout``, or with ``sparse`` a list of CSR matrices.

        Raises:
            ValueError: ``n_samples`` below 1, an unknown ``layout``, ``sparse`` with ``layout="samples-last"``,
                bad ``indices``. KeyError: a gene of ``gene_list`` that the model does not have.
        """
        import scipy.sparse as sp

        n_samples = check_int("n_samples", n_samples)
        check_choice("layout", layout, ("samples-first", "samples-last"))
        if sparse and layout != "samples-first":
            raise ValueError("sparse=True returns one CSR matrix (cells, genes) per sample; layout='samples-last' "
                             "is for the dense array")
        data, rows, _ = self._cells(adata, indices)
        genes = self._gene_columns(gene_list)
        n_cells = data.n if rows is None else len(rows)
        n_genes = self.registry.n_genes if genes is None else len(genes)
        emit = functools.partial(_emit_draw, observation_model(self.config.likelihood))
        if sparse:
            blocks: list[list] = [[] for _ in range(n_samples)]
        else:
            shape = (n_samples, n_cells, n_genes) if layout == "samples-first" else (n_cells, n_genes, n_samples)
            result = np.empty(shape, np.float32)
        start = 0
        for r, draws in self._posterior_batches(data, batch_size, n_samples, True, seed, None, emit, "draw",
                                                rows=rows, genes=genes):
            stop = start + len(r)
            if sparse:
                for k in range(n_samples):
                    blocks[k].append(sp.csr_matrix(draws[k]))
            elif layout == "samples-first":
                result[:, start:stop] = draws
            else:
                result[start:stop] = np.moveaxis(draws, 0, -1)
            start = stop
        if sparse:
            return [sp.vstack(b, format="csr", dtype=np.float32) for b in blocks]
        return result

    def _cells(self, adata, indices) -> tuple[CountData, np.ndarray | None, Any]:
        """The encoded data of ``adata`` (default the training data), the rows that ``indices`` select (``None``:
        all) and the ``obs_names`` of the selected cells.

        Raises:
            ValueError: no data; ``indices`` that are not integers in range or a boolean mask of the cells' length,
                or that select no cell.
        """
        data = self._data_for(adata)
        names = (self.adata if adata is None else adata).obs_names
        rows = _check_indices(indices, data.n)
        return data, rows, (names if rows is None else names[rows])

    def _gene_columns(self, gene_list) -> np.ndarray | None:
        """Model columns of the genes named in ``gene_list`` (a name or a sequence), ``None`` for all.

        Raises:
            KeyError: a name that is not one of the model's genes (naming it).
        """
        if gene_list is None:
            return None
        names = [gene_list] if isinstance(gene_list, str) else list(gene_list)
        where = {g: j for j, g in enumerate(self.registry.var_names)}
        missing = [g for g in names if str(g) not in where]
        if missing:
            raise KeyError(f"gene {missing[0]!r} of gene_list is not a gene of the model "
                           f"({len(missing)} of {len(names)} unknown; the model has {self.registry.n_genes} genes, "
                           f"e.g. {list(self.registry.var_names[:3])})")
        return np.array([where[str(g)] for g in names], np.int64)

    def _new_codes(self, n: int, conditions: dict):
        return self.registry.encode_values(n, **conditions) if conditions else None

    def counterfactual(self, adata=None, *, seed: int = 0, batch_size: int = 256, **new_conditions):
        """Encode cells, swap conditions, decode: "what would these cells look like under ``new_conditions``".

        ``z`` is the posterior mean of each cell under its own conditions; the decoder receives the new values
        (others unchanged) and the cell's own library size.

        Returns:
            AnnData: ``X`` counts drawn from the counterfactual observation model, ``layers["mean"]`` its
            expected counts, ``obs`` a copy of the input's with the swapped conditions.

        Raises:
            KeyError: a key that is not a condition of the model. ValueError: an unknown category.
        """
        import anndata as ad
        import pandas as pd

        if not new_conditions:
            raise ValueError("counterfactual needs at least one condition to change, e.g. cell_type='B cells'")
        adata = self.adata if adata is None else adata
        data = self._data_for(adata)
        new = self._new_codes(data.n, new_conditions)
        emit = functools.partial(_emit_mean_and_draw, observation_model(self.config.likelihood))
        both = self._decode_posterior(data, batch_size, 1, False, seed, new, emit, "predict")[0]  # (cells, 2, genes)
        obs = adata.obs.copy()
        for key, value in new_conditions.items():
            obs[key] = pd.Categorical(np.full(data.n, str(value), dtype=object),
                                      categories=list(self.registry.conditions[key]))
        out = ad.AnnData(X=both[:, 1].astype(np.float32), obs=obs, var=pd.DataFrame(index=self.var_names))
        out.layers["mean"] = both[:, 0].astype(np.float32)
        return out

    def generate(self, n: int, *, seed: int = 0, library_size=None, batch_size: int = 1024, **conditions):
        """Sample ``n`` new cells: ``z`` from the prior (``p(z | c)`` if conditional, else ``N(0, I)``), decoded
        and drawn from the observation model.

        Arguments:
            n: number of cells.
            seed: seed of every draw.
            library_size: total counts per generated cell (a number or an (n,) array); default: drawn from the
                training cells with the requested conditions (the latent library's prior for
                ``library="latent"``).
            conditions: condition values, e.g. ``cell_type="B cells"``, or a sequence of ``n`` values (one per
                cell). Conditions not given are drawn together with continuous covariates from training cells
                matching the given ones (training proportions).

        Returns:
            AnnData (n x genes): ``X`` sampled counts (float32), ``obs`` (cells ``gen-0``, ...) the conditions
            (categoricals with the training categories), continuous covariates and ``library_size`` (int64: the
            rounded library size the cell was drawn with); ``var_names`` the training genes.

        Raises:
            KeyError: a key that is not a condition. ValueError: an unknown category, ``n`` not a positive
                integer, a non-positive library size; :class:`~genjax.models.NoMatchingCellsError` when no
                training cell has the requested conditions.
        """
        import anndata as ad
        import pandas as pd

        n = check_int("n", n)
        rng = np.random.default_rng(seed)
        codes = self.registry.encode_values(n, **conditions)
        rows = self.training_cells.draw(codes, rng, self.registry)
        cat = np.where(codes >= 0, codes, self.training_cells.cat[rows]).astype(np.int32)
        cont = self.training_cells.cont[rows]
        if library_size is not None:
            lib = np.broadcast_to(np.asarray(library_size, np.float64), (n,))
            if not np.all(np.isfinite(lib) & (lib > 0)):
                raise ValueError("library_size must be finite and > 0")
            log_lib = np.log(lib).astype(np.float32)
        else:
            log_lib = self.training_cells.log_lib[rows]
        f = self._jit(f"generate-{self.config.library == 'latent' and library_size is None}",
                      functools.partial(_generate_fn, self.module, self.config.library == "latent"
                                        and library_size is None))
        xs, libs = [], []
        key = jax.random.key(seed)
        size = min(batch_size, n)
        for i, start in enumerate(range(0, n, size)):
            sl = slice(start, min(n, start + size))
            b = _pad_rows({"cond": self.condition(cat[sl], cont[sl]), "log_lib": log_lib[sl]}, size)
            x, ll = f(self.params, b["cond"], b["log_lib"], jax.random.fold_in(key, i))
            xs.append(np.asarray(x)[: sl.stop - start])
            libs.append(np.asarray(ll)[: sl.stop - start])
        obs = generated_obs(self.registry, cat, cont, np.concatenate(libs))
        obs["library_size"] = obs["library_size"].to_numpy().astype(np.int64)  # whole totals, stored as integers
        return ad.AnnData(X=np.concatenate(xs).astype(np.float32), obs=obs, var=pd.DataFrame(index=self.var_names))

    def _elbo_terms(self, data: CountData, seed: int, batch_size: int, rows=None) -> dict[str, np.ndarray]:
        """Per-cell ``elbo``, ``rec`` (``log p(x | z, l)``) and ``kl`` (``KL_z + KL_l``), float32 (cells,): one
        posterior draw per cell, no dropout, KL weight 1."""
        m = self.module

        def fn(params, b, e, key):
            t = vae_elbo_terms(m, params, b, key, deterministic=True)
            return {"elbo": t["rec"] - t["kl_z"] - t["kl_l"], "rec": t["rec"], "kl": t["kl_z"] + t["kl_l"]}

        outs = self._map(self._jit("elbo-terms", fn), data, batch_size, jax.random.key(seed), rows=rows)
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def elbo(self, adata=None, *, seed: int = 0, batch_size: int = 256) -> float:
        """Mean per-cell evidence lower bound (nats; one posterior draw per cell, no dropout, KL weight 1)."""
        return float(np.mean(self._elbo_terms(self._data_for(adata), seed, batch_size)["elbo"]))

    def _iwae(self, data: CountData, n_samples: int, seed: int, batch_size: int, rows=None) -> np.ndarray:
        """Per-cell importance-weighted bound of ``log p(x | c)`` with ``n_samples`` draws, float32 (cells,)."""
        fn = functools.partial(_iwae_fn, self.module, n_samples)
        return np.concatenate(self._map(self._jit(f"iwae-{n_samples}", fn), data, batch_size,
                                        jax.random.key(seed), rows=rows))

    def marginal_ll(self, adata=None, *, n_samples: int = 100, seed: int = 0, batch_size: int = 256) -> float:
        """Mean per-cell importance-weighted estimate of ``log p(x | c)`` with ``n_samples`` draws (IWAE bound;
        scvi-tools' ``get_marginal_ll``).

        Raises:
            ValueError: ``n_samples`` below 1.
        """
        n_samples = check_int("n_samples", n_samples)
        return float(np.mean(self._iwae(self._data_for(adata), n_samples, seed, batch_size)))

    # -- scvi-tools' vocabulary: thin wrappers of the methods above ---------------------------------------------------

    def train(self, max_epochs: int | None = None, accelerator: str | None = "auto", devices="auto",
              train_size: float | None = None, validation_size: float | None = None, batch_size: int = 128,
              early_stopping: bool = False, plan_kwargs: dict | None = None, **kwargs) -> list[dict]:
        """scvi-tools' name of :meth:`fit`, with its keywords translated.

        Arguments:
            max_epochs, batch_size, early_stopping: as :meth:`fit`.
            accelerator: ``"auto"`` / ``None`` (JAX's default backend), or a backend name that must be JAX's
                (``"cpu"``, ``"gpu"``, ``"tpu"``; ``"cuda"`` is ``"gpu"``).
            devices: ``"auto"`` / ``None`` / 1 (one device) or :meth:`fit`'s ``devices`` (data parallel).
            train_size: fraction of training cells (default 0.9); validation_size: the rest, ``1 - train_size``
                (genjax has no test split, so the two must add up to 1).
            plan_kwargs: scvi-tools' training-plan settings: ``lr``, ``weight_decay``, ``eps``,
                ``n_epochs_kl_warmup`` (:meth:`fit`'s ``kl_warmup_epochs``), ``max_kl_weight`` (``beta``).
            kwargs: scvi-tools' trainer settings ``early_stopping_patience`` (``patience``),
                ``check_val_every_n_epoch`` (``eval_every``), ``enable_progress_bar`` (``progress``), or any
                keyword of :meth:`fit` (``seed``, ``checkpoint_dir``, ...).

        Returns:
            What :meth:`fit` returns (the per-epoch records); ``self.history`` reads as scvi-tools' dict of
            DataFrames.

        Raises:
            ValueError: an unknown ``plan_kwargs`` key, an accelerator JAX does not run on, ``train_size`` and
                ``validation_size`` that do not add up to 1, a scvi-tools keyword given twice (also under its genjax
                name); and whatever :meth:`fit` raises.
        """
        fit_kwargs = dict(kwargs)

        def put(genjax_name, value, given_as):
            if genjax_name in fit_kwargs and fit_kwargs[genjax_name] != value:
                raise ValueError(f"{given_as} and {genjax_name}={fit_kwargs[genjax_name]!r} disagree; pass one")
            fit_kwargs[genjax_name] = value

        for scvi_name, genjax_name in _SCVI_TRAINER_KWARGS.items():
            if scvi_name in fit_kwargs:
                value = fit_kwargs.pop(scvi_name)
                put(genjax_name, value, f"{scvi_name}={value!r}")
        unknown = sorted(set(plan_kwargs or {}) - set(_SCVI_PLAN_KWARGS))
        if unknown:
            raise ValueError(f"plan_kwargs {unknown} are not supported; genjax knows {sorted(_SCVI_PLAN_KWARGS)}")
        for scvi_name, value in (plan_kwargs or {}).items():
            put(_SCVI_PLAN_KWARGS[scvi_name], value, f"plan_kwargs[{scvi_name!r}]={value!r}")
        if accelerator not in (None, "auto"):
            wanted = {"cuda": "gpu"}.get(str(accelerator), str(accelerator))
            if wanted != jax.default_backend():
                raise ValueError(f"accelerator={accelerator!r}, but JAX runs on {jax.default_backend()!r} (JAX picks "
                                 "its backend from the jax installed, e.g. jax[cuda12]); pass accelerator='auto'")
        if not (devices is None or (isinstance(devices, str) and devices == "auto") or devices == 1):
            put("devices", devices, f"devices={devices!r}")
        if validation_size is not None:
            validation_size = check_range("validation_size", validation_size, low=0.0, high=1.0, high_open=True)
            if train_size is None:
                train_size = 1.0 - validation_size
            elif abs(train_size + validation_size - 1.0) > 1e-9:
                raise ValueError(f"train_size={train_size} and validation_size={validation_size} must add up to 1 "
                                 "(genjax splits cells into training and validation only)")
        return self.fit(max_epochs, batch_size, early_stopping=early_stopping,
                        train_size=0.9 if train_size is None else train_size, **fit_kwargs)

    def get_latent_representation(self, adata=None, indices=None, give_mean: bool = True, mc_samples: int = 5000,
                                  batch_size: int | None = None, return_dist: bool = False, *, seed: int = 0):
        """scvi-tools' name of :meth:`latent`: the latent representation of cells.

        Arguments:
            adata: cells (default: the training data). indices: positions or a boolean mask of cells of ``adata``.
            give_mean: the posterior mean of ``z``; ``False``: one draw ``z ~ q(z | x)`` per cell (``seed``).
            mc_samples: unused (scvi-tools uses it for its log-normal latent, which genjax does not have).
            batch_size: cells per device call (default 1024).
            return_dist: return ``(mean, variance)`` of ``q(z | x)`` instead.

        Returns:
            float32 (cells, n_latent), or the pair of them with ``return_dist``.

        Raises:
            ValueError / KeyError: bad ``indices``; data that do not match the model.
        """
        data, rows, _ = self._cells(adata, indices)
        enc = self._encode(data, batch_size or 1024, rows)
        if return_dist:
            return enc["z_mean"], enc["z_var"]
        if give_mean:
            return enc["z_mean"]
        eps = np.random.default_rng(seed).standard_normal(enc["z_mean"].shape).astype(np.float32)
        return enc["z_mean"] + np.sqrt(enc["z_var"]) * eps

    def get_normalized_expression(self, adata=None, indices=None, transform_batch=None, gene_list=None,
                                  library_size: float | str = 1.0, n_samples: int = 1, weights: str | None = None,
                                  batch_size: int | None = None, return_mean: bool = True,
                                  return_numpy: bool | None = None, silent: bool = True, *, seed: int = 0):
        """scvi-tools' form of :meth:`normalized_expression`: decoded normalised expression ``library_size * rho``
        (rho: the decoder's proportions, rows summing to 1), averaged over ``n_samples`` draws ``z ~ q(z | x)``.

        As in scvi-tools, ``n_samples=1`` is one posterior draw (:meth:`normalized_expression` with
        ``n_samples=0`` decodes the posterior mean instead); with ``transform_batch`` every cell is decoded under
        each listed batch with the same draws of ``z`` and the results are averaged.

        Arguments:
            adata: cells (default: the training data).
            indices: positions (or a boolean mask) of the cells of ``adata`` (default all).
            transform_batch: ``None`` (each cell's own batch), a category of the model's :attr:`batch_key`, or a
                list of them to average over (an integer that is not a category is a category's position).
            gene_list: names of the genes to return (default all, in model order).
            library_size: scale of the proportions (1: each cell's row sums to 1; 1e4: counts per 10k), or
                ``"latent"``: the NB mean ``mu`` at the cell's own library size (observed, or the latent
                library's posterior mean).
            n_samples: posterior draws.
            weights: ``None`` / ``"uniform"`` (scvi-tools' importance weights are not supported).
            batch_size: cells per device call (default 256).
            return_mean: average the draws; ``False`` with ``n_samples > 1`` gives every draw.
            return_numpy: an array instead of a ``pandas.DataFrame``; default: a DataFrame unless every draw is
                returned.
            silent: unused (no progress bar).
            seed: seed of the draws (the same seed gives the same ``z`` draws for every batch of the list).

        Returns:
            ``pandas.DataFrame`` (cells x genes, float32; index the cells' ``obs_names``, columns the genes), or a
            float32 array (cells, genes), or with ``return_mean=False`` and ``n_samples > 1`` an array
            (n_samples, cells, genes). For a Gaussian model the decoded mean (not scaled).

        Raises:
            ValueError: ``transform_batch`` on a model without a batch key or naming an unknown category;
                ``weights="importance"``; a non-positive ``library_size``; ``return_numpy=False`` with every draw
                (a DataFrame is 2-D); bad ``indices``. KeyError: an unknown gene of ``gene_list``.
        """
        import pandas as pd

        n_samples = check_int("n_samples", n_samples)
        if weights not in (None, "uniform"):
            raise ValueError(f"weights must be None or 'uniform' (importance weights are not supported); "
                             f"got {weights!r}")
        if not (isinstance(library_size, str) and library_size == "latent"):
            library_size = check_range("library_size", library_size, low=0.0, low_open=True)
        every_draw = not return_mean and n_samples > 1
        return_numpy = every_draw if return_numpy is None else bool(return_numpy)
        if every_draw and not return_numpy:
            raise ValueError("return_mean=False with n_samples > 1 gives (n_samples, cells, genes), which a "
                             "DataFrame cannot hold; pass return_numpy=True (or return_mean=True)")
        data, rows, names = self._cells(adata, indices)
        genes = self._gene_columns(gene_list)
        codes = [None if b is None else self._new_codes(data.n, {self.batch_key: b})
                 for b in self._transform_batches(transform_batch)]
        out = self._expression(data, library_size=library_size, n_draws=n_samples, sample_z=True, seed=seed,
                               batch_size=batch_size or 256, codes=codes, rows=rows, genes=genes, mean=not every_draw)
        if return_numpy:
            return out
        columns = self.var_names if genes is None else [self.var_names[j] for j in genes]
        return pd.DataFrame(out, index=pd.Index(names), columns=pd.Index(columns))

    def _transform_batches(self, transform_batch) -> list:
        """The batch categories of ``transform_batch`` (``[None]``: each cell's own).

        Raises:
            ValueError: no batch key, an unknown category, an empty list.
        """
        if transform_batch is None:
            return [None]
        if self.batch_key is None:
            raise ValueError(f"transform_batch needs a model with a batch_key; this model has none (conditions "
                             f"{list(self.registry.conditions)}): decode under a condition with "
                             "normalized_expression(**{key: value})")
        cats = list(self.registry.conditions[self.batch_key])
        values = [transform_batch] if isinstance(transform_batch, (str, int, np.integer)) else list(transform_batch)
        if not values:
            raise ValueError("transform_batch is an empty list; pass None for each cell's own batch")
        out = []
        for v in values:
            if str(v) in cats:
                out.append(str(v))
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < len(cats):
                out.append(cats[int(v)])
            else:
                raise ValueError(f"transform_batch {v!r} is not a category of batch_key {self.batch_key!r} "
                                 f"({cats})")
        return out

    def get_elbo(self, adata=None, indices=None, batch_size: int | None = None, return_mean: bool = True, *,
                 seed: int = 0):
        """scvi-tools' name of :meth:`elbo`: the evidence lower bound ``E_q[log p(x | z, l)] - KL``, nats per cell
        (higher is better; one posterior draw per cell, no dropout, KL weight 1).

        Returns:
            The mean over cells (float), or with ``return_mean=False`` float32 (cells,).
        """
        data, rows, _ = self._cells(adata, indices)
        elbo = self._elbo_terms(data, seed, batch_size or 256, rows)["elbo"]
        return float(np.mean(elbo)) if return_mean else elbo

    def get_reconstruction_error(self, adata=None, indices=None, batch_size: int | None = None,
                                 return_mean: bool = True, *, seed: int = 0) -> dict:
        """scvi-tools' reconstruction error: ``-log p(x | z, l)`` with one posterior draw per cell (the ELBO's
        first term, negated: lower is better; scvi-tools returns it with the same sign).

        Returns:
            ``{"reconstruction_loss": mean over cells (float)}``, or float32 (cells,) with ``return_mean=False``.
        """
        data, rows, _ = self._cells(adata, indices)
        loss = -self._elbo_terms(data, seed, batch_size or 256, rows)["rec"]
        return {"reconstruction_loss": float(np.mean(loss)) if return_mean else loss}

    def get_marginal_ll(self, adata=None, indices=None, n_mc_samples: int = 1000, batch_size: int | None = None,
                        return_mean: bool = True, *, seed: int = 0):
        """scvi-tools' name of :meth:`marginal_ll`: the importance-weighted estimate of ``log p(x | c)`` with
        ``n_mc_samples`` draws per cell (a lower bound that tightens as it grows; higher is better).

        Returns:
            The mean over cells (float), or with ``return_mean=False`` float32 (cells,).

        Raises:
            ValueError: ``n_mc_samples`` below 1.
        """
        n_mc_samples = check_int("n_mc_samples", n_mc_samples)
        data, rows, _ = self._cells(adata, indices)
        ll = self._iwae(data, n_mc_samples, seed, batch_size or 256, rows)
        return float(np.mean(ll)) if return_mean else ll

    def get_likelihood_parameters(self, adata=None, indices=None, n_samples: int = 1, give_mean: bool = False,
                                  batch_size: int | None = None, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Parameters of ``p(x | z, l)`` per cell at draws ``z ~ q(z | x)``, keyed as scvi-tools.

        Keys: ``"mean"`` (NB / ZINB / Poisson mean ``mu = l * rho``, before zero inflation; Gaussian: the mean),
        ``"dispersions"`` (inverse dispersion ``theta``; NB and ZINB), ``"dropout"`` (zero-inflation probability
        ``sigmoid(zi_logits)``; ZINB), ``"variance"`` (Gaussian). The library is the observed one, or the latent
        library's posterior mean.

        Arguments:
            adata, indices: the cells (default: all training cells). n_samples: posterior draws (``seed``).
            give_mean: with ``n_samples > 1``, average the draws.

        Returns:
            ``{name: float32 (cells, genes)}``; with ``n_samples > 1`` and not ``give_mean``,
            ``(n_samples, cells, genes)``.
        """
        n_samples = check_int("n_samples", n_samples)
        obs = observation_model(self.config.likelihood)
        data, rows, _ = self._cells(adata, indices)
        emit = functools.partial(_emit_parameters, obs)
        draws = self._decode_posterior(data, batch_size or 256, n_samples, True, seed, None, emit, "parameters",
                                       rows=rows)  # (draws, cells, parameters, genes)
        if n_samples == 1:
            draws = draws[0]
        elif give_mean:
            draws = draws.mean(axis=0)
        return {name: draws[..., j, :] for j, name in enumerate(_parameter_names(obs))}

    def get_latent_library_size(self, adata=None, indices=None, give_mean: bool = True,
                                batch_size: int | None = None, *, seed: int = 0) -> np.ndarray:
        """Library size ``l`` of each cell (scvi-tools' ``get_latent_library_size``), float32 (cells, 1).

        Observed library (``library="observed"``): the cell's total count (or its ``size_factor_key`` value),
        whatever ``give_mean``. Latent library: the mean of the log-normal posterior, ``exp(m + v / 2)``, or with
        ``give_mean=False`` one draw ``exp(m + sqrt(v) eps)`` (``seed``).

        Raises:
            ValueError: a Gaussian model (no library size); bad ``indices``.
        """
        if not self.config.counts:
            raise ValueError("a Gaussian model has no library size (it models log-normalised values)")
        data, rows, _ = self._cells(adata, indices)
        if self.config.library != "latent":
            lib = np.exp((data.log_lib if rows is None else data.log_lib[rows]).astype(np.float64))
            if self.config.size_factor_key is None:  # totals of integer counts: whole numbers
                lib = np.rint(lib)
            return lib.astype(np.float32)[:, None]
        enc = self._encode(data, batch_size or 1024, rows)
        m, v = enc["l_mean"].astype(np.float64), enc["l_var"].astype(np.float64)
        log_lib = m + v / 2 if give_mean else m + np.sqrt(v) * np.random.default_rng(seed).standard_normal(m.shape)
        return np.exp(log_lib).astype(np.float32)[:, None]

    def differential_expression(self, adata=None, **kwargs):
        """Differential expression between groups of cells from the model's posterior (scvi-tools' API):
        :func:`genjax.models.differential_expression` ``(self, adata, **kwargs)`` (see it for the keywords,
        ``groupby``, ``group1``, ``group2``, ``mode``, ``delta``, ``batch_correction``, ``fdr_target``, ...).

        Returns:
            ``pandas.DataFrame`` indexed by gene.
        """
        from ._differential import differential_expression

        return differential_expression(self, adata, **kwargs)

    @classmethod
    def load_query_data(cls, adata, reference, *, freeze: bool = True, **kwargs) -> VAE:
        """A model for the query cells ``adata`` from a reference model (a :class:`VAE` or its folder), with new
        batch categories added, scArches-style: :func:`genjax.models.load_query_data` (see it for the keywords).
        Train the returned model with :meth:`train` / :meth:`fit`.
        """
        from ._query import load_query_data

        return load_query_data(adata, reference, freeze=freeze, **kwargs)

    def _saved_state(self):
        meta = {"options": self.config.to_dict(), "registry": self.registry.to_dict(),
                "library_prior": [list(v) for v in self.module.library_prior], "history": self.history.records}
        return meta, {"params": self.params, "train_cells": self.training_cells.to_tree()}, {}

    @classmethod
    def _from_saved(cls, path: Path, meta: dict, arrays, adata=None) -> VAE:
        self = cls.__new__(cls)
        registry = DataRegistry.from_dict(meta["registry"])
        library_prior = tuple(tuple(float(x) for x in v) for v in meta["library_prior"])
        self._setup(VAEConfig.from_dict(meta["options"]), registry, library_prior, None)
        like = jax.eval_shape(self.module.init, jax.random.key(0), dummy_batch(self.module))["params"]
        self.params = jax.tree.map(jnp.asarray, arrays("params", like))
        self.training_cells = TrainingCells.from_tree(arrays("train_cells"), len(registry.conditions),
                                                      len(registry.continuous))
        self.history = meta["history"]
        self.adata = adata
        if adata is not None:
            self._data = _prepare(adata, registry, self.config)
        return self

    @classmethod
    def load(cls, path, adata=None) -> VAE:
        """Read a model written by :meth:`save`; ``adata`` (validated against the model's genes and categories)
        becomes the default data of the inference methods.

        Raises:
            FileNotFoundError: no genjax model at ``path``. ValueError: another kind of model, damaged metadata or
                parameters that do not match the configuration (naming the file).
        """
        return super().load(path, adata=adata)


def _check_fit_args(*, max_epochs, batch_size, lr, eps, weight_decay, kl_warmup_epochs, beta, train_size,
                    patience) -> None:
    """Host-side checks of :meth:`VAE.fit`'s settings, before any compute.

    Raises:
        ValueError: naming the first bad setting and its value.
    """
    if max_epochs is not None:
        check_int("max_epochs", max_epochs)
    check_int("batch_size", batch_size)
    check_int("patience", patience)
    check_range("lr", lr, low=0.0, low_open=True)
    check_range("eps", eps, low=0.0, low_open=True)
    check_range("weight_decay", weight_decay, low=0.0)
    check_range("beta", beta, low=0.0)
    check_range("train_size", train_size, low=0.0, high=1.0, low_open=True)
    if kl_warmup_epochs is not None:
        check_range("kl_warmup_epochs", kl_warmup_epochs, low=0.0)


def _check_trainable(trainable, params) -> None:
    """``trainable`` has the structure of ``params`` and boolean leaves broadcastable to each parameter.

    Raises:
        ValueError: naming the first parameter whose mask does not fit (or the structures' difference).
    """
    flat_p = traverse_util.flatten_dict(dict(params), sep="/")
    try:
        flat_m = traverse_util.flatten_dict(dict(trainable), sep="/")
    except (TypeError, AttributeError) as err:
        raise ValueError(f"trainable must be a nested dict with the structure of the parameters: {err}") from err
    if set(flat_m) != set(flat_p):
        missing, extra = sorted(set(flat_p) - set(flat_m)), sorted(set(flat_m) - set(flat_p))
        raise ValueError(f"trainable does not have the structure of the parameters: missing {missing[:5]}, "
                         f"unknown {extra[:5]}")
    for name, p in flat_p.items():
        m = np.asarray(flat_m[name])
        if m.dtype != np.bool_:
            raise ValueError(f"trainable[{name!r}] has dtype {m.dtype}; masks are booleans")
        try:
            fits = np.broadcast_shapes(m.shape, np.shape(p)) == np.shape(p)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"trainable[{name!r}] has shape {m.shape}, not broadcastable to the parameter's "
                             f"{np.shape(p)}")


def _prepare(adata, registry: DataRegistry, config: VAEConfig, *, training: bool = False) -> CountData:
    """Validate ``adata`` against the registry and encode it (host side, before any compute)."""
    order = None if training else registry.gene_order(adata)
    X = get_matrix(adata, registry.layer)
    what = "adata.X" if registry.layer is None else f"adata.layers[{registry.layer!r}]"
    sf_key = config.size_factor_key
    validate_counts(X, obs_names=adata.obs_names, var_names=adata.var_names, counts=config.counts,
                    allow_empty=not config.counts or sf_key is not None, what=what)
    cat = registry.encode_conditions(adata)
    cont = registry.encode_continuous(adata)
    if sf_key is not None:
        log_lib = np.log(_size_factors(adata, sf_key))
    elif config.counts:
        log_lib = np.log(row_sums(X))
    else:
        log_lib = np.zeros(X.shape[0])
    fast = config.counts and config.fast_loss
    nonzeros = None
    if fast and config.likelihood != "poisson":  # gene-wise theta: only counts above the table's range
        nonzeros = SMALL if config.dispersion == "gene" else 0
    return CountData(X, log_lib, cat, cont, gene_order=order, sparse_fields=fast, nonzeros=nonzeros)


def _size_factors(adata, key: str) -> np.ndarray:
    """The positive, finite size factors ``adata.obs[key]`` (float64).

    Raises:
        KeyError: no such column. ValueError: a non-positive or non-finite value, naming the cell.
    """
    if key not in adata.obs:
        raise KeyError(f"size_factor_key {key!r} not found in adata.obs (columns: {list(adata.obs.columns)})")
    sf = np.asarray(adata.obs[key], np.float64)
    bad = ~(np.isfinite(sf) & (sf > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"size factors {key!r} must be finite and > 0; found {sf[i]!r} for cell "
                         f"{str(adata.obs_names[i])!r} (row {i})")
    return sf


def _library_prior(config: VAEConfig, registry: DataRegistry, data: CountData):
    """scvi-tools' library prior: mean and variance of the log library size per category (or overall)."""
    if config.library_key is None:
        return ((float(np.mean(data.log_lib)),), (max(float(np.var(data.log_lib)), 1e-4),))
    j = list(registry.conditions).index(config.library_key)
    means, varis = [], []
    for c in range(registry.n_categories[j]):
        v = data.log_lib[data.cat[:, j] == c].astype(np.float64)
        means.append(float(v.mean()))
        varis.append(max(float(v.var()), 1e-4))
    return tuple(means), tuple(varis)


def _pad_rows(tree, size: int):
    """Pad every array's leading (cells) axis to ``size`` by repeating the first row (pytrees of arrays)."""

    def pad(v):
        v = np.asarray(v)
        m = v.shape[0]
        return v if m == size else np.concatenate([v, np.repeat(v[:1], size - m, axis=0)])

    return jax.tree.map(pad, tree)


def _emit_scale(obs, out, key):
    """Normalised expression (cells, genes) of decoder outputs."""
    return obs.scale(out)


def _emit_mean_and_draw(obs, out, key):
    """Expected and drawn observations, stacked (cells, 2, genes)."""
    return jnp.stack([obs.mean(out), obs.sample(key, out)], axis=1)


def _emit_draw(obs, out, key):
    """Drawn observations (cells, genes)."""
    return obs.sample(key, out)


def _emit_rate(obs, out, key):
    """The mean of the count distribution before zero inflation, ``mu = l * rho`` (Gaussian: the mean)."""
    return jnp.exp(out["log_mu"]) if obs.counts else obs.mean(out)


def _parameter_names(obs) -> list[str]:
    """scvi-tools' names of the likelihood parameters that :func:`_emit_parameters` stacks, in order."""
    if not obs.counts:
        return ["mean", "variance"]
    return ["mean"] + ["dispersions"] * obs.dispersion + ["dropout"] * obs.zero_inflated


def _emit_parameters(obs, out, key):
    """The likelihood parameters named by :func:`_parameter_names`, stacked (cells, parameters, genes)."""
    if not obs.counts:
        return jnp.stack([out["mean"], jnp.broadcast_to(jnp.exp(out["log_var"]), out["mean"].shape)], axis=1)
    mu = jnp.exp(out["log_mu"])
    params = [mu]
    if obs.dispersion:
        params.append(jnp.broadcast_to(jnp.exp(out["log_theta"]), mu.shape))
    if obs.zero_inflated:
        params.append(jax.nn.sigmoid(out["zi_logits"]))
    return jnp.stack(params, axis=1)


def _check_indices(indices, n: int) -> np.ndarray | None:
    """Rows (int64) that ``indices`` select among ``n`` cells: ``None`` for all, integer positions (negative ones
    from the end) or a boolean mask of length ``n``.

    Raises:
        ValueError: another dtype, a position out of range or a mask of another length (naming them), or no cell.
    """
    if indices is None:
        return None
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"a boolean mask of indices must have one entry per cell ({n}); got shape {idx.shape}")
        rows = np.flatnonzero(idx)
    elif np.issubdtype(idx.dtype, np.integer) or idx.size == 0:
        idx = idx.astype(np.int64).reshape(-1)
        bad = (idx < -n) | (idx >= n)
        if bad.any():
            raise ValueError(f"indices must be cell positions in [{-n}, {n}); found {int(idx[bad][0])}")
        rows = np.where(idx < 0, idx + n, idx)
    else:
        raise ValueError(f"indices must be integer positions or a boolean mask; got dtype {idx.dtype}")
    if rows.size == 0:
        raise ValueError("indices select no cell")
    return rows


_SCVI_PLAN_KWARGS = {"lr": "lr", "weight_decay": "weight_decay", "eps": "eps",
                     "n_epochs_kl_warmup": "kl_warmup_epochs", "max_kl_weight": "beta"}
"""scvi-tools ``plan_kwargs`` -> :meth:`VAE.fit` keyword."""

_SCVI_TRAINER_KWARGS = {"early_stopping_patience": "patience", "check_val_every_n_epoch": "eval_every",
                        "enable_progress_bar": "progress"}
"""scvi-tools trainer keywords -> :meth:`VAE.fit` / :class:`genjax.TrainConfig` keyword."""


def _iwae_fn(module, n_samples, params, batch, extras, key):
    return vae_iwae_log_likelihood(module, params, batch, key, n_samples)


def _generate_fn(module: VAEModule, lib_latent: bool, params, cond, log_lib, key):
    """Counts and log library sizes of new cells: ``z`` from the prior, decoded, drawn from the observation model
    (the library from its prior when ``lib_latent``)."""
    key_noise, key_x = jax.random.split(key)
    n = log_lib.shape[0]
    pm, pv = vae_prior(module, params, cond, n)
    eps = draw_noise(key_noise, n, module.n_latent + 1, 0)[0]
    z = pm + jnp.sqrt(pv) * eps[:, : module.n_latent]
    if lib_latent:
        lm, lv = module.apply({"params": params}, cond, n, method="library_prior_params")
        log_lib = lm + jnp.sqrt(lv) * eps[:, -1]
    out = vae_decode(module, params, z, log_lib, cond)
    return vae_sample_counts(key_x, module, out), log_lib
