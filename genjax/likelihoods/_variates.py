"""Negative binomial and ZINB samplers (:func:`sample_nb`, :func:`sample_zinb`) and the gamma and Poisson variates
behind them.

``jax.random.loggamma`` and ``jax.random.poisson`` take 4-6 s each to compile on CPU (every new output shape
recompiles), and ``poisson`` returns int32 and evaluates its acceptance test ``k log(rate) - rate - lgamma(k + 1)``
with float32 cancellation for large rates. These are compact batched versions (one ``lax.while_loop`` each, all
elements advance together, finished ones are masked):

- :func:`log_gamma_variates`: Marsaglia & Tsang, "A simple method for generating gamma variables" (2000), on the
  log scale, with the ``alpha < 1`` boost ``G(alpha) = G(alpha + 1) U^(1/alpha)`` as an additive ``log(U) / alpha``
  (no underflow for ``alpha = 1e-4``); the acceptance test uses ``expm1(w) - w`` in series form so it stays exact
  for ``alpha = 1e8`` (the Poisson limit).
- :func:`nb_variates`: the two composed, with one key split and the per-element uniforms drawn together.
- :func:`poisson_variates`: inversion by sequential search for rates below 10 (one uniform per element, a cheap
  loop of about ``rate + 1`` steps), and Hormann's transformed rejection with squeeze (PTRS; "The transformed
  rejection method for generating Poisson random variables", 1993) above, with the acceptance test on the
  accurate Loader log-pmf. Counts are returned as floats (exact integers up to 2^24 in float32).

:func:`carry_counts` moves counts from one NB (or Poisson) mean to another by the Gamma-Poisson coupling (binomial
thinning down, posterior-rate Poisson increments up): exact in distribution, and the identity for no change.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .._typing import Array, ArrayLike, PRNGKeyArray
from ._special import bd0_from_delta, horner, stirlerr_count
from ._validation import as_float, float_dtype, validate_args_if

__all__ = ["carry_counts", "sample_nb", "sample_zinb", "nb_variates", "log_gamma_variates", "poisson_variates"]

_MAX_ITERATIONS = 1000  # a safety net only: acceptance rates are >= 0.9 (PTRS) and >= 0.95 (Marsaglia-Tsang)
_SMALL_RATE = 10.0


def _expm1_minus_x(w):
    """``expm1(w) - w`` without cancellation for small ``|w|``."""
    n_terms = 16 if w.dtype == jnp.float64 else 9
    coeffs, fact = [], 1.0
    for k in range(2, n_terms + 2):
        fact *= k
        coeffs.append(1.0 / fact)
    series = w * w * horner(w, coeffs)
    return jnp.where(jnp.abs(w) < 0.5, series, jnp.expm1(w) - w)


def _symmetric_pair(keys, it, shape, dtype):
    """Two independent uniforms on (-1, 1) from one generator call (one threefry expansion in the loop body:
    compile time grows with every random call inside a while loop). ``keys`` are pre-split, one per iteration."""
    minval = jnp.nextafter(jnp.asarray(-1.0, dtype), jnp.asarray(0.0, dtype))
    u = jax.random.uniform(keys[it], (2, *shape), dtype, minval=minval, maxval=1.0)
    return u[0], u[1]


def _rejection_loop(keys, shape, dtype, finished, propose):
    """Batched rejection sampling in one ``lax.while_loop``: each round draws two uniforms on (-1, 1) per element
    and ``propose(u1, u2) -> (accept, value)``; an element keeps the value of its first accepted round (elements
    ``finished`` from the start keep 0). Stops when all are done or after ``_MAX_ITERATIONS`` rounds."""

    def cond(state):
        done, _, it = state
        return jnp.logical_and(~jnp.all(done), it < _MAX_ITERATIONS)

    def body(state):
        done, out, it = state
        accept, value = propose(*_symmetric_pair(keys, it, shape, dtype))
        return done | accept, jnp.where(~done & accept, value, out), it + 1

    return lax.while_loop(cond, body, (finished, jnp.zeros(shape, dtype), jnp.int32(0)))[1]


def log_gamma_variates(keys, alpha, u_boost):
    """``log G`` with ``G ~ Gamma(alpha, 1)``, elementwise; ``alpha`` gives the shape and dtype.

    Arguments:
        keys: ``_MAX_ITERATIONS`` PRNG keys, one per rejection round.
        alpha: positive shapes (an array of the output shape). Invalid entries (``alpha <= 0``, NaN) return NaN.
        u_boost: uniforms on (0, 1], the output shape, for the ``alpha < 1`` boost.
    """
    shape, dtype = alpha.shape, alpha.dtype
    valid = alpha > 0
    boost = alpha < 1
    a = jnp.where(valid, jnp.where(boost, alpha + 1.0, alpha), 1.0)
    d = a - 1.0 / 3.0
    c = lax.rsqrt(9.0 * d)

    def propose(u_normal, u_accept):
        x = jnp.sqrt(2.0).astype(dtype) * lax.erf_inv(u_normal)  # standard normal
        log_u = jnp.log(0.5 * (u_accept + 1.0))  # uniform on (0, 1)
        cx = c * x
        w = 3.0 * jnp.log1p(jnp.maximum(cx, -0.5))  # log v, v = (1 + c x)^3; only read where cx > -1
        # accept when log u < x^2 / 2 + d (1 - v + log v) = x^2 / 2 - d (expm1(w) - w)
        return (cx > -1.0) & (log_u < 0.5 * x * x - d * _expm1_minus_x(w)), w

    log_v = _rejection_loop(keys, shape, dtype, ~valid, propose)
    log_g = jnp.log(d) + log_v
    log_boost = jnp.log(u_boost) / jnp.where(boost, alpha, 1.0)
    log_g = jnp.where(boost, log_g + log_boost, log_g)
    return jnp.where(valid, log_g, jnp.nan)


def _poisson_log_pmf(k, rate, log_rate):
    """Loader's log-pmf for integer ``k >= 0`` and ``rate > 0`` (no cancellation for large ``rate``)."""
    k0 = k == 0
    km = jnp.where(k0, 1.0, k)
    delta = km - rate
    dev = bd0_from_delta(km, delta, delta / (km + rate), jnp.log(km) - log_rate)
    lp = -stirlerr_count(km) - 0.5 * jnp.log(2.0 * jnp.pi * km) - dev
    return jnp.where(k0, -rate, lp)


def poisson_variates(keys, rate, u):
    """Poisson counts (as floats of ``rate``'s dtype) for ``rate >= 0``, elementwise; NaN for invalid rates.

    Arguments:
        keys: ``_MAX_ITERATIONS`` PRNG keys, one per rejection round (rates >= 10).
        rate: non-negative rates (an array of the output shape).
        u: uniforms on (0, 1], the output shape, for the inversion (rates < 10).
    """
    shape, dtype = rate.shape, rate.dtype
    valid = (rate >= 0) & (rate < jnp.inf)
    small = valid & (rate < _SMALL_RATE)
    large = valid & ~small

    # Inversion by sequential search: k = min{k : U <= F(k)}, with the pmf recurrence p(k) = p(k - 1) rate / k.
    rate_small = jnp.where(small, rate, 0.0)
    p0 = jnp.exp(-rate_small)
    cap = 60.0  # P(k >= 60 | rate < 10) < 1e-27; float rounding of F can leave U just above it, stop there

    def cond_small(state):
        k, _, cdf = state
        return jnp.any(small & (u > cdf) & (k < cap))

    def body_small(state):
        k, p, cdf = state
        go = small & (u > cdf) & (k < cap)
        k_next = k + 1.0
        p_next = p * rate_small / k_next
        return jnp.where(go, k_next, k), jnp.where(go, p_next, p), jnp.where(go, cdf + p_next, cdf)

    k_small, _, _ = lax.while_loop(cond_small, body_small, (jnp.zeros(shape, dtype), p0, p0))

    # PTRS for rate >= 10.
    rate_large = jnp.where(large, rate, _SMALL_RATE)
    log_rate = jnp.log(rate_large)
    b = 0.931 + 2.53 * jnp.sqrt(rate_large)
    a = -0.059 + 0.02483 * b
    log_inv_alpha = jnp.log(1.1239 + 1.1328 / (b - 3.4))
    v_r = 0.9277 - 3.6224 / (b - 2.0)

    def propose(u_sym, v_sym):
        u = 0.5 * u_sym  # uniform on (-1/2, 1/2)
        v = 0.5 * (v_sym + 1.0)  # uniform on (0, 1)
        us = 0.5 - jnp.abs(u)
        k = jnp.floor((2.0 * a / us + b) * u + rate_large + 0.43)
        quick = (us >= 0.07) & (v <= v_r)
        reject = (k < 0) | ((us < 0.013) & (v > us))
        log_lhs = jnp.log(v) + log_inv_alpha - jnp.log(a / (us * us) + b)
        return quick | (~reject & (log_lhs <= _poisson_log_pmf(jnp.maximum(k, 0.0), rate_large, log_rate))), k

    k_large = _rejection_loop(keys, shape, dtype, ~large, propose)
    return jnp.where(valid, jnp.where(small, k_small, k_large), jnp.nan)


def nb_variates(key, mu, theta, zero_prob=None):
    """Negative binomial (gamma-Poisson) counts, optionally zero-inflated, as floats of the parameters' dtype.

    One key split and two batched draws outside the loops: every generator call costs ~0.5 s of XLA compile time
    on CPU, which dominated this sampler's first call.

    Arguments:
        key: a PRNG key.
        mu: means ``>= 0``, the output shape.
        theta: inverse dispersions ``> 0``, the output shape.
        zero_prob: optional probabilities of an extra zero, the output shape.
    """
    shape, dtype = mu.shape, mu.dtype
    keys = jax.random.split(key, 2 * _MAX_ITERATIONS + 1)
    n_uniform = 2 if zero_prob is None else 3
    u = 1.0 - jax.random.uniform(keys[-1], (n_uniform, *shape), dtype)  # on (0, 1]
    log_gamma = log_gamma_variates(keys[:_MAX_ITERATIONS], theta, u[0])
    rate = jnp.exp(jnp.log(mu) - jnp.log(theta) + log_gamma)
    counts = poisson_variates(keys[_MAX_ITERATIONS:-1], rate, u[1])
    if zero_prob is not None:
        counts = jnp.where(u[2] <= zero_prob, 0.0, counts)
    return counts


def _sample_shape(shape, *params) -> tuple[int, ...]:
    return (
        jnp.broadcast_shapes(*(jnp.shape(p) for p in params))
        if shape is None
        else tuple(int(n) for n in shape)
    )


def sample_nb(
    key: PRNGKeyArray, mu: ArrayLike, theta: ArrayLike, shape=None, *, validate_args: bool = True
) -> Array:
    """Draw negative binomial counts as a gamma-Poisson mixture.

    ``lambda ~ Gamma(theta, rate = theta / mu)``, ``x ~ Poisson(lambda)``. The gamma draw is taken on the log scale
    (Marsaglia-Tsang) so that tiny ``theta`` (1e-4) does not underflow and huge ``theta`` (1e8, the Poisson limit)
    stays exact; the Poisson draw is inversion below rate 10 and Hormann's PTRS above (see
    ``genjax/_likelihood_sampling.py``); ``mu = 0`` gives 0. Counts above 2^24 are rounded to float32.

    Arguments:
        key: a PRNG key.
        mu: mean, ``>= 0``.
        theta: inverse dispersion, ``> 0``.
        shape: output shape (``jax.random`` convention: the parameters broadcast to it); default: the broadcast
            shape of ``mu`` and ``theta``.
        validate_args: check concrete parameters on the host (default).

    Returns:
        Counts as floats (float32, or float64 for float64 parameters) of ``shape``.

    Raises:
        ValueError: for concrete ``mu < 0`` or ``theta <= 0`` (or non-finite), naming the value and its index.
    """
    validate_args_if(validate_args, "sample_nb", mu=(mu, "mean"), theta=(theta, "positive"))
    shape = _sample_shape(shape, mu, theta)
    return _sample_nb_kernel(key, *as_float(float_dtype(mu, theta), mu, theta), shape)


@functools.partial(jax.jit, static_argnums=3)
def _sample_nb_kernel(key, mu, theta, shape):
    dtype = float_dtype(mu, theta)
    mu, theta = as_float(dtype, mu, theta)
    return nb_variates(key, jnp.broadcast_to(mu, shape), jnp.broadcast_to(theta, shape))


def sample_zinb(
    key: PRNGKeyArray,
    mu: ArrayLike,
    theta: ArrayLike,
    zi_logits: ArrayLike,
    shape=None,
    *,
    validate_args: bool = True,
) -> Array:
    """Draw zero-inflated negative binomial counts: 0 with probability ``sigmoid(zi_logits)``, else NB.

    Arguments:
        key: a PRNG key.
        mu: NB mean, ``>= 0``.
        theta: NB inverse dispersion, ``> 0``.
        zi_logits: logits of the zero-inflation probability.
        shape: output shape (parameters broadcast to it); default: the broadcast shape of the parameters.
        validate_args: check concrete parameters on the host (default).

    Returns:
        Counts as floats of ``shape`` (float32, or float64 for float64 parameters).

    Raises:
        ValueError: for concrete invalid parameters, naming the value and its index.
    """
    validate_args_if(
        validate_args,
        "sample_zinb",
        mu=(mu, "mean"),
        theta=(theta, "positive"),
        zi_logits=(zi_logits, "real"),
    )
    shape = _sample_shape(shape, mu, theta, zi_logits)
    params = as_float(float_dtype(mu, theta, zi_logits), mu, theta, zi_logits)
    return _sample_zinb_kernel(key, *params, shape)


@functools.partial(jax.jit, static_argnums=4)
def _sample_zinb_kernel(key, mu, theta, zi_logits, shape):
    dtype = float_dtype(mu, theta, zi_logits)
    mu, theta, zi_logits = (jnp.broadcast_to(a, shape) for a in as_float(dtype, mu, theta, zi_logits))
    return nb_variates(key, mu, theta, zero_prob=jax.nn.sigmoid(zi_logits))


def carry_counts(key: PRNGKeyArray, x: ArrayLike, mu0: ArrayLike, mu1: ArrayLike,
                 theta: ArrayLike | None = None, *, validate_args: bool = True) -> tuple[Array, Array]:
    """Carry counts ``x`` drawn from ``NB(mu0, theta)`` (Poisson when ``theta`` is None) to ``NB(mu1, theta)``
    by the Gamma-Poisson coupling, elementwise; the counts move only as far as the change of mean requires.

    With ``r = mu1 / mu0``: where ``r <= 1``, binomial thinning ``x' ~ Binomial(x, r)``; where ``r > 1``,
    ``x' = x + Poisson((r - 1) lam)`` with ``lam ~ Gamma(theta + x, rate = theta / mu0 + 1)``, the posterior of the
    Poisson rate behind ``x`` (``lam = mu0`` for Poisson). Given the rate ``lam ~ Gamma(theta, theta / mu0)``,
    ``x ~ Poisson(lam)`` and both maps give ``x' ~ Poisson(r lam)``, so if ``x ~ NB(mu0, theta)`` then exactly
    ``x' ~ NB(mu1, theta)``; ``r = 1`` returns ``x`` itself. When ``x`` does not follow the model, what it has
    beyond the model (its cell's own noise) carries over.

    Arguments:
        key: a PRNG key.
        x: non-negative integer counts (as floats), any shape.
        mu0, mu1: means ``> 0``, broadcasting to ``x``'s shape.
        theta: NB inverse dispersion ``> 0`` broadcasting to ``x``, or None for Poisson.
        validate_args: check concrete arguments on the host (default).

    Returns:
        ``(counts, expected)``: the carried counts and their expectation given ``x`` (``r x`` where ``r <= 1``,
        ``x + (r - 1) E[lam | x]`` above), float arrays in ``x``'s shape.

    Raises:
        ValueError: for concrete ``x`` that are not non-negative integers, ``mu0 <= 0``, ``mu1 <= 0`` or
            ``theta <= 0`` (or non-finite), naming the value and its index.
    """
    named = {"x": (x, "counts"), "mu0": (mu0, "positive"), "mu1": (mu1, "positive")}
    if theta is not None:
        named["theta"] = (theta, "positive")
    validate_args_if(validate_args, "carry_counts", **named)
    x = jnp.asarray(x)
    dtype = jnp.result_type(x, mu0, mu1, jnp.float32)
    x = x.astype(dtype)
    mu0 = jnp.broadcast_to(jnp.asarray(mu0, dtype), x.shape)
    mu1 = jnp.broadcast_to(jnp.asarray(mu1, dtype), x.shape)
    ratio = mu1 / mu0
    up = ratio > 1.0
    k_bin, k_gam, k_poi, k_u = jax.random.split(key, 4)
    u = 1.0 - jax.random.uniform(k_u, (2, *x.shape), dtype)  # on (0, 1]
    if theta is None:
        lam = lam_mean = mu0
    else:
        theta = jnp.broadcast_to(jnp.asarray(theta, dtype), x.shape)
        rate = theta / mu0 + 1.0
        alpha = theta + x
        lam = jnp.exp(log_gamma_variates(jax.random.split(k_gam, _MAX_ITERATIONS), alpha, u[0])) / rate
        lam_mean = alpha / rate
    added = poisson_variates(jax.random.split(k_poi, _MAX_ITERATIONS), jnp.where(up, (ratio - 1.0) * lam, 0.0), u[1])
    thinned = jax.random.binomial(k_bin, x, jnp.clip(ratio, 0.0, 1.0)).astype(dtype)
    counts = jnp.where(up, x + added, thinned)
    expected = jnp.where(up, x + (ratio - 1.0) * lam_mean, ratio * x)
    return counts, expected
