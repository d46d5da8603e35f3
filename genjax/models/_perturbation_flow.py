"""A conditional flow-matching prior on VAE latents that samples the cells of a perturbation, composing
unmeasured conditions from the fields of their parts (Liu et al. 2022, "Compositional Visual Generation with
Composable Diffusion Models"; the single-cell form: CFGen, Palma et al. 2025).

Each training cell's standardised latent is labelled by categorical attributes: one *slot* per member of the
largest combination (the member's name, or ``<none>``) and one attribute per covariate key. Slots are symmetric:
every cell is seen in every order of its members (a single ``A`` as ``(A, <none>)`` and ``(<none>, A)``), so a
member means the same in every slot. With attribute dropout (classifier-free guidance training) the one network
is also every partial conditional ``v(z, t | attribute)`` and the unconditional ``v(z, t)``.

Sampling ``(P, c)``:

* measured in training: the plain conditional field with every attribute given (unused slots ``<none>``);
* not measured: the compositional field ``v_null + sum_g (v_g - v_null)`` over the members (one slot each) and
  the covariate values: samples from ``p(z | A) p(z | B) p(z | c) / p(z)^2``, up to the flow's approximation --
  cells that look like A, like B and like cell type c at once.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Condition, PerturbationSpec, UnknownPerturbationError
from ._latent_prior import AbstractLatentPrior, fit_prior, load_prior, sample_prior

__all__ = ["LatentFlowResponse", "NO_MEMBER"]

NO_MEMBER = "<none>"
"""The slot value of a combination with fewer members than the slots."""


class LatentFlowResponse:
    """The conditional flow over perturbation slots and covariates, with its label vocabularies.

    Attributes:
        spec: the perturbation specification.
        slots: number of member slots.
        members: slot vocabulary (``<none>`` first).
        covariate_values: the categories of each covariate key.
        shift, scale: the latents' standardisation.
        measured: ``"perturbation | covariates"`` keys of the training conditions.
        prior: the fitted :class:`~genjax.models.FlowPrior`.
    """

    def __init__(self, spec: PerturbationSpec, slots: int, members: list[str], covariate_values: list[list[str]],
                 shift: np.ndarray, scale: np.ndarray, measured: set[str], prior: AbstractLatentPrior | None = None):
        self.spec, self.slots, self.members = spec, slots, members
        self.covariate_values = covariate_values
        self.shift, self.scale, self.measured, self.prior = shift, scale, measured, prior

    @staticmethod
    def _key(perturbation: str, covariates: tuple[str, ...]) -> str:
        return " | ".join((perturbation, *covariates))

    @classmethod
    def fit(cls, z: np.ndarray, labels: np.ndarray, covariates: np.ndarray, spec: PerturbationSpec, *,
            steps: int = 4000, batch_size: int = 256, lr: float = 1e-3, cond_dropout: float = 0.2,
            n_hidden: int = 256, n_layers: int = 4, seed: int = 0, progress: bool = True, checkpoint_dir=None,
            resume: bool = False, restart: bool = False, fingerprint: dict | None = None) -> LatentFlowResponse:
        """Fit the flow on latents ``z`` (cells, latent) with canonical ``labels`` and ``covariates``.

        Returns:
            the fitted response (``prior`` set).
        """
        z = np.asarray(z, np.float32)
        member_sets = [spec.members(p) for p in labels]
        slots = max(1, max(len(m) for m in member_sets))
        members = [NO_MEMBER, *spec.vocabulary(set(labels))]
        cov_values = [sorted(set(covariates[:, j])) for j in range(covariates.shape[1])]
        index = {m: i for i, m in enumerate(members)}
        cov_codes = np.stack([np.searchsorted(vals, covariates[:, j]) for j, vals in enumerate(cov_values)], 1) \
            if cov_values else np.zeros((len(z), 0), np.int64)
        rows, codes = [], []
        for i, ms in enumerate(member_sets):  # every order of the members over the slots
            padded = [index[m] for m in ms] + [0] * (slots - len(ms))
            for perm in sorted(set(itertools.permutations(padded))):
                rows.append(i)
                codes.append([*perm, *cov_codes[i]])
        rows = np.asarray(rows)
        shift = z.mean(0)
        scale = z.std(0) + 1e-6
        points = (z[rows] - shift) / scale
        cond = Condition(labels=jnp.asarray(np.asarray(codes, np.int32)))
        n_categories = (len(members),) * slots + tuple(len(v) for v in cov_values)
        prior, _ = fit_prior(points, cond, kind="flow", n_categories=n_categories, steps=steps,
                             batch_size=batch_size, lr=lr, cond_dropout=cond_dropout, n_hidden=n_hidden,
                             n_layers=n_layers, seed=seed, progress=progress, checkpoint_dir=checkpoint_dir,
                             resume=resume, restart=restart, fingerprint=fingerprint)
        measured = {cls._key(p, tuple(c)) for p, c in zip(labels, covariates, strict=True)}
        return cls(spec, slots, members, cov_values, shift, scale, measured, prior)

    def sample(self, perturbation: str, covariates: tuple[str, ...], n: int, seed: int) -> tuple[np.ndarray, str]:
        """``n`` latents (float32 ``(n, latent)``, de-standardised) of ``perturbation`` at ``covariates``, and
        the rule (``"measured"``: plain conditional; ``"composed"``: compositional guidance).

        Raises:
            UnknownPerturbationError: a member or covariate value never seen in training, or more members than
                the training combinations had.
        """
        p = self.spec.canonical(perturbation)
        ms = self.spec.members(p)
        unknown = [m for m in ms if m not in self.members]
        if unknown:
            raise UnknownPerturbationError(f"perturbation {p!r}: member {unknown[0]!r} was never seen in training")
        if len(ms) > self.slots:
            raise UnknownPerturbationError(f"perturbation {p!r} has {len(ms)} members; the flow was trained on "
                                           f"combinations of at most {self.slots}")
        cov_codes = []
        for j, value in enumerate(covariates):
            if value not in self.covariate_values[j]:
                key = self.spec.covariate_keys[j]
                raise UnknownPerturbationError(f"covariate {key}={value!r} was never seen in training")
            cov_codes.append(self.covariate_values[j].index(value))
        measured = self._key(p, tuple(covariates)) in self.measured
        slot_codes = [self.members.index(m) for m in ms]
        if measured:  # every attribute given, unused slots "<none>"
            row = slot_codes + [0] * (self.slots - len(ms)) + cov_codes
            guidance = None
        else:  # the members and covariates as separate experts; unused slots null (they drop out)
            row = slot_codes + [-1] * (self.slots - len(ms)) + cov_codes
            guidance = tuple(1.0 for _ in row)
        cond = Condition(labels=jnp.asarray(np.tile(np.asarray(row, np.int32), (n, 1))))
        z = sample_prior(self.prior, jax.random.key(seed), n, cond=cond, guidance=guidance)
        return np.asarray(z) * self.scale + self.shift, "measured" if measured else "composed"

    def meta(self) -> dict:
        """JSON-ready settings (the prior's parameters are saved separately)."""
        return {"slots": self.slots, "members": self.members, "covariate_values": self.covariate_values,
                "shift": self.shift.tolist(), "scale": self.scale.tolist(), "measured": sorted(self.measured),
                "prior": self.prior.config()}

    @classmethod
    def from_meta(cls, spec: PerturbationSpec, meta: dict, params_path) -> LatentFlowResponse:
        """Inverse of :meth:`meta` with the prior's parameter file."""
        return cls(spec, int(meta["slots"]), list(meta["members"]), [list(v) for v in meta["covariate_values"]],
                   np.asarray(meta["shift"], np.float32), np.asarray(meta["scale"], np.float32),
                   set(meta["measured"]), load_prior(meta["prior"], params_path))
