"""The training state: everything needed to continue a run bit-for-bit, as one pytree."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._typing import Array, Params, PRNGKeyArray

__all__ = ["TrainState", "init_train_state"]


class TrainState(NamedTuple):
    """Everything needed to continue training bit-for-bit (a pytree).

    Fields:
        step: int32 scalar, optimizer steps taken.
        params: model parameters (pytree of float arrays).
        opt_state: optax optimizer state.
        ema_params: exponential moving average of ``params`` (same structure), or ``None`` without EMA.
        key: typed PRNG key; step ``s`` uses ``jax.random.fold_in(key, s)``.
    """

    step: Array
    params: Params
    opt_state: Any
    ema_params: Params | None
    key: PRNGKeyArray

    def to_tree(self) -> dict:
        """A checkpointable dict (the PRNG key as raw uint32 data; no ``None`` leaves)."""
        tree = {"step": self.step, "params": self.params, "opt_state": self.opt_state,
                "key": jax.random.key_data(self.key)}
        if self.ema_params is not None:
            tree["ema_params"] = self.ema_params
        return tree

    @classmethod
    def from_tree(cls, tree: dict) -> TrainState:
        """Inverse of :meth:`to_tree`."""
        return cls(jnp.asarray(tree["step"], jnp.int32), tree["params"], tree["opt_state"],
                   tree.get("ema_params"), jax.random.wrap_key_data(jnp.asarray(tree["key"])))


def init_train_state(params: Params, optimizer: optax.GradientTransformation, key: PRNGKeyArray,
                     *, ema: bool = False) -> TrainState:
    """A fresh :class:`TrainState` (step 0; EMA initialised to ``params`` when ``ema``)."""
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                      jax.tree.map(jnp.copy, params) if ema else None, key)
