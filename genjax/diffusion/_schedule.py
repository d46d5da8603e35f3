"""Noise schedules of the variance-preserving SDEs: ``beta(t)`` on ``[0, 1]``, its integral ``B(t)`` and the inverse
``B^{-1}`` (linear: Ho et al. 2020; cosine: Nichol & Dhariwal 2021).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax.numpy as jnp

from .._typing import Array, ArrayLike

__all__ = ["Schedule", "LinearSchedule", "CosineSchedule", "make_schedule"]


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


def make_schedule(schedule: str | Schedule, beta_min: float, beta_max: float) -> Schedule:
    """A :class:`Schedule` from ``"linear"`` (with ``beta_min``, ``beta_max``), ``"cosine"``, or an instance.

    Raises:
        ValueError: any other value.
    """
    if isinstance(schedule, Schedule):
        return schedule
    if schedule == "linear":
        return LinearSchedule(beta_min, beta_max)
    if schedule == "cosine":
        return CosineSchedule()
    raise ValueError(f"schedule must be one of ('linear', 'cosine') or a Schedule instance; got {schedule!r}")
