"""Calibration and proper scores of predictive distributions for counts.

A predictive distribution per gene (an NB, or samples from a model) is judged against held-out cells the way
discrete forecasts are judged (Czado, Gneiting & Held, Biometrics 2009; Gneiting & Raftery, JASA 2007):

* **randomised PIT** ``u = F(y - 1) + v (F(y) - F(y - 1))``, ``v ~ U(0, 1)``, ``F`` the predictive CDF: uniform on
  ``[0, 1]`` exactly when the forecast is calibrated, also for counts (a plain PIT of a discrete variable is not);
* **coverage** of the central ``L`` interval read off the PIT: a cell counts as covered when ``(1 - L) / 2 <= u <=
  (1 + L) / 2``, so the expected coverage of a calibrated forecast is exactly ``L`` even where no integer
  interval has mass ``L`` (:func:`coverage_table`: pooled, median over genes, the share of genes whose coverage
  lies in the binomial 95% band around ``L`` for their number of cells, by expression bin);
* the **reliability curve** (observed against nominal coverage over levels) and its calibration error;
* the **interval score** ``(u - l) + (2 / a)(l - y)_+ + (2 / a)(y - u)_+`` of a central ``1 - a`` interval;
* **CRPS** ``E|X - y| - E|X - X'| / 2``; for integer-valued forecasts it equals the ranked probability score
  with unit categories, ``sum_k (F(k) - 1{y <= k})^2`` (:func:`crps_nb` sums it exactly for an NB;
  :func:`crps_samples` estimates it from samples);
* the **energy score** ``E||X - y|| - E||X - X'|| / 2`` of whole profiles (:func:`energy_score`).

All scores are negatively oriented (lower is better). Everything here is numpy / scipy in float64: evaluation, not
training (``jax.scipy.special.betainc`` is not accurate enough for NB tails in float32).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["randomized_pit", "nb_cdf", "sample_cdf", "coverage_table", "reliability_curve", "interval_score",
           "crps_samples", "crps_nb", "energy_score", "DEFAULT_LEVELS"]

DEFAULT_LEVELS = (0.5, 0.8, 0.9, 0.95)
"""Central interval levels reported by default."""


def _counts(name: str, y) -> np.ndarray:
    y = np.asarray(y, np.float64)
    if not np.all(np.isfinite(y)) or (y < 0).any() or (y != np.round(y)).any():
        bad = np.argwhere(~np.isfinite(y) | (y < 0) | (y != np.round(y)))[0]
        raise ValueError(f"{name} must be non-negative integer counts; got {y[tuple(bad)]!r} at index "
                         f"{tuple(int(i) for i in bad)}")
    return y


def nb_cdf(k, mu, theta) -> np.ndarray:
    """``P(X <= k)`` of ``NB(mean mu, inverse dispersion theta)`` (float64, broadcast; 0 for ``k < 0``), by
    scipy's regularised incomplete beta (``p = theta / (theta + mu)`` successes-parameterisation)."""
    k, mu, theta = (np.asarray(a, np.float64) for a in (k, mu, theta))
    return np.where(k < 0, 0.0, stats.nbinom.cdf(k, theta, theta / (theta + mu)))


def sample_cdf(samples, y) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ``(F(y - 1), F(y))`` of predictive count samples at observed counts.

    Arguments:
        samples: ``(n_samples, genes)`` draws shared by every observed cell (a condition's predictive
            distribution) or ``(n_samples, cells, genes)`` per cell.
        y: ``(cells, genes)`` observed counts.

    Returns:
        Two float64 ``(cells, genes)`` arrays.
    """
    y = _counts("y", y)
    s = np.asarray(samples, np.float64)
    if s.ndim == 2:
        if s.shape[1] != y.shape[1]:
            raise ValueError(f"samples {s.shape} and y {y.shape} must have the same number of genes")
        s = np.sort(s, axis=0)
        below, at = np.empty_like(y), np.empty_like(y)
        for g in range(y.shape[1]):
            below[:, g] = np.searchsorted(s[:, g], y[:, g] - 1.0, side="right")
            at[:, g] = np.searchsorted(s[:, g], y[:, g], side="right")
        return below / len(s), at / len(s)
    if s.ndim != 3 or s.shape[1:] != y.shape:
        raise ValueError(f"samples must be (n_samples, genes) or (n_samples, {y.shape[0]}, {y.shape[1]}); got "
                         f"{s.shape}")
    return (s <= y[None] - 1.0).mean(axis=0), (s <= y[None]).mean(axis=0)


def randomized_pit(cdf_below, cdf_at, *, seed: int = 0) -> np.ndarray:
    """Randomised PIT ``F(y - 1) + v (F(y) - F(y - 1))`` with ``v ~ U(0, 1)`` (float64, the shape of the
    inputs): uniform on ``[0, 1]`` when the counts ``y`` follow the predictive ``F`` (Czado et al. 2009).

    Arguments:
        cdf_below, cdf_at: the predictive CDF at ``y - 1`` and ``y`` (:func:`nb_cdf`, :func:`sample_cdf`).
        seed: seed of ``v``.

    Raises:
        ValueError: shapes differ, or values outside ``[0, 1]`` or with ``F(y - 1) > F(y)``.
    """
    lo, hi = np.asarray(cdf_below, np.float64), np.asarray(cdf_at, np.float64)
    if lo.shape != hi.shape:
        raise ValueError(f"cdf_below {lo.shape} and cdf_at {hi.shape} must have one shape")
    if (lo < 0).any() or (hi > 1 + 1e-12).any() or (lo > hi + 1e-12).any():
        raise ValueError("the CDF values must satisfy 0 <= F(y - 1) <= F(y) <= 1")
    v = np.random.default_rng(seed).uniform(size=lo.shape)
    return lo + v * (hi - lo)


def _binomial_band(n: np.ndarray, level: float, band: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Central ``band`` range of the coverage proportion of ``n`` cells at true coverage ``level``."""
    lo = stats.binom.ppf((1 - band) / 2, n, level) / np.maximum(n, 1)
    hi = stats.binom.ppf((1 + band) / 2, n, level) / np.maximum(n, 1)
    return lo, hi


def coverage_table(pit, levels=DEFAULT_LEVELS, *, expression=None, n_bins: int = 3) -> pd.DataFrame:
    """Coverage of central predictive intervals, read off randomised PIT values.

    Arguments:
        pit: ``(cells, genes)`` randomised PIT values (:func:`randomized_pit`); NaN entries are left out.
        levels: nominal levels ``L`` in ``(0, 1)``.
        expression: optional ``(genes,)`` expression statistic (e.g. the observed mean count) to bin genes by,
            in ``n_bins`` quantile bins; the table then has one block per bin beside ``"all"``.

    Returns:
        DataFrame with columns ``bin``, ``level``, ``n_genes``, ``pooled`` (share of all PIT values in
        ``[(1 - L) / 2, (1 + L) / 2]``), ``median_gene`` (median over genes of their own coverage),
        ``share_in_band`` (share of genes whose coverage lies in the binomial 95% band around ``L`` for their
        number of cells) and ``mean_abs_error`` (mean over genes of ``|coverage - L|``).

    Raises:
        ValueError: ``pit`` not 2-d or outside ``[0, 1]``, a level outside ``(0, 1)``, ``expression`` of the
            wrong shape.
    """
    u = np.asarray(pit, np.float64)
    if u.ndim != 2:
        raise ValueError(f"pit must be (cells, genes); got shape {u.shape}")
    if (u[np.isfinite(u)] < 0).any() or (u[np.isfinite(u)] > 1).any():
        raise ValueError("pit values must lie in [0, 1]")
    levels = [float(v) for v in levels]
    for v in levels:
        if not 0.0 < v < 1.0:
            raise ValueError(f"levels must lie in (0, 1); got {v!r}")
    bins = {"all": np.arange(u.shape[1])}
    if expression is not None:
        e = np.asarray(expression, np.float64)
        if e.shape != (u.shape[1],):
            raise ValueError(f"expression must be (genes,) = ({u.shape[1]},); got {e.shape}")
        edges = np.quantile(e, np.linspace(0, 1, n_bins + 1))
        which = np.clip(np.searchsorted(edges, e, side="right") - 1, 0, n_bins - 1)
        for b in range(n_bins):
            bins[f"{edges[b]:.3g}-{edges[b + 1]:.3g}"] = np.flatnonzero(which == b)
    rows = []
    valid = np.isfinite(u)
    for name, genes in bins.items():
        for level in levels:
            lo, hi = (1 - level) / 2, (1 + level) / 2
            inside = (u[:, genes] >= lo) & (u[:, genes] <= hi) & valid[:, genes]
            n = valid[:, genes].sum(axis=0)
            keep = n > 0
            cov = inside.sum(axis=0)[keep] / n[keep]
            band_lo, band_hi = _binomial_band(n[keep], level)
            rows.append({"bin": name, "level": level, "n_genes": int(keep.sum()),
                         "pooled": float(inside.sum() / max(valid[:, genes].sum(), 1)),
                         "median_gene": float(np.median(cov)) if cov.size else np.nan,
                         "share_in_band": float(np.mean((cov >= band_lo) & (cov <= band_hi))) if cov.size else np.nan,
                         "mean_abs_error": float(np.mean(np.abs(cov - level))) if cov.size else np.nan})
    return pd.DataFrame(rows)


def reliability_curve(pit, levels=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Observed pooled coverage of central intervals against their nominal levels.

    Arguments:
        pit: randomised PIT values (any shape; NaN left out).
        levels: nominal levels (default 0.05, 0.10, ..., 0.95).

    Returns:
        ``(levels, observed, calibration_error)``: float64 arrays and the mean ``|observed - nominal|``.
    """
    u = np.asarray(pit, np.float64).ravel()
    u = u[np.isfinite(u)]
    levels = np.arange(0.05, 0.951, 0.05) if levels is None else np.asarray(levels, np.float64)
    observed = np.array([np.mean((u >= (1 - v) / 2) & (u <= (1 + v) / 2)) for v in levels])
    return levels, observed, float(np.mean(np.abs(observed - levels)))


def interval_score(y, lower, upper, alpha: float) -> np.ndarray:
    """Interval score of the central ``1 - alpha`` interval ``[lower, upper]`` (Gneiting & Raftery 2007, eq. 43):
    ``(upper - lower) + (2 / alpha)(lower - y)_+ + (2 / alpha)(y - upper)_+`` (float64, broadcast). Lower is
    better; it rewards narrow intervals and charges ``2 / alpha`` per unit of miss.

    Raises:
        ValueError: ``alpha`` outside ``(0, 1)`` or ``lower > upper`` anywhere.
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}")
    y, lo, hi = (np.asarray(a, np.float64) for a in (y, lower, upper))
    if (lo > hi).any():
        raise ValueError("lower must not exceed upper")
    return (hi - lo) + (2.0 / alpha) * np.maximum(lo - y, 0.0) + (2.0 / alpha) * np.maximum(y - hi, 0.0)


def crps_samples(y, samples) -> np.ndarray:
    """Sample CRPS ``mean_i |X_i - y| - (1 / 2m^2) sum_ij |X_i - X_j|`` (float64 ``(cells, genes)``).

    Arguments:
        y: ``(cells, genes)`` observations.
        samples: ``(m, genes)`` shared by all cells or ``(m, cells, genes)`` per cell.

    The pair term is computed from sorted samples, ``(1 / m^2) sum_i (2i - m - 1) x_(i)``, in ``O(m log m)``; for
    integer-valued samples this equals the ranked probability score of their empirical distribution.
    """
    y = np.asarray(y, np.float64)
    s = np.sort(np.asarray(samples, np.float64), axis=0)
    m = s.shape[0]
    weights = (2.0 * np.arange(1, m + 1) - m - 1).reshape((m,) + (1,) * (s.ndim - 1))
    spread = (weights * s).sum(axis=0) / m**2  # = E|X - X'| / 2
    if s.ndim == 2:
        if s.shape[1] != y.shape[-1]:
            raise ValueError(f"samples {s.shape} and y {y.shape} must have the same number of genes")
        # E|X - y| per cell and gene via the sorted samples and their prefix sums
        prefix = np.concatenate([np.zeros((1, s.shape[1])), np.cumsum(s, axis=0)])
        out = np.empty_like(y)
        for g in range(s.shape[1]):
            k = np.searchsorted(s[:, g], y[:, g], side="right")
            below = k * y[:, g] - prefix[k, g]
            above = (prefix[m, g] - prefix[k, g]) - (m - k) * y[:, g]
            out[:, g] = (below + above) / m
        return out - spread[None, :]
    if s.shape[1:] != y.shape:
        raise ValueError(f"samples must be (m, genes) or (m, {y.shape}); got {s.shape}")
    return np.abs(s - y[None]).mean(axis=0) - spread


def crps_nb(y, mu, theta, *, max_count: int | None = None) -> np.ndarray:
    """CRPS of ``NB(mu, theta)`` forecasts at counts ``y`` (float64, broadcast to ``y``):
    ``sum_{k >= 0} (F(k) - 1{y <= k})^2``, summed to ``max_count`` (default: beyond ``y`` and the 1 - 1e-10
    quantile of every forecast, so the truncation error is below 1e-10 times the remaining mass).

    Raises:
        ValueError: ``y`` not non-negative integer counts, ``mu < 0`` or ``theta <= 0``.
    """
    y = _counts("y", y)
    mu, theta = np.broadcast_to(np.asarray(mu, np.float64), y.shape), np.broadcast_to(np.asarray(theta, np.float64),
                                                                                      y.shape)
    if (mu < 0).any() or (theta <= 0).any():
        raise ValueError("mu must be >= 0 and theta > 0")
    p = theta / (theta + mu)
    top = int(max(np.max(y, initial=0), np.max(stats.nbinom.ppf(1 - 1e-10, theta, p), initial=0))) + 1
    top = top if max_count is None else int(max_count)
    total = np.zeros(y.shape)
    for k in range(top + 1):
        total += (stats.nbinom.cdf(k, theta, p) - (y <= k)) ** 2
    return total


def energy_score(y, samples) -> np.ndarray:
    """Energy score ``mean_i ||X_i - y|| - (1 / 2m^2) sum_ij ||X_i - X_j||`` of profile forecasts (Gneiting &
    Raftery 2007), one per observed profile.

    Arguments:
        y: ``(cells, genes)`` observed profiles (e.g. log1p-normalised cells, or pseudobulk profiles).
        samples: ``(m, genes)`` forecast profiles shared by every observation.

    Returns:
        float64 ``(cells,)``. Lower is better; the univariate case is the CRPS.
    """
    y = np.asarray(y, np.float64)
    s = np.asarray(samples, np.float64)
    if y.ndim != 2 or s.ndim != 2 or y.shape[1] != s.shape[1]:
        raise ValueError(f"y must be (cells, genes) and samples (m, genes); got {y.shape} and {s.shape}")

    def dist(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(d2, 0.0))

    spread = dist(s, s).sum() / (2.0 * len(s) ** 2)
    return dist(y, s).mean(axis=1) - spread
