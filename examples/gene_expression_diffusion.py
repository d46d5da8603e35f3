"""Gene-expression diffusion: both parts of the seed's notebook on genjax.

Part 1, log-normalised bulk data (the building blocks, step by step):
    toy bulk counts with tissue / disease / batch effects (``genjax.datasets.toy_bulk``) -> log1p(CPM)
    -> Gaussian VAE conditioned on tissue, disease and batch (``genjax.VAE(likelihood="gaussian")``)
    -> latent diffusion: a conditional score network trained by denoising score matching on a VP SDE
       (``genjax.fit_score_model``) -> 500-step reverse-SDE sampling per condition (``genjax.sample_reverse_sde``)
    -> decode (``vae.functions().decode`` / ``.sample``) -> PCA and gene-mean / variance plots.

Part 2, NB counts (the packaged pipeline):
    single-cell-like NB counts with cell types (``genjax.datasets.synthetic_counts``), 80/20 split
    -> ``genjax.LatentGenerator`` (VAE with an NB decoder + conditional latent diffusion + NB sampling of counts)
    -> generated cells per cell type -> the notebook's numbers (gene-mean correlation, variance correlation,
       sparsity) and ``genjax.metrics.evaluate`` beside a real-vs-real control -> the 2 x 3 evaluation panel
       (``genjax.plots.evaluation_panel``); optionally the same for the direct log1p-space baseline
       (``LatentGenerator(space="log1p")``, the notebook's "Solution 2").

Run (from the repository root)::

    python examples/gene_expression_diffusion.py                # defaults: a few minutes on 2 CPU cores
    python examples/gene_expression_diffusion.py --full         # the notebook's sizes (5000 cells x 500 genes)
    python examples/gene_expression_diffusion.py --smoke        # a few steps (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/gene_expression_diffusion``): part1_pca.png, part1_genes.png,
part2_evaluation_panel.png (and part2_evaluation_panel_log1p.png with the baseline), training.png,
summary.json and summary.md.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import genjax
from genjax.plots import save_figure

from common import (
    config_class,
    config_from_args,
    finish_run,
    fit_latent_generator,
    new_figure,
    split_by_cell_type,
    start_run,
)

PART1_CONDITIONS = ["tissue", "disease", "batch"]

Config = config_class(
    __file__,
    # part 1: toy bulk data, Gaussian VAE, latent VP-SDE diffusion, reverse-SDE sampling
    bulk_samples=1200, bulk_genes=200, vae_latent=16, vae_hidden=128, vae_epochs=150, score_hidden=256,
    score_blocks=3, score_steps=3000, sde_steps=500,
    # part 2: NB counts, LatentGenerator; baseline: also fit the direct log1p-space baseline
    n_cells=2500, n_genes=500, n_cell_types=5, library_size=2000.0, test_fraction=0.2, gen_latent=10,
    gen_epochs=100, prior_steps=3000, baseline=True,
    vae_train_size=0.9,  # fraction of the VAE's training data fitted; the rest validates each epoch
)

SMOKE = dict(bulk_samples=96, bulk_genes=30, vae_latent=4, vae_hidden=16, vae_epochs=2, score_hidden=16,
             score_blocks=1, score_steps=8, sde_steps=5, n_cells=150, n_genes=40, n_cell_types=3, gen_latent=4,
             gen_epochs=2, prior_steps=8, baseline=False, vae_train_size=1.0)
FULL = dict(bulk_samples=3000, bulk_genes=500, vae_epochs=300, score_steps=10000, n_cells=5000, n_genes=500,
            gen_epochs=200, prior_steps=10000)


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__)


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1])


# ---------------------------------------------------------------------------------------------------------------
# part 1


def part1(cfg: Config, key) -> dict:
    import anndata as ad

    key_score, key_sample, key_decode = jax.random.split(key, 3)
    bulk = genjax.datasets.toy_bulk(cfg.bulk_samples, cfg.bulk_genes, seed=cfg.seed)
    counts = np.asarray(bulk.X, np.float32)
    log_x = np.log1p(counts * (1e6 / counts.sum(axis=1, keepdims=True))).astype(np.float32)  # log1p(CPM)
    data = ad.AnnData(X=log_x, obs=bulk.obs[PART1_CONDITIONS].copy(), var=bulk.var[[]].copy())

    t0 = time.perf_counter()
    vae = genjax.VAE(data, likelihood="gaussian", conditions=PART1_CONDITIONS, n_latent=cfg.vae_latent,
                     n_hidden=cfg.vae_hidden, n_layers=2, dropout=0.0, seed=cfg.seed)
    vae.fit(max_epochs=cfg.vae_epochs, kl_warmup_epochs=max(1, cfg.vae_epochs // 3), train_size=cfg.vae_train_size,
            seed=cfg.seed, progress=False)
    z = vae.latent(data)
    vae_cond = vae.batch(data).cond  # a genjax.data.Condition: the samples' tissue, disease and batch codes
    cat = vae_cond.labels  # (samples, 3) int32
    t_vae = time.perf_counter() - t0

    # latent diffusion: standardise the latents, fit a conditional score model on a VP SDE
    t0 = time.perf_counter()
    shift, scale = z.mean(axis=0), z.std(axis=0) + 1e-6
    sde = genjax.VPSDE(beta_min=0.1, beta_max=20.0)
    num_classes = tuple(len(c) for c in vae.conditions.values())
    net = genjax.nn.FieldNet(n_hidden=cfg.score_hidden, n_layers=cfg.score_blocks, n_categories=num_classes)
    cond = genjax.nn.Condition(labels=jnp.asarray(cat))
    fit = genjax.fit_score_model((z - shift) / scale, sde, net, cond=cond, cond_dropout=0.1,
                                 optimizer=optax.adam(optax.cosine_decay_schedule(1e-3, cfg.score_steps, 0.1)),
                                 max_steps=cfg.score_steps, batch_size=128, ema_decay=0.999,
                                 steps_per_dispatch=min(cfg.score_steps, 250), seed=cfg.seed, progress=False)
    t_score = time.perf_counter() - t0

    # one generated sample per real sample, with the same conditions: 500-step Euler-Maruyama reverse SDE
    t0 = time.perf_counter()
    z_gen, nfe = genjax.sample_reverse_sde(key_sample, fit.score_fn, sde, z.shape, n_steps=cfg.sde_steps, cond=cond)
    z_gen = np.asarray(z_gen) * scale + shift
    fns = vae.functions()
    decode = jax.jit(lambda p, z, c, k: fns.sample(k, fns.decode(p, z, jnp.zeros(z.shape[0]), c)))
    x_gen = np.asarray(decode(vae.params, jnp.asarray(z_gen), jax.tree.map(jnp.asarray, vae_cond), key_decode))
    t_sample = time.perf_counter() - t0

    mean_r = pearson(log_x.mean(axis=0), x_gen.mean(axis=0))
    var_r = pearson(log_x.var(axis=0), x_gen.var(axis=0))
    # per condition: correlation of the mean profile of each tissue x disease group with its real counterpart
    groups = data.obs["tissue"].astype(str) + " / " + data.obs["disease"].astype(str)
    group_r = {g: pearson(log_x[(groups == g).to_numpy()].mean(0), x_gen[(groups == g).to_numpy()].mean(0))
               for g in sorted(groups.unique())}
    print(f"[part 1] {cfg.bulk_samples} bulk samples x {cfg.bulk_genes} genes: VAE {t_vae:.1f} s, score model "
          f"{t_score:.1f} s, {cfg.sde_steps}-step reverse SDE + decode {t_sample:.1f} s (NFE {int(nfe)})")
    print(f"[part 1] gene-mean correlation {mean_r:.4f}, variance correlation {var_r:.4f}, per tissue/disease "
          f"mean-profile correlation min {min(group_r.values()):.4f}")
    return {
        "summary": {"gene_mean_correlation": mean_r, "gene_variance_correlation": var_r,
                    "group_mean_correlation_min": min(group_r.values()),
                    "group_mean_correlation": group_r, "vae_seconds": round(t_vae, 1),
                    "score_seconds": round(t_score, 1), "sample_seconds": round(t_sample, 1), "nfe": int(nfe)},
        "real": log_x, "generated": x_gen, "obs": data.obs,
        "history": {"part 1 VAE": vae.history, "part 1 score": fit.fit.history},
    }


# ---------------------------------------------------------------------------------------------------------------
# part 2


def notebook_numbers(real, generated) -> dict:
    """The numbers the seed notebook prints: correlations over genes of the mean and the variance of log1p
    normalised counts (``genjax.metrics.gene_statistics``), and the overall fraction of zero counts."""
    r, g = genjax.metrics.gene_statistics(real), genjax.metrics.gene_statistics(generated)

    def zeros(x):
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        return float(np.mean(x == 0))

    return {"gene_mean_correlation": pearson(r["log_mean"], g["log_mean"]),
            "gene_variance_correlation": pearson(r["log_var"], g["log_var"]),
            "sparsity_real": zeros(real), "sparsity_generated": zeros(generated)}


def part2(cfg: Config) -> dict:
    adata = genjax.datasets.synthetic_counts(cfg.n_cells, cfg.n_genes, cfg.n_cell_types,
                                             library_size=cfg.library_size, seed=cfg.seed)
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    train, test = split_by_cell_type(adata, cfg.test_fraction, cfg.seed)
    spaces = ["latent", "log1p"] if cfg.baseline else ["latent"]
    results, history = {}, {}
    for space in spaces:
        t0 = time.perf_counter()
        gen = fit_latent_generator(train, prior="diffusion", space=space, seed=cfg.seed, n_latent=cfg.gen_latent,
                                   vae_epochs=cfg.gen_epochs, vae_train_size=cfg.vae_train_size,
                                   prior_steps=cfg.prior_steps, prior_hidden=cfg.score_hidden,
                                   prior_blocks=cfg.score_blocks)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        generated = gen.generate(test.n_obs, seed=cfg.seed + 1, cell_type=test.obs["cell_type"].astype(str).to_numpy())
        t_gen = time.perf_counter() - t0
        ev = genjax.metrics.evaluate(test, generated, condition_key="cell_type", control=train, seed=cfg.seed)
        numbers = notebook_numbers(test.X, generated.X)
        control_numbers = notebook_numbers(test.X, train.X)
        metrics = {m: {"generated": ev.value(m), "control": ev.value(m, which="control")}
                   for m in ("energy_distance", "mmd_rbf", "w2_sinkhorn", "knn_accuracy", "label_accuracy",
                             "pearson_log_mean", "pearson_log_var", "pearson_zero_frac")}
        results[space] = {"evaluation": ev, "summary": {
            "fit_seconds": round(t_fit, 1), "generate_seconds": round(t_gen, 1), "notebook": numbers,
            "notebook_control": control_numbers, "metrics": metrics}}
        history.update({f"part 2 {space}: {k}": v for k, v in gen.history.items() if v})
        print(f"[part 2, {space}] fit {t_fit:.1f} s, generate {test.n_obs} cells {t_gen:.1f} s: gene-mean "
              f"correlation {numbers['gene_mean_correlation']:.4f} (control {control_numbers['gene_mean_correlation']:.4f}), "
              f"variance correlation {numbers['gene_variance_correlation']:.4f} "
              f"({control_numbers['gene_variance_correlation']:.4f}), sparsity real {numbers['sparsity_real']:.3f} / "
              f"generated {numbers['sparsity_generated']:.3f}")
        print(f"[part 2, {space}] genjax metrics, generated (control): "
              + ", ".join(f"{m} {v['generated']:.3f} ({v['control']:.3f})" for m, v in metrics.items()))
    return {"results": results, "history": history, "cells": (int(train.n_obs), int(test.n_obs))}


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)
    p1 = part1(cfg, jax.random.key(cfg.seed))
    p2 = part2(cfg)

    figures = [plot_part1_pca(out / "part1_pca.png", p1), plot_part1_genes(out / "part1_genes.png", p1)]
    for space, res in p2["results"].items():
        suffix = "" if space == "latent" else f"_{space}"
        path = out / f"part2_evaluation_panel{suffix}.png"
        genjax.plots.evaluation_panel(res["evaluation"], path=path)
        figures.append(path)
    history = {**p1["history"], **p2["history"]}
    genjax.plots.training_curves(history, keys=["loss"], path=out / "training.png")
    figures.append(out / "training.png")
    summary = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend(), "part1": p1["summary"],
               "part2": {space: r["summary"] for space, r in p2["results"].items()},
               "part2_cells": {"train": p2["cells"][0], "heldout": p2["cells"][1]}}
    return finish_run(out, summary, figures, "Gene-expression diffusion (seed notebook, parts 1 and 2)", t_start)


# ---------------------------------------------------------------------------------------------------------------
# figures


def plot_part1_pca(path, p1):
    """PCA fitted on the real samples; real and generated coloured by tissue and by disease."""
    from matplotlib import colormaps

    real, gen, obs = p1["real"], p1["generated"], p1["obs"]
    mean = real.mean(axis=0)
    _, s, vt = np.linalg.svd(real - mean, full_matrices=False)
    ratio = s**2 / np.sum(s**2)
    fig = new_figure(figsize=(11, 9))
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    for row, key in enumerate(("tissue", "disease")):
        cats = list(obs[key].cat.categories)
        values = obs[key].astype(str).to_numpy()
        for col, (name, x) in enumerate((("real", real), ("generated", gen))):
            ax = axes[row, col]
            pcs = (x - mean) @ vt[:2].T
            for i, c in enumerate(cats):
                m = values == c
                ax.scatter(pcs[m, 0], pcs[m, 1], s=6, alpha=0.6, color=colormaps["tab10"](i), label=c,
                           rasterized=True)
            ax.set_title(f"{name}, by {key}")
            ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}%)")
            ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}%)")
            ax.legend(fontsize="x-small", markerscale=2)
    fig.suptitle("part 1: log1p(CPM) of toy bulk samples, PCA fitted on the real samples")
    return save_figure(fig, path)


def plot_part1_genes(path, p1):
    real, gen = p1["real"], p1["generated"]
    s = p1["summary"]
    fig = new_figure(figsize=(10, 4.5))
    axes = fig.subplots(1, 2)
    for ax, (label, a, b, r) in zip(axes, (("gene mean", real.mean(0), gen.mean(0), s["gene_mean_correlation"]),
                                           ("gene variance", real.var(0), gen.var(0),
                                            s["gene_variance_correlation"])), strict=True):
        ax.scatter(a, b, s=8, alpha=0.6)
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"real {label} of log1p(CPM)")
        ax.set_ylabel(f"generated {label}")
        ax.set_title(f"{label}: r = {r:.4f}")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
