"""Negative-binomial log-pmf: speed and float32 accuracy of genjax vs numpyro vs the scVI lgamma formula.

One run prints one table:

- throughput in elements/s of the jitted float32 log-pmf over ``--n`` elements (default 1e7) with single-cell-like
  inputs (90% zero counts, nonzero counts log-uniform in [1, 1e3], mu log-uniform in [1e-3, 1e3], theta in
  [1e-2, 1e6]), best of ``--repeats`` timed calls after a warm-up call;
- the same for ``value_and_grad`` of the summed log-pmf w.r.t. the two parameters (what a training step does);
- accuracy on the grid the tests use (mu = 1e-6..1e6, theta = 1e-4..1e8, one point per decade; 12 counts in
  [0, 1e5]; 2028 points): the worst error ``|lp - exact| / (1 + |exact|)`` and the fraction of points where it
  exceeds 1e-4, against an mpmath reference at 50 digits evaluated at the exact float32 inputs.

Peers, measured in the same process: numpyro ``NegativeBinomial2(mean, concentration).log_prob`` and the scVI /
seed-notebook formula ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1) + theta (log theta - log(theta + mu))
+ x (log mu - log(theta + mu))``. ``genjax log`` is ``nb_log_prob_log`` fed ``log(mu)``, ``log(theta)`` (what
decoders produce); its accuracy is judged at ``exp`` of the float32 log-parameters.

usage: python benchmarks/likelihoods.py [--n 10000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import mpmath as mp  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.distributions import NegativeBinomial2  # noqa: E402

import genjax  # noqa: E402


def scvi_formula(x, mu, theta):
    log_theta_mu = jnp.log(theta + mu)
    return (
        jax.lax.lgamma(x + theta)
        - jax.lax.lgamma(theta)
        - jax.lax.lgamma(x + 1.0)
        + theta * (jnp.log(theta) - log_theta_mu)
        + x * (jnp.log(mu) - log_theta_mu)
    )


def numpyro_nb(x, mu, theta):
    return NegativeBinomial2(mu, theta).log_prob(x)


def genjax_nb(x, mu, theta):
    return genjax.nb_log_prob(x, mu, theta, validate_args=False)


def genjax_nb_log(x, log_mu, log_theta):
    return genjax.nb_log_prob_log(x, log_mu, log_theta, validate_args=False)


# name -> (function, whether it takes log-parameters)
IMPLEMENTATIONS = {
    "genjax nb_log_prob": (genjax_nb, False),
    "genjax nb_log_prob_log": (genjax_nb_log, True),
    "numpyro NegativeBinomial2": (numpyro_nb, False),
    "scVI lgamma formula": (scvi_formula, False),
}


def grid():
    """The accuracy grid of tests/test_likelihood_accuracy.py (float32 x, mu, theta, flattened)."""
    mu = 10.0 ** np.arange(-6, 7)
    theta = 10.0 ** np.arange(-4, 9)
    x = np.array([0, 1, 2, 3, 7, 10, 30, 100, 1e3, 1e4, 3e4, 1e5])
    m, t, c = np.meshgrid(mu, theta, x, indexing="ij")
    return tuple(a.ravel().astype(np.float32) for a in (c, m, t))


def nb_log_pmf_mpmath(x, mu, theta):
    """Exact log NB(x | mu, theta) at 50 digits (x, mu, theta: mpmath numbers or floats)."""
    x, mu, theta = mp.mpf(x), mp.mpf(mu), mp.mpf(theta)
    out = theta * mp.log(theta / (theta + mu))
    if x > 0:
        out += (
            mp.loggamma(x + theta) - mp.loggamma(theta) - mp.loggamma(x + 1) + x * mp.log(mu / (theta + mu))
        )
    return out


def accuracy(fn, uses_log):
    x, mu, theta = grid()
    with mp.workdps(50):
        if uses_log:
            lm, lt = np.log(mu).astype(np.float32), np.log(theta).astype(np.float32)
            args = (x, lm, lt)
            ref = [
                nb_log_pmf_mpmath(float(c), mp.exp(float(a)), mp.exp(float(b)))
                for c, a, b in zip(x, lm, lt, strict=True)
            ]
        else:
            args = (x, mu, theta)
            ref = [
                nb_log_pmf_mpmath(float(c), float(a), float(b)) for c, a, b in zip(x, mu, theta, strict=True)
            ]
    ref = np.array([float(r) for r in ref])
    out = np.asarray(jax.jit(fn)(*args), np.float64)
    err = np.abs(out - ref) / (1.0 + np.abs(ref))
    err[~np.isfinite(err)] = np.inf
    return err.max(), float(np.mean(err > 1e-4))


def inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.floor(10 ** rng.uniform(0, 3, n))
    x[rng.random(n) < 0.9] = 0
    mu = 10 ** rng.uniform(-3, 3, n)
    theta = 10 ** rng.uniform(-2, 6, n)
    return tuple(jnp.asarray(a, jnp.float32) for a in (x, mu, theta))


def best_time(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    x, mu, theta = inputs(args.n)
    log_args = (x, jnp.log(mu), jnp.log(theta))
    rows = []
    for name, (fn, uses_log) in IMPLEMENTATIONS.items():
        fargs = log_args if uses_log else (x, mu, theta)
        t_lp = best_time(jax.jit(fn), fargs, args.repeats)
        loss = jax.jit(jax.value_and_grad(lambda a, b, c, fn=fn: fn(c, a, b).sum(), argnums=(0, 1)))
        t_grad = best_time(lambda c, a, b, loss=loss: loss(a, b, c), fargs, args.repeats)
        worst, frac = accuracy(fn, uses_log)
        rows.append((name, args.n / t_lp, args.n / t_grad, worst, frac))

    ref_lp, ref_grad = rows[2][1], rows[2][2]  # numpyro
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}, n = {args.n:.0e}, float32, best of {args.repeats}"
    )
    header = (
        f"| {'implementation':26s} | {'log_prob elem/s':>15s} | {'vs numpyro':>10s} | {'value+grad elem/s':>17s} "
        f"| {'vs numpyro':>10s} | {'grid worst err':>14s} | {'grid miss 1e-4':>14s} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, lp, grad, worst, frac in rows:
        print(
            f"| {name:26s} | {lp:15.3e} | {lp / ref_lp:9.2f}x | {grad:17.3e} | {grad / ref_grad:9.2f}x "
            f"| {worst:14.3g} | {100 * frac:13.1f}% |"
        )


if __name__ == "__main__":
    main()
