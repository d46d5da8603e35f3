"""Output parameterisations of score networks and the conversions between them (Song et al. 2021; Salimans & Ho
2022; Karras et al. 2022).

A network ``F(x_t, t, cond)`` is trained to predict one of six equivalent targets. With ``x_t = alpha x0 +
sigma eps`` (see :mod:`genjax.diffusion`), each target is linear in the noise, ``p(t) x_t + q(t) eps``, so a network's
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
"""

from __future__ import annotations

from typing import get_args

import jax.numpy as jnp

from .._checks import check_choice
from .._typing import Array, Parameterisation
from ._sde import AbstractSDE

__all__ = ["PARAMETERISATIONS", "convert_output", "parameterisation_coefficients"]


PARAMETERISATIONS = get_args(Parameterisation)
"""Output parameterisations of a score network (see the module docstring)."""


# (p, q) of each parameterisation, ``output = p x_t + q eps``, from the SDE, t, alpha(t) and sigma(t)
_COEFFICIENTS = {
    "score": lambda sde, t, a, s: (jnp.zeros_like(s), -1.0 / s),
    "eps": lambda sde, t, a, s: (jnp.zeros_like(s), jnp.ones_like(s)),
    "x0": lambda sde, t, a, s: (1.0 / a, -s / a),
    "v": lambda sde, t, a, s: (-s / a, (a**2 + s**2) / a),
    "velocity": lambda sde, t, a, s: (sde.drift_coeff(t) * jnp.ones_like(s), sde.diffusion(t) ** 2 / (2.0 * s)),
    "eps_skip": lambda sde, t, a, s: (-s / (a**2 + s**2), jnp.ones_like(s)),
}


def parameterisation_coefficients(sde: AbstractSDE, t: Array, name: Parameterisation) -> tuple[Array, Array]:
    """``(p, q)`` with ``output = p x_t + q eps`` for the parameterisation ``name`` (arrays of ``t``'s shape).

    Raises:
        ValueError: an unknown parameterisation.
    """
    check_choice("parameterisation", name, Parameterisation)
    return _COEFFICIENTS[name](sde, t, sde.alpha(t), sde.std(t))


def convert_output(output: Array, x: Array, t: Array, sde: AbstractSDE, source: Parameterisation, target: Parameterisation) -> Array:
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
    check_choice("parameterisation", source, Parameterisation)
    check_choice("parameterisation", target, Parameterisation)
    if source == target:
        return output
    p_s, q_s = parameterisation_coefficients(sde, t, source)
    p_t, q_t = parameterisation_coefficients(sde, t, target)
    eps = (output - jnp.asarray(p_s)[..., None] * x) / jnp.asarray(q_s)[..., None]
    return jnp.asarray(p_t)[..., None] * x + jnp.asarray(q_t)[..., None] * eps
