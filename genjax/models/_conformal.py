"""Intervals with stated guarantees for count predictions: integer intervals of a predictive distribution, and
conformal calibration where the exchangeable unit is the condition (or the cell, where cells are exchangeable).

* :func:`count_interval` / :func:`sample_interval`: the central integer interval ``[l, u]`` of an NB / Poisson
  forecast or of forecast samples, with the forecast's own mass inside it (at least ``level`` for the NB; counts
  are discrete, so the mass is usually above it).
* :func:`split_conformal` (mean level): residuals ``|y_k - ŷ_k|`` of ``K`` calibration *conditions* (not used to
  fit the predictor); the interval ``ŷ ± q`` with ``q`` the ``ceil((K + 1) level)``-th smallest residual per
  gene. If the calibration conditions and the new one are exchangeable, a gene's interval covers its new
  condition's value with probability ``>= level`` (marginally over conditions; Vovk et al. 2005; Lei et al.
  2018). With ``K`` conditions the smallest attainable miscoverage is ``1 / (K + 1)``: at ``level > K / (K + 1)``
  the interval is infinite.
* :func:`jackknife_plus` (mean level, no held-out calibration set): ``K`` leave-one-condition-out predictors give
  residuals ``R_k`` at their left-out condition and predictions ``ŷ_{-k}`` at the new one; the interval runs from
  the ``floor(alpha (K + 1))``-th smallest ``ŷ_{-k} - R_k`` to the ``ceil((1 - alpha)(K + 1))``-th smallest
  ``ŷ_{-k} + R_k``. Coverage ``>= 1 - 2 alpha`` for exchangeable conditions (Barber et al., Ann. Stat. 2021), in
  practice near ``1 - alpha``.
* :func:`conformalized_quantiles` (cell level): conformalised quantile regression (Romano, Patterson & Candes
  2019) of a model's per-cell lower / upper bounds, the correction estimated separately per expression bin so
  that low-count genes are not calibrated by high-count ones. Coverage ``>= level`` per bin holds when the
  calibration cells and the new cells are exchangeable (cells of the same conditions); for cells of a condition
  not among the calibration conditions it is a heuristic, and the mean-level methods above are the guarantee.

Quantiles are the conformal ones: the ``ceil((n + 1) level)``-th smallest of ``n`` scores (``inf`` when that
exceeds ``n``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..data import map_row_blocks

__all__ = ["CALIBRATED_LEVELS", "count_interval", "sample_interval", "split_conformal", "jackknife_plus", "conformalized_quantiles",
           "conformal_quantile"]


CALIBRATED_LEVELS = (0.5, 0.8, 0.9, 0.95)
"""Levels a hybrid model calibrates its cell-level intervals at by default."""


def _level(level) -> float:
    ok = isinstance(level, int | float | np.floating) and not isinstance(level, bool)
    if not ok or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    return float(level)


def conformal_quantile(scores, level: float, axis: int = 0) -> np.ndarray:
    """The ``ceil((n + 1) level)``-th smallest of ``n`` scores along ``axis`` (``inf`` where it exceeds ``n``):
    the finite-sample conformal quantile. NaN scores are not allowed."""
    level = _level(level)
    s = np.sort(np.asarray(scores, np.float64), axis=axis)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n = s.shape[axis]
    k = math.ceil((n + 1) * level)
    if k > n:
        return np.full(np.delete(s.shape, axis), np.inf) if s.ndim > 1 else np.float64(np.inf)
    return np.take(s, k - 1, axis=axis)


def count_interval(mu, theta=None, level: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The central integer interval of ``NB(mu, theta)`` (Poisson where ``theta`` is None) forecasts.

    ``l`` is the smallest ``k`` with ``F(k) >= (1 - level) / 2``, ``u`` the smallest with ``F(u) >= (1 + level) /
    2``; since ``F(l - 1) < (1 - level) / 2``, the mass ``F(u) - F(l - 1)`` inside is at least ``level``.

    Arguments:
        mu: expected counts (any shape); theta: inverse dispersion (broadcast with ``mu``; ``> 0``).
        level: nominal level in ``(0, 1)``.

    Returns:
        ``(lower, upper, mass)``: float64 arrays of ``mu``'s broadcast shape (integer-valued bounds).

    Raises:
        ValueError: ``level`` outside ``(0, 1)``, negative ``mu``, non-positive ``theta``.
    """
    level = _level(level)
    mu = np.asarray(mu, np.float64)
    if (mu < 0).any() or not np.isfinite(mu).all():
        raise ValueError("mu must be finite and >= 0")
    if theta is None:
        dist = stats.poisson(mu)
    else:
        theta = np.asarray(theta, np.float64)
        if (theta <= 0).any() or not np.isfinite(theta).all():
            raise ValueError("theta must be finite and > 0")
        dist = stats.nbinom(theta, theta / (theta + mu))
    lower = dist.ppf((1 - level) / 2)
    upper = dist.ppf((1 + level) / 2)
    mass = dist.cdf(upper) - np.where(lower > 0, dist.cdf(lower - 1), 0.0)
    return np.asarray(lower, np.float64), np.asarray(upper, np.float64), np.asarray(mass, np.float64)


def sample_interval(samples, level: float = 0.9, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The central interval of forecast samples along ``axis``: empirical ``(1 - level) / 2`` and ``(1 + level) /
    2`` quantiles (``method="inverted_cdf"``: sample values, so integers for count samples) and the samples' own
    share inside ``[lower, upper]`` (at least ``level``). Float samples keep their dtype (float32 counts are
    exact); the columns of a 2-d array are searched in blocks on a thread pool."""
    level = _level(level)
    s = np.asarray(samples)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    probs = [(1 - level) / 2, (1 + level) / 2]
    if s.ndim == 2:
        s = s if axis == 0 else s.T
        parts = map_row_blocks(lambda sl: _interval_block(s[:, sl], probs), s.shape[1], block=256)
        lower, upper, share = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return lower.astype(np.float64), upper.astype(np.float64), share
    lower, upper = np.quantile(s, probs, axis=axis, method="inverted_cdf")
    inside = (s >= np.expand_dims(lower, axis)) & (s <= np.expand_dims(upper, axis))
    return lower, upper, inside.mean(axis=axis)


def _interval_block(s: np.ndarray, probs: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lower, upper = np.quantile(s, probs, axis=0, method="inverted_cdf")
    return lower, upper, ((s >= lower) & (s <= upper)).mean(axis=0)


def split_conformal(cal_predicted, cal_observed, predicted, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Split-conformal mean-level intervals over conditions (module docstring).

    Arguments:
        cal_predicted, cal_observed: ``(K, genes)`` predicted and observed profiles (e.g. mean log1p, or
            pseudobulk) of ``K`` calibration conditions the predictor was not fitted on.
        predicted: ``(genes,)`` or ``(n, genes)`` predictions for new conditions.
        level: nominal coverage.

    Returns:
        ``(lower, upper)`` of ``predicted``'s shape; infinite where ``level > K / (K + 1)``.

    Raises:
        ValueError: shapes that do not match, fewer than one calibration condition, ``level`` outside ``(0, 1)``.
    """
    cp, co = np.asarray(cal_predicted, np.float64), np.asarray(cal_observed, np.float64)
    p = np.asarray(predicted, np.float64)
    if cp.ndim != 2 or cp.shape != co.shape or cp.shape[0] < 1 or p.shape[-1] != cp.shape[1]:
        raise ValueError(f"cal_predicted {cp.shape} and cal_observed {co.shape} must be (K >= 1, genes) and "
                         f"predicted {p.shape} end in genes")
    q = conformal_quantile(np.abs(co - cp), level, axis=0)
    return p - q, p + q


def jackknife_plus(loo_residuals, loo_predicted, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Jackknife+ mean-level intervals over conditions (module docstring).

    Arguments:
        loo_residuals: ``(K, genes)`` ``|y_k - ŷ_{-k}(k)|``: each training condition's residual under the
            predictor fitted without it.
        loo_predicted: ``(K, genes)`` ``ŷ_{-k}(new)``: those ``K`` predictors' predictions for the new condition.
        level: ``1 - alpha``.

    Returns:
        ``(lower, upper)``, float64 ``(genes,)`` (infinite where ``K`` is too small for ``alpha``).
    """
    level = _level(level)
    r, p = np.asarray(loo_residuals, np.float64), np.asarray(loo_predicted, np.float64)
    if r.ndim != 2 or r.shape != p.shape or r.shape[0] < 1:
        raise ValueError(f"loo_residuals {r.shape} and loo_predicted {p.shape} must both be (K >= 1, genes)")
    k = r.shape[0]
    alpha = 1.0 - level
    lo_rank = math.floor(alpha * (k + 1))
    hi_rank = math.ceil((1 - alpha) * (k + 1))
    low = np.sort(p - r, axis=0)
    high = np.sort(p + r, axis=0)
    lower = np.full(r.shape[1], -np.inf) if lo_rank < 1 else low[lo_rank - 1]
    upper = np.full(r.shape[1], np.inf) if hi_rank > k else high[hi_rank - 1]
    return lower, upper


def conformalized_quantiles(cal_lower, cal_upper, cal_observed, lower, upper, level: float = 0.9, *,
                            cal_bins=None, bins=None, integer: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Conformalised quantile bounds (CQR) per expression bin (module docstring for the guarantee).

    Scores ``E = max(l - y, y - u)`` of the calibration entries; per bin ``b`` the conformal quantile ``Q_b`` of
    its scores widens (or, when negative, narrows) every new bound of that bin: ``[l - Q_b, u + Q_b]``, rounded
    outward to integers (``integer``) and clipped at 0 below.

    Arguments:
        cal_lower, cal_upper, cal_observed: calibration bounds and observations (same shape, e.g. ``(cells,
            genes)``).
        lower, upper: new bounds to correct (any shape matching ``bins``).
        cal_bins, bins: integer bin of each calibration / new entry (e.g. the gene's expression bin broadcast
            over cells); None: one bin.

    Returns:
        ``(lower, upper)`` float64 of the new bounds' shape.

    Raises:
        ValueError: shapes that do not match, a new bin without calibration entries.
    """
    cl, cu, co = (np.asarray(a, np.float64) for a in (cal_lower, cal_upper, cal_observed))
    nl, nu = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    if cl.shape != cu.shape or cl.shape != co.shape or nl.shape != nu.shape:
        raise ValueError(f"calibration bounds / observations {cl.shape}, {cu.shape}, {co.shape} and new bounds "
                         f"{nl.shape}, {nu.shape} must match in pairs")
    cb = np.zeros(cl.shape, np.int64) if cal_bins is None else np.broadcast_to(np.asarray(cal_bins), cl.shape)
    nb = np.zeros(nl.shape, np.int64) if bins is None else np.broadcast_to(np.asarray(bins), nl.shape)
    scores = np.maximum(cl - co, co - cu)
    out_l, out_u = nl.copy(), nu.copy()
    for b in np.unique(nb):
        cal = scores[cb == b]
        if cal.size == 0:
            raise ValueError(f"bin {int(b)} has no calibration entries")
        q = conformal_quantile(cal, level)
        sel = nb == b
        out_l[sel] -= q
        out_u[sel] += q
    if integer:
        out_l, out_u = np.floor(out_l), np.ceil(out_u)
    return np.maximum(out_l, 0.0), out_u
