"""Generative priors over points in R^d (VAE latents, or log1p expression), conditional with classifier-free
guidance: the piece of :class:`genjax.LatentGenerator` that is fitted on the encoded cells.

The family is an object, not a string: :class:`DiffusionPrior` (a score network on a forward SDE, sampled by the
probability-flow ODE or the reverse SDE) and :class:`FlowPrior` (a velocity network on a probability path, sampled
by the flow ODE) share :class:`AbstractLatentPrior`: network settings, parameters, the field the samplers
integrate, the training objective, sampling and a JSON configuration that :func:`load_prior` rebuilds them from.
:func:`fit_prior` trains one with :func:`genjax.fit_field`.

The network is a :class:`genjax.nn.FieldNet` (``field="mlp"``, the default) or a :class:`genjax.nn.DiTField`
(``field="dit"``, a transformer over tokens of grouped dimensions); the JSON ``net`` settings say which under
``"arch"`` (absent: ``"mlp"``, as in every prior saved before the DiT existed; the MLP's settings are written
exactly as before, so its saves, fingerprints and checkpoints are unchanged).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import numbers
import warnings
from typing import Any, ClassVar, Literal, get_args

import jax
import jax.numpy as jnp
import optax

from .._checks import check_choice, check_int, check_range
from .._typing import Coupling, Parameterisation, PriorFamily, SDEName
from ..diffusion import AbstractSDE, make_sde
from ..fields import (
    AbstractField,
    AbstractObjective,
    ConditionalFlowMatching,
    DenoisingScoreMatching,
    ScoreFunction,
    VelocityField,
    guidance_groups,
    guided_field,
)
from ..nn import Condition, DiTField, FieldNet, token_ids
from ..solvers import sample_flow, sample_probability_flow_ode, sample_reverse_sde
from ..training import fit_field, load_pytree

__all__ = ["AbstractLatentPrior", "DiffusionPrior", "FlowPrior", "PRIOR_FAMILIES", "FIELD_ARCHS", "FieldArch",
           "field_settings", "fit_prior", "sample_prior", "load_prior"]

# FieldNet settings saved by genjax <= 0.1 under the fields' earlier names
_RENAMED_NET = {"hidden": "n_hidden", "num_blocks": "n_layers", "num_classes": "n_categories"}

FieldArch = Literal["mlp", "dit"]
"""The prior's field network: :class:`genjax.nn.FieldNet` (``"mlp"``) or :class:`genjax.nn.DiTField` (``"dit"``)."""

FIELD_ARCHS: tuple[str, ...] = get_args(FieldArch)
"""Names of the field networks (the ``field=`` option of :func:`fit_prior` and :class:`genjax.LatentGenerator`)."""

_FIELD_MODULES = {"mlp": FieldNet, "dit": DiTField}
# default sizes of each architecture (n_hidden, n_layers; a DiT also its tokenisation and heads), written out in
# full into every saved configuration so that a later change of defaults never changes a saved prior
_FIELD_DEFAULTS = {"mlp": {"n_hidden": 256, "n_layers": 4},
                   "dit": {"n_hidden": 64, "n_layers": 4, "n_heads": 4, "tokens": 2, "mlp_ratio": 4.0}}
# the further JSON-valued module settings ``field_kwargs`` may give
_FIELD_OPTIONS = {"mlp": ("n_hidden", "n_layers", "residual", "film", "norm", "zero_output", "time_features",
                          "time_scale"),
                  "dit": ("n_hidden", "n_layers", "tokens", "n_heads", "mlp_ratio", "zero_output", "time_features",
                          "time_scale")}


@functools.cache
def _field_net(arch: str = "mlp", **kwargs) -> FieldNet | DiTField:
    # one module instance per configuration: its bound ``apply`` is then the same static object for every prior
    # with these settings, and jitted samplers do not recompile for a reloaded model
    return _FIELD_MODULES[arch](**kwargs)


def _hashable_net(net: dict) -> dict:
    """``net`` with its sequences (condition sizes, DiT token ids) as tuples of ints (JSON gives lists)."""
    out = {**net, "n_categories": tuple(int(k) for k in net.get("n_categories", ()))}
    if isinstance(out.get("tokens"), list | tuple):
        out["tokens"] = tuple(int(k) for k in out["tokens"])
    return out


def field_settings(field: FieldArch, dim: int, *, n_hidden: int | None = None, n_layers: int | None = None,
                   n_categories: tuple[int, ...] = (), n_continuous: int = 0,
                   field_kwargs: dict | None = None) -> dict:
    """The prior's network settings (its JSON ``net``), checked against the ``dim`` modelled dimensions.

    Arguments:
        field: ``"mlp"`` (:class:`genjax.nn.FieldNet`) or ``"dit"`` (:class:`genjax.nn.DiTField`).
        dim: dimension of the modelled points (a DiT's tokens must cover it).
        n_hidden: width (MLP hidden width / DiT token width); ``None``: the architecture's default (256 / 64).
        n_layers: residual blocks / transformer blocks; ``None``: the default (4 / 4).
        n_categories: categories per conditioning attribute.
        n_continuous: continuous covariates.
        field_kwargs: further settings of the module: MLP ``residual``, ``film``, ``norm``, ``zero_output``,
            ``time_features``, ``time_scale``; DiT ``tokens`` (group size, default 2, or one id per dimension),
            ``n_heads`` (default 4), ``mlp_ratio`` (default 4), ``zero_output``, ``time_features``,
            ``time_scale``; either may also give ``n_hidden`` / ``n_layers`` when the arguments are ``None``.

    Returns:
        a dict: ``arch`` (only for ``"dit"``: a ``net`` without it is a :class:`genjax.nn.FieldNet`, as in every
        prior saved before the DiT existed), ``n_hidden``, ``n_layers``, ``n_categories`` (tuple),
        ``n_continuous`` when non-zero, a DiT's ``tokens`` / ``n_heads`` / ``mlp_ratio``, and any other
        ``field_kwargs``.

    Raises:
        ValueError: an unknown field, an unknown or doubly given setting (naming it), or settings the module
            refuses (a DiT's tokens not covering ``dim``, ``n_heads`` not dividing ``n_hidden``), before any compute.
    """
    check_choice("field", field, FIELD_ARCHS)
    kwargs = dict(field_kwargs or {})
    unknown = sorted(set(kwargs) - set(_FIELD_OPTIONS[field]))
    if unknown:
        raise ValueError(f"field_kwargs {unknown} are not settings of field={field!r}; allowed: "
                         f"{list(_FIELD_OPTIONS[field])}")
    for name, value in (("n_hidden", n_hidden), ("n_layers", n_layers)):
        if value is not None:
            if name in kwargs and kwargs[name] != value:
                raise ValueError(f"{name} is given twice: {name}={value} and field_kwargs[{name!r}]={kwargs[name]}")
            kwargs[name] = value
    # the default architecture writes no "arch": its settings stay exactly those of priors saved before the DiT
    net = {**({} if field == "mlp" else {"arch": field}), **_FIELD_DEFAULTS[field], **kwargs}
    net["n_hidden"] = check_int("n_hidden", net["n_hidden"])
    net["n_layers"] = check_int("n_layers", net["n_layers"], low=0)
    net["n_categories"] = tuple(check_int("n_categories", k) for k in n_categories)
    if n_continuous:
        net["n_continuous"] = check_int("n_continuous", n_continuous)
    if field == "dit":
        ids = token_ids(net["tokens"], check_int("dim", dim))  # raises on tokens that do not cover dim
        net["tokens"] = int(net["tokens"]) if isinstance(net["tokens"], numbers.Integral) else ids
        net["n_heads"] = check_int("n_heads", net["n_heads"])
        net["mlp_ratio"] = check_range("mlp_ratio", net["mlp_ratio"], low=0.0, low_open=True)
        _field_net(**_hashable_net(net)).token_ids(dim)  # n_heads must divide n_hidden
    return net


@dataclasses.dataclass
class AbstractLatentPrior(abc.ABC):
    """A fitted (or to-be-fitted) prior over ``dim``-dimensional points.

    Attributes:
        dim: dimension of the modelled points.
        net: the network settings (:func:`field_settings`): ``arch`` (``"mlp"``: :class:`genjax.nn.FieldNet`,
            ``"dit"``: :class:`genjax.nn.DiTField`; absent: ``"mlp"``) and the module's keyword arguments
            (``n_hidden``, ``n_layers``, ``n_categories``, ...).
        params: network parameters (EMA parameters when trained with EMA), or ``None`` before fitting.
    """

    dim: int
    net: dict
    params: Any = None

    family: ClassVar[str]

    @property
    def kind(self) -> str:
        """The family name, ``"diffusion"`` or ``"flow"``."""
        return self.family

    @property
    def arch(self) -> str:
        """The field network's architecture, ``"mlp"`` or ``"dit"``."""
        return self.net.get("arch", "mlp")

    @property
    def module(self) -> FieldNet | DiTField:
        """The field network (one shared instance per configuration)."""
        return _field_net(**_hashable_net(self.net))

    @abc.abstractmethod
    def objective(self, cond_dropout: float, coupling: Coupling) -> AbstractObjective:
        """The training objective of this prior's network."""

    @abc.abstractmethod
    def field(self) -> AbstractField:
        """The batched field ``f(x, t, cond=None) -> (n, d)`` the samplers integrate; a pytree whose only leaves
        are the parameters, so jitted samplers reuse their compilation across priors with the same settings."""

    @abc.abstractmethod
    def _solve(self, key, field, shape, cond, method, n_steps, rtol, atol, **kwargs):
        """Integrate ``field`` from prior draws of ``shape``."""

    def sample(self, key, n: int, *, cond: Condition | None = None, guidance=None, method: str = "ode",
               n_steps: int | None = None, rtol: float = 1e-3, atol: float = 1e-3, **kwargs):
        """Draw ``n`` points (see :func:`sample_prior`); returns ``(n, dim)`` float32 in the standardised space."""
        field = self.field()
        if guidance is not None and cond is not None:
            field = guided_field(field, guidance, n_groups=guidance_groups(cond))
        return self._solve(key, field, (int(n), self.dim), cond, method, n_steps, rtol, atol, **kwargs)

    def config(self) -> dict:
        """JSON-serialisable settings (everything but the parameters)."""
        net = dict(self.net)
        net["n_categories"] = list(net.get("n_categories", ()))
        if isinstance(net.get("tokens"), tuple | list):
            net["tokens"] = list(net["tokens"])
        return {"family": self.family, "dim": self.dim, "net": net, **self._family_config()}

    @abc.abstractmethod
    def _family_config(self) -> dict:
        """The family's own settings for :meth:`config`."""


@dataclasses.dataclass
class DiffusionPrior(AbstractLatentPrior):
    """A score network on a forward SDE (denoising score matching).

    Attributes:
        sde: ``{"name": "vp" | "subvp" | "ve", **constructor arguments}`` of the SDE (:func:`genjax.diffusion.make_sde`).
        parameterisation: what the network outputs (default ``"eps_skip"``, the noise minus its optimum for
            unit-variance Gaussian data, which keeps probability-flow samples of the standardised points from
            running off in the tails; see :mod:`genjax.diffusion`).
    """

    sde: dict = dataclasses.field(default_factory=lambda: {"name": "vp"})
    parameterisation: Parameterisation = "eps_skip"

    family: ClassVar[str] = "diffusion"

    def make_sde(self) -> AbstractSDE:
        """The SDE object."""
        kw = dict(self.sde)
        return make_sde(kw.pop("name"), **kw)

    def objective(self, cond_dropout: float, coupling: Coupling) -> DenoisingScoreMatching:
        if coupling != "independent":
            raise ValueError(f"coupling={coupling!r} is a flow-matching option; a diffusion prior has none")
        return DenoisingScoreMatching(self.make_sde(), parameterisation=self.parameterisation,
                                      cond_dropout=cond_dropout)

    def field(self) -> ScoreFunction:
        return ScoreFunction(self.module.apply, self.params, self.make_sde(), self.parameterisation)

    def _solve(self, key, field, shape, cond, method, n_steps, rtol, atol, **kwargs):
        check_choice("method (diffusion prior)", method, ("ode", "sde"))
        if method == "ode":
            return sample_probability_flow_ode(key, field, self.make_sde(), shape, rtol=rtol, atol=atol, cond=cond,
                                               n_steps=n_steps, **kwargs)[0]
        return sample_reverse_sde(key, field, self.make_sde(), shape, n_steps=n_steps or 500, cond=cond,
                                  **kwargs)[0]

    def _family_config(self) -> dict:
        return {"sde": dict(self.sde), "parameterisation": self.parameterisation}


@dataclasses.dataclass
class FlowPrior(AbstractLatentPrior):
    """A velocity network on the linear (rectified-flow) path, trained by conditional flow matching."""

    family: ClassVar[str] = "flow"

    def objective(self, cond_dropout: float, coupling: Coupling) -> ConditionalFlowMatching:
        return ConditionalFlowMatching(coupling=coupling, cond_dropout=cond_dropout)

    def field(self) -> VelocityField:
        return VelocityField(self.module.apply, self.params)

    def _solve(self, key, field, shape, cond, method, n_steps, rtol, atol, **kwargs):
        check_choice("method (flow prior)", method, ("ode",))
        return sample_flow(key, field, shape, cond=cond, n_steps=n_steps, rtol=rtol, atol=atol, **kwargs)[0]

    def _family_config(self) -> dict:
        return {}


PRIOR_FAMILIES: dict[str, type[AbstractLatentPrior]] = {"diffusion": DiffusionPrior, "flow": FlowPrior}
"""The prior class of each family name (the ``prior=`` option of :class:`genjax.LatentGenerator`)."""


def _net_settings(net: dict) -> dict:
    """FieldNet settings in the current vocabulary (earlier names mapped, with a warning)."""
    old = sorted(k for k in net if k in _RENAMED_NET)
    if old:
        warnings.warn(f"FieldNet settings {old} are now called {[_RENAMED_NET[k] for k in old]}", DeprecationWarning,
                      stacklevel=3)
    return {_RENAMED_NET.get(k, k): v for k, v in net.items()}


def fit_prior(z, cond: Condition | None, *, kind: PriorFamily = "diffusion", n_categories: tuple[int, ...] = (),
              n_continuous: int = 0, steps: int = 4000, batch_size: int = 256, lr: float = 1e-3, cond_dropout: float = 0.1,
              n_hidden: int | None = None, n_layers: int | None = None, ema_decay: float | None = 0.999,
              sde: SDEName = "vp", sde_kwargs: dict | None = None, coupling: Coupling = "independent", seed: int = 0,
              progress: bool = True, checkpoint_dir=None, resume: bool = False, restart: bool = False,
              fingerprint: dict | None = None, field: FieldArch = "mlp", field_kwargs: dict | None = None,
              **train_kwargs) -> tuple[AbstractLatentPrior, list[dict]]:
    """Fit a conditional diffusion (denoising score matching) or flow-matching prior on points ``z``.

    Arguments:
        z: ``(n, d)`` float32 training points (standardise them first).
        cond: a :class:`genjax.nn.Condition` per point (labels ``(n, k)``) or ``None``.
        kind: the family, ``"diffusion"`` or ``"flow"``.
        n_categories: categories per attribute of ``cond``.
        n_continuous: continuous covariates of ``cond`` (``cond.covariates``; standardise them first).
        steps, batch_size, lr: optimizer steps, batch size and Adam learning rate (cosine-decayed to 10%).
        cond_dropout: null-token dropout rate per attribute (classifier-free guidance).
        n_hidden, n_layers: width and blocks of the field network; ``None``: 256 and 4 residual blocks for the
            :class:`genjax.nn.FieldNet`, token width 64 and 4 transformer blocks for the
            :class:`genjax.nn.DiTField` (earlier names ``hidden``, ``num_blocks``, ``num_classes`` are accepted
            with a ``DeprecationWarning``).
        ema_decay: EMA of the parameters used for sampling (``None``: no EMA).
        sde, sde_kwargs: ``"vp"`` | ``"subvp"`` | ``"ve"`` and its constructor arguments (diffusion).
        coupling: ``"independent"`` or ``"ot"`` (minibatch optimal transport within conditions; flow only).
        seed, progress, checkpoint_dir, resume, restart: as :func:`genjax.fit`; checkpoints every 200 steps and at
            the end.
        fingerprint: what else identifies the run (e.g. the earlier stage's parameters), added to the prior's own
            settings in the checkpoints' run fingerprint.
        field: the network, ``"mlp"`` (:class:`genjax.nn.FieldNet`, default) or ``"dit"``
            (:class:`genjax.nn.DiTField`, a transformer over tokens of grouped dimensions).
        field_kwargs: further settings of the network (JSON values; see :func:`field_settings`), e.g.
            ``{"tokens": 2, "n_heads": 4}`` for a DiT over pairs of latent dimensions, or
            ``{"tokens": genjax.nn.program_tokens(loadings, 24)}`` for gene-programme tokens.
        train_kwargs: further :class:`genjax.TrainConfig` fields.

    Returns:
        ``(prior, history)``: a fitted :class:`DiffusionPrior` or :class:`FlowPrior` and the training records.

    Raises:
        ValueError: an unknown family, SDE, coupling or field, a coupling for a diffusion prior, or field settings
            that do not fit (:func:`field_settings`), before any compute.
    """
    renamed = {k: train_kwargs.pop(k) for k in list(train_kwargs) if k in _RENAMED_NET}
    sizes = _net_settings({"n_hidden": n_hidden, "n_layers": n_layers, "n_categories": n_categories, **renamed})
    z = jnp.asarray(z, jnp.float32)
    if z.ndim != 2:
        raise ValueError(f"z must be (n, d) points; got shape {z.shape}")
    net = field_settings(field, int(z.shape[1]), n_hidden=sizes["n_hidden"], n_layers=sizes["n_layers"],
                         n_categories=tuple(sizes["n_categories"]), n_continuous=n_continuous,
                         field_kwargs=field_kwargs)
    check_choice("kind", kind, PriorFamily)
    check_choice("sde", sde, SDEName)
    steps, batch_size = check_int("steps", steps), check_int("batch_size", batch_size)
    check_range("lr", lr, low=0.0, low_open=True)
    if kind == "diffusion":
        prior = DiffusionPrior(int(z.shape[1]), net, sde={"name": sde, **(sde_kwargs or {})})
    else:
        prior = FlowPrior(int(z.shape[1]), net)
    objective = prior.objective(cond_dropout, coupling)  # checks the options before any compute
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1)))
    own = {"prior.family": kind, **{f"prior.{k}": v for k, v in net.items()}, "prior.lr": lr, "prior.steps": steps,
           "prior.cond_dropout": cond_dropout, "prior.coupling": coupling, **prior._family_config()}
    res = fit_field(z, objective, prior.module, cond=cond, optimizer=optimizer, seed=seed, max_steps=steps,
                    batch_size=min(batch_size, z.shape[0]), ema_decay=ema_decay, progress=progress,
                    checkpoint_dir=checkpoint_dir, resume=resume, restart=restart,
                    fingerprint={**own, **(fingerprint or {})}, checkpoint_every=10**9,
                    checkpoint_every_steps=min(200, steps), description="prior", **train_kwargs)
    prior.params = res.params
    return prior, res.history


def sample_prior(prior: AbstractLatentPrior, key, n: int, *, cond: Condition | None = None, guidance=None,
                 method: str = "ode", n_steps: int | None = None, rtol: float = 1e-3, atol: float = 1e-3,
                 **kwargs):
    """Draw ``n`` points from a fitted prior.

    Arguments:
        prior: a fitted :class:`DiffusionPrior` or :class:`FlowPrior`. key: PRNG key. n: number of points.
        cond: :class:`genjax.nn.Condition` with leading size ``n`` (``-1`` labels: null / not requested).
        guidance: ``None`` (plain conditional), a weight ``w`` (``f_null + w (f_c - f_null)``), or a tuple of
            one weight per attribute (compositional guidance).
        method: diffusion: ``"ode"`` (adaptive probability-flow ODE, default) or ``"sde"`` (Euler-Maruyama,
            ``n_steps`` default 500); flow: ``"ode"`` (adaptive Dopri5, or fixed ``n_steps``).
        rtol, atol: tolerances of adaptive solves.
        kwargs: passed to the sampler (``solver``, ``ts``, ...).

    Returns:
        ``(n, d)`` float32 samples (standardised space).

    Raises:
        ValueError: a method the family does not have.
    """
    return prior.sample(key, n, cond=cond, guidance=guidance, method=method, n_steps=n_steps, rtol=rtol, atol=atol,
                        **kwargs)


def load_prior(config: dict, params_path) -> AbstractLatentPrior:
    """Rebuild a prior from :meth:`AbstractLatentPrior.config` and its saved parameters (also reads the
    configuration of models saved by genjax <= 0.1: ``kind``, ``sde={"type": ...}``, earlier FieldNet names; a
    ``net`` without ``"arch"`` is a :class:`genjax.nn.FieldNet`).

    Raises:
        ValueError: an unknown family or field architecture, or parameters that do not match the configuration
            (naming the file).
    """
    family = config.get("family", config.get("kind"))
    check_choice("prior family", family, PriorFamily)
    net = _hashable_net({_RENAMED_NET.get(k, k): v for k, v in dict(config["net"]).items()})
    check_choice("prior field (net.arch)", net.get("arch", "mlp"), FIELD_ARCHS)
    if family == "diffusion":
        sde = dict(config["sde"])
        sde["name"] = sde.pop("type", sde.get("name"))
        prior = DiffusionPrior(int(config["dim"]), net, sde=sde, parameterisation=config["parameterisation"])
    else:
        prior = FlowPrior(int(config["dim"]), net)
    k, c = len(net["n_categories"]), int(net.get("n_continuous", 0))
    cond = (Condition(labels=jnp.zeros((1, k), jnp.int32) if k else None,
                      covariates=jnp.zeros((1, c), jnp.float32) if c else None) if k or c else None)
    like = jax.eval_shape(prior.module.init, jax.random.key(0), jnp.zeros((1, prior.dim)), jnp.ones((1,)), cond)
    prior.params = jax.tree.map(jnp.asarray, load_pytree(params_path, like))
    return prior

