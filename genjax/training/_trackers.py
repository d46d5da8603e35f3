"""The small trackers of the training loop (:func:`genjax.training.fit`), in the style of flax's
``training/early_stopping.py``: immutable values whose ``update``/``add`` return a new value.

* :class:`EarlyStopping`: best monitored loss, its epoch and the epochs since, and whether to stop;
* :class:`CheckpointCadence`: when the loop saves (every so many epochs, every so many steps mid-epoch);
* :class:`PartialEpoch`: the position within the epoch in progress and the running metric sums of its steps
  (what a mid-epoch checkpoint records so that a resumed run reproduces the epoch's history record);
* :class:`ProgressBar`: the tqdm bar, which reads each dispatch's loss one dispatch late.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

__all__ = ["EarlyStopping", "CheckpointCadence", "PartialEpoch", "ProgressBar", "means"]


def means(sums: Mapping[str, Any], count: float, prefix: str = "") -> dict[str, float]:
    """``{prefix + name: sum / count}`` as Python floats (reads the sums from the device)."""
    return {prefix + k: float(v) / count for k, v in sums.items()}


class EarlyStopping(NamedTuple):
    """Early stopping on a monitored loss (lower is better).

    An epoch improves when its loss is below ``best - min_delta``. Every epoch that does not counts as a bad
    epoch; ``patience`` bad epochs in a row stop the run when ``enabled`` (the count is kept either way: it is
    part of a checkpoint and continues after a resume).

    Fields:
        min_delta, patience, enabled: the settings (``TrainConfig.min_delta``, ``.patience``,
            ``.early_stopping``).
        best: the best monitored loss so far (``inf`` before the first monitored epoch).
        best_epoch: the epoch of ``best`` (``-1`` before the first).
        bad_epochs: monitored epochs since the last improvement.
    """

    min_delta: float = 0.0
    patience: int = 45
    enabled: bool = False
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, metric: float, epoch: int) -> tuple[EarlyStopping, bool, bool]:
        """``(new state, improved, should_stop)`` after monitored epoch ``epoch`` with loss ``metric``."""
        if metric < self.best - self.min_delta:
            return self._replace(best=metric, best_epoch=epoch, bad_epochs=0), True, False
        bad = self.bad_epochs + 1
        return self._replace(bad_epochs=bad), False, self.enabled and bad >= self.patience


@dataclasses.dataclass(frozen=True)
class CheckpointCadence:
    """When the loop writes a periodic checkpoint.

    Fields:
        every_epochs: save at the end of every ``every_epochs``-th epoch (``TrainConfig.checkpoint_every``),
            and always after the last epoch or an early stop.
        every_steps: additionally save mid-epoch at the first dispatch boundary at or past every multiple of
            ``every_steps`` optimizer steps (``TrainConfig.checkpoint_every_steps``; ``None``: never).
    """

    every_epochs: int = 1
    every_steps: int | None = None

    def mid_epoch(self, step: int, steps: int, pos: int, stop_pos: int) -> bool:
        """Whether to save after a dispatch of ``steps`` steps that ended at optimizer step ``step`` and at
        position ``pos`` of an epoch that runs to ``stop_pos``: it crossed a multiple of ``every_steps``. The
        last dispatch of an epoch never saves here (the epoch-end checkpoint, when due, records it)."""
        return pos < stop_pos and self._crossed(step, steps)

    def epoch_end(self, epochs_done: int, last: bool, stopped: bool, step: int = 0, last_dispatch: int = 0) -> bool:
        """Whether to save after ``epochs_done`` epochs (``last``: the final epoch; ``stopped``: early stop), or
        because the epoch's last dispatch of ``last_dispatch`` steps, ending at optimizer step ``step``, crossed a
        multiple of ``every_steps`` (with epochs shorter than a dispatch, the step cadence falls on epoch ends)."""
        return epochs_done % self.every_epochs == 0 or last or stopped or self._crossed(step, last_dispatch)

    def _crossed(self, step: int, steps: int) -> bool:
        """Whether the ``steps`` steps ending at ``step`` passed a multiple of ``every_steps``."""
        return bool(self.every_steps) and step % self.every_steps < steps


class PartialEpoch(NamedTuple):
    """The part of epoch ``epoch`` run so far: steps ``[0, pos)`` and the sums of their metrics.

    The sums stay on the device while the epoch runs (adding a dispatch's metrics is asynchronous); the
    epoch's history record reads them once, at its end.

    Fields:
        epoch: the epoch in progress (after an epoch ends: the next one, at ``pos`` 0).
        pos: the next step of the epoch.
        sums: metric name -> sum over the steps ``[0, pos)`` (empty before the first dispatch).
    """

    epoch: int
    pos: int = 0
    sums: Mapping[str, Any] = MappingProxyType({})

    def add(self, stop: int, chunk_sums: dict) -> PartialEpoch:
        """After the dispatch of steps ``[pos, stop)`` whose metric sums are ``chunk_sums``."""
        sums = chunk_sums if not self.sums else jax.tree.map(jnp.add, dict(self.sums), chunk_sums)
        return self._replace(pos=stop, sums=sums)

    def record(self, step: int) -> dict:
        """The epoch's history record so far: ``epoch``, ``step`` and the metric means over its steps."""
        return {"epoch": self.epoch, "step": step, **means(self.sums, self.pos)}

    def sums_to_json(self) -> dict[str, Any]:
        """The sums as JSON values (a checkpoint's ``meta["sums"]``)."""
        return {k: np.asarray(v).tolist() for k, v in self.sums.items()}

    @staticmethod
    def sums_from_json(sums: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Inverse of :meth:`sums_to_json`."""
        return {k: jnp.asarray(v) for k, v in sums.items()}


class ProgressBar:
    """The tqdm progress bar of a run, with the running loss and the epoch.

    A dispatch is reported one dispatch late: :meth:`dispatched` shows the previous dispatch's loss (reading it
    is a device sync, on a dispatch that has finished or nearly so) while the new one runs, and keeps the new
    one's loss for the next call.

    Arguments:
        total: optimizer steps of the whole run.
        initial: steps already taken (a resumed run).
        description: the bar's label.
        enabled: show the bar (``TrainConfig.progress``).
    """

    def __init__(self, total: int, initial: int, description: str, enabled: bool):
        self._bar = tqdm(total=total, initial=initial, desc=description, disable=not enabled, unit="step",
                         dynamic_ncols=True, leave=False)
        self._pending = None  # (steps, mean loss on the device) of the last dispatch, not yet shown

    def dispatched(self, steps: int, loss_sum, epoch: int) -> None:
        """A dispatch of ``steps`` steps with summed loss ``loss_sum`` (device scalar) of ``epoch`` started."""
        if self._pending is not None:
            self._bar.update(self._pending[0])
            self._bar.set_postfix(loss=f"{float(self._pending[1]):.4g}", epoch=epoch, refresh=False)
        self._pending = (steps, loss_sum / steps)

    def flush(self) -> None:
        """Count the last dispatch's steps (its loss is not read: the epoch record shows the epoch's mean)."""
        if self._pending is not None:
            self._bar.update(self._pending[0])
        self._pending = None

    def epoch_done(self, record: dict) -> None:
        """Show the ended epoch's mean loss (and validation loss) from its history ``record``."""
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "val_loss")}
                              | {"epoch": record["epoch"]}, refresh=True)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()
