"""Conditional flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling", ICLR; Liu et al. 2023,
rectified flow; Tong et al. 2024, "Improving and generalizing flow-based generative models with minibatch optimal
transport", TMLR).

A probability path joins the data at ``t = 0`` to the prior ``N(0, I)`` at ``t = 1`` (the time convention of the
diffusion models in :mod:`genjax._sde`, so that time means noise level in the whole library):

    ``x_t = alpha(t) x + sigma(t) eps``,  ``eps ~ N(0, I)``,  with conditional velocity
    ``u_t = d x_t / dt = alpha'(t) x + sigma'(t) eps``.

A velocity network ``v(x_t, t, cond)`` regresses ``u_t`` (:func:`cfm_loss`); the minimiser is the marginal
velocity ``E[u_t | x_t, cond]``, whose ODE ``dx/dt = v`` carries ``N(0, I)`` at ``t = 1`` to the data at ``t = 0``
(:func:`genjax.sample_flow`, :func:`genjax.flow_log_likelihood`). Two paths:

=================  ==========================  ==================================  =========================
path               alpha(t)                    sigma(t)                            reference
=================  ==========================  ==================================  =========================
:class:`LinearPath`  ``1 - t``                 ``sigma_min + (1 - sigma_min) t``   Lipman et al. eq. 20-23
:class:`VPPath`      ``cos(pi t / 2)``         ``sin(pi t / 2)``                   Albergo & Vanden-Eijnden
                                                                                   2023 (trigonometric)
=================  ==========================  ==================================  =========================

The linear path is the "conditional OT" path (straight lines, constant speed) and, with ``sigma_min = 0``,
rectified flow; the variance-preserving path keeps ``alpha^2 + sigma^2 = 1`` like the VP diffusion, with finite
speeds at both ends. Optional minibatch optimal-transport coupling (:func:`ot_coupling`) pairs each data point with
a noise draw by an exact assignment within the batch, which straightens the learned paths (fewer solver steps for
the same error). Times can be drawn with the variance-reduced schemes of :func:`genjax.sample_times`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import nn as gnn
from ..diffusion._score import _TIME_SAMPLING, _split_batch, prepare_field_fit, sample_times
from ..diffusion._sde import _expand
from .._typing import Array, Float, Int, Params, PRNGKeyArray

__all__ = [
    "AbstractPath",
    "LinearPath",
    "VPPath",
    "VelocityNet",
    "VelocityField",
    "linear_assignment",
    "condition_groups",
    "ot_coupling",
    "cfm_loss",
    "make_flow_loss",
    "FlowFitResult",
    "fit_flow_model",
]

_LOG_2PI = math.log(2.0 * math.pi)
_COUPLINGS = ("independent", "ot")
_OT_METHODS = ("host", "auction")

VelocityNet = gnn.FieldNet
"""The velocity network: :class:`genjax.nn.FieldNet`, the same residual MLP with time and condition embeddings as
:data:`genjax.ScoreNet`. ``VelocityNet()(x, t, cond=None)``: ``(n, d), (n,) -> (n, d)``."""


# ---------------------------------------------------------------------------------------------------------------
# probability paths
# ---------------------------------------------------------------------------------------------------------------


class AbstractPath(eqx.Module):
    """A Gaussian probability path ``x_t = alpha(t) x + sigma(t) eps`` from the data (``t = 0``) to ``N(0, I)``
    (``t = 1``). Subclasses define ``alpha``, ``sigma`` and their time derivatives (elementwise in ``t``)."""

    @abc.abstractmethod
    def alpha(self, t: Array) -> Array:
        """Data coefficient, shape of ``t``."""

    @abc.abstractmethod
    def sigma(self, t: Array) -> Array:
        """Noise coefficient, shape of ``t``."""

    @abc.abstractmethod
    def d_alpha(self, t: Array) -> Array:
        """``d alpha / dt``, shape of ``t``."""

    @abc.abstractmethod
    def d_sigma(self, t: Array) -> Array:
        """``d sigma / dt``, shape of ``t``."""

    def interpolate(self, x: Array, eps: Array, t: Array) -> tuple[Array, Array]:
        """The point on the path and its conditional velocity.

        Arguments:
            x: data ``(n, d)``; eps: noise ``(n, d)``; t: times ``(n,)`` (or a scalar) in ``[0, 1]``.

        Returns:
            ``(x_t, u_t)``: ``alpha x + sigma eps`` and ``alpha' x + sigma' eps``, both ``(n, d)``.
        """
        a, s = _expand(self.alpha(t), x), _expand(self.sigma(t), x)
        da, ds = _expand(self.d_alpha(t), x), _expand(self.d_sigma(t), x)
        return a * x + s * eps, da * x + ds * eps

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        """Draw from the prior ``N(0, I)`` at ``t = 1``: float32 array of ``shape``."""
        return jax.random.normal(key, shape)

    def prior_log_prob(self, z: Array) -> Array:
        """``log N(z; 0, I)`` summed over the last axis: ``z: (..., d)`` -> ``(...)``."""
        z = jnp.asarray(z)
        return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * _LOG_2PI


class LinearPath(AbstractPath):
    """Straight-line path ``x_t = (1 - t) x + (sigma_min + (1 - sigma_min) t) eps`` (Lipman et al. 2023, the
    conditional-OT path, in this library's time direction; ``sigma_min = 0`` is rectified flow).

    Attributes:
        sigma_min: noise level left at the data end, in ``[0, 1)``: the model's ``t = 0`` marginal is the data
            convolved with ``N(0, sigma_min^2 I)``.
    """

    sigma_min: float = 0.0

    def __check_init__(self):
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"LinearPath: sigma_min must be in [0, 1); got {self.sigma_min}")

    def alpha(self, t):
        return 1.0 - jnp.asarray(t)

    def sigma(self, t):
        return self.sigma_min + (1.0 - self.sigma_min) * jnp.asarray(t)

    def d_alpha(self, t):
        return -jnp.ones_like(jnp.asarray(t, jnp.result_type(t, jnp.float32)))

    def d_sigma(self, t):
        return (1.0 - self.sigma_min) * jnp.ones_like(jnp.asarray(t, jnp.result_type(t, jnp.float32)))


class VPPath(AbstractPath):
    """Variance-preserving path ``x_t = cos(pi t / 2) x + sin(pi t / 2) eps`` (the trigonometric interpolant of
    Albergo & Vanden-Eijnden 2023; the cosine VP schedule without offset): ``alpha^2 + sigma^2 = 1``, exactly
    ``N(0, I)`` at ``t = 1`` and finite speed at both ends."""

    def alpha(self, t):
        return jnp.cos(0.5 * math.pi * jnp.asarray(t))

    def sigma(self, t):
        return jnp.sin(0.5 * math.pi * jnp.asarray(t))

    def d_alpha(self, t):
        return -0.5 * math.pi * jnp.sin(0.5 * math.pi * jnp.asarray(t))

    def d_sigma(self, t):
        return 0.5 * math.pi * jnp.cos(0.5 * math.pi * jnp.asarray(t))


# ---------------------------------------------------------------------------------------------------------------
# velocity field
# ---------------------------------------------------------------------------------------------------------------


class VelocityField(eqx.Module):
    """A trained network as a batched velocity field ``v(x, t, cond=None) -> (n, d)`` for the samplers.

    A pytree: ``params`` are traced leaves and ``apply_fn`` static, so jitted samplers called with new parameters
    (more training, a reloaded model) do not recompile.

    Arguments:
        apply_fn: ``apply_fn(params, x, t, cond) -> (n, d)``, e.g. ``VelocityNet(...).apply`` (hashable).
        params: network parameters.
    """

    apply_fn: Callable[..., Array] = eqx.field(static=True)
    params: Params

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        """Velocity ``dx/dt``: ``x: (n, d)``, ``t: (n,)`` (or scalar) -> ``(n, d)``."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
        return self.apply_fn(self.params, x, t, cond)


# ---------------------------------------------------------------------------------------------------------------
# minibatch optimal-transport coupling
# ---------------------------------------------------------------------------------------------------------------


def _auction_phase(benefit, prices, eps, max_iterations):
    """One epsilon phase of the Jacobi auction (Bertsekas 1988): every unassigned row bids for its best column
    ``j1`` with ``price_j1 + (w1 - w2) + eps`` (``w1``, ``w2``: its two best values ``benefit - price``); each
    column goes to its highest bidder, whose previous owner is unassigned again. Ends with an eps-complementary-
    slack matching (or after ``max_iterations`` rounds, possibly partial)."""
    n = benefit.shape[0]
    rows = jnp.arange(n)

    def cond_fn(state):
        row_to_col, _, _, it = state
        return jnp.any(row_to_col < 0) & (it < max_iterations)

    def body(state):
        row_to_col, col_to_row, prices, it = state
        values = benefit - prices[None, :]
        # best and second-best values by two max passes (lax.top_k sorts on CPU: 40x slower here)
        j1 = jnp.argmax(values, axis=1)
        w1 = jnp.take_along_axis(values, j1[:, None], axis=1)[:, 0]
        w2 = jnp.max(jnp.where(rows[None, :] == j1[:, None], -jnp.inf, values), axis=1)
        w2 = jnp.where(jnp.isfinite(w2), w2, w1 - 1.0)  # a row with a single allowed column: any finite raise
        active = row_to_col < 0
        bid = jnp.where(active, prices[j1] + (w1 - w2) + eps, -jnp.inf)
        best = jax.ops.segment_max(bid, j1, num_segments=n)
        winner = jax.ops.segment_min(jnp.where(active & (bid == best[j1]), rows, n), j1, num_segments=n)
        won = winner < n
        previous = jnp.where(won, col_to_row, -1)
        row_to_col = row_to_col.at[jnp.where(previous >= 0, previous, n)].set(-1, mode="drop")
        row_to_col = row_to_col.at[jnp.where(won, winner, n)].set(rows, mode="drop")
        col_to_row = jnp.where(won, winner, col_to_row)
        prices = jnp.where(won, best, prices)
        return row_to_col, col_to_row, prices, it + 1

    init = (jnp.full((n,), -1, jnp.int32), jnp.full((n,), -1, jnp.int32), prices, jnp.zeros((), jnp.int32))
    row_to_col, col_to_row, prices, _ = jax.lax.while_loop(cond_fn, body, init)
    return row_to_col, col_to_row, prices


def linear_assignment(
    cost: Float[Array, "n n"],
    *,
    groups: Int[Array, " n"] | None = None,
    eps: float = 1e-4,
    max_iterations: int | None = None,
) -> Int[Array, " n"]:
    """Minimum-cost perfect matching of rows to columns, inside JAX (jit / vmap), by the auction algorithm with
    epsilon scaling (Bertsekas 1988; Bertsekas & Castanon 1989).

    The cost is rescaled to ``[0, 1]`` (over allowed pairs) and auctioned with ``eps = 1/4, 1/20, ...`` down to
    ``eps``, keeping the prices between phases; the matching found has total rescaled cost within ``n eps`` of the
    optimum (exactly optimal when the optimum beats every other matching by more). Rows and columns are both
    ``n``; for an ``n x n`` problem each round costs ``O(n^2)``.

    Arguments:
        cost: ``(n, n)`` float costs (finite).
        groups: optional int ``(n,)``: row ``i`` may only be matched to a column ``j`` with ``groups[j] ==
            groups[i]`` (a block-diagonal problem; every group has as many rows as columns by construction).
        eps: final bidding increment, relative to the cost range.
        max_iterations: bound on bidding rounds per phase (default ``50 n``); rows still unassigned then are
            matched to the free columns of their group in index order, so the result is always a permutation.

    Returns:
        int32 ``(n,)``: ``perm`` with row ``i`` matched to column ``perm[i]`` (a permutation of ``0..n-1``).
        Non-finite costs give an arbitrary permutation (no error inside jit).
    """
    cost = jnp.asarray(cost)
    n = cost.shape[0]
    if cost.ndim != 2 or cost.shape[1] != n:
        raise ValueError(f"linear_assignment: cost must be square (n, n); got shape {cost.shape}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"linear_assignment: eps must be in (0, 1); got {eps}")
    if n == 1:
        return jnp.zeros((1,), jnp.int32)
    max_iterations = 50 * n if max_iterations is None else int(max_iterations)
    group_ids = jnp.zeros((n,), jnp.int32) if groups is None else jnp.asarray(groups, jnp.int32)
    allowed = group_ids[:, None] == group_ids[None, :]
    lo = jnp.min(jnp.where(allowed, cost, jnp.inf))
    hi = jnp.max(jnp.where(allowed, cost, -jnp.inf))
    scaled = (cost - lo) / jnp.maximum(hi - lo, jnp.finfo(cost.dtype).tiny)
    benefit = jnp.where(allowed, -scaled, -jnp.inf)
    schedule = [0.25 * 0.2**k for k in range(int(math.ceil(math.log(0.25 / eps) / math.log(5.0))))] + [eps]
    schedule = np.asarray([e for e in schedule if e >= eps], np.float32)

    def phase(prices, e):
        row_to_col, col_to_row, prices = _auction_phase(benefit, prices, e, max_iterations)
        return prices, (row_to_col, col_to_row)

    _, (row_to_col, col_to_row) = jax.lax.scan(phase, jnp.zeros((n,), benefit.dtype), jnp.asarray(schedule))
    row_to_col, col_to_row = row_to_col[-1], col_to_row[-1]
    # Completion (only when max_iterations was hit): free rows and free columns sorted by group line up.
    free_rows = jnp.argsort(jnp.where(row_to_col < 0, group_ids, jnp.iinfo(jnp.int32).max), stable=True)
    free_cols = jnp.argsort(jnp.where(col_to_row < 0, group_ids, jnp.iinfo(jnp.int32).max), stable=True)
    n_free = jnp.sum(row_to_col < 0)
    fill = jnp.where(jnp.arange(n) < n_free, free_cols, -1)
    completion = jnp.full((n,), -1, jnp.int32).at[free_rows].set(fill.astype(jnp.int32))
    return jnp.where(row_to_col >= 0, row_to_col, completion)


def condition_groups(cond: gnn.Condition | None, n: int) -> Int[Array, " n"]:
    """Group id of each point for a condition-respecting coupling: points with identical labels share the id (the
    index of the first such point); all zeros without labels. Continuous covariates are not grouped on.

    Arguments:
        cond: a :class:`genjax.nn.Condition` with leading size ``n``, or ``None``.
        n: number of points.

    Returns:
        int32 ``(n,)``.
    """
    if cond is None or cond.labels is None:
        return jnp.zeros((n,), jnp.int32)
    labels = jnp.asarray(cond.labels)
    same = jnp.all(labels[:, None, :] == labels[None, :, :], axis=-1)
    return jnp.argmax(same, axis=1).astype(jnp.int32)


def _assign_on_host(cost: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Exact minimum-cost assignment per group (scipy's Jonker-Volgenant ``linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    cost, groups = np.asarray(cost, np.float64), np.asarray(groups)
    perm = np.empty(cost.shape[0], np.int32)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        rows, cols = linear_sum_assignment(cost[np.ix_(idx, idx)])
        perm[idx[rows]] = idx[cols]
    return perm


def ot_coupling(
    x: Float[Array, "n d"],
    eps: Float[Array, "n d"],
    *,
    groups: Int[Array, " n"] | None = None,
    method: str = "host",
    tol: float = 1e-4,
) -> Float[Array, "n d"]:
    """Minibatch optimal-transport coupling (Tong et al. 2024; Pooladian et al. 2023): reorder the noise draws so
    that pairing ``x[i]`` with ``eps'[i]`` minimises ``sum_i |x_i - eps'_i|^2`` (an exact assignment).

    With ``groups`` (e.g. :func:`condition_groups` of the labels), pairs are only formed within a group, so that
    the noise matched to the points of each condition is still an i.i.d. ``N(0, I)`` sample: a coupling across
    conditions would shift the noise given the condition away from the prior that sampling starts from.

    Arguments:
        x: data ``(n, d)``; eps: i.i.d. prior draws ``(n, d)``.
        groups: optional int ``(n,)`` group ids.
        method: ``"host"`` (default): scipy's exact ``linear_sum_assignment`` through ``jax.pure_callback``
            (about 7 ms for ``n = 256`` on one CPU core; one device-to-host transfer of the cost matrix per call,
            the approach of the reference implementation, which solves on the CPU too); ``"auction"``:
            :func:`linear_assignment` inside XLA (no host round trip; about 0.3 s for ``n = 256`` on CPU, for
            accelerators).
        tol: the auction's final ``eps``, relative to the range of squared distances.

    Returns:
        ``eps'``: the rows of ``eps`` permuted, ``(n, d)``.

    Raises:
        ValueError: on an unknown ``method``.
    """
    if method not in _OT_METHODS:
        raise ValueError(f"OT coupling method must be one of {_OT_METHODS}; got {method!r}")
    n = x.shape[0]
    cost = jax.lax.stop_gradient(jnp.sum((x[:, None, :] - eps[None, :, :]) ** 2, axis=-1))
    group_ids = jnp.zeros((n,), jnp.int32) if groups is None else jnp.asarray(groups, jnp.int32)
    if method == "auction":
        perm = linear_assignment(cost, groups=group_ids, eps=tol)
    else:
        perm = jax.pure_callback(_assign_on_host, jax.ShapeDtypeStruct((n,), jnp.int32), cost, group_ids,
                                 vmap_method="sequential")
    return eps[perm]


# ---------------------------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------------------------


def cfm_loss(
    key: PRNGKeyArray,
    apply_fn: Callable[..., Array],
    path: AbstractPath,
    x: Array,
    *,
    cond: Any = None,
    coupling: str = "independent",
    groups: Array | None = None,
    ot_method: str = "host",
    time_sampling: str = "stratified",
    reduction: str = "mean",
) -> tuple[Array, dict[str, Array]]:
    """Conditional flow matching loss for one batch (Lipman et al. 2023, eq. 9).

    ``loss = mean_i R_j (v(x_t, t, cond)_ij - u_t,ij)^2`` with ``x_t = alpha x + sigma eps``, ``u_t = alpha' x +
    sigma' eps`` (``R``: mean or sum over dimensions). Its minimiser is the marginal velocity ``E[u_t | x_t,
    cond]``; at it the loss equals ``E_t tr Cov(u_t | x_t) / d`` (the irreducible part).

    Arguments:
        key: PRNG key (times, noise).
        apply_fn: ``apply_fn(x_t, t, cond) -> (n, d)``, the velocity network (``cond`` may be ``None``).
        path: the probability path (:class:`LinearPath`, :class:`VPPath`).
        x: data ``(n, d)``.
        cond: optional :class:`genjax.nn.Condition` with leading ``n`` (what the network sees).
        coupling: ``"independent"`` (``eps`` i.i.d.) or ``"ot"`` (:func:`ot_coupling` within ``groups``).
        groups: group ids for the OT coupling (default: all one group).
        ot_method: how the OT assignment is solved, see :func:`ot_coupling`.
        time_sampling: see :func:`genjax.sample_times` (times uniform on ``[0, 1)``).
        reduction: ``"mean"`` or ``"sum"`` over dimensions.

    Returns:
        ``(loss, aux)``: float32 scalar; ``aux = {"velocity_mse": mean squared velocity error}``.

    Raises:
        ValueError: on unknown option names.
    """
    _check_flow_options(path, coupling, ot_method, time_sampling, reduction, 0.0)
    n = x.shape[0]
    key_t, key_eps = jax.random.split(key)
    t = sample_times(key_t, n, time_sampling).astype(x.dtype)
    eps = jax.random.normal(key_eps, x.shape, x.dtype)
    if coupling == "ot":
        eps = ot_coupling(x, eps, groups=groups, method=ot_method)
    xt, ut = path.interpolate(x, eps, t)
    sq = (apply_fn(xt, t, cond) - ut) ** 2
    per_point = jnp.mean(sq, axis=-1) if reduction == "mean" else jnp.sum(sq, axis=-1)
    return jnp.mean(per_point), {"velocity_mse": jnp.mean(sq)}


def _check_flow_options(path, coupling, ot_method, time_sampling, reduction, cond_dropout) -> None:
    if not isinstance(path, AbstractPath):
        raise ValueError(f"path must be a genjax AbstractPath (LinearPath, VPPath); got {type(path).__name__}")
    if coupling not in _COUPLINGS:
        raise ValueError(f"coupling must be one of {_COUPLINGS}; got {coupling!r}")
    if ot_method not in _OT_METHODS:
        raise ValueError(f"ot_method must be one of {_OT_METHODS}; got {ot_method!r}")
    if time_sampling not in _TIME_SAMPLING:
        raise ValueError(f"time sampling must be one of {_TIME_SAMPLING}; got {time_sampling!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    if not 0.0 <= cond_dropout <= 1.0:
        raise ValueError(f"cond_dropout must be in [0, 1]; got {cond_dropout}")


def make_flow_loss(
    model: Any,
    path: AbstractPath | None = None,
    *,
    coupling: str = "independent",
    ot_method: str = "host",
    time_sampling: str = "stratified",
    reduction: str = "mean",
    cond_dropout: float = 0.0,
) -> Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]:
    """Conditional flow matching as ``loss_fn(params, batch, key, step) -> (loss, aux)`` for :func:`genjax.fit`.

    Arguments:
        model: a Flax module called as ``model.apply(params, x, t, cond)`` (e.g. :data:`VelocityNet`).
        path: the probability path (default :class:`LinearPath`).
        coupling, ot_method, time_sampling, reduction: see :func:`cfm_loss`. With ``"ot"`` and a conditional
            batch, noise is matched within groups of identical labels (:func:`condition_groups`, before condition
            dropout).
        cond_dropout: probability of replacing each attribute / covariate by its null token
            (:func:`genjax.nn.drop_condition`), to train the unconditional branch for classifier-free guidance.

    Returns:
        ``loss_fn``; ``batch`` is an array ``x: (b, d)`` or a dict ``{"x": (b, d), "cond": Condition}``.

    Raises:
        ValueError: on invalid options (checked here, before any compute).
    """
    path = LinearPath() if path is None else path
    _check_flow_options(path, coupling, ot_method, time_sampling, reduction, cond_dropout)

    def loss_fn(params, batch, key, step):
        del step
        x, cond = _split_batch(batch)
        key_drop, key_loss = jax.random.split(key)
        groups = condition_groups(cond, x.shape[0]) if coupling == "ot" else None
        cond = gnn.drop_condition(key_drop, cond, cond_dropout)
        apply = lambda x, t, c: model.apply(params, x, t, c)
        return cfm_loss(key_loss, apply, path, x, cond=cond, coupling=coupling, groups=groups, ot_method=ot_method,
                        time_sampling=time_sampling, reduction=reduction)

    return loss_fn


# ---------------------------------------------------------------------------------------------------------------
# trainer
# ---------------------------------------------------------------------------------------------------------------


class FlowFitResult(NamedTuple):
    """Result of :func:`fit_flow_model`.

    Fields:
        velocity_fn: a :class:`VelocityField` with the final parameters (the EMA ones when ``ema_decay`` is set).
        model: the Flax module.
        path: the probability path it was trained on (what :func:`genjax.sample_flow` needs).
        fit: the :class:`genjax.FitResult` of the training loop (state, history, best params).
    """

    velocity_fn: VelocityField
    model: Any
    path: AbstractPath
    fit: Any

    @property
    def params(self) -> Params:
        """The parameters of :attr:`velocity_fn`."""
        return self.velocity_fn.params


def fit_flow_model(
    x: Array,
    model: Any = None,
    *,
    path: AbstractPath | None = None,
    cond: gnn.Condition | None = None,
    coupling: str = "independent",
    ot_method: str = "host",
    time_sampling: str = "stratified",
    reduction: str = "mean",
    cond_dropout: float = 0.0,
    optimizer: Any = None,
    config: Any = None,
    seed: int = 0,
    val_x: Array | None = None,
    val_cond: gnn.Condition | None = None,
    **config_overrides: Any,
) -> FlowFitResult:
    """Train a velocity network by conditional flow matching with the shared training loop :func:`genjax.fit`.

    Arguments:
        x: training points ``(n, d)`` float32 (e.g. standardised VAE latents).
        model: a Flax module ``model.apply(params, x, t, cond)`` (default :data:`VelocityNet` sized for ``cond``).
        path: the probability path (default :class:`LinearPath`, rectified flow).
        cond: optional :class:`genjax.nn.Condition` per training point (leading size ``n``).
        coupling, ot_method, time_sampling, reduction, cond_dropout: see :func:`make_flow_loss`.
        optimizer: optax optimizer (default: ``fit``'s).
        config: a :class:`genjax.TrainConfig`; ``config_overrides`` go to :func:`genjax.fit` (its config fields
            ``max_steps``, ``batch_size``, ``ema_decay``, ... and keywords ``checkpoint_dir``, ``resume``,
            ``devices``, ``description``).
        seed: seed of the parameter initialisation and the training loop.
        val_x, val_cond: optional validation data.

    Returns:
        a :class:`FlowFitResult`.

    Raises:
        ValueError: if ``x`` is not a finite 2-d array, ``cond`` does not fit the model, or an option is invalid.
    """
    from ..training._loop import fit  # the training layer sits above the models

    path = LinearPath() if path is None else path
    _check_flow_options(path, coupling, ot_method, time_sampling, reduction, cond_dropout)  # before any compute
    model, params, data, val_data = prepare_field_fit(x, cond, model, val_x, val_cond, seed=seed,
                                                      name="fit_flow_model")
    loss_fn = make_flow_loss(model, path, coupling=coupling, ot_method=ot_method, time_sampling=time_sampling,
                             reduction=reduction, cond_dropout=cond_dropout)
    result = fit(loss_fn, params, data, optimizer=optimizer, val_data=val_data, config=config, seed=seed,
                 **config_overrides)
    final = result.state.ema_params if result.state.ema_params is not None else result.state.params
    return FlowFitResult(VelocityField(model.apply, final), model, path, result)
