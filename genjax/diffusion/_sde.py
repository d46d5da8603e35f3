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

from .._typing import Array, ArrayLike, PRNGKeyArray

__all__ = [
    "Schedule",
    "LinearSchedule",
    "CosineSchedule",
    "AbstractSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "call_score",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _expand(c: Array, x: Array) -> Array:
    """Append trailing singleton axes to a per-point coefficient ``c`` (shape of ``t``) to broadcast against ``x``."""
    c = jnp.asarray(c)
    return jnp.reshape(c, c.shape + (1,) * (jnp.ndim(x) - c.ndim)) if c.ndim else c


def call_score(score_fn: Callable[..., Array], x: Array, t: Array, cond: Any = None) -> Array:
    """Call a batched score (or velocity) function with the library convention.

    ``score_fn(x, t)`` when ``cond`` is ``None`` (unconditional), else ``score_fn(x, t, cond)``.
    """
    return score_fn(x, t) if cond is None else score_fn(x, t, cond)


# ---------------------------------------------------------------------------------------------------------------
# Noise schedules for the VP family: beta(t) and its integral B(t) = int_0^t beta(s) ds.
# ---------------------------------------------------------------------------------------------------------------


class Schedule(eqx.Module):
    """A noise-rate schedule ``beta(t) >= 0`` on ``[0, 1]`` with its integral ``B(t)`` and the inverse ``B^{-1}``."""

    @abc.abstractmethod
    def beta(self, t: ArrayLike) -> Array:
        """Noise rate ``beta(t)``, same shape as ``t``."""

    @abc.abstractmethod
    def integral(self, t: ArrayLike) -> Array:
        """``B(t) = int_0^t beta(s) ds``, same shape as ``t``."""

    @abc.abstractmethod
    def inverse_integral(self, b: ArrayLike) -> Array:
        """The time ``t`` with ``B(t) = b`` (used for importance sampling of times)."""


class LinearSchedule(Schedule):
    """``beta(t) = beta_min + t (beta_max - beta_min)`` (Ho et al. 2020; Song et al. 2021, eq. 11).

    Arguments:
        beta_min: rate at ``t = 0``, ``>= 0``.
        beta_max: rate at ``t = 1``, ``> beta_min``.

    Raises:
        ValueError: if ``beta_min < 0`` or ``beta_max <= beta_min``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __check_init__(self):
        if not (self.beta_min >= 0 and self.beta_max > self.beta_min):
            raise ValueError(
                f"LinearSchedule needs 0 <= beta_min < beta_max; got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )

    def beta(self, t):
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def integral(self, t):
        t = jnp.asarray(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def inverse_integral(self, b):
        b = jnp.asarray(b)
        d = self.beta_max - self.beta_min
        # Root of d/2 t^2 + beta_min t - b = 0, written without cancellation: 2b / (beta_min + sqrt(...));
        # b = 0 (with beta_min = 0 the denominator vanishes too) is t = 0.
        den = self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b)
        return jnp.where(den > 0, 2.0 * b / jnp.where(den > 0, den, 1.0), 0.0)


class CosineSchedule(Schedule):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17) in continuous time, truncated to a finite end rate.

    ``alpha(t) = cos(phi(t)) / cos(phi_0)`` with ``phi(t) = phi_0 + t (phi_1 - phi_0)``, ``phi_0 = pi/2 s/(1+s)``,
    so ``alpha_bar(t) = alpha(t)^2`` is Nichol & Dhariwal's ``f(t)/f(0)``; ``B(t) = -2 log alpha(t)`` and
    ``beta(t) = 2 (phi_1 - phi_0) tan(phi(t))``. Nichol & Dhariwal end at ``phi_1 = pi/2``, where ``beta`` is
    infinite (they clip it); here ``phi_1`` is chosen so that the log signal-to-noise ratio
    ``log(alpha_bar / (1 - alpha_bar))`` at ``t = 1`` equals ``logsnr_min``, which keeps ``beta`` finite and the
    schedule self-consistent. The default ``logsnr_min = -10`` matches the end point of the default linear VP
    schedule (``log SNR(1) = -10.05``).

    Arguments:
        s: offset ``s > 0`` that keeps ``beta`` from vanishing at ``t = 0``.
        logsnr_min: log signal-to-noise ratio at ``t = 1`` (negative: the prior is nearly pure noise).

    Raises:
        ValueError: if ``s <= 0`` or ``logsnr_min >= 0``.
    """

    s: float = 0.008
    logsnr_min: float = -10.0

    def __check_init__(self):
        if not (self.s > 0 and self.logsnr_min < 0):
            raise ValueError(f"CosineSchedule needs s > 0 and logsnr_min < 0; got s={self.s}, logsnr_min={self.logsnr_min}")

    @property
    def _phi0(self) -> float:
        return 0.5 * math.pi * self.s / (1.0 + self.s)

    @property
    def _phi1(self) -> float:
        alpha_bar_1 = 1.0 / (1.0 + math.exp(-self.logsnr_min))
        return math.acos(math.cos(self._phi0) * math.sqrt(alpha_bar_1))

    def _phi(self, t):
        return self._phi0 + jnp.asarray(t) * (self._phi1 - self._phi0)

    def beta(self, t):
        return 2.0 * (self._phi1 - self._phi0) * jnp.tan(self._phi(t))

    def integral(self, t):
        return 2.0 * (math.log(math.cos(self._phi0)) - jnp.log(jnp.cos(self._phi(t))))

    def inverse_integral(self, b):
        phi = jnp.arccos(math.cos(self._phi0) * jnp.exp(-0.5 * jnp.asarray(b)))
        return (phi - self._phi0) / (self._phi1 - self._phi0)


def _schedule(schedule: str | Schedule, beta_min: float, beta_max: float) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if schedule == "linear":
        return LinearSchedule(beta_min, beta_max)
    if schedule == "cosine":
        return CosineSchedule()
    raise ValueError(f"schedule must be 'linear', 'cosine' or a Schedule instance; got {schedule!r}")


# ---------------------------------------------------------------------------------------------------------------
# SDEs
# ---------------------------------------------------------------------------------------------------------------


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

    # --- concrete API --------------------------------------------------------------------------------------

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
        return _expand(self.drift_coeff(t), x) * x

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
        return _expand(self.alpha(t), x0) * x0, self.std(t)

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


class VPSDE(AbstractSDE):
    """Variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW`` (Song et al. 2021, eq. 11; DDPM's limit).

    ``x_t | x0 ~ N(exp(-B(t)/2) x0, (1 - exp(-B(t))) I)``; prior ``N(0, I)``.

    Arguments:
        beta_min, beta_max: rates of the linear schedule at ``t = 0`` and ``t = 1``.
        schedule: ``"linear"`` (default, uses ``beta_min`` / ``beta_max``), ``"cosine"`` (a default
            :class:`CosineSchedule`; ``beta_min`` / ``beta_max`` ignored) or a :class:`Schedule` instance.

    Raises:
        ValueError: on an unknown schedule name or invalid rates.
    """

    schedule: Schedule

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, schedule: str | Schedule = "linear"):
        self.schedule = _schedule(schedule, beta_min, beta_max)

    def log_alpha(self, t):
        return -0.5 * self.schedule.integral(t)

    def std(self, t):
        return jnp.sqrt(-jnp.expm1(-self.schedule.integral(t)))

    def drift_coeff(self, t):
        return -0.5 * self.schedule.beta(t)

    def diffusion(self, t):
        return jnp.sqrt(self.schedule.beta(t))

    def prior_std(self):
        return 1.0

    def _iw_cumulative(self, t):
        # g^2/sigma^2 = beta / (1 - e^{-B}) = d/dt log(e^B - 1).
        return _log_expm1(self.schedule.integral(t))

    def _iw_inverse(self, lam):
        return self.schedule.inverse_integral(_softplus_inv_log(lam))


class SubVPSDE(AbstractSDE):
    """Sub-VP SDE ``dx = -beta/2 x dt + sqrt(beta (1 - exp(-2 B(t)))) dW`` (Song et al. 2021, eq. 12).

    ``x_t | x0 ~ N(exp(-B(t)/2) x0, (1 - exp(-B(t)))^2 I)``: the variance is bounded by the VP one at every ``t``;
    prior ``N(0, I)``.

    Arguments:
        beta_min, beta_max, schedule: as :class:`VPSDE`.
    """

    schedule: Schedule

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, schedule: str | Schedule = "linear"):
        self.schedule = _schedule(schedule, beta_min, beta_max)

    def log_alpha(self, t):
        return -0.5 * self.schedule.integral(t)

    def std(self, t):
        return -jnp.expm1(-self.schedule.integral(t))

    def drift_coeff(self, t):
        return -0.5 * self.schedule.beta(t)

    def diffusion(self, t):
        return jnp.sqrt(-self.schedule.beta(t) * jnp.expm1(-2.0 * self.schedule.integral(t)))

    def prior_std(self):
        return 1.0

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
        return self.sde.drift(x, t) - c * _expand(g2, x) * call_score(self.score_fn, x, t, cond)

    def diffusion(self, t: Array) -> Array:
        """Reverse diffusion coefficient, shape of ``t``."""
        g = self.sde.diffusion(t)
        return jnp.zeros_like(g) if self.probability_flow else g
