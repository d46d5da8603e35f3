"""Special functions behind the count likelihoods, written for float32 accuracy.

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

import jax.numpy as jnp

__all__ = ["horner", "stirlerr", "stirlerr_count", "bd0_from_delta", "log1pmx_from_w", "log_pochhammer_ratio",
           "delta_digamma_log", "V_CUT"]

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


def horner(t, coeffs):
    """Horner evaluation of sum_k coeffs[k] t^k."""
    acc = jnp.asarray(coeffs[-1], t.dtype)
    for c in reversed(coeffs[:-1]):
        acc = acc * t + c
    return acc


def _cut(dtype) -> int:
    """Below the cut, arguments are shifted up by ``cut`` before the asymptotic series is used (float32: 6,
    series error < 1e-10; float64: 10, < 1e-16)."""
    return 10 if jnp.dtype(dtype) == jnp.float64 else 6


def _n_series(dtype) -> int:
    return 7 if jnp.dtype(dtype) == jnp.float64 else 4


def _stirlerr_asymptotic(z, n_terms: int):
    zi = 1.0 / z
    return zi * horner(zi * zi, _STIRLERR_SERIES[:n_terms])


def _rising_ratio_log(z, k: int):
    """``log((z + k)^k / prod_{j=1..k} (z + j))`` with one log (no overflow for ``z < k``)."""
    zk = z + k
    power = zk
    for _ in range(k - 1):
        power = power * zk
    prod = z + 1.0
    for j in range(2, k + 1):
        prod = prod * (z + j)
    return jnp.log(power / prod)


def stirlerr(z):
    """Stirling error ``lgamma(z + 1) - (z + 1/2) log z + z - log(2 pi)/2`` for real ``z > 0``, without lgamma.

    Above the cut ``k`` (6 in float32, 10 in float64): the asymptotic series in ``1/z``. Below it, the exact shift
    ``stirlerr(z) = stirlerr(z + k) + (z + 1/2) log1p(k / z) - k + log((z + k)^k / prod_{j=1..k} (z + j))``
    (from ``Gamma(z + k + 1) = Gamma(z + 1) prod (z + j)``), which costs two logs instead of an lgamma
    (XLA's lgamma is ~20 logs on CPU).

    Arguments:
        z: positive reals, any shape, float32 or float64.

    Returns:
        An array like ``z``: accurate to ~2e-6 absolute in float32 (~1e-14 in float64); ``~1 / (12 z)`` for large
        ``z`` and ``~ -log(z)/2 - log(2 pi)/2`` as ``z -> 0``.
    """
    k = _cut(z.dtype)
    n = _n_series(z.dtype)
    zs = jnp.minimum(z, float(k))
    small = _stirlerr_asymptotic(zs + k, n) + (zs + 0.5) * jnp.log1p(k / zs) - k + _rising_ratio_log(zs, k)
    big = _stirlerr_asymptotic(jnp.maximum(z, float(k)), n)
    return jnp.where(z < k, small, big)


def stirlerr_count(n):
    """Stirling error for integer-valued ``n >= 1`` (counts stored as floats).

    float32: the asymptotic series (6 terms, error < 5e-8 from ``n = 3``) with exact values at 1 and 2; float64:
    an exact table up to 15 and the series above.

    Arguments:
        n: integer-valued floats ``>= 1``. Values below 1 return an unspecified finite number.

    Returns:
        ``stirlerr(n)``, an array like ``n``.
    """
    if _is_f64(n):
        table = jnp.asarray(_STIRLERR_TABLE, n.dtype)
        idx = jnp.clip(n, 0, 15).astype(jnp.int32)
        big = _stirlerr_asymptotic(jnp.maximum(n, 15.0), 5)
        return jnp.where(n <= 15, table[idx], big)
    series = _stirlerr_asymptotic(jnp.maximum(n, 1.0), 6)
    return jnp.where(n < 2, _STIRLERR_TABLE[1], jnp.where(n < 3, _STIRLERR_TABLE[2], series))


def _atanh_tail(v, dtype):
    """``sum_{j>=0} v^(2j) / (2j + 3)`` truncated for ``|v| < V_CUT`` (relative error < 1e-8 / 1e-14)."""
    n_terms = 10 if jnp.dtype(dtype) == jnp.float64 else 5
    return horner(v * v, tuple(1.0 / (2 * j + 3) for j in range(n_terms)))


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
    return -0.5 * zi - z2 * horner(z2, _PHI_SERIES[:n_terms])


def _phi_shifted(z, k: int, n_terms: int):
    """``digamma(z) - log(z)`` for ``0 < z <= k`` via ``digamma(z) = digamma(z + k) - sum_{j<k} 1 / (z + j)``.

    The sum is accumulated as one fraction (a single division)."""
    num, den = jnp.ones_like(z), z
    for j in range(1, k):
        zj = z + j
        num, den = num * zj + den, den * zj
    return _phi_asymptotic(z + k, n_terms) + jnp.log1p(k / z) - num / den


def delta_digamma_log(x, theta):
    """``digamma(x + theta) - digamma(theta) - log1p(x / theta)`` for ``x >= 0``, ``theta > 0``.

    This is ``d/dtheta log_pochhammer_ratio(x, theta) + x / theta`` and the part of ``d log NB / d theta`` that
    cancels in float32 for large ``theta`` (it behaves like ``x / (2 theta^2)``). For ``theta`` above the cut it is
    computed from the exact differences ``theta^-2k - (x + theta)^-2k`` of the asymptotic series; below it from
    the shifted recurrence (no digamma call: XLA's digamma is ~40 logs on CPU).

    Arguments:
        x: non-negative reals, broadcastable with ``theta``.
        theta: positive reals.

    Returns:
        The broadcast array, exactly 0 at ``x = 0``; relative accuracy ~1e-6 in float32.
    """
    k = _cut(theta.dtype)
    n_terms = _n_series(theta.dtype)
    # Large theta: sum of c_k (a^2k - b^2k), a = 1/theta, b = 1/(x + theta), every difference in closed form.
    tb = jnp.maximum(theta, float(k))
    a = 1.0 / tb
    b = 1.0 / (x + tb)
    d1 = x * a * b  # a - b
    a2, b2 = a * a, b * b
    d2 = d1 * (a + b)  # a^2 - b^2
    # (a^2k - b^2k) / (a^2 - b^2) = sum_{i<k} a^(2i) b^(2(k-1-i)), accumulated as e_k.
    e, a_pow = jnp.ones_like(a2), jnp.ones_like(a2)
    acc = jnp.zeros_like(a2)
    for j in range(n_terms):
        acc = acc + _PHI_SERIES[j] * e
        a_pow = a_pow * a2
        e = e * b2 + a_pow  # e_{j+1} = b^2 e_j + a^(2j)
    big = 0.5 * d1 + d2 * acc
    # Small theta: phi(x + theta) - phi(theta), each shifted past the cut when below it.
    ts = jnp.minimum(theta, float(k))
    z = x + ts
    phi_z = jnp.where(
        z < k,
        _phi_shifted(jnp.minimum(z, float(k)), k, n_terms),
        _phi_asymptotic(jnp.maximum(z, float(k)), n_terms),
    )
    small = phi_z - _phi_shifted(ts, k, n_terms)
    return jnp.where(theta < k, small, big)
