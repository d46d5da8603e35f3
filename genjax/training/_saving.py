"""Atomic saves of models: a folder replaced only when complete, and pytrees as single msgpack files.

:func:`save_pytree` / :func:`load_pytree` write a model's parameters as one msgpack file, atomically (written to a
temporary file, fsynced, then renamed over the target), so a saved model is never half-written; msgpack holds
arrays and plain values only, so loading never runs code. :func:`atomic_directory` replaces a whole model folder
only when the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

__all__ = ["atomic_directory", "save_pytree", "load_pytree"]


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
        target: optional pytree of the expected structure (arrays or ``jax.ShapeDtypeStruct``); when given the
            result has its structure (NamedTuples, dataclasses restored) and every leaf's shape must match.

    Returns:
        The pytree with ``numpy`` leaves.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable msgpack pytree, or does not match ``target`` (naming the file and
            the first differing entry or shape).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved pytree at {path}")
    try:
        state = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several types for damaged bytes
        raise ValueError(f"{path} is not a readable genjax array file ({type(err).__name__}: {err}); the file is "
                         "damaged or was not written by genjax") from err
    if target is None:
        return state
    try:
        tree = serialization.from_state_dict(target, state)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"saved pytree at {path} does not match the expected structure: {err}") from err
    for (where, want), got in zip(jax.tree_util.tree_leaves_with_path(target), jax.tree.leaves(tree), strict=True):
        if tuple(np.shape(want)) != tuple(np.shape(got)):
            raise ValueError(f"saved pytree at {path} does not match the model: {jax.tree_util.keystr(where)} has "
                             f"shape {tuple(np.shape(got))}, the configuration needs {tuple(np.shape(want))}")
    return tree
