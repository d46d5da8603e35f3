"""One optimizer step as a pure function, and the jitted scans that run several of them per dispatch.

* ``loss_fn(params, batch, key, step) -> (loss, aux)``: a pure function supplied by the model. ``batch`` is a
  pytree of arrays with leading axis ``batch_size``, ``key`` a fresh PRNG key for this step, ``step`` the int32
  number of optimizer steps taken so far (for warm-up schedules), ``aux`` a dict of scalar diagnostics.
* :func:`make_train_step`: one optimizer step ``(state, batch) -> (state, metrics)``, pure and device-agnostic:
  with ``axis_name`` set it averages gradients with ``lax.pmean`` and is ready for ``pmap``.
* :func:`make_chunk_runner`: a jitted ``lax.scan`` of several steps per dispatch. Batches are gathered inside the
  scan from a *payload* by an index array of shape ``(steps, batch_size)``: for data held on device the payload
  is the whole data set (no host round trip per step), for host data (:class:`~genjax.data.HostSource`, e.g.
  scipy CSR) the payload is one densified chunk of rows.
* :func:`make_evaluator`: the jitted validation pass.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from .._typing import EvalFn, LossFn
from ._distributed import DATA_AXIS
from ._state import TrainState

__all__ = ["make_train_step", "make_chunk_runner", "make_evaluator", "gather_batch", "keep_if"]


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    ema_decay: float | None = None, axis_name: str | None = None, guard: bool = True):
    """One optimizer step as a pure function ``step(state, batch) -> (state, metrics)``.

    Arguments:
        loss_fn: ``loss_fn(params, batch, key, step) -> (loss, aux)`` with a scalar loss to minimise.
        optimizer: optax transformation (its ``update`` receives the params, for weight decay).
        ema_decay: EMA decay (warmed up as ``min(ema_decay, (1 + s) / (10 + s))`` at step ``s``); the state must
            have been created with ``ema=True``.
        axis_name: when the step runs under ``pmap`` / ``shard_map`` over this axis, the per-device key is
            ``fold_in(step_key, axis_index)`` and gradients, loss and aux are averaged with ``lax.pmean``.
        guard: when the loss or any gradient is not finite, return the state unchanged (the step counter too)
            instead of stepping into NaN; ``metrics["nonfinite"]`` is then 1 (0 otherwise). The check is one
            reduction over the gradients; the select fuses into the optimizer update.

    Returns:
        ``step``; ``metrics`` is ``{"loss": loss, **aux}`` (plus ``"nonfinite"`` with ``guard``).
    """

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key, state.step)
        metrics = {"loss": loss, **aux}
        if axis_name is not None:
            grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema_decay is not None:
            s = state.step.astype(jnp.float32)
            decay = jnp.minimum(ema_decay, (1.0 + s) / (10.0 + s))
            ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        new = TrainState(state.step + 1, params, opt_state, ema, state.key)
        if not guard:
            return new, metrics
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(optax.tree.norm(grads))
        return keep_if(finite, new, state), {**metrics, "nonfinite": (~finite).astype(jnp.float32)}

    return step


def keep_if(ok, new: TrainState, old: TrainState) -> TrainState:
    """``new`` where the scalar ``ok`` holds, else ``old`` (leafwise selects; the PRNG key is the same in both)."""
    return TrainState(*(jax.tree.map(lambda a, b: jnp.where(ok, a, b), n, o) if name != "key" else n
                        for name, n, o in zip(TrainState._fields, new, old, strict=True)))


def gather_batch(payload, idx):
    """Batch ``payload[idx]`` of every leaf of a pytree (rows ``idx`` of the leading examples axis)."""
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), payload)


def make_chunk_runner(step, *, mesh: Mesh | None = None, payload_sharded: bool = False,
                      halt: bool = False) -> Callable:
    """Compiled ``run(state, payload, idx) -> (state, metrics)`` scanning ``step`` over ``idx.shape[0]`` batches.

    ``payload`` is a pytree of arrays with a leading examples axis; batch ``i`` is ``payload[idx[i]]``, so
    ``idx`` is int32 of shape ``(steps, batch_size)``. ``metrics`` has a leading ``steps`` axis.

    With ``halt`` (for a guarded ``step``, see :func:`make_train_step`) the runner is ``run(state, payload, idx,
    halted) -> (state, halted, metrics)``: ``halted`` is a boolean scalar carried from dispatch to dispatch that
    turns true at the first step with ``metrics["nonfinite"]`` and then keeps every later step from changing the
    state, so the state stays at the last finite step until the host reads the flag.

    With a ``mesh`` (1-D, axis :data:`DATA_AXIS`) the scan runs data parallel under ``jax.shard_map`` (what
    ``jax.pmap`` itself lowers to since JAX 0.8): ``step`` must have been made with
    ``axis_name=DATA_AXIS``; ``state`` is replicated, ``idx`` is sharded along its batch axis (each device
    gathers its own shard of every batch) and ``payload`` is replicated (device-resident data) or, with
    ``payload_sharded``, sharded along its examples axis (per-device host chunks).
    """

    def run(state, payload, idx):
        return jax.lax.scan(lambda st, ix: step(st, gather_batch(payload, ix)), state, idx)

    def run_halting(state, payload, idx, halted):
        def body(carry, ix):
            st, stopped = carry
            new, metrics = step(st, gather_batch(payload, ix))
            stopped = stopped | (metrics["nonfinite"] > 0)
            return (keep_if(~stopped, new, st), stopped), metrics

        (state, halted), metrics = jax.lax.scan(body, (state, halted), idx)
        return state, halted, metrics

    fn = run_halting if halt else run
    if mesh is None:
        return jax.jit(fn)
    specs = (P(), P(DATA_AXIS) if payload_sharded else P(), P(None, DATA_AXIS)) + ((P(),) if halt else ())
    out_specs = (P(), P(), P()) if halt else (P(), P())
    # check_vma=False gives pmap semantics: each device differentiates w.r.t. its own copy of the replicated
    # parameters and the step averages those gradients with lax.pmean (with varying-manual-axes checking on,
    # JAX would already psum gradients of replicated inputs and the pmean would double count).
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=out_specs, check_vma=False))


def make_evaluator(eval_fn: EvalFn) -> Callable:
    """Jitted ``evaluate(params, payload, idx, key, start) -> (sum of per-batch losses, sum of aux)`` over
    ``idx``; batch ``i`` uses ``fold_in(key, start + i)``, so evaluating in chunks gives the same values."""

    def evaluate(params, payload, idx, key, start):
        def body(carry, xs):
            i, ix = xs
            loss, aux = eval_fn(params, gather_batch(payload, ix), jax.random.fold_in(key, start + i))
            out = {"loss": loss, **aux}
            return jax.tree.map(jnp.add, carry, out), None

        def first():
            loss, aux = eval_fn(params, gather_batch(payload, idx[0]), key)
            return {"loss": loss, **aux}

        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(first))
        total, _ = jax.lax.scan(body, zero, (jnp.arange(idx.shape[0]), idx))
        return total

    return jax.jit(evaluate)
