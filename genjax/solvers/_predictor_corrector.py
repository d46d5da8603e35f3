"""The predictor-corrector SDE solver (Song et al. 2021, alg. 2/4) as a diffrax solver: a Langevin corrector
whose step size averages norms over the batch (the vmapped axis :data:`BATCH_AXIS`), then Euler-Maruyama."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["BATCH_AXIS", "PredictorCorrector"]

BATCH_AXIS = "genjax_batch"
"""Name of the vmapped batch axis of per-point solves (the predictor-corrector averages over it)."""


BATCH_AXIS = "genjax_batch"


class PredictorCorrector(diffrax.AbstractItoSolver):
    """Langevin corrector at ``s0`` followed by an Euler-Maruyama predictor to ``s1`` (Song et al. 2021, alg. 2/4).

    Corrector step ``y <- y + e score + sqrt(2 e) z`` with ``e = 2 (snr |z| / |score|)^2``, the norms averaged over
    the batch (the solve must be vmapped with ``axis_name=BATCH_AXIS``). The solver state is a
    PRNG key (from ``args``) split every step for the corrector noise.
    """

    score: Callable | None
    snr: float
    n_corrector: int = eqx.field(static=True)

    term_structure = diffrax.MultiTerm[tuple[diffrax.ODETerm, diffrax.AbstractTerm]]
    interpolation_cls = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args):
        return args

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        key, key_step = jax.random.split(solver_state)
        y = y0
        for i in range(self.n_corrector):
            score = self.score(t0, y)
            z = jax.random.normal(jax.random.fold_in(key_step, i), y.shape, y.dtype)
            # Song et al. average the norms over the batch (the vmapped axis): per-point norms make the step
            # explode near a mode in low dimension.
            z_norm = jax.lax.pmean(jnp.linalg.norm(z), BATCH_AXIS)
            score_norm = jax.lax.pmean(jnp.linalg.norm(score), BATCH_AXIS)
            eps = 2.0 * (self.snr * z_norm / jnp.maximum(score_norm, 1e-12)) ** 2
            y = y + eps * score + jnp.sqrt(2.0 * eps) * z
        y1 = y + terms.vf_prod(t0, y, args, terms.contr(t0, t1))
        return y1, None, dict(y0=y0, y1=y1), key, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
