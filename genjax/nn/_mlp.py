"""Dense trunks: :class:`MLP`, and the residual :class:`ResMLP` whose blocks take a conditioning embedding
through :class:`FiLM` (Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer"),
zero-initialised so that a fresh block is the identity map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .._typing import Array, Norm

__all__ = ["MLP", "FiLM", "ResidualBlock", "ResMLP", "Covariates", "CovariateMLP", "dropout_threshold"]


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
        norm: ``"layer"``: apply LayerNorm first; ``"none"``.
        film: modulate with the embedding ``c`` (ignored when ``c`` is ``None``).
        dtype: computation dtype.

    ``__call__(h, c=None)``: ``h: (..., features)`` -> same shape.
    """

    activation: Callable[[Array], Array] = nn.silu
    norm: Norm = "layer"
    film: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, c: Array | None = None) -> Array:
        y = nn.LayerNorm(dtype=self.dtype)(h) if self.norm == "layer" else h
        if self.film and c is not None:
            y = FiLM(self.activation, self.dtype)(y, c)
        y = nn.Dense(h.shape[-1], dtype=self.dtype)(self.activation(y))
        return h + y


class ResMLP(nn.Module):
    """Residual MLP ``out(act(blocks(Dense(x) + c)))`` with the embedding ``c`` added at the input and FiLM'd
    into every block.

    Attributes:
        features: hidden width.
        n_layers: number of :class:`ResidualBlock`.
        out_features: output size.
        activation, norm, film, dtype: as :class:`ResidualBlock`.
        zero_output: zero-initialise the output layer (the network starts at 0).

    ``__call__(x, c=None)``: ``x: (..., in)``, ``c: (..., features)`` or ``None`` -> ``(..., out_features)``.
    """

    features: int = 256
    n_layers: int = 4
    out_features: int = 1
    activation: Callable[[Array], Array] = nn.silu
    norm: Norm = "layer"
    film: bool = True
    zero_output: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, c: Array | None = None) -> Array:
        h = nn.Dense(self.features, dtype=self.dtype)(x)
        if c is not None:
            h = h + c
        for _ in range(self.n_layers):
            h = ResidualBlock(self.activation, self.norm, self.film, self.dtype)(h, c)
        if self.norm == "layer":
            h = nn.LayerNorm(dtype=self.dtype)(h)
        init = nn.initializers.zeros if self.zero_output else nn.initializers.lecun_normal()
        return nn.Dense(self.out_features, kernel_init=init, dtype=self.dtype)(self.activation(h))


def dropout_threshold(rate: float) -> int:
    """Dropout drops a unit when its 16-bit draw is below this (rate quantised to 2^-16)."""
    return int(round(rate * 65536))


class Covariates(nn.Module):
    """Additive condition contribution ``sum_j E_j[labels_j] + W covariates`` to a hidden layer of width ``features``
    (``labels``: int32 ``(cells, n_conditions)`` category codes; ``covariates``: ``(cells, n_continuous)``).

    Identical to a linear layer on the one-hot encoded conditions concatenated with the continuous covariates.
    """

    features: int
    n_categories: tuple[int, ...]
    n_continuous: int
    fan_in: int
    dtype: Any = None

    @nn.compact
    def __call__(self, labels, covariates):
        init = nn.initializers.normal(1.0 / math.sqrt(self.fan_in))
        out = 0.0
        for j, n_cat in enumerate(self.n_categories):
            out = out + nn.Embed(n_cat, self.features, embedding_init=init, dtype=self.dtype,
                                 name=f"cat_{j}")(labels[:, j])
        if self.n_continuous:
            out = out + nn.Dense(self.features, use_bias=False, kernel_init=init, dtype=self.dtype,
                                 name="cont")(covariates)
        return out


class CovariateMLP(nn.Module):
    """scvi-tools' ``FCLayers``: (Dense [+ covariates] -> norm -> ReLU -> dropout) x ``n_layers``, the trunk of
    the count VAE's encoders and decoder.

    Attributes:
        n_hidden: width of every hidden layer. n_layers: number of layers.
        dropout: dropout rate (applied when ``drop_bits`` are given).
        norm: ``"layer"`` (LayerNorm without affine parameters) or ``"none"``.
        n_categories: categories of each categorical condition (column order of ``labels``).
        n_continuous: number of continuous covariates (columns of ``covariates``).
        inject_all_layers: add the covariates to every layer, not only the first.
        dtype: computation dtype of the dense layers.

    ``__call__(h, labels, covariates, drop_bits=None)``: ``h: (cells, in)``, ``labels: (cells, n_conditions)``
    int32, ``covariates: (cells, n_continuous)`` -> ``(cells, n_hidden)``; ``drop_bits``: 16-bit draws
    ``(cells, n_layers * n_hidden)`` for dropout, or ``None`` (no dropout).
    """

    n_hidden: int
    n_layers: int
    dropout: float
    norm: Norm
    n_categories: tuple[int, ...]
    n_continuous: int
    inject_all_layers: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, h, labels, covariates, drop_bits=None):
        has_cov = bool(self.n_categories) or self.n_continuous > 0
        for i in range(self.n_layers):
            fan_in = h.shape[-1] + sum(self.n_categories) + self.n_continuous
            y = nn.Dense(self.n_hidden, dtype=self.dtype, name=f"dense_{i}")(h)
            if has_cov and (i == 0 or self.inject_all_layers):
                y = y + Covariates(self.n_hidden, self.n_categories, self.n_continuous, fan_in, self.dtype,
                                    name=f"cov_{i}")(labels, covariates)
            if self.norm == "layer":
                y = nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, name=f"norm_{i}")(y)
            y = nn.relu(y)
            if self.dropout > 0 and drop_bits is not None:
                bits = drop_bits[:, i * self.n_hidden:(i + 1) * self.n_hidden]
                y = jnp.where(bits >= dropout_threshold(self.dropout), y / (1.0 - self.dropout), 0.0)
            h = y
        return h
