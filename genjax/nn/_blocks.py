"""Flax (linen) building blocks for score, noise and velocity networks.

* :class:`SinusoidalEmbedding`: times -> sin/cos features (Vaswani et al. 2017; DDPM's time embedding).
* :class:`MLP`, :class:`ResidualBlock`, :class:`ResMLP`: dense trunks; residual blocks take an optional
  conditioning embedding through :class:`FiLM` (Perez et al. 2018, "FiLM: Visual Reasoning with a General
  Conditioning Layer"), zero-initialised so that a fresh block is the identity map.
* :class:`Condition`, :class:`ConditionEmbedding`, :func:`null_condition`, :func:`drop_condition`: one conditioning
  interface for score and velocity models: several categorical attributes (tissue, cell type, perturbation...),
  each with a null token, plus continuous covariates with a presence mask. The null token is what classifier-free
  guidance trains with condition dropout and evaluates as the unconditional branch.
* :class:`FieldNet`: ``(x, t, cond) -> (n, d)``, the network behind :class:`genjax.ScoreNet` and the velocity
  networks: time embedding + condition embedding, fed additively at the input and by FiLM into every block.

Shapes: ``x: (n, d)``, ``t: (n,)``; a :class:`Condition` holds arrays with the same leading ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, Bool, Float, Int, PRNGKeyArray

__all__ = [
    "NULL_LABEL",
    "Condition",
    "null_condition",
    "drop_condition",
    "check_condition",
    "SinusoidalEmbedding",
    "MLP",
    "FiLM",
    "ResidualBlock",
    "ResMLP",
    "ConditionEmbedding",
    "FieldNet",
]

NULL_LABEL = -1
"""Label value of the null token of every categorical attribute (unknown, or dropped for guidance)."""


class Condition(NamedTuple):
    """Conditioning information for a batch of ``n`` points (a pytree; ``None`` fields are absent).

    Fields:
        labels: int32 ``(n, n_attributes)``: category index of each categorical attribute, in
            ``[0, num_classes[i])``, or :data:`NULL_LABEL` (``-1``) for the null token (unknown / dropped).
        covariates: float32 ``(n, n_covariates)``: continuous covariates (standardise them first).
        covariate_mask: bool ``(n, n_covariates)``: ``False`` marks a covariate as absent (its null token);
            ``None`` means every covariate is present.

    ``cond=None`` passed to a network means unconditional, i.e. every attribute and covariate null.
    """

    labels: Int[Array, "n attributes"] | None = None
    covariates: Float[Array, "n covariates"] | None = None
    covariate_mask: Bool[Array, "n covariates"] | None = None


def null_condition(cond: Condition) -> Condition:
    """The all-null condition with the same shapes as ``cond`` (the unconditional branch of guidance).

    Arguments:
        cond: a :class:`Condition`.

    Returns:
        a :class:`Condition` with every label :data:`NULL_LABEL` and every covariate masked out.
    """
    labels = None if cond.labels is None else jnp.full_like(cond.labels, NULL_LABEL)
    if cond.covariates is None:
        return Condition(labels, None, None)
    return Condition(labels, jnp.zeros_like(cond.covariates), jnp.zeros(cond.covariates.shape, bool))


def drop_condition(key: PRNGKeyArray, cond: Condition | None, rate: float) -> Condition | None:
    """Condition dropout for classifier-free guidance (Ho & Salimans 2022): null out attributes at random.

    Each categorical attribute and each covariate of each point is replaced by its null token independently
    with probability ``rate``, so the network learns every conditional that guidance composes (single
    attributes, pairs, ..., the unconditional one).

    Arguments:
        key: a PRNG key.
        cond: a :class:`Condition` (or ``None``, returned unchanged).
        rate: dropout probability in ``[0, 1]`` (a Python float).

    Returns:
        a :class:`Condition` of the same shapes.

    Raises:
        ValueError: if ``rate`` is outside ``[0, 1]``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"condition dropout rate must be in [0, 1]; got {rate}")
    if cond is None or rate == 0.0:
        return cond
    key_labels, key_cov = jax.random.split(key)
    labels, covariates, mask = cond
    if labels is not None:
        drop = jax.random.bernoulli(key_labels, rate, labels.shape)
        labels = jnp.where(drop, NULL_LABEL, labels)
    if covariates is not None:
        keep = ~jax.random.bernoulli(key_cov, rate, covariates.shape)
        mask = keep if mask is None else mask & keep
    return Condition(labels, covariates, mask)


def check_condition(cond: Condition | None, n: int, num_classes: Sequence[int], num_covariates: int) -> None:
    """Host-side validation of a condition against a network's attribute sizes (call before jitted code).

    Arguments:
        cond: a :class:`Condition` or ``None``.
        n: expected leading size (number of points).
        num_classes: number of categories of each attribute.
        num_covariates: number of continuous covariates.

    Raises:
        ValueError: naming the field, shape, attribute and offending value when ``cond`` does not fit.
    """
    if cond is None:
        return
    if not isinstance(cond, Condition):
        raise ValueError(f"cond must be a genjax.nn.Condition or None; got {type(cond).__name__}")
    if cond.labels is not None:
        labels = np.asarray(cond.labels)  # host-side checks in numpy: no device round trips or compiles
        if labels.shape != (n, len(num_classes)):
            raise ValueError(f"cond.labels must have shape (n, n_attributes) = {(n, len(num_classes))}; got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"cond.labels must be integers; got dtype {labels.dtype}")
        for i, k in enumerate(num_classes):
            col = labels[:, i]
            bad = (col < NULL_LABEL) | (col >= k)
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(
                    f"cond.labels[{j}, {i}] = {int(col[j])} is out of range for attribute {i} with {k} classes "
                    f"(valid: 0..{k - 1}, or {NULL_LABEL} for the null token)"
                )
    elif len(num_classes):
        raise ValueError(f"cond.labels is None but the network has {len(num_classes)} categorical attribute(s)")
    if cond.covariates is not None:
        cov = np.asarray(cond.covariates)
        if cov.shape != (n, num_covariates):
            raise ValueError(f"cond.covariates must have shape (n, n_covariates) = {(n, num_covariates)}; got {cov.shape}")
        finite = np.isfinite(cov).all(axis=-1)
        if not finite.all():
            j = int(np.argmin(finite))
            raise ValueError(f"cond.covariates has a non-finite value in row {j}; mark absent values in covariate_mask")
        if cond.covariate_mask is not None and np.shape(cond.covariate_mask) != cov.shape:
            raise ValueError(f"cond.covariate_mask must have the shape of covariates {cov.shape}; got {np.shape(cond.covariate_mask)}")
    elif num_covariates:
        raise ValueError(f"cond.covariates is None but the network has {num_covariates} covariate(s)")


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar time: ``[sin(s t w_k), cos(s t w_k)]``, ``w_k = max_period^(-k/half)``.

    Attributes:
        features: output size (even).
        scale: ``s``, multiplies ``t`` first (1000 maps ``t in [0, 1]`` to DDPM's integer-step range).
        max_period: the longest period.

    ``__call__(t)``: ``t`` of any shape ``(...)`` -> ``(..., features)``, float32 (float64 for float64 ``t``).
    """

    features: int = 64
    scale: float = 1000.0
    max_period: float = 10000.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        if self.features % 2:
            raise ValueError(f"SinusoidalEmbedding.features must be even; got {self.features}")
        half = self.features // 2
        t = jnp.asarray(t, jnp.result_type(t, jnp.float32))
        freqs = jnp.exp(-math.log(self.max_period) * jnp.arange(half, dtype=t.dtype) / half)
        arg = (self.scale * t)[..., None] * freqs
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class MLP(nn.Module):
    """Dense layers with an activation between them.

    Attributes:
        features: output size of each layer.
        activation: elementwise nonlinearity.
        activate_final: also apply it after the last layer.
        dtype: computation dtype (``None``: inferred, float32 params either way).
    """

    features: Sequence[int]
    activation: Callable[[Array], Array] = nn.silu
    activate_final: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, f in enumerate(self.features):
            x = nn.Dense(f, dtype=self.dtype)(x)
            if i < len(self.features) - 1 or self.activate_final:
                x = self.activation(x)
        return x


class FiLM(nn.Module):
    """Feature-wise linear modulation ``h (1 + gamma(c)) + beta(c)`` with ``[gamma, beta] = Dense(act(c))``.

    The projection is zero-initialised, so the layer starts as the identity.

    ``__call__(h, c)``: ``h: (..., features)``, ``c: (..., emb)`` -> ``(..., features)``.
    """

    activation: Callable[[Array], Array] = nn.silu
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, c: Array) -> Array:
        gamma_beta = nn.Dense(2 * h.shape[-1], kernel_init=nn.initializers.zeros, dtype=self.dtype)(self.activation(c))
        gamma, beta = jnp.split(gamma_beta, 2, axis=-1)
        return h * (1.0 + gamma) + beta


class ResidualBlock(nn.Module):
    """Pre-activation residual block ``h + Dense(act(FiLM(norm(h), c)))``.

    Attributes:
        activation: nonlinearity.
        norm: apply LayerNorm first.
        film: modulate with the embedding ``c`` (ignored when ``c`` is ``None``).
        dtype: computation dtype.

    ``__call__(h, c=None)``: ``h: (..., features)`` -> same shape.
    """

    activation: Callable[[Array], Array] = nn.silu
    norm: bool = True
    film: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, c: Array | None = None) -> Array:
        y = nn.LayerNorm(dtype=self.dtype)(h) if self.norm else h
        if self.film and c is not None:
            y = FiLM(self.activation, self.dtype)(y, c)
        y = nn.Dense(h.shape[-1], dtype=self.dtype)(self.activation(y))
        return h + y


class ResMLP(nn.Module):
    """Residual MLP ``out(act(blocks(Dense(x) + c)))`` with the embedding ``c`` added at the input and FiLM'd
    into every block.

    Attributes:
        features: hidden width.
        num_blocks: number of :class:`ResidualBlock`.
        out_features: output size.
        activation, norm, film, dtype: as :class:`ResidualBlock`.
        zero_output: zero-initialise the output layer (the network starts at 0).

    ``__call__(x, c=None)``: ``x: (..., in)``, ``c: (..., features)`` or ``None`` -> ``(..., out_features)``.
    """

    features: int = 256
    num_blocks: int = 4
    out_features: int = 1
    activation: Callable[[Array], Array] = nn.silu
    norm: bool = True
    film: bool = True
    zero_output: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, c: Array | None = None) -> Array:
        h = nn.Dense(self.features, dtype=self.dtype)(x)
        if c is not None:
            h = h + c
        for _ in range(self.num_blocks):
            h = ResidualBlock(self.activation, self.norm, self.film, self.dtype)(h, c)
        if self.norm:
            h = nn.LayerNorm(dtype=self.dtype)(h)
        init = nn.initializers.zeros if self.zero_output else nn.initializers.lecun_normal()
        return nn.Dense(self.out_features, kernel_init=init, dtype=self.dtype)(self.activation(h))


class ConditionEmbedding(nn.Module):
    """Embedding of a :class:`Condition`: a sum of one learned table per categorical attribute (``num_classes[i]
    + 1`` rows, the last one the null token) and a dense map of the masked covariates ``[mask * x, mask]``.

    Attributes:
        num_classes: number of categories of each attribute (e.g. ``(n_cell_types, n_perturbations)``).
        num_covariates: number of continuous covariates.
        features: output size.

    ``__call__(cond, batch_shape)``: ``cond`` a :class:`Condition` or ``None`` (all null) -> ``batch_shape +
    (features,)``. Rows with a label outside ``[-1, num_classes[i])`` come out as NaN (validate on the host
    with :func:`check_condition`).
    """

    num_classes: Sequence[int] = ()
    num_covariates: int = 0
    features: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, cond: Condition | None, batch_shape: tuple[int, ...]) -> Array:
        out = jnp.zeros((*batch_shape, self.features), self.dtype or jnp.float32)
        if self.num_classes:
            labels = (
                jnp.full((*batch_shape, len(self.num_classes)), NULL_LABEL, jnp.int32)
                if cond is None or cond.labels is None
                else jnp.asarray(cond.labels)
            )
            for i, k in enumerate(self.num_classes):
                lab = labels[..., i]
                valid = (lab >= NULL_LABEL) & (lab < k)
                idx = jnp.where(lab == NULL_LABEL, k, jnp.clip(lab, 0, k - 1))
                emb = nn.Embed(k + 1, self.features, dtype=self.dtype, name=f"attribute_{i}")(idx)
                out = out + jnp.where(valid[..., None], emb, jnp.nan)
        if self.num_covariates:
            if cond is None or cond.covariates is None:
                cov = jnp.zeros((*batch_shape, self.num_covariates), jnp.float32)
                mask = jnp.zeros(cov.shape, bool)
            else:
                cov = jnp.asarray(cond.covariates, jnp.float32)
                mask = jnp.ones(cov.shape, bool) if cond.covariate_mask is None else jnp.asarray(cond.covariate_mask)
            feats = jnp.concatenate([jnp.where(mask, cov, 0.0), mask.astype(cov.dtype)], axis=-1)
            out = out + nn.Dense(self.features, dtype=self.dtype, name="covariates")(feats)
        return out


class FieldNet(nn.Module):
    """A time- and condition-dependent vector field ``F(x, t, cond) -> R^d`` (score, noise, x0 or velocity,
    depending on how it is trained; see :mod:`genjax._score`).

    ``emb = MLP(SinusoidalEmbedding(t)) + ConditionEmbedding(cond)`` (width ``hidden``); the trunk is a
    :class:`ResMLP` (``residual=True``) that adds ``emb`` at its input and, with ``film``, modulates every block
    with it, or a plain :class:`MLP` on ``[x, emb]``.

    Attributes:
        hidden: hidden width.
        num_blocks: residual blocks (or hidden layers of the plain MLP).
        time_features: size of the sinusoidal time features.
        time_scale: multiplies ``t`` before the sinusoids.
        num_classes: categories per conditioning attribute (empty: no categorical conditioning).
        num_covariates: continuous covariates (0: none).
        residual: residual trunk (else plain MLP).
        film: FiLM the embedding into each residual block.
        norm: LayerNorm in the residual blocks.
        activation: nonlinearity.
        zero_output: zero-initialise the output layer.
        dtype: computation dtype (e.g. ``jnp.bfloat16`` on accelerators); parameters stay float32.

    ``__call__(x, t, cond=None)``: ``x: (n, d)``, ``t: (n,)``, ``cond`` a :class:`Condition` with leading ``n``
    or ``None`` (unconditional: the null tokens) -> ``(n, d)`` in ``x``'s dtype.
    """

    hidden: int = 256
    num_blocks: int = 4
    time_features: int = 64
    time_scale: float = 1000.0
    num_classes: Sequence[int] = ()
    num_covariates: int = 0
    residual: bool = True
    film: bool = True
    norm: bool = True
    activation: Callable[[Array], Array] = nn.silu
    zero_output: bool = False
    dtype: Any = None

    @property
    def conditional(self) -> bool:
        """Whether the network has conditioning slots."""
        return bool(self.num_classes) or self.num_covariates > 0

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Condition | None = None) -> Array:
        if cond is not None and not self.conditional:
            raise ValueError("cond was given to an unconditional network (num_classes=() and num_covariates=0)")
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
        temb = SinusoidalEmbedding(self.time_features, self.time_scale)(t)
        emb = MLP((self.hidden, self.hidden), self.activation, dtype=self.dtype, name="time_mlp")(temb)
        if self.conditional:
            emb = emb + ConditionEmbedding(
                self.num_classes, self.num_covariates, self.hidden, self.dtype, name="cond_embedding"
            )(cond, x.shape[:-1])
        d = x.shape[-1]
        if self.residual:
            out = ResMLP(
                self.hidden, self.num_blocks, d, self.activation, self.norm, self.film, self.zero_output, self.dtype,
                name="trunk",
            )(x, emb)
        else:
            h = jnp.concatenate([x, emb.astype(x.dtype)], axis=-1)
            out = MLP((self.hidden,) * self.num_blocks + (d,), self.activation, dtype=self.dtype, name="trunk")(h)
        return out.astype(x.dtype)
