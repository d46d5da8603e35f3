"""Frozen parameters: an optax transformation that applies updates only where a boolean mask allows, leaving the
other entries bit-identical (query mapping, fine-tuning part of a model)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._typing import Params

__all__ = ["zero_frozen_updates"]


def zero_frozen_updates(trainable: Params) -> optax.GradientTransformation:
    """An optax transformation that lets updates through where ``trainable`` is True and makes them ``-0.0``
    elsewhere; chain it last (``optax.chain(optax.adam(lr), zero_frozen_updates(mask))``).

    ``-0.0`` rather than ``0.0``: ``p + (-0.0)`` is ``p`` bit for bit for every float, including ``p = -0.0``
    (``-0.0 + 0.0`` would give ``+0.0``), so :func:`optax.apply_updates` leaves frozen entries bit-identical.
    Optimizer state (Adam moments) is still kept for every entry; only the applied update is masked.

    Arguments:
        trainable: a pytree with the structure of the parameters whose leaves are booleans or boolean arrays
            broadcastable to the parameter's shape (element-wise masks: e.g. only some rows of a table).

    Returns:
        An ``optax.GradientTransformation`` with an empty state.
    """
    masks = jax.tree.map(np.asarray, trainable)

    def mask_one(u, m):
        if m.all():
            return u
        if not m.any():
            return jnp.full_like(u, -0.0)
        return jnp.where(m, u, jnp.asarray(-0.0, u.dtype))

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(mask_one, updates, masks), state

    return optax.GradientTransformation(init, update)
