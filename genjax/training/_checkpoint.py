"""Checkpoints of a training run: orbax managers with a lock, array checksums and fingerprint checks.

:class:`CheckpointManager` keeps the state of a training run (params, optimizer state, EMA, PRNG key, step) together
with a JSON record of where the run is (epoch, position in the epoch, history, early-stopping state, the run's
fingerprint). It wraps two orbax ``CheckpointManager`` instances: ``latest/`` (the last ``keep`` periodic
checkpoints) and ``best/`` (the single best by validation loss).

What protects a user's run:

* orbax writes each step into a temporary directory and renames it when complete, so a run killed mid-save leaves
  at most a temporary directory that is never read;
* every array's CRC-32 is recorded in the step's JSON record and verified on restore: a checkpoint whose bytes
  changed (or that fails to restore at all) is skipped with a warning naming its path, and the next older one is
  tried;
* a checkpoint is restored only after its JSON record was accepted by the caller (the training loop compares the
  run fingerprints there), so a mismatched resume fails before any array is read and deletes nothing;
* the folder is locked (:class:`~genjax.training.DirectoryLock`) while a process writes it;
* :meth:`move_aside` renames the folder's checkpoints to a sibling folder (``restart``): they are never deleted
  by a new run.
"""

from __future__ import annotations

import json
import os
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from .._checks import check_int
from ._lock import DirectoryLock

__all__ = ["CheckpointManager", "CorruptCheckpointError", "array_checksums"]

_SUBFOLDERS = ("latest", "best")


class CorruptCheckpointError(ValueError):
    """A checkpoint's arrays do not match the checksums recorded when it was written."""


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def array_checksums(tree: Any) -> dict[str, str]:
    """``{leaf path: CRC-32 of its bytes}`` of a pytree of arrays (read to the host)."""
    return {jax.tree_util.keystr(path): format(zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes()), "08x")
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


class CheckpointManager:
    """Periodic ("latest", keep-N) and best checkpoints of a training run, with async atomic saves.

    Arguments:
        directory: folder of the run; ``latest/`` and ``best/`` are created inside it.
        keep: how many periodic checkpoints to keep (older ones are deleted after a newer one commits).
        async_save: write checkpoints in a background thread (orbax async checkpointing). The training loop
            keeps running while the files are written; :meth:`wait` blocks until every save is committed.

    The saved ``state`` is any pytree of arrays (the training loop saves a :class:`~genjax.TrainState` converted
    by ``TrainState.to_tree``); ``meta`` is a JSON-serialisable dict.

    Raises:
        CheckpointLockedError: another live process writes ``directory``.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.keep = check_int("keep", keep)
        self.async_save = async_save
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = DirectoryLock(self.directory)
        if jax.process_index() == 0:  # the writer (in multi-process runs process 0 alone saves)
            self._lock.acquire()
        self._open()

    def _open(self) -> None:
        opts = dict(enable_async_checkpointing=self.async_save, create=True, cleanup_tmp_directories=True)
        if jax.process_count() > 1:
            # multi-process runs: each process reads on its own; only process 0 saves (state is replicated)
            me = jax.process_index()
            opts["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"genjax-p{me}")
        self._latest = ocp.CheckpointManager(
            self.directory / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, **opts),
            item_names=("state", "meta"))
        self._best = ocp.CheckpointManager(
            self.directory / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts),
            item_names=("state", "meta"))

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
        """Save ``state`` and ``meta`` as checkpoint ``step`` of ``latest/`` (and of ``best/`` if ``best``); the
        arrays' checksums are added to the saved ``meta`` under ``"checksums"``.

        In a multi-process run only process 0 writes; the call is a no-op elsewhere.
        """
        if jax.process_index() != 0:
            return
        # Asynchronous saves serialise ``meta`` in a background thread: snapshot it now, or the caller's later
        # changes (the training loop appends to its history) leak into this checkpoint. The round trip also
        # raises here, not in the writer thread, if ``meta`` is not JSON-serialisable.
        meta = json.loads(json.dumps({**meta, "checksums": array_checksums(state)}))
        targets = [self._latest, self._best] if best else [self._latest]
        for manager in targets:
            if int(step) in manager.all_steps():  # re-running a step after resuming from an older checkpoint
                manager.wait_until_finished()
                manager.delete(int(step))
            manager.save(int(step), args=self._args(state, meta), force=True)

    def _read_meta(self, manager, step: int) -> dict:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def _restore(self, manager, like_state, accept: Callable[[dict], None] | None):
        manager.reload()
        for step in sorted(manager.all_steps(), reverse=True):
            path = manager.directory / str(step)
            try:
                meta = self._read_meta(manager, step)
            except Exception as err:  # unreadable record: a damaged step
                warnings.warn(f"checkpoint {path} has an unreadable record and was skipped ({type(err).__name__}: "
                              f"{str(err)[:200]})", stacklevel=3)
                continue
            if accept is not None:
                accept(meta)  # raises for a checkpoint of another run: nothing is read or deleted
            try:
                state = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(like_state)))).state
                _verify(state, meta.get("checksums"), path)
            except Exception as err:  # corrupt or partial: name it and fall back to the previous one
                warnings.warn(f"checkpoint {path} is partial or corrupt and was skipped "
                              f"({type(err).__name__}: {str(err)[:200]})", stacklevel=3)
                continue
            return state, meta, step
        return None

    def restore_latest(self, like_state: Any, accept: Callable[[dict], None] | None = None):
        """Restore the newest readable periodic checkpoint.

        Arguments:
            like_state: a pytree with the structure, shapes and dtypes of the saved state (e.g. freshly
                initialised); only its structure is used (restored into ``jax.eval_shape``-style targets).
            accept: called with each candidate's JSON record before its arrays are read; raising there (e.g. a
                fingerprint mismatch) stops the restore with that error.

        Returns:
            ``(state, meta, step)``, or ``None`` when there is no readable checkpoint.
        """
        return self._restore(self._latest, like_state, accept)

    def restore_best(self, like_state: Any, accept: Callable[[dict], None] | None = None):
        """Restore the best checkpoint; same contract as :meth:`restore_latest`."""
        return self._restore(self._best, like_state, accept)

    def latest_step(self) -> int | None:
        """The newest periodic checkpoint's step, or ``None``."""
        self._latest.reload()
        return self._latest.latest_step()

    def has_checkpoints(self) -> bool:
        """Whether the folder holds any periodic or best checkpoint."""
        self._latest.reload()
        self._best.reload()
        return bool(self._latest.all_steps() or self._best.all_steps())

    def move_aside(self) -> Path | None:
        """Move the existing checkpoints to a sibling folder ``<name>.replaced-<time>`` (nothing is deleted) and
        start empty. Returns the new folder of the old checkpoints, or ``None`` when there were none."""
        if not self.has_checkpoints():
            return None
        self.wait()
        self._latest.close()
        self._best.close()
        aside = self.directory.with_name(f"{self.directory.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 0
        while aside.exists():
            n += 1
            aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
        aside.mkdir()
        for name in _SUBFOLDERS:
            if (self.directory / name).exists():
                os.replace(self.directory / name, aside / name)
        self._open()
        return aside

    def wait(self) -> None:
        """Block until all pending asynchronous saves have committed."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the pending saves, close the managers and release the folder's lock (also on leaving a
        ``with CheckpointManager(...)`` block)."""
        try:
            self.wait()
            self._latest.close()
            self._best.close()
        finally:
            self._lock.release()


def _verify(state: Any, checksums: dict | None, path: Path) -> None:
    """Compare a restored state with the checksums recorded at save time (none recorded: nothing to check).

    Raises:
        CorruptCheckpointError: naming the first array whose bytes differ.
    """
    if not checksums:
        return
    for name, value in array_checksums(state).items():
        if checksums.get(name) != value:
            raise CorruptCheckpointError(f"array {name} of {path} does not match its checksum (written "
                                         f"{checksums.get(name)}, read {value}): the file was altered or damaged")
