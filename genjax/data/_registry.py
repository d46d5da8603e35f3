"""What a model was trained on: genes, condition categories, covariate statistics, layer (JSON-serialisable).

:class:`DataRegistry` records the training data's gene names and order, the categories of every condition
(``obs`` keys) and the mean / standard deviation of every continuous covariate. At inference it re-encodes new data
the same way and raises on a gene-set mismatch, a missing ``obs`` key or an unseen category, naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DataRegistry"]


@dataclasses.dataclass(frozen=True)
class DataRegistry:
    """What a model was trained on, to encode new data the same way (JSON-serialisable).

    Attributes:
        var_names: gene names in training order.
        conditions: ``{obs key: categories}`` of every categorical condition, in code order.
        continuous: ``{obs key: (mean, std)}`` of every continuous covariate (values are standardised).
        layer: the layer the model reads (``None``: ``X``).
    """

    var_names: tuple[str, ...]
    conditions: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    continuous: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    layer: str | None = None

    @classmethod
    def from_anndata(cls, adata, conditions: Sequence[str] = (), continuous: Sequence[str] = (),
                     layer: str | None = None) -> DataRegistry:
        """Record genes, condition categories and covariate statistics of a training ``adata``.

        Categories are those present in the data, in the order of a pandas categorical column (else sorted as
        strings). Continuous covariates are standardised with their training mean and standard deviation.

        Raises:
            KeyError: a condition / covariate key missing from ``adata.obs``.
            ValueError: duplicated keys or gene names, a missing (NaN) condition value, a non-finite covariate.
        """
        conditions, continuous = list(conditions or ()), list(continuous or ())
        dup = sorted({k for k in conditions + continuous if (conditions + continuous).count(k) > 1})
        if dup:
            raise ValueError(f"obs key(s) {dup} given more than once in conditions / continuous covariates")
        var_names = tuple(str(v) for v in adata.var_names)
        if len(set(var_names)) != len(var_names):
            seen, first = set(), None
            for v in var_names:
                if v in seen:
                    first = v
                    break
                seen.add(v)
            raise ValueError(f"gene names must be unique; {first!r} occurs more than once "
                             "(call adata.var_names_make_unique())")
        cats = {}
        for key in conditions:
            col = _obs_column(adata, key)
            values = _condition_strings(col, key, adata.obs_names)
            if hasattr(col, "cat"):
                present = set(values)
                order = [str(c) for c in col.cat.categories if str(c) in present]
            else:
                order = sorted(set(values))
            cats[key] = tuple(order)
        conts = {}
        for key in continuous:
            vals = _continuous_values(_obs_column(adata, key), key, adata.obs_names)
            std = float(vals.std())
            conts[key] = (float(vals.mean()), std if std > 0 else 1.0)
        return cls(var_names, cats, conts, layer)


    @property
    def n_genes(self) -> int:
        return len(self.var_names)

    @property
    def n_categories(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.conditions.values())

    def gene_order(self, adata) -> np.ndarray | None:
        """Column indices putting ``adata``'s genes in training order (``None`` if already in order).

        Raises:
            ValueError: a training gene is missing from ``adata`` or ``adata`` has genes the model does not know,
                naming the first few of each.
        """
        names = [str(v) for v in adata.var_names]
        if tuple(names) == self.var_names:
            return None
        pos = {v: i for i, v in enumerate(names)}
        missing = [v for v in self.var_names if v not in pos]
        extra = sorted(set(names) - set(self.var_names))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} training gene(s) missing, e.g. {missing[:5]}")
            if extra:
                parts.append(f"{len(extra)} unknown gene(s), e.g. {extra[:5]}")
            raise ValueError("gene set of the data does not match the model's "
                             f"({len(self.var_names)} genes): " + "; ".join(parts)
                             + ". Subset the data to the training genes (adata[:, model.var_names]).")
        return np.array([pos[v] for v in self.var_names], dtype=np.int64)

    def encode_conditions(self, adata) -> np.ndarray:
        """Category codes of ``adata.obs`` conditions, int32 (cells, n_conditions).

        Raises:
            KeyError: a condition key missing from ``adata.obs``.
            ValueError: a value not among the training categories (naming key, value and cell) or missing.
        """
        n = adata.n_obs
        codes = np.zeros((n, len(self.conditions)), np.int32)
        for j, (key, cats) in enumerate(self.conditions.items()):
            values = _condition_strings(_obs_column(adata, key), key, adata.obs_names)
            codes[:, j] = self._codes(key, cats, values, adata.obs_names)
        return codes

    def encode_values(self, n: int, **values) -> np.ndarray:
        """Codes for explicitly requested condition values (one value per key, repeated ``n`` times), or -1 for
        keys not given. Returns int32 (n, n_conditions).

        Raises:
            KeyError: a key that is not a condition of the model.
            ValueError: a value that is not one of the key's training categories.
        """
        unknown = [k for k in values if k not in self.conditions]
        if unknown:
            raise KeyError(f"{unknown[0]!r} is not a condition of this model (conditions: "
                           f"{list(self.conditions)})")
        codes = np.full((n, len(self.conditions)), -1, np.int32)
        for j, (key, cats) in enumerate(self.conditions.items()):
            if key in values:
                v = values[key]
                vals = [str(v)] * n if isinstance(v, str) or np.ndim(v) == 0 else [str(u) for u in v]
                if len(vals) != n:
                    raise ValueError(f"condition {key!r}: got {len(vals)} values for {n} cells")
                codes[:, j] = self._codes(key, cats, vals, None)
        return codes

    @staticmethod
    def _codes(key, cats, values, obs_names) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(cats)}
        out = np.empty(len(values), np.int32)
        for i, v in enumerate(values):
            code = lookup.get(v)
            if code is None:
                where = f" (cell {str(obs_names[i])!r})" if obs_names is not None else ""
                raise ValueError(f"unknown category {v!r} for condition {key!r}{where}; the model was trained on "
                                 f"{list(cats)}")
            out[i] = code
        return out

    def encode_continuous(self, adata) -> np.ndarray:
        """Standardised continuous covariates of ``adata.obs``, float32 (cells, n_continuous).

        Raises:
            KeyError: a covariate key missing from ``adata.obs``.
            ValueError: a non-numeric or non-finite value, naming the key and cell.
        """
        out = np.zeros((adata.n_obs, len(self.continuous)), np.float32)
        for j, (key, (mean, std)) in enumerate(self.continuous.items()):
            vals = _continuous_values(_obs_column(adata, key), key, adata.obs_names)
            out[:, j] = (vals - mean) / std
        return out

    def decode_conditions(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """Category labels (object arrays) from int codes (cells, n_conditions)."""
        return {key: np.asarray(cats, dtype=object)[codes[:, j]] for j, (key, cats) in
                enumerate(self.conditions.items())}


    def to_dict(self) -> dict:
        return {"var_names": list(self.var_names), "conditions": {k: list(v) for k, v in self.conditions.items()},
                "continuous": {k: list(v) for k, v in self.continuous.items()}, "layer": self.layer}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataRegistry:
        return cls(tuple(d["var_names"]), {k: tuple(v) for k, v in d["conditions"].items()},
                   {k: (float(v[0]), float(v[1])) for k, v in d["continuous"].items()}, d.get("layer"))


def _obs_column(adata, key):
    if key not in adata.obs:
        raise KeyError(f"obs key {key!r} not found in adata.obs (columns: {list(adata.obs.columns)})")
    return adata.obs[key]


def _condition_strings(col, key, obs_names) -> list[str]:
    isna = np.asarray(col.isna())
    if isna.any():
        i = int(np.flatnonzero(isna)[0])
        raise ValueError(f"condition {key!r} is missing (NaN) for cell {str(obs_names[i])!r} (row {i})")
    return [str(v) for v in col]


def _continuous_values(col, key, obs_names) -> np.ndarray:
    try:
        vals = np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"continuous covariate {key!r} must be numeric ({err})") from err
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"continuous covariate {key!r} is {vals[i]!r} (not finite) for cell "
                         f"{str(obs_names[i])!r} (row {i})")
    return vals
