"""The settings of a :class:`genjax.VAE`, as one frozen dataclass validated once, where it is built, and the
translation of scvi-tools' constructor vocabulary into them (:func:`resolve_scvi_aliases`).

scvi-tools -> genjax (what :class:`genjax.VAE` accepts and how it is stored):

===================================  ===============================================================================
scvi-tools keyword                   genjax
===================================  ===============================================================================
``batch_key="batch"``                a condition (decoder, and encoder with ``encode_covariates``), remembered as
                                     ``batch_key``: the condition that ``transform_batch`` and batch correction act on
``categorical_covariate_keys=[..]``  further conditions
``continuous_covariate_keys=[..]``   ``continuous``
``labels_key="cell_type"``           remembered as ``labels_key``; *not* given to the networks (scvi-tools' SCVI does
                                     not use labels either)
``gene_likelihood="zinb"``           ``likelihood="zinb"`` (``"normal"`` is ``"gaussian"``)
``dispersion="gene-batch"``          ``dispersion="gene-category", dispersion_key=batch_key``
``dispersion="gene-label"``          ``dispersion="gene-category", dispersion_key=labels_key``, only where
                                     ``labels_key`` is also a condition (genjax's per-category dispersion is indexed
                                     by a condition the networks see)
===================================  ===============================================================================
"""

from __future__ import annotations

import dataclasses

from .._checks import as_list, check_choice, check_int, check_range
from .._typing import ComputeDtype, Dispersion, LibraryMode, Likelihood, Norm
from ..vae import VAE_OBJECTIVES

__all__ = ["VAEConfig", "resolve_scvi_aliases", "SCVI_LIKELIHOODS"]

SCVI_LIKELIHOODS = {"normal": "gaussian"}
"""scvi-tools ``gene_likelihood`` values that genjax spells differently (the others are the same)."""

DEFAULT_N_IMPORTANCE = 5
"""Importance samples per cell of ``objective='iwae'`` / ``'iwae-dreg'`` when ``n_importance`` is not given
(Burda et al. 2016 trained with 5 and 50)."""


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Options of :class:`genjax.VAE` (see its docstring for their meaning); JSON-serialisable.

    Raises:
        ValueError: an unknown option value, a size below 1, a dropout rate outside ``[0, 1)``, or options that
            contradict each other (``library='latent'`` with a Gaussian likelihood, ``dispersion_key`` /
            ``library_key`` / ``batch_key`` that are not among the conditions, ``dispersion_key`` / ``library_key``
            without the option they belong to, ``n_importance`` other than 1 with ``objective='elbo'``), an
            ``objective`` not in ``("elbo", "iwae", "iwae-dreg")``, ``n_importance`` below 1.
    """

    likelihood: Likelihood = "nb"
    conditions: tuple[str, ...] = ()
    layer: str | None = None
    continuous: tuple[str, ...] = ()
    n_hidden: int = 128
    n_latent: int = 10
    n_layers: int = 1
    dropout: float = 0.1
    dispersion: Dispersion = "gene"
    dispersion_key: str | None = None
    library: LibraryMode = "observed"
    library_key: str | None = None
    size_factor_key: str | None = None
    conditional_prior: bool = False
    encode_covariates: bool = True
    inject_all_layers: bool = False
    norm: Norm = "layer"
    fast_loss: bool = True
    compute_dtype: ComputeDtype | None = None
    seed: int = 0
    batch_key: str | None = None
    labels_key: str | None = None
    objective: str = "elbo"
    n_importance: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "conditions", tuple(as_list(self.conditions)))
        object.__setattr__(self, "continuous", tuple(as_list(self.continuous)))
        check_choice("likelihood", self.likelihood, Likelihood)
        check_choice("dispersion", self.dispersion, Dispersion)
        check_choice("library", self.library, LibraryMode)
        check_choice("norm", self.norm, Norm)
        if self.compute_dtype is not None:
            check_choice("compute_dtype", self.compute_dtype, ComputeDtype)
        for name in ("n_hidden", "n_latent", "n_layers"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        object.__setattr__(self, "dropout", check_range("dropout", self.dropout, low=0.0, high=1.0, high_open=True))
        object.__setattr__(self, "seed", check_int("seed", self.seed, low=None))
        check_choice("objective", self.objective, VAE_OBJECTIVES)
        if self.n_importance is None:
            object.__setattr__(self, "n_importance", 1 if self.objective == "elbo" else DEFAULT_N_IMPORTANCE)
        object.__setattr__(self, "n_importance", check_int("n_importance", self.n_importance))
        self._check_relations()

    def _check_relations(self) -> None:
        """Options that depend on each other."""
        if self.likelihood == "gaussian" and self.library == "latent":
            raise ValueError("library='latent' needs a count likelihood, not 'gaussian'")
        if self.dispersion == "gene-category":
            key = self.dispersion_key or (self.conditions[0] if self.conditions else None)
            if key is None:
                raise ValueError("dispersion='gene-category' needs a categorical condition (conditions=[...])")
            if key not in self.conditions:
                raise ValueError(f"dispersion_key {key!r} must be one of the conditions {list(self.conditions)}")
        elif self.dispersion_key is not None:
            raise ValueError("dispersion_key is only used with dispersion='gene-category'")
        for name in ("batch_key", "labels_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be an adata.obs column name (str) or None; got {value!r}")
        if self.batch_key is not None and self.batch_key not in self.conditions:
            raise ValueError(f"batch_key {self.batch_key!r} must be one of the conditions {list(self.conditions)}")
        if self.objective == "elbo" and self.n_importance != 1:
            raise ValueError(f"n_importance={self.n_importance} is only used with objective='iwae' or 'iwae-dreg' "
                             "(objective='elbo' draws one sample)")
        if self.library_key is not None:
            if self.library != "latent":
                raise ValueError("library_key is only used with library='latent'")
            if self.library_key not in self.conditions:
                raise ValueError(f"library_key {self.library_key!r} must be one of the conditions "
                                 f"{list(self.conditions)}")

    @property
    def counts(self) -> bool:
        """Whether the data are counts (every likelihood but ``"gaussian"``)."""
        return self.likelihood != "gaussian"

    def to_dict(self) -> dict:
        """The options as a JSON-serialisable dict (lists for the key tuples)."""
        out = dataclasses.asdict(self)
        out["conditions"], out["continuous"] = list(self.conditions), list(self.continuous)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        """Inverse of :meth:`to_dict`; keys this version does not know are refused by name."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown VAE option(s) {unknown}")
        return cls(**d)


def resolve_scvi_aliases(*, likelihood: str | None, gene_likelihood: str | None, conditions, continuous,
                         batch_key: str | None, labels_key: str | None, categorical_covariate_keys,
                         continuous_covariate_keys, dispersion: str, dispersion_key: str | None) -> dict:
    """genjax options from :class:`genjax.VAE`'s keywords, scvi-tools' spellings included (module docstring).

    Arguments:
        likelihood: genjax's keyword, ``None`` where not given (then ``"nb"``).
        gene_likelihood: scvi-tools' name for it (``"nb"``, ``"zinb"``, ``"poisson"``, ``"normal"``) or ``None``.
        conditions, continuous: genjax's obs keys (a string, a sequence or ``None``).
        batch_key, labels_key, categorical_covariate_keys, continuous_covariate_keys: scvi-tools' obs keys.
        dispersion, dispersion_key: genjax's values or scvi-tools' ``"gene-batch"`` / ``"gene-label"``.

    Returns:
        ``{"likelihood", "conditions", "continuous", "dispersion", "dispersion_key", "batch_key", "labels_key"}``
        for :class:`VAEConfig`: the conditions are ``conditions``, then ``batch_key``, then
        ``categorical_covariate_keys``, the continuous covariates ``continuous`` then ``continuous_covariate_keys``
        (a key already named is not repeated: the batch may also be listed among ``conditions``).

    Raises:
        ValueError: ``likelihood`` and ``gene_likelihood`` that disagree; ``"gene-batch"`` without ``batch_key``
            or with another ``dispersion_key``; ``"gene-label"`` without ``labels_key``, with another
            ``dispersion_key``, or with ``labels_key`` not among the conditions (the message says how to make it
            one, and what that changes).
    """
    if gene_likelihood is not None:
        translated = SCVI_LIKELIHOODS.get(gene_likelihood, gene_likelihood)
        if likelihood is not None and likelihood != translated:
            raise ValueError(f"likelihood={likelihood!r} and gene_likelihood={gene_likelihood!r} disagree; "
                             "gene_likelihood is scvi-tools' name for likelihood: pass one of them")
        likelihood = translated
    likelihood = "nb" if likelihood is None else likelihood
    cats = _merge(as_list(conditions), [*as_list(batch_key), *as_list(categorical_covariate_keys)])
    conts = _merge(as_list(continuous), as_list(continuous_covariate_keys))
    if dispersion in ("gene-batch", "gene-label"):
        role, key = ("batch_key", batch_key) if dispersion == "gene-batch" else ("labels_key", labels_key)
        if key is None:
            raise ValueError(f"dispersion={dispersion!r} (scvi-tools) is one dispersion per gene and category of "
                             f"{role}, which was not given; pass {role}=... or genjax's dispersion='gene-category', "
                             "dispersion_key=<a condition>")
        if dispersion_key is not None and dispersion_key != key:
            raise ValueError(f"dispersion={dispersion!r} uses {role}={key!r}, but dispersion_key={dispersion_key!r} "
                             "was also given; pass one of them")
        if key not in cats:  # only gene-label can get here: batch_key is always a condition
            raise ValueError(f"dispersion='gene-label' indexes the dispersion by labels_key {key!r}, but genjax's "
                             "per-category dispersion needs a condition that the networks see, and labels are not "
                             f"one (as in scvi-tools' SCVI); add it with conditions=[..., {key!r}] (the decoder then "
                             "receives the label) or use dispersion='gene' / 'gene-batch'")
        dispersion, dispersion_key = "gene-category", key
    return {"likelihood": likelihood, "conditions": tuple(cats), "continuous": tuple(conts),
            "dispersion": dispersion, "dispersion_key": dispersion_key, "batch_key": batch_key,
            "labels_key": labels_key}


def _merge(keys: list, more: list) -> list:
    """``keys`` followed by the keys of ``more`` not named before: a key named in two roles (a condition and the
    batch key) is one condition. Repeats within ``keys`` stay, for the registry's error."""
    out = list(keys)
    for k in more:
        if k not in out:
            out.append(k)
    return out
