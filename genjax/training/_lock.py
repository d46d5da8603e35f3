"""An exclusive lock on a checkpoint folder, so that two processes never write the same run.

The lock is a file ``.genjax.lock`` in the folder holding the owner's process id, host name and start time,
created atomically (``O_CREAT | O_EXCL``). A lock whose owner is a process of this host that no longer exists
(a run killed with ``kill -9``) is stale and taken over; any other held lock is refused with
:class:`CheckpointLockedError`, which names the holder and the file to delete if it is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

__all__ = ["CheckpointLockedError", "DirectoryLock", "LOCK_FILE"]

LOCK_FILE = ".genjax.lock"


class CheckpointLockedError(RuntimeError):
    """Another process holds the checkpoint folder."""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class DirectoryLock:
    """The lock of ``directory`` (see the module docstring); :meth:`acquire` / :meth:`release`."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_FILE
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        self.held = False

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            CheckpointLockedError: a live process (or a process on another host) holds it, naming it and how to
                clear the lock if that process is gone.
        """
        record = json.dumps({**self.owner, "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and (holder.get("host") != self.owner["host"] or _alive(int(holder["pid"]))):
                    raise CheckpointLockedError(
                        f"{self.path.parent} is being written by process {holder.get('pid')} on host "
                        f"{holder.get('host')!r} (since {holder.get('since')}); two runs must not share a checkpoint "
                        f"folder. Use another folder, or if that process is gone, delete {self.path}") from None
                warnings.warn(f"taking over the stale lock {self.path} of a process that no longer exists "
                              f"({holder})", stacklevel=3)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self.held = True
            return
        raise CheckpointLockedError(f"could not take the lock {self.path}; another process took it meanwhile")

    def _holder(self) -> dict | None:
        """The lock file's record (``None`` when unreadable, e.g. half-written by a killed process)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if self.held:
            holder = self._holder()
            if holder is None or all(holder.get(k) == v for k, v in self.owner.items()):
                self.path.unlink(missing_ok=True)
            self.held = False
