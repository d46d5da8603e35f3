"""Likelihoods: genjax's NB / ZINB distributions inside numpyro models.

1. Accuracy: ``genjax.nb_log_prob`` and numpyro's ``NegativeBinomial2`` in float32 against a float64 reference,
   from over-dispersed (theta = 0.01) to nearly Poisson (theta = 1e8) counts.
2. A hierarchical model of gene dispersion on synthetic counts with known truth (``genjax.datasets.synthetic_counts``):
   ``log theta_g ~ N(m, s^2)`` with hyperpriors, per-cell-type mean proportions, observed library sizes,
   ``x_cg ~ genjax.NegativeBinomial(L_c rho_{type(c), g}, theta_g)``, fitted with SVI (AutoNormal) or NUTS; the
   same model without pooling (independent ``theta_g``) shows the shrinkage.
3. NB vs ZINB on real counts (one PBMC3k cell type): per-gene NB and ``genjax.ZeroInflatedNegativeBinomial``
   models, their ELBOs, fitted zero-inflation and the predicted vs observed zero fraction per gene.

Run (from the repository root)::

    python examples/likelihoods.py                     # defaults: a couple of minutes on 2 CPU cores (SVI)
    python examples/likelihoods.py --inference nuts    # NUTS for the hierarchical model (slower)
    python examples/likelihoods.py --full              # more cells, genes and steps
    python examples/likelihoods.py --smoke             # a few steps on tiny data (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/likelihoods``): accuracy.png, dispersion.png, zinb.png, svi.png,
summary.json and summary.md.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from scipy import special

import genjax
from genjax.plots import save_figure

from common import config_class, config_from_args, finish_run, new_figure, start_run

Config = config_class(
    __file__,
    # hierarchical dispersion model on synthetic counts; inference: "svi" (AutoNormal) or "nuts"
    n_cells=1500, n_genes=300, n_cell_types=4, library_size=1500.0, theta_median=3.0, theta_sd=0.8,
    inference="svi", svi_steps=3000, lr=0.02, nuts_warmup=300, nuts_samples=300,
    # NB vs ZINB on real counts: the real_genes most expressed genes of that cell type
    cell_type="CD4 T cells", real_genes=300,
)

SMOKE = dict(n_cells=120, n_genes=24, n_cell_types=2, svi_steps=10, nuts_warmup=5, nuts_samples=5,
             cell_type="B cells", real_genes=20)
FULL = dict(n_cells=5000, n_genes=1000, svi_steps=10000, nuts_warmup=1000, nuts_samples=1000, real_genes=1000)


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__, check=check_config)


def check_config(cfg: Config) -> str | None:
    if cfg.inference not in ("svi", "nuts"):
        return f"--inference must be 'svi' or 'nuts'; got {cfg.inference!r}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# 1. float32 accuracy


def nb_log_prob_f64(x, mu, theta):
    """Float64 reference: ``lgamma(x+theta) - lgamma(theta) - lgamma(x+1) - theta log1p(mu/theta)
    + x log(mu / (theta + mu))``."""
    x, mu, theta = (np.asarray(a, np.float64) for a in (x, mu, theta))
    return (special.gammaln(x + theta) - special.gammaln(theta) - special.gammaln(x + 1)
            - theta * np.log1p(mu / theta) + x * (np.log(mu) - np.log(theta + mu)))


def accuracy(thetas: np.ndarray, mu: float, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Worst error ``|lp - exact| / (1 + |exact|)`` over ``counts`` for each theta: genjax and numpyro with
    float32 inputs, against the float64 reference at the same (float32-rounded) inputs."""
    x = np.broadcast_to(counts[None, :], (thetas.size, counts.size)).astype(np.float32)
    th = np.broadcast_to(thetas[:, None], x.shape).astype(np.float32)
    mu32 = np.full(x.shape, mu, np.float32)
    exact = nb_log_prob_f64(x, mu32, th)  # at the float32-rounded inputs
    ours = np.asarray(jax.jit(genjax.nb_log_prob)(x, mu32, th), np.float64)
    theirs = np.asarray(jax.jit(lambda a, m, t: dist.NegativeBinomial2(m, t).log_prob(a))(x, mu32, th), np.float64)
    scale = 1.0 + np.abs(exact)
    return {"genjax.NegativeBinomial": (np.abs(ours - exact) / scale).max(axis=1),
            "numpyro NegativeBinomial2": (np.abs(theirs - exact) / scale).max(axis=1)}


# ---------------------------------------------------------------------------------------------------------------
# 2. hierarchical dispersion


def dispersion_model(x, log_lib, cell_type, *, n_types: int, pooled: bool = True):
    """``x: (cells, genes)`` counts, ``log_lib: (cells,)``, ``cell_type: (cells,)`` int codes.

    ``log rho_{t,g}``: log mean proportion of gene ``g`` in type ``t``; ``theta_g``: inverse dispersion, drawn
    around a shared log-normal (``pooled``) or independently with a wide prior (no pooling).
    """
    n_cells, n_genes = x.shape
    if pooled:
        loc = numpyro.sample("log_theta_loc", dist.Normal(0.0, 2.0))
        scale = numpyro.sample("log_theta_scale", dist.HalfNormal(1.0))
    else:
        loc, scale = 0.0, 5.0
    with numpyro.plate("genes", n_genes):
        log_theta = numpyro.sample("log_theta", dist.Normal(loc, scale))
        with numpyro.plate("types", n_types, dim=-2):
            log_rho = numpyro.sample("log_rho", dist.Normal(-jnp.log(n_genes), 3.0))
    mu = jnp.exp(log_lib[:, None] + log_rho[cell_type])  # (cells, genes)
    with numpyro.plate("cells", n_cells, dim=-2), numpyro.plate("genes", n_genes):
        numpyro.sample("x", genjax.NegativeBinomial(mu, jnp.exp(log_theta)), obs=x)


def fit_svi(key, model, steps: int, lr: float, *args, **kwargs):
    """SVI with a mean-field normal guide (AutoNormal) and Adam; returns (guide, params, losses).

    ``args`` are arrays (traced), ``kwargs`` static settings of the model.

    ``svi.init`` and all ``steps`` updates run as one jitted ``lax.scan`` (``SVI.run`` does the same with a
    progress bar option, but initialises outside jit, which compiles many small eager operations).
    """
    guide = AutoNormal(model)
    svi = SVI(model, guide, numpyro.optim.Adam(lr), Trace_ELBO())

    @jax.jit
    def run(key, *args):
        def body(state, _):
            return svi.update(state, *args, **kwargs)

        state, losses = jax.lax.scan(body, svi.init(key, *args, **kwargs), length=steps)
        return svi.get_params(state), losses

    params, losses = run(key, *args)
    return guide, params, np.asarray(losses)


def log_theta_posterior(cfg: Config, key, data, pooled: bool):
    """Posterior 5%, 50%, 95% quantiles of log theta per gene, the hyperparameters, and the SVI losses."""
    args = (data["x"], data["log_lib"], data["cell_type"])
    if cfg.inference == "nuts" and pooled:
        mcmc = MCMC(NUTS(dispersion_model), num_warmup=cfg.nuts_warmup, num_samples=cfg.nuts_samples,
                    progress_bar=False)
        mcmc.run(key, *args, n_types=data["n_types"], pooled=True)
        s = mcmc.get_samples()
        q = np.quantile(np.asarray(s["log_theta"]), [0.05, 0.5, 0.95], axis=0)
        hyper = {k: float(np.median(np.asarray(s[k]))) for k in ("log_theta_loc", "log_theta_scale")}
        return q, hyper, None
    guide, params, losses = fit_svi(key, dispersion_model, cfg.svi_steps, cfg.lr, *args, n_types=data["n_types"],
                                    pooled=pooled)
    qs = guide.quantiles(params, [0.05, 0.5, 0.95])
    q = np.asarray(qs["log_theta"])
    hyper = {k: float(qs[k][1]) for k in ("log_theta_loc", "log_theta_scale") if k in qs}
    return q, hyper, losses


# ---------------------------------------------------------------------------------------------------------------
# 3. NB vs ZINB per gene on real counts


def gene_model(x, log_lib, *, zero_inflated: bool):
    """Per-gene NB (or ZINB) with a mean proportion, an inverse dispersion (and a zero-inflation logit) per gene."""
    n_cells, n_genes = x.shape
    with numpyro.plate("genes", n_genes):
        log_rho = numpyro.sample("log_rho", dist.Normal(-jnp.log(n_genes), 5.0))
        log_theta = numpyro.sample("log_theta", dist.Normal(0.0, 3.0))
        zi = numpyro.sample("zi_logits", dist.Normal(-3.0, 3.0)) if zero_inflated else None
    mu = jnp.exp(log_lib[:, None] + log_rho)
    theta = jnp.exp(log_theta)
    obs = (genjax.ZeroInflatedNegativeBinomial(mu, theta, zi) if zero_inflated
           else genjax.NegativeBinomial(mu, theta))
    with numpyro.plate("cells", n_cells, dim=-2), numpyro.plate("genes", n_genes):
        numpyro.sample("x", obs, obs=x)


@jax.jit
def predicted_zero_fraction(med, log_lib):
    """Mean over cells of ``P(x = 0)`` per gene under the fitted (posterior median) NB or ZINB."""
    mu = jnp.exp(log_lib[:, None] + med["log_rho"])
    theta = jnp.exp(med["log_theta"])
    zeros = jnp.zeros_like(mu)
    if "zi_logits" in med:
        return jnp.exp(genjax.zinb_log_prob(zeros, mu, theta, med["zi_logits"])).mean(axis=0)
    return jnp.exp(genjax.nb_log_prob(zeros, mu, theta)).mean(axis=0)


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)
    key_hier, key_flat, key_nb, key_zinb = jax.random.split(jax.random.key(cfg.seed), 4)
    summary: dict = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend()}

    # 1. accuracy ------------------------------------------------------------------------------------------------
    thetas = np.logspace(-2, 8, 21)
    counts = np.array([0, 1, 3, 10, 30, 100, 1000], np.float64)
    acc = accuracy(thetas, 10.0, counts)
    summary["accuracy_max_rel_error"] = {k: float(v.max()) for k, v in acc.items()}
    print("float32 log-pmf, worst |error| / (1 + |log-pmf|) (mu = 10, theta 1e-2..1e8): "
          + ", ".join(f"{k} {v.max():.2g}" for k, v in acc.items()))

    # 2. hierarchical dispersion on synthetic counts with known theta ---------------------------------------------
    adata = genjax.datasets.synthetic_counts(cfg.n_cells, cfg.n_genes, cfg.n_cell_types,
                                             library_size=cfg.library_size, theta_median=cfg.theta_median,
                                             theta_sd=cfg.theta_sd, sparse=False, seed=cfg.seed)
    x = np.asarray(adata.X, np.float32)
    keep = x.sum(axis=1) > 0
    data = {"x": jnp.asarray(x[keep]), "log_lib": jnp.asarray(np.log(x[keep].sum(axis=1))),
            "cell_type": jnp.asarray(adata.obs["cell_type"].cat.codes.to_numpy()[keep], jnp.int32),
            "n_types": cfg.n_cell_types}
    true_log_theta = np.log(adata.var["true_theta"].to_numpy())
    mean_expr = x.mean(axis=0)
    t0 = time.perf_counter()
    q_pool, hyper, losses_pool = log_theta_posterior(cfg, key_hier, data, pooled=True)
    t_pool = time.perf_counter() - t0
    q_flat, _, losses_flat = log_theta_posterior(dataclasses.replace(cfg, inference="svi"), key_flat, data,
                                                 pooled=False)
    rmse = {name: float(np.sqrt(np.mean((q[1] - true_log_theta) ** 2)))
            for name, q in (("hierarchical", q_pool), ("independent", q_flat))}
    coverage = float(np.mean((q_pool[0] <= true_log_theta) & (true_log_theta <= q_pool[2])))
    corr = float(np.corrcoef(q_pool[1], true_log_theta)[0, 1])
    # theta is identifiable only where counts are large enough to show over-dispersion (variance mu + mu^2 /
    # theta against Poisson's mu): report the genes with a mean count of at least 1 separately
    expressed = mean_expr >= 1.0
    corr_expr = float(np.corrcoef(q_pool[1][expressed], true_log_theta[expressed])[0, 1]) if expressed.sum() > 2 else float("nan")
    rmse_expr = {name: float(np.sqrt(np.mean((q[1][expressed] - true_log_theta[expressed]) ** 2)))
                 for name, q in (("hierarchical", q_pool), ("independent", q_flat))}
    summary["dispersion"] = {
        "inference": cfg.inference, "seconds": round(t_pool, 1),
        "log_theta_pearson_r": corr, "log_theta_rmse": rmse, "coverage_90": coverage,
        "expressed_genes": int(expressed.sum()), "log_theta_pearson_r_expressed": corr_expr,
        "log_theta_rmse_expressed": rmse_expr,
        "log_theta_loc": {"posterior": hyper.get("log_theta_loc"), "truth": float(np.log(cfg.theta_median))},
        "log_theta_scale": {"posterior": hyper.get("log_theta_scale"), "truth": cfg.theta_sd},
    }
    print(f"hierarchical dispersion ({cfg.inference}, {t_pool:.1f} s): {int(expressed.sum())} genes with mean count "
          f">= 1: r(log theta, truth) {corr_expr:.3f}, RMSE hierarchical {rmse_expr['hierarchical']:.3f} vs "
          f"independent {rmse_expr['independent']:.3f}; all {len(expressed)} genes: r {corr:.3f}, RMSE "
          f"hierarchical {rmse['hierarchical']:.3f} vs independent {rmse['independent']:.3f}, 90% interval "
          f"coverage {coverage:.2f}; loc {hyper.get('log_theta_loc', float('nan')):.3f} (truth "
          f"{np.log(cfg.theta_median):.3f}), scale {hyper.get('log_theta_scale', float('nan')):.3f} (truth "
          f"{cfg.theta_sd})")

    # 3. NB vs ZINB on one PBMC3k cell type ----------------------------------------------------------------------
    pbmc = genjax.datasets.pbmc3k()
    cells = pbmc[pbmc.obs["cell_type"] == cfg.cell_type]
    X = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    log_lib = np.log(X.sum(axis=1))  # library over all genes
    genes = np.argsort(-X.mean(axis=0))[: cfg.real_genes]
    xr = jnp.asarray(X[:, genes], jnp.float32)
    fits = {}
    for name, zi, k in (("NB", False, key_nb), ("ZINB", True, key_zinb)):
        guide, params, losses = fit_svi(k, gene_model, cfg.svi_steps, cfg.lr, xr, jnp.asarray(log_lib),
                                        zero_inflated=zi)
        med = guide.median(params)
        zero = predicted_zero_fraction(med, jnp.asarray(log_lib))
        tail = max(1, len(losses) // 10)
        fits[name] = {"losses": losses, "elbo_per_entry": -float(losses[-tail:].mean()) / xr.size,
                      "zero_fraction": np.asarray(zero),
                      "gate": np.asarray(jax.nn.sigmoid(med["zi_logits"])) if zi else None}
    observed_zero = np.asarray((xr == 0).mean(axis=0))
    zero_err = {n: float(np.abs(f["zero_fraction"] - observed_zero).mean()) for n, f in fits.items()}
    gate = fits["ZINB"]["gate"]
    summary["zinb_vs_nb"] = {
        "cell_type": cfg.cell_type, "cells": int(xr.shape[0]), "genes": int(xr.shape[1]),
        "elbo_per_entry": {n: f["elbo_per_entry"] for n, f in fits.items()},
        "zero_fraction_mean_abs_error": zero_err,
        "zinb_gate_median": float(np.median(gate)), "zinb_genes_gate_above_0.1": int(np.sum(gate > 0.1)),
    }
    print(f"NB vs ZINB on {xr.shape[0]} {cfg.cell_type} x {xr.shape[1]} genes: ELBO per entry NB "
          f"{fits['NB']['elbo_per_entry']:.4f}, ZINB {fits['ZINB']['elbo_per_entry']:.4f}; zero-fraction error NB "
          f"{zero_err['NB']:.4f}, ZINB {zero_err['ZINB']:.4f}; median ZINB gate {np.median(gate):.3g}")

    figures = [
        plot_accuracy(out / "accuracy.png", thetas, acc),
        plot_dispersion(out / "dispersion.png", true_log_theta, q_pool, q_flat, mean_expr, summary, cfg),
        plot_zinb(out / "zinb.png", observed_zero, fits, cfg),
        plot_svi(out / "svi.png", {"hierarchical": losses_pool, "independent": losses_flat,
                                   "PBMC NB": fits["NB"]["losses"], "PBMC ZINB": fits["ZINB"]["losses"]}),
    ]
    return finish_run(out, summary, figures, "Likelihoods: genjax NB / ZINB in numpyro models", t_start)


# ---------------------------------------------------------------------------------------------------------------
# figures


def plot_accuracy(path, thetas, acc):
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for (name, err), marker in zip(acc.items(), "os", strict=False):
        ax.loglog(thetas, np.maximum(err, 1e-9), marker + "-", label=name)  # 1e-9: exact zeros drawn
    ax.axhline(1e-4, color="0.5", ls=":", lw=1)
    ax.set_xlabel("theta (inverse dispersion)")
    ax.set_ylabel("worst |error| / (1 + |log-pmf|), float32")
    ax.set_title("NB log-pmf accuracy, mu = 10, counts 0..1000")
    ax.legend()
    return save_figure(fig, path)


def plot_dispersion(path, truth, q_pool, q_flat, mean_expr, summary, cfg):
    fig = new_figure(figsize=(15, 4.5))
    axes = fig.subplots(1, 3)
    lo, hi = truth.min() - 1, truth.max() + 1
    for ax, (label, q) in zip(axes[:2], ((f"hierarchical ({cfg.inference})", q_pool), ("independent (SVI)", q_flat)),
                              strict=True):
        ax.errorbar(truth, q[1], yerr=[q[1] - q[0], q[2] - q[1]], fmt="o", ms=3, alpha=0.5, elinewidth=0.6)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("true log theta")
        ax.set_ylabel("posterior median, 90% interval")
        name = label.split()[0]
        ax.set_title(f"{label}: RMSE {summary['dispersion']['log_theta_rmse'][name]:.3f}")
    ax = axes[2]
    ax.scatter(mean_expr, np.abs(q_flat[1] - truth), s=8, alpha=0.6, label="independent")
    ax.scatter(mean_expr, np.abs(q_pool[1] - truth), s=8, alpha=0.6, label="hierarchical")
    ax.set_xscale("log")
    ax.set_xlabel("mean count of the gene")
    ax.set_ylabel("|log theta error|")
    ax.set_title("pooling helps lowly expressed genes most")
    ax.legend()
    return save_figure(fig, path)


def plot_zinb(path, observed_zero, fits, cfg):
    fig = new_figure(figsize=(10, 4.5))
    axes = fig.subplots(1, 2)
    ax = axes[0]
    for name, f in fits.items():
        ax.scatter(observed_zero, f["zero_fraction"], s=8, alpha=0.6, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("observed zero fraction")
    ax.set_ylabel("predicted zero fraction")
    ax.set_title(f"PBMC3k {cfg.cell_type}: zeros per gene")
    ax.legend()
    ax = axes[1]
    ax.hist(fits["ZINB"]["gate"], bins=30, color="#dd8452")
    ax.set_xlabel("fitted zero-inflation probability sigmoid(zi_logits)")
    ax.set_ylabel("genes")
    ax.set_title("ZINB: extra zeros per gene")
    return save_figure(fig, path)


def plot_svi(path, losses):
    losses = {k: v for k, v in losses.items() if v is not None}
    fig = new_figure(figsize=(4 * len(losses), 3.4))
    axes = fig.subplots(1, len(losses), squeeze=False)[0]
    for ax, (name, v) in zip(axes, losses.items(), strict=True):
        ax.plot(v, lw=0.8)
        ax.set_yscale("log" if np.all(v > 0) else "linear")
        ax.set_xlabel("SVI step")
        ax.set_ylabel("-ELBO")
        ax.set_title(name)
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
