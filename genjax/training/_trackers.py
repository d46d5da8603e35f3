"""The small trackers of the training loop (:func:`genjax.training.fit`), in the style of flax's
``training/early_stopping.py``: immutable values whose ``update``/``add`` return a new value.

* :class:`EarlyStopping`: best monitored loss, its epoch and the epochs since, and whether to stop;
* :class:`CheckpointCadence`: when the loop saves (every so many epochs, every so many steps mid-epoch);
* :class:`PartialEpoch`: the position within the epoch in progress and the running metric sums of its steps
  (what a mid-epoch checkpoint records so that a resumed run reproduces the epoch's history record);
* :class:`ProgressBar`: the progress of a run (a tqdm bar on a terminal, lines in a log), with an ETA measured
  after the first dispatch (which compiles), reading each dispatch's loss one dispatch late.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping
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
    """The progress of a run: a tqdm bar on a terminal or in a notebook, progress lines in a log.

    * **ETA without compilation.** The first dispatch of a run includes the compilation of its step (seconds on a
      CPU, against milliseconds per step after it), so the rate is measured from the end of the first dispatch:
      ``rate = (n - n1) / (t - t1 - v)`` where ``n1`` steps were done at time ``t1``, when the first dispatch
      was seen to have finished, and ``v`` is the time of the first validation (which compiles the evaluation
      step); ``ETA = (total - n) / rate``. Until a second dispatch has finished no ETA is shown.
    * **Steps or epochs.** A run whose budget is a number of epochs shows ``epoch e/E``; a run budgeted in steps
      (``max_steps``, e.g. a latent prior, whose "epochs" are passes over a few hundred points) shows its steps
      only.
    * **Terminals and logs.** On an interactive stream (a TTY, or a Jupyter kernel) a tqdm bar is redrawn in
      place; otherwise (a log file, a pipe, a batch job) one line is written each time the run passes another
      ``line_fraction`` of its steps or ``line_seconds`` after the previous line, and one at the end, so a log
      gets a few lines per run instead of a carriage-return update per step.

    A dispatch is reported one dispatch late: :meth:`dispatched` reads the previous dispatch's loss (a device
    sync, on a dispatch that has finished or nearly so) while the new one runs, and keeps the new one's loss for
    the next call.

    Arguments:
        total: optimizer steps of the whole run.
        initial: steps already taken (a resumed run).
        description: the run's label (``"VAE"``, ``"prior"``).
        enabled: show progress at all (``TrainConfig.progress``).
        n_epochs: the run's epochs when its budget is in epochs (shown as ``epoch e/E``); ``None`` for a run
            budgeted in steps (no epoch shown).
        stream: where to write (default ``sys.stderr`` at construction).
        interactive: draw a redrawn bar (``True``) or write lines (``False``); default: whether ``stream`` is a
            TTY or the code runs in a Jupyter kernel.
        line_fraction, line_seconds: the cadence of progress lines on a non-interactive stream.
        clock: the time source in seconds (``time.perf_counter``; replaceable in tests).
    """

    def __init__(self, total: int, initial: int, description: str, enabled: bool, *, n_epochs: int | None = None,
                 stream: Any = None, interactive: bool | None = None, line_fraction: float = 0.1,
                 line_seconds: float = 30.0, clock: Callable[[], float] = time.perf_counter):
        self.total, self.n, self.description, self.enabled = int(total), int(initial), description, bool(enabled)
        self.n_epochs = n_epochs
        self._stream = sys.stderr if stream is None else stream
        self._interactive = _is_interactive(self._stream) if interactive is None else bool(interactive)
        self._line_fraction, self._line_seconds, self._clock = float(line_fraction), float(line_seconds), clock
        self._pending = None  # (steps, mean loss on the device) of the last dispatch, not yet shown
        self._first: tuple[int, float] | None = None  # (steps done, time) when the first dispatch had finished
        self._start = clock()
        self._last_line: tuple[int, float] = (self.n, self._start)  # (steps, time) of the last progress line
        self._shown: dict[str, float] = {}  # the latest loss / val_loss
        self._epoch: int | None = None
        self._flushed_at: float | None = None  # when the epoch's last dispatch was counted
        self._excluded = 0.0  # seconds of the first validation (its compilation), left out of the rate
        self._validated = False
        self._bar = None
        if self.enabled and self._interactive:
            self._bar = tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True,
                             leave=False, file=self._stream,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    # -- what the loop reports -----------------------------------------------------------------------------------

    def dispatched(self, steps: int, loss_sum, epoch: int) -> None:
        """A dispatch of ``steps`` steps with summed loss ``loss_sum`` (device scalar) of ``epoch`` started."""
        if not self.enabled:
            return
        if self._pending is not None:
            loss = float(self._pending[1])  # the previous dispatch has finished once its loss is read
            self._advance(self._pending[0])
            self._shown["loss"] = loss
        self._epoch = epoch
        self._pending = (steps, loss_sum / steps)
        self._show()

    def flush(self) -> None:
        """Count the last dispatch's steps (its loss is not read: the epoch record shows the epoch's mean)."""
        if self._pending is not None and self.enabled:
            self._advance(self._pending[0])
            self._show()
        self._pending = None
        self._flushed_at = self._clock()

    def epoch_done(self, record: dict) -> None:
        """Show the ended epoch's mean loss (and validation loss) from its history ``record``."""
        if not self.enabled:
            return
        if "val_loss" in record and not self._validated and self._flushed_at is not None:
            self._excluded += self._clock() - self._flushed_at  # the first validation compiles its step
            self._validated = True
        self._shown.update({k: float(v) for k, v in record.items() if k in ("loss", "val_loss")})
        self._epoch = int(record["epoch"])
        self._show()

    def close(self) -> None:
        """Close the bar, or write the run's last line (its steps, time and final losses)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and not self._interactive and self._last_line[0] != self.n:
            self._line(final=True)
        self.enabled = False

    # -- rate and text ---------------------------------------------------------------------------------------------

    def _advance(self, steps: int) -> None:
        self.n += steps
        if self._first is None:  # the first dispatch (with the compilation) is over now
            self._first = (self.n, self._clock())
        if self._bar is not None:
            self._bar.update(steps)

    def rate(self) -> float | None:
        """Steps per second since the first dispatch finished (``None`` until a later dispatch finished)."""
        if self._first is None or self.n <= self._first[0]:
            return None
        dt = self._clock() - self._first[1] - self._excluded
        return (self.n - self._first[0]) / dt if dt > 0 else None

    def eta(self) -> float | None:
        """Seconds left at the current :meth:`rate` (``None`` while it is unknown)."""
        rate = self.rate()
        return None if rate is None else max(self.total - self.n, 0) / rate

    def status(self) -> str:
        """The run's state in words: rate, ETA, losses and epoch (no step counts)."""
        parts = []
        rate, eta = self.rate(), self.eta()
        if rate is not None:
            parts.append(f"{rate:.3g} steps/s, ETA {_duration(eta)}")
        elif self._first is None and self.n < self.total:
            parts.append("compiling")
        parts += [f"{k} {v:.4g}" for k, v in self._shown.items()]
        if self.n_epochs is not None and self._epoch is not None:
            parts.append(f"epoch {min(self._epoch + 1, self.n_epochs)}/{self.n_epochs}")
        return ", ".join(parts)

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self.status(), refresh=True)
            return
        if self._interactive:
            return
        last_n, last_t = self._last_line
        stride = max(1, math.ceil(self._line_fraction * self.total))
        if self.n > last_n and (self.n // stride > last_n // stride or self._clock() - last_t >= self._line_seconds):
            self._line()

    def _line(self, final: bool = False) -> None:
        now = self._clock()
        pct = 100.0 * self.n / self.total if self.total else 100.0
        if final:
            text = f"{self.description}: {self.n}/{self.total} steps in {_duration(now - self._start)}"
            losses = ", ".join(f"{k} {v:.4g}" for k, v in self._shown.items())
            text += f" ({losses})" if losses else ""
        else:
            text = f"{self.description}: step {self.n}/{self.total} ({pct:.0f}%)"
            status = self.status()
            text += f", {status}" if status else ""
        print(f"[genjax {time.strftime('%H:%M:%S')}] {text}", file=self._stream, flush=True)
        self._last_line = (self.n, now)


def _duration(seconds: float) -> str:
    """``"4.2 s"``, ``"12:05"`` (min:s) or ``"3:02:10"`` (h:min:s)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _is_interactive(stream) -> bool:
    """Whether ``stream`` is a terminal, or the code runs in a Jupyter kernel (where tqdm draws a widget)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        pass
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"
