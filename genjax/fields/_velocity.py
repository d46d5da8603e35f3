"""A trained velocity network as a field: :class:`VelocityField`, ``dx/dt = v(x, t, cond)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp

from .._typing import Array, Params
from ._base import AbstractField

__all__ = ["VelocityField"]


class VelocityField(AbstractField):
    """A trained network as a batched velocity field ``v(x, t, cond=None) -> (n, d)`` for the samplers.

    A pytree: ``params`` are traced leaves and ``apply_fn`` static, so jitted samplers called with new parameters
    (more training, a reloaded model) do not recompile.

    Arguments:
        apply_fn: ``apply_fn(params, x, t, cond) -> (n, d)``, e.g. ``genjax.nn.FieldNet(...).apply`` (hashable).
        params: network parameters.
    """

    apply_fn: Callable[..., Array] = eqx.field(static=True)
    params: Params

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        """Velocity ``dx/dt``: ``x: (n, d)``, ``t: (n,)`` (or scalar) -> ``(n, d)``."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
        return self.apply_fn(self.params, x, t, cond)
