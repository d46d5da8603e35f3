"""Special functions behind the count likelihoods, written for float32 accuracy (private building blocks).

The negative-binomial log-pmf is assembled from Loader's saddle-point pieces (C. Loader, "Fast and Accurate
Computation of Binomial Probabilities", 2000), the forms behind R's ``dbinom_raw`` / ``dnbinom_mu`` / ``dpois``:

- ``stirlerr(z) = lgamma(z + 1) - (z + 1/2) log z + z - log(2 pi) / 2``, the error of Stirling's formula;
- ``bd0(a, b) = a log(a / b) + b - a >= 0``, the deviance term, computed from ``delta = a - b`` and
  ``v = delta / (a + b)`` so that it stays accurate when ``a`` and ``b`` are close (``|v|`` small:
  ``bd0 = delta v + 2 a sum_j v^(2j+1) / (2j+1)``, Loader's series, no cancellation).

Everything here is an elementwise function of arrays, dtype-preserving, free of NaN/inf on both sides of every
``jnp.where`` for valid (positive) inputs, and cheap: the number of series terms is chosen from the dtype at trace
time (float32 needs far fewer than float64).

Building blocks a fused training loss can use directly:

- :func:`stirlerr`, :func:`stirlerr_count` (integer arguments, table + series);
- :func:`bd0_from_delta` (deviance from ``delta``, ``v`` and a log-ratio);
- :func:`log_pochhammer_ratio`: ``lgamma(x + theta) - lgamma(theta) - x log(theta)``, accurate for every
  ``theta`` including ``theta >> x`` where the plain lgamma difference loses everything in float32;
- :func:`delta_digamma_log`: ``digamma(x + theta) - digamma(theta) - log1p(x / theta)``, the same difference one
  derivative higher (used by the analytic gradients w.r.t. ``theta``);
- :func:`log1pmx_from_w`: ``log1p(u) - u`` from ``w = u / (2 + u)``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

__all__: list[str] = []  # private module: nothing re-exported

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# stirlerr(n) for n = 0..15 (n = 0 is a placeholder, never selected), from mpmath at 40 digits.
_STIRLERR_TABLE = (
    0.0,
    0.08106146679532725822,
    0.041340695955409294094,
    0.027677925684998339149,
    0.020790672103765093112,
    0.016644691189821192163,
    0.013876128823070747999,
    0.011896709945891770095,
    0.010411265261972096497,
    0.0092554621827127329177,
    0.0083305634333628712565,
    0.007573675487951840795,
    0.0069428401072095298657,
    0.0064089941880042070684,
    0.0059513701127588477356,
    0.005554733551962801371,
)

# Coefficients of the asymptotic series stirlerr(z) ~ sum_k c_k / z^(2k+1) (Bernoulli numbers B_2k / (2k(2k-1))).
_STIRLERR_SERIES = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)
# phi(z) = digamma(z) - log(z) ~ -1/(2z) - sum_k B_2k / (2k z^(2k)).
_PHI_SERIES = (1 / 12, -1 / 120, 1 / 252, -1 / 240, 1 / 132, -691 / 32760, 1 / 12)


def _is_f64(x) -> bool:
    return jnp.dtype(x.dtype) == jnp.float64


def _poly(t, coeffs):
    """Horner evaluation of sum_k coeffs[k] t^k."""
    acc = jnp.asarray(coeffs[-1], t.dtype)
    for c in reversed(coeffs[:-1]):
        acc = acc * t + c
    return acc


def _stirlerr_cut(dtype) -> float:
    # Above the cut the asymptotic series is used: float32 with 3 terms has error < 1e-10 at z = 10,
    # float64 with 6 terms < 1e-16 at z = 15.
    return 15.0 if jnp.dtype(dtype) == jnp.float64 else 10.0


def _stirlerr_asymptotic(z, n_terms: int):
    zi = 1.0 / z
    return zi * _poly(zi * zi, _STIRLERR_SERIES[:n_terms])


def stirlerr(z, log_z=None):
    """Stirling error ``lgamma(z + 1) - (z + 1/2) log z + z - log(2 pi)/2`` for real ``z > 0``.

    Arguments:
        z: positive reals, any shape, float32 or float64.
        log_z: optional ``log(z)`` when the caller has it already (saves one log).

    Returns:
        An array like ``z``. Accurate to ~1e-6 absolute in float32 (~1e-14 in float64); tends to 0 like
        ``1 / (12 z)`` for large ``z`` and to ``-log(z)/2 - log(2 pi)/2`` as ``z -> 0``.
    """
    f64 = _is_f64(z)
    cut = _stirlerr_cut(z.dtype)
    z_small = jnp.minimum(z, cut)
    log_small = jnp.log(z_small) if log_z is None else jnp.where(z < cut, log_z, math.log(cut))
    small = lax.lgamma(z_small + 1.0) - (z_small + 0.5) * log_small + z_small - HALF_LOG_2PI
    big = _stirlerr_asymptotic(jnp.maximum(z, cut), 6 if f64 else 3)
    return jnp.where(z < cut, small, big)


def stirlerr_count(n):
    """Stirling error for integer-valued ``n >= 1`` (counts stored as floats): exact table up to 15, series above.

    Arguments:
        n: integer-valued floats ``>= 1`` (float32 or float64). Values ``< 1`` return the placeholder 0.

    Returns:
        ``stirlerr(n)``, an array like ``n``, accurate to a few ulp.
    """
    table = jnp.asarray(_STIRLERR_TABLE, n.dtype)
    idx = jnp.clip(n, 0, 15).astype(jnp.int32)
    big = _stirlerr_asymptotic(jnp.maximum(n, 15.0), 5 if _is_f64(n) else 3)
    return jnp.where(n <= 15, table[idx], big)


def _atanh_tail(v, dtype):
    """``sum_{j>=0} v^(2j) / (2j + 3)`` truncated for ``|v| < V_CUT`` (relative error < 1e-8 / 1e-14)."""
    n_terms = 10 if jnp.dtype(dtype) == jnp.float64 else 5
    return _poly(v * v, tuple(1.0 / (2 * j + 3) for j in range(n_terms)))


V_CUT = 0.25
"""Where ``|v| < V_CUT`` the deviance series is used, elsewhere the closed form ``a log(a/b) - delta``."""


def bd0_from_delta(a, delta, v, log_ratio):
    """Loader's deviance ``bd0(a, b) = a log(a/b) + b - a`` from ``delta = a - b`` and ``v = delta / (a + b)``.

    Arguments:
        a: the first argument (``a >= 0``).
        delta: ``a - b`` computed accurately by the caller (typically in closed form from the model parameters).
        v: ``delta / (a + b)``, in ``(-1, 1)``.
        log_ratio: ``log(a / b)``; only read where ``|v| >= V_CUT`` (there it is well conditioned).

    Returns:
        ``bd0 >= 0`` (an array of the broadcast shape), relative error ~1e-6 in float32.
    """
    series = delta * v + 2.0 * a * v * v * v * _atanh_tail(v, v.dtype)
    closed = a * log_ratio - delta
    return jnp.where(jnp.abs(v) < V_CUT, series, closed)


def log1pmx_from_w(w, log1p_u, u):
    """``log1p(u) - u`` given ``w = u / (2 + u)`` (so ``1 + u = (1 + w) / (1 - w)``), accurate for small ``u``.

    Arguments:
        w: ``u / (2 + u)`` computed accurately by the caller, in ``(-1, 1)``.
        log1p_u: ``log1p(u)``, only read where ``|w| >= V_CUT``.
        u: ``u`` itself, only read where ``|w| >= V_CUT``.
    """
    series = -2.0 * w * w / (1.0 - w) + 2.0 * w * w * w * _atanh_tail(w, w.dtype)
    return jnp.where(jnp.abs(w) < V_CUT, series, log1p_u - u)


def log_pochhammer_ratio(x, theta):
    """``lgamma(x + theta) - lgamma(theta) - x log(theta)``, stable for all ``theta > 0`` and ``x >= 0``.

    The naive lgamma difference cancels catastrophically in float32 when ``theta >> x`` (the scVI formula's
    failure at large inverse dispersion). Rewritten with Stirling's formula:
    ``bd0(x + theta, theta) - log1p(x / theta) / 2 + stirlerr(x + theta) - stirlerr(theta)``.

    Arguments:
        x: non-negative reals (counts), broadcastable with ``theta``.
        theta: positive reals.

    Returns:
        The broadcast array; exactly 0 at ``x = 0``.
    """
    v = x / (x + 2.0 * theta)
    log_ratio = jnp.log1p(x / theta)
    dev = bd0_from_delta(x + theta, x, v, log_ratio)
    return dev - 0.5 * log_ratio + stirlerr(x + theta) - stirlerr(theta)


def _phi_asymptotic(z, n_terms):
    """``digamma(z) - log(z)`` for large ``z``."""
    zi = 1.0 / z
    z2 = zi * zi
    return -0.5 * zi - z2 * _poly(z2, _PHI_SERIES[:n_terms])


def delta_digamma_log(x, theta):
    """``digamma(x + theta) - digamma(theta) - log1p(x / theta)`` for ``x >= 0``, ``theta > 0``.

    This is ``d/dtheta log_pochhammer_ratio(x, theta) + x / theta`` and the part of ``d log NB / d theta`` that
    cancels in float32 for large ``theta`` (it behaves like ``x / (2 theta^2)``). For ``theta`` above the series
    cut it is computed from the exact differences ``theta^-2k - (x + theta)^-2k``; below it from ``digamma``.

    Arguments:
        x: non-negative reals, broadcastable with ``theta``.
        theta: positive reals.

    Returns:
        The broadcast array, exactly 0 at ``x = 0``; relative accuracy ~1e-5 in float32 (``digamma``-limited
        for small ``theta``).
    """
    f64 = _is_f64(theta)
    n_terms = 7 if f64 else 4
    cut = _stirlerr_cut(theta.dtype)
    # Large theta: sum of c_k (a^2k - b^2k), a = 1/theta, b = 1/(x + theta), every difference in closed form.
    tb = jnp.maximum(theta, cut)
    a = 1.0 / tb
    b = 1.0 / (x + tb)
    d1 = x * a * b  # a - b
    a2, b2 = a * a, b * b
    d2 = d1 * (a + b)  # a^2 - b^2
    # (a^2k - b^2k) / (a^2 - b^2) = sum_{i<k} a^(2i) b^(2(k-1-i)), accumulated as e_k.
    e, a_pow, b_pow = jnp.ones_like(a2), jnp.ones_like(a2), jnp.ones_like(a2)
    acc = jnp.zeros_like(a2)
    for k in range(n_terms):
        acc = acc + _PHI_SERIES[k] * e
        a_pow = a_pow * a2
        b_pow = b_pow * b2
        e = e * b2 + a_pow  # e_{k+1} = b^2 e_k + a^(2k)
    big = 0.5 * d1 + d2 * acc
    # Small theta: digamma, with the asymptotic form for phi(x + theta) once x + theta is past the cut.
    ts = jnp.minimum(theta, cut)
    z = x + ts
    zc = jnp.maximum(z, cut)
    zs = jnp.minimum(z, cut)
    phi_z = jnp.where(z < cut, lax.digamma(zs) - jnp.log(zs), _phi_asymptotic(zc, n_terms))
    phi_t = lax.digamma(ts) - jnp.log(ts)
    small = phi_z - phi_t
    return jnp.where(theta < cut, small, big)
