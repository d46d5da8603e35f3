"""Conditional flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling", ICLR; Liu et al. 2023,
rectified flow; Tong et al. 2024, "Improving and generalizing flow-based generative models with minibatch optimal
transport", TMLR).

A probability path joins the data at ``t = 0`` to the prior ``N(0, I)`` at ``t = 1`` (the time convention of the
diffusion models in :mod:`genjax.diffusion`, so that time means noise level in the whole library):

    ``x_t = alpha(t) x + sigma(t) eps``,  ``eps ~ N(0, I)``,  with conditional velocity
    ``u_t = d x_t / dt = alpha'(t) x + sigma'(t) eps``.

A velocity network ``v(x_t, t, cond)`` regresses ``u_t`` (:func:`cfm_loss`); the minimiser is the marginal
velocity ``E[u_t | x_t, cond]``, whose ODE ``dx/dt = v`` carries ``N(0, I)`` at ``t = 1`` to the data at ``t = 0``
(:func:`genjax.sample_flow`, :func:`genjax.flow_log_likelihood`; the loss is in ``_cfm.py``). Two paths:

=================  ==========================  ==================================  =========================
path               alpha(t)                    sigma(t)                            reference
=================  ==========================  ==================================  =========================
:class:`LinearPath`  ``1 - t``                 ``sigma_min + (1 - sigma_min) t``   Lipman et al. eq. 20-23
:class:`VPPath`      ``cos(pi t / 2)``         ``sin(pi t / 2)``                   Albergo & Vanden-Eijnden
                                                                                   2023 (trigonometric)
=================  ==========================  ==================================  =========================

The linear path is the "conditional OT" path (straight lines, constant speed) and, with ``sigma_min = 0``,
rectified flow; the variance-preserving path keeps ``alpha^2 + sigma^2 = 1`` like the VP diffusion, with finite
speeds at both ends. Optional minibatch optimal-transport coupling (:func:`ot_coupling`) pairs each data point with
a noise draw by an exact assignment within the batch, which straightens the learned paths (fewer solver steps for
the same error). Times can be drawn with the variance-reduced schemes of :func:`genjax.sample_times`.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._typing import Array, PRNGKeyArray

__all__ = ["AbstractPath", "LinearPath", "VPPath"]

_LOG_2PI = math.log(2.0 * math.pi)


_LOG_2PI = math.log(2.0 * math.pi)


class AbstractPath(eqx.Module):
    """A Gaussian probability path ``x_t = alpha(t) x + sigma(t) eps`` from the data (``t = 0``) to ``N(0, I)``
    (``t = 1``). Subclasses define ``alpha``, ``sigma`` and their time derivatives (elementwise in ``t``)."""

    @abc.abstractmethod
    def alpha(self, t: Array) -> Array:
        """Data coefficient, shape of ``t``."""

    @abc.abstractmethod
    def sigma(self, t: Array) -> Array:
        """Noise coefficient, shape of ``t``."""

    @abc.abstractmethod
    def d_alpha(self, t: Array) -> Array:
        """``d alpha / dt``, shape of ``t``."""

    @abc.abstractmethod
    def d_sigma(self, t: Array) -> Array:
        """``d sigma / dt``, shape of ``t``."""

    def interpolate(self, x: Array, eps: Array, t: Array) -> tuple[Array, Array]:
        """The point on the path and its conditional velocity.

        Arguments:
            x: data ``(n, d)``; eps: noise ``(n, d)``; t: times ``(n,)`` (or a scalar) in ``[0, 1]``.

        Returns:
            ``(x_t, u_t)``: ``alpha x + sigma eps`` and ``alpha' x + sigma' eps``, both ``(n, d)``.
        """
        a, s = jnp.asarray(self.alpha(t))[..., None], jnp.asarray(self.sigma(t))[..., None]
        da, ds = jnp.asarray(self.d_alpha(t))[..., None], jnp.asarray(self.d_sigma(t))[..., None]
        return a * x + s * eps, da * x + ds * eps

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        """Draw from the prior ``N(0, I)`` at ``t = 1``: float32 array of ``shape``."""
        return jax.random.normal(key, shape)

    def prior_log_prob(self, z: Array) -> Array:
        """``log N(z; 0, I)`` summed over the last axis: ``z: (..., d)`` -> ``(...)``."""
        z = jnp.asarray(z)
        return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * _LOG_2PI


class LinearPath(AbstractPath):
    """Straight-line path ``x_t = (1 - t) x + (sigma_min + (1 - sigma_min) t) eps`` (Lipman et al. 2023, the
    conditional-OT path, in this library's time direction; ``sigma_min = 0`` is rectified flow).

    Attributes:
        sigma_min: noise level left at the data end, in ``[0, 1)``: the model's ``t = 0`` marginal is the data
            convolved with ``N(0, sigma_min^2 I)``.
    """

    sigma_min: float = 0.0

    def __check_init__(self):
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"LinearPath: sigma_min must be in [0, 1); got {self.sigma_min}")

    def alpha(self, t):
        return 1.0 - jnp.asarray(t)

    def sigma(self, t):
        return self.sigma_min + (1.0 - self.sigma_min) * jnp.asarray(t)

    def d_alpha(self, t):
        return -jnp.ones_like(jnp.asarray(t, jnp.result_type(t, jnp.float32)))

    def d_sigma(self, t):
        return (1.0 - self.sigma_min) * jnp.ones_like(jnp.asarray(t, jnp.result_type(t, jnp.float32)))


class VPPath(AbstractPath):
    """Variance-preserving path ``x_t = cos(pi t / 2) x + sin(pi t / 2) eps`` (the trigonometric interpolant of
    Albergo & Vanden-Eijnden 2023; the cosine VP schedule without offset): ``alpha^2 + sigma^2 = 1``, exactly
    ``N(0, I)`` at ``t = 1`` and finite speed at both ends."""

    def alpha(self, t):
        return jnp.cos(0.5 * math.pi * jnp.asarray(t))

    def sigma(self, t):
        return jnp.sin(0.5 * math.pi * jnp.asarray(t))

    def d_alpha(self, t):
        return -0.5 * math.pi * jnp.sin(0.5 * math.pi * jnp.asarray(t))

    def d_sigma(self, t):
        return 0.5 * math.pi * jnp.cos(0.5 * math.pi * jnp.asarray(t))

