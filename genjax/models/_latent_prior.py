"""A generative prior over points in R^d (VAE latents, or log1p expression), diffusion or flow, conditional with
classifier-free guidance: the piece of :class:`genjax.LatentGenerator` that is fitted on the encoded cells.

:class:`PriorModel` holds what is needed to sample again after a save/load round trip: the kind, the network
settings, the SDE settings and the parameters. :func:`fit_prior` trains one through the shared loop,
:func:`sample_prior` draws from it (adaptive probability-flow ODE by default), :func:`load_prior` rebuilds it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .. import nn as gnn
from ..training._checkpoint import load_pytree
from ..flow._flow import VelocityField, fit_flow_model
from ..solvers._flow import sample_flow
from ..fields._guidance import guidance_groups, guided_field
from ..solvers._diffusion import sample_probability_flow_ode, sample_reverse_sde
from ..diffusion._score import ScoreFunction, fit_score_model
from ..diffusion._sde import VESDE, VPSDE, SubVPSDE

__all__ = ["PriorModel", "fit_prior", "sample_prior", "load_prior"]

_SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


@dataclasses.dataclass
class PriorModel:
    """A fitted prior: ``kind`` (``"diffusion"`` | ``"flow"``), network and SDE settings, parameters.

    Attributes:
        kind: ``"diffusion"`` or ``"flow"``.
        dim: dimension of the modelled points.
        net: keyword arguments of :class:`genjax.nn.FieldNet` (``hidden``, ``num_blocks``, ``num_classes``, ...).
        sde: ``{"type": "vp" | "subvp" | "ve", **constructor arguments}`` (diffusion only).
        parameterisation: what the network outputs (diffusion: ``"eps_skip"``, the noise minus its optimum for
            unit-variance Gaussian data, which keeps probability-flow samples of the standardised points from
            running off in the tails; see :mod:`genjax._score`).
        params: network parameters (EMA parameters when trained with EMA).
    """

    kind: str
    dim: int
    net: dict
    sde: dict
    parameterisation: str
    params: Any

    @property
    def module(self) -> gnn.FieldNet:
        return _field_net(**{**self.net, "num_classes": tuple(self.net.get("num_classes", ()))})

    def make_sde(self):
        kw = dict(self.sde)
        return _SDES[kw.pop("type")](**kw)

    def field(self):
        """The batched field ``f(x, t, cond=None) -> (n, d)``: the score (diffusion) or the velocity (flow).

        A pytree whose only leaves are the parameters, so jitted samplers reuse their compilation across calls
        and across generators with the same settings.
        """
        if self.kind == "diffusion":
            return ScoreFunction(self.module.apply, self.params, self.make_sde(), self.parameterisation)
        return VelocityField(self.module.apply, self.params)

    def config(self) -> dict:
        """JSON-serialisable settings (everything but the parameters)."""
        net = dict(self.net)
        net["num_classes"] = list(net.get("num_classes", ()))
        return {"kind": self.kind, "dim": self.dim, "net": net, "sde": self.sde,
                "parameterisation": self.parameterisation}


def fit_prior(z, cond: gnn.Condition | None, *, kind: str = "diffusion", num_classes: tuple[int, ...] = (),
              steps: int = 4000, batch_size: int = 256, lr: float = 1e-3, cond_dropout: float = 0.1,
              hidden: int = 256, num_blocks: int = 4, ema_decay: float | None = 0.999, sde: str = "vp",
              sde_kwargs: dict | None = None, coupling: str = "independent", seed: int = 0, progress: bool = True,
              checkpoint_dir=None, resume: bool = False, **train_kwargs) -> tuple[PriorModel, list[dict]]:
    """Fit a conditional diffusion (denoising score matching) or flow-matching prior on points ``z``.

    Arguments:
        z: ``(n, d)`` float32 training points (standardise them first).
        cond: a :class:`genjax.nn.Condition` per point (labels ``(n, k)``) or ``None``.
        kind: ``"diffusion"`` or ``"flow"``.
        num_classes: categories per attribute of ``cond``.
        steps, batch_size, lr: optimizer steps, batch size and Adam learning rate (cosine-decayed to 10%).
        cond_dropout: null-token dropout rate per attribute (classifier-free guidance).
        hidden, num_blocks: width and residual blocks of the :class:`genjax.nn.FieldNet`.
        ema_decay: EMA of the parameters used for sampling (``None``: no EMA).
        sde, sde_kwargs: ``"vp"`` | ``"subvp"`` | ``"ve"`` and its constructor arguments (diffusion).
        coupling: ``"independent"`` or ``"ot"`` (minibatch optimal transport within conditions; flow only).
        seed, progress, checkpoint_dir, resume: as :func:`genjax.fit`.
        train_kwargs: further :class:`genjax.TrainConfig` fields.

    Returns:
        ``(prior, history)``.
    """
    if kind not in ("diffusion", "flow"):
        raise ValueError(f"kind must be 'diffusion' or 'flow'; got {kind!r}")
    if kind == "diffusion" and coupling != "independent":
        raise ValueError(f"coupling={coupling!r} is a flow-matching option; a diffusion prior has none")
    z = jnp.asarray(z, jnp.float32)
    net = {"hidden": int(hidden), "num_blocks": int(num_blocks), "num_classes": tuple(int(k) for k in num_classes)}
    schedule = optax.cosine_decay_schedule(lr, steps, alpha=0.1)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    common = dict(optimizer=optimizer, seed=seed, max_steps=steps, batch_size=min(batch_size, z.shape[0]),
                  ema_decay=ema_decay, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
                  checkpoint_every=10**9, **train_kwargs)
    if kind == "diffusion":
        sde_cfg = {"type": sde, **(sde_kwargs or {})}
        if sde not in _SDES:
            raise ValueError(f"sde must be one of {sorted(_SDES)}; got {sde!r}")
        prior = PriorModel("diffusion", int(z.shape[1]), net, sde_cfg, "eps_skip", None)
        res = fit_score_model(z, prior.make_sde(), prior.module, cond=cond, parameterisation="eps_skip",
                              cond_dropout=cond_dropout, description="prior", **common)
        prior.params = res.score_fn.params
        return prior, res.fit.history
    prior = PriorModel("flow", int(z.shape[1]), net, {}, "velocity", None)
    res = fit_flow_model(z, prior.module, cond=cond, cond_dropout=cond_dropout, coupling=coupling,
                         description="prior", **common)
    prior.params = res.params
    return prior, res.fit.history


@functools.cache
def _field_net(**kwargs) -> gnn.FieldNet:
    # one module instance per configuration: its bound ``apply`` is then the same static object for every
    # PriorModel with these settings, and jitted samplers do not recompile for a reloaded model
    return gnn.FieldNet(**kwargs)


def sample_prior(prior: PriorModel, key, n: int, *, cond: gnn.Condition | None = None, guidance=None,
                 method: str = "ode", n_steps: int | None = None, rtol: float = 1e-3, atol: float = 1e-3,
                 **kwargs):
    """Draw ``n`` points from a fitted prior.

    Arguments:
        prior: a :class:`PriorModel`. key: PRNG key. n: number of points.
        cond: :class:`genjax.nn.Condition` with leading size ``n`` (``-1`` labels: null / not requested).
        guidance: ``None`` (plain conditional), a weight ``w`` (``f_null + w (f_c - f_null)``), or a tuple of
            one weight per attribute (compositional guidance).
        method: diffusion: ``"ode"`` (adaptive probability-flow ODE, default), ``"sde"`` (Euler-Maruyama,
            ``n_steps`` default 500); flow: ``"ode"`` (adaptive Dopri5) or fixed ``n_steps``.
        rtol, atol: tolerances of adaptive solves.

    Returns:
        ``(n, d)`` float32 samples (standardised space).
    """
    field = prior.field()
    if guidance is not None and cond is not None:
        field = guided_field(field, guidance, n_groups=guidance_groups(cond))
    shape = (int(n), prior.dim)
    if prior.kind == "diffusion":
        sde = prior.make_sde()
        if method == "ode":
            x, _ = sample_probability_flow_ode(key, field, sde, shape, rtol=rtol, atol=atol, cond=cond,
                                               n_steps=n_steps, **kwargs)
        elif method == "sde":
            x, _ = sample_reverse_sde(key, field, sde, shape, n_steps=n_steps or 500, cond=cond, **kwargs)
        else:
            raise ValueError(f"method must be 'ode' or 'sde' for a diffusion prior; got {method!r}")
        return x
    x, _ = sample_flow(key, field, shape, cond=cond, n_steps=n_steps, rtol=rtol, atol=atol, **kwargs)
    return x


def load_prior(config: dict, params_path) -> PriorModel:
    """Rebuild a :class:`PriorModel` from :meth:`PriorModel.config` and its saved parameters."""
    prior = PriorModel(config["kind"], int(config["dim"]), dict(config["net"]), dict(config["sde"]),
                       config["parameterisation"], None)
    like = jax.eval_shape(prior.module.init, jax.random.key(0), jnp.zeros((1, prior.dim)), jnp.ones((1,)),
                          _dummy_cond(prior))
    prior.params = jax.tree.map(jnp.asarray, load_pytree(params_path, like))
    return prior


def _dummy_cond(prior: PriorModel):
    k = len(prior.net.get("num_classes", ()))
    return gnn.Condition(labels=jnp.zeros((1, k), jnp.int32)) if k else None
