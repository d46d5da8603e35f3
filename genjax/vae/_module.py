"""The count VAE (scVI-class) as a Flax linen module: encoder, optional library encoder, decoder and prior.

The model (Lopez et al. 2018, "Deep generative modeling for single-cell transcriptomics", scVI), with conditions:

    z ~ p(z | c)  (N(0, I), or a learned Gaussian per condition combination: the conditional prior)
    l = observed log library size (default), or l ~ LogNormal(mean_b, var_b) per category b of a library key
    rho = softmax(f_dec(z, c))                            normalised expression, sums to 1 over genes
    x_g ~ NB(mu = exp(l) rho_g, theta_g)  |  ZINB(.., zi_logits)  |  Poisson(mu)     (counts)
    y_g ~ Normal(f_mean(z, c)_g, exp(log_var_g))                                     ("gaussian", log-normalised data)

with amortised posterior ``q(z | x, c) = N(m(x, c), v(x, c))`` whose encoder reads ``log1p(x)`` (counts) or ``x``
(Gaussian). Conditions ``c`` are categorical codes (one embedding per condition, summed: identical to a linear layer
on concatenated one-hot vectors) and standardised continuous covariates, injected into the first hidden layer of the
encoder and decoder (every hidden layer with ``inject_all_layers``).

Defaults follow scvi-tools' ``SCVI``: 128 hidden units, 10 latent dimensions, 1 hidden layer, dropout 0.1 in the
encoder, ``var = exp(.) + 1e-4``, gene-wise dispersion initialised from N(0, 1) on the log scale. One deliberate
difference: hidden layers use LayerNorm (scvi-tools' ``use_layer_norm``) instead of BatchNorm, so that a loss is a
pure function of ``(params, batch, key)`` with no running statistics, identical under ``pmap``.

The pure pieces around it, for the model object, the latent generator and the data-parallel trainer, live beside
this file:

* :class:`VAEModule`: ``module.init(key, batch)`` -> ``{"params": ...}``; methods ``encode``, ``decode`` and
  ``prior``, called as ``module.apply({"params": params}, ..., method="encode")``.
* ``_apply.py``: :func:`vae_encode`, :func:`vae_decode`, :func:`vae_prior`, :func:`vae_sample_counts` wrap those
  calls as functions of ``(module, params, arrays)``;
* ``_init.py``: :func:`vae_init` (parameters drawn on the host); ``_noise.py``: the per-step random draws;
* ``_objective.py``: :func:`vae_elbo_terms` (per-cell reconstruction log-likelihood and KL terms), :func:`make_vae_loss` (the
  ``loss_fn(params, batch, key, step)`` of :func:`genjax.fit`, with beta and linear KL warm-up) and
  :func:`vae_iwae_log_likelihood` (importance-weighted bound, Burda et al. 2016, for the marginal log-likelihood).

Batches are :class:`genjax.data.CountBatch` pytrees with leading axis ``cells``: ``x`` (cells, genes), ``log_lib``
(cells,), the cells' :class:`genjax.data.Condition` (category codes and standardised covariates), and for the fused
count losses ``lfact`` and the padded entries ``nonzero`` / ``large``. The likelihood's own behaviour (decoder
outputs, log-likelihood, draws, means) is an observation-model object (``_observation.py``).
"""

from __future__ import annotations

from typing import Any, get_args

import flax.linen as nn
import jax.numpy as jnp

from .._checks import check_choice, check_int, check_range
from .._typing import Array, Dispersion, LibraryMode, Likelihood, Norm
from ..data import Condition, CountBatch
from ..nn import CovariateMLP
from ._observation import observation_model

__all__ = ["VAEModule", "VAE_LIKELIHOODS", "VAE_DISPERSIONS", "VAR_EPS", "check_vae_module"]


VAE_LIKELIHOODS = get_args(Likelihood)
"""Observation models: negative binomial, zero-inflated NB, Poisson (counts) and Gaussian (log-normalised data)."""

VAE_DISPERSIONS = get_args(Dispersion)
"""Where the NB / ZINB inverse dispersion ``theta`` (Gaussian: the log variance) varies: one value per gene, per
gene and category of a condition (scvi-tools' ``gene-batch`` / ``gene-label``), or per gene and cell (a decoder
output)."""

VAR_EPS = 1e-4  # scvi-tools adds this to the posterior variance


class VAEModule(nn.Module):
    """A (conditional) count VAE: encoder, optional library encoder, decoder and prior.

    Attributes:
        n_genes: number of genes ``G``.
        likelihood: ``"nb"`` | ``"zinb"`` | ``"poisson"`` | ``"gaussian"``.
        dispersion: ``"gene"`` | ``"gene-category"`` | ``"gene-cell"`` (NB / ZINB theta, Gaussian log variance).
        dispersion_index: the condition column whose categories index ``"gene-category"`` dispersion.
        n_categories: number of categories of each categorical condition (column order of ``cond.labels``).
        n_continuous: number of continuous covariates (columns of ``cond.covariates``).
        n_hidden, n_latent, n_layers: network sizes (scvi-tools defaults 128, 10, 1).
        dropout: encoder dropout rate (scvi-tools 0.1; the decoder has none, as in scvi-tools).
        norm: ``"layer"`` (LayerNorm without affine parameters) or ``"none"``.
        encode_covariates: give the conditions to the encoder too (a cVAE). scvi-tools' default is False.
        inject_all_layers: add the conditions to every hidden layer, not only the first.
        library: ``"observed"`` (``l = log sum_g x``, or a given size factor) or ``"latent"`` (``l`` inferred
            with a log-normal prior per category of the condition ``library_index``, or one global prior).
        library_index: condition column of the library prior (``None``: one prior for all cells).
        library_prior: ``(means, variances)`` of log library size per category (or one each), from the data.
        conditional_prior: learn ``p(z | c) = N(m(c), diag v(c))`` (a cVAE prior that generates conditions from
            no data) instead of ``N(0, I)``; ``m`` and ``log v`` are sums of per-condition embeddings plus a
            linear function of the continuous covariates, initialised at ``N(0, I)``.
        dtype: computation dtype of the dense layers (``jnp.bfloat16``: mixed precision for accelerators);
            parameters, likelihoods, KL terms and every output stay float32. ``None``: float32 throughout.
    """

    n_genes: int
    likelihood: Likelihood = "nb"
    dispersion: Dispersion = "gene"
    dispersion_index: int = 0
    n_categories: tuple[int, ...] = ()
    n_continuous: int = 0
    n_hidden: int = 128
    n_latent: int = 10
    n_layers: int = 1
    dropout: float = 0.1
    norm: Norm = "layer"
    encode_covariates: bool = True
    inject_all_layers: bool = False
    library: LibraryMode = "observed"
    library_index: int | None = None
    library_prior: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0,), (1.0,))
    conditional_prior: bool = False
    dtype: Any = None

    def __post_init__(self):
        check_vae_module(self)
        super().__post_init__()

    def setup(self):
        obs = observation_model(self.likelihood)
        enc_cats = self.n_categories if self.encode_covariates else ()
        enc_cont = self.n_continuous if self.encode_covariates else 0
        mlp = dict(n_hidden=self.n_hidden, n_layers=self.n_layers, norm=self.norm,
                   inject_all_layers=self.inject_all_layers, dtype=self.dtype)
        dense = lambda n: nn.Dense(n, dtype=self.dtype)  # noqa: E731
        self.z_encoder = CovariateMLP(dropout=self.dropout, n_categories=enc_cats, n_continuous=enc_cont, **mlp)
        self.z_mean = dense(self.n_latent)
        self.z_logvar = dense(self.n_latent)
        if self.library == "latent":
            self.l_encoder = CovariateMLP(dropout=self.dropout, n_categories=enc_cats, n_continuous=enc_cont, **mlp)
            self.l_mean = dense(1)
            self.l_logvar = dense(1)
        self.decoder = CovariateMLP(dropout=0.0, n_categories=self.n_categories, n_continuous=self.n_continuous, **mlp)
        self.head_mean = dense(self.n_genes)
        if obs.dispersion:
            init = nn.initializers.normal(1.0) if obs.counts else nn.initializers.zeros
            if self.dispersion == "gene":
                self.log_disp = self.param("log_disp", init, (self.n_genes,))
            elif self.dispersion == "gene-category":
                self.log_disp = self.param(
                    "log_disp", init, (self.n_categories[self.dispersion_index], self.n_genes))
            else:
                self.head_disp = dense(self.n_genes)
        if obs.zero_inflated:
            self.head_zi = dense(self.n_genes)
        if self.conditional_prior:
            zeros = nn.initializers.zeros
            self.prior_mean = [self.param(f"prior_mean_{j}", zeros, (n, self.n_latent))
                               for j, n in enumerate(self.n_categories)]
            self.prior_logvar = [self.param(f"prior_logvar_{j}", zeros, (n, self.n_latent))
                                 for j, n in enumerate(self.n_categories)]
            if self.n_continuous:
                self.prior_cont = nn.Dense(2 * self.n_latent, use_bias=False, kernel_init=zeros)

    def encode(self, x, cond: Condition | None = None, drop_bits=None) -> dict[str, Array]:
        """Posterior parameters: ``z_mean``, ``z_var`` (cells, latent) and for a latent library ``l_mean``,
        ``l_var`` (cells,). ``x`` is counts (log1p is applied here) or Gaussian data; ``cond`` the cells'
        :class:`~genjax.data.Condition` (codes and covariates). ``drop_bits`` (cells, :func:`dropout_units`) of
        16-bit draws turns dropout on (training); ``None``: deterministic."""
        cat, cont = self._cov(x, cond)
        h_in = jnp.log1p(x) if observation_model(self.likelihood).counts else x
        n_z = self.n_layers * self.n_hidden
        h = self.z_encoder(h_in, cat, cont, None if drop_bits is None else drop_bits[:, :n_z])
        f32 = lambda a: a.astype(jnp.float32)  # noqa: E731  (heads may compute in bfloat16)
        out = {"z_mean": f32(self.z_mean(h)), "z_var": jnp.exp(f32(self.z_logvar(h))) + VAR_EPS}
        if self.library == "latent":
            hl = self.l_encoder(h_in, cat, cont, None if drop_bits is None else drop_bits[:, n_z:])
            out["l_mean"] = f32(self.l_mean(hl))[:, 0]
            out["l_var"] = jnp.exp(f32(self.l_logvar(hl)))[:, 0] + VAR_EPS
        return out

    def decode(self, z, log_lib, cond: Condition | None = None) -> dict[str, Array]:
        """Observation-model parameters for latents ``z`` (cells, latent) and log library sizes (cells,): the
        dict of (cells, genes) arrays of :mod:`genjax.vae._observation` (``log_scale``, ``log_mu``, ``log_theta``,
        ``zi_logits`` or ``mean``, ``log_var`` by likelihood; ``log_theta`` / ``log_var`` broadcast against
        (cells, genes))."""
        obs = observation_model(self.likelihood)
        cat, cont = self._cov(z, cond)
        h = self.decoder(z, cat, cont, None)
        raw = self.head_mean(h).astype(jnp.float32)
        disp = self._dispersion(h, cat) if obs.dispersion else None
        zi = self.head_zi(h).astype(jnp.float32) if obs.zero_inflated else None
        return obs.outputs(raw, log_lib, disp, zi)

    def _dispersion(self, h, cat):
        if self.dispersion == "gene":
            return self.log_disp
        if self.dispersion == "gene-category":
            return self.log_disp[cat[:, self.dispersion_index]]
        return self.head_disp(h).astype(jnp.float32)

    def prior(self, cond: Condition | None = None, n: int | None = None) -> tuple[Array, Array]:
        """Prior mean and variance of ``z``, each (cells, latent): N(0, I), or p(z | c) when conditional."""
        if n is None:
            n = (cond.labels if cond.labels is not None else cond.covariates).shape[0]
        mean = jnp.zeros((n, self.n_latent))
        logvar = jnp.zeros((n, self.n_latent))
        if self.conditional_prior:
            cat, cont = self._cov(mean, cond)
            for j in range(len(self.n_categories)):
                mean = mean + self.prior_mean[j][cat[:, j]]
                logvar = logvar + self.prior_logvar[j][cat[:, j]]
            if self.n_continuous:
                mc = self.prior_cont(cont)
                mean, logvar = mean + mc[:, : self.n_latent], logvar + mc[:, self.n_latent:]
        return mean, jnp.exp(logvar)

    def library_prior_params(self, cond: Condition | None = None, n: int | None = None) -> tuple[Array, Array]:
        """Mean and variance (cells,) of the log-normal library prior (``library='latent'``)."""
        means = jnp.asarray(self.library_prior[0])
        varis = jnp.asarray(self.library_prior[1])
        if self.library_index is None:
            n = n if n is not None else cond.labels.shape[0]
            return jnp.full((n,), means[0]), jnp.full((n,), varis[0])
        c = cond.labels[:, self.library_index]
        return means[c], varis[c]

    def _cov(self, ref, cond: Condition | None):
        """``(codes (cells, n_conditions) int32, covariates (cells, n_continuous))``, zeros where absent."""
        n = ref.shape[0]
        cat = cond.labels if cond is not None and cond.labels is not None else None
        cont = cond.covariates if cond is not None and cond.covariates is not None else None
        if cat is None:
            cat = jnp.zeros((n, len(self.n_categories)), jnp.int32)
        if cont is None:
            cont = jnp.zeros((n, self.n_continuous), jnp.float32)
        return cat, cont

    def __call__(self, batch: CountBatch):
        """Encode and decode the posterior mean (used by ``init``)."""
        enc = self.encode(batch.x, batch.cond)
        log_lib = batch.log_lib if self.library == "observed" else enc["l_mean"]
        out = self.decode(enc["z_mean"], log_lib, batch.cond)
        _ = self.prior(batch.cond, n=batch.x.shape[0])
        return out


def check_vae_module(m: VAEModule) -> None:
    """Host-side checks of a :class:`VAEModule`'s settings (one message format), when it is built.

    Raises:
        ValueError: an unknown option value, a size below 1, a dropout rate outside ``[0, 1)``, a latent library
            with a Gaussian likelihood, or ``"gene-category"`` dispersion without a condition to index it.
    """
    observation_model(m.likelihood)
    check_choice("dispersion", m.dispersion, Dispersion)
    check_choice("norm", m.norm, Norm)
    check_choice("library", m.library, LibraryMode)
    for name in ("n_genes", "n_hidden", "n_latent", "n_layers"):
        check_int(name, getattr(m, name))
    check_range("dropout", m.dropout, low=0.0, high=1.0, high_open=True)
    if m.library == "latent" and not observation_model(m.likelihood).counts:
        raise ValueError("library='latent' needs a count likelihood, not 'gaussian'")
    if m.dispersion == "gene-category" and not 0 <= m.dispersion_index < len(m.n_categories):
        raise ValueError("dispersion='gene-category' needs a categorical condition to index it")
