"""A trained score network as a field: :class:`ScoreFunction` converts the network's parameterisation to the
score ``grad_x log p_t(x)`` the samplers integrate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp

from .._checks import check_choice
from .._typing import Array, Parameterisation, Params
from ..diffusion import AbstractSDE, convert_output
from ._base import AbstractField

__all__ = ["ScoreFunction"]


class ScoreFunction(AbstractField):
    """A trained network as a batched score function ``score_fn(x, t, cond=None) -> (n, d)`` for the samplers.

    A pytree: ``params`` are traced leaves and ``apply_fn`` / ``parameterisation`` static, so jitted samplers
    called with new parameters (e.g. after more training) do not recompile.

    Arguments:
        apply_fn: ``apply_fn(params, x, t, cond) -> (n, d)``, e.g. ``genjax.nn.FieldNet(...).apply`` (hashable).
        params: network parameters.
        sde: the forward SDE the network was trained for.
        parameterisation: what the network outputs (:data:`genjax.diffusion.PARAMETERISATIONS`).
    """

    apply_fn: Callable[..., Array] = eqx.field(static=True)
    params: Params
    sde: AbstractSDE
    parameterisation: Parameterisation = eqx.field(static=True, default="eps")

    def __check_init__(self):
        check_choice("parameterisation", self.parameterisation, Parameterisation)

    def output(self, x: Array, t: Array, cond: Any = None, *, as_: str | None = None) -> Array:
        """The network's prediction at ``(x, t)``, in its own parameterisation or converted to ``as_``.

        Arguments:
            x: ``(n, d)``; t: ``(n,)``; cond: a :class:`genjax.nn.Condition` or ``None``.
            as_: a name from :data:`genjax.diffusion.PARAMETERISATIONS` (default: the network's own).

        Returns:
            ``(n, d)`` float32.
        """
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
        out = self.apply_fn(self.params, x, t, cond)
        if as_ is None:
            return out
        return convert_output(out, x, t, self.sde, self.parameterisation, as_)

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        """Score ``grad_x log p_t(x)``: ``x: (n, d)``, ``t: (n,)`` -> ``(n, d)``."""
        return self.output(x, t, cond, as_="score")
