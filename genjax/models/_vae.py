"""``genjax.VAE``: the scverse-style model object over the pure VAE functions of :mod:`genjax.vae`.

Typical use::

    model = genjax.VAE(adata, likelihood="nb", conditions=["cell_type"])
    model.fit(max_epochs=100)                      # genjax.fit: checkpoints, resume, early stopping, progress
    z = model.latent(adata)                        # (cells, n_latent) posterior means
    fake = model.generate(500, cell_type="B cells")  # AnnData of sampled counts, conditions in .obs
    model.save("vae/"); model = genjax.VAE.load("vae/")

Working with arrays directly (the latent generator, custom training loops): ``model.module`` is the Flax
:class:`~genjax.vae.VAEModule`, ``model.params`` its parameters, and ``model.functions()`` returns pure, jittable
functions of ``(params, arrays)`` (``encode``, ``decode``, ``prior``, ``sample``, ``loss``); ``model.batch(adata)``
gives the :class:`~genjax.data.CountBatch` of a data set and ``model.condition(n, **values)`` the
:class:`~genjax.data.Condition` of requested values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_int, check_range
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
from ..training import TrainingDivergedError, json_digest, tree_digest
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
from ._vae_config import VAEConfig

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
        loss: ``loss(params, batch, key, step) -> (loss, aux)``, the training loss (negative ELBO with warm-up).
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
        dispersion: ``"gene"`` (default) | ``"gene-category"`` (per gene and category of ``dispersion_key``,
            scvi-tools' gene-batch / gene-label) | ``"gene-cell"`` (a decoder output). For ``"gaussian"`` it is
            where the log variance varies.
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

    Raises:
        ValueError: bad option values (see :class:`~genjax.models.VAEConfig`); non-finite data; negative, non-integer or all-zero cells for count
            likelihoods (naming the first offending cell and gene); duplicate gene names; missing condition values.
        KeyError: a condition, covariate, size-factor key or layer missing from ``adata``.

    Attributes:
        config: the :class:`~genjax.models.VAEConfig` (``options`` is it as a dict); module: the Flax
        :class:`~genjax.vae.VAEModule`; params: its parameters; registry: the
        :class:`~genjax.data.DataRegistry` (genes, categories, covariate statistics); history: per-epoch training
        records of the last :meth:`fit` (``loss``, ``rec``, ``kl_z``, ``val_loss``, ``val_elbo``, ...).
    """

    format_tag = "genjax.VAE/1"

    def __init__(
        self,
        adata,
        likelihood: str = "nb",
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
    ):
        config = VAEConfig(
            likelihood=likelihood, conditions=conditions, layer=layer, continuous=continuous, n_hidden=n_hidden,
            n_latent=n_latent, n_layers=n_layers, dropout=dropout, dispersion=dispersion,
            dispersion_key=dispersion_key, library=library, library_key=library_key,
            size_factor_key=size_factor_key, conditional_prior=bool(conditional_prior),
            encode_covariates=bool(encode_covariates), inject_all_layers=bool(inject_all_layers), norm=norm,
            fast_loss=bool(fast_loss), compute_dtype=compute_dtype, seed=seed)
        registry = DataRegistry.from_anndata(adata, config.conditions, config.continuous, config.layer)
        data = _prepare(adata, registry, config, training=True)
        self._setup(config, registry, _library_prior(config, registry, data), data)
        self.adata = adata
        self.params = vae_init(self.module, config.seed)
        self.history: list[dict] = []
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
            train_config: other :class:`genjax.TrainConfig` fields (``steps_per_dispatch``, ``ema_decay``, ...).

        Returns:
            The history (also stored as ``self.history``): one dict per epoch with ``loss``, ``rec``, ``kl_z``,
            ``kl_l``, ``kl_weight``, ``elbo`` and, with a validation split, ``val_loss``, ``val_elbo``, ...

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
        optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr, eps=eps))
        loss_fn = make_vae_loss(self.module, beta=beta, warmup_steps=warmup)
        fingerprint = {**self.fingerprint(data), "lr": lr, "eps": eps, "weight_decay": weight_decay,
                       "kl_warmup_steps": warmup, "beta": beta, "train_size": train_size}
        try:
            result = _fit(
                loss_fn, self.params, data.source(train_idx), optimizer=optimizer,
                val_data=data.source(val_idx) if len(val_idx) else None, eval_fn=make_vae_eval_loss(self.module),
                seed=seed, checkpoint_dir=checkpoint_dir, resume=resume, restart=restart, fingerprint=fingerprint,
                devices=devices, description="VAE", max_epochs=max_epochs, batch_size=batch_size,
                early_stopping=early_stopping, patience=patience, progress=progress, **train_config)
        except TrainingDivergedError as err:  # keep the last finite parameters, then report
            self.params = jax.tree.map(jnp.asarray, err.result.state.params)
            self.history = list(err.result.history)
            raise
        self.params = jax.tree.map(jnp.asarray, result.state.params)
        self.history = list(result.history)
        self.train_indices, self.validation_indices = train_idx, val_idx
        return self.history

    def fingerprint(self, data: CountData | None = None) -> dict:
        """What identifies this model and its training data in a checkpoint's run fingerprint: every option, the
        genes, the condition categories and covariate statistics, and digests of the cell names and of the
        encoded data (library sizes, codes, covariates) of ``data`` (default: the training data)."""
        data = self._data_for(None) if data is None else data
        adata_names = None if self.adata is None else list(map(str, self.adata.obs_names))
        return {**{f"option.{k}": v for k, v in self.config.to_dict().items()},
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
            loss=make_vae_loss(m, beta=beta, warmup_steps=warmup_steps),
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

    def _map(self, fn, data: CountData, batch_size: int, key=None, extra=None) -> list:
        """Apply jitted ``fn(params, batch, extras, key)`` over the cells in batches of one fixed size (the last
        one padded, so each function compiles once); ``extra(rows)`` gives per-cell arrays for ``extras``. ``fn``'s
        outputs have the cells axis first; the per-batch outputs come back as numpy."""
        outs = []
        for i, (rows, b) in enumerate(data.iter_batches(batch_size)):
            extras = {} if extra is None else extra(rows)
            k = jax.random.fold_in(key, i) if key is not None else jax.random.key(0)
            out = fn(self.params, _pad_rows(b, batch_size), _pad_rows(extras, batch_size), k)
            m = len(rows)
            outs.append(jax.tree.map(lambda a, m=m: np.asarray(a)[:m], out))
        return outs

    def latent(self, adata=None, *, give_var: bool = False, batch_size: int = 1024):
        """Posterior means of ``z``, float32 (cells, n_latent); with ``give_var`` also the variances.

        Raises:
            ValueError / KeyError: the data do not match the model (genes, categories, obs keys, counts).
        """
        m = self.module
        fn = self._jit("encode", lambda p, b, e, k: vae_encode(m, p, b.x, b.cond))
        outs = self._map(fn, self._data_for(adata), batch_size)
        mean = np.concatenate([o["z_mean"] for o in outs])
        return (mean, np.concatenate([o["z_var"] for o in outs])) if give_var else mean

    def _decode_posterior(self, data: CountData, batch_size: int, n_draws: int, sample_z: bool, seed: int,
                          new_codes, emit: Callable, name: str):
        """Decode each cell's posterior ``n_draws`` times, at the posterior mean of ``z`` or, with ``sample_z``,
        at draws from it, under its own conditions or ``new_codes`` (-1: keep), with its own library size.
        ``emit(out, key) -> (cells, ...)`` makes the result of one draw from the decoder outputs; returns
        ``(draws, cells, ...)``. One compilation per ``(name, n_draws)`` serves every other setting."""
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
        outs = self._map(self._jit(f"decode-{name}-{n_draws}", fn), data, batch_size, jax.random.key(seed),
                         lambda rows: {"new_cat": codes[rows], "z_noise": noise[rows]})
        return np.swapaxes(np.concatenate(outs, axis=0), 0, 1)  # draws first

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
        """
        data = self._data_for(adata)
        new = self._new_codes(data.n, conditions)
        emit = functools.partial(_emit_scale, observation_model(self.config.likelihood))
        out = self._decode_posterior(data, batch_size, max(n_samples, 1), n_samples > 0, seed, new, emit,
                                     "scale").mean(axis=0)
        return out * library_size if self.config.counts else out

    def posterior_predictive(self, adata=None, *, n_samples: int = 1, seed: int = 0,
                             batch_size: int = 256) -> np.ndarray:
        """Counts drawn from ``p(x | z)`` with ``z ~ q(z | x)`` (library: observed, or the posterior mean).

        Returns:
            float32 (n_samples, cells, genes).

        Raises:
            ValueError: ``n_samples`` below 1.
        """
        n_samples = check_int("n_samples", n_samples)
        emit = functools.partial(_emit_mean_and_draw, observation_model(self.config.likelihood))
        return self._decode_posterior(self._data_for(adata), batch_size, n_samples, True, seed, None, emit,
                                      "predict")[:, :, 1]

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
            (categoricals with the training categories), continuous covariates and ``library_size``;
            ``var_names`` the training genes.

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
        return ad.AnnData(X=np.concatenate(xs).astype(np.float32), obs=obs, var=pd.DataFrame(index=self.var_names))

    def elbo(self, adata=None, *, seed: int = 0, batch_size: int = 256) -> float:
        """Mean per-cell evidence lower bound (nats; one posterior draw per cell, no dropout, KL weight 1)."""
        m = self.module

        def fn(params, b, e, key):
            t = vae_elbo_terms(m, params, b, key, deterministic=True)
            return t["rec"] - t["kl_z"] - t["kl_l"]

        vals = self._map(self._jit("elbo", fn), self._data_for(adata), batch_size, jax.random.key(seed))
        return float(np.mean(np.concatenate(vals)))

    def marginal_ll(self, adata=None, *, n_samples: int = 100, seed: int = 0, batch_size: int = 256) -> float:
        """Mean per-cell importance-weighted estimate of ``log p(x | c)`` with ``n_samples`` draws (IWAE bound;
        scvi-tools' ``get_marginal_ll``).

        Raises:
            ValueError: ``n_samples`` below 1.
        """
        n_samples = check_int("n_samples", n_samples)
        fn = functools.partial(_iwae_fn, self.module, n_samples)
        vals = self._map(self._jit(f"iwae-{n_samples}", fn), self._data_for(adata), batch_size,
                         jax.random.key(seed))
        return float(np.mean(np.concatenate(vals)))

    def _saved_state(self):
        meta = {"options": self.config.to_dict(), "registry": self.registry.to_dict(),
                "library_prior": [list(v) for v in self.module.library_prior], "history": self.history}
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
