"""Count likelihoods: negative binomial, zero-inflated negative binomial and Poisson, accurate in float32.

Parameterisation everywhere: ``mu`` is the mean, ``theta`` the inverse dispersion (NB variance
``mu + mu^2 / theta``; ``theta -> inf`` is the Poisson limit), zero inflation is given as logits ``zi_logits``
(the zero-inflation probability is ``sigmoid(zi_logits)``). Counts ``x`` are non-negative integers stored in any
numeric dtype.

The log-pmfs are assembled from Loader's saddle-point pieces (C. Loader, "Fast and Accurate Computation of
Binomial Probabilities", 2000; the forms behind R's ``dnbinom_mu`` and ``dpois``), see ``genjax/likelihoods/_special.py``::

    log NB(x | mu, theta) = - 1/2 log(2 pi x (1 + x / theta)) - stirlerr(x) + stirlerr(x + theta) - stirlerr(theta)
                            - bd0(theta, theta (x + theta) / (theta + mu)) - bd0(x, mu (x + theta) / (theta + mu))

with each ``bd0(a, b)`` evaluated from ``a - b`` in closed form (``theta (mu - x) / (theta + mu)`` and its
negative), so nothing cancels when ``theta >> x`` (near-Poisson genes) or ``x`` is close to ``mu``. At ``x = 0`` the
same first deviance gives ``-theta log1p(mu / theta)`` without a separate branch. Every term is non-positive, so
the relative error of the sum is bounded by that of its parts: float32 results are within ``1e-4 (1 + |exact|)``
of the exact value on ``mu`` in [1e-6, 1e6], ``theta`` in [1e-4, 1e8], ``x`` in [0, 1e5] (tested against
mpmath), where numpyro's ``NegativeBinomial2`` and the lgamma-difference formula used by scVI are off by up to
O(1) (see ``benchmarks/README.md``).

Gradients w.r.t. ``mu``, ``theta`` (and ``log_mu``, ``log_theta``) are given analytically (``jax.custom_jvp``)
in forms that stay accurate in float32: ``d/dlog_mu = theta (x - mu) / (theta + mu)`` and
``d/dtheta = [digamma(x + theta) - digamma(theta) - log1p(x / theta)] + [log1p(u) - u]``,
``u = (x - mu) / (theta + mu)``, with both brackets computed without cancellation. The counts ``x`` are data:
the derivative w.r.t. ``x`` is defined as zero.

Invalid input. Called on concrete (non-traced) arrays, the public functions check their arguments on the host
and raise ``ValueError`` naming the argument, the offending value and its index (pass ``validate_args=False`` to
skip). Under ``jit`` / ``vmap`` / ``grad`` no check is possible; the log-probabilities are then NaN wherever the
input is invalid (negative, non-integer or NaN counts, ``mu < 0``, ``theta <= 0``, non-finite parameters).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .._typing import Array, ArrayLike
from ._special import (
    bd0_from_delta,
    delta_digamma_log,
    log1pmx_from_w,
    stirlerr,
    stirlerr_count,
)
from ._validation import checked, masked_kernel

__all__ = [
    "nb_log_prob",
    "nb_log_prob_log",
    "zinb_log_prob",
    "zinb_log_prob_log",
    "poisson_log_prob",
    "poisson_log_prob_log",
]

_TWO_PI = 2.0 * math.pi
# Tiny means are rescaled by an exact power of two before forming x / mu, so the ratio cannot overflow.
_MU_SCALE_EXP = 60
_MU_TINY = 2.0**-_MU_SCALE_EXP


def _nb_parts(x, mu, theta, log_x_over_mu):
    """log NB(x | mu, theta) for valid inputs, plus the intermediates the gradients reuse.

    ``log_x_over_mu(xm, r1)`` must return ``log(xm * r1 / mu)`` where ``r1 = (theta + mu) / (theta + x)``; it is
    supplied by the parameterisation (with ``log_mu`` known it needs no division by a possibly underflowed mu).
    """
    x0 = x == 0
    xm = jnp.where(x0, 1.0, x)  # the x > 0 terms are evaluated at a harmless point where x = 0
    tpm = theta + mu
    tpx = theta + x
    r1 = tpm / tpx
    log_r1 = jnp.log(r1)
    # bd0(theta, theta (x + theta) / (theta + mu)); at x = 0 it also carries the whole zero-count log-pmf.
    d1 = theta * ((mu - x) / tpm)  # (theta mu would overflow float32 for huge means)
    v1 = (mu - x) / (tpm + tpx)
    bd1 = bd0_from_delta(theta, d1, v1, log_r1)
    # bd0(x, b2) with b2 = mu (x + theta) / (theta + mu), whose a - b is -d1 (for x > 0). Written as
    # mu * (tpx / tpm): XLA rewrites mu / (tpm / tpx) into (mu * tpx) / tpm, which overflows for huge means.
    v2 = -d1 / (xm + mu * (tpx / tpm))
    bd2 = bd0_from_delta(xm, -d1, v2, log_x_over_mu(xm, r1))
    lp_pos = (
        stirlerr(tpx) - stirlerr(theta) - stirlerr_count(xm) - 0.5 * jnp.log(_TWO_PI * xm * tpx / theta) - bd2
    )
    lp = -bd1 + jnp.where(x0, -d1, lp_pos)
    return lp, (x0, tpm, v1, log_r1)


def _nb_grad_parts(x, mu, theta, parts):
    """``(mu * d/dmu, d/dtheta)`` of log NB, accurate in float32 (see the module docstring)."""
    _, tpm, v1, log_r1 = parts
    u = (x - mu) / tpm
    g_log_mu = theta * u
    g_theta = delta_digamma_log(x, theta) + log1pmx_from_w(-v1, -log_r1, u)
    return g_log_mu, g_theta


def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


def _log_x_over_mu_linear(mu):
    """``log(x r1 / mu)`` with an exact power-of-two rescaling of tiny ``mu`` (no overflow for mu >= 1e-38)."""
    tiny = mu < _MU_TINY
    mu_s = jnp.where(tiny, mu * 2.0**_MU_SCALE_EXP, mu)
    corr = jnp.where(tiny, _MU_SCALE_EXP * math.log(2.0), 0.0)

    def f(xm, r1):
        return jnp.log(xm * r1 / mu_s) + corr

    return f


@jax.custom_jvp
def _nb_lp(x, mu, theta):
    lp, _ = _nb_parts(x, mu, theta, _log_x_over_mu_linear(mu))
    return lp


def _nb_lp_jvp(primals, tangents):
    x, mu, theta = primals
    _, dmu, dtheta = tangents
    lp, parts = _nb_parts(x, mu, theta, _log_x_over_mu_linear(mu))
    g_log_mu, g_theta = _nb_grad_parts(x, mu, theta, parts)
    dlp = jnp.zeros_like(lp)
    if not _is_zero(dmu):
        x0 = parts[0]
        mu_safe = jnp.where(x0, 1.0, mu)
        g_mu = jnp.where(x0, -theta / parts[1], g_log_mu / mu_safe)
        dlp = dlp + g_mu * dmu
    if not _is_zero(dtheta):
        dlp = dlp + g_theta * dtheta
    return lp, dlp


_nb_lp.defjvp(_nb_lp_jvp, symbolic_zeros=True)


def _log_x_over_mu_log(log_mu):
    def f(xm, r1):
        return jnp.log(xm * r1) - log_mu

    return f


@jax.custom_jvp
def _nb_lp_log(x, log_mu, log_theta):
    mu, theta = jnp.exp(log_mu), jnp.exp(log_theta)
    lp, _ = _nb_parts(x, mu, theta, _log_x_over_mu_log(log_mu))
    return lp


def _nb_lp_log_jvp(primals, tangents):
    x, log_mu, log_theta = primals
    _, dlog_mu, dlog_theta = tangents
    mu, theta = jnp.exp(log_mu), jnp.exp(log_theta)
    lp, parts = _nb_parts(x, mu, theta, _log_x_over_mu_log(log_mu))
    g_log_mu, g_theta = _nb_grad_parts(x, mu, theta, parts)
    dlp = jnp.zeros_like(lp)
    if not _is_zero(dlog_mu):
        dlp = dlp + g_log_mu * dlog_mu
    if not _is_zero(dlog_theta):
        dlp = dlp + (theta * g_theta) * dlog_theta
    return lp, dlp


_nb_lp_log.defjvp(_nb_lp_log_jvp, symbolic_zeros=True)


def nb_log_prob(x: ArrayLike, mu: ArrayLike, theta: ArrayLike, *, validate_args: bool = True) -> Array:
    """Log-pmf of the negative binomial with mean ``mu`` and inverse dispersion ``theta``.

    ``log NB(x | mu, theta) = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
    + theta log(theta / (theta + mu)) + x log(mu / (theta + mu))``, evaluated with Loader's saddle-point
    decomposition (module docstring) so that it is accurate in float32 for every ``theta`` up to 1e8 and beyond.

    Arguments:
        x: counts, non-negative integers in any numeric dtype; broadcastable with the parameters.
        mu: mean, ``>= 0`` (``mu = 0`` gives log-pmf 0 at ``x = 0`` and ``-inf`` elsewhere); float32 handles
            means up to ~1e37.
        theta: inverse dispersion, ``> 0`` (variance ``mu + mu^2 / theta``).
        validate_args: check concrete inputs on the host (default); ignored under tracing.

    Returns:
        The log-pmf, an array of the broadcast shape; float64 if the inputs are float64, float32 otherwise.
        Under ``jit``: NaN where the input is invalid. Differentiable in ``mu`` and ``theta`` (``x``: zero).

    Raises:
        ValueError: for concrete inputs with negative, non-integer, NaN or infinite counts, ``mu < 0``,
            ``theta <= 0`` or non-finite parameters, naming the argument, the value and its index.
    """
    return checked(_nb_kernel, "nb_log_prob", validate_args,
                   x=(x, "counts"), mu=(mu, "mean"), theta=(theta, "positive"))




def nb_log_prob_log(
    x: ArrayLike, log_mu: ArrayLike, log_theta: ArrayLike, *, validate_args: bool = True
) -> Array:
    """Negative binomial log-pmf from log-parameters, what decoders produce: ``mu = exp(log_mu)``, ``theta = exp(log_theta)``.

    Same value as :func:`nb_log_prob` at ``(x, exp(log_mu), exp(log_theta))``, but ``log_mu`` enters the
    ``x log(mu)`` term directly, so it stays accurate (and its gradients finite) for very negative ``log_mu``
    (-30, -100, where ``exp`` underflows), and for ``log_theta`` up to ~20 and beyond.

    Arguments:
        x: counts, non-negative integers; broadcastable with the parameters.
        log_mu: log of the mean, real (``-inf`` means ``mu = 0``), at most ~88 in float32 (``exp`` overflows
            beyond and the result is NaN).
        log_theta: log of the inverse dispersion, finite.
        validate_args: check concrete inputs on the host (default); ignored under tracing.

    Returns:
        The log-pmf, broadcast shape, float32 (float64 for float64 input); NaN under ``jit`` for invalid input.
        Gradients w.r.t. ``log_mu``: ``theta (x - mu) / (theta + mu)``; w.r.t. ``log_theta``: ``theta d/dtheta``.

    Raises:
        ValueError: for concrete invalid input (bad counts, NaN / +inf ``log_mu``, non-finite ``log_theta``).
    """
    return checked(_nb_log_kernel, "nb_log_prob_log", validate_args,
                   x=(x, "counts"), log_mu=(log_mu, "log_mean"), log_theta=(log_theta, "real"))




def _zero_inflate(x, nb_lp, zi_logits):
    """log ZINB from log NB: ``log(pi + (1 - pi) NB(0))`` at 0, ``log(1 - pi) + log NB(x)`` elsewhere.

    ``pi = sigmoid(z)``, ``log(1 - pi) = -softplus(z)``; the zero-count term is :func:`_log_zero_prob`.
    """
    return jnp.where(x == 0, _log_zero_prob(zi_logits, nb_lp), nb_lp - jax.nn.softplus(zi_logits))


def _log_pi_keep(z):
    """``(log sigmoid(z), log sigmoid(-z))`` with one exp and one log1p."""
    softplus_abs = jnp.log1p(jnp.exp(-jnp.abs(z)))
    return -(jnp.maximum(-z, 0.0) + softplus_abs), -(jnp.maximum(z, 0.0) + softplus_abs)


def _log_zero_prob_parts(z, nb0):
    log_pi, log_keep = _log_pi_keep(z)
    q = -jnp.expm1(nb0)  # probability of a non-zero NB draw
    keep_q = jnp.exp(log_keep) * q  # 1 - p0
    value = jnp.where(keep_q < 0.5, jnp.log1p(-keep_q), jnp.logaddexp(log_pi, log_keep + nb0))
    return value, (log_pi, log_keep, q)


@jax.custom_jvp
def _log_zero_prob(z, nb0):
    """``log p0 = log(pi + (1 - pi) exp(nb0))``, ``pi = sigmoid(z)``, ``nb0 = log NB(0) <= 0``.

    Two forms, each where it is accurate: ``log1p(-(1 - pi) q)`` with ``q = -expm1(nb0)`` (the probability of a
    non-zero NB draw) while ``(1 - pi) q < 1/2``, else ``logaddexp(log pi, log(1 - pi) + nb0)``. The derivatives
    are given as products, ``d/dz = pi (1 - pi) q / p0`` and ``d/dnb0 = (1 - pi) exp(nb0) / p0``; the autodiff
    of ``logaddexp(z, nb0) - softplus(z)`` would form ``d/dz`` as ``sigmoid(z - nb0) - sigmoid(z)``, which cancels
    when ``nb0`` is near 0 (a tiny mean, the common case).
    """
    return _log_zero_prob_parts(z, nb0)[0]


def _log_zero_prob_jvp(primals, tangents):
    z, nb0 = primals
    dz, dnb0 = tangents
    value, (log_pi, log_keep, q) = _log_zero_prob_parts(z, nb0)
    w_z = q * jnp.exp(log_pi + log_keep - value)
    w_nb0 = jnp.exp(log_keep + nb0 - value)
    return value, w_z * dz + w_nb0 * dnb0


_log_zero_prob.defjvp(_log_zero_prob_jvp)


def zinb_log_prob(
    x: ArrayLike, mu: ArrayLike, theta: ArrayLike, zi_logits: ArrayLike, *, validate_args: bool = True
) -> Array:
    """Log-pmf of the zero-inflated negative binomial.

    ``ZINB(x) = pi 1[x = 0] + (1 - pi) NB(x | mu, theta)`` with ``pi = sigmoid(zi_logits)``.

    Arguments:
        x: counts, non-negative integers; broadcastable with the parameters.
        mu: NB mean, ``>= 0``.
        theta: NB inverse dispersion, ``> 0``.
        zi_logits: logits of the zero-inflation probability, finite.
        validate_args: check concrete inputs on the host (default); ignored under tracing.

    Returns:
        The log-pmf, broadcast shape, float32 (float64 for float64 input); NaN under ``jit`` for invalid input.

    Raises:
        ValueError: for concrete invalid input, naming the argument, the value and its index.
    """
    return checked(_zinb_kernel, "zinb_log_prob", validate_args,
                   x=(x, "counts"), mu=(mu, "mean"), theta=(theta, "positive"), zi_logits=(zi_logits, "real"))




def zinb_log_prob_log(
    x: ArrayLike, log_mu: ArrayLike, log_theta: ArrayLike, zi_logits: ArrayLike, *, validate_args: bool = True
) -> Array:
    """Zero-inflated negative binomial log-pmf from ``log_mu``, ``log_theta`` and ``zi_logits`` (decoder outputs):
    :func:`zinb_log_prob` with ``mu = exp(log_mu)``, ``theta = exp(log_theta)``, accurate where ``exp`` would
    underflow (as :func:`nb_log_prob_log`).

    Arguments:
        log_mu: log of the NB mean, real (``-inf`` means ``mu = 0``).
        log_theta: log of the NB inverse dispersion, finite.
        x, zi_logits, validate_args: as :func:`zinb_log_prob`.

    Returns:
        The log-pmf as :func:`zinb_log_prob` returns it.

    Raises:
        ValueError: for concrete invalid input (bad counts, NaN / +inf ``log_mu``, non-finite ``log_theta`` or
            ``zi_logits``), naming the argument, the value and its index.
    """
    return checked(_zinb_log_kernel, "zinb_log_prob_log", validate_args,
                   x=(x, "counts"), log_mu=(log_mu, "log_mean"), log_theta=(log_theta, "real"),
                   zi_logits=(zi_logits, "real"))




def _poisson_parts(x, rate, log_x_over_rate):
    x0 = x == 0
    xm = jnp.where(x0, 1.0, x)
    delta = xm - rate
    v = delta / (xm + rate)
    dev = bd0_from_delta(xm, delta, v, log_x_over_rate(xm, jnp.ones_like(xm)))
    lp_pos = -stirlerr_count(xm) - 0.5 * jnp.log(_TWO_PI * xm) - dev
    return jnp.where(x0, -rate, lp_pos)


@jax.custom_jvp
def _poisson_lp(x, rate):
    return _poisson_parts(x, rate, _log_x_over_mu_linear(rate))


def _poisson_lp_jvp(primals, tangents):
    x, rate = primals
    _, drate = tangents
    lp = _poisson_parts(x, rate, _log_x_over_mu_linear(rate))
    if _is_zero(drate):
        return lp, jnp.zeros_like(lp)
    x0 = x == 0
    g = jnp.where(x0, -1.0, (x - rate) / jnp.where(x0, 1.0, rate))
    return lp, g * drate


_poisson_lp.defjvp(_poisson_lp_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _poisson_lp_log(x, log_rate):
    return _poisson_parts(x, jnp.exp(log_rate), _log_x_over_mu_log(log_rate))


def _poisson_lp_log_jvp(primals, tangents):
    x, log_rate = primals
    _, dlog_rate = tangents
    rate = jnp.exp(log_rate)
    lp = _poisson_parts(x, rate, _log_x_over_mu_log(log_rate))
    if _is_zero(dlog_rate):
        return lp, jnp.zeros_like(lp)
    return lp, (x - rate) * dlog_rate


_poisson_lp_log.defjvp(_poisson_lp_log_jvp, symbolic_zeros=True)


def poisson_log_prob(x: ArrayLike, rate: ArrayLike, *, validate_args: bool = True) -> Array:
    """Log-pmf of the Poisson distribution, ``x log(rate) - rate - lgamma(x + 1)``, in Loader's form.

    Computed as ``-stirlerr(x) - log(2 pi x) / 2 - bd0(x, rate)`` (``-rate`` at ``x = 0``), accurate in float32
    for large ``x`` and ``rate`` where the textbook formula cancels.

    Arguments:
        x: counts, non-negative integers; broadcastable with ``rate``.
        rate: the mean, ``>= 0``.
        validate_args: check concrete inputs on the host (default); ignored under tracing.

    Returns:
        The log-pmf, broadcast shape, float32 (float64 for float64 input); NaN under ``jit`` for invalid input.

    Raises:
        ValueError: for concrete invalid input, naming the argument, the value and its index.
    """
    return checked(_poisson_kernel, "poisson_log_prob", validate_args, x=(x, "counts"), rate=(rate, "mean"))




def poisson_log_prob_log(x: ArrayLike, log_rate: ArrayLike, *, validate_args: bool = True) -> Array:
    """Poisson log-pmf from ``log_rate`` (``rate = exp(log_rate)``), accurate for very negative ``log_rate``.

    Arguments:
        x: counts, non-negative integers; broadcastable with ``log_rate``.
        log_rate: log of the mean, real (``-inf`` means rate 0).
        validate_args: check concrete inputs on the host (default); ignored under tracing.

    Returns:
        The log-pmf, broadcast shape, float32 (float64 for float64 input); NaN under ``jit`` for invalid input.

    Raises:
        ValueError: for concrete invalid input, naming the argument, the value and its index.
    """
    return checked(_poisson_log_kernel, "poisson_log_prob_log", validate_args,
                   x=(x, "counts"), log_rate=(log_rate, "log_mean"))


def _zinb_lp(x, mu, theta, zi_logits):
    """log ZINB from the NB log-pmf, for valid inputs."""
    return _zero_inflate(x, _nb_lp(x, mu, theta), zi_logits)


def _zinb_lp_log(x, log_mu, log_theta, zi_logits):
    """log ZINB from the NB log-pmf in log-parameters, for valid inputs."""
    return _zero_inflate(x, _nb_lp_log(x, log_mu, log_theta), zi_logits)


_nb_kernel = masked_kernel(_nb_lp, "mean", "positive")
_nb_log_kernel = masked_kernel(_nb_lp_log, "log_mean", "real")
_zinb_kernel = masked_kernel(_zinb_lp, "mean", "positive", "real")
_zinb_log_kernel = masked_kernel(_zinb_lp_log, "log_mean", "real", "real")
_poisson_kernel = masked_kernel(_poisson_lp, "mean")
_poisson_log_kernel = masked_kernel(_poisson_lp_log, "log_mean")
