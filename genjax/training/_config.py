"""Settings of the training loop (:class:`TrainConfig`) and what it returns (:class:`FitResult`)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from .._checks import check_int, check_range
from .._typing import Params
from ._state import TrainState

__all__ = ["TrainConfig", "FitResult"]


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
        checkpoint_every_steps: additionally save every this many steps, at the first dispatch boundary at or
            past each multiple (mid-epoch, or at the end of an epoch shorter than a dispatch).
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
            object.__setattr__(self, name, check_int(f"TrainConfig.{name}", getattr(self, name)))
        if self.max_steps is not None:
            object.__setattr__(self, "max_steps", check_int("TrainConfig.max_steps", self.max_steps))
        if self.checkpoint_every_steps is not None:
            object.__setattr__(self, "checkpoint_every_steps",
                               check_int("TrainConfig.checkpoint_every_steps", self.checkpoint_every_steps))
        if self.ema_decay is not None:
            check_range("TrainConfig.ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        check_range("TrainConfig.min_delta", self.min_delta, low=0.0)


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
