"""Conditions as field networks see them: the null token and condition dropout of classifier-free guidance.

A :class:`~genjax.data.Condition` holds several categorical attributes (tissue, cell type, perturbation, ...), each
with a null token, plus continuous covariates with a presence mask. The null token is what classifier-free guidance
trains with condition dropout (:func:`drop_condition`) and evaluates as the unconditional branch
(:func:`null_condition`). Fields are called with the library convention :func:`call_field`:
``f(x, t)`` unconditionally, ``f(x, t, cond)`` with a condition.

Shapes: ``x: (n, d)``, ``t: (n,)``; a :class:`Condition` holds arrays with the same leading ``n``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._typing import Array, PRNGKeyArray
from ..data import NULL_LABEL, Condition

__all__ = ["null_condition", "drop_condition", "call_field", "call_score", "split_field_batch"]


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


def call_field(field: Callable[..., Array], x: Array, t: Array, cond: Any = None) -> Array:
    """Call a batched field (score, velocity, guided, ...) with the library convention: ``field(x, t)`` when
    ``cond`` is ``None`` (unconditional), else ``field(x, t, cond)``; ``x: (n, d)``, ``t: (n,)`` -> ``(n, d)``."""
    return field(x, t) if cond is None else field(x, t, cond)


call_score = call_field
"""The earlier name of :func:`call_field`."""


def split_field_batch(batch) -> tuple[Array, Condition | None]:
    """``(x, cond)`` of a field-training batch: an array ``x: (b, d)`` (no condition) or a dict
    ``{"x": (b, d), "cond": Condition}`` (the form :func:`genjax.fit_field` trains on)."""
    if isinstance(batch, dict):
        return batch["x"], batch.get("cond")
    return batch, None
