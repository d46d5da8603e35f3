"""Count VAEs (scVI-class) as Flax linen modules, and their losses as pure functions.

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

Pure pieces (for the model object, the latent generator and the data-parallel trainer):

* :class:`VAEModule`: ``module.init(key, batch)`` -> ``{"params": ...}``; methods ``encode``, ``decode`` and
  ``prior``, called as ``module.apply({"params": params}, ..., method="encode")``.
* :func:`vae_encode`, :func:`vae_decode`, :func:`vae_prior` wrap those calls as functions of ``(module, params, arrays)``.
* :func:`vae_elbo_terms` (per-cell reconstruction log-likelihood and KL terms), :func:`make_vae_loss` (the
  ``loss_fn(params, batch, key, step)`` of :func:`genjax.fit`, with beta and linear KL warm-up) and
  :func:`vae_iwae_log_likelihood` (importance-weighted bound, Burda et al. 2016, for the marginal log-likelihood).

Batches are dicts of arrays with leading axis ``cells`` (see :mod:`genjax._data`): ``x`` (cells, genes), ``log_lib``
(cells,), optionally ``cat`` (cells, n_conditions) int32 and ``cont`` (cells, n_continuous), and for the fast count
losses ``lfact``, ``nz_idx``, ``nz_val``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..likelihoods._log_prob import nb_log_prob_log, poisson_log_prob_log, sample_nb, sample_zinb, zinb_log_prob_log
from .._typing import Array, Params, PRNGKeyArray
from ..likelihoods._fused import fast_count_log_lik

__all__ = [
    "VAEModule",
    "vae_init",
    "vae_encode",
    "vae_decode",
    "vae_prior",
    "vae_sample_counts",
    "vae_reconstruction_log_lik",
    "vae_elbo_terms",
    "vae_kl_weight",
    "make_vae_loss",
    "make_vae_eval_loss",
    "vae_iwae_log_likelihood",
    "VAE_LIKELIHOODS",
    "VAE_DISPERSIONS",
]

VAE_LIKELIHOODS = ("nb", "zinb", "poisson", "gaussian")
"""Observation models: negative binomial, zero-inflated NB, Poisson (counts) and Gaussian (log-normalised data)."""

VAE_DISPERSIONS = ("gene", "gene-category", "gene-cell")
"""Where the NB / ZINB inverse dispersion ``theta`` (Gaussian: the log variance) varies: one value per gene, per
gene and category of a condition (scvi-tools' ``gene-batch`` / ``gene-label``), or per gene and cell (a decoder
output)."""

VAR_EPS = 1e-4  # scvi-tools adds this to the posterior variance


# Randomness: every step draws its noise with ONE ``jax.random.bits`` call (threefry), split into standard
# normals (inverse-CDF of 24-bit uniforms) and 16-bit dropout draws. Each separate threefry call costs about a
# second of XLA compilation on CPU and ~10 ns per word at run time, so this keeps both small.


def _drop_threshold(rate: float) -> int:
    """Dropout drops a unit when its 16-bit draw is below this (rate quantised to 2^-16)."""
    return int(round(rate * 65536))


def _normal_from_bits(bits):
    """Standard normals from uint32 draws: ``sqrt(2) erfinv(v)`` with ``v = 2u - 1`` on a 23-bit grid strictly
    inside (-1, 1).

    ``v = (k + 1/2) 2^-22 - 1`` for ``k`` in ``[0, 2^23)`` is exact in float32 at both ends (|v| <= 1 - 2^-23,
    so |normal| <= 5.3). A 24-bit ``u = (k + 1/2) 2^-24`` is not: its top value rounds to 1 in float32 and
    ``erfinv(1) = inf``, which made one draw in 2^24 infinite and a long VAE run NaN.
    """
    v = ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 22)) - 1.0
    return math.sqrt(2.0) * jax.lax.erf_inv(v)


def _dropout_units(module) -> int:
    """Number of 16-bit dropout draws per cell a training-mode encoder needs."""
    if module.dropout <= 0:
        return 0
    return module.n_layers * module.n_hidden * (2 if module.library == "latent" else 1)


def _draw(key, n: int, n_normal: int, n_drop: int):
    """``(normals (n, n_normal) float32, dropout draws (n, n_drop) uint32 in [0, 2^16))`` from one bits call."""
    n_words = n_normal + (n_drop + 1) // 2
    bits = jax.random.bits(key, (n, max(n_words, 1)), jnp.uint32)
    normals = _normal_from_bits(bits[:, :n_normal])
    halves = bits[:, n_normal:n_words]
    drop = jnp.concatenate([halves & 0xFFFF, halves >> 16], axis=1)[:, :n_drop] if n_drop else None
    return normals, drop


class _Covariates(nn.Module):
    """Additive covariate contribution ``sum_j E_j[cat_j] + W cont`` to a hidden layer of width ``features``.

    Identical to a linear layer on the one-hot encoded conditions concatenated with the continuous covariates.
    """

    features: int
    n_categories: tuple[int, ...]
    n_continuous: int
    fan_in: int
    dtype: Any = None

    @nn.compact
    def __call__(self, cat, cont):
        init = nn.initializers.normal(1.0 / math.sqrt(self.fan_in))
        out = 0.0
        for j, n_cat in enumerate(self.n_categories):
            out = out + nn.Embed(n_cat, self.features, embedding_init=init, dtype=self.dtype,
                                 name=f"cat_{j}")(cat[:, j])
        if self.n_continuous:
            out = out + nn.Dense(self.features, use_bias=False, kernel_init=init, dtype=self.dtype,
                                 name="cont")(cont)
        return out


class _MLP(nn.Module):
    """scvi-tools' ``FCLayers``: (Dense [+ covariates] -> norm -> ReLU -> dropout) x ``n_layers``."""

    n_hidden: int
    n_layers: int
    dropout: float
    norm: str
    n_categories: tuple[int, ...]
    n_continuous: int
    inject_all_layers: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, h, cat, cont, drop_bits=None):
        """``drop_bits``: uint16-valued draws (cells, n_layers * n_hidden) for dropout, or ``None`` (no dropout)."""
        has_cov = bool(self.n_categories) or self.n_continuous > 0
        for i in range(self.n_layers):
            fan_in = h.shape[-1] + sum(self.n_categories) + self.n_continuous
            y = nn.Dense(self.n_hidden, dtype=self.dtype, name=f"dense_{i}")(h)
            if has_cov and (i == 0 or self.inject_all_layers):
                y = y + _Covariates(self.n_hidden, self.n_categories, self.n_continuous, fan_in, self.dtype,
                                    name=f"cov_{i}")(cat, cont)
            if self.norm == "layer":
                y = nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, name=f"norm_{i}")(y)
            y = nn.relu(y)
            if self.dropout > 0 and drop_bits is not None:
                bits = drop_bits[:, i * self.n_hidden:(i + 1) * self.n_hidden]
                y = jnp.where(bits >= _drop_threshold(self.dropout), y / (1.0 - self.dropout), 0.0)
            h = y
        return h


class VAEModule(nn.Module):
    """A (conditional) count VAE: encoder, optional library encoder, decoder and prior.

    Attributes:
        n_genes: number of genes ``G``.
        likelihood: ``"nb"`` | ``"zinb"`` | ``"poisson"`` | ``"gaussian"``.
        dispersion: ``"gene"`` | ``"gene-category"`` | ``"gene-cell"`` (NB / ZINB theta, Gaussian log variance).
        dispersion_index: the condition column whose categories index ``"gene-category"`` dispersion.
        n_categories: number of categories of each categorical condition (column order of ``batch["cat"]``).
        n_continuous: number of continuous covariates (columns of ``batch["cont"]``).
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
    likelihood: str = "nb"
    dispersion: str = "gene"
    dispersion_index: int = 0
    n_categories: tuple[int, ...] = ()
    n_continuous: int = 0
    n_hidden: int = 128
    n_latent: int = 10
    n_layers: int = 1
    dropout: float = 0.1
    norm: str = "layer"
    encode_covariates: bool = True
    inject_all_layers: bool = False
    library: str = "observed"
    library_index: int | None = None
    library_prior: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0,), (1.0,))
    conditional_prior: bool = False
    dtype: Any = None

    def setup(self):
        if self.likelihood not in VAE_LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {VAE_LIKELIHOODS}, got {self.likelihood!r}")
        if self.dispersion not in VAE_DISPERSIONS:
            raise ValueError(f"dispersion must be one of {VAE_DISPERSIONS}, got {self.dispersion!r}")
        if self.norm not in ("layer", "none"):
            raise ValueError(f"norm must be 'layer' or 'none', got {self.norm!r}")
        if self.library not in ("observed", "latent"):
            raise ValueError(f"library must be 'observed' or 'latent', got {self.library!r}")
        if self.library == "latent" and self.likelihood == "gaussian":
            raise ValueError("library='latent' needs a count likelihood, not 'gaussian'")
        if self.dispersion == "gene-category" and not 0 <= self.dispersion_index < len(self.n_categories):
            raise ValueError("dispersion='gene-category' needs a categorical condition to index it")
        enc_cats = self.n_categories if self.encode_covariates else ()
        enc_cont = self.n_continuous if self.encode_covariates else 0
        mlp = dict(n_hidden=self.n_hidden, n_layers=self.n_layers, norm=self.norm,
                   inject_all_layers=self.inject_all_layers, dtype=self.dtype)
        dense = lambda n: nn.Dense(n, dtype=self.dtype)  # noqa: E731
        self.z_encoder = _MLP(dropout=self.dropout, n_categories=enc_cats, n_continuous=enc_cont, **mlp)
        self.z_mean = dense(self.n_latent)
        self.z_logvar = dense(self.n_latent)
        if self.library == "latent":
            self.l_encoder = _MLP(dropout=self.dropout, n_categories=enc_cats, n_continuous=enc_cont, **mlp)
            self.l_mean = dense(1)
            self.l_logvar = dense(1)
        self.decoder = _MLP(dropout=0.0, n_categories=self.n_categories, n_continuous=self.n_continuous, **mlp)
        self.head_mean = dense(self.n_genes)
        normal = nn.initializers.normal(1.0)
        if self.likelihood != "poisson":
            if self.dispersion == "gene":
                init = normal if self.likelihood != "gaussian" else nn.initializers.zeros
                self.log_disp = self.param("log_disp", init, (self.n_genes,))
            elif self.dispersion == "gene-category":
                init = normal if self.likelihood != "gaussian" else nn.initializers.zeros
                self.log_disp = self.param(
                    "log_disp", init, (self.n_categories[self.dispersion_index], self.n_genes))
            else:
                self.head_disp = dense(self.n_genes)
        if self.likelihood == "zinb":
            self.head_zi = dense(self.n_genes)
        if self.conditional_prior:
            zeros = nn.initializers.zeros
            self.prior_mean = [self.param(f"prior_mean_{j}", zeros, (n, self.n_latent))
                               for j, n in enumerate(self.n_categories)]
            self.prior_logvar = [self.param(f"prior_logvar_{j}", zeros, (n, self.n_latent))
                                 for j, n in enumerate(self.n_categories)]
            if self.n_continuous:
                self.prior_cont = nn.Dense(2 * self.n_latent, use_bias=False, kernel_init=zeros)

    # -- pieces ----------------------------------------------------------------------------------------------

    def _input(self, x):
        return x if self.likelihood == "gaussian" else jnp.log1p(x)

    def encode(self, x, cat=None, cont=None, drop_bits=None) -> dict[str, Array]:
        """Posterior parameters: ``z_mean``, ``z_var`` (cells, latent) and for a latent library ``l_mean``,
        ``l_var`` (cells,). ``x`` is counts (log1p is applied here) or Gaussian data. ``drop_bits``
        (cells, :func:`_dropout_units`) of 16-bit draws turns dropout on (training); ``None``: deterministic."""
        cat, cont = self._cov(x, cat, cont)
        h_in = self._input(x)
        n_z = self.n_layers * self.n_hidden
        h = self.z_encoder(h_in, cat, cont, None if drop_bits is None else drop_bits[:, :n_z])
        f32 = lambda a: a.astype(jnp.float32)  # noqa: E731  (heads may compute in bfloat16)
        out = {"z_mean": f32(self.z_mean(h)), "z_var": jnp.exp(f32(self.z_logvar(h))) + VAR_EPS}
        if self.library == "latent":
            hl = self.l_encoder(h_in, cat, cont, None if drop_bits is None else drop_bits[:, n_z:])
            out["l_mean"] = f32(self.l_mean(hl))[:, 0]
            out["l_var"] = jnp.exp(f32(self.l_logvar(hl)))[:, 0] + VAR_EPS
        return out

    def decode(self, z, log_lib, cat=None, cont=None) -> dict[str, Array]:
        """Observation-model parameters for latents ``z`` (cells, latent) and log library sizes (cells,).

        Returns a dict of (cells, genes) arrays: ``log_scale`` (log normalised expression, log-softmax over
        genes) and, by likelihood, ``log_mu = log_scale + log_lib`` and ``log_theta`` (NB / ZINB), ``zi_logits``
        (ZINB), ``mean`` and ``log_var`` (Gaussian). ``log_theta`` / ``log_var`` broadcast against (cells, genes).
        """
        cat, cont = self._cov(z, cat, cont)
        h = self.decoder(z, cat, cont, None)
        raw = self.head_mean(h).astype(jnp.float32)
        out = {}
        if self.likelihood == "gaussian":
            out["mean"] = raw
            out["log_var"] = self._dispersion(h, cat)
            return out
        out["log_scale"] = jax.nn.log_softmax(raw, axis=-1)
        out["log_mu"] = out["log_scale"] + log_lib[:, None]
        if self.likelihood in ("nb", "zinb"):
            out["log_theta"] = self._dispersion(h, cat)
        if self.likelihood == "zinb":
            out["zi_logits"] = self.head_zi(h).astype(jnp.float32)
        return out

    def _dispersion(self, h, cat):
        if self.dispersion == "gene":
            return self.log_disp
        if self.dispersion == "gene-category":
            return self.log_disp[cat[:, self.dispersion_index]]
        return self.head_disp(h).astype(jnp.float32)

    def prior(self, cat=None, cont=None, n: int | None = None) -> tuple[Array, Array]:
        """Prior mean and variance of ``z``, each (cells, latent): N(0, I), or p(z | c) when conditional."""
        if n is None:
            n = (cat if cat is not None else cont).shape[0]
        mean = jnp.zeros((n, self.n_latent))
        logvar = jnp.zeros((n, self.n_latent))
        if self.conditional_prior:
            for j in range(len(self.n_categories)):
                mean = mean + self.prior_mean[j][cat[:, j]]
                logvar = logvar + self.prior_logvar[j][cat[:, j]]
            if self.n_continuous:
                mc = self.prior_cont(cont)
                mean, logvar = mean + mc[:, : self.n_latent], logvar + mc[:, self.n_latent:]
        return mean, jnp.exp(logvar)

    def library_prior_params(self, cat=None, n: int | None = None) -> tuple[Array, Array]:
        """Mean and variance (cells,) of the log-normal library prior (``library='latent'``)."""
        means = jnp.asarray(self.library_prior[0])
        varis = jnp.asarray(self.library_prior[1])
        if self.library_index is None:
            n = n if n is not None else cat.shape[0]
            return jnp.full((n,), means[0]), jnp.full((n,), varis[0])
        c = cat[:, self.library_index]
        return means[c], varis[c]

    def _cov(self, ref, cat, cont):
        n = ref.shape[0]
        if cat is None:
            cat = jnp.zeros((n, len(self.n_categories)), jnp.int32)
        if cont is None:
            cont = jnp.zeros((n, self.n_continuous), jnp.float32)
        return cat, cont

    def __call__(self, batch):
        """Encode and decode the posterior mean (used by ``init``)."""
        enc = self.encode(batch["x"], batch.get("cat"), batch.get("cont"))
        log_lib = batch["log_lib"] if self.library == "observed" else enc["l_mean"]
        out = self.decode(enc["z_mean"], log_lib, batch.get("cat"), batch.get("cont"))
        _ = self.prior(batch.get("cat"), batch.get("cont"), n=batch["x"].shape[0])
        return out


# ---------------------------------------------------------------------------------------------------------------
# initialisation on the host
# ---------------------------------------------------------------------------------------------------------------


def _dummy_batch(module: VAEModule, n: int = 2) -> dict:
    b = {"x": jnp.ones((n, module.n_genes)), "log_lib": jnp.zeros((n,))}
    if module.n_categories:
        b["cat"] = jnp.zeros((n, len(module.n_categories)), jnp.int32)
    if module.n_continuous:
        b["cont"] = jnp.zeros((n, module.n_continuous))
    return b


def _truncated_normal(rng, shape, std):
    """N(0, std^2 / 0.8796^2) truncated to +-2 std-units, variance std^2 (flax's lecun_normal)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * (std / 0.87962566103423978)


def vae_init(module: VAEModule, seed: int = 0) -> Params:
    """Initial parameters of ``module``, drawn on the host with numpy (seeded), no XLA compilation.

    Distributions (those the module declares for ``module.init``): Dense kernels lecun-normal (truncated normal,
    variance ``1 / fan_in``), biases 0; condition embeddings N(0, 1 / fan_in) of their layer (as the one-hot
    linear layer they stand for); NB / ZINB log-dispersion N(0, 1) (scvi-tools), Gaussian log variance 0;
    conditional-prior parameters 0 (the prior starts at N(0, I)). ``jax.jit(module.init)`` gives the same
    distributions but costs seconds of compilation per model on CPU.

    Returns:
        The ``params`` pytree (float32 ``jax`` arrays).
    """
    abstract = jax.eval_shape(module.init, jax.random.key(0), _dummy_batch(module))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf, tree):
        names = [getattr(p, "key", str(p)) for p in path]
        name = names[-1]
        shape = leaf.shape
        cov_at = next((i for i, n_ in enumerate(names) if n_.startswith("cov_")), None)
        if name == "bias" or names[0].startswith("prior_"):
            value = np.zeros(shape)
        elif cov_at is not None:  # covariate embeddings / weights: N(0, 1 / fan_in of their layer)
            parent = tree
            for n_ in names[:cov_at]:
                parent = parent[n_]
            cov = parent[names[cov_at]]
            layer = names[cov_at].split("_")[-1]
            fan_in = parent[f"dense_{layer}"]["kernel"].shape[0] + sum(
                v["embedding"].shape[0] for k, v in cov.items() if k.startswith("cat_"))
            fan_in += cov["cont"]["kernel"].shape[0] if "cont" in cov else 0
            value = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
        elif name == "kernel":
            value = _truncated_normal(rng, shape, 1.0 / math.sqrt(shape[0]))
        elif name == "log_disp":
            value = np.zeros(shape) if module.likelihood == "gaussian" else rng.normal(0.0, 1.0, shape)
        else:  # a parameter this function does not know: refuse rather than guess
            raise NotImplementedError(f"vae_init has no rule for parameter {'/'.join(names)}")
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(lambda p, x: fill(p, x, abstract), abstract)


# ---------------------------------------------------------------------------------------------------------------
# pure functions of (module, params, arrays)
# ---------------------------------------------------------------------------------------------------------------


def vae_encode(module: VAEModule, params: Params, x, cat=None, cont=None, *, key: PRNGKeyArray | None = None):
    """Posterior parameters ``{"z_mean", "z_var"[, "l_mean", "l_var"]}`` of counts ``x`` (cells, genes).

    With ``key`` the encoder runs in training mode (dropout on); without, deterministically.
    """
    drop = None
    if key is not None and _dropout_units(module):
        drop = _draw(key, x.shape[0], 0, _dropout_units(module))[1]
    return module.apply({"params": params}, x, cat, cont, drop, method="encode")


def vae_decode(module: VAEModule, params: Params, z, log_lib, cat=None, cont=None) -> dict[str, Array]:
    """Observation-model parameters for latents ``z`` (cells, latent); see :meth:`VAEModule.decode`."""
    return module.apply({"params": params}, z, log_lib, cat, cont, method="decode")


def vae_prior(module: VAEModule, params: Params, cat=None, cont=None, n: int | None = None):
    """``(mean, var)`` of the prior of ``z``, each (cells, latent); see :meth:`VAEModule.prior`."""
    return module.apply({"params": params}, cat, cont, n, method="prior")


def vae_sample_counts(key: PRNGKeyArray, module: VAEModule, out: dict[str, Array]) -> Array:
    """Draw observations (cells, genes) from decoder outputs ``out`` (see :meth:`VAEModule.decode`).

    NB: gamma-Poisson (:func:`genjax.sample_nb`); ZINB: :func:`genjax.sample_zinb`; Poisson:
    ``jax.random.poisson``; Gaussian: ``mean + exp(log_var / 2) * N(0, 1)``. Counts are returned as float32.
    """
    lik = module.likelihood
    if lik == "gaussian":
        n, g = out["mean"].shape
        return out["mean"] + jnp.exp(0.5 * out["log_var"]) * _draw(key, n, g, 0)[0]
    mu = jnp.exp(out["log_mu"])
    if lik == "poisson":
        return jax.random.poisson(key, mu).astype(jnp.float32)
    theta = jnp.broadcast_to(jnp.exp(out["log_theta"]), mu.shape)
    if lik == "nb":
        return sample_nb(key, mu, theta, validate_args=False)
    return sample_zinb(key, mu, theta, out["zi_logits"], validate_args=False)


def _gauss_kl(mq, vq, mp, vp):
    """KL(N(mq, vq) || N(mp, vp)) summed over the last axis (diagonal Gaussians)."""
    return 0.5 * jnp.sum(jnp.log(vp) - jnp.log(vq) + (vq + (mq - mp) ** 2) / vp - 1.0, axis=-1)


def _gauss_log_prob(x, mean, var):
    return -0.5 * (jnp.log(2.0 * jnp.pi * var) + (x - mean) ** 2 / var)


def vae_reconstruction_log_lik(module: VAEModule, out: dict[str, Array], batch: dict[str, Array], *,
                               split: bool = False):
    """``log p(x | z, l)`` per cell (cells,) from decoder outputs ``out`` and the batch.

    Uses the public likelihoods of :mod:`genjax._likelihoods`; when the batch carries ``lfact`` (and for NB /
    ZINB the non-zeros ``nz_*`` or the large counts ``nzl_*``) the count log-likelihood is computed by the fused loss of
    :mod:`genjax._vae_fastnb` instead, which evaluates the count-only special functions on non-zeros only (same
    value to float32 accuracy). ``split=True`` returns ``(per_cell, batch_total)`` as in :func:`vae_elbo_terms`.
    """
    x = batch["x"]
    lik = module.likelihood
    if lik == "gaussian":
        r = jnp.sum(_gauss_log_prob(x, out["mean"], jnp.exp(out["log_var"])), axis=-1)
        return (r, jnp.zeros((), r.dtype)) if split else r
    if "lfact" in batch and (lik == "poisson" or "nz_idx" in batch or "nzl_idx" in batch):
        return fast_count_log_lik(lik, x, out, batch, split=split)
    if lik == "nb":
        lp = nb_log_prob_log(x, out["log_mu"], out["log_theta"], validate_args=False)
    elif lik == "zinb":
        lp = zinb_log_prob_log(x, out["log_mu"], out["log_theta"], out["zi_logits"], validate_args=False)
    else:
        lp = poisson_log_prob_log(x, out["log_mu"], validate_args=False)
    if split:
        return jnp.sum(lp, axis=-1), jnp.zeros((), lp.dtype)
    return jnp.sum(lp, axis=-1)


def vae_elbo_terms(module: VAEModule, params: Params, batch: dict[str, Array], key: PRNGKeyArray, *,
               deterministic: bool = False, split: bool = False) -> dict[str, Array]:
    """One-sample ELBO pieces per cell.

    Arguments:
        module, params: the model.
        batch: dict of arrays (cells, ...) as described in the module docstring.
        key: PRNG key (dropout and the reparameterised draws of ``z`` and ``l``).
        deterministic: encoder without dropout (evaluation).
        split: for losses that weigh cells equally: ``rec`` leaves out the count-only small-count part of the NB /
            ZINB log-pmf and ``rec_total`` (scalar) carries its batch total, computed from a histogram of the
            batch (see :mod:`genjax._vae_fastnb`); ``sum(rec) + rec_total`` is the batch total of ``log p(x | z, l)``.

    Returns:
        ``{"rec": log p(x | z, l), "kl_z": KL(q(z|x,c) || p(z|c)), "kl_l": KL(q(l|x) || p(l))}``, each (cells,);
        ``kl_l`` is zero for an observed library. ``ELBO = rec - kl_z - kl_l``. With ``split``, also
        ``rec_total`` as above.
    """
    cat, cont = batch.get("cat"), batch.get("cont")
    v = {"params": params}
    n = batch["x"].shape[0]
    latent_lib = module.library == "latent"
    eps, drop = _draw(key, n, module.n_latent + latent_lib, 0 if deterministic else _dropout_units(module))
    enc = module.apply(v, batch["x"], cat, cont, drop, method="encode")
    z = enc["z_mean"] + jnp.sqrt(enc["z_var"]) * eps[:, : module.n_latent]
    if latent_lib:
        log_lib = enc["l_mean"] + jnp.sqrt(enc["l_var"]) * eps[:, -1]
        lm, lv = module.apply(v, cat, n, method="library_prior_params")
        kl_l = _gauss_kl(enc["l_mean"][:, None], enc["l_var"][:, None], lm[:, None], lv[:, None])
    else:
        log_lib = batch["log_lib"]
        kl_l = jnp.zeros((n,))
    out = module.apply(v, z, log_lib, cat, cont, method="decode")
    pm, pv = module.apply(v, cat, cont, n, method="prior")
    terms = {"kl_z": _gauss_kl(enc["z_mean"], enc["z_var"], pm, pv), "kl_l": kl_l}
    if split:
        terms["rec"], terms["rec_total"] = vae_reconstruction_log_lik(module, out, batch, split=True)
    else:
        terms["rec"] = vae_reconstruction_log_lik(module, out, batch)
    return terms


def vae_kl_weight(step, *, beta: float = 1.0, warmup_steps: int | None = None) -> Array:
    """KL weight at optimizer step ``step``: ``beta * min(1, step / warmup_steps)`` (``beta`` without warm-up).

    scvi-tools raises the weight linearly over ``n_epochs_kl_warmup = 400`` epochs (once per epoch); here it
    rises per step over the same number of steps.
    """
    if not warmup_steps:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / float(warmup_steps))


def make_vae_loss(module: VAEModule, *, beta: float = 1.0, warmup_steps: int | None = None
                   ) -> Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]:
    """The training loss ``loss_fn(params, batch, key, step) -> (loss, aux)`` of :func:`genjax.fit`.

    ``loss = mean_cells[-rec + w(step) (kl_z + kl_l)]`` with ``w`` from :func:`vae_kl_weight` (the negative ELBO
    at ``w = 1``, the beta-VAE objective at ``w = beta``). ``aux``: ``rec`` (mean negative log-likelihood),
    ``kl_z``, ``kl_l``, ``kl_weight`` and ``elbo`` (mean ELBO at full KL weight). Invalid (non-count) input gives
    NaN under ``jit``; the model object validates data on the host before training. The mean reconstruction term
    is computed with ``vae_elbo_terms(..., split=True)`` (same value, cheaper gradient).
    """

    def loss_fn(params, batch, key, step):
        t = vae_elbo_terms(module, params, batch, key, split=True)
        w = vae_kl_weight(step, beta=beta, warmup_steps=warmup_steps)
        kl = t["kl_z"] + t["kl_l"]
        rec = jnp.mean(t["rec"]) + t["rec_total"] / t["rec"].shape[0]
        loss = -rec + w * jnp.mean(kl)
        aux = {"rec": -rec, "kl_z": jnp.mean(t["kl_z"]), "kl_l": jnp.mean(t["kl_l"]),
               "kl_weight": w, "elbo": rec - jnp.mean(kl)}
        return loss, aux

    return loss_fn


def make_vae_eval_loss(module: VAEModule) -> Callable:
    """Validation ``eval_fn(params, batch, key) -> (loss, aux)``: negative ELBO at full KL weight, no dropout."""

    def eval_fn(params, batch, key):
        t = vae_elbo_terms(module, params, batch, key, deterministic=True, split=True)
        kl = t["kl_z"] + t["kl_l"]
        rec = jnp.mean(t["rec"]) + t["rec_total"] / t["rec"].shape[0]
        loss = -(rec - jnp.mean(kl))
        return loss, {"rec": -rec, "kl_z": jnp.mean(t["kl_z"]), "kl_l": jnp.mean(t["kl_l"]), "elbo": -loss}

    return eval_fn


def vae_iwae_log_likelihood(module: VAEModule, params: Params, batch: dict[str, Array], key: PRNGKeyArray,
                        n_samples: int = 100) -> Array:
    """Importance-weighted estimate of ``log p(x | c)`` per cell (Burda et al. 2016), shape (cells,).

    ``log (1/K) sum_k p(x | z_k, l_k) p(z_k | c) p(l_k) / (q(z_k | x) q(l_k | x))`` with ``K = n_samples``
    draws from the (deterministic) encoder's posterior; a lower bound of the marginal log-likelihood that
    tightens as ``K`` grows (``K = 1`` is the ELBO). For an observed library the library terms are absent.
    """
    cat, cont = batch.get("cat"), batch.get("cont")
    v = {"params": params}
    n = batch["x"].shape[0]
    enc = module.apply(v, batch["x"], cat, cont, method="encode")
    pm, pv = module.apply(v, cat, cont, n, method="prior")
    if module.library == "latent":
        lm, lv = module.apply(v, cat, n, method="library_prior_params")

    latent_lib = module.library == "latent"

    def one(k):
        eps = _draw(k, n, module.n_latent + latent_lib, 0)[0]
        z = enc["z_mean"] + jnp.sqrt(enc["z_var"]) * eps[:, : module.n_latent]
        log_w = (jnp.sum(_gauss_log_prob(z, pm, pv), -1)
                 - jnp.sum(_gauss_log_prob(z, enc["z_mean"], enc["z_var"]), -1))
        if latent_lib:
            l_ = enc["l_mean"] + jnp.sqrt(enc["l_var"]) * eps[:, -1]
            log_w = log_w + _gauss_log_prob(l_, lm, lv) - _gauss_log_prob(l_, enc["l_mean"], enc["l_var"])
        else:
            l_ = batch["log_lib"]
        out = module.apply(v, z, l_, cat, cont, method="decode")
        return log_w + vae_reconstruction_log_lik(module, out, batch)

    log_w = jax.lax.map(one, jax.random.split(key, n_samples))  # (samples, cells), one sample at a time
    return jax.nn.logsumexp(log_w, axis=0) - math.log(n_samples)
