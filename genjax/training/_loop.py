"""The training loop shared by every genjax model (VAE, score model, flow model).

:func:`fit` runs the jitted steps of :mod:`genjax.training._step` over epochs, a deterministic data order (a permutation per epoch from the seed), validation, early
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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from .._typing import EvalFn, LossFn, Params
from ..data import num_examples
from ._checkpoint import CheckpointManager
from ._config import FitResult, TrainConfig
from ._distributed import DATA_AXIS, first_replica, place, resolve_mesh
from ._feed import Feeder
from ._state import TrainState, init_train_state
from ._step import make_chunk_runner, make_evaluator, make_train_step

__all__ = ["fit"]


def _means(sums: dict, count: float, prefix: str = "") -> dict:
    return {prefix + k: float(v) / count for k, v in sums.items()}


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
    mesh = resolve_mesh(devices)
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
    evaluate = make_evaluator(eval_fn) if val is not None else None

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
