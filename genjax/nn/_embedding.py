"""Embedding of a :class:`~genjax.nn.Condition`: one learned table per categorical attribute (with a null
row) plus a dense map of the masked continuous covariates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .._typing import Array
from ..data import NULL_LABEL, Condition

__all__ = ["ConditionEmbedding"]


class ConditionEmbedding(nn.Module):
    """Embedding of a :class:`Condition`: a sum of one learned table per categorical attribute (``n_categories[i]
    + 1`` rows, the last one the null token) and a dense map of the masked covariates ``[mask * x, mask]``.

    Attributes:
        n_categories: number of categories of each attribute (e.g. ``(n_cell_types, n_perturbations)``).
        n_continuous: number of continuous covariates.
        features: output size.

    ``__call__(cond, batch_shape)``: ``cond`` a :class:`Condition` or ``None`` (all null) -> ``batch_shape +
    (features,)``. Rows with a label outside ``[-1, n_categories[i])`` come out as NaN (validate on the host
    with :func:`check_condition`).
    """

    n_categories: Sequence[int] = ()
    n_continuous: int = 0
    features: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, cond: Condition | None, batch_shape: tuple[int, ...]) -> Array:
        out = jnp.zeros((*batch_shape, self.features), self.dtype or jnp.float32)
        if self.n_categories:
            labels = (
                jnp.full((*batch_shape, len(self.n_categories)), NULL_LABEL, jnp.int32)
                if cond is None or cond.labels is None
                else jnp.asarray(cond.labels)
            )
            for i, k in enumerate(self.n_categories):
                lab = labels[..., i]
                valid = (lab >= NULL_LABEL) & (lab < k)
                idx = jnp.where(lab == NULL_LABEL, k, jnp.clip(lab, 0, k - 1))
                emb = nn.Embed(k + 1, self.features, dtype=self.dtype, name=f"attribute_{i}")(idx)
                out = out + jnp.where(valid[..., None], emb, jnp.nan)
        if self.n_continuous:
            if cond is None or cond.covariates is None:
                cov = jnp.zeros((*batch_shape, self.n_continuous), jnp.float32)
                mask = jnp.zeros(cov.shape, bool)
            else:
                cov = jnp.asarray(cond.covariates, jnp.float32)
                mask = jnp.ones(cov.shape, bool) if cond.covariate_mask is None else jnp.asarray(cond.covariate_mask)
            feats = jnp.concatenate([jnp.where(mask, cov, 0.0), mask.astype(cov.dtype)], axis=-1)
            out = out + nn.Dense(self.features, dtype=self.dtype, name="covariates")(feats)
        return out
