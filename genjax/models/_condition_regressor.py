"""A learned mean predictor for :class:`~genjax.HybridModel`: an MLP on condition embeddings, trained here on the
training conditions' mean profiles (``predictor="regressor"``).

A condition is a tuple of categorical values, one per key (e.g. cell type, stimulation). Its predicted mean
log1p(CP10k) profile is

    f(c) = b + sum_j A_j[c_j] + W_out . MLP(concat_j E_j[c_j])          (genes,)

``b`` the gene means, ``A_j`` one gene-space effect per value of key ``j`` (the additive model, which composes an
unseen combination of seen values), ``E_j`` ``d``-dimensional value embeddings and the MLP (ReLU, ``n_hidden``
units, output layer initialised at zero) the interaction the additive part leaves out. Fitted by full-batch Adam
on the squared error over conditions and genes, with ridge penalties ``lam_add * sum ||A_j||^2 / G`` and
``lam_int * (||E||^2 + ||W||^2)``; ``lam_int`` (how much interaction the data support) is chosen among
:data:`INTERACTION_PENALTIES` by ``n_folds``-fold cross-validation over conditions, all fits of the grid and the
folds vmapped into one compiled training run.

The fold models are kept: CV+ (Barber, Candes, Ramdas & Tibshirani 2021, "Predictive inference with the
jackknife+", Ann. Statist.) gives the mean-level intervals of a new condition from each training condition's
out-of-fold residual and the prediction of the fold model that did not see it. With ``K`` folds over ``n``
conditions the guarantee is coverage >= ``1 - 2 alpha - min(2 (1 - 1/K) / (n/K + 1), (1 - K/n) / (K + 1))``
for exchangeable conditions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_int
from ..data import UnknownPerturbationError

__all__ = ["ConditionRegressor", "INTERACTION_PENALTIES"]

INTERACTION_PENALTIES = (1e-4, 1e-2, 1.0)
"""The grid of interaction penalties ``lam_int`` the cross-validation chooses from."""


def regressor_init(key, n_values: Sequence[int], n_genes: int, n_embed: int, n_hidden: int, bias) -> dict:
    """Parameters of the condition regressor (module docstring): a dict of float32 arrays."""
    keys = jax.random.split(key, len(n_values) + 2)
    d_in = n_embed * len(n_values)
    return {
        "bias": jnp.asarray(bias, jnp.float32),
        "additive": [jnp.zeros((v, n_genes), jnp.float32) for v in n_values],
        "embed": [0.3 * jax.random.normal(k, (v, n_embed), jnp.float32) for k, v in zip(keys, n_values, strict=False)],
        "w1": jax.random.normal(keys[-2], (d_in, n_hidden), jnp.float32) / np.sqrt(d_in),
        "b1": jnp.zeros((n_hidden,), jnp.float32),
        "w2": jax.random.normal(keys[-1], (n_hidden, n_hidden), jnp.float32) / np.sqrt(n_hidden),
        "b2": jnp.zeros((n_hidden,), jnp.float32),
        "w_out": jnp.zeros((n_hidden, n_genes), jnp.float32),
    }


def regressor_apply(params: dict, codes) -> jax.Array:
    """Predicted profiles float32 ``(n, genes)`` of conditions ``codes`` int32 ``(n, keys)``."""
    out = params["bias"] + sum(a[codes[:, j]] for j, a in enumerate(params["additive"]))
    h = jnp.concatenate([e[codes[:, j]] for j, e in enumerate(params["embed"])], axis=-1)
    h = jax.nn.relu(h @ params["w1"] + params["b1"])
    h = jax.nn.relu(h @ params["w2"] + params["b2"])
    return out + h @ params["w_out"]


def _loss(params, codes, y, weight, lam_add, lam_int):
    """Weighted mean squared error over conditions (``weight`` 0 leaves one out) and genes, plus the penalties."""
    err = ((regressor_apply(params, codes) - y) ** 2).mean(-1)
    fit = (weight * err).sum() / jnp.maximum(weight.sum(), 1.0)
    n_genes = y.shape[-1]
    add = sum((a**2).sum() for a in params["additive"]) / n_genes
    inter = sum((e**2).sum() for e in params["embed"]) + sum((params[k] ** 2).sum() for k in ("w1", "w2", "w_out"))
    return fit + lam_add * add + lam_int * inter


@dataclasses.dataclass
class ConditionRegressor:
    """Condition -> mean log1p(CP10k) profile regressor (module docstring).

    Arguments:
        n_embed: embedding width per key.
        n_hidden: MLP width.
        steps: Adam steps.
        learning_rate: Adam's learning rate.
        lam_add: ridge penalty of the additive effects.
        n_folds: cross-validation folds over conditions (at most the number of training conditions).
        penalties: the grid of interaction penalties ``lam_int``.
        seed: seed of the initialisation and the folds.

    Fitted state: ``vocab`` (values per key), ``params`` (the full fit at the chosen ``lam_int``), ``fold_params``
    (one per fold, stacked on a leading axis), ``folds`` int ``(conditions,)`` (each training condition's fold),
    ``lam_int``, ``cv_error`` (per grid value: mean out-of-fold squared error).
    """

    n_embed: int = 8
    n_hidden: int = 64
    steps: int = 1500
    learning_rate: float = 1e-2
    lam_add: float = 1e-3
    n_folds: int = 5
    penalties: tuple[float, ...] = INTERACTION_PENALTIES
    seed: int = 0

    def __post_init__(self):
        for name in ("n_embed", "n_hidden", "steps", "n_folds"):
            check_int(name, getattr(self, name))
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be at least 2; got {self.n_folds}")
        self.penalties = tuple(float(v) for v in self.penalties)
        if not self.penalties or min(self.penalties) < 0:
            raise ValueError(f"penalties must be a non-empty tuple of values >= 0; got {self.penalties}")
        self.params = None

    def config(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def encode(self, conditions: Sequence[tuple[str, ...]]) -> np.ndarray:
        """int32 ``(n, keys)`` codes of ``conditions``.

        Raises:
            UnknownPerturbationError: a value the regressor was not trained on (named, with its key position).
        """
        index = [{v: i for i, v in enumerate(vals)} for vals in self.vocab]
        out = np.zeros((len(conditions), len(self.vocab)), np.int32)
        for r, c in enumerate(conditions):
            for j, v in enumerate(c):
                if v not in index[j]:
                    raise UnknownPerturbationError(
                        f"the regressor predictor never saw value {v!r} of condition key {j} (of "
                        f"{len(self.vocab)}); known: {self.vocab[j][:8]}")
                out[r, j] = index[j][v]
        return out

    def fit(self, conditions: Sequence[tuple[str, ...]], profiles: np.ndarray) -> ConditionRegressor:
        """Fit on the training conditions' observed mean profiles.

        Arguments:
            conditions: ``n`` condition tuples (one value per key). profiles: float ``(n, genes)`` their means.

        Raises:
            ValueError: fewer than two conditions, shapes that disagree, non-finite profiles.
        """
        profiles = np.asarray(profiles, np.float32)
        n = len(conditions)
        if n < 2 or profiles.shape[0] != n or profiles.ndim != 2:
            raise ValueError(f"the regressor needs >= 2 conditions and profiles (conditions, genes); got {n} "
                             f"conditions and profiles of shape {profiles.shape}")
        if not np.isfinite(profiles).all():
            raise ValueError("the regressor's training profiles hold non-finite values")
        self.vocab = [sorted({c[j] for c in conditions}) for j in range(len(conditions[0]))]
        codes = jnp.asarray(self.encode(conditions))
        y = jnp.asarray(profiles)
        k = min(self.n_folds, n)
        rng = np.random.default_rng(self.seed)
        self.folds = rng.permutation(np.arange(n) % k)
        # one weight row per (penalty, fold or full fit): 0 leaves the fold's conditions out
        masks = np.stack([(self.folds != f).astype(np.float32) for f in range(k)] + [np.ones(n, np.float32)])
        grid = np.asarray(self.penalties, np.float32)
        weights = np.tile(masks, (len(grid), 1))
        lam = np.repeat(grid, len(masks))
        params = self._train(codes, y, weights, lam)
        pred = np.asarray(jax.vmap(regressor_apply, in_axes=(0, None))(params, codes))
        pred = pred.reshape(len(grid), k + 1, n, -1)
        out_of_fold = pred[:, self.folds, np.arange(n)]  # (grid, n, genes): fold model not trained on the row
        self.cv_error = ((out_of_fold - profiles[None]) ** 2).mean(axis=(1, 2))
        best = int(np.argmin(self.cv_error))
        self.lam_int = float(grid[best])
        pick = jax.tree.map(lambda a: np.asarray(a).reshape(len(grid), k + 1, *a.shape[1:])[best], params)
        self.fold_params = jax.tree.map(lambda a: a[:k], pick)
        self.params = jax.tree.map(lambda a: a[k], pick)
        self.n_genes = profiles.shape[1]
        return self

    def _train(self, codes, y, weights, lam):
        """Fit one parameter set per row of ``weights`` / ``lam`` (vmapped; one compilation)."""
        n_values = [len(v) for v in self.vocab]
        init0 = regressor_init(jax.random.key(self.seed), n_values, y.shape[1], self.n_embed, self.n_hidden,
                               np.zeros(y.shape[1]))
        opt = optax.adam(self.learning_rate)

        def train_one(w, lam_int):
            # the bias starts at the weighted gene means: a left-out condition touches nothing of its fold's fit
            init = {**init0, "bias": (w @ y) / jnp.maximum(w.sum(), 1.0)}
            def step(carry, _):
                p, s = carry
                g = jax.grad(_loss)(p, codes, y, w, self.lam_add, lam_int)
                u, s = opt.update(g, s, p)
                return (optax.apply_updates(p, u), s), None

            (p, _), _ = jax.lax.scan(step, (init, opt.init(init)), None, length=self.steps)
            return p

        return jax.jit(jax.vmap(train_one))(jnp.asarray(weights), jnp.asarray(lam))

    def predict(self, conditions: Sequence[tuple[str, ...]]) -> np.ndarray:
        """float64 ``(n, genes)`` predicted profiles (the full fit)."""
        return np.asarray(regressor_apply(self.params, jnp.asarray(self.encode(conditions))), np.float64)

    def cross_fit(self, conditions: Sequence[tuple[str, ...]], new: Sequence[tuple[str, ...]]):
        """CV+ ingredients: per training condition ``k`` its out-of-fold prediction ``(genes,)`` and the same fold
        model's predictions at ``new`` ``(len(new), genes)`` (None where ``k``'s fold left out a value of ``k``
        or of a new condition, so that fold model cannot predict it)."""
        codes_k = jnp.asarray(self.encode(conditions))
        codes_new = jnp.asarray(self.encode(new))
        folds = self.folds
        seen = self._seen_per_fold(conditions)
        at_k, at_new = [], []
        for i in range(len(conditions)):
            f = int(folds[i])
            p = jax.tree.map(lambda a, f=f: a[f], self.fold_params)
            ok = all(self._known(seen[f], c) for c in [conditions[i], *new])
            if not ok:
                at_k.append(None)
                at_new.append(None)
                continue
            at_k.append(np.asarray(regressor_apply(p, codes_k[i:i + 1]), np.float64)[0])
            at_new.append(np.asarray(regressor_apply(p, codes_new), np.float64))
        return at_k, at_new

    def _seen_per_fold(self, conditions):
        return [[{c[j] for c, fo in zip(conditions, self.folds, strict=True) if fo != f}
                 for j in range(len(self.vocab))] for f in range(int(self.folds.max()) + 1)]

    @staticmethod
    def _known(seen, condition) -> bool:
        return all(v in seen[j] for j, v in enumerate(condition))

    # -- saving -------------------------------------------------------------------------------------------------

    def state(self) -> tuple[dict, dict]:
        """``(metadata, arrays)`` for a saved model."""
        meta = {"config": {**self.config(), "penalties": list(self.penalties)}, "vocab": self.vocab, "lam_int": self.lam_int,
                "cv_error": [float(v) for v in self.cv_error], "n_genes": int(self.n_genes),
                "folds": [int(f) for f in self.folds]}
        return meta, {"params": jax.device_get(self.params), "fold_params": jax.device_get(self.fold_params)}

    @classmethod
    def from_state(cls, meta: dict, arrays) -> ConditionRegressor:
        """Rebuild from :meth:`state`'s output; ``arrays(stem, like)`` reads a saved pytree."""
        self = cls(**meta["config"])
        self.vocab = [list(v) for v in meta["vocab"]]
        self.lam_int = float(meta["lam_int"])
        self.cv_error = np.asarray(meta["cv_error"])
        self.n_genes = int(meta["n_genes"])
        self.folds = np.asarray(meta["folds"], np.int64)
        like = jax.eval_shape(lambda: regressor_init(jax.random.key(0), [len(v) for v in self.vocab], self.n_genes,
                                                     self.n_embed, self.n_hidden, jnp.zeros(self.n_genes)))
        like = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like)
        k = int(self.folds.max()) + 1
        saved = arrays("regressor", {"params": like,
                                     "fold_params": jax.tree.map(lambda a: np.zeros((k, *a.shape), a.dtype), like)})
        self.params = jax.tree.map(jnp.asarray, saved["params"])
        self.fold_params = jax.tree.map(jnp.asarray, saved["fold_params"])
        return self
