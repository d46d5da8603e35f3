"""Linear forward SDEs for score-based diffusion (Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations", ICLR; https://arxiv.org/abs/2011.13456).

Every SDE here is linear with additive noise, ``dx = f(t) x dt + g(t) dW`` on ``t in [0, 1]``, so its transition
from a fixed ``x0`` is Gaussian: ``x_t | x0 ~ N(alpha(t) x0, sigma(t)^2 I)`` with ``alpha = exp(int_0^t f)`` and
``sigma^2 = int_0^t g(s)^2 alpha(t)^2 / alpha(s)^2 ds``; equivalently ``g^2 = d sigma^2/dt - 2 f sigma^2``. The
three families differ only in ``alpha`` and ``sigma``:

==========  =====================================  ==========================  =================================
SDE         alpha(t)                               sigma(t)^2                  g(t)^2
==========  =====================================  ==========================  =================================
VP          exp(-B(t)/2)                           1 - exp(-B(t))              beta(t)
sub-VP      exp(-B(t)/2)                           (1 - exp(-B(t)))^2          beta(t) (1 - exp(-2 B(t)))
VE          1                                      s(t)^2 - sigma_min^2        2 s(t)^2 log(sigma_max/sigma_min)
==========  =====================================  ==========================  =================================

where ``B(t) = int_0^t beta`` comes from a noise schedule (:class:`LinearSchedule`, :class:`CosineSchedule`) and
``s(t) = sigma_min (sigma_max / sigma_min)^t``. The VE standard deviation is the exact one of the SDE started at
``t = 0`` (score_sde uses ``s(t)``, which differs by ``sigma_min^2``), so that ``marginal`` and ``diffusion``
describe the same process. All formulas use ``expm1`` / ``log1p`` so that ``t`` down to ~1e-7 is accurate in
float32.

Shapes: ``x`` is ``(..., dim)`` and ``t`` is either a scalar or has ``x``'s leading shape ``(...)`` (one time
per point, the batched convention ``x: (n, d)``, ``t: (n,)``). Coefficients have ``t``'s shape.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_choice
from .._typing import Array, ArrayLike, PRNGKeyArray, SDEName
from ..nn import call_field
from ._schedule import Schedule, make_schedule

__all__ = [
    "AbstractSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "SDES",
    "make_sde",
]

_LOG_2PI = math.log(2.0 * math.pi)


class AbstractSDE(eqx.Module):
    """A linear additive-noise forward SDE ``dx = f(t) x dt + g(t) dW`` on ``[0, 1]`` (see the module docstring).

    Subclasses define ``log_alpha``, ``std``, ``drift_coeff``, ``diffusion``, the prior and ``_iw_*`` (the
    cumulative of ``g^2 / sigma^2`` and its inverse, for importance-sampled likelihood weighting).
    """

    T = 1.0

    @abc.abstractmethod
    def log_alpha(self, t: ArrayLike) -> Array:
        """``log alpha(t)``: log of the mean coefficient of ``x_t | x0``; shape of ``t``."""

    @abc.abstractmethod
    def std(self, t: ArrayLike) -> Array:
        """``sigma(t)``: standard deviation of ``x_t | x0``; shape of ``t``."""

    @abc.abstractmethod
    def drift_coeff(self, t: ArrayLike) -> Array:
        """``f(t) = d log alpha / dt``, with ``drift(x, t) = f(t) x``; shape of ``t``."""

    @abc.abstractmethod
    def diffusion(self, t: ArrayLike) -> Array:
        """Diffusion coefficient ``g(t)`` (a scalar per time: the noise is additive and isotropic).

        Arguments:
            t: times, any shape.

        Returns:
            ``g(t)``, same shape as ``t``.
        """

    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior at ``t = 1``."""

    @abc.abstractmethod
    def _iw_cumulative(self, t: Array) -> Array:
        """An antiderivative ``Lambda(t)`` of ``g(t)^2 / sigma(t)^2`` (increasing)."""

    @abc.abstractmethod
    def _iw_inverse(self, lam: Array) -> Array:
        """The inverse of ``_iw_cumulative``."""


    def alpha(self, t: ArrayLike) -> Array:
        """Mean coefficient ``alpha(t)`` of ``x_t | x0``; shape of ``t``."""
        return jnp.exp(self.log_alpha(t))

    def drift(self, x: ArrayLike, t: ArrayLike) -> Array:
        """Forward drift ``f(x, t) = f(t) x``.

        Arguments:
            x: points, ``(..., dim)``.
            t: times, scalar or ``x``'s leading shape ``(...)``.

        Returns:
            the drift, shape of ``x``.
        """
        x = jnp.asarray(x)
        return jnp.asarray(self.drift_coeff(t))[..., None] * x

    def marginal(self, x0: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
        """Mean and standard deviation of the transition ``x_t | x0 ~ N(alpha(t) x0, sigma(t)^2 I)``.

        Arguments:
            x0: data points, ``(..., dim)``.
            t: times, scalar or ``x0``'s leading shape ``(...)``.

        Returns:
            ``(mean, std)``: ``mean = alpha(t) x0`` with the shape of ``x0``; ``std = sigma(t)`` with the shape of
            ``t`` (one standard deviation per point; broadcast it with ``std[..., None]``).
        """
        x0 = jnp.asarray(x0)
        return jnp.asarray(self.alpha(t))[..., None] * x0, self.std(t)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        """Draw from the prior ``N(0, prior_std^2 I)`` at ``t = 1``.

        Arguments:
            key: a PRNG key.
            shape: output shape, e.g. ``(n, dim)``.

        Returns:
            float32 array of ``shape``.
        """
        return self.prior_std() * jax.random.normal(key, shape)

    def prior_log_prob(self, z: ArrayLike) -> Array:
        """Log-density of the isotropic Gaussian prior, summed over the last axis.

        Arguments:
            z: points, ``(..., dim)``.

        Returns:
            ``log N(z; 0, prior_std^2 I)``, shape ``(...)``.
        """
        z = jnp.asarray(z)
        s = self.prior_std()
        d = z.shape[-1]
        return -0.5 * jnp.sum(z**2, axis=-1) / s**2 - d * (math.log(s) + 0.5 * _LOG_2PI)

    def reverse(self, score_fn: Callable[..., Array], probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (Anderson 1982) or probability-flow ODE of this SDE given a score.

        Reverse SDE: ``dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW_bar`` run from ``t = 1`` to ``0``;
        probability-flow ODE: ``dx/dt = f(t) x - g(t)^2 / 2 score(x, t)`` (Song et al. 2021, eqs. 6 and 13).

        Arguments:
            score_fn: batched ``score_fn(x, t)`` or ``score_fn(x, t, cond)``, ``x: (n, d)``, ``t: (n,)`` ->
                ``(n, d)``, approximating ``grad_x log p_t(x)``.
            probability_flow: return the deterministic probability-flow ODE (diffusion 0).

        Returns:
            a :class:`ReverseSDE` with ``drift(x, t, cond=None)`` and ``diffusion(t)``.
        """
        return ReverseSDE(self, score_fn, probability_flow)

    def likelihood_weighting_time(self, u: ArrayLike, t_min: float) -> tuple[Array, Array]:
        """Map uniforms ``u in [0, 1)`` to times with density ``p(t) ∝ g(t)^2 / sigma(t)^2`` on ``[t_min, 1]``.

        Importance sampling for likelihood weighting (Song et al. 2021b, "Maximum Likelihood Training of
        Score-Based Diffusion Models", sec. 5): with ``lambda = g^2``, ``lambda(t) |s + z/sigma|^2 =
        (g^2/sigma^2) |sigma s + z|^2``, and sampling ``t`` from ``p`` cancels the ``1/t``-like factor.

        Arguments:
            u: uniforms, any shape.
            t_min: lower end of the time interval, ``0 < t_min < 1``.

        Returns:
            ``(t, z)``: times of ``u``'s shape, and the normaliser ``Z = int_{t_min}^1 g^2/sigma^2 dt`` (scalar).
        """
        lo = self._iw_cumulative(jnp.asarray(t_min, jnp.float32))
        hi = self._iw_cumulative(jnp.asarray(self.T, jnp.float32))
        t = self._iw_inverse(lo + jnp.asarray(u) * (hi - lo))
        return jnp.clip(t, t_min, self.T), hi - lo


def _log_expm1(x: Array) -> Array:
    """``log(exp(x) - 1)`` for ``x > 0``, accurate for small and large ``x``."""
    return jnp.where(x > 20.0, x, jnp.log(jnp.expm1(jnp.minimum(x, 20.0))))


def _softplus_inv_log(lam: Array) -> Array:
    """Inverse of ``_log_expm1``: ``log(1 + exp(lam))``."""
    return jax.nn.softplus(lam)


class AbstractVPFamilySDE(AbstractSDE):
    """The SDEs driven by a noise schedule ``beta(t)`` (VP and sub-VP): ``f(t) = -beta(t) / 2``, ``alpha(t) =
    exp(-B(t) / 2)``, prior ``N(0, I)``; subclasses give ``sigma(t)`` and ``g(t)``."""

    schedule: Schedule

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, schedule: str | Schedule = "linear"):
        self.schedule = make_schedule(schedule, beta_min, beta_max)

    def log_alpha(self, t):
        return -0.5 * self.schedule.integral(t)

    def drift_coeff(self, t):
        return -0.5 * self.schedule.beta(t)

    def prior_std(self):
        return 1.0


class VPSDE(AbstractVPFamilySDE):
    """Variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW`` (Song et al. 2021, eq. 11; DDPM's limit).

    ``x_t | x0 ~ N(exp(-B(t)/2) x0, (1 - exp(-B(t))) I)``; prior ``N(0, I)``.

    Arguments:
        beta_min, beta_max: rates of the linear schedule at ``t = 0`` and ``t = 1``.
        schedule: ``"linear"`` (default, uses ``beta_min`` / ``beta_max``), ``"cosine"`` (a default
            :class:`CosineSchedule`; ``beta_min`` / ``beta_max`` ignored) or a :class:`Schedule` instance.

    Raises:
        ValueError: on an unknown schedule name or invalid rates.
    """

    def std(self, t):
        return jnp.sqrt(-jnp.expm1(-self.schedule.integral(t)))

    def diffusion(self, t):
        return jnp.sqrt(self.schedule.beta(t))

    def _iw_cumulative(self, t):
        # g^2/sigma^2 = beta / (1 - e^{-B}) = d/dt log(e^B - 1).
        return _log_expm1(self.schedule.integral(t))

    def _iw_inverse(self, lam):
        return self.schedule.inverse_integral(_softplus_inv_log(lam))


class SubVPSDE(AbstractVPFamilySDE):
    """Sub-VP SDE ``dx = -beta/2 x dt + sqrt(beta (1 - exp(-2 B(t)))) dW`` (Song et al. 2021, eq. 12).

    ``x_t | x0 ~ N(exp(-B(t)/2) x0, (1 - exp(-B(t)))^2 I)``: the variance is bounded by the VP one at every ``t``;
    prior ``N(0, I)``.

    Arguments:
        beta_min, beta_max, schedule: as :class:`VPSDE`.
    """

    def std(self, t):
        return -jnp.expm1(-self.schedule.integral(t))

    def diffusion(self, t):
        return jnp.sqrt(-self.schedule.beta(t) * jnp.expm1(-2.0 * self.schedule.integral(t)))

    def _iw_cumulative(self, t):
        # g^2/sigma^2 = beta (1 + e^{-B}) / (1 - e^{-B}) = beta coth(B/2) = d/dt 2 log sinh(B/2);
        # log(2 sinh(B/2)) = B/2 + log(-expm1(-B)).
        b = self.schedule.integral(t)
        return 2.0 * (0.5 * b + jnp.log(-jnp.expm1(-b)))

    def _iw_inverse(self, lam):
        # 2 sinh(B/2) = e^{lam/2}  =>  B = 2 asinh(e^{lam/2} / 2).
        return self.schedule.inverse_integral(2.0 * jnp.arcsinh(0.5 * jnp.exp(0.5 * lam)))


class VESDE(AbstractSDE):
    """Variance-exploding SDE ``dx = sqrt(d s(t)^2 / dt) dW`` with ``s(t) = sigma_min (sigma_max/sigma_min)^t``
    (Song et al. 2021, eq. 9; the continuous limit of NCSN).

    ``x_t | x0 ~ N(x0, (s(t)^2 - sigma_min^2) I)`` (exact for the SDE started at ``t = 0``); prior
    ``N(0, sigma_max^2 I)``.

    Arguments:
        sigma_min: noise scale at ``t = 0``, ``> 0``.
        sigma_max: noise scale at ``t = 1``, ``> sigma_min``; should exceed the data's largest pairwise distance.

    Raises:
        ValueError: unless ``0 < sigma_min < sigma_max``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __check_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max; got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.result_type(float)))

    def std(self, t):
        return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * self._log_ratio * jnp.asarray(t)))

    def drift_coeff(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.result_type(float)))

    def diffusion(self, t):
        s = self.sigma_min * jnp.exp(self._log_ratio * jnp.asarray(t))
        return s * math.sqrt(2.0 * self._log_ratio)

    def prior_std(self):
        return self.sigma_max

    def _iw_cumulative(self, t):
        # g^2/sigma^2 = d/dt log(s(t)^2 - sigma_min^2) = d/dt log expm1(2 t log r) (+ const).
        return _log_expm1(2.0 * self._log_ratio * t)

    def _iw_inverse(self, lam):
        return _softplus_inv_log(lam) / (2.0 * self._log_ratio)


class ReverseSDE(eqx.Module):
    """Reverse-time SDE or probability-flow ODE of a forward SDE given a score (built by ``sde.reverse``).

    ``drift(x, t, cond=None) = f(t) x - c g(t)^2 score(x, t[, cond])`` with ``c = 1`` (SDE) or ``1/2`` (ODE);
    ``diffusion(t) = g(t)`` (SDE) or ``0`` (ODE). Time runs from 1 to 0: a reverse step from ``t`` to
    ``t - h`` is ``x - drift h + diffusion sqrt(h) xi``.
    """

    sde: AbstractSDE
    score_fn: Callable[..., Array]
    probability_flow: bool = eqx.field(static=True, default=False)

    def drift(self, x: Array, t: Array, cond: Any = None) -> Array:
        """Reverse drift, shape of ``x`` (``x: (n, d)``, ``t: (n,)``)."""
        c = 0.5 if self.probability_flow else 1.0
        g2 = self.sde.diffusion(t) ** 2
        return self.sde.drift(x, t) - c * jnp.asarray(g2)[..., None] * call_field(self.score_fn, x, t, cond)

    def diffusion(self, t: Array) -> Array:
        """Reverse diffusion coefficient, shape of ``t``."""
        g = self.sde.diffusion(t)
        return jnp.zeros_like(g) if self.probability_flow else g


SDES: dict[str, type[AbstractSDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
"""The SDE class of each short name (:data:`genjax._typing.SDEName`)."""


def make_sde(name: SDEName, **kwargs) -> AbstractSDE:
    """The SDE ``name`` (``"vp"``, ``"subvp"`` or ``"ve"``) built with its constructor arguments ``kwargs``.

    Raises:
        ValueError: an unknown name, or invalid constructor arguments.
    """
    check_choice("sde", name, SDEName)
    return SDES[name](**kwargs)
