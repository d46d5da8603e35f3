"""The task baseline as the offset of a perturbation model, in the space the mean metrics are computed in.

A perturbation model that is right about most genes but wrong about a few can score below a simple baseline on
mean metrics; the field's baselines are hard to beat there (mean-delta on a held-out cell type, additive on
unseen doubles). Here the baseline's prediction is the offset and the model's own predicted change a correction
shrunk toward it, with the shrinkage chosen on training conditions:

    ŷ = (1 - a) ŷ_base + a ŷ_model,    a in [0, 1],

per gene in log1p(CP10k) space (the mean over cells of ``log1p(10^4 x / sum(x))``), where ``ŷ_base = s + δ``,
``s`` the source cells' mean and ``δ`` the baseline's change by the rule the model used:

* ``"carried"`` (a perturbation measured at other covariate values): mean-delta, the average over the other
  values ``c'`` of ``m(P, c') - m(ctrl, c')``;
* ``"composed"`` (a combination whose members were measured): additive, the sum over the members of their
  change at ``c`` (measured there, else carried).

``a`` is chosen per rule by least squares over the training conditions that rule can predict with their own
cells left out (:meth:`BaselineOffset.choose_weight`): ``a = 0`` is the baseline, ``a = 1`` the model alone. Where
the model is better for some basal states than for others (on Kang, monocytes against lymphocytes), the cases
are weighted by a Gaussian kernel in the basal latent states around the target's, ``a(c)``, with the bandwidth
(infinite: one ``a`` for all) chosen by leave-one-case-out error (:meth:`BaselineOffset.fit_weights`).

The predicted cells stay counts: :func:`match_log1p_mean` moves the model's predicted counts gene by gene (binomial
thinning down, Poisson increments up, with common random numbers so the mean is monotone in the ratio) until
their mean log1p(CP10k) is ``ŷ``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as _stats

from ..data import PerturbationSpec, map_row_blocks, normalize_log1p

__all__ = ["BaselineOffset", "match_log1p_mean", "mean_log1p", "poisson_quantile", "OFFSET_RULES"]

OFFSET_RULES = ("carried", "composed")
"""The response rules the baseline offset applies to (measured conditions and the control take none)."""

_UP_RATE_FLOOR = 0.05  # counts: a cell expecting nothing of a gene can still gain some when the gene goes up
_SOLVE_RANGE = 8.0  # log ratios searched: [-8, 8]
_SOLVE_STEPS = 14  # bisection steps: 16 / 2^14 ~ 0.001 in log ratio
_POISSON_EXACT_BELOW = 30.0  # rates at which the Poisson quantile is found by the pmf recurrence
_BINOMIAL_EXACT_BELOW = 64  # trial counts at which the binomial quantile is found by the pmf recurrence
_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, math.inf)  # times the median distance between basal states


@dataclasses.dataclass
class BaselineOffset:
    """Training means of log1p(CP10k) per condition, the baseline changes built on them and the chosen weights
    of the model's correction (module docstring).

    Fields:
        spec: the perturbation specification.
        keys: ``[(perturbation, covariate values)]`` of every training condition (controls included).
        means: float64 ``(len(keys), genes)`` their mean log1p(CP10k) profiles.
        weights: ``{"carried": a, "composed": a}`` over all cases; 1.0 (the model alone) where no training
            condition could choose it.
        n_cases: the number of training conditions each weight was chosen on.
        cases: per rule, float64 ``(n, 4)`` rows ``[covariate index, <m - b, o - b>, |m - b|^2, |o - b|^2]`` of
            the cases (b, m, o: baseline, model and observed mean profiles), the sufficient statistics of the
            weight's least squares.
        bandwidths: per rule, the kernel bandwidth of the local weight (``inf``: the global weight).
    """

    spec: PerturbationSpec
    keys: list[tuple[str, tuple[str, ...]]]
    means: np.ndarray
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(OFFSET_RULES, 1.0))
    n_cases: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(OFFSET_RULES, 0))
    cases: dict[str, np.ndarray] = dataclasses.field(
        default_factory=lambda: {r: np.zeros((0, 4)) for r in OFFSET_RULES})
    bandwidths: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(OFFSET_RULES, math.inf))

    def __post_init__(self):
        self._index = {k: i for i, k in enumerate(self.keys)}

    def _mean(self, p: str, cov: tuple) -> np.ndarray | None:
        i = self._index.get((p, tuple(cov)))
        return None if i is None else self.means[i]

    def observed(self, perturbation: str, cov: tuple) -> np.ndarray | None:
        """The training mean of ``(perturbation, cov)``, or None."""
        return self._mean(perturbation, cov)

    def delta(self, perturbation: str, cov: tuple) -> np.ndarray | None:
        """The measured change ``m(P, c) - m(ctrl, c)``, or None."""
        m, ctrl = self._mean(perturbation, cov), self._mean(self.spec.control, cov)
        return None if m is None or ctrl is None else m - ctrl

    def carried(self, perturbation: str, cov: tuple) -> np.ndarray | None:
        """Mean-delta: the average of the measured changes of ``perturbation`` at the other covariate values
        (None: measured at none)."""
        cov = tuple(cov)
        parts = [self.delta(p, c) for p, c in self.keys if p == perturbation and c != cov]
        parts = [d for d in parts if d is not None]
        return np.mean(parts, axis=0) if parts else None

    def composed(self, perturbation: str, cov: tuple) -> np.ndarray | None:
        """Additive: the sum of the members' changes at ``cov`` (measured there, else carried; None: a member
        measured nowhere)."""
        parts = []
        for m in self.spec.members(perturbation):
            d = self.delta(m, cov)
            d = self.carried(m, cov) if d is None else d
            if d is None:
                return None
            parts.append(d)
        return np.sum(parts, axis=0) if parts else None

    def baseline(self, perturbation: str, cov: tuple, rule: str) -> np.ndarray | None:
        """The baseline's change (float64 ``(genes,)``) of ``(perturbation, cov)`` for the model's ``rule``; None
        for rules without an offset or when the baseline cannot be formed."""
        if rule == "carried":
            return self.carried(perturbation, cov)
        if rule == "composed":
            return self.composed(perturbation, cov)
        return None

    @staticmethod
    def choose_weight(cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
        """The least-squares weight over ``cases`` of ``(baseline prediction, model prediction, observed)`` mean
        profiles: ``a = sum <m - b, o - b> / sum |m - b|^2`` clipped to ``[0, 1]``; 1.0 without cases (or when
        the model and the baseline agree everywhere)."""
        num = sum(float((m - b) @ (o - b)) for b, m, o in cases)
        den = sum(float((m - b) @ (m - b)) for b, m, _ in cases)
        if not cases or den <= 0.0:
            return 1.0
        return float(np.clip(num / den, 0.0, 1.0))

    def fit_weights(self, cases: dict[str, list], basal: np.ndarray) -> None:
        """Set :attr:`weights`, :attr:`cases` and :attr:`bandwidths` from ``{rule: [(covariate index, baseline,
        model, observed), ...]}`` and the basal latent states ``basal`` (float ``(covariate values, dim)``):
        per rule, the bandwidth of the local weight with the least leave-one-case-out squared error (each case's
        weight from the others, the global weight first so that ties keep it)."""
        for rule in OFFSET_RULES:
            rows = [(c, float((m - b) @ (o - b)), float((m - b) @ (m - b)), float((o - b) @ (o - b)))
                    for c, b, m, o in cases.get(rule, [])]
            stats = np.asarray(rows, np.float64).reshape(-1, 4)
            self.cases[rule] = stats
            self.n_cases[rule] = len(stats)
            self.weights[rule] = BaselineOffset.choose_weight([(b, m, o) for _, b, m, o in cases.get(rule, [])])
            covs = stats[:, 0].astype(int)
            dist = np.sqrt(((basal[covs][:, None] - basal[covs][None]) ** 2).sum(-1))
            off_diag = dist[~np.eye(len(covs), dtype=bool)]
            scale = float(np.median(off_diag)) if off_diag.size and np.median(off_diag) > 0 else 0.0
            best, best_err = math.inf, math.inf
            for factor in sorted(_BANDWIDTH_FACTORS, reverse=True) if scale > 0 else (math.inf,):
                h = math.inf if math.isinf(factor) else scale * factor
                err = 0.0
                for k in range(len(stats)):
                    a = _local_weight(np.delete(stats, k, 0), np.delete(dist[k], k), h)
                    err += stats[k, 3] - 2.0 * a * stats[k, 1] + a * a * stats[k, 2]
                if math.isinf(best_err) or err < best_err - 1e-12 * abs(best_err):
                    best, best_err = h, err
            self.bandwidths[rule] = best

    def weight(self, rule: str, c: int, basal: np.ndarray) -> float:
        """The weight ``a(c)`` of the model's correction for ``rule`` at the covariate index ``c`` (basal latent
        states ``basal`` as in :meth:`fit_weights`): the kernel-weighted least squares over the cases."""
        stats = self.cases[rule]
        if not len(stats):
            return self.weights[rule]
        dist = np.sqrt(((basal[stats[:, 0].astype(int)] - basal[c]) ** 2).sum(-1))
        return _local_weight(stats, dist, self.bandwidths[rule])

    def meta(self) -> dict:
        """JSON-ready fields (the means go to an array file)."""
        return {"keys": [[p, list(c)] for p, c in self.keys], "weights": dict(self.weights),
                "n_cases": dict(self.n_cases), "cases": {r: v.tolist() for r, v in self.cases.items()},
                "bandwidths": {r: None if math.isinf(h) else h for r, h in self.bandwidths.items()}}

    @classmethod
    def from_meta(cls, spec: PerturbationSpec, meta: dict, means: np.ndarray) -> BaselineOffset:
        """Inverse of :meth:`meta` with the means array."""
        keys = [(str(p), tuple(str(v) for v in c)) for p, c in meta["keys"]]
        means = np.asarray(means, np.float64)
        means = means.reshape(len(keys), -1) if keys else means.reshape(0, 0)
        return cls(spec, keys, means, {k: float(v) for k, v in meta["weights"].items()},
                   {k: int(v) for k, v in meta["n_cases"].items()},
                   {r: np.asarray(v, np.float64).reshape(-1, 4) for r, v in meta["cases"].items()},
                   {r: math.inf if h is None else float(h) for r, h in meta["bandwidths"].items()})


def _local_weight(stats: np.ndarray, dist: np.ndarray, bandwidth: float) -> float:
    """``clip(sum w num / sum w den, 0, 1)`` over case statistics ``stats`` (rows as
    :attr:`BaselineOffset.cases`) with Gaussian kernel weights of the distances ``dist`` (1.0 without cases)."""
    if not len(stats):
        return 1.0
    w = np.ones(len(stats)) if math.isinf(bandwidth) else np.exp(-(dist**2 - (dist**2).min()) / (2 * bandwidth**2))
    den = float(w @ stats[:, 2])
    return 1.0 if den <= 0.0 else float(np.clip(float(w @ stats[:, 1]) / den, 0.0, 1.0))


def poisson_quantile(u: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``min {k : P(Poisson(lam) <= k) >= u}`` elementwise (int64, the shape of ``u``): the inverse-CDF draw,
    non-decreasing in ``lam`` at fixed ``u``. Rates below 30 by the pmf recurrence over the entries still
    searching (fast for the small rates of single-cell counts), larger ones by scipy."""
    u = np.asarray(u, np.float64)
    lam = np.broadcast_to(np.asarray(lam, np.float64), u.shape)
    out = np.zeros(u.shape, np.int64)
    flat_u, flat_lam, flat_out = u.ravel(), lam.ravel(), out.reshape(-1)
    large = flat_lam >= _POISSON_EXACT_BELOW
    if large.any():
        flat_out[large] = _stats.poisson.ppf(flat_u[large], flat_lam[large]).astype(np.int64)
    idx = np.flatnonzero(~large)
    uu, ll = flat_u[idx], flat_lam[idx]
    p = np.exp(-ll)
    cdf = p.copy()
    k = 0
    while idx.size and k < 400:
        active = cdf < uu
        idx, uu, ll, p, cdf = idx[active], uu[active], ll[active], p[active], cdf[active]
        k += 1
        flat_out[idx] = k
        p = p * ll / k
        cdf = cdf + p
    return out


def binomial_quantile(u: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``min {k : P(Binomial(n, p) <= k) >= u}`` elementwise (int64, the shape of ``u``): the inverse-CDF draw,
    non-decreasing in ``p`` at fixed ``u`` and ``n``. Small ``n`` (< 64, with ``p <= 0.99``) by the pmf recurrence
    ``P(k + 1) = P(k) (n - k) / (k + 1) * p / (1 - p)`` over the entries still searching (single-cell counts are
    small, so this is several times faster than scipy's ``binom.ppf``), the others by scipy."""
    u = np.asarray(u, np.float64)
    n = np.broadcast_to(np.asarray(n, np.float64), u.shape).ravel()
    p = np.broadcast_to(np.asarray(p, np.float64), u.shape).ravel()
    out = np.zeros(u.size, np.int64)
    flat_u = u.ravel()
    exact = (n < _BINOMIAL_EXACT_BELOW) & (p <= 0.99)
    rest = np.flatnonzero(~exact)
    if rest.size:
        out[rest] = _stats.binom.ppf(flat_u[rest], n[rest], p[rest]).astype(np.int64)
    idx = np.flatnonzero(exact)
    uu, nn, pp = flat_u[idx], n[idx], p[idx]
    odds = pp / (1.0 - pp)
    pmf = (1.0 - pp) ** nn
    cdf = pmf.copy()
    k = 0
    while idx.size:
        # scipy's convention: a cdf within a relative 1e-10 of u counts as reaching it (rounding in the sum)
        active = (cdf < uu * (1.0 - 1e-10)) & (k < nn)
        idx, uu, nn, odds, pmf, cdf = idx[active], uu[active], nn[active], odds[active], pmf[active], cdf[active]
        k += 1
        out[idx] = k
        pmf = pmf * (nn - k + 1) / k * odds
        cdf = cdf + pmf
    return out.reshape(u.shape)


def _moved(x: np.ndarray, rate: np.ndarray, u: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Counts ``x`` (cells, genes) moved by the per-gene ratios ``exp(log_q)`` with uniforms ``u``."""
    q = np.exp(log_q)[None, :]
    out = x.copy()
    down = np.broadcast_to(q < 1.0, x.shape) & (x > 0)
    if down.any():
        out[down] = binomial_quantile(u[down], x[down], np.broadcast_to(q, x.shape)[down])
    up = np.broadcast_to(q > 1.0, x.shape)
    if up.any():
        lam = (np.broadcast_to(q, x.shape)[up] - 1.0) * (rate[up] + _UP_RATE_FLOOR)
        out[up] = x[up] + poisson_quantile(u[up], lam)
    return out


def match_log1p_mean(counts: np.ndarray, expected: np.ndarray, target: np.ndarray, *, seed: int = 0,
                     target_sum: float = 1e4, max_solve_cells: int = 512, passes: int = 2):
    """Move predicted counts gene by gene until their mean log1p(CP``target_sum``) is ``target``.

    Per gene ``g`` a ratio ``q_g`` moves each count ``x``: ``q <= 1`` keeps ``Binomial(x, q)`` (thinning),
    ``q > 1`` adds ``Poisson((q - 1)(mu + 0.05))`` with ``mu`` the cell's expected count (the increment of a
    cell whose rate is multiplied by ``q``). Draws are inverse-CDF at one uniform per entry, so each moved count
    is non-decreasing in ``q`` and so is the mean; ``log q_g`` is found by bisection in ``[-8, 8]`` on at most
    ``max_solve_cells`` cells (the rest follow the same ratios; the subsample's target is shifted by its own
    deviation from all cells, so the target of no change moves nothing), with each cell's library taken from
    the moved counts of the previous pass (``passes`` rounds).

    Arguments:
        counts: float ``(cells, genes)`` non-negative integer-valued counts (predicted cells of one condition).
        expected: float ``(cells, genes)`` their expected values (the rate of the increments).
        target: ``(genes,)`` mean log1p(CP10k) to reach. Targets outside what the range of ratios reaches end at
            its bound; targets no counts can meet together under one normalisation per cell (a log-space
            baseline's need not be: its CP10k need not sum to 10^4) are met up to a shift common to all genes.
        seed: seed of the uniforms and of the solving subsample.

    Returns:
        ``(moved counts, expected)``: float32 ``(cells, genes)`` each; ``expected`` becomes ``q mu`` (down) or
        ``mu + (q - 1)(mu + 0.05)`` (up).
    """
    x = np.asarray(counts, np.float64)
    mu = np.asarray(expected, np.float64)
    target = np.asarray(target, np.float64)
    if x.ndim != 2 or mu.shape != x.shape or target.shape != (x.shape[1],):
        raise ValueError(f"counts {x.shape}, expected {mu.shape} and target {target.shape} must be (cells, genes), "
                         "(cells, genes) and (genes,)")
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=x.shape)
    solve = np.sort(rng.choice(len(x), max_solve_cells, replace=False)) if len(x) > max_solve_cells \
        else np.arange(len(x))
    xs, mus, us = x[solve], mu[solve], u[solve]
    # the subsample's target: the full target less the subsample's deviation from all cells at no move
    target = target + (mean_log1p(xs, target_sum) - mean_log1p(x, target_sum))
    log_q = np.zeros(x.shape[1])
    moved = xs
    for _ in range(passes):
        lib = moved.sum(axis=1, keepdims=True)
        scale = np.where(lib > 0, target_sum / np.where(lib > 0, lib, 1.0), 0.0)
        lo, hi = np.full(x.shape[1], -_SOLVE_RANGE), np.full(x.shape[1], _SOLVE_RANGE)
        for _ in range(_SOLVE_STEPS):
            mid = 0.5 * (lo + hi)
            below = np.log1p(_moved(xs, mus, us, mid) * scale).mean(axis=0) < target
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        log_q = 0.5 * (lo + hi)
        moved = _moved(xs, mus, us, log_q)
    q = np.exp(log_q)[None, :]
    new_mu = np.where(q <= 1.0, q * mu, mu + (q - 1.0) * (mu + _UP_RATE_FLOOR))
    moved = map_row_blocks(lambda rows: _moved(x[rows], mu[rows], u[rows], log_q).astype(np.float32), len(x))
    return np.concatenate(moved), new_mu.astype(np.float32)


def mean_log1p(counts, target_sum: float = 1e4) -> np.ndarray:
    """float64 ``(genes,)`` mean over cells of log1p(CP``target_sum``)."""
    return normalize_log1p(counts, target_sum).mean(axis=0, dtype=np.float64)
