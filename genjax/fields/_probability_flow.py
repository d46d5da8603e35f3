"""The probability-flow velocity of a diffusion (Song et al. 2021, eq. 13) as a field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from .._typing import Array
from ..diffusion import AbstractSDE
from ..nn import call_field
from ._base import AbstractField

__all__ = ["ProbabilityFlow"]


class ProbabilityFlow(AbstractField):
    """The probability-flow velocity ``v(x, t, cond) = f(t) x - g(t)^2 / 2 score(x, t, cond)`` as a batched
    callable (``x: (n, d)``, ``t: (n,)`` -> ``(n, d)``), the vector field of :func:`sample_probability_flow_ode`
    and :func:`log_likelihood`. A pytree: the parameters inside ``score_fn`` stay traced."""

    score_fn: Callable[..., Array]
    sde: AbstractSDE

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        g2 = self.sde.diffusion(t) ** 2
        return self.sde.drift(x, t) - 0.5 * jnp.asarray(g2)[..., None] * call_field(self.score_fn, x, t, cond)
