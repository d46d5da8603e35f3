"""Run fingerprints: what a checkpoint was trained with, so that a resume never mixes two different runs.

A fingerprint is a flat JSON dict of named fields (the model's options, the optimiser settings, the data identity,
the schedule, the structure of the parameters, and for a later stage the digest of the earlier stage's trained
parameters). Every checkpoint records the fingerprint of its run; resuming compares field by field and refuses a
mismatch with :class:`FingerprintMismatchError`, naming each field that differs, before any array is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["FingerprintMismatchError", "tree_digest", "structure_digest", "json_digest", "fingerprint_diff"]


class FingerprintMismatchError(ValueError):
    """A checkpoint was written by a run with other settings, data or earlier stages than this one; ``fields``
    lists the names of the fingerprint fields that differ."""

    def __init__(self, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.fields = list(fields or [])


def _canonical(value: Any) -> Any:
    """``value`` with tuples as lists and numpy scalars as Python numbers (JSON-comparable)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_digest(value: Any) -> str:
    """A short hex digest (sha256, 16 characters) of a JSON-serialisable value (key order does not matter)."""
    text = json.dumps(_canonical(value), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tree_digest(tree: Any) -> str:
    """A short hex digest of a pytree of arrays: structure, shapes, dtypes and every byte of the values."""
    h = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def structure_digest(tree: Any) -> str:
    """A short hex digest of a pytree's structure, shapes and dtypes (not its values)."""
    leaves = [[list(np.shape(a)), str(a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype)]
              for a in jax.tree.leaves(tree)]
    return json_digest([str(jax.tree.structure(tree)), leaves])


def fingerprint_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"field: checkpoint has X, this run has Y"`` for every field whose value differs (missing fields count)."""
    saved, current = _canonical(saved), _canonical(current)
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: checkpoint has {_short(a)}, this run has {_short(b)}")
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
