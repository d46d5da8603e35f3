"""The training loop shared by every genjax model (VAE, score model, flow model).

:func:`fit` runs the jitted steps of :mod:`genjax.training._step` over epochs, with a deterministic data order
(a permutation per epoch from the seed), validation, early stopping, EMA, a tqdm progress bar, history, orbax
checkpoints (periodic and best) and exact resume.

The steps of a run: :func:`_prepare` (checks, feeders, jitted functions, step budget), :func:`_start` (a fresh
state, or :meth:`_Checkpoints.restore`), then :func:`_train`: per epoch :func:`_run_epoch` (the dispatches and
mid-epoch checkpoints) and :func:`_end_epoch` (history record, :func:`_validate`, early stopping, best
parameters, epoch-end checkpoint). Between dispatches the loop's state is one immutable :class:`_Run`; the
trackers it holds (early stopping, the partial epoch's running sums, the checkpoint cadence, the progress bar)
are in :mod:`genjax.training._trackers`.

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
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._typing import EvalFn, LossFn, Params, PRNGKeyArray
from ..data import num_examples
from ._checkpoint import CheckpointManager
from ._config import FitResult, TrainConfig
from ._distributed import DATA_AXIS, first_replica, place, resolve_mesh
from ._feed import Feeder
from ._fingerprint import FingerprintMismatchError, fingerprint_diff, structure_digest
from ._state import TrainState, init_train_state
from ._step import make_chunk_runner, make_evaluator, make_train_step
from ._trackers import CheckpointCadence, EarlyStopping, PartialEpoch, ProgressBar, means

__all__ = ["fit", "TrainingDivergedError"]


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
    restart: bool = False,
    fingerprint: dict | None = None,
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
            then continues exactly as the uninterrupted run would have (same keys, same batches). The checkpoint
            must have the same fingerprint (``fingerprint`` plus the loop's own settings: ``batch_size``,
            ``steps_per_dispatch``, ``seed``, the number of examples, ``ema_decay`` and the structure of the
            parameters and optimizer state); otherwise :class:`FingerprintMismatchError` names every field that
            differs, before anything is read or written. The budget (``max_epochs`` / ``max_steps``) may differ:
            resuming with a longer one continues as an uninterrupted run of that length would.
        restart: move the checkpoints already in ``checkpoint_dir`` aside (to ``<dir>.replaced-<time>``; nothing
            is deleted) and start afresh. Without ``resume`` or ``restart``, a ``checkpoint_dir`` that holds
            checkpoints is refused, so that a new run never overwrites an earlier one.
        fingerprint: what identifies this run beyond the loop's settings (model options, optimiser settings, data
            identity, earlier stages): a flat JSON-serialisable dict stored with every checkpoint.
        devices: ``None`` (one device), an int ``n`` (data parallel over the first ``n`` local devices), a list
            of devices, or ``"all"`` (every device of every process, after ``jax.distributed.initialize``). Data
            parallel runs ``pmap`` the same step: the state is replicated, each global batch is split into equal
            contiguous shards (device ``d`` of ``D`` gets rows ``d*B/D ... (d+1)*B/D - 1`` of every batch), the
            per-device key is ``fold_in(step_key, device_index)`` and gradients are averaged with ``lax.pmean``.
        description: label of the progress bar.

    Returns:
        :class:`FitResult` ``(state, history, best_params)`` (single-device arrays).

    Raises:
        ValueError: inconsistent data shapes, bad config values, ``resume`` or ``restart`` without
            ``checkpoint_dir``, a global batch that does not divide by the device count, or a
            ``checkpoint_dir`` that holds checkpoints without ``resume`` / ``restart``.
        FingerprintMismatchError: the checkpoint to resume was written by a run with another fingerprint.
        CheckpointLockedError: another live process writes ``checkpoint_dir``.
        TrainingDivergedError: a step's loss or gradient was not finite; the run stops there, its parameters stay
            at the last finite step (``err.result`` is the :class:`FitResult` up to there) and no non-finite
            state is ever checkpointed.
    """
    config = dataclasses.replace(config or TrainConfig(), **config_overrides)
    if (resume or restart) and checkpoint_dir is None:
        raise ValueError(f"{'resume' if resume else 'restart'}=True needs a checkpoint_dir")
    if resume and restart:
        raise ValueError("resume=True and restart=True exclude each other: continue the run, or start afresh")
    setup, state = _prepare(loss_fn, params, data, val_data, optimizer, eval_fn, config, seed, devices,
                            fingerprint)
    checkpoints = _Checkpoints.open(checkpoint_dir, config, setup, resume=resume, restart=restart)
    try:
        run = _train(setup, _start(setup, state, checkpoints, resume), checkpoints, description)
    finally:
        setup.train.close()
        checkpoints.close()
    return FitResult(_host(run.placed, setup.mesh), run.history, run.best_params)


class _Setup(NamedTuple):
    """What stays fixed during a run: settings, data feeders, jitted functions, step budget."""

    config: TrainConfig
    train: Feeder
    val: Feeder | None
    mesh: Mesh | None
    run_chunk: Callable  # (placed state, payload, idx) -> (placed state, per-step metrics)
    evaluate: Callable | None  # (params, payload, idx, key, start) -> metric sums of a validation part
    eval_key: PRNGKeyArray
    total_steps: int
    n_epochs: int
    settings: dict  # the loop's own settings (checkpoint meta "settings", read by genjax <= 0.1)
    fingerprint: dict  # what a resumed run must share with the checkpoint it resumes (meta "fingerprint")


class _Run(NamedTuple):
    """The loop's state between dispatches: the device state and everything a checkpoint's meta records."""

    placed: TrainState  # on the device(s): replicated over the mesh in data-parallel runs
    step: int  # host mirror of placed.step: no device sync per dispatch
    part: PartialEpoch  # the epoch in progress: position and running metric sums
    history: list[dict]
    stopping: EarlyStopping
    best_params: Params
    elapsed: float  # seconds trained before this call (by the runs it resumes)
    stop: bool = False  # early stopping said stop
    halted: Any = None  # device bool: a step was not finite (the state stays at the last finite step)
    unchecked: Any = None  # (first step, per-step metrics) of the last dispatch, not yet checked for divergence
    last_dispatch: int = 0  # steps in the epoch's last dispatch (a step-cadence checkpoint it crossed is due)


class _Clock(NamedTuple):
    """Training seconds: those of the resumed runs plus those since ``start`` (a ``perf_counter`` time)."""

    before: float
    start: float

    def __call__(self) -> float:
        """Seconds trained so far."""
        return self.before + time.perf_counter() - self.start


def _eval_params(state: TrainState) -> Params:
    """The parameters that are validated and returned as best: the EMA ones when EMA is on."""
    return state.params if state.ema_params is None else state.ema_params


def _host(placed: TrainState, mesh: Mesh | None) -> TrainState:
    """A single-device copy of the (replicated) device state."""
    return placed if mesh is None else first_replica(placed)


def _prepare(loss_fn, params, data, val_data, optimizer, eval_fn, config, seed, devices, fingerprint):
    """Check the inputs and build the run's fixed parts (a :class:`_Setup`) and its initial :class:`TrainState`."""
    optimizer = optimizer if optimizer is not None else optax.adam(1e-3)
    n_train = num_examples(data)
    batch_size = config.batch_size
    if batch_size > n_train:  # stacklevel: the caller of fit
        warnings.warn(f"batch_size {batch_size} > {n_train} training examples; using {n_train}", stacklevel=3)
        batch_size = n_train
    if val_data is not None:
        num_examples(val_data)
    mesh = resolve_mesh(devices)
    n_dev = 1 if mesh is None else mesh.devices.size
    if batch_size % n_dev:
        raise ValueError(f"the global batch_size {batch_size} does not divide by the {n_dev} devices of the "
                         f"data-parallel run; use a multiple of {n_dev}")

    state_key, data_key, eval_key = jax.random.split(jax.random.key(seed), 3)
    train = Feeder(data, batch_size, config.steps_per_dispatch, data_key, mesh=mesh)
    val = (Feeder(val_data, min(batch_size, num_examples(val_data)), 1, data_key)
           if val_data is not None else None)
    total_steps = config.max_steps if config.max_steps is not None else config.max_epochs * train.steps_per_epoch

    state = init_train_state(params, optimizer, state_key, ema=config.ema_decay is not None)
    step_fn = make_train_step(loss_fn, optimizer, ema_decay=config.ema_decay,
                              axis_name=None if mesh is None else DATA_AXIS)
    if eval_fn is None:
        eval_fn = lambda p, b, k: loss_fn(p, b, k, jnp.asarray(2**30, jnp.int32))  # noqa: E731
    settings = {"batch_size": batch_size, "steps_per_dispatch": config.steps_per_dispatch, "seed": seed,
                "n_train": n_train}
    # what changes the steps' computation; the budget (max_epochs / max_steps) may change: a resumed run that
    # trains longer equals an uninterrupted run of the longer budget
    loop = {**settings, "ema_decay": config.ema_decay, "params_structure": structure_digest(params),
            "optimizer_state_structure": structure_digest(state.opt_state)}
    run_chunk = make_chunk_runner(step_fn, mesh=mesh, payload_sharded=train.host, halt=True)
    return _Setup(config, train, val, mesh, run_chunk, make_evaluator(eval_fn) if val is not None else None,
                  eval_key, total_steps, math.ceil(total_steps / train.steps_per_epoch), settings,
                  {**loop, **(fingerprint or {})}), state


@dataclasses.dataclass(frozen=True)
class _Checkpoints:
    """The run's checkpoints: the manager (``None`` without a ``checkpoint_dir``), when to save, what to record.

    A checkpoint's ``meta`` (JSON) records where the run stands, so that a resumed run continues bit for bit:
    ``epoch`` (the epoch in progress, or the next one after an epoch's end), ``pos`` (its next step),
    ``sums`` (the metric sums of its steps ``[0, pos)``), ``history``, ``best``, ``best_epoch``, ``bad_epochs``
    (early stopping), ``elapsed`` (training seconds), ``fingerprint`` (what a resumed run must share) and
    ``settings`` (the loop's part of it, as genjax <= 0.1 recorded it).
    """

    manager: CheckpointManager | None
    directory: Any  # as given to fit (named in errors)
    cadence: CheckpointCadence
    settings: dict
    fingerprint: dict
    mesh: Mesh | None

    @classmethod
    def open(cls, directory, config: TrainConfig, setup: _Setup, *, resume: bool, restart: bool) -> _Checkpoints:
        """Open ``directory`` (nothing when ``None``) with the cadence of ``config``; with ``restart`` its
        checkpoints are moved aside first.

        Raises:
            ValueError: ``directory`` holds checkpoints and neither ``resume`` nor ``restart`` was asked for.
        """
        manager = CheckpointManager(directory, keep=config.keep) if directory is not None else None
        if manager is not None and not resume:
            if restart:
                aside = manager.move_aside()
                if aside is not None:
                    warnings.warn(f"restart: the earlier checkpoints of {directory} were moved to {aside}",
                                  stacklevel=3)
            elif manager.has_checkpoints():
                manager.close()
                raise ValueError(f"{directory} already holds the checkpoints of a run (newest step "
                                 f"{manager.latest_step()}); pass resume=True to continue it, or restart=True (CLI "
                                 "--restart) to move them aside and start afresh")
        cadence = CheckpointCadence(config.checkpoint_every, config.checkpoint_every_steps)
        return cls(manager, directory, cadence, setup.settings, setup.fingerprint, setup.mesh)

    def save(self, run: _Run, elapsed: float, *, best: bool = False) -> None:
        """Save ``run`` as checkpoint ``run.step`` (and as the best checkpoint if ``best``)."""
        meta = {"epoch": run.part.epoch, "pos": run.part.pos, "history": run.history,
                "best": run.stopping.best, "best_epoch": run.stopping.best_epoch,
                "bad_epochs": run.stopping.bad_epochs, "settings": self.settings, "elapsed": elapsed,
                "sums": run.part.sums_to_json(), "fingerprint": self.fingerprint}
        self.manager.save(run.step, _host(run.placed, self.mesh).to_tree(), meta, best=best)

    def _accept(self, meta: dict) -> None:
        """Refuse a checkpoint written by another run (before its arrays are read).

        Raises:
            FingerprintMismatchError: naming every field that differs, and what to do.
        """
        if "fingerprint" in meta:
            diff = fingerprint_diff(meta["fingerprint"], self.fingerprint)
        else:  # written by genjax <= 0.1: only the loop's settings were recorded
            diff = fingerprint_diff({k: meta["settings"].get(k) for k in self.settings}, self.settings)
            if not diff:
                warnings.warn(f"{self.directory} was written by an earlier genjax without a run fingerprint: only "
                              f"{sorted(self.settings)} could be compared", stacklevel=5)
        if diff:
            raise FingerprintMismatchError(
                f"cannot resume from {self.directory}: its checkpoints come from a different run. " + "; ".join(diff)
                + ". Resume with the settings and data of that run, or pass restart=True (CLI --restart) to move "
                "its checkpoints aside (they are kept) and start afresh", fields=[d.split(":")[0] for d in diff])

    def restore(self, run: _Run) -> _Run:
        """``run`` continued from the newest readable checkpoint (unchanged if there is none): its state,
        position, running sums, history, early-stopping state and elapsed time, and the best parameters of the
        best checkpoint (those of ``run`` if there is none).

        Raises:
            FingerprintMismatchError: the checkpoint was written by a run with another fingerprint.
        """
        restored = self.manager.restore_latest(run.placed.to_tree(), accept=self._accept)
        if restored is None:
            return run
        tree, meta, _ = restored
        state = TrainState.from_tree(tree)
        best = self.manager.restore_best(state.to_tree(), accept=self._accept)
        return run._replace(
            placed=state, part=PartialEpoch(meta["epoch"], meta["pos"], PartialEpoch.sums_from_json(meta["sums"])),
            history=meta["history"], elapsed=meta["elapsed"],
            stopping=run.stopping._replace(best=meta["best"], best_epoch=meta["best_epoch"],
                                           bad_epochs=meta["bad_epochs"]),
            best_params=run.best_params if best is None else _eval_params(TrainState.from_tree(best[0])))

    def close(self) -> None:
        """Wait for the pending saves and close the manager."""
        if self.manager is not None:
            self.manager.close()


def _start(setup: _Setup, state: TrainState, checkpoints: _Checkpoints, resume: bool) -> _Run:
    """The loop's starting point: the fresh ``state`` at epoch 0, or (``resume``) the newest checkpoint; the state
    is then placed on the device(s)."""
    config = setup.config
    run = _Run(state, 0, PartialEpoch(0), [], EarlyStopping(config.min_delta, config.patience,
                                                            config.early_stopping), _eval_params(state), 0.0)
    if resume:
        run = checkpoints.restore(run)
    step = int(run.placed.step)
    placed = run.placed if setup.mesh is None else place(run.placed, NamedSharding(setup.mesh, P()))
    halted = jnp.zeros((), bool) if setup.mesh is None else place(jnp.zeros((), bool), NamedSharding(setup.mesh, P()))
    return run._replace(placed=placed, step=step, halted=halted)


def _train(setup: _Setup, run: _Run, checkpoints: _Checkpoints, description: str) -> _Run:
    """Run epochs until the step budget or the epochs are spent or early stopping says stop."""
    clock = _Clock(run.elapsed, time.perf_counter())
    bar = ProgressBar(setup.total_steps, run.step, description, setup.config.progress,
                      n_epochs=setup.n_epochs if setup.config.max_steps is None else None)
    try:
        while run.part.epoch < setup.n_epochs and not run.stop and run.step < setup.total_steps:
            run = _run_epoch(setup, run, checkpoints, bar, clock)
            run = _end_epoch(setup, run, checkpoints, bar, clock)
    finally:
        bar.close()
    return run


def _run_epoch(setup: _Setup, run: _Run, checkpoints: _Checkpoints, bar: ProgressBar, clock: _Clock) -> _Run:
    """The dispatches of the rest of the epoch in progress, with the mid-epoch checkpoints that are due.

    Nothing here waits for the device except the progress bar's read of the previous dispatch's loss.
    """
    epoch, spe = run.part.epoch, setup.train.steps_per_epoch
    stop_pos = min(spe, setup.total_steps - epoch * spe)
    for (a, b), payload, idx in setup.train.iterate(epoch, setup.train.plan(run.part.pos, stop_pos)):
        placed, halted, metrics = setup.run_chunk(run.placed, payload, idx, run.halted)
        metrics = metrics if setup.mesh is None else first_replica(metrics)
        nonfinite = metrics.pop("nonfinite")
        chunk_sums = jax.tree.map(lambda m: jnp.sum(m, axis=0), metrics)
        part = run.part.add(b, chunk_sums)
        bar.dispatched(b - a, chunk_sums["loss"], epoch)
        _check_divergence(setup, run)  # the previous dispatch: finished by now (the bar read its loss)
        run = run._replace(placed=placed, step=run.step + (b - a), part=part, halted=halted,
                           unchecked=(run.step, nonfinite, metrics), last_dispatch=b - a)
        if checkpoints.manager is not None and checkpoints.cadence.mid_epoch(run.step, b - a, b, stop_pos):
            _check_divergence(setup, run)  # never checkpoint past a non-finite step
            checkpoints.save(run, clock())
    bar.flush()
    _check_divergence(setup, run)
    return run._replace(unchecked=None)


class TrainingDivergedError(FloatingPointError):
    """A training step's loss or gradient was not finite; ``result`` is the :class:`FitResult` up to the last
    finite step (its parameters are those before the first non-finite step)."""

    def __init__(self, message: str, result: FitResult | None = None):
        super().__init__(message)
        self.result = result


def _check_divergence(setup: _Setup, run: _Run) -> None:
    """Raise when the last unchecked dispatch had a non-finite step (reads one scalar of a finished dispatch).

    Raises:
        TrainingDivergedError: naming the global step, its epoch and the terms that were not finite; its
            ``result`` holds the state of the last finite step (kept on the device by the runner's halt flag).
    """
    if run.unchecked is None:
        return
    start, nonfinite, metrics = run.unchecked
    flags = jax.device_get(nonfinite)
    if not flags.any():
        return
    i = int(flags.argmax())
    values = {k: float(jax.device_get(v[i])) for k, v in metrics.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)] or ["gradient (the loss was finite)"]
    state = _host(run.placed, setup.mesh)
    last_good = int(state.step)
    raise TrainingDivergedError(
        f"training diverged at step {start + i + 1} (epoch {start // setup.train.steps_per_epoch}): non-finite "
        f"{', '.join(bad)}. The parameters stay at step {last_good}, the last finite one; no non-finite state was "
        "checkpointed. Lower the learning rate, clip the gradients (optax.clip_by_global_norm), or check the data "
        "for extreme values",
        FitResult(state, run.history, run.best_params))


def _validate(setup: _Setup, params: Params, epoch: int) -> dict[str, float]:
    """The ``val_*`` means of ``params`` over every validation example after ``epoch``."""
    key = jax.random.fold_in(setup.eval_key, epoch)
    sums, count, n_batches = None, 0, 0
    for payload, idx in setup.val.eval_batches():
        s = setup.evaluate(params, payload, idx, key, jnp.asarray(n_batches, jnp.int32))
        n_batches += idx.shape[0]
        s = jax.tree.map(lambda v, w=idx.shape[1]: v * w, s)  # per-batch means -> sums
        sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
        count += idx.size
    return means(sums, count, "val_")


def _end_epoch(setup: _Setup, run: _Run, checkpoints: _Checkpoints, bar: ProgressBar, clock: _Clock) -> _Run:
    """Close the epoch in progress: its history record (validated when due), early stopping, the best
    parameters, the progress bar, and the epoch-end checkpoint when due."""
    epoch, config = run.part.epoch, setup.config
    record = run.part.record(run.step)
    last = epoch + 1 >= setup.n_epochs or run.step >= setup.total_steps
    current = None  # the host state, copied once when needed
    if setup.val is not None and ((epoch + 1) % config.eval_every == 0 or last):
        current = _host(run.placed, setup.mesh)
        record.update(_validate(setup, _eval_params(current), epoch))
    stopping, improved, stop = run.stopping, False, False
    if "val_loss" in record or setup.val is None:  # epochs without validation are not monitored
        stopping, improved, stop = stopping.update(record.get("val_loss", record["loss"]), epoch)
    best_params = run.best_params
    if improved:
        best_params = _eval_params(current or _host(run.placed, setup.mesh))
    record["time"] = clock()
    bar.epoch_done(record)
    run = run._replace(part=PartialEpoch(epoch + 1), history=[*run.history, record], stopping=stopping,
                       best_params=best_params, stop=stop)
    due = checkpoints.cadence.epoch_end(epoch + 1, last, stop, run.step, run.last_dispatch)
    if checkpoints.manager is not None and due:
        # best/ holds the best among saved epochs: a saved epoch that improved on every earlier one becomes it
        # (no extra save on every improvement: an improvement at an epoch that is not saved does not reach it)
        checkpoints.save(run, clock(), best=improved)
    return run
