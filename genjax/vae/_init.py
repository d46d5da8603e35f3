"""Initial parameters of a :class:`VAEModule`, drawn on the host with numpy (no XLA compilation).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Params
from ..data import Condition, CountBatch
from ._module import VAEModule

__all__ = ["vae_init", "dummy_batch"]


def dummy_batch(module: VAEModule, n: int = 2) -> CountBatch:
    """A :class:`~genjax.data.CountBatch` of ``n`` cells with the module's shapes (for ``init`` / ``eval_shape``)."""
    labels = jnp.zeros((n, len(module.n_categories)), jnp.int32) if module.n_categories else None
    covariates = jnp.zeros((n, module.n_continuous)) if module.n_continuous else None
    cond = None if labels is None and covariates is None else Condition(labels, covariates)
    return CountBatch(jnp.ones((n, module.n_genes)), jnp.zeros((n,)), cond)


def _truncated_normal(rng, shape, std):
    """N(0, std^2 / 0.8796^2) truncated to +-2 std-units, variance std^2 (flax's lecun_normal)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * (std / 0.87962566103423978)


def vae_init(module: VAEModule, seed: int = 0) -> Params:
    """Initial parameters of ``module``, drawn on the host with numpy (seeded), no XLA compilation.

    Distributions (those the module declares for ``module.init``): Dense kernels lecun-normal (truncated normal,
    variance ``1 / fan_in``), biases 0; condition embeddings N(0, 1 / fan_in) of their layer (as the one-hot
    linear layer they stand for); NB / ZINB log-dispersion N(0, 1) (scvi-tools), Gaussian log variance 0;
    conditional-prior parameters 0 (the prior starts at N(0, I)). ``jax.jit(module.init)`` gives the same
    distributions but costs seconds of compilation per model on CPU.

    Returns:
        The ``params`` pytree (float32 ``jax`` arrays).
    """
    abstract = jax.eval_shape(module.init, jax.random.key(0), dummy_batch(module))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf, tree):
        names = [getattr(p, "key", str(p)) for p in path]
        name = names[-1]
        shape = leaf.shape
        cov_at = next((i for i, n_ in enumerate(names) if n_.startswith("cov_")), None)
        if name == "bias" or names[0].startswith("prior_"):
            value = np.zeros(shape)
        elif cov_at is not None:  # covariate embeddings / weights: N(0, 1 / fan_in of their layer)
            parent = tree
            for n_ in names[:cov_at]:
                parent = parent[n_]
            cov = parent[names[cov_at]]
            layer = names[cov_at].split("_")[-1]
            fan_in = parent[f"dense_{layer}"]["kernel"].shape[0] + sum(
                v["embedding"].shape[0] for k, v in cov.items() if k.startswith("cat_"))
            fan_in += cov["cont"]["kernel"].shape[0] if "cont" in cov else 0
            value = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
        elif name == "kernel":
            value = _truncated_normal(rng, shape, 1.0 / math.sqrt(shape[0]))
        elif name == "log_disp":
            value = np.zeros(shape) if module.likelihood == "gaussian" else rng.normal(0.0, 1.0, shape)
        else:  # a parameter this function does not know: refuse rather than guess
            raise NotImplementedError(f"vae_init has no rule for parameter {'/'.join(names)}")
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(lambda p, x: fill(p, x, abstract), abstract)
