"""Classifier-free guidance (Ho & Salimans 2022) for score and velocity fields alike.

A conditional network trained with condition dropout (:func:`genjax.nn.drop_condition`) is at once the
conditional field ``f(x, t, c)`` and, fed the null tokens, the unconditional one ``f(x, t, null)``. Guidance
samples from the field

    ``f_null + w (f_c - f_null)``                              (one weight for the whole condition), or
    ``f_null + sum_g w_g (f_{c_g} - f_null)``                  (compositional: one weight per group),

where ``f_{c_g}`` sees only group ``g`` of the condition and the null token elsewhere (Liu et al. 2022,
"Compositional Visual Generation with Composable Diffusion Models"; the form CFGen uses for several single-cell
attributes). The groups are the categorical attributes (one column of ``cond.labels`` each) followed, when the
condition has covariates, by one group holding all the covariates.

``w = 0`` is the unconditional field, ``w = 1`` the plain conditional one, ``w > 1`` sharpens toward the
condition. The combination is linear in the field, so it applies unchanged to a score (diffusion: ``s_null + w
(s_c - s_null)``, the same as guiding the noise prediction), to a velocity (flow matching), and to anything the
samplers accept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .. import nn as gnn
from .._typing import Array
from ._base import AbstractField

__all__ = ["GuidedField", "guided_field", "guidance_groups"]


def guidance_groups(cond: gnn.Condition) -> int:
    """Number of compositional guidance groups of a condition: one per categorical attribute, plus one for the
    covariates when it has any."""
    k = 0 if cond.labels is None else int(np.shape(cond.labels)[-1])
    return k + (cond.covariates is not None)


def _only_group(cond: gnn.Condition, null: gnn.Condition, g: int) -> gnn.Condition:
    """``cond`` with every group but ``g`` replaced by its null token."""
    k = 0 if cond.labels is None else cond.labels.shape[-1]
    if g < k:
        return null._replace(labels=null.labels.at[:, g].set(cond.labels[:, g]))
    return null._replace(covariates=cond.covariates, covariate_mask=cond.covariate_mask)


class GuidedField(AbstractField):
    """A classifier-free guided field: a batched callable ``(x, t, cond=None) -> (n, d)`` usable by every sampler
    (:func:`genjax.sample_reverse_sde`, :func:`genjax.sample_probability_flow_ode`, :func:`genjax.sample_flow`,
    the likelihoods). A pytree: the wrapped field's parameters and the weights stay traced, so a new weight does
    not recompile a jitted sampler.

    Attributes:
        field: the conditional field, e.g. a :class:`genjax.ScoreFunction` or :class:`genjax.VelocityField`.
        weights: float32 scalar (one weight) or ``(n_groups,)`` (compositional; :func:`guidance_groups`).
        compositional: whether ``weights`` has one entry per group.

    Called with ``cond=None`` (or a condition without labels and covariates) it is the plain field. Each call
    evaluates the wrapped field twice (one weight) or ``1 + n_groups`` times (compositional).
    """

    field: Callable[..., Array]
    weights: Array
    compositional: bool = eqx.field(static=True)

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        if cond is None or (cond.labels is None and cond.covariates is None):
            return self.field(x, t, cond)
        null = gnn.null_condition(cond)
        f_null = self.field(x, t, null)
        if not self.compositional:
            return f_null + self.weights * (self.field(x, t, cond) - f_null)
        groups = guidance_groups(cond)
        if self.weights.shape != (groups,):
            raise ValueError(f"GuidedField has {self.weights.shape[0]} compositional weights but the condition has "
                             f"{groups} group(s) (attributes, then covariates)")
        out = f_null
        for g in range(groups):
            out = out + self.weights[g] * (self.field(x, t, _only_group(cond, null, g)) - f_null)
        return out


def guided_field(field: Callable[..., Array], guidance: float | Sequence[float], *,
                 n_groups: int | None = None) -> GuidedField:
    """Wrap a conditional field with classifier-free guidance.

    Arguments:
        field: batched conditional field ``field(x, t, cond) -> (n, d)`` trained with condition dropout.
        guidance: one weight ``w`` (a Python or numpy scalar), or a sequence of one weight per group for
            compositional guidance (attributes in the order of ``cond.labels`` columns, then the covariates).
        n_groups: expected number of groups (checked against a sequence of weights when given).

    Returns:
        a :class:`GuidedField`.

    Raises:
        ValueError: non-finite weights, or a sequence whose length is not ``n_groups``.
    """
    weights = np.asarray(guidance, np.float32)
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"guidance weights must be finite; got {guidance!r}")
    if weights.ndim == 0:
        return GuidedField(field, jnp.asarray(weights), False)
    if weights.ndim != 1 or (n_groups is not None and weights.shape[0] != n_groups):
        raise ValueError(f"compositional guidance needs one weight per condition group ({n_groups}); got "
                         f"{list(np.atleast_1d(weights))}")
    return GuidedField(field, jnp.asarray(weights), True)
