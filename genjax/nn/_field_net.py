"""The field network ``F(x, t, cond) -> (n, d)`` behind score, noise and velocity models: a time embedding
plus a condition embedding, fed additively at the input and by FiLM into every residual block."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .._checks import check_choice
from .._typing import Array, Norm
from ..data import Condition
from ._embedding import ConditionEmbedding
from ._mlp import MLP, ResMLP
from ._time import SinusoidalEmbedding

__all__ = ["FieldNet"]


class FieldNet(nn.Module):
    """A time- and condition-dependent vector field ``F(x, t, cond) -> R^d`` (score, noise, x0 or velocity,
    depending on how it is trained; see :mod:`genjax.fields`).

    ``emb = MLP(SinusoidalEmbedding(t)) + ConditionEmbedding(cond)`` (width ``n_hidden``); the trunk is a
    :class:`ResMLP` (``residual=True``) that adds ``emb`` at its input and, with ``film``, modulates every block
    with it, or a plain :class:`MLP` on ``[x, emb]``.

    Attributes:
        n_hidden: hidden width.
        n_layers: residual blocks (or hidden layers of the plain MLP).
        time_features: size of the sinusoidal time features.
        time_scale: multiplies ``t`` before the sinusoids.
        n_categories: categories per conditioning attribute (empty: no categorical conditioning).
        n_continuous: continuous covariates (0: none).
        residual: residual trunk (else plain MLP).
        film: FiLM the embedding into each residual block.
        norm: ``"layer"`` (LayerNorm in the residual blocks) or ``"none"``.
        activation: nonlinearity.
        zero_output: zero-initialise the output layer.
        dtype: computation dtype (e.g. ``jnp.bfloat16`` on accelerators); parameters stay float32.

    ``__call__(x, t, cond=None)``: ``x: (n, d)``, ``t: (n,)``, ``cond`` a :class:`Condition` with leading ``n``
    or ``None`` (unconditional: the null tokens) -> ``(n, d)`` in ``x``'s dtype.
    """

    n_hidden: int = 256
    n_layers: int = 4
    time_features: int = 64
    time_scale: float = 1000.0
    n_categories: Sequence[int] = ()
    n_continuous: int = 0
    residual: bool = True
    film: bool = True
    norm: Norm = "layer"
    activation: Callable[[Array], Array] = nn.silu
    zero_output: bool = False
    dtype: Any = None

    @property
    def conditional(self) -> bool:
        """Whether the network has conditioning slots."""
        return bool(self.n_categories) or self.n_continuous > 0

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Condition | None = None) -> Array:
        check_choice("FieldNet.norm", self.norm, Norm)
        if cond is not None and not self.conditional:
            raise ValueError("cond was given to an unconditional network (n_categories=() and n_continuous=0)")
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
        temb = SinusoidalEmbedding(self.time_features, self.time_scale)(t)
        emb = MLP((self.n_hidden, self.n_hidden), self.activation, dtype=self.dtype, name="time_mlp")(temb)
        if self.conditional:
            emb = emb + ConditionEmbedding(
                self.n_categories, self.n_continuous, self.n_hidden, self.dtype, name="cond_embedding"
            )(cond, x.shape[:-1])
        d = x.shape[-1]
        if self.residual:
            out = ResMLP(
                self.n_hidden, self.n_layers, d, self.activation, self.norm, self.film, self.zero_output, self.dtype,
                name="trunk",
            )(x, emb)
        else:
            h = jnp.concatenate([x, emb.astype(x.dtype)], axis=-1)
            out = MLP((self.n_hidden,) * self.n_layers + (d,), self.activation, dtype=self.dtype, name="trunk")(h)
        return out.astype(x.dtype)
