r"""Disentanglement metrics: how well does each latent dimension capture one known generative factor?

``n`` cells, ``D`` latent dimensions, ``K`` factors; factor ``k`` takes ``L_k`` discrete values. Both metrics take a
latent ``(n, D)`` (an encoder mean, say) and the true factors of the same cells: an integer array ``(n, K)`` (or
``(n,)`` for one factor) or a DataFrame / Series of categorical, integer, boolean or string columns. Continuous
factors (library size, say) must be discretised first, e.g. ``pd.qcut(library, 10, labels=False)``.

**MIG**, the Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in Variational
Autoencoders", NeurIPS)::

    MIG = 1/K sum_k ( I(z_{j(k)}; v_k) - max_{j != j(k)} I(z_j; v_k) ) / H(v_k),     j(k) = argmax_j I(z_j; v_k)

1 when every factor is carried by exactly one latent dimension (and no other dimension knows anything about it);
0 when the two most informative dimensions carry the same information (two copies of a factor, or a rotation that
spreads every factor over several dimensions). Chen et al. estimate ``I(z_j; v_k)`` from the encoder distribution
``q(z|x)``; like Locatello et al. 2019 ("Challenging Common Assumptions in the Unsupervised Learning of
Disentangled Representations", ICML; their ``disentanglement_lib``) genjax takes a point latent and the plug-in
discrete estimate: each latent dimension is cut into ``n_bins`` equal-width bins between its minimum and maximum
(a histogram), and ::

    I(a; b) = sum_{a, b} p(a, b) log( p(a, b) / (p(a) p(b)) ),    H(v) = - sum_v p(v) log p(v)     (nats)

from the empirical joint frequencies. The plug-in MI is biased upwards by about ``(bins_a - 1)(bins_b - 1) / 2n``
nats, so with few cells an uninformative dimension still scores slightly above 0.

What MIG sees of a rotation (measured on :func:`genjax.datasets.factor_counts` factors with levels 5 each and 3-6,
2000 cells, latent = standardised factor values + N(0, 0.1^2) noise): the axis-aligned latent scores 0.98; a
Hadamard rotation (every dimension an equal mix of the four factors) 0.003-0.008; a Haar-random rotation of the
4-d latent anywhere from 0.03 to 0.51 (mean 0.21 over 50 rotations: a random rotation is often close to a signed
permutation in some plane); of the latent padded with 6 noise dimensions to 10-d, 0.01 to 0.19 (mean 0.08). So
"MIG <= 0.1 for a random rotation" holds for maximally mixing rotations and on average in 10-d, not for every draw.

What MIG sees of a VAE (``benchmarks/beta_vae.py``, benchmarks/README.md). Score the posterior means: posterior
samples add the encoder's noise to every dimension and score lower the wider the posterior (measured on a 4-d
count VAE of the default ``factor_counts`` set after 200 epochs: 0.35 from means, 0.32 from samples at beta 1;
0.38 and 0.27 at beta 4). A factor spread over two dimensions scores a gap near 0 however cleanly the pair carries
it, so a latent with more dimensions than factors scores low unless the KL switches the spare dimensions off (a
10-d VAE at KL weight 1 keeps all ten active and scores below its own random rotations). And the score is bounded
by what the counts reveal of each factor: there the true programme scores reach 0.81, not 1.

**DCI** (Eastwood & Williams 2018, "A Framework for the Quantitative Evaluation of Disentangled Representations",
ICLR): an importance matrix ``R`` (``D x K``, ``R_jk`` = how much a predictor of factor ``k`` relies on latent
``j``) and three scores::

    P_jk = R_jk / sum_k' R_jk'          D_j = 1 - H_K(P_j.)       disentanglement of latent j (entropy base K)
    rho_j = sum_k R_jk / sum_jk R_jk                              disentanglement = sum_j rho_j D_j
    P~_jk = R_jk / sum_j' R_j'k         C_k = 1 - H_D(P~_.k)      completeness = mean_k C_k (entropy base D)
    informativeness = mean_k (held-out accuracy of the predictor of factor k)

Choice of predictor, and its caveat. Eastwood & Williams fit Lasso regressions and random forests;
``disentanglement_lib`` fits gradient-boosted trees. genjax stays within numpy / scipy: per factor, a penalised
multinomial logistic regression on the standardised latents, and ``R_jk`` is the Euclidean norm of latent ``j``'s
class-centred coefficients, each column of ``R`` then scaled to sum to 1 (as tree importances do). The penalty is
L2 by default (fitted by L-BFGS: smooth, fast) or L1 (``penalty="l1"``, the paper's Lasso choice, fitted by FISTA).
The classifier is linear in ``z`` (its class log-odds are), so (i) a factor coded non-monotonically (read off
``|z_j|``, or around a ring) gets less importance and accuracy than a forest would give it; (ii) under L2 every
latent keeps a small weight of the order of the sampling noise, and correlated latents share weight where the
Lasso picks one, so with many uninformative (inactive) dimensions completeness and disentanglement come out lower
than the Lasso's: measured on 2638 cells, a 32-d latent with one dimension per factor (8 and 10 levels) and 30
pure-noise dimensions scores D / C = 0.52 / 0.40 with L2 (``alpha=1e-3``), 0.94 / 0.83 with L1 ``alpha=0.01``
and 1.0 / 1.0 with L1 ``alpha=0.03``. The L1 penalty also shrinks the classifier, lowering informativeness a
little (0.35 -> 0.33 there). Numbers are therefore comparable between models scored with the same settings, not
with published tables. Informativeness is reported as held-out accuracy (the paper's "prediction error" is
``1 - accuracy``), beside the majority-class rate of the same test cells for reference.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from .._checks import check_choice, check_int, check_range

__all__ = ["mig", "dci", "MIGDetails", "DCI", "Penalty"]

Penalty = Literal["l2", "l1"]  # the penalty of the DCI classifiers


class MIGDetails(NamedTuple):
    """What :func:`mig` computed (``details=True``)."""

    score: float
    """MIG, the mean of ``gap``."""
    mutual_information: np.ndarray
    """``(D, K)`` float64: ``I(z_j; v_k)`` in nats, latent dims by factors."""
    factor_entropy: np.ndarray
    """``(K,)`` float64: ``H(v_k)`` in nats."""
    gap: np.ndarray
    """``(K,)`` float64: ``(top MI - second MI) / H(v_k)`` per factor."""
    top_latent: np.ndarray
    """``(K,)`` int: ``argmax_j I(z_j; v_k)``, the latent dim that carries each factor."""
    factor_names: list
    """The ``K`` factor names (DataFrame columns, or ``factor_0``, ...)."""


class DCI(NamedTuple):
    """Eastwood & Williams DCI scores (:func:`dci`); all in ``[0, 1]``, higher is better."""

    disentanglement: float
    """``sum_j rho_j (1 - H_K(P_j.))``; NaN with one factor, where it is undefined."""
    completeness: float
    """``mean_k (1 - H_D(P~_.k))``."""
    informativeness: float
    """Mean held-out accuracy over factors (NaN from :meth:`from_importance`)."""
    importance: np.ndarray
    """``(D, K)`` float64 ``R``; from :func:`dci` each column sums to 1 (all 0 if no latent predicts the factor)."""
    per_latent_disentanglement: np.ndarray
    """``(D,)`` ``D_j`` (1 for a latent of zero importance, which has zero weight ``rho_j``)."""
    per_factor_completeness: np.ndarray
    """``(K,)`` ``C_k`` (0 for a factor of zero total importance)."""
    per_factor_accuracy: np.ndarray
    """``(K,)`` held-out accuracy of each factor's classifier."""
    per_factor_chance: np.ndarray
    """``(K,)`` majority-class rate among the held-out cells (the accuracy of always guessing it)."""
    factor_names: list
    """The ``K`` factor names."""

    @classmethod
    def from_importance(cls, importance, factor_names=None) -> DCI:
        """Disentanglement and completeness of a given importance matrix (no fitting; informativeness NaN).

        Arguments:
            importance: ``(D, K)`` non-negative array, ``D >= 2`` latents, ``K >= 1`` factors. Used as given
                (no column scaling), so ``R`` from another predictor can be scored the same way.
            factor_names: ``K`` names (default ``factor_0``, ...).

        Raises:
            ValueError: not 2-D, ``D < 2``, negative or non-finite entries.
        """
        r = np.asarray(importance, dtype=np.float64)
        if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] < 1:
            raise ValueError(f"importance must be a (latent dims >= 2, factors >= 1) matrix; got shape {r.shape}")
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            bad = np.argwhere(~np.isfinite(r) | (r < 0))[0]
            raise ValueError(f"importance must be finite and >= 0; got {float(r[tuple(bad)])!r} at latent {bad[0]}, "
                             f"factor {bad[1]}")
        d, k = r.shape
        names = list(factor_names) if factor_names is not None else [f"factor_{i}" for i in range(k)]
        row = r.sum(axis=1)
        per_latent = 1.0 - _entropy(_normalise(r), k) if k > 1 else np.full(d, np.nan)
        total = row.sum()
        disentanglement = float(np.sum(row / total * per_latent)) if total > 0 and k > 1 else math.nan
        col = r.sum(axis=0)
        per_factor = np.where(col > 0, 1.0 - _entropy(_normalise(r.T), d), 0.0)
        nan = np.full(k, np.nan)
        return cls(disentanglement, float(per_factor.mean()), math.nan, r, per_latent, per_factor, nan, nan, names)


def _normalise(r: np.ndarray) -> np.ndarray:
    """Rows of ``r`` scaled to sum to 1 (rows of zeros stay zero)."""
    s = r.sum(axis=1, keepdims=True)
    return np.divide(r, s, out=np.zeros_like(r), where=s > 0)


def _entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of ``p`` in base ``base`` (``0 log 0 = 0``)."""
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(axis=1) / math.log(base)


def _check_latent(latent) -> np.ndarray:
    z = np.asarray(latent, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"latent must be a (cells, latent dims >= 2) array; got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        cell, dim = np.argwhere(~np.isfinite(z))[0]
        raise ValueError(f"latent must be finite; got {float(z[cell, dim])!r} at cell {cell}, dim {dim}")
    return z


def _factor_codes(factors, n_cells: int) -> tuple[np.ndarray, list]:
    """``(codes (n, K) int64 in 0..L_k-1, names)`` from an integer array or a DataFrame / Series."""
    if isinstance(factors, pd.Series):
        factors = factors.to_frame(name=factors.name if factors.name is not None else "factor_0")
    if isinstance(factors, pd.DataFrame):
        columns = [(str(name), factors[name]) for name in factors.columns]
        n = len(factors)
    else:
        arr = np.asarray(factors)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"factors must be a (cells, factors) array or a DataFrame; got shape {arr.shape}")
        columns = [(f"factor_{k}", arr[:, k]) for k in range(arr.shape[1])]
        n = arr.shape[0]
    if n != n_cells:
        raise ValueError(f"factors has {n} rows but latent has {n_cells} cells; they must be the same cells")
    if not columns:
        raise ValueError("factors has no columns; give at least one factor")
    codes = np.empty((n_cells, len(columns)), dtype=np.int64)
    for k, (name, col) in enumerate(columns):
        values = col.reset_index(drop=True) if isinstance(col, pd.Series) else pd.Series(col)
        missing = np.flatnonzero(pd.isna(values).to_numpy())
        if missing.size:
            raise ValueError(f"factor {name!r} has a missing value (NaN / None) at cell {missing[0]}")
        if pd.api.types.is_float_dtype(values.dtype):
            fractional = np.flatnonzero(np.mod(values.to_numpy(), 1.0) != 0.0)
            if fractional.size:
                raise ValueError(f"factor {name!r} has a non-integer value {float(values.iloc[fractional[0]])!r} at cell "
                                 f"{fractional[0]}; discretise a continuous factor first, e.g. "
                                 "pd.qcut(x, 10, labels=False)")
        codes[:, k], uniques = pd.factorize(values, sort=True)
        if len(uniques) < 2:
            raise ValueError(f"factor {name!r} is constant (every cell has {uniques[0]!r}); its entropy is 0, so it "
                             "cannot be scored; drop it")
    return codes, [name for name, _ in columns]


def _bin(z: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width histogram bin of each entry, per column: ``(n, D)`` int in ``0..n_bins-1``."""
    lo, hi = z.min(axis=0), z.max(axis=0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(np.floor((z - lo) / width * n_bins), 0, n_bins - 1).astype(np.int64)


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in ``I(a; b)`` in nats of two integer code vectors."""
    na, nb = a.max() + 1, b.max() + 1
    joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb) / a.size
    pa, pb = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def mig(latent, factors, n_bins: int = 20, *, details: bool = False):
    """Mutual Information Gap (Chen et al. 2018) of a latent against known discrete factors.

    ``MIG = 1/K sum_k (I(z_top; v_k) - I(z_second; v_k)) / H(v_k)`` with each latent dimension discretised into
    ``n_bins`` equal-width bins and plug-in discrete mutual information (module docstring).

    Arguments:
        latent: ``(cells, D)`` float array, ``D >= 2`` (e.g. encoder means).
        factors: ``(cells, K)`` or ``(cells,)`` integer-valued array, or a DataFrame / Series of discrete columns
            (categorical, integer, boolean or string), the same cells in the same order.
        n_bins: equal-width bins per latent dimension (``>= 2``; 20 as in disentanglement_lib).
        details: also return the MI matrix, entropies and per-factor gaps.

    Returns:
        ``float`` MIG in ``[0, 1]`` (higher: each factor captured by one dimension alone), or with ``details`` a
        :class:`MIGDetails`.

    Raises:
        ValueError: latent not 2-D with at least two dimensions or not finite; factors with a different number of
            rows, a missing value, a non-integer float value (a continuous factor) or a single value; ``n_bins < 2``.
    """
    n_bins = check_int("n_bins", n_bins, low=2)
    z = _check_latent(latent)
    codes, names = _factor_codes(factors, z.shape[0])
    bins = _bin(z, n_bins)
    mi = np.array([[_mutual_information(bins[:, j], codes[:, k]) for k in range(codes.shape[1])]
                   for j in range(z.shape[1])])
    entropy = np.array([_mutual_information(c, c) for c in codes.T])
    top2 = -np.sort(-mi, axis=0)[:2]
    gap = (top2[0] - top2[1]) / entropy
    score = float(gap.mean())
    if details:
        return MIGDetails(score, mi, entropy, gap, np.argmax(mi, axis=0), names)
    return score


def _softmax_loss(x: np.ndarray, onehot: np.ndarray, w: np.ndarray, b: np.ndarray):
    """Mean cross-entropy of a linear softmax classifier and its gradients ``(loss, dW (d, C), db (C,))``."""
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    resid = (np.exp(logp) - onehot) / x.shape[0]
    return -np.sum(onehot * logp) / x.shape[0], x.T @ resid, resid.sum(axis=0)


def _fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, penalty: str, alpha: float,
                 max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Penalised multinomial logistic regression ``(W (d, C), b (C,))``: mean CE + ``alpha/2 |W|_2^2`` (L-BFGS) or
    + ``alpha |W|_1`` (FISTA with the step ``1/L``, ``L = lambda_max([x 1]^T [x 1]) / 2n`` bounding the CE
    Hessian); the intercept is not penalised."""
    d = x.shape[1]
    onehot = np.eye(n_classes)[y]
    if penalty == "l2":
        def objective(theta):
            w, b = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes:]
            loss, gw, gb = _softmax_loss(x, onehot, w, b)
            return loss + 0.5 * alpha * np.sum(w * w), np.concatenate([(gw + alpha * w).ravel(), gb])

        res = minimize(objective, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter})
        return res.x[: d * n_classes].reshape(d, n_classes), res.x[d * n_classes:]
    xb = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    step = 2.0 * x.shape[0] / np.linalg.eigvalsh(xb.T @ xb)[-1]
    w, b = np.zeros((d, n_classes)), np.zeros(n_classes)
    vw, vb, t = w, b, 1.0
    for _ in range(max_iter):
        _, gw, gb = _softmax_loss(x, onehot, vw, vb)
        u = vw - step * gw
        w_new = np.sign(u) * np.maximum(np.abs(u) - step * alpha, 0.0)
        b_new = vb - step * gb
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        vw = w_new + (t - 1.0) / t_new * (w_new - w)
        vb = b_new + (t - 1.0) / t_new * (b_new - b)
        done = max(np.abs(w_new - w).max(), np.abs(b_new - b).max()) < 1e-6
        w, b, t = w_new, b_new, t_new
        if done:
            break
    return w, b


def dci(latent, factors, *, penalty: Penalty = "l2", alpha: float = 1e-3, test_fraction: float = 0.2,
        max_iter: int = 1000, seed: int = 0) -> DCI:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018) against known factors.

    Per factor ``k`` a penalised multinomial logistic regression predicts ``v_k`` from the latent, standardised
    with the training cells' mean and standard deviation; ``R_jk`` is the norm of latent ``j``'s class-centred
    coefficients, each column scaled to sum to 1; the scores follow from ``R`` as in the module docstring
    (:meth:`DCI.from_importance`). A linear predictor stands in for the paper's Lasso / random forest: see the
    module docstring for what that changes.

    Arguments:
        latent: ``(cells, D)`` float array, ``D >= 2``.
        factors: ``(cells, K)`` or ``(cells,)`` integer-valued array, or a DataFrame / Series of discrete columns.
        penalty: ``"l2"`` (``alpha/2 |W|^2``, L-BFGS; smooth and fast, but every latent keeps a small weight) or
            ``"l1"`` (``alpha |W|_1``, FISTA; the paper's Lasso choice: unused latents get exactly 0, which matters
            for completeness when many dimensions are inactive).
        alpha: penalty strength per cell on standardised latents; keeps separable factors finite.
        test_fraction: share of cells (random, from ``seed``) held out to measure informativeness.
        max_iter: L-BFGS / FISTA iterations per factor.
        seed: seed of the train / test split.

    Returns:
        :class:`DCI`: ``disentanglement`` (NaN with a single factor, where it is undefined), ``completeness``,
        ``informativeness`` (mean held-out accuracy), the importance matrix and per-latent / per-factor parts.

    Raises:
        ValueError: as :func:`mig` for ``latent`` and ``factors``; ``penalty`` not ``"l2"`` / ``"l1"``; ``alpha <= 0``
            (without a penalty a separable factor's coefficients diverge); ``test_fraction`` outside ``(0, 1)`` or
            leaving no training or test cell.
    """
    penalty = check_choice("penalty", penalty, Penalty)
    alpha = check_range("alpha", alpha, low=0.0, low_open=True)
    test_fraction = check_range("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    max_iter = check_int("max_iter", max_iter, low=1)
    z = _check_latent(latent)
    codes, names = _factor_codes(factors, z.shape[0])
    n = z.shape[0]
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"test_fraction={test_fraction} of {n} cells leaves {n_test} test and {n - n_test} "
                         "training cells; both must be at least 1")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    mean, sd = z[train].mean(axis=0), z[train].std(axis=0)
    x = (z - mean) / np.where(sd > 0, sd, 1.0)
    importance = np.zeros((z.shape[1], codes.shape[1]))
    accuracy, chance = np.zeros(codes.shape[1]), np.zeros(codes.shape[1])
    for k, y in enumerate(codes.T):
        n_classes = int(y.max()) + 1
        w, b = _fit_softmax(x[train], y[train], n_classes, penalty, alpha, max_iter)
        w = w - w.mean(axis=1, keepdims=True)  # the softmax is unchanged by a shift of a latent's row
        norm = np.sqrt(np.sum(w * w, axis=1))
        importance[:, k] = norm / norm.sum() if norm.sum() > 0 else 0.0
        accuracy[k] = np.mean(np.argmax(x[test] @ w + b, axis=1) == y[test])
        chance[k] = np.bincount(y[test], minlength=n_classes).max() / n_test
    scores = DCI.from_importance(importance, names)
    return scores._replace(informativeness=float(accuracy.mean()), per_factor_accuracy=accuracy,
                           per_factor_chance=chance)
