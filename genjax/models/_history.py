"""A model's training history, readable the genjax way and the scvi-tools way.

genjax's training loop (:func:`genjax.fit`) records one dict per epoch (``epoch``, ``step``, ``loss``, the loss's aux
means such as ``rec``, ``kl_z``, ``kl_l``, ``kl_weight``, ``elbo``, ``time`` and, on validated epochs, ``val_loss``,
``val_rec``, ...). scvi-tools users read ``model.history`` as a dict of one-column DataFrames indexed by epoch,
keyed ``elbo_train``, ``reconstruction_loss_train``, ``kl_local_train``, ``elbo_validation``, ... .
:class:`TrainingHistory` holds the records and answers both:

* integers, slices, ``len``, iteration and ``==`` with a list: the per-epoch records (``len(h)`` is the number of
  epochs, ``h[-1]["loss"]`` the last epoch's loss, ``list(h)`` the records), as genjax code reads them;
* strings, ``keys()``, ``values()``, ``items()``, ``get()`` and ``"elbo_train" in h``: one ``pandas.DataFrame`` per
  metric, as scvi-tools code reads them (``h["elbo_train"]`` has the column ``elbo_train`` and the index
  ``epoch``).

scvi-tools names and what they are made of (means per cell over the epoch; validation keys only on validated
epochs; ``elbo_*`` is, as in scvi-tools, the *negative* ELBO ``reconstruction_loss + kl_local``):

=================================  =============================  ================================================
key                                genjax record field(s)         meaning
=================================  =============================  ================================================
``train_loss``                     ``loss``                       the optimised loss (KL weight of the warm-up)
``train_loss_epoch``               ``loss``                       the same, older scvi-tools' name
``elbo_train``                     ``-elbo``                      ``-log p(x|z) + KL`` at KL weight 1
``reconstruction_loss_train``      ``rec``                        ``-log p(x | z, l)``
``kl_local_train``                 ``kl_z + kl_l``                KL of the per-cell latents (``z``, library)
``kl_global_train``                (none: 0)                      no global latent in a genjax VAE
``validation_loss``                ``val_loss``                   negative ELBO of the validation cells
``elbo_validation``                ``-val_elbo``                  negative ELBO of the validation cells (for an IWAE
                                                                 objective ``val_loss`` is its bound, this the ELBO)
``reconstruction_loss_validation`` ``val_rec``
``kl_local_validation``            ``val_kl_z + val_kl_l``
``kl_global_validation``           (none: 0)
=================================  =============================  ================================================

Every other record field (``loss``, ``step``, ``time``, ``kl_weight``, ``val_elbo``, ...) is also a key, under
its own name. (Key names checked against scvi-tools 1.4's ``SCVI.history`` after ``train(...,
check_val_every_n_epoch=1)``.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TrainingHistory", "SCVI_HISTORY_KEYS"]


def _field(name: str) -> Callable[[Mapping], float | None]:
    return lambda r: r.get(name)


def _negated(name: str) -> Callable[[Mapping], float | None]:
    return lambda r: None if r.get(name) is None else -float(r[name])


def _summed(*names: str) -> Callable[[Mapping], float | None]:
    def get(r):
        present = [r[n] for n in names if r.get(n) is not None]
        return float(sum(present)) if present else None

    return get


def _zero_with(name: str) -> Callable[[Mapping], float | None]:
    return lambda r: 0.0 if r.get(name) is not None else None


SCVI_HISTORY_KEYS: dict[str, tuple[tuple[str, ...], Callable[[Mapping], float | None]]] = {
    "train_loss": (("loss",), _field("loss")),
    "train_loss_epoch": (("loss",), _field("loss")),
    "elbo_train": (("elbo",), _negated("elbo")),
    "reconstruction_loss_train": (("rec",), _field("rec")),
    "kl_local_train": (("kl_z",), _summed("kl_z", "kl_l")),
    "kl_global_train": (("elbo",), _zero_with("elbo")),
    "validation_loss": (("val_loss",), _field("val_loss")),
    "elbo_validation": (("val_elbo",), _negated("val_elbo")),  # not val_loss: an IWAE model validates its bound
    "reconstruction_loss_validation": (("val_rec",), _field("val_rec")),
    "kl_local_validation": (("val_kl_z",), _summed("val_kl_z", "val_kl_l")),
    "kl_global_validation": (("val_elbo",), _zero_with("val_elbo")),
}
"""scvi-tools history key -> (genjax record fields that must all be present in some record for the key to exist,
the value of one record, ``None`` where the record has none)."""


class TrainingHistory(Sequence):
    """Per-epoch training records, also readable as scvi-tools' dict of DataFrames (see the module docstring).

    Arguments:
        records: one mapping per epoch (what :func:`genjax.fit` returns as ``history``); copied.

    Sequence side: ``len(h)`` epochs; ``h[i]`` the record (a dict) of epoch ``i``; ``h[i:j]`` a list of records;
    iteration yields the records; ``h == [...]`` compares the records with a list of dicts (or another history).

    Mapping side (scvi-tools): ``h["elbo_train"]`` a ``pandas.DataFrame`` with one float64 column of that name,
    indexed by ``epoch`` (the epochs that have the value); ``keys()`` the scvi-tools names present, then every other
    record field; ``values()``, ``items()``, ``get(key, default)``; ``"elbo_train" in h``.

    Raises:
        TypeError: a record that is not a mapping (naming its position).
    """

    __hash__ = None  # mutable-looking equality: not hashable, like a list

    def __init__(self, records: Iterable[Mapping] = ()):
        out = []
        for i, r in enumerate(records):
            if not isinstance(r, Mapping):
                raise TypeError(f"a training history is a sequence of per-epoch dicts; record {i} is a "
                                f"{type(r).__name__}: {r!r}")
            out.append(dict(r))
        self._records = out

    # -- the per-epoch records (genjax) ---------------------------------------------------------------------------

    @property
    def records(self) -> list[dict]:
        """The per-epoch records, a new list (of the same dicts)."""
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self._records)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._frame(key)
        if isinstance(key, slice):
            return self._records[key]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self._records[key]
        raise TypeError(f"index a training history with an epoch (int), a slice or a metric name (str); "
                        f"got {type(key).__name__}: {key!r}")

    def __contains__(self, item) -> bool:
        if isinstance(item, str):
            return item in self.keys()
        return item in self._records

    def __eq__(self, other) -> bool:
        if isinstance(other, TrainingHistory):
            return self._records == other._records
        if isinstance(other, (list, tuple)):
            return self._records == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"TrainingHistory(epochs={len(self)}, keys={self.keys()})"

    # -- the scvi-tools view ----------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Metric names: the scvi-tools keys whose fields the records have, then every other record field
        (``epoch`` excluded), in first-seen order."""
        fields: dict[str, None] = {}
        for r in self._records:
            fields.update(dict.fromkeys(r))
        scvi = [k for k, (need, _) in SCVI_HISTORY_KEYS.items() if all(n in fields for n in need)]
        return scvi + [f for f in fields if f not in scvi and f != "epoch"]

    def values(self) -> list:
        """The DataFrame of each key, in :meth:`keys` order."""
        return [self._frame(k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        """``(key, DataFrame)`` pairs, in :meth:`keys` order."""
        return [(k, self._frame(k)) for k in self.keys()]

    def get(self, key: str, default=None):
        """``h[key]`` if ``key`` is a metric name of :meth:`keys`, else ``default``."""
        return self._frame(key) if key in self.keys() else default

    def to_dataframe(self):
        """Every record as one row of a ``pandas.DataFrame`` indexed by epoch (genjax field names as columns)."""
        import pandas as pd

        frame = pd.DataFrame(self._records)
        if "epoch" in frame:
            frame = frame.set_index("epoch")
        frame.index.name = "epoch"
        return frame

    def _frame(self, key: str):
        """The one-column DataFrame of metric ``key``.

        Raises:
            KeyError: ``key`` is not a metric of this history (listing those it has).
        """
        import pandas as pd

        if key not in self.keys():
            raise KeyError(f"{key!r} is not in this training history; it has {self.keys()}")
        value = SCVI_HISTORY_KEYS[key][1] if key in SCVI_HISTORY_KEYS else _field(key)
        epochs, values = [], []
        for i, r in enumerate(self._records):
            v = value(r)
            if v is not None:
                epochs.append(r.get("epoch", i))
                values.append(v)
        try:
            column = np.asarray(values, np.float64)
        except (TypeError, ValueError):  # a field that is not a number (kept as objects)
            column = None
        if column is None or column.ndim != 1:
            column = np.empty(len(values), object)
            for i, v in enumerate(values):
                column[i] = v
        return pd.DataFrame({key: column}, index=pd.Index(epochs, name="epoch"))
