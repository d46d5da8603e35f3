"""Conditions of field networks: categorical attributes with a null token, and masked continuous covariates.

One conditioning interface for score and velocity models: several categorical attributes (tissue, cell type,
perturbation, ...), each with a null token, plus continuous covariates with a presence mask. The null token is
what classifier-free guidance trains with condition dropout (:func:`drop_condition`) and evaluates as the
unconditional branch (:func:`null_condition`). Fields are called with the library convention :func:`call_field`:
``f(x, t)`` unconditionally, ``f(x, t, cond)`` with a condition.

Shapes: ``x: (n, d)``, ``t: (n,)``; a :class:`Condition` holds arrays with the same leading ``n``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, Bool, Float, Int, PRNGKeyArray

__all__ = ["NULL_LABEL", "Condition", "null_condition", "drop_condition", "check_condition", "call_field",
           "call_score", "split_field_batch"]


NULL_LABEL = -1
"""Label value of the null token of every categorical attribute (unknown, or dropped for guidance)."""


class Condition(NamedTuple):
    """Conditioning information for a batch of ``n`` points (a pytree; ``None`` fields are absent).

    Fields:
        labels: int32 ``(n, n_attributes)``: category index of each categorical attribute, in
            ``[0, n_categories[i])``, or :data:`NULL_LABEL` (``-1``) for the null token (unknown / dropped).
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


def check_condition(cond: Condition | None, n: int, n_categories: Sequence[int], n_continuous: int) -> None:
    """Host-side validation of a condition against a network's attribute sizes (call before jitted code).

    Arguments:
        cond: a :class:`Condition` or ``None``.
        n: expected leading size (number of points).
        n_categories: number of categories of each attribute.
        n_continuous: number of continuous covariates.

    Raises:
        ValueError: naming the field, shape, attribute and offending value when ``cond`` does not fit.
    """
    if cond is None:
        return
    if not isinstance(cond, Condition):
        raise ValueError(f"cond must be a genjax.nn.Condition or None; got {type(cond).__name__}")
    if cond.labels is not None:
        labels = np.asarray(cond.labels)  # host-side checks in numpy: no device round trips or compiles
        if labels.shape != (n, len(n_categories)):
            raise ValueError(f"cond.labels must have shape (n, n_attributes) = {(n, len(n_categories))}; got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"cond.labels must be integers; got dtype {labels.dtype}")
        for i, k in enumerate(n_categories):
            col = labels[:, i]
            bad = (col < NULL_LABEL) | (col >= k)
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(
                    f"cond.labels[{j}, {i}] = {int(col[j])} is out of range for attribute {i} with {k} classes "
                    f"(valid: 0..{k - 1}, or {NULL_LABEL} for the null token)"
                )
    elif len(n_categories):
        raise ValueError(f"cond.labels is None but the network has {len(n_categories)} categorical attribute(s)")
    if cond.covariates is not None:
        cov = np.asarray(cond.covariates)
        if cov.shape != (n, n_continuous):
            raise ValueError(f"cond.covariates must have shape (n, n_covariates) = {(n, n_continuous)}; got {cov.shape}")
        finite = np.isfinite(cov).all(axis=-1)
        if not finite.all():
            j = int(np.argmin(finite))
            raise ValueError(f"cond.covariates has a non-finite value in row {j}; mark absent values in covariate_mask")
        if cond.covariate_mask is not None and np.shape(cond.covariate_mask) != cov.shape:
            raise ValueError(f"cond.covariate_mask must have the shape of covariates {cov.shape}; got {np.shape(cond.covariate_mask)}")
    elif n_continuous:
        raise ValueError(f"cond.covariates is None but the network has {n_continuous} covariate(s)")


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
