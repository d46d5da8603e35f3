"""Score networks, output parameterisations and denoising score matching (Song et al. 2021; Vincent 2011).

A network ``F(x_t, t, cond)`` is trained to predict one of six equivalent targets. With ``x_t = alpha x0 +
sigma eps`` (see :mod:`genjax._sde`), each target is linear in the noise, ``p(t) x_t + q(t) eps``, so a network's
prediction of any of them is ``p x_t + q eps_hat`` for one noise estimate ``eps_hat``, and every pair converts
through ``eps_hat = (out - p x_t) / q`` (the conversions divide by ``sigma``: use ``t > 0``):

============  =========================================  ==========  ===========================
name          target                                     p(t)        q(t)
============  =========================================  ==========  ===========================
``score``     ``grad log p_t(x_t) = -eps / sigma``       0           ``-1 / sigma``
``eps``       noise ``eps`` (DDPM)                       0           1
``x0``        clean data ``x0``                          1/alpha     ``-sigma / alpha``
``v``         ``alpha eps - sigma x0`` (Salimans & Ho    -sigma /    ``(alpha^2 + sigma^2) /
              2022, "v-prediction")                      alpha       alpha``
``velocity``  probability-flow velocity ``dx_t/dt =      f           ``g^2 / (2 sigma)``
              alpha' x0 + sigma' eps`` (the flow-
              matching target; equals ``f x - g^2/2
              score``)
``eps_skip``  ``eps - sigma x_t / (alpha^2 + sigma^2)``:  ``-sigma /    1
              the noise minus its optimum for unit-       (alpha^2 +
              variance Gaussian data (a preconditioned    sigma^2)``
              noise prediction, Karras et al. 2022's
              ``c_skip`` with ``sigma_data = 1``)
============  =========================================  ==========  ===========================

``eps_skip`` is for standardised data: the network learns only the departure from a Gaussian, so its errors are
not amplified where the noise prediction must grow linearly with ``|x_t|``. With plain ``eps``, a network whose
output is bounded (LayerNorm before the output layer) is wrong in the tails of ``x_t`` near ``t = 1``, where the
VP probability-flow ODE multiplies noise errors by ``beta(1) / 2 = 10``: about 0.3% of the probability-flow samples
of a prior fitted on 10-d standard normal data ended beyond ``|x| = 6`` (up to 41), none with ``eps_skip``.

The denoising score-matching loss (:func:`dsm_loss`) is the continuous-time objective
``E_t E_{x0, eps} lambda(t) |s(x_t, t) + eps / sigma|^2 = E lambda / sigma^2 |eps_hat - eps|^2`` with
``lambda = sigma^2`` (``weighting="sigma2"``) or ``lambda = g^2`` (``"likelihood"``, which makes the
sum-reduced loss a bound on the negative log-likelihood up to constants; Song et al. 2021b), times drawn
uniformly on ``[t_min, 1]`` with low-discrepancy options, or, for likelihood weighting, by importance sampling
``p(t) ∝ g^2 / sigma^2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import nn as gnn
from ._sde import VPSDE, AbstractSDE, _expand
from .._typing import Array, Params, PRNGKeyArray

__all__ = [
    "PARAMETERISATIONS",
    "ScoreNet",
    "ScoreFunction",
    "convert_output",
    "sample_times",
    "dsm_loss",
    "make_dsm_loss",
    "ScoreFitResult",
    "fit_score_model",
]

_TIME_SAMPLING = ("uniform", "stratified", "low_discrepancy", "antithetic")

PARAMETERISATIONS = ("score", "eps", "x0", "v", "velocity", "eps_skip")
"""Output parameterisations of a score network (see the module docstring)."""

ScoreNet = gnn.FieldNet
"""The score / noise / x0 / velocity network: :class:`genjax.nn.FieldNet` (residual MLP, sinusoidal time
embedding, condition embedding by FiLM). ``ScoreNet()(x, t, cond=None)``: ``(n, d), (n,) -> (n, d)``."""


def _check_parameterisation(name: str) -> None:
    if name not in PARAMETERISATIONS:
        raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}; got {name!r}")


def _coefficients(sde: AbstractSDE, t: Array, name: str) -> tuple[Array, Array]:
    """``(p, q)`` with ``output = p x_t + q eps`` for the parameterisation ``name`` (shapes of ``t``)."""
    alpha, sigma = sde.alpha(t), sde.std(t)
    zero, one = jnp.zeros_like(sigma), jnp.ones_like(sigma)
    if name == "score":
        return zero, -1.0 / sigma
    if name == "eps":
        return zero, one
    if name == "x0":
        return 1.0 / alpha, -sigma / alpha
    if name == "v":
        return -sigma / alpha, (alpha**2 + sigma**2) / alpha
    if name == "velocity":
        return sde.drift_coeff(t) * one, sde.diffusion(t) ** 2 / (2.0 * sigma)
    if name == "eps_skip":
        return -sigma / (alpha**2 + sigma**2), one
    raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}; got {name!r}")


def convert_output(output: Array, x: Array, t: Array, sde: AbstractSDE, source: str, target: str) -> Array:
    """Convert a network output between parameterisations (score, eps, x0, v, velocity; module docstring).

    Arguments:
        output: network output in ``source`` form, ``(n, d)``.
        x: the noisy input ``x_t``, ``(n, d)``.
        t: times ``(n,)`` (or scalar), in ``(0, 1]``: the conversions divide by ``sigma(t)``.
        sde: the forward SDE that defines ``alpha``, ``sigma``, ``f``, ``g``.
        source, target: names from :data:`PARAMETERISATIONS`.

    Returns:
        the same prediction in ``target`` form, ``(n, d)``.

    Raises:
        ValueError: on an unknown parameterisation name.
    """
    _check_parameterisation(source)
    _check_parameterisation(target)
    if source == target:
        return output
    p_s, q_s = _coefficients(sde, t, source)
    p_t, q_t = _coefficients(sde, t, target)
    eps = (output - _expand(p_s, x) * x) / _expand(q_s, x)
    return _expand(p_t, x) * x + _expand(q_t, x) * eps


class ScoreFunction(eqx.Module):
    """A trained network as a batched score function ``score_fn(x, t, cond=None) -> (n, d)`` for the samplers.

    A pytree: ``params`` are traced leaves and ``apply_fn`` / ``parameterisation`` static, so jitted samplers
    called with new parameters (e.g. after more training) do not recompile.

    Arguments:
        apply_fn: ``apply_fn(params, x, t, cond) -> (n, d)``, e.g. ``ScoreNet(...).apply`` (hashable).
        params: network parameters.
        sde: the forward SDE the network was trained for.
        parameterisation: what the network outputs (:data:`PARAMETERISATIONS`).
    """

    apply_fn: Callable[..., Array] = eqx.field(static=True)
    params: Params
    sde: AbstractSDE
    parameterisation: str = eqx.field(static=True, default="eps")

    def __check_init__(self):
        _check_parameterisation(self.parameterisation)

    def output(self, x: Array, t: Array, cond: Any = None, *, as_: str | None = None) -> Array:
        """The network's prediction at ``(x, t)``, in its own parameterisation or converted to ``as_``.

        Arguments:
            x: ``(n, d)``; t: ``(n,)``; cond: a :class:`genjax.nn.Condition` or ``None``.
            as_: a name from :data:`PARAMETERISATIONS` (default: the network's own).

        Returns:
            ``(n, d)`` float32.
        """
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
        out = self.apply_fn(self.params, x, t, cond)
        if as_ is None:
            return out
        return convert_output(out, x, t, self.sde, self.parameterisation, as_)

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        """Score ``grad_x log p_t(x)``: ``x: (n, d)``, ``t: (n,)`` -> ``(n, d)``."""
        return self.output(x, t, cond, as_="score")


# ---------------------------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------------------------


def sample_times(key: PRNGKeyArray, n: int, method: str = "stratified") -> Array:
    """Uniforms on ``[0, 1)`` for diffusion / flow times, with optional variance reduction.

    Arguments:
        key: PRNG key.
        n: number of times (static).
        method: ``"uniform"`` (i.i.d.), ``"stratified"`` (one draw in each of the ``n`` strata ``[i/n, (i+1)/n)``,
            randomly assigned to the ``n`` positions), ``"low_discrepancy"`` (Kingma et al. 2021, VDM:
            ``(u0 + i/n) mod 1`` with one shared ``u0``) or ``"antithetic"`` (pairs ``u``, ``1 - u``).

    Returns:
        float32 ``(n,)`` in ``[0, 1)``; each entry is marginally uniform.

    Raises:
        ValueError: on an unknown method.
    """
    key_u, key_perm = jax.random.split(key)
    if method == "uniform":
        return jax.random.uniform(key_u, (n,))
    if method == "stratified":
        u = (jnp.arange(n) + jax.random.uniform(key_u, (n,))) / n
        return jax.random.permutation(key_perm, u)
    if method == "low_discrepancy":
        return jnp.mod(jax.random.uniform(key_u, ()) + jnp.arange(n) / n, 1.0)
    if method == "antithetic":
        half = (n + 1) // 2
        u = jax.random.uniform(key_u, (half,))
        return jnp.concatenate([u, 1.0 - u])[:n]
    raise ValueError(f"time sampling must be one of {_TIME_SAMPLING}; got {method!r}")


def dsm_loss(
    key: PRNGKeyArray,
    apply_fn: Callable[..., Array],
    sde: AbstractSDE,
    x0: Array,
    *,
    cond: Any = None,
    parameterisation: str = "eps",
    weighting: str = "sigma2",
    reduction: str = "mean",
    time_sampling: str = "stratified",
    importance_sampling: bool = True,
    t_min: float = 1e-5,
) -> tuple[Array, dict[str, Array]]:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7) for one batch.

    ``loss = mean_i w(t_i) R_j (eps_hat_ij - eps_ij)^2`` with ``x_t = alpha x0 + sigma eps``,
    ``eps_hat`` the network's prediction converted to noise (so that ``sigma s + eps = eps - eps_hat``) and
    ``R`` the mean or sum over dimensions. Weights: ``"sigma2"``: ``lambda = sigma^2``, ``w = 1``;
    ``"likelihood"``: ``lambda = g^2``, ``w = g^2 / sigma^2``, or with ``importance_sampling`` times drawn from
    ``p(t) ∝ g^2/sigma^2`` and the constant ``w = Z / (1 - t_min)`` (both estimate the same time average over
    ``U(t_min, 1)``; importance sampling removes the ``1/t`` variance near 0).

    Arguments:
        key: PRNG key (times and noise).
        apply_fn: ``apply_fn(x_t, t, cond) -> (n, d)`` raw network output (``cond`` may be ``None``).
        sde: the forward SDE.
        x0: clean data ``(n, d)``.
        cond: optional :class:`genjax.nn.Condition` with leading ``n``.
        parameterisation: what ``apply_fn`` outputs (:data:`PARAMETERISATIONS`).
        weighting: ``"sigma2"`` or ``"likelihood"``.
        reduction: ``"mean"`` or ``"sum"`` over dimensions.
        time_sampling: see :func:`sample_times`.
        importance_sampling: for ``weighting="likelihood"``, sample times from ``g^2 / sigma^2``.
        t_min: smallest time (``sigma(t_min) > 0``; 1e-5 is accurate in float32 thanks to ``expm1``).

    Returns:
        ``(loss, aux)``: float32 scalar; ``aux = {"eps_mse": unweighted mean squared noise error}``.

    Raises:
        ValueError: on unknown option names or ``t_min`` outside ``(0, 1)``.
    """
    _check_parameterisation(parameterisation)
    if weighting not in ("sigma2", "likelihood"):
        raise ValueError(f"weighting must be 'sigma2' or 'likelihood'; got {weighting!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"t_min must be in (0, 1); got {t_min}")
    n = x0.shape[0]
    key_t, key_eps = jax.random.split(key)
    u = sample_times(key_t, n, time_sampling)
    if weighting == "likelihood" and importance_sampling:
        t, z = sde.likelihood_weighting_time(u, t_min)
        w = jnp.broadcast_to(z / (1.0 - t_min), (n,))
    else:
        t = t_min + (1.0 - t_min) * u
        w = jnp.ones((n,)) if weighting == "sigma2" else sde.diffusion(t) ** 2 / sde.std(t) ** 2
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    mean, std = sde.marginal(x0, t)
    xt = mean + std[:, None] * eps
    out = apply_fn(xt, t, cond)
    eps_hat = convert_output(out, xt, t, sde, parameterisation, "eps")
    sq = (eps_hat - eps) ** 2
    per_point = jnp.mean(sq, axis=-1) if reduction == "mean" else jnp.sum(sq, axis=-1)
    return jnp.mean(w * per_point), {"eps_mse": jnp.mean(sq)}


def _split_batch(batch) -> tuple[Array, Any]:
    if isinstance(batch, dict):
        return batch["x"], batch.get("cond")
    return batch, None


def make_dsm_loss(
    model: Any,
    sde: AbstractSDE,
    *,
    parameterisation: str = "eps",
    weighting: str = "sigma2",
    reduction: str = "mean",
    time_sampling: str = "stratified",
    importance_sampling: bool = True,
    t_min: float = 1e-5,
    cond_dropout: float = 0.0,
) -> Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]:
    """Denoising score matching as ``loss_fn(params, batch, key, step) -> (loss, aux)`` for :func:`genjax.fit`.

    Arguments:
        model: a Flax module called as ``model.apply(params, x, t, cond)`` (e.g. :data:`ScoreNet`).
        sde: the forward SDE.
        parameterisation, weighting, reduction, time_sampling, importance_sampling, t_min: see :func:`dsm_loss`.
        cond_dropout: probability of replacing each attribute / covariate by its null token
            (:func:`genjax.nn.drop_condition`), to train the unconditional branch for classifier-free guidance.

    Returns:
        ``loss_fn``; ``batch`` is an array ``x0: (b, d)`` or a dict ``{"x": (b, d), "cond": Condition}``.

    Raises:
        ValueError: on invalid options (checked here, before any compute).
    """
    _check_parameterisation(parameterisation)
    if weighting not in ("sigma2", "likelihood") or reduction not in ("mean", "sum"):
        raise ValueError(f"weighting must be 'sigma2'|'likelihood', reduction 'mean'|'sum'; got {weighting!r}, {reduction!r}")
    if time_sampling not in _TIME_SAMPLING:
        raise ValueError(f"time sampling must be one of {_TIME_SAMPLING}; got {time_sampling!r}")
    if not 0.0 <= cond_dropout <= 1.0:
        raise ValueError(f"cond_dropout must be in [0, 1]; got {cond_dropout}")

    def loss_fn(params, batch, key, step):
        del step
        x0, cond = _split_batch(batch)
        key_drop, key_loss = jax.random.split(key)
        cond = gnn.drop_condition(key_drop, cond, cond_dropout)
        apply = lambda x, t, c: model.apply(params, x, t, c)
        return dsm_loss(
            key_loss, apply, sde, x0, cond=cond, parameterisation=parameterisation, weighting=weighting,
            reduction=reduction, time_sampling=time_sampling, importance_sampling=importance_sampling, t_min=t_min,
        )

    return loss_fn


# ---------------------------------------------------------------------------------------------------------------
# trainer
# ---------------------------------------------------------------------------------------------------------------


class ScoreFitResult(NamedTuple):
    """Result of :func:`fit_score_model`.

    Fields:
        score_fn: a :class:`ScoreFunction` with the final parameters (the EMA ones when ``ema_decay`` is set).
        model: the Flax module.
        fit: the :class:`genjax.FitResult` of the training loop (state, history, best params).
    """

    score_fn: ScoreFunction
    model: Any
    fit: Any


def prepare_field_fit(x, cond, model, val_x, val_cond, *, seed: int, name: str):
    """What the field trainers (:func:`fit_score_model`, :func:`genjax.fit_flow_model`) share before training:
    host-side checks of the points and conditions, a default :data:`ScoreNet` sized for ``cond``, the
    initial parameters (from ``fold_in(key(seed), 0x5C0)``) and the data in :func:`genjax.fit`'s form.

    Returns:
        ``(model, params, data, val_data)``; ``data`` is ``x`` or ``{"x": x, "cond": cond}``.

    Raises:
        ValueError: if ``x`` is not a finite ``(n, d)`` array or a condition does not fit the model.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: x must be (n, d) with n >= 1; got shape {x.shape}")
    finite = np.isfinite(np.asarray(x))
    if not finite.all():
        row = int(np.argmin(finite.all(axis=1)))
        raise ValueError(f"{name}: x has a non-finite value in row {row}")
    if model is None:
        num_classes, num_cov = (), 0
        if cond is not None:
            if cond.labels is not None:
                num_classes = tuple(int(k) for k in np.asarray(cond.labels).max(axis=0) + 1)
            if cond.covariates is not None:
                num_cov = int(np.shape(cond.covariates)[1])
        model = ScoreNet(num_classes=num_classes, num_covariates=num_cov)
    num_classes = tuple(getattr(model, "num_classes", ()))
    num_cov = int(getattr(model, "num_covariates", 0))
    gnn.check_condition(cond, x.shape[0], num_classes, num_cov)
    data = x if cond is None else {"x": x, "cond": cond}
    val_data = None
    if val_x is not None:
        val_x = jnp.asarray(val_x, jnp.float32)
        gnn.check_condition(val_cond, val_x.shape[0], num_classes, num_cov)
        val_data = val_x if val_cond is None else {"x": val_x, "cond": val_cond}
    key_init = jax.random.fold_in(jax.random.key(seed), 0x5C0)
    cond0 = None if cond is None else jax.tree.map(lambda a: a[:1], cond)
    params = jax.jit(model.init)(key_init, x[:1], jnp.ones((1,)), cond0)
    return model, params, data, val_data


def fit_score_model(
    x: Array,
    sde: AbstractSDE | None = None,
    model: Any = None,
    *,
    cond: gnn.Condition | None = None,
    parameterisation: str = "eps",
    weighting: str = "sigma2",
    reduction: str = "mean",
    time_sampling: str = "stratified",
    importance_sampling: bool = True,
    t_min: float = 1e-5,
    cond_dropout: float = 0.0,
    optimizer: Any = None,
    config: Any = None,
    seed: int = 0,
    val_x: Array | None = None,
    val_cond: gnn.Condition | None = None,
    **config_overrides: Any,
) -> ScoreFitResult:
    """Train a score network by denoising score matching with the shared training loop :func:`genjax.fit`.

    Arguments:
        x: training points ``(n, d)`` float32 (e.g. VAE latents; standardise them roughly to unit scale).
        sde: forward SDE (default :class:`genjax.VPSDE`).
        model: a Flax module ``model.apply(params, x, t, cond)`` (default ``ScoreNet()`` sized for ``cond``).
        cond: optional :class:`genjax.nn.Condition` per training point (leading size ``n``).
        parameterisation, weighting, reduction, time_sampling, importance_sampling, t_min, cond_dropout:
            see :func:`make_dsm_loss`.
        optimizer: optax optimizer (default: ``fit``'s).
        config: a :class:`genjax.TrainConfig`; ``config_overrides`` are passed to :func:`genjax.fit`: its
            config fields (``max_steps=2000``, ``ema_decay=0.999``, ``batch_size=256``, ...) and keywords
            (``checkpoint_dir``, ``resume``, ``devices``, ``description``).
        seed: seed of the parameter initialisation and the training loop.
        val_x, val_cond: optional validation data.

    Returns:
        a :class:`ScoreFitResult`.

    Raises:
        ValueError: if ``x`` is not a finite 2-d array, or ``cond`` does not fit the model.
    """
    from ..training._loop import fit  # the training layer sits above the models

    sde = VPSDE() if sde is None else sde
    model, params, data, val_data = prepare_field_fit(x, cond, model, val_x, val_cond, seed=seed,
                                                      name="fit_score_model")
    loss_fn = make_dsm_loss(
        model, sde, parameterisation=parameterisation, weighting=weighting, reduction=reduction,
        time_sampling=time_sampling, importance_sampling=importance_sampling, t_min=t_min, cond_dropout=cond_dropout,
    )
    result = fit(loss_fn, params, data, optimizer=optimizer, val_data=val_data, config=config, seed=seed,
                 **config_overrides)
    final = result.state.ema_params if result.state.ema_params is not None else result.state.params
    score_fn = ScoreFunction(model.apply, final, sde, parameterisation)
    return ScoreFitResult(score_fn, model, result)
