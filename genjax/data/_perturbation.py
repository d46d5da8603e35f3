"""Perturbation labels of cells: which perturbation each cell received (a single one, a combination, or the
control), and the covariates (cell type, cell line, dose, donor) that a response may depend on.

A perturbation label is a string; combinations join their members with a delimiter (``"KLF1+MAP2K6"`` with the
default ``"+"``); the member order does not matter (``"MAP2K6+KLF1"`` is the same combination), and the control
label (e.g. ``"control"``, ``"CTRL"``) has no members. A *condition* is a perturbation together with one value of
every covariate key: the unit that splits hold out and that metrics average over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["PerturbationSpec", "UnknownPerturbationError"]


class UnknownPerturbationError(ValueError):
    """A requested perturbation, member of a combination or covariate value was never seen in training."""


@dataclasses.dataclass(frozen=True)
class PerturbationSpec:
    """Where an AnnData keeps its perturbation labels and covariates, and how combinations are written.

    Fields:
        key: ``adata.obs`` column of perturbation labels (strings; combinations joined by ``delimiter``).
        control: the label of unperturbed cells (e.g. ``"control"``).
        covariate_keys: ``adata.obs`` columns a response may depend on (cell type, cell line, dose, donor), in
            the order conditions list them.
        delimiter: what joins the members of a combination (default ``"+"``).

    Raises:
        ValueError: an empty key, control or delimiter, a covariate key repeated or equal to ``key``.
    """

    key: str
    control: str
    covariate_keys: tuple[str, ...] = ()
    delimiter: str = "+"

    def __post_init__(self):
        object.__setattr__(self, "covariate_keys", tuple(str(k) for k in self.covariate_keys))
        for name in ("key", "control", "delimiter"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"perturbation {name} must be a non-empty string; got {getattr(self, name)!r}")
        if len(set(self.covariate_keys)) != len(self.covariate_keys) or self.key in self.covariate_keys:
            raise ValueError(f"covariate_keys must be distinct and differ from the perturbation key {self.key!r}; "
                             f"got {list(self.covariate_keys)}")

    def members(self, perturbation: str) -> tuple[str, ...]:
        """The members of ``perturbation``, sorted (``()`` for the control).

        Raises:
            ValueError: an empty member (``"A+"``, ``"A++B"``) or a member repeated (``"A+A"``).
        """
        perturbation = str(perturbation)
        if perturbation == self.control:
            return ()
        parts = [p.strip() for p in perturbation.split(self.delimiter)]
        if any(not p for p in parts):
            raise ValueError(f"perturbation {perturbation!r} has an empty member (members are joined by "
                             f"{self.delimiter!r})")
        if len(set(parts)) != len(parts):
            raise ValueError(f"perturbation {perturbation!r} names a member twice")
        if self.control in parts:
            raise ValueError(f"perturbation {perturbation!r} combines the control label {self.control!r} with "
                             "perturbations")
        return tuple(sorted(parts))

    def canonical(self, perturbation: str) -> str:
        """The label with its members sorted (``"MAP2K6+KLF1"`` -> ``"KLF1+MAP2K6"``); the control unchanged."""
        members = self.members(perturbation)
        return self.delimiter.join(members) if members else self.control

    def labels(self, adata) -> np.ndarray:
        """``(cells,)`` canonical perturbation labels (object array of str) of ``adata``.

        Raises:
            KeyError: ``key`` is not an ``adata.obs`` column (the columns are listed).
            ValueError: a malformed label (named with its cell).
        """
        self.check_keys(adata)
        raw = adata.obs[self.key].astype(str).to_numpy()
        uniques, inverse = np.unique(raw, return_inverse=True)
        canon = []
        for u in uniques:
            try:
                canon.append(self.canonical(u))
            except ValueError as err:
                cell = adata.obs_names[int(np.flatnonzero(raw == u)[0])]
                raise ValueError(f"obs[{self.key!r}] of cell {cell!r}: {err}") from None
        return np.asarray(canon, dtype=object)[inverse]

    def covariates(self, adata) -> np.ndarray:
        """``(cells, len(covariate_keys))`` covariate values as strings (object array)."""
        self.check_keys(adata)
        if not self.covariate_keys:
            return np.empty((adata.n_obs, 0), dtype=object)
        return np.stack([adata.obs[k].astype(str).to_numpy(dtype=object) for k in self.covariate_keys], axis=1)

    def check_keys(self, adata) -> None:
        """Check that ``adata.obs`` has the perturbation key and every covariate key.

        Raises:
            KeyError: naming the missing column and listing those there are.
        """
        for k in (self.key, *self.covariate_keys):
            if k not in adata.obs:
                what = "perturbation key" if k == self.key else "covariate key"
                raise KeyError(f"{what} {k!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})")

    def conditions(self, adata) -> pd.DataFrame:
        """One row per condition present in ``adata``: ``perturbation`` (canonical), one column per covariate
        key, ``n_members`` and ``n_cells``, sorted by perturbation then covariates."""
        frame = pd.DataFrame(self.covariates(adata), columns=list(self.covariate_keys))
        frame.insert(0, "perturbation", self.labels(adata))
        cols = ["perturbation", *self.covariate_keys]
        out = frame.groupby(cols, sort=True).size().rename("n_cells").reset_index()
        out.insert(1, "n_members", [len(self.members(p)) for p in out["perturbation"]])
        return out

    def condition_mask(self, adata, perturbation: str, covariates: dict | None = None,
                       labels: np.ndarray | None = None) -> np.ndarray:
        """``(cells,)`` bool: the cells of ``perturbation`` (any member order) whose covariates equal
        ``covariates`` (``{key: value}``; keys not given are not constrained). ``labels``: the precomputed
        :meth:`labels` of ``adata``."""
        labels = self.labels(adata) if labels is None else labels
        mask = labels == self.canonical(perturbation)
        for k, v in (covariates or {}).items():
            if k not in self.covariate_keys:
                raise KeyError(f"{k!r} is not a covariate key of this model (covariate keys: "
                               f"{list(self.covariate_keys)})")
            mask &= adata.obs[k].astype(str).to_numpy() == str(v)
        return mask

    def vocabulary(self, perturbations: Iterable[str]) -> list[str]:
        """The sorted members of the given perturbation labels (the control contributes none)."""
        return sorted({m for p in perturbations for m in self.members(p)})

    def multi_hot(self, perturbations: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
        """``(len(perturbations), len(vocabulary))`` float32 indicator of each label's members.

        Raises:
            UnknownPerturbationError: a member not in ``vocabulary`` (named, with the label).
        """
        index = {m: i for i, m in enumerate(vocabulary)}
        out = np.zeros((len(perturbations), len(vocabulary)), np.float32)
        for row, p in enumerate(perturbations):
            for m in self.members(p):
                if m not in index:
                    raise UnknownPerturbationError(
                        f"perturbation {p!r}: member {m!r} was never seen in training (seen: "
                        f"{_preview(vocabulary)})")
                out[row, index[m]] = 1.0
        return out

    def to_dict(self) -> dict:
        """JSON-ready fields (for saved models)."""
        return {"key": self.key, "control": self.control, "covariate_keys": list(self.covariate_keys),
                "delimiter": self.delimiter}

    @classmethod
    def from_dict(cls, d: dict) -> PerturbationSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(d["key"], d["control"], tuple(d.get("covariate_keys", ())), d.get("delimiter", "+"))


def _preview(values: Sequence[str], limit: int = 12) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
