"""One trainer for every field network: :func:`fit_field` (score, velocity, any :class:`AbstractObjective`).

``fit_field(x, objective, model)`` checks the points and conditions on the host, builds a default
:class:`genjax.nn.FieldNet` sized for the conditions, initialises it, trains it with the shared loop
:func:`genjax.fit` on ``objective.loss_fn(model)`` and returns a :class:`FieldFit` whose ``field`` is what the
samplers integrate (the final or EMA parameters through ``objective.field``). :func:`fit_score_model` and
:func:`fit_flow_model` are the two families' keyword front ends.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, Coupling, OTMethod, Parameterisation, Params, Reduction, TimeSampling, Weighting
from ..diffusion import AbstractSDE
from ..fields import (
    AbstractField,
    AbstractObjective,
    ConditionalFlowMatching,
    DenoisingScoreMatching,
    ScoreFunction,
    VelocityField,
)
from ..flow import AbstractPath
from ..nn import Condition, FieldNet, check_condition
from ._config import FitResult
from ._loop import fit

__all__ = ["FieldFit", "fit_field", "fit_score_model", "fit_flow_model"]


class FieldFit(NamedTuple):
    """What :func:`fit_field` returns.

    Fields:
        field: the trained field (:class:`~genjax.ScoreFunction` for score matching,
            :class:`~genjax.VelocityField` for flow matching) with the final parameters, the EMA ones when
            ``ema_decay`` is set.
        model: the Flax module.
        objective: the :class:`~genjax.fields.AbstractObjective` it was trained with.
        fit: the :class:`~genjax.FitResult` of the training loop (state, history, best params).
    """

    field: AbstractField
    model: Any
    objective: AbstractObjective
    fit: FitResult

    @property
    def params(self) -> Params:
        """The parameters of :attr:`field`."""
        return self.field.params

    @property
    def history(self) -> list[dict]:
        """Per-epoch training records of the loop."""
        return self.fit.history

    @property
    def score_fn(self) -> ScoreFunction:
        """:attr:`field` of a score-matching fit."""
        if not isinstance(self.field, ScoreFunction):
            raise AttributeError(f"score_fn: this fit's field is a {type(self.field).__name__}, not a ScoreFunction")
        return self.field

    @property
    def velocity_fn(self) -> VelocityField:
        """:attr:`field` of a flow-matching fit."""
        if not isinstance(self.field, VelocityField):
            raise AttributeError(f"velocity_fn: this fit's field is a {type(self.field).__name__}, not a VelocityField")
        return self.field

    @property
    def path(self) -> AbstractPath:
        """The probability path of a flow-matching fit (what :func:`genjax.sample_flow` needs)."""
        if not isinstance(self.objective, ConditionalFlowMatching):
            raise AttributeError("path: only a flow-matching fit has a probability path")
        return self.objective.path


def _default_model(cond: Condition | None) -> FieldNet:
    """A :class:`FieldNet` with one categorical slot per label column (sized by the largest label) and the
    condition's number of covariates."""
    n_categories, n_continuous = (), 0
    if cond is not None:
        if cond.labels is not None:
            n_categories = tuple(int(k) for k in np.asarray(cond.labels).max(axis=0) + 1)
        if cond.covariates is not None:
            n_continuous = int(np.shape(cond.covariates)[1])
    return FieldNet(n_categories=n_categories, n_continuous=n_continuous)


def _points(x, name: str) -> Array:
    """``x`` as a finite float32 ``(n, d)`` array, checked on the host."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: x must be (n, d) with n >= 1; got shape {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name}: x has a non-finite value in row {int(np.argmin(finite))}")
    return jnp.asarray(x)


def _training_data(x, cond: Condition | None, model, name: str):
    """The points and conditions in :func:`genjax.fit`'s form (``x`` or ``{"x", "cond"}``), checked against the
    model's condition slots."""
    x = _points(x, name)
    if cond is None:
        return x
    if not isinstance(model, FieldNet) and not all(hasattr(model, a) for a in ("n_categories", "n_continuous")):
        raise ValueError(f"{name}: a conditional fit needs a model with n_categories and n_continuous (the sizes "
                         f"of its condition slots, as genjax.nn.FieldNet has); {type(model).__name__} has none")
    check_condition(cond, x.shape[0], tuple(model.n_categories), int(model.n_continuous))
    return {"x": x, "cond": cond}


def fit_field(
    x: Array, objective: AbstractObjective, model: Any = None, *, cond: Condition | None = None,
    optimizer: Any = None, config: Any = None, seed: int = 0, val_x: Array | None = None,
    val_cond: Condition | None = None, **config_overrides: Any
) -> FieldFit:
    """Train a field network on points ``x`` with ``objective``, through the shared loop :func:`genjax.fit`.

    Arguments:
        x: training points ``(n, d)`` float32 (e.g. standardised VAE latents).
        objective: a :class:`~genjax.fields.DenoisingScoreMatching` or :class:`~genjax.fields.ConditionalFlowMatching`
            (or any :class:`~genjax.fields.AbstractObjective`).
        model: a Flax module ``model.apply(params, x, t, cond) -> (n, d)`` (default :class:`genjax.nn.FieldNet`
            sized for ``cond``); with a ``cond``, it must say the sizes of its condition slots in ``n_categories``
            and ``n_continuous`` attributes, as :class:`~genjax.nn.FieldNet` does.
        cond: optional :class:`genjax.nn.Condition` per training point (leading size ``n``).
        optimizer: optax optimizer (default: ``fit``'s).
        config: a :class:`genjax.TrainConfig`; ``config_overrides`` go to :func:`genjax.fit`: its config fields
            (``max_steps``, ``batch_size``, ``ema_decay``, ...) and keywords (``checkpoint_dir``, ``resume``,
            ``devices``, ``description``).
        seed: seed of the initialisation (``fold_in(key(seed), 0x5C0)``) and of the training loop.
        val_x, val_cond: optional validation data.

    Returns:
        a :class:`FieldFit`.

    Raises:
        ValueError: ``x`` is not a finite ``(n, d)`` array, or a condition does not fit the model.
    """
    return _fit(x, objective, model, "fit_field", cond=cond, optimizer=optimizer, config=config, seed=seed,
                val_x=val_x, val_cond=val_cond, **config_overrides)


def _fit(x, objective, model, name: str, *, cond, optimizer=None, config=None, seed: int = 0, val_x=None,
         val_cond=None, **config_overrides) -> FieldFit:
    """:func:`fit_field`, with ``name`` (the public function called) in error messages."""
    if not isinstance(objective, AbstractObjective):
        raise ValueError(f"{name}: objective must be a genjax AbstractObjective (DenoisingScoreMatching, "
                         f"ConditionalFlowMatching); got {type(objective).__name__}")
    model = _default_model(cond) if model is None else model
    data = _training_data(x, cond, model, name)
    val_data = None if val_x is None else _training_data(val_x, val_cond, model, name)
    x0 = data if cond is None else data["x"]
    cond0 = None if cond is None else jax.tree.map(lambda a: a[:1], cond)
    params = jax.jit(model.init)(jax.random.fold_in(jax.random.key(seed), 0x5C0), x0[:1], jnp.ones((1,)), cond0)
    result = fit(objective.loss_fn(model), params, data, optimizer=optimizer, val_data=val_data, config=config,
                 seed=seed, **config_overrides)
    final = result.state.ema_params if result.state.ema_params is not None else result.state.params
    return FieldFit(objective.field(model.apply, final), model, objective, result)


def fit_score_model(
    x: Array, sde: AbstractSDE | None = None, model: Any = None, *, cond: Condition | None = None,
    parameterisation: Parameterisation = "eps", weighting: Weighting = "sigma2",
    reduction: Reduction = "mean", time_sampling: TimeSampling = "stratified",
    importance_sampling: bool = True, t_min: float = 1e-5, cond_dropout: float = 0.0, **fit_kwargs: Any
) -> FieldFit:
    """Train a score network by denoising score matching: :func:`fit_field` with
    :class:`~genjax.fields.DenoisingScoreMatching`.

    Arguments:
        x: training points ``(n, d)``. sde: forward SDE (default :class:`genjax.VPSDE`). model: as
            :func:`fit_field`.
        cond, parameterisation, weighting, reduction, time_sampling, importance_sampling, t_min, cond_dropout:
            see :class:`~genjax.fields.DenoisingScoreMatching`.
        fit_kwargs: :func:`fit_field`'s keywords (``optimizer``, ``config``, ``seed``, ``val_x``, ``max_steps``, ...).

    Returns:
        a :class:`FieldFit` whose ``field`` (also ``score_fn``) is a :class:`~genjax.ScoreFunction`.

    Raises:
        ValueError: bad points, conditions or options.
    """
    objective = DenoisingScoreMatching(
        **({} if sde is None else {"sde": sde}), parameterisation=parameterisation, weighting=weighting,
        reduction=reduction, time_sampling=time_sampling, importance_sampling=importance_sampling, t_min=t_min,
        cond_dropout=cond_dropout)
    return _fit(x, objective, model, "fit_score_model", cond=cond, **fit_kwargs)


def fit_flow_model(
    x: Array, model: Any = None, *, path: AbstractPath | None = None, cond: Condition | None = None,
    coupling: Coupling = "independent", ot_method: OTMethod = "host",
    time_sampling: TimeSampling = "stratified", reduction: Reduction = "mean", cond_dropout: float = 0.0,
    **fit_kwargs: Any
) -> FieldFit:
    """Train a velocity network by conditional flow matching: :func:`fit_field` with
    :class:`~genjax.fields.ConditionalFlowMatching`.

    Arguments:
        x: training points ``(n, d)``. model: as :func:`fit_field`.
        path: the probability path (default :class:`genjax.LinearPath`, rectified flow).
        cond, coupling, ot_method, time_sampling, reduction, cond_dropout: see
            :class:`~genjax.fields.ConditionalFlowMatching`.
        fit_kwargs: :func:`fit_field`'s keywords.

    Returns:
        a :class:`FieldFit` whose ``field`` (also ``velocity_fn``) is a :class:`~genjax.VelocityField` and whose
        ``path`` is the path.

    Raises:
        ValueError: bad points, conditions or options (checked before any compute).
    """
    objective = ConditionalFlowMatching(
        **({} if path is None else {"path": path}), coupling=coupling, ot_method=ot_method,
        time_sampling=time_sampling, reduction=reduction, cond_dropout=cond_dropout)
    return _fit(x, objective, model, "fit_flow_model", cond=cond, **fit_kwargs)
