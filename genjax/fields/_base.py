"""The contract between models and solvers: a batched vector field ``f(x, t, cond=None) -> (n, d)``.

What the solvers integrate is always such a field (diffrax's solvers all consume an ``AbstractTerm`` the same
way): the score of a diffusion (:class:`~genjax.ScoreFunction`), the velocity of a flow-matching model
(:class:`~genjax.VelocityField`), a diffusion's probability-flow velocity (:class:`~genjax.ProbabilityFlow`) or
a classifier-free guided combination of any of them (:class:`~genjax.GuidedField`). Each is an ``equinox``
module, i.e. a pytree whose network parameters stay traced, so jitted samplers reuse their compilation when
the parameters or the guidance weights change. Plain Python functions with the same signature work too.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx

from .._typing import Array

__all__ = ["AbstractField"]


class AbstractField(eqx.Module):
    """A batched field ``f(x, t, cond=None)``: ``x: (n, d)``, ``t: (n,)`` (or a scalar), ``cond`` a
    :class:`genjax.nn.Condition` with leading size ``n`` or ``None`` (unconditional) -> ``(n, d)``."""

    @abc.abstractmethod
    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        """The field at ``(x, t)``, ``(n, d)``."""
