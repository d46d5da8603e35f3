"""What every user class shares: the saved-model format, the training cells that new cells draw their
conditions and library sizes from, the naming of generated cells, and jitted functions cached per configuration.

Saved-model format (one for every model): a folder written atomically (:func:`genjax.training.atomic_directory`:
a crash or a full disk leaves the previous model loadable) holding ``model.json`` (``{"format":
"genjax.<Class>/1", "genjax_version": ..., ...settings}``), one msgpack file per array pytree
(:func:`genjax.training.save_pytree`; no pickle, so loading a model never runs code) and one subfolder per
component model (the VAE inside a :class:`~genjax.LatentGenerator`). Metadata go through one JSON encoder,
:func:`json_default`, which refuses what it cannot represent exactly.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np

from .._version import __version__
from ..data import DataRegistry
from ..training import atomic_directory, load_pytree, save_pytree

__all__ = ["SavedModel", "TrainingCells", "NoMatchingCellsError", "json_default", "generated_obs", "cached_jit",
           "MODEL_FILE"]

MODEL_FILE = "model.json"
"""The metadata file of a saved model folder."""

_JIT_CACHE: dict = {}  # (configuration key, function name) -> jitted function
_JIT_CACHE_SIZE = 256


class NoMatchingCellsError(ValueError):
    """No training cell has the conditions requested for new cells (nothing to draw their library sizes and
    unrequested conditions from)."""


def json_default(o: Any):
    """JSON encoding of the values model metadata hold: numpy scalars and arrays, dataclasses.

    Raises:
        TypeError: any other type, named (the metadata would not load back as saved).
    """
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"cannot save a {type(o).__name__} in model metadata (JSON): {o!r}")


def cached_jit(key: Any, name: str, fn: Callable) -> Callable:
    """``jax.jit(fn)``, cached under ``(key, name)`` for the life of the process (at most 256 entries, oldest
    dropped): models with equal configurations (a saved and a loaded one) share compilations. ``fn`` must depend
    only on what ``key`` and ``name`` spell out."""
    cache_key = (key, name)
    if cache_key not in _JIT_CACHE:
        if len(_JIT_CACHE) >= _JIT_CACHE_SIZE:
            _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
        _JIT_CACHE[cache_key] = jax.jit(fn)
    return _JIT_CACHE[cache_key]


class SavedModel(abc.ABC):
    """Base of the user classes: one saved-model format, written by :meth:`save`, read by :meth:`load`.

    A subclass names its format with ``format_tag`` and provides :meth:`_saved_state` (metadata, array pytrees,
    component models) and :meth:`_from_saved` (rebuild from them).
    """

    format_tag: ClassVar[str]
    legacy_meta_files: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def _saved_state(self) -> tuple[dict, dict[str, Any], dict[str, SavedModel]]:
        """``(metadata, {file stem: array pytree}, {subfolder: component model})``."""

    @classmethod
    @abc.abstractmethod
    def _from_saved(cls, path: Path, meta: dict, arrays: Callable[..., Any], **kwargs) -> SavedModel:
        """Rebuild a model from its metadata; ``arrays(stem, like=None)`` reads ``<stem>.msgpack``."""

    def save(self, path, *, overwrite: bool = True) -> None:
        """Write the model to the folder ``path`` atomically (the old folder stays until the new one is complete).

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True")
        meta, arrays, children = self._saved_state()
        meta = {"format": self.format_tag, "genjax_version": __version__, **meta}
        text = json.dumps(meta, indent=1, default=json_default)  # before any file is written: fails early
        with atomic_directory(path) as tmp:
            for name, child in children.items():
                child.save(tmp / name)
            for stem, tree in arrays.items():
                save_pytree(tmp / f"{stem}.msgpack", tree)
            (tmp / MODEL_FILE).write_text(text)

    @classmethod
    def load(cls, path, **kwargs) -> SavedModel:
        """Read a model written by :meth:`save` (no code is run: JSON and msgpack only).

        Raises:
            FileNotFoundError: ``path`` holds no genjax model.
            ValueError: it holds another kind of model, or unreadable metadata (naming the file).
        """
        path = Path(path)
        meta = read_model_meta(path, cls.format_tag, cls.legacy_meta_files)

        def arrays(stem: str, like: Any = None):
            return load_pytree(path / f"{stem}.msgpack", like)

        return cls._from_saved(path, meta, arrays, **kwargs)


def read_model_meta(path: Path, format_tag: str, legacy: tuple[str, ...] = ()) -> dict:
    """The metadata of the model folder ``path``, checked to be a ``format_tag`` model.

    Raises:
        FileNotFoundError: no metadata file. ValueError: unreadable JSON or another format (naming them).
    """
    files = [path / MODEL_FILE, *(path / f for f in legacy)]
    meta_file = next((f for f in files if f.is_file()), None)
    if meta_file is None:
        raise FileNotFoundError(f"no genjax model at {path} (missing {MODEL_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_file} is not valid JSON ({err}); the model folder is damaged") from err
    if not isinstance(meta, dict) or meta.get("format") != format_tag:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} holds {found!r}, not a {format_tag} model")
    return meta


@dataclasses.dataclass
class TrainingCells:
    """The training cells a model draws new cells' unrequested conditions and library sizes from.

    Fields:
        cat: int32 ``(cells, n_conditions)`` category codes.
        cont: float32 ``(cells, n_continuous)`` standardised continuous covariates.
        log_lib: float32 ``(cells,)`` log library sizes.
        cluster: int32 ``(cells,)`` pseudo-condition (k-means cluster) of each cell, or ``None``.
    """

    cat: np.ndarray
    cont: np.ndarray
    log_lib: np.ndarray
    cluster: np.ndarray | None = None

    def draw(self, codes: np.ndarray, rng: np.random.Generator, registry: DataRegistry) -> np.ndarray:
        """Training rows ``(n,)`` for new cells with the requested ``codes`` (``(n, n_conditions)``, ``-1`` where a
        condition is not requested): each row matches its cell's requested conditions and is drawn uniformly
        among the matching training cells, so unrequested conditions come in training proportions.

        Raises:
            NoMatchingCellsError: no training cell has some requested combination (naming it).
        """
        n = codes.shape[0]
        rows = np.empty(n, np.int64)
        patterns, inverse = np.unique(codes, axis=0, return_inverse=True)
        for j, pattern in enumerate(patterns):  # one pool of matching training cells per requested pattern
            given = pattern >= 0
            pool = np.flatnonzero(np.all(self.cat[:, given] == pattern[given], axis=1))
            if pool.size == 0:
                names = registry.decode_conditions(np.where(given, pattern, 0)[None])
                wanted = {k: str(v[0]) for (k, v), g in zip(names.items(), given, strict=True) if g}
                raise NoMatchingCellsError(f"no training cell has the conditions {wanted}; cannot draw library sizes "
                                           "and unrequested conditions for them")
            sel = np.flatnonzero(inverse.reshape(-1) == j)
            rows[sel] = rng.choice(pool, size=sel.size, replace=True)
        return rows

    def to_tree(self) -> dict[str, np.ndarray]:
        """The arrays, for :func:`genjax.training.save_pytree`."""
        tree = {"cat": self.cat, "cont": self.cont, "log_lib": self.log_lib}
        if self.cluster is not None:
            tree["cluster"] = self.cluster
        return tree

    @classmethod
    def from_tree(cls, tree: dict, n_conditions: int, n_continuous: int) -> TrainingCells:
        """Inverse of :meth:`to_tree` (msgpack stores empty arrays flat: shapes are restored here)."""
        log_lib = np.asarray(tree["log_lib"], np.float32)
        n = len(log_lib)
        cont = tree.get("cont", np.zeros((n, 0)))
        cluster = np.asarray(tree["cluster"], np.int32) if "cluster" in tree else None
        return cls(np.asarray(tree["cat"], np.int32).reshape(n, n_conditions),
                   np.asarray(cont, np.float32).reshape(n, n_continuous), log_lib, cluster)


def generated_obs(registry: DataRegistry, cat: np.ndarray, cont: np.ndarray | None, log_lib: np.ndarray):
    """``obs`` of ``n`` generated cells: named ``gen-0 ... gen-{n-1}``, the conditions as categoricals with the
    training categories, the continuous covariates (de-standardised) and ``library_size`` (integer totals).

    Arguments:
        registry: the model's :class:`~genjax.data.DataRegistry`. cat: int32 ``(n, n_conditions)``.
        cont: ``(n, n_continuous)`` standardised covariates, or ``None``. log_lib: ``(n,)`` log library sizes.
    """
    import pandas as pd

    n = cat.shape[0]
    obs = pd.DataFrame(index=pd.Index([f"gen-{i}" for i in range(n)]))
    for j, (key, cats) in enumerate(registry.conditions.items()):
        obs[key] = pd.Categorical.from_codes(cat[:, j], categories=list(cats))
    if cont is not None:
        for j, (key, (mu, sd)) in enumerate(registry.continuous.items()):
            obs[key] = cont[:, j] * sd + mu
    obs["library_size"] = np.rint(np.exp(np.asarray(log_lib, np.float64))).astype(np.int64)
    return obs
