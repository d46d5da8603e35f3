"""The settings of a :class:`genjax.VAE`, as one frozen dataclass validated once, where it is built."""

from __future__ import annotations

import dataclasses

from .._checks import as_list, check_choice, check_int, check_range
from .._typing import ComputeDtype, Dispersion, LibraryMode, Likelihood, Norm

__all__ = ["VAEConfig"]


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Options of :class:`genjax.VAE` (see its docstring for their meaning); JSON-serialisable.

    Raises:
        ValueError: an unknown option value, a size below 1, a dropout rate outside ``[0, 1)``, or options that
            contradict each other (``library='latent'`` with a Gaussian likelihood, ``dispersion_key`` /
            ``library_key`` that are not among the conditions or without the option they belong to).
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
