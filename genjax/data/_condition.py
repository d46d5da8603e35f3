"""Conditions of cells and points: categorical attributes (with a null token) and masked continuous covariates.

A :class:`Condition` is the one conditioning type of the library: the count VAE reads a cell's category codes and
standardised covariates from it, and the score and velocity networks read the same fields (with the null token
that classifier-free guidance trains and evaluates; see :mod:`genjax.nn`). :func:`check_condition` validates one
against the sizes of a model's condition slots on the host, before any compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .._typing import Array, Bool, Float, Int

__all__ = ["NULL_LABEL", "Condition", "check_condition"]


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
