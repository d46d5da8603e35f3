"""SDE basics: forward VP / VE diffusion of 2-D toy data, marginals against the closed form, a trained score
model, reverse-SDE and probability-flow-ODE sampling, likelihoods and trajectories (the seed's SDE tutorial).

The data are a ring of Gaussians. Every forward marginal of a linear SDE started there is again a Gaussian mixture
(means ``alpha(t) m_k``, variance ``alpha(t)^2 s^2 + sigma(t)^2``), so the exact score and density are known at
every time and each step of the tutorial has a ground truth:

1. simulate the forward SDE with Euler-Maruyama and compare its spread with ``sde.marginal`` (closed form);
2. train a score network by denoising score matching (``genjax.fit_score_model``) and compare it with the exact
   score;
3. sample with ``genjax.sample_reverse_sde`` and ``genjax.sample_probability_flow_ode`` (learned and exact
   score), measure the samples with ``genjax.metrics.energy_distance`` beside a data-vs-data control;
4. evaluate ``genjax.log_likelihood`` (probability-flow ODE) against the exact log-density;
5. draw reverse-SDE and probability-flow trajectories (``sde.reverse(score_fn)``, stepped by hand).

Run (from the repository root)::

    python examples/sde_basics.py            # defaults: a couple of minutes on 2 CPU cores
    python examples/sde_basics.py --full     # longer training, more samples
    python examples/sde_basics.py --smoke    # a few steps on tiny data (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/sde_basics``): forward.png, marginals.png, score.png, samples.png,
trajectories.png, training.png, summary.json and summary.md.
"""

from __future__ import annotations

import dataclasses
import math
import time

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import genjax
from genjax.plots import save_figure

from common import config_class, config_from_args, finish_run, new_figure, start_run

Config = config_class(
    __file__,
    # data: a ring of n_modes Gaussians of radius `radius`, each with standard deviation `mode_std`
    n_modes=8, radius=4.0, mode_std=0.35, n_train=4000,
    # SDEs (comma-separated, of VP and VE): VP (beta_min, beta_max) and VE (sigma_min, sigma_max >= the largest
    # pairwise distance of the data)
    sdes="VP,VE", beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=10.0,
    # forward simulation
    n_forward=2000, forward_steps=1000,
    # score model
    hidden=128, num_blocks=3, train_steps=3000, batch_size=256, lr=2e-3,
    # sampling and likelihood; exact_reference: also sample with the exact score (separates sampler error from
    # model error)
    n_samples=2000, sde_steps=500, ode_tol=1e-4, exact_reference=True, n_likelihood=400, n_trajectories=24,
    trajectory_steps=200,
)

SMOKE = dict(sdes="VP", exact_reference=False, n_train=256, n_forward=128, forward_steps=20, hidden=16,
             num_blocks=1, train_steps=16, batch_size=64, n_samples=64, sde_steps=8, ode_tol=1e-2, n_likelihood=16, n_trajectories=4,
             trajectory_steps=8)
FULL = dict(n_train=20000, n_forward=10000, hidden=256, num_blocks=4, train_steps=20000, n_samples=10000,
            n_likelihood=2000)


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__)


# ---------------------------------------------------------------------------------------------------------------
# the toy data and its exact diffused density


def ring(cfg: Config) -> jax.Array:
    """Mode centres of the ring, (n_modes, 2)."""
    angle = 2 * jnp.pi * jnp.arange(cfg.n_modes) / cfg.n_modes
    return cfg.radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)


def sample_data(key, means, mode_std: float, n: int) -> jax.Array:
    key_mode, key_noise = jax.random.split(key)
    mode = jax.random.randint(key_mode, (n,), 0, means.shape[0])
    return means[mode] + mode_std * jax.random.normal(key_noise, (n, means.shape[1]))


class MixtureMarginal(eqx.Module):
    """The exact marginal ``p_t`` of a Gaussian mixture diffused by a linear SDE: log-density and score.

    ``p_t = mean_k N(alpha(t) m_k, (alpha(t)^2 s^2 + sigma(t)^2) I)``. A pytree, so it can be passed to the
    samplers as a score function like a trained network.
    """

    sde: genjax.AbstractSDE
    means: jax.Array  # (modes, 2)
    mode_std: float

    def log_density_one(self, x, t):
        """log p_t(x) for one point ``x: (2,)`` at one time ``t: ()``."""
        alpha, sigma = self.sde.alpha(t), self.sde.std(t)
        var = (alpha * self.mode_std) ** 2 + sigma**2
        sq = jnp.sum((x - alpha * self.means) ** 2, axis=-1)  # (modes,)
        log_normal = -0.5 * sq / var - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi * var)
        return jax.nn.logsumexp(log_normal) - jnp.log(self.means.shape[0])

    def log_density(self, x, t):
        """``x: (n, 2)``, ``t: (n,)`` -> ``(n,)``."""
        return jax.vmap(self.log_density_one)(x, t)

    def __call__(self, x, t):
        """The exact score ``grad_x log p_t(x)``: ``(n, 2), (n,) -> (n, 2)``."""
        return jax.vmap(jax.grad(self.log_density_one))(x, t)


class InputScaled(nn.Module):
    """A field network fed ``x_t / sqrt(alpha(t)^2 s_data^2 + sigma(t)^2)``, i.e. inputs of about unit scale at
    every time (the ``c_in`` of Karras et al. 2022, EDM). Without it the VE network sees inputs from the data
    scale up to ``sigma_max`` and learns the small-noise score poorly."""

    net: nn.Module
    sde: genjax.AbstractSDE
    data_std: float

    def __call__(self, x, t, cond=None):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
        c_in = jax.lax.rsqrt(self.sde.alpha(t) ** 2 * self.data_std**2 + self.sde.std(t) ** 2)
        return self.net(x * c_in[..., None], t, cond)


@eqx.filter_jit
def simulate_forward(key, sde, x0, n_steps: int):
    """Euler-Maruyama for ``dx = f(t) x dt + g(t) dW`` from ``t = 0`` to 1; returns every state (steps + 1, n, d)."""
    dt = 1.0 / n_steps

    def step(x, inputs):
        k, t = inputs
        x = x + sde.drift(x, t) * dt + sde.diffusion(t) * math.sqrt(dt) * jax.random.normal(k, x.shape)
        return x, x

    ts = jnp.arange(n_steps) * dt
    _, path = jax.lax.scan(step, x0, (jax.random.split(key, n_steps), ts))
    return jnp.concatenate([x0[None], path])


@eqx.filter_jit
def evaluate_field(field, x, t):
    """``field(x, t)`` under jit (a score network or :class:`MixtureMarginal`): ``(n, d), (n,) -> (n, d)``."""
    return field(x, t)


@eqx.filter_jit
def mixture_log_density(marginal: MixtureMarginal, x, t):
    return marginal.log_density(x, t)


@eqx.filter_jit
def reverse_trajectories(key, sde, score_fn, x1, n_steps: int, t_min: float = 1e-3):
    """Step the reverse SDE and the probability-flow ODE (``sde.reverse(score_fn, probability_flow)``) from
    ``t = 1`` to ``t_min`` with Euler(-Maruyama), keeping every state: two arrays (steps + 1, n, d).

    ``genjax.sample_reverse_sde`` / ``sample_probability_flow_ode`` solve the same equations on diffrax but return
    only the end points.
    """
    h = (1.0 - t_min) / n_steps
    reverse_sde, flow_ode = sde.reverse(score_fn), sde.reverse(score_fn, probability_flow=True)

    def step(state, inputs):
        x_sde, x_ode = state
        k, t = inputs
        tt = jnp.full(x1.shape[:1], t)
        noise = reverse_sde.diffusion(t) * math.sqrt(h) * jax.random.normal(k, x1.shape)
        x_sde = x_sde - reverse_sde.drift(x_sde, tt) * h + noise
        x_ode = x_ode - flow_ode.drift(x_ode, tt) * h
        return (x_sde, x_ode), (x_sde, x_ode)

    ts = 1.0 - jnp.arange(n_steps) * h
    _, (path_sde, path_ode) = jax.lax.scan(step, (x1, x1), (jax.random.split(key, n_steps), ts))
    return jnp.concatenate([x1[None], path_sde]), jnp.concatenate([x1[None], path_ode])


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)

    key = jax.random.key(cfg.seed)
    key_data, key_ref, key_fwd, key_sample, key_ll, key_traj = jax.random.split(key, 6)
    means = ring(cfg)
    data = sample_data(key_data, means, cfg.mode_std, cfg.n_train)
    reference = sample_data(key_ref, means, cfg.mode_std, cfg.n_samples)  # fresh data: the control set
    known = {"VP": genjax.VPSDE(cfg.beta_min, cfg.beta_max), "VE": genjax.VESDE(cfg.sigma_min, cfg.sigma_max)}
    names = [n.strip().upper() for n in cfg.sdes.split(",")]
    if not names or any(n not in known for n in names):
        raise ValueError(f"--sdes must list VP and/or VE; got {cfg.sdes!r}")
    sdes = {n: known[n] for n in names}
    var0 = float(jnp.mean(jnp.var(data, axis=0)))  # per-coordinate variance of the data
    summary: dict = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend(), "sdes": {}}
    times_shown = (0.0, 0.05, 0.2, 0.5, 1.0)

    # 1. forward SDE: Euler-Maruyama against the closed-form marginal ------------------------------------------
    forward = {}
    for name, sde in sdes.items():
        x0 = data[: cfg.n_forward]
        path = np.asarray(simulate_forward(jax.random.fold_in(key_fwd, len(forward)), sde, x0, cfg.forward_steps))
        grid = np.linspace(0.0, 1.0, cfg.forward_steps + 1)
        # x_t | x0 ~ N(alpha(t) x0, sigma(t)^2 I) (sde.marginal), so Var x_t = alpha^2 Var x0 + sigma^2
        tg = jnp.asarray(grid, jnp.float32)
        closed = np.sqrt(np.asarray(sde.alpha(tg)) ** 2 * var0 + np.asarray(sde.std(tg)) ** 2)
        simulated = np.sqrt(path.var(axis=1).mean(axis=-1))
        rel = np.abs(simulated[1:] - closed[1:]) / closed[1:]
        forward[name] = (grid, path, simulated, closed)
        summary["sdes"][name] = {"forward_std_max_rel_error": float(rel.max()),
                                 "prior_std": float(sde.prior_std())}
        print(f"[{name}] forward SDE: spread of {cfg.n_forward} Euler-Maruyama paths vs closed form: "
              f"max relative error {rel.max():.3f} over t in (0, 1]")

    # 2. score model by denoising score matching --------------------------------------------------------------
    fits = {}
    for i, (name, sde) in enumerate(sdes.items()):
        t0 = time.perf_counter()
        net = InputScaled(genjax.nn.FieldNet(n_hidden=cfg.hidden, n_layers=cfg.num_blocks), sde, var0**0.5)
        optimizer = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.train_steps, alpha=0.05))
        res = genjax.fit_score_model(data, sde, net, optimizer=optimizer, max_steps=cfg.train_steps,
                                     batch_size=cfg.batch_size, steps_per_dispatch=min(cfg.train_steps, 250),
                                     ema_decay=0.999, seed=cfg.seed + i, progress=False)
        fits[name] = res
        exact = MixtureMarginal(sde, means, cfg.mode_std)
        t_grid = jnp.asarray([0.01, 0.05, 0.1, 0.2, 0.5, 1.0])
        errors = []
        for t in t_grid:
            xt = forward[name][1][int(round(float(t) * cfg.forward_steps))]  # points from the forward process
            tt = jnp.full(xt.shape[:1], t)
            s_true = np.asarray(evaluate_field(exact, jnp.asarray(xt), tt))
            s_model = np.asarray(evaluate_field(res.score_fn, jnp.asarray(xt), tt))
            errors.append(float(np.sum((s_model - s_true) ** 2) / np.sum(s_true**2)))
        summary["sdes"][name].update(
            train_seconds=round(time.perf_counter() - t0, 1), final_loss=float(res.fit.history[-1]["loss"]),
            score_rel_error={f"{float(t):g}": e for t, e in zip(t_grid, errors, strict=True)})
        print(f"[{name}] score model: {cfg.train_steps} steps in {time.perf_counter() - t0:.1f} s, relative "
              f"squared score error " + ", ".join(f"t={float(t):g}: {e:.3f}" for t, e in zip(t_grid, errors, strict=True)))

    # 3. sampling: reverse SDE and probability-flow ODE, learned and exact scores --------------------------------
    samples = {}
    control = genjax.metrics.energy_distance(np.asarray(reference), np.asarray(data[: cfg.n_samples]))
    summary["energy_distance_data_vs_data"] = control
    for i, (name, sde) in enumerate(sdes.items()):
        exact = MixtureMarginal(sde, means, cfg.mode_std)
        k = jax.random.fold_in(key_sample, i)
        shape = (cfg.n_samples, 2)
        t0 = time.perf_counter()
        x_sde, nfe_sde = genjax.sample_reverse_sde(k, fits[name].score_fn, sde, shape, n_steps=cfg.sde_steps)
        x_ode, nfe_ode = genjax.sample_probability_flow_ode(k, fits[name].score_fn, sde, shape,
                                                            rtol=cfg.ode_tol, atol=cfg.ode_tol)
        samples[name] = {"reverse SDE": x_sde, "probability-flow ODE": x_ode}
        if cfg.exact_reference:
            samples[name]["reverse SDE, exact score"], _ = genjax.sample_reverse_sde(k, exact, sde, shape,
                                                                                    n_steps=cfg.sde_steps)
        ed = {s: genjax.metrics.energy_distance(np.asarray(reference), np.asarray(x)) for s, x in samples[name].items()}
        summary["sdes"][name].update(
            energy_distance={s.replace(" ", "_").replace(",", ""): v for s, v in ed.items()},
            nfe_reverse_sde=int(nfe_sde), nfe_probability_flow=int(nfe_ode),
            sampling_seconds=round(time.perf_counter() - t0, 1))
        print(f"[{name}] samples (energy distance to fresh data; data vs data {control:.4f}): "
              + ", ".join(f"{s} {v:.4f}" for s, v in ed.items()) + f"; NFE SDE {int(nfe_sde)}, ODE {int(nfe_ode)}")

    # 4. likelihood through the probability-flow ODE, against the exact log-density ------------------------------
    x_test = reference[: cfg.n_likelihood]
    for i, (name, sde) in enumerate(sdes.items()):
        exact = MixtureMarginal(sde, means, cfg.mode_std)
        t_min = 1e-5
        logp = genjax.log_likelihood(jax.random.fold_in(key_ll, i), fits[name].score_fn, sde, x_test,
                                     divergence="exact", rtol=cfg.ode_tol, atol=cfg.ode_tol, t_min=t_min)
        logp_exact = mixture_log_density(exact, x_test, jnp.full(x_test.shape[:1], t_min))
        summary["sdes"][name].update(log_likelihood_model=float(logp.mean()),
                                     log_likelihood_exact=float(logp_exact.mean()))
        print(f"[{name}] log-likelihood (nats per point, {cfg.n_likelihood} fresh points): model "
              f"{float(logp.mean()):.3f}, exact {float(logp_exact.mean()):.3f}")

    # 5. trajectories ----------------------------------------------------------------------------------------
    trajectories = {}
    for i, (name, sde) in enumerate(sdes.items()):
        k_prior, k_path = jax.random.split(jax.random.fold_in(key_traj, i))
        x1 = sde.prior_sample(k_prior, (cfg.n_trajectories, 2))
        paths = reverse_trajectories(k_path, sde, fits[name].score_fn, x1, cfg.trajectory_steps)
        trajectories[name, False], trajectories[name, True] = map(np.asarray, paths)

    # figures -------------------------------------------------------------------------------------------------
    figures = [
        plot_forward(out / "forward.png", cfg, sdes, forward, means, times_shown),
        plot_marginals(out / "marginals.png", sdes, forward),
        plot_score(out / "score.png", summary, fits, sdes, means, cfg),
        plot_samples(out / "samples.png", reference, samples, summary),
        plot_trajectories(out / "trajectories.png", trajectories, data, cfg),
        save_figure(genjax.plots.training_curves({n: f.fit.history for n, f in fits.items()}, keys=["loss"]),
                    out / "training.png"),
    ]
    return finish_run(out, summary, figures, "SDE basics: forward VP / VE, score model, samplers, likelihood",
                      t_start)


# ---------------------------------------------------------------------------------------------------------------
# figures


def _density_contours(ax, marginal: MixtureMarginal, t: float, lim: float):
    g = np.linspace(-lim, lim, 120)
    xx, yy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    logp = np.asarray(mixture_log_density(marginal, pts, jnp.full(pts.shape[:1], t))).reshape(xx.shape)
    ax.contour(xx, yy, np.exp(logp), levels=6, colors="k", linewidths=0.6, alpha=0.7)


def plot_forward(path, cfg, sdes, forward, means, times_shown):
    fig = new_figure(figsize=(3.0 * len(times_shown), 3.0 * len(sdes)))
    axes = fig.subplots(len(sdes), len(times_shown), squeeze=False)
    for row, (name, sde) in enumerate(sdes.items()):
        grid, path_, _, closed = forward[name]
        marginal = MixtureMarginal(sde, means, cfg.mode_std)
        for col, t in enumerate(times_shown):
            ax = axes[row, col]
            i = int(round(t * (len(grid) - 1)))
            lim = 3.2 * closed[i] + 0.5
            x = path_[i]
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, color="#4c72b0", rasterized=True)
            _density_contours(ax, marginal, max(grid[i], 1e-4), lim)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(f"{name}, t = {t:g}", fontsize="medium")
    fig.suptitle("forward SDE: Euler-Maruyama paths (dots) and the exact marginal density (contours)")
    return save_figure(fig, path)


def plot_marginals(path, sdes, forward):
    fig = new_figure(figsize=(5.0 * len(sdes), 3.6))
    axes = fig.subplots(1, len(sdes), squeeze=False)[0]
    for ax, (name, sde) in zip(axes, sdes.items(), strict=True):
        grid, _, simulated, closed = forward[name]
        ax.plot(grid, closed, color="k", lw=1.5, label="closed form sqrt(alpha^2 var0 + sigma^2)")
        every = max(1, len(grid) // 25)
        ax.plot(grid[::every], simulated[::every], "o", color="#dd8452", ms=4, label="Euler-Maruyama paths")
        ax.plot(grid, np.asarray(sde.alpha(jnp.asarray(grid))), "--", color="#55a868", label="alpha(t)")
        ax.plot(grid, np.asarray(sde.std(jnp.asarray(grid))), ":", color="#c44e52", label="sigma(t)")
        ax.set_xlabel("t")
        ax.set_ylabel("per-coordinate standard deviation")
        ax.set_title(f"{name}: spread of x_t")
        if name == "VE":
            ax.set_yscale("log")
        ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_score(path, summary, fits, sdes, means, cfg):
    fig = new_figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    for name in sdes:
        errs = summary["sdes"][name]["score_rel_error"]
        ax.plot([float(t) for t in errs], list(errs.values()), "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("|s_model - s_exact|^2 / |s_exact|^2")
    ax.set_title("relative score error on forward samples")
    ax.legend()
    t = 0.05
    lim = cfg.radius + 3 * cfg.mode_std + 0.5
    g = np.linspace(-lim, lim, 17)
    xx, yy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    tt = jnp.full(pts.shape[:1], t)
    name = next(iter(sdes))
    marginal = MixtureMarginal(sdes[name], means, cfg.mode_std)
    for ax, (label, field) in zip(axes[1:], (("exact", marginal), ("learned", fits[name].score_fn)), strict=True):
        s = np.asarray(evaluate_field(field, pts, tt))
        s = s / (np.linalg.norm(s, axis=-1, keepdims=True) ** 0.5 + 1e-6)  # compress the range for display
        _density_contours(ax, marginal, t, lim)
        ax.quiver(xx, yy, s[:, 0].reshape(xx.shape), s[:, 1].reshape(xx.shape), color="#4c72b0")
        ax.set_aspect("equal")
        ax.set_title(f"{name}: {label} score at t = {t:g}")
    return save_figure(fig, path)


def plot_samples(path, reference, samples, summary):
    names = list(samples)
    cols = ["data", *samples[names[0]]]
    fig = new_figure(figsize=(3.4 * len(cols), 3.4 * len(names)))
    axes = fig.subplots(len(names), len(cols), squeeze=False)
    ref = np.asarray(reference)
    lim = float(np.abs(ref).max()) * 1.15
    for row, name in enumerate(names):
        for col, label in enumerate(cols):
            ax = axes[row, col]
            x = ref if label == "data" else np.asarray(samples[name][label])
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, color="#4c72b0" if label == "data" else "#dd8452",
                       rasterized=True)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            if label == "data":
                ax.set_title(f"{name}: fresh data")
            else:
                ed = summary["sdes"][name]["energy_distance"][label.replace(" ", "_").replace(",", "")]
                ax.set_title(f"{name}: {label}\nenergy distance {ed:.4f}", fontsize="medium")
    fig.suptitle(f"samples (data vs data energy distance {summary['energy_distance_data_vs_data']:.4f})")
    return save_figure(fig, path)


def plot_trajectories(path, trajectories, data, cfg):
    names = list(dict.fromkeys(k[0] for k in trajectories))
    fig = new_figure(figsize=(9, 4.2 * len(names)))
    axes = fig.subplots(len(names), 2, squeeze=False)
    d = np.asarray(data)
    lim = float(np.abs(d).max()) * 1.4
    for row, name in enumerate(names):
        for col, pf in enumerate((False, True)):
            ax = axes[row, col]
            ax.scatter(d[:, 0], d[:, 1], s=1, alpha=0.15, color="0.5", rasterized=True)
            path_ = trajectories[name, pf]
            for j in range(path_.shape[1]):
                ax.plot(path_[:, j, 0], path_[:, j, 1], lw=0.7, alpha=0.8)
            ax.plot(path_[-1, :, 0], path_[-1, :, 1], "k.", ms=4)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(f"{name}: {'probability-flow ODE' if pf else 'reverse SDE'} paths, t = 1 -> 0",
                         fontsize="medium")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
