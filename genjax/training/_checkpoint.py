"""Checkpoints: orbax managers for training runs, and atomic single-file pytree saves for models.

Two kinds of persistence live here:

* :class:`CheckpointManager` keeps the state of a training run (params, optimizer state, EMA, PRNG key, step)
  together with a JSON record of where the run is (epoch, position in the epoch, history, early-stopping state).
  It wraps two orbax ``CheckpointManager`` instances: ``latest/`` (the last ``keep`` periodic checkpoints) and
  ``best/`` (the single best by validation loss). Orbax writes each step into a temporary directory and renames it
  when complete, so a run killed mid-save leaves at most a temporary directory that is never read. A checkpoint
  that fails to restore (truncated or corrupt files) is skipped with a warning naming its path, and the next
  older one is tried.
* :func:`save_pytree` / :func:`load_pytree` write a model's parameters as one msgpack file, atomically (written
  to a temporary file, fsynced, then renamed over the target), so a saved model is never half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

__all__ = ["CheckpointManager", "save_pytree", "load_pytree", "atomic_directory"]


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointManager:
    """Periodic ("latest", keep-N) and best checkpoints of a training run, with async atomic saves.

    Arguments:
        directory: folder of the run; ``latest/`` and ``best/`` are created inside it.
        keep: how many periodic checkpoints to keep (older ones are deleted after a newer one commits).
        async_save: write checkpoints in a background thread (orbax async checkpointing). The training loop
            keeps running while the files are written; :meth:`wait` blocks until every save is committed.

    The saved ``state`` is any pytree of arrays (the training loop saves a :class:`~genjax.TrainState` converted
    by ``TrainState.to_tree``); ``meta`` is a JSON-serialisable dict.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1; got {keep}")
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        opts = dict(enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
        if jax.process_count() > 1:
            # multi-process runs: each process reads on its own; only process 0 saves (state is replicated)
            me = jax.process_index()
            opts["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"genjax-p{me}")
        self._latest = ocp.CheckpointManager(
            self.directory / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts),
            item_names=("state", "meta"),
        )
        self._best = ocp.CheckpointManager(
            self.directory / "best",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts),
            item_names=("state", "meta"),
        )

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
        """Save ``state`` and ``meta`` as checkpoint ``step`` of ``latest/`` (and of ``best/`` if ``best``).

        In a multi-process run only process 0 writes; the call is a no-op elsewhere.
        """
        if jax.process_index() != 0:
            return
        # Asynchronous saves serialise ``meta`` in a background thread: snapshot it now, or the caller's later
        # changes (the training loop appends to its history) leak into this checkpoint. The round trip also
        # raises here, not in the writer thread, if ``meta`` is not JSON-serialisable.
        meta = json.loads(json.dumps(meta))
        targets = [self._latest, self._best] if best else [self._latest]
        for manager in targets:
            if int(step) in manager.all_steps():  # re-running a step after resuming from an older checkpoint
                manager.wait_until_finished()
                manager.delete(int(step))
            manager.save(int(step), args=self._args(state, meta), force=True)

    def _restore(self, manager, abstract_state):
        manager.reload()
        for step in sorted(manager.all_steps(), reverse=True):
            path = manager.directory / str(step)
            try:
                out = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as err:  # corrupt or partial: name it and fall back to the previous one
                warnings.warn(
                    f"checkpoint {path} is partial or corrupt and was skipped "
                    f"({type(err).__name__}: {str(err)[:200]})",
                    stacklevel=3,
                )
                continue
            return out.state, out.meta, step
        return None

    def restore_latest(self, like_state: Any):
        """Restore the newest readable periodic checkpoint.

        Arguments:
            like_state: a pytree with the structure, shapes and dtypes of the saved state (e.g. freshly
                initialised); only its structure is used (restored into ``jax.eval_shape``-style targets).

        Returns:
            ``(state, meta, step)``, or ``None`` when there is no readable checkpoint.
        """
        return self._restore(self._latest, _abstract(like_state))

    def restore_best(self, like_state: Any):
        """Restore the best checkpoint; same contract as :meth:`restore_latest`."""
        return self._restore(self._best, _abstract(like_state))

    def latest_step(self) -> int | None:
        self._latest.reload()
        return self._latest.latest_step()

    def wait(self) -> None:
        """Block until all pending asynchronous saves have committed."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._latest.close()
        self._best.close()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Context manager yielding a temporary directory that replaces ``path`` only when the block succeeds.

    The old contents of ``path`` (if any) survive until the new directory is complete; if the block raises, the
    temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_pytree(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> None:
    """Write a pytree of arrays (e.g. Flax params) to ``path`` as msgpack, atomically.

    Arrays are stored bit-exactly (dtype and shape preserved). ``metadata`` (JSON-serialisable) is written
    beside it as ``<path>.json``, also atomically.
    """
    path = Path(path)
    host = jax.tree.map(np.asarray, tree)
    _atomic_write_bytes(path, serialization.msgpack_serialize(serialization.to_state_dict(host)))
    if metadata is not None:
        _atomic_write_bytes(path.with_suffix(path.suffix + ".json"), json.dumps(metadata, indent=1).encode())


def load_pytree(path: str | os.PathLike, target: Any | None = None) -> Any:
    """Read a pytree written by :func:`save_pytree`.

    Arguments:
        path: the file.
        target: optional pytree of the expected structure; when given the result has its structure (NamedTuples,
            dataclasses restored) and a mismatch raises ``ValueError`` naming the differing entry.

    Returns:
        The pytree with ``numpy`` leaves.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved pytree at {path}")
    state = serialization.msgpack_restore(path.read_bytes())
    if target is None:
        return state
    try:
        return serialization.from_state_dict(target, state)
    except (ValueError, KeyError) as err:
        raise ValueError(f"saved pytree at {path} does not match the expected structure: {err}") from err
