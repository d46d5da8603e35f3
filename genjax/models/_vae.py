"""``genjax.VAE``: the scverse-style model object over the pure VAE functions of :mod:`genjax._vae`.

Typical use::

    model = genjax.VAE(adata, likelihood="nb", conditions=["cell_type"])
    model.fit(max_epochs=100)                      # genjax.fit: checkpoints, resume, early stopping, progress
    z = model.latent(adata)                        # (cells, n_latent) posterior means
    fake = model.generate(500, cell_type="B cells")  # AnnData of sampled counts, conditions in .obs
    model.save("vae/"); model = genjax.VAE.load("vae/")

Working with arrays directly (the latent generator, custom training loops): ``model.module`` is the Flax
:class:`~genjax.VAEModule`, ``model.params`` its parameters, and ``model.functions()`` returns pure, jittable
functions of ``(params, arrays)`` (``encode``, ``decode``, ``prior``, ``sample``, ``loss``); ``model.batch(adata)``
gives the batch dict of arrays and ``model.encode_conditions(n, **values)`` category codes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..data import CountData, DataRegistry, get_matrix, row_sums, split_indices, validate_counts
from ..likelihoods import SMALL
from ..training import atomic_directory, load_pytree, save_pytree
from ..training import fit as _fit
from ..vae import (
    VAE_DISPERSIONS,
    VAE_LIKELIHOODS,
    VAEModule,
    draw_noise,
    dummy_batch,
    make_vae_eval_loss,
    make_vae_loss,
    vae_decode,
    vae_elbo_terms,
    vae_encode,
    vae_init,
    vae_iwae_log_likelihood,
    vae_prior,
    vae_sample_counts,
)

__all__ = ["VAE", "VAEFunctions"]

_FORMAT = "genjax.VAE/1"
_JIT_CACHE: dict = {}  # (VAEModule, name) -> jitted inference function


class VAEFunctions(NamedTuple):
    """Pure, jittable functions of a VAE's parameters (``model.functions()``); arrays have a leading cells axis.

    Fields:
        encode: ``encode(params, x, cat=None, cont=None) -> {"z_mean", "z_var"[, "l_mean", "l_var"]}``; ``x``
            raw counts (cells, genes) (log1p is applied inside) or Gaussian data.
        decode: ``decode(params, z, log_lib, cat=None, cont=None) -> {"log_scale", "log_mu", "log_theta", ...}``
            (:meth:`VAEModule.decode`); ``log_lib`` (cells,) is the log library size.
        prior: ``prior(params, cat=None, cont=None, n=None) -> (mean, var)`` of ``z``, each (cells, latent).
        sample: ``sample(key, out) -> counts`` (cells, genes) drawn from decoder outputs ``out``.
        loss: ``loss(params, batch, key, step) -> (loss, aux)``, the training loss (negative ELBO with warm-up).
    """

    encode: Any
    decode: Any
    prior: Any
    sample: Any
    loss: Any


def _as_list(v) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


class VAE:
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
            would make the loss impure; see :mod:`genjax._vae`.
        fast_loss: train count likelihoods with the fused loss (non-zero entries for the count-only special
            functions; same value as the public log-pmfs, several times faster). ``False`` uses the public
            ``nb_log_prob_log`` / ``zinb_log_prob_log`` / ``poisson_log_prob_log`` directly.
        compute_dtype: ``None`` (float32) or ``"bfloat16"`` / ``"float16"``: mixed precision, the matrix
            multiplies of the encoder and decoder in that dtype (for GPU / TPU; on CPU it is slower), parameters,
            likelihoods and optimizer state in float32.
        seed: seed of the parameter initialisation.

    Raises:
        ValueError: bad option values; non-finite data; negative, non-integer or all-zero cells for count
            likelihoods (naming the first offending cell and gene); duplicate gene names; missing condition values.
        KeyError: a condition, covariate, size-factor key or layer missing from ``adata``.

    Attributes:
        module: the Flax :class:`~genjax.VAEModule`; params: its parameters; registry: the
        :class:`~genjax.DataRegistry` (genes, categories, covariate statistics); history: per-epoch training
        records of the last :meth:`fit` (``loss``, ``rec``, ``kl_z``, ``val_loss``, ``val_elbo``, ...).
    """

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
        conditions, continuous = _as_list(conditions), _as_list(continuous)
        options = dict(likelihood=likelihood, conditions=conditions, layer=layer, continuous=continuous,
                       n_hidden=int(n_hidden), n_latent=int(n_latent), n_layers=int(n_layers),
                       dropout=float(dropout), dispersion=dispersion, dispersion_key=dispersion_key,
                       library=library, library_key=library_key, size_factor_key=size_factor_key,
                       conditional_prior=bool(conditional_prior), encode_covariates=bool(encode_covariates),
                       inject_all_layers=bool(inject_all_layers), norm=norm, fast_loss=bool(fast_loss),
                       compute_dtype=compute_dtype, seed=int(seed))
        _check_options(options)
        registry = DataRegistry.from_anndata(adata, conditions, continuous, layer)
        data = self._prepare(adata, registry, options, training=True)
        self._setup(options, registry, _library_prior(options, registry, data), data)
        self.adata = adata
        self.params = vae_init(self.module, options["seed"])
        self.history: list[dict] = []
        # what generate() samples conditions, covariates and library sizes from (training cells)
        self._train_cat, self._train_cont, self._train_log_lib = data.cat, data.cont, data.log_lib


    def _setup(self, options: dict, registry: DataRegistry, library_prior, data: CountData | None):
        self.options = options
        self.registry = registry
        keys = list(registry.conditions)
        disp_key = options["dispersion_key"] or (keys[0] if keys else None)
        self.module = VAEModule(
            n_genes=registry.n_genes,
            likelihood=options["likelihood"],
            dispersion=options["dispersion"],
            dispersion_index=keys.index(disp_key) if options["dispersion"] == "gene-category" else 0,
            n_categories=registry.n_categories,
            n_continuous=len(registry.continuous),
            n_hidden=options["n_hidden"],
            n_latent=options["n_latent"],
            n_layers=options["n_layers"],
            dropout=options["dropout"],
            norm=options["norm"],
            encode_covariates=options["encode_covariates"],
            inject_all_layers=options["inject_all_layers"],
            library=options["library"],
            library_index=keys.index(options["library_key"]) if options["library_key"] else None,
            library_prior=library_prior,
            conditional_prior=options["conditional_prior"],
            dtype=None if options.get("compute_dtype") is None else jnp.dtype(options["compute_dtype"]),
        )
        self._data = data

    @staticmethod
    def _prepare(adata, registry: DataRegistry, options: dict, *, training: bool = False) -> CountData:
        """Validate ``adata`` against the registry and encode it (host side, before any compute)."""
        order = None if training else registry.gene_order(adata)
        X = get_matrix(adata, registry.layer)
        counts = options["likelihood"] != "gaussian"
        what = "adata.X" if registry.layer is None else f"adata.layers[{registry.layer!r}]"
        sf_key = options["size_factor_key"]
        validate_counts(X, obs_names=adata.obs_names, var_names=adata.var_names, counts=counts,
                        allow_empty=not counts or sf_key is not None, what=what)
        cat = registry.encode_conditions(adata)
        cont = registry.encode_continuous(adata)
        if sf_key is not None:
            if sf_key not in adata.obs:
                raise KeyError(f"size_factor_key {sf_key!r} not found in adata.obs (columns: "
                               f"{list(adata.obs.columns)})")
            sf = np.asarray(adata.obs[sf_key], np.float64)
            bad = ~(np.isfinite(sf) & (sf > 0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"size factors {sf_key!r} must be finite and > 0; found {sf[i]!r} for cell "
                                 f"{str(adata.obs_names[i])!r} (row {i})")
            log_lib = np.log(sf)
        elif counts:
            log_lib = np.log(row_sums(X))
        else:
            log_lib = np.zeros(X.shape[0])
        fast = counts and options["fast_loss"]
        nonzeros = None
        if fast and options["likelihood"] != "poisson":  # gene-wise theta: only counts above the table's range
            nonzeros = SMALL if options["dispersion"] == "gene" else 0
        return CountData(X, log_lib, cat, cont, gene_order=order, sparse_fields=fast, nonzeros=nonzeros)

    def _data_for(self, adata) -> CountData:
        if adata is None:
            if self._data is None:
                raise ValueError("this model was loaded without data; pass adata=... (or load(path, adata))")
            return self._data
        if adata is self.adata and self._data is not None:
            return self._data
        return self._prepare(adata, self.registry, self.options)


    @property
    def var_names(self) -> list[str]:
        """Training gene names, in model order."""
        return list(self.registry.var_names)

    @property
    def conditions(self) -> dict[str, tuple[str, ...]]:
        """``{obs key: categories}`` of the model's categorical conditions."""
        return dict(self.registry.conditions)

    def __repr__(self) -> str:
        o = self.options
        return (f"VAE(likelihood={o['likelihood']!r}, genes={self.registry.n_genes}, "
                f"conditions={list(self.registry.conditions)}, continuous={list(self.registry.continuous)}, "
                f"n_latent={o['n_latent']}, n_hidden={o['n_hidden']}, n_layers={o['n_layers']}, "
                f"dispersion={o['dispersion']!r}, library={o['library']!r}, "
                f"conditional_prior={o['conditional_prior']}, trained_epochs={len(self.history)})")


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
                newest one exactly as the uninterrupted run would have.
            seed: seed of the split, the data order and every random draw of the run.
            progress: tqdm progress bar with the running loss.
            devices: data-parallel training over devices (see :func:`genjax.fit`).
            train_config: other :class:`genjax.TrainConfig` fields (``steps_per_dispatch``, ``ema_decay``, ...).

        Returns:
            The history (also stored as ``self.history``): one dict per epoch with ``loss``, ``rec``, ``kl_z``,
            ``kl_l``, ``kl_weight``, ``elbo`` and, with a validation split, ``val_loss``, ``val_elbo``, ...

        Raises:
            ValueError: bad settings (see :func:`genjax.fit`), or no training data after the split.
        """
        data = self._data_for(None)
        n = data.n
        max_epochs = default_max_epochs(n) if max_epochs is None else int(max_epochs)
        train_idx, val_idx = split_indices(n, train_size, seed)
        steps_per_epoch = max(1, len(train_idx) // min(batch_size, len(train_idx)))
        warmup = int(round(kl_warmup_epochs * steps_per_epoch)) if kl_warmup_epochs else None
        optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr, eps=eps))
        loss_fn = make_vae_loss(self.module, beta=beta, warmup_steps=warmup)
        result = _fit(
            loss_fn, self.params, data.source(train_idx), optimizer=optimizer,
            val_data=data.source(val_idx) if len(val_idx) else None, eval_fn=make_vae_eval_loss(self.module),
            seed=seed, checkpoint_dir=checkpoint_dir, resume=resume, devices=devices, description="VAE",
            max_epochs=max_epochs, batch_size=batch_size, early_stopping=early_stopping, patience=patience,
            progress=progress, **train_config)
        self.params = jax.tree.map(jnp.asarray, result.state.params)
        self.history = list(result.history)
        self.train_indices, self.validation_indices = train_idx, val_idx
        return self.history


    def functions(self, *, beta: float = 1.0, warmup_steps: int | None = None) -> VAEFunctions:
        """Pure, jittable functions of ``(params, arrays)`` for this model (see :class:`VAEFunctions`)."""
        m = self.module
        return VAEFunctions(
            encode=lambda params, x, cat=None, cont=None: vae_encode(m, params, x, cat, cont),
            decode=lambda params, z, log_lib, cat=None, cont=None: vae_decode(m, params, z, log_lib, cat, cont),
            prior=lambda params, cat=None, cont=None, n=None: vae_prior(m, params, cat, cont, n),
            sample=lambda key, out: vae_sample_counts(key, m, out),
            loss=make_vae_loss(m, beta=beta, warmup_steps=warmup_steps),
        )

    def batch(self, adata=None, rows=None) -> dict[str, np.ndarray]:
        """The batch dict of arrays (``x``, ``log_lib``, ``cat``, ``cont``, ...) of ``adata`` (validated)."""
        data = self._data_for(adata)
        return data.batch(np.arange(data.n) if rows is None else rows)

    def encode_conditions(self, n: int, **values) -> np.ndarray:
        """int32 codes (n, n_conditions) of the given condition values (-1 for conditions not given)."""
        return self.registry.encode_values(n, **values)


    def _jit(self, name, fn):
        """``jax.jit(fn)``, cached per (module, name): models with equal modules (e.g. a saved and a loaded one)
        share compilations. ``fn`` must depend only on the module and on what ``name`` spells out."""
        key = (self.module, name)
        if key not in _JIT_CACHE:
            if len(_JIT_CACHE) >= 256:
                _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
            _JIT_CACHE[key] = jax.jit(fn)
        return _JIT_CACHE[key]

    def _map(self, fn, data: CountData, batch_size: int, key=None, extra=None) -> list:
        """Apply jitted ``fn(params, batch, key)`` over the cells in batches of one fixed size (the last one is
        padded, so each function compiles once); ``extra(rows)`` adds fields to a batch. ``fn``'s outputs have
        the cells axis first; the per-batch outputs are returned as numpy."""
        size = batch_size  # also for fewer cells: one compilation serves every data set
        outs = []
        for i, (rows, b) in enumerate(data.iter_batches(size)):
            if extra is not None:
                b = dict(b, **extra(rows))
            m = len(rows)
            k = jax.random.fold_in(key, i) if key is not None else jax.random.key(0)
            out = fn(self.params, _pad_rows(b, size), k)
            outs.append(jax.tree.map(lambda a, m=m: np.asarray(a)[:m], out))
        return outs

    def _encode_fn(self):
        m = self.module
        return self._jit("encode", lambda p, b, k: vae_encode(m, p, b["x"], b.get("cat"), b.get("cont")))

    def latent(self, adata=None, *, give_var: bool = False, batch_size: int = 1024):
        """Posterior means of ``z``, float32 (cells, n_latent); with ``give_var`` also the variances.

        Raises:
            ValueError / KeyError: the data do not match the model (genes, categories, obs keys, counts).
        """
        data = self._data_for(adata)
        outs = self._map(self._encode_fn(), data, batch_size)
        mean = np.concatenate([o["z_mean"] for o in outs])
        return (mean, np.concatenate([o["z_var"] for o in outs])) if give_var else mean

    def _decode_at(self, data: CountData, batch_size: int, n_draws: int, sample_z: bool, seed: int,
                   new_codes=None, what: str = "scale"):
        """Decode each cell's posterior ``n_draws`` times: at the posterior mean of ``z`` or, with ``sample_z``,
        at draws from it; under its own conditions or ``new_codes`` (-1: keep). ``what="scale"`` returns the
        normalised expression (draws, cells, genes); ``"predict"`` the expected and the sampled counts
        (draws, cells, 2, genes). One compilation per ``(what, n_draws)`` serves every other setting."""
        m = self.module
        lib_latent = self.options["library"] == "latent"

        def fn(params, b, key):
            cat, cont = b.get("cat"), b.get("cont")
            enc = vae_encode(m, params, b["x"], cat, cont)
            dcat = jnp.where(b["new_cat"] >= 0, b["new_cat"], cat) if cat is not None else None
            log_lib = enc["l_mean"] if lib_latent else b["log_lib"]

            def one(k):
                key_z, key_x = jax.random.split(k)
                eps = draw_noise(key_z, enc["z_mean"].shape[0], m.n_latent, 0)[0]
                z = enc["z_mean"] + b["z_noise"][:, None] * jnp.sqrt(enc["z_var"]) * eps
                out = vae_decode(m, params, z, log_lib, dcat, cont)
                if what == "scale":
                    return jnp.exp(out["log_scale"]) if "log_scale" in out else out["mean"]
                return jnp.stack([_expected(m, out), vae_sample_counts(key_x, m, out)], axis=1)

            keys = jax.random.split(key, n_draws)
            return jnp.swapaxes(jax.lax.map(one, keys), 0, 1)  # cells first

        n_cond = len(self.registry.conditions)
        codes = np.full((data.n, n_cond), -1, np.int32) if new_codes is None else new_codes
        noise = np.full(data.n, 1.0 if sample_z else 0.0, np.float32)

        def extra(rows):
            return {"new_cat": codes[rows], "z_noise": noise[rows]}

        outs = self._map(self._jit(f"decode-{what}-{n_draws}", fn), data, batch_size, jax.random.key(seed), extra)
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
        out = self._decode_at(data, batch_size, max(n_samples, 1), n_samples > 0, seed, new, "scale").mean(axis=0)
        return out * library_size if self.options["likelihood"] != "gaussian" else out

    def posterior_predictive(self, adata=None, *, n_samples: int = 1, seed: int = 0,
                             batch_size: int = 256) -> np.ndarray:
        """Counts drawn from ``p(x | z)`` with ``z ~ q(z | x)`` (library: observed, or the posterior mean).

        Returns:
            float32 (n_samples, cells, genes).
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        return self._decode_at(self._data_for(adata), batch_size, n_samples, True, seed, None, "predict")[:, :, 1]

    def _new_codes(self, n: int, conditions: dict):
        if not conditions:
            return None
        return self.registry.encode_values(n, **conditions)

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

        if not new_conditions:
            raise ValueError("counterfactual needs at least one condition to change, e.g. cell_type='B cells'")
        adata = self.adata if adata is None else adata
        data = self._data_for(adata)
        new = self._new_codes(data.n, new_conditions)
        both = self._decode_at(data, batch_size, 1, False, seed, new, "predict")[0]  # (cells, 2, genes)
        mean, counts = both[:, 0], both[:, 1]
        obs = adata.obs.copy()
        for key, value in new_conditions.items():
            obs[key] = _categorical(np.full(data.n, str(value), dtype=object), self.registry.conditions[key])
        out = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=_var_frame(self.var_names))
        out.layers["mean"] = mean.astype(np.float32)
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
            conditions: condition values, e.g. ``cell_type="B cells"``. Conditions not given are drawn together
                with continuous covariates from training cells matching the given ones (training proportions).

        Returns:
            AnnData (n x genes): ``X`` sampled counts (float32), ``obs`` the conditions (categoricals with the
            training categories), continuous covariates and ``library_size``; ``var_names`` the training genes.

        Raises:
            KeyError: a key that is not a condition. ValueError: an unknown category, or ``n < 1``.
        """
        import anndata as ad
        import pandas as pd

        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        n = int(n)
        codes = self.registry.encode_values(n, **conditions)
        rng = np.random.default_rng(seed)
        given = codes[0] >= 0
        match = np.all(self._train_cat[:, given] == codes[0, given], axis=1) if given.any() else \
            np.ones(len(self._train_cat), bool)
        pool = np.flatnonzero(match)
        if pool.size == 0:
            warnings.warn(f"no training cell has conditions {conditions}; other conditions, covariates and "
                          "library sizes are drawn from all training cells", stacklevel=2)
            pool = np.arange(len(self._train_cat))
        rows = rng.choice(pool, size=n, replace=True)
        cat = np.where(codes >= 0, codes, self._train_cat[rows]).astype(np.int32)
        cont = self._train_cont[rows]
        if library_size is not None:
            lib = np.broadcast_to(np.asarray(library_size, np.float64), (n,))
            if not np.all(np.isfinite(lib) & (lib > 0)):
                raise ValueError("library_size must be finite and > 0")
            log_lib = np.log(lib).astype(np.float32)
        else:
            log_lib = self._train_log_lib[rows]
        m = self.module
        lib_latent = self.options["library"] == "latent" and library_size is None

        def fn(params, b, key):
            key_noise, key_x = jax.random.split(key)
            nb = b["cat"].shape[0]
            pm, pv = vae_prior(m, params, b["cat"], b["cont"], nb)
            eps = draw_noise(key_noise, nb, m.n_latent + 1, 0)[0]
            z = pm + jnp.sqrt(pv) * eps[:, : m.n_latent]
            log_l = b["log_lib"]
            if lib_latent:
                lm, lv = m.apply({"params": params}, b["cat"], nb, method="library_prior_params")
                log_l = lm + jnp.sqrt(lv) * eps[:, -1]
            out = vae_decode(m, params, z, log_l, b["cat"], b["cont"])
            return vae_sample_counts(key_x, m, out), log_l

        f = self._jit(f"generate-{lib_latent}", fn)
        xs, libs = [], []
        key = jax.random.key(seed)
        size = min(batch_size, n)
        for i, start in enumerate(range(0, n, size)):
            sl = slice(start, min(n, start + size))
            b = _pad_rows({"cat": cat[sl], "cont": cont[sl], "log_lib": log_lib[sl]}, size)
            x, ll = f(self.params, b, jax.random.fold_in(key, i))
            xs.append(np.asarray(x)[: sl.stop - start])
            libs.append(np.asarray(ll)[: sl.stop - start])
        obs = pd.DataFrame(index=[f"gen_{i}" for i in range(n)])
        for j, (key_, cats) in enumerate(self.registry.conditions.items()):
            obs[key_] = _categorical(np.asarray(cats, dtype=object)[cat[:, j]], cats)
        for j, (key_, (mu, sd)) in enumerate(self.registry.continuous.items()):
            obs[key_] = cont[:, j] * sd + mu
        obs["library_size"] = np.exp(np.concatenate(libs)).astype(np.float32)
        return ad.AnnData(X=np.concatenate(xs).astype(np.float32), obs=obs, var=_var_frame(self.var_names))


    def elbo(self, adata=None, *, seed: int = 0, batch_size: int = 256) -> float:
        """Mean per-cell evidence lower bound (nats; one posterior draw per cell, no dropout, KL weight 1)."""
        m = self.module

        def fn(params, b, key):
            t = vae_elbo_terms(m, params, b, key, deterministic=True)
            return t["rec"] - t["kl_z"] - t["kl_l"]

        data = self._data_for(adata)
        vals = self._map(self._jit("elbo", fn), data, batch_size, jax.random.key(seed))
        return float(np.mean(np.concatenate(vals)))

    def marginal_ll(self, adata=None, *, n_samples: int = 100, seed: int = 0, batch_size: int = 256) -> float:
        """Mean per-cell importance-weighted estimate of ``log p(x | c)`` with ``n_samples`` draws (IWAE bound;
        scvi-tools' ``get_marginal_ll``)."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        m = self.module
        fn = functools.partial(_iwae_fn, m, n_samples)
        data = self._data_for(adata)
        vals = self._map(self._jit(f"iwae-{n_samples}", fn), data, batch_size, jax.random.key(seed))
        return float(np.mean(np.concatenate(vals)))


    def save(self, path, *, overwrite: bool = True) -> None:
        """Write the model to the directory ``path`` atomically (params, settings, registry, history, and the
        training cells' conditions / covariates / library sizes that :meth:`generate` samples from)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True")
        meta = {"format": _FORMAT, "options": self.options, "registry": self.registry.to_dict(),
                "library_prior": [list(v) for v in self.module.library_prior], "history": self.history}
        stats = {"cat": self._train_cat, "cont": self._train_cont, "log_lib": self._train_log_lib}
        with atomic_directory(path) as tmp:
            save_pytree(tmp / "params.msgpack", self.params)
            save_pytree(tmp / "train_cells.msgpack", stats)
            (tmp / "model.json").write_text(json.dumps(meta, indent=1, default=_json_default))

    @classmethod
    def load(cls, path, adata=None) -> VAE:
        """Read a model written by :meth:`save`; ``adata`` (validated against the model's genes and categories)
        becomes the default data of the inference methods."""
        path = Path(path)
        meta_file = path / "model.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"no genjax VAE at {path} (missing model.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} holds {meta.get('format')!r}, not a {_FORMAT} model")
        self = cls.__new__(cls)
        registry = DataRegistry.from_dict(meta["registry"])
        library_prior = tuple(tuple(float(x) for x in v) for v in meta["library_prior"])
        self._setup(meta["options"], registry, library_prior, None)
        like = jax.eval_shape(self.module.init, jax.random.key(0), dummy_batch(self.module))["params"]
        self.params = jax.tree.map(jnp.asarray, load_pytree(path / "params.msgpack", like))
        stats = load_pytree(path / "train_cells.msgpack")
        self._train_log_lib = np.asarray(stats["log_lib"], np.float32)
        n_train = len(self._train_log_lib)
        self._train_cat = np.asarray(stats["cat"], np.int32).reshape(n_train, len(registry.conditions))
        self._train_cont = np.asarray(stats["cont"], np.float32).reshape(n_train, len(registry.continuous))
        self.history = meta["history"]
        self.adata = adata
        if adata is not None:
            self._data = self._prepare(adata, registry, self.options)
        return self


def _check_options(o: dict) -> None:
    if o["likelihood"] not in VAE_LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {VAE_LIKELIHOODS}, got {o['likelihood']!r}")
    if o["dispersion"] not in VAE_DISPERSIONS:
        raise ValueError(f"dispersion must be one of {VAE_DISPERSIONS}, got {o['dispersion']!r}")
    if o["library"] not in ("observed", "latent"):
        raise ValueError(f"library must be 'observed' or 'latent', got {o['library']!r}")
    if o["norm"] not in ("layer", "none"):
        raise ValueError(f"norm must be 'layer' or 'none', got {o['norm']!r}")
    for name in ("n_hidden", "n_latent", "n_layers"):
        if o[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {o[name]}")
    if o.get("compute_dtype") not in (None, "float32", "bfloat16", "float16"):
        raise ValueError(f"compute_dtype must be None, 'float32', 'bfloat16' or 'float16', got {o['compute_dtype']!r}")
    if not 0.0 <= o["dropout"] < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {o['dropout']}")
    if o["likelihood"] == "gaussian" and o["library"] == "latent":
        raise ValueError("library='latent' needs a count likelihood, not 'gaussian'")
    conds = o["conditions"]
    if o["dispersion"] == "gene-category":
        key = o["dispersion_key"] or (conds[0] if conds else None)
        if key is None:
            raise ValueError("dispersion='gene-category' needs a categorical condition (conditions=[...])")
        if key not in conds:
            raise ValueError(f"dispersion_key {key!r} must be one of the conditions {conds}")
    elif o["dispersion_key"] is not None:
        raise ValueError("dispersion_key is only used with dispersion='gene-category'")
    if o["library_key"] is not None:
        if o["library"] != "latent":
            raise ValueError("library_key is only used with library='latent'")
        if o["library_key"] not in conds:
            raise ValueError(f"library_key {o['library_key']!r} must be one of the conditions {conds}")


def _library_prior(options, registry: DataRegistry, data: CountData):
    """scvi-tools' library prior: mean and variance of the log library size per category (or overall)."""
    if options["library_key"] is None:
        return ((float(np.mean(data.log_lib)),), (max(float(np.var(data.log_lib)), 1e-4),))
    j = list(registry.conditions).index(options["library_key"])
    means, varis = [], []
    for c in range(registry.n_categories[j]):
        v = data.log_lib[data.cat[:, j] == c].astype(np.float64)
        means.append(float(v.mean()))
        varis.append(max(float(v.var()), 1e-4))
    return tuple(means), tuple(varis)


def _pad_rows(batch: dict, size: int) -> dict:
    """Pad every array's leading (cells) axis to ``size`` by repeating the first row."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        m = v.shape[0]
        out[k] = v if m == size else np.concatenate([v, np.repeat(v[:1], size - m, axis=0)])
    return out


def _iwae_fn(module, n_samples, params, batch, key):
    return vae_iwae_log_likelihood(module, params, batch, key, n_samples)


def _expected(module: VAEModule, out: dict):
    """Mean of the observation model (cells, genes)."""
    if module.likelihood == "gaussian":
        return out["mean"]
    mu = jnp.exp(out["log_mu"])
    if module.likelihood == "zinb":
        return mu * jax.nn.sigmoid(-out["zi_logits"])
    return mu


def _categorical(values, categories):
    import pandas as pd

    return pd.Categorical(values, categories=list(categories))


def _var_frame(var_names):
    import pandas as pd

    return pd.DataFrame(index=pd.Index(list(var_names), name=None))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools' default number of epochs: ``min(round(20000 / n_cells * 400), 400)``."""
    return int(min(round(20000 / max(n_cells, 1) * 400), 400))
