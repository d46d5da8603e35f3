"""The training loop shared by every genjax model (VAE, score model, flow model).

The pieces, from the inside out:

* ``loss_fn(params, batch, key, step) -> (loss, aux)``: a pure function supplied by the model. ``batch`` is a
  pytree of arrays with leading axis ``batch_size``, ``key`` a fresh PRNG key for this step, ``step`` the int32
  number of optimizer steps taken so far (for warm-up schedules), ``aux`` a dict of scalar diagnostics.
* :func:`make_train_step`: one optimizer step ``(state, batch) -> (state, metrics)``, pure and device-agnostic:
  with ``axis_name`` set it averages gradients with ``lax.pmean`` and is ready for ``pmap``.
* :func:`make_chunk_runner`: a jitted ``lax.scan`` of several steps per dispatch. Batches are gathered inside the
  scan from a *payload* by an index array of shape ``(steps, batch_size)``: for data held on device the payload
  is the whole data set (no host round trip per step), for host data (:class:`HostSource`, e.g. scipy CSR) the
  payload is one densified chunk of rows.
* :func:`fit`: epochs, a deterministic data order (a permutation per epoch from the seed), validation, early
  stopping, EMA, a tqdm progress bar, history, orbax checkpoints (periodic and best) and exact resume.

Reproducibility: the per-step key is ``fold_in(state.key, state.step)`` and the data order of epoch ``e`` is a
permutation drawn from ``fold_in(data_key, e)``, so a run is a deterministic function of ``seed``; a resumed run
continues with exactly the keys and batches the uninterrupted run would have used.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from ._checkpoint import CheckpointManager
from ._feed import DATA_AXIS, Feeder, HostSource, first_replica, num_examples, place, split_indices
from .._typing import Array, Params, PRNGKeyArray

__all__ = [
    "TrainState",
    "TrainConfig",
    "FitResult",
    "HostSource",
    "init_train_state",
    "make_train_step",
    "make_chunk_runner",
    "split_indices",
    "fit",
    "DATA_AXIS",
]

LossFn = Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]
EvalFn = Callable[[Params, Any, PRNGKeyArray], tuple[Array, dict]]


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`fit`.

    Attributes:
        max_epochs: passes over the training data (an epoch is ``n_train // batch_size`` steps; the few examples
            left over are covered by the next epoch's reshuffle).
        max_steps: if set, stop after exactly this many optimizer steps (overrides ``max_epochs``).
        batch_size: examples per step. Reduced to the number of training examples if larger.
        steps_per_dispatch: optimizer steps fused into one jitted ``lax.scan`` dispatch.
        early_stopping: stop when the monitored loss has not improved by ``min_delta`` for ``patience`` epochs.
        patience, min_delta: early-stopping settings (scvi-tools defaults: 45 epochs, 0.0).
        ema_decay: if set, keep an exponential moving average of the parameters with this decay, warmed up as
            ``min(ema_decay, (1 + step) / (10 + step))`` so that early averages are not dominated by the
            initialisation (with a fixed 0.999 the weight of the initial parameters is still 0.37 after 1000
            steps).
        eval_every: validate every this many epochs (the last epoch is always validated).
        checkpoint_every: with a checkpoint directory, save every this many epochs (and at the end); a saved
            epoch whose monitored loss is the best so far also becomes the ``best/`` checkpoint.
        checkpoint_every_steps: additionally save every this many steps (at dispatch boundaries), mid-epoch.
        keep: periodic checkpoints to keep (the best one is kept separately).
        progress: show a tqdm progress bar with the running loss.
    """

    max_epochs: int = 400
    max_steps: int | None = None
    batch_size: int = 128
    steps_per_dispatch: int = 32
    early_stopping: bool = False
    patience: int = 45
    min_delta: float = 0.0
    ema_decay: float | None = None
    eval_every: int = 1
    checkpoint_every: int = 1
    checkpoint_every_steps: int | None = None
    keep: int = 3
    progress: bool = True

    def __post_init__(self):
        for name in ("max_epochs", "batch_size", "steps_per_dispatch", "patience", "eval_every",
                     "checkpoint_every", "keep"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"TrainConfig.max_steps must be >= 1, got {self.max_steps}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Fields:
        state: the final :class:`TrainState`.
        history: one dict per epoch: ``epoch``, ``step``, ``loss`` and the aux means of the training steps,
            ``val_loss`` and ``val_*`` aux when validated, ``time`` (seconds since the start).
        best_params: parameters (EMA parameters when EMA is on) at the best monitored loss.
    """

    state: TrainState
    history: list[dict]
    best_params: Params


def init_train_state(params: Params, optimizer: optax.GradientTransformation, key: PRNGKeyArray,
                     *, ema: bool = False) -> TrainState:
    """A fresh :class:`TrainState` (step 0; EMA initialised to ``params`` when ``ema``)."""
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                      jax.tree.map(jnp.copy, params) if ema else None, key)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    ema_decay: float | None = None, axis_name: str | None = None):
    """One optimizer step as a pure function ``step(state, batch) -> (state, metrics)``.

    Arguments:
        loss_fn: ``loss_fn(params, batch, key, step) -> (loss, aux)`` with a scalar loss to minimise.
        optimizer: optax transformation (its ``update`` receives the params, for weight decay).
        ema_decay: EMA decay (warmed up as ``min(ema_decay, (1 + s) / (10 + s))`` at step ``s``); the state must
            have been created with ``ema=True``.
        axis_name: when the step runs under ``pmap`` / ``shard_map`` over this axis, the per-device key is
            ``fold_in(step_key, axis_index)`` and gradients, loss and aux are averaged with ``lax.pmean``.

    Returns:
        ``step``; ``metrics`` is ``{"loss": loss, **aux}``.
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
        return TrainState(state.step + 1, params, opt_state, ema, state.key), metrics

    return step


def _take(payload, idx):
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), payload)


def make_chunk_runner(step, *, mesh: Mesh | None = None, payload_sharded: bool = False) -> Callable:
    """Compiled ``run(state, payload, idx) -> (state, metrics)`` scanning ``step`` over ``idx.shape[0]`` batches.

    ``payload`` is a pytree of arrays with a leading examples axis; batch ``i`` is ``payload[idx[i]]``, so
    ``idx`` is int32 of shape ``(steps, batch_size)``. ``metrics`` has a leading ``steps`` axis.

    With a ``mesh`` (1-D, axis :data:`DATA_AXIS`) the scan runs data parallel under ``jax.shard_map`` (what
    ``jax.pmap`` itself lowers to since JAX 0.8): ``step`` must have been made with
    ``axis_name=DATA_AXIS``; ``state`` is replicated, ``idx`` is sharded along its batch axis (each device
    gathers its own shard of every batch) and ``payload`` is replicated (device-resident data) or, with
    ``payload_sharded``, sharded along its examples axis (per-device host chunks).
    """

    def run(state, payload, idx):
        return jax.lax.scan(lambda st, ix: step(st, _take(payload, ix)), state, idx)

    if mesh is None:
        return jax.jit(run)
    specs = (P(), P(DATA_AXIS) if payload_sharded else P(), P(None, DATA_AXIS))
    # check_vma=False gives pmap semantics: each device differentiates w.r.t. its own copy of the replicated
    # parameters and the step averages those gradients with lax.pmean (with varying-manual-axes checking on,
    # JAX would already psum gradients of replicated inputs and the pmean would double count).
    return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=(P(), P()), check_vma=False))


def _make_evaluator(eval_fn: EvalFn) -> Callable:
    """Jitted ``evaluate(params, payload, idx, key, start) -> (sum of per-batch losses, sum of aux)`` over
    ``idx``; batch ``i`` uses ``fold_in(key, start + i)``, so evaluating in chunks gives the same values."""

    def evaluate(params, payload, idx, key, start):
        def body(carry, xs):
            i, ix = xs
            loss, aux = eval_fn(params, _take(payload, ix), jax.random.fold_in(key, start + i))
            out = {"loss": loss, **aux}
            return jax.tree.map(jnp.add, carry, out), None

        def first():
            loss, aux = eval_fn(params, _take(payload, idx[0]), key)
            return {"loss": loss, **aux}

        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(first))
        total, _ = jax.lax.scan(body, zero, (jnp.arange(idx.shape[0]), idx))
        return total

    return jax.jit(evaluate)


def _means(sums: dict, count: float, prefix: str = "") -> dict:
    return {prefix + k: float(v) / count for k, v in sums.items()}


def _resolve_mesh(devices) -> Mesh | None:
    """``None`` -> single device; otherwise a 1-D mesh (axis :data:`DATA_AXIS`) over the requested devices.

    ``devices`` may be ``"all"`` (every device of every process: multi-host data parallelism after
    ``jax.distributed.initialize``), an int (the first ``n`` local devices) or a sequence of devices.
    """
    if devices is None:
        return None
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be None, 'all', an int or a list of devices; got {devices!r}")
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.local_devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices} but this process has {len(available)} local devices "
                             f"({available}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                             "before importing jax")
        devices = available[:devices]
    return Mesh(np.array(list(devices)), (DATA_AXIS,))


def fit(
    loss_fn: LossFn,
    params: Params,
    data,
    *,
    optimizer: optax.GradientTransformation | None = None,
    val_data=None,
    eval_fn: EvalFn | None = None,
    config: TrainConfig | None = None,
    seed: int = 0,
    checkpoint_dir=None,
    resume: bool = False,
    devices=None,
    description: str = "train",
    **config_overrides,
) -> FitResult:
    """Train ``params`` by minimising ``loss_fn`` over minibatches of ``data``.

    Arguments:
        loss_fn: ``loss_fn(params, batch, key, step) -> (loss, aux)``; ``batch`` has the structure of ``data``
            with leading axis ``batch_size`` (the per-device shard in data-parallel runs); ``step`` is the int32
            optimizer step (for warm-up schedules); ``aux`` maps names to scalars, averaged per epoch into the
            history. The loss should be a mean over the batch so that data-parallel averaging is exact.
        params: initial parameters (pytree).
        data: a pytree of arrays with a common leading examples axis (moved to the device once; batches are
            gathered inside the jitted scan), or a :class:`HostSource` (rows fetched on the host per dispatch).
        optimizer: optax transformation, default ``optax.adam(1e-3)``.
        val_data: validation data in the same form, evaluated every ``eval_every`` epochs with ``eval_fn``.
        eval_fn: ``eval_fn(params, batch, key) -> (loss, aux)``; default ``loss_fn`` at a step past any warm-up.
            Evaluated on the EMA parameters when EMA is on.
        config: a :class:`TrainConfig`; keyword overrides (``max_epochs=...``) replace its fields.
        seed: integer seed of the whole run (parameter-independent randomness: step keys and data order).
        checkpoint_dir: if given, periodic and best checkpoints are written there (orbax, async).
        resume: continue from the newest readable checkpoint in ``checkpoint_dir`` (if there is one). The run
            then continues exactly as the uninterrupted run would have (same keys, same batches). Resuming with
            a different ``batch_size``, ``steps_per_dispatch`` or ``seed`` raises ``ValueError``.
        devices: ``None`` (one device), an int ``n`` (data parallel over the first ``n`` local devices), a list
            of devices, or ``"all"`` (every device of every process, after ``jax.distributed.initialize``). Data
            parallel runs ``pmap`` the same step: the state is replicated, each global batch is split into equal
            contiguous shards (device ``d`` of ``D`` gets rows ``d*B/D ... (d+1)*B/D - 1`` of every batch), the
            per-device key is ``fold_in(step_key, device_index)`` and gradients are averaged with ``lax.pmean``.
        description: label of the progress bar.

    Returns:
        :class:`FitResult` ``(state, history, best_params)`` (single-device arrays).

    Raises:
        ValueError: inconsistent data shapes, bad config values, ``resume`` without ``checkpoint_dir``, a global
            batch that does not divide by the device count, or a checkpoint written with incompatible settings.
    """
    config = dataclasses.replace(config or TrainConfig(), **config_overrides)
    optimizer = optimizer if optimizer is not None else optax.adam(1e-3)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")

    n_train = num_examples(data)
    batch_size = config.batch_size
    if batch_size > n_train:
        warnings.warn(f"batch_size {batch_size} > {n_train} training examples; using {n_train}", stacklevel=2)
        batch_size = n_train
    if val_data is not None:
        num_examples(val_data)
    mesh = _resolve_mesh(devices)
    n_dev = 1 if mesh is None else mesh.devices.size
    if batch_size % n_dev:
        raise ValueError(f"the global batch_size {batch_size} does not divide by the {n_dev} devices of the "
                         f"data-parallel run; use a multiple of {n_dev}")

    root = jax.random.key(seed)
    state_key, data_key, eval_key = jax.random.split(root, 3)
    train = Feeder(data, batch_size, config.steps_per_dispatch, data_key, mesh=mesh)
    val = (Feeder(val_data, min(batch_size, num_examples(val_data)), 1, data_key)
           if val_data is not None else None)
    spe = train.steps_per_epoch
    total_steps = config.max_steps if config.max_steps is not None else config.max_epochs * spe
    n_epochs = math.ceil(total_steps / spe)

    state = init_train_state(params, optimizer, state_key, ema=config.ema_decay is not None)
    step_fn = make_train_step(loss_fn, optimizer, ema_decay=config.ema_decay,
                              axis_name=None if mesh is None else DATA_AXIS)
    run_chunk = make_chunk_runner(step_fn, mesh=mesh, payload_sharded=train.host)
    if eval_fn is None:
        eval_fn = lambda p, b, k: loss_fn(p, b, k, jnp.asarray(2**30, jnp.int32))  # noqa: E731
    evaluate = _make_evaluator(eval_fn) if val is not None else None

    history: list[dict] = []
    epoch, pos = 0, 0  # next epoch to run, and its next step within the epoch
    best, best_epoch, bad_epochs = math.inf, -1, 0
    best_params = state.params if state.ema_params is None else state.ema_params
    sums: dict = {}
    elapsed0 = 0.0
    manager = None
    settings = {"batch_size": batch_size, "steps_per_dispatch": config.steps_per_dispatch, "seed": seed,
                "n_train": n_train}
    if checkpoint_dir is not None:
        manager = CheckpointManager(checkpoint_dir, keep=config.keep)
        if resume:
            restored = manager.restore_latest(state.to_tree())
            if restored is not None:
                tree, meta, _ = restored
                for k_, v_ in settings.items():
                    if meta["settings"].get(k_) != v_:
                        raise ValueError(
                            f"cannot resume from {checkpoint_dir}: it was written with {k_}="
                            f"{meta['settings'].get(k_)!r}, this run has {k_}={v_!r}")
                state = TrainState.from_tree(tree)
                epoch, pos = meta["epoch"], meta["pos"]
                history = meta["history"]
                best, best_epoch, bad_epochs = meta["best"], meta["best_epoch"], meta["bad_epochs"]
                sums = {k_: jnp.asarray(v_) for k_, v_ in meta["sums"].items()}
                elapsed0 = meta["elapsed"]
                best_restored = manager.restore_best(state.to_tree())
                if best_restored is not None:
                    bt = TrainState.from_tree(best_restored[0])
                    best_params = bt.params if bt.ema_params is None else bt.ema_params

    step_now = int(state.step)  # host mirror of state.step: no device sync per dispatch
    placed = state if mesh is None else place(state, NamedSharding(mesh, P()))
    host_state = (lambda: placed) if mesh is None else (lambda: first_replica(placed))
    to_host_metrics = (lambda m: m) if mesh is None else first_replica

    def checkpoint(is_best=False):
        meta = {"epoch": epoch, "pos": pos, "history": history, "best": best, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "settings": settings, "elapsed": elapsed0 + time.perf_counter() - t0,
                "sums": {k_: np.asarray(v_).tolist() for k_, v_ in sums.items()}}
        manager.save(step_now, host_state().to_tree(), meta, best=is_best)

    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step_now, desc=description, disable=not config.progress,
               unit="step", dynamic_ncols=True, leave=False)
    stop, best_unsaved = False, False
    try:
        while epoch < n_epochs and not stop and step_now < total_steps:
            stop_pos = min(spe, total_steps - epoch * spe)
            pending = None
            for (a, b), payload, idx in train.iterate(epoch, train.plan(pos, stop_pos)):
                placed, metrics = run_chunk(placed, payload, idx)
                chunk_sums = jax.tree.map(lambda m: jnp.sum(m, axis=0), to_host_metrics(metrics))
                sums = chunk_sums if not sums else jax.tree.map(jnp.add, sums, chunk_sums)
                if pending is not None:  # report the previous dispatch while this one runs
                    bar.update(pending[0])
                    bar.set_postfix(loss=f"{float(pending[1]):.4g}", epoch=epoch, refresh=False)
                pending = (b - a, chunk_sums["loss"] / (b - a))
                pos, step_now = b, step_now + (b - a)
                if (manager is not None and config.checkpoint_every_steps
                        and b < stop_pos and step_now % config.checkpoint_every_steps < (b - a)):
                    checkpoint()
            if pending is not None:
                bar.update(pending[0])
            record = {"epoch": epoch, "step": step_now, **_means(sums, pos)}
            sums, pos = {}, 0
            last = epoch + 1 >= n_epochs or step_now >= total_steps
            is_best = False
            current = None
            if val is not None and ((epoch + 1) % config.eval_every == 0 or last):
                current = host_state()
                eval_params = current.params if current.ema_params is None else current.ema_params
                vsums, count, n_batches = None, 0, 0
                for vpayload, vidx in val.eval_batches():
                    s = evaluate(eval_params, vpayload, vidx, jax.random.fold_in(eval_key, epoch),
                                 jnp.asarray(n_batches, jnp.int32))
                    n_batches += vidx.shape[0]
                    s = jax.tree.map(lambda v, w=vidx.shape[1]: v * w, s)  # per-batch means -> sums
                    vsums = s if vsums is None else jax.tree.map(jnp.add, vsums, s)
                    count += vidx.size
                record.update(_means(vsums, count, "val_"))
            monitored = record.get("val_loss", record["loss"])
            if "val_loss" in record or val is None:
                if monitored < best - config.min_delta:
                    best, best_epoch, bad_epochs, is_best = monitored, epoch, 0, True
                    current = current or host_state()
                    best_params = current.params if current.ema_params is None else current.ema_params
                else:
                    bad_epochs += 1
                    stop = config.early_stopping and bad_epochs >= config.patience
            record["time"] = elapsed0 + time.perf_counter() - t0
            history.append(record)
            bar.set_postfix({k_: f"{v_:.4g}" for k_, v_ in record.items() if k_ in ("loss", "val_loss")}
                            | {"epoch": epoch}, refresh=True)
            epoch += 1
            if is_best:
                best_unsaved = True
            if manager is not None and ((epoch % config.checkpoint_every == 0) or last or stop):
                # the best checkpoint is the best among saved epochs (no extra saves on every improvement)
                checkpoint(best_unsaved and is_best)
                best_unsaved = False
    finally:
        bar.close()
        train.close()
        if manager is not None:
            manager.close()
    return FitResult(host_state(), history, best_params)
