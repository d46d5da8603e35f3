"""How a field network is trained, and what its trained parameters become: one object per family.

An objective turns a Flax module into the training loss of :func:`genjax.fit` (``loss_fn(params, batch, key,
step)``) and its trained parameters into the field the samplers integrate, so that one trainer,
:func:`genjax.fit_field`, serves every family (diffrax's ``solver: AbstractSolver`` pattern):

* :class:`DenoisingScoreMatching`: a score network on a forward SDE (:func:`genjax.diffusion.make_dsm_loss`),
  trained parameters -> :class:`~genjax.ScoreFunction`;
* :class:`ConditionalFlowMatching`: a velocity network on a probability path
  (:func:`genjax.flow.make_flow_loss`), trained parameters -> :class:`~genjax.VelocityField`.

Options are validated once, when the objective is built.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx

from .._typing import (
    Array,
    Coupling,
    LossFn,
    OTMethod,
    Parameterisation,
    Params,
    Reduction,
    TimeSampling,
    Weighting,
)
from ..diffusion import VPSDE, AbstractSDE, check_dsm_options, make_dsm_loss
from ..flow import AbstractPath, LinearPath, check_flow_options, make_flow_loss
from ._base import AbstractField
from ._score import ScoreFunction
from ._velocity import VelocityField

__all__ = ["AbstractObjective", "DenoisingScoreMatching", "ConditionalFlowMatching"]


class AbstractObjective(eqx.Module):
    """A training objective of a field network ``model.apply(params, x, t, cond) -> (n, d)``."""

    @abc.abstractmethod
    def loss_fn(self, model: Any) -> LossFn:
        """``loss_fn(params, batch, key, step) -> (loss, aux)`` for :func:`genjax.fit`; ``batch`` is ``x: (b, d)``
        or ``{"x": (b, d), "cond": Condition}``."""

    @abc.abstractmethod
    def field(self, apply_fn: Callable[..., Array], params: Params) -> AbstractField:
        """The field defined by trained parameters (what the samplers integrate)."""


class DenoisingScoreMatching(AbstractObjective):
    """Continuous-time denoising score matching on a forward SDE (Song et al. 2021; see
    :func:`genjax.diffusion.dsm_loss`).

    Attributes:
        sde: the forward SDE (default :class:`genjax.VPSDE`).
        parameterisation: what the network outputs (:data:`genjax.diffusion.PARAMETERISATIONS`).
        weighting, reduction, time_sampling, importance_sampling, t_min: see :func:`genjax.diffusion.dsm_loss`.
        cond_dropout: probability of nulling each attribute / covariate (classifier-free guidance).

    Raises:
        ValueError: an unknown option value, ``t_min`` outside ``(0, 1)``, ``cond_dropout`` outside ``[0, 1]``.
    """

    sde: AbstractSDE = VPSDE()
    parameterisation: Parameterisation = eqx.field(static=True, default="eps")
    weighting: Weighting = eqx.field(static=True, default="sigma2")
    reduction: Reduction = eqx.field(static=True, default="mean")
    time_sampling: TimeSampling = eqx.field(static=True, default="stratified")
    importance_sampling: bool = eqx.field(static=True, default=True)
    t_min: float = eqx.field(static=True, default=1e-5)
    cond_dropout: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        check_dsm_options(self.parameterisation, self.weighting, self.reduction, self.time_sampling, self.t_min,
                          self.cond_dropout)

    def loss_fn(self, model: Any) -> LossFn:
        return make_dsm_loss(
            model, self.sde, parameterisation=self.parameterisation, weighting=self.weighting,
            reduction=self.reduction, time_sampling=self.time_sampling, importance_sampling=self.importance_sampling,
            t_min=self.t_min, cond_dropout=self.cond_dropout)

    def field(self, apply_fn: Callable[..., Array], params: Params) -> ScoreFunction:
        return ScoreFunction(apply_fn, params, self.sde, self.parameterisation)


class ConditionalFlowMatching(AbstractObjective):
    """Conditional flow matching on a probability path (Lipman et al. 2023; see :func:`genjax.flow.cfm_loss`).

    Attributes:
        path: the probability path (default :class:`genjax.LinearPath`, rectified flow).
        coupling: ``"independent"`` or ``"ot"`` (minibatch optimal transport within condition groups).
        ot_method, time_sampling, reduction: see :func:`genjax.flow.cfm_loss`.
        cond_dropout: probability of nulling each attribute / covariate (classifier-free guidance).

    Raises:
        ValueError: ``path`` not a genjax path, an unknown option value, ``cond_dropout`` outside ``[0, 1]``.
    """

    path: AbstractPath = LinearPath()
    coupling: Coupling = eqx.field(static=True, default="independent")
    ot_method: OTMethod = eqx.field(static=True, default="host")
    time_sampling: TimeSampling = eqx.field(static=True, default="stratified")
    reduction: Reduction = eqx.field(static=True, default="mean")
    cond_dropout: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        check_flow_options(self.path, self.coupling, self.ot_method, self.time_sampling, self.reduction,
                           self.cond_dropout)

    def loss_fn(self, model: Any) -> LossFn:
        return make_flow_loss(model, self.path, coupling=self.coupling, ot_method=self.ot_method,
                              time_sampling=self.time_sampling, reduction=self.reduction,
                              cond_dropout=self.cond_dropout)

    def field(self, apply_fn: Callable[..., Array], params: Params) -> VelocityField:
        return VelocityField(apply_fn, params)
