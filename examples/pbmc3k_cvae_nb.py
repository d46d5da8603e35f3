"""PBMC3k conditional VAE with NB and ZINB decoders: latents by cell type, counterfactual decoding,
reconstruction and generation metrics (the seed's PBMC3k cVAE-NB tutorial on genjax).

1. Split the bundled PBMC3k (2638 cells x 2767 genes, 8 cell types) 80/20 stratified by cell type.
2. Train ``genjax.VAE(likelihood="nb" | "zinb", conditions=["cell_type"], conditional_prior=True)`` on the 80%.
3. Held-out evidence (ELBO and the importance-weighted bound), reconstruction (posterior-predictive gene means,
   variances and zero fractions against the observed ones), the latent space by cell type.
4. Counterfactual decoding: encode held-out cells of one type, decode them as another type
   (``model.counterfactual``), compare with the real cells of both types.
5. Generation by cell type (``model.generate``) evaluated with ``genjax.metrics.evaluate`` against the held-out
   cells, beside the real-vs-real control (the training cells).

Run (from the repository root)::

    python examples/pbmc3k_cvae_nb.py            # defaults: a few minutes on 2 CPU cores
    python examples/pbmc3k_cvae_nb.py --full     # scvi-tools' epoch budget, more importance samples
    python examples/pbmc3k_cvae_nb.py --smoke    # a few steps on a subset (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/pbmc3k_cvae_nb``): latent.png, reconstruction.png,
counterfactual.png, evaluation_panel.png, training.png, summary.json and summary.md.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

import genjax
from genjax.plots import save_figure

from common import (
    config_class,
    config_from_args,
    finish_run,
    load_pbmc3k,
    new_figure,
    split_by_cell_type,
    start_run,
)

MARKERS = ["MS4A1", "CD79A", "LYZ", "CD14", "S100A8", "CST3", "FCGR3A", "NKG7", "GNLY", "IL7R", "CD8A", "FCER1A",
           "PPBP"]

Config = config_class(
    __file__,
    likelihoods="nb,zinb",
    # max_cells: 0 all cells, else a stratified subsample (smoke runs); n_genes: 0 all genes, else the most
    # expressed ones (markers always kept)
    max_cells=0, n_genes=0, test_fraction=0.2,
    # model and training (scvi-tools' defaults, but a shorter run and KL warm-up); train_size: the fraction of the
    # training cells fitted, the rest validates each epoch
    n_latent=10, n_hidden=128, dropout=0.1, epochs=60, kl_warmup_epochs=20, batch_size=128, train_size=0.9,
    iwae_samples=50,
    # counterfactual: encode cells of `source`, decode them as `target`
    source="CD14+ Monocytes", target="B cells",
)

SMOKE = dict(likelihoods="nb", max_cells=240, n_genes=60, n_latent=4, n_hidden=16, epochs=2,
             kl_warmup_epochs=1, batch_size=64, train_size=1.0, iwae_samples=2)
FULL = dict(epochs=400, kl_warmup_epochs=400, iwae_samples=200)


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__)


def load_data(cfg: Config):
    """PBMC3k, subsampled and gene-filtered per ``cfg`` (the markers always kept), cell types of >= 5 cells."""
    return load_pbmc3k(cfg.seed, cfg.max_cells, cfg.n_genes, keep_genes=MARKERS, min_type_cells=5)


def log_cp10k_means(X) -> np.ndarray:
    """Per-gene mean of log1p(counts per 10k), (genes,)."""
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    return np.log1p(X * (1e4 / np.maximum(X.sum(axis=1, keepdims=True), 1))).mean(axis=0)


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)
    adata = load_data(cfg)
    train, test = split_by_cell_type(adata, cfg.test_fraction, cfg.seed)
    print(f"PBMC3k: {adata.n_obs} cells x {adata.n_vars} genes; {train.n_obs} training, {test.n_obs} held-out")
    summary: dict = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend(),
                     "cells": int(adata.n_obs), "genes": int(adata.n_vars), "models": {}}
    real_stats = genjax.metrics.gene_statistics(test.X)
    models, latents, recon, evaluations = {}, {}, {}, {}

    for likelihood in (s.strip() for s in cfg.likelihoods.split(",")):
        t0 = time.perf_counter()
        model = genjax.VAE(train, likelihood=likelihood, conditions=["cell_type"], conditional_prior=True,
                           n_latent=cfg.n_latent, n_hidden=cfg.n_hidden, dropout=cfg.dropout, seed=cfg.seed)
        model.fit(max_epochs=cfg.epochs, batch_size=cfg.batch_size, kl_warmup_epochs=cfg.kl_warmup_epochs,
                  train_size=cfg.train_size, seed=cfg.seed, progress=False)
        train_seconds = time.perf_counter() - t0
        models[likelihood] = model
        # held-out evidence and reconstruction
        elbo = model.elbo(test, seed=cfg.seed)
        iwae = model.marginal_ll(test, n_samples=cfg.iwae_samples, seed=cfg.seed)
        predicted = model.posterior_predictive(test, n_samples=1, seed=cfg.seed)[0]
        pred_stats = genjax.metrics.gene_statistics(predicted)
        rec = {stat: genjax.metrics.pearson(real_stats[stat], pred_stats[stat])
               for stat in ("log_mean", "log_var", "zero_frac")}
        recon[likelihood] = pred_stats
        latents[likelihood] = (model.latent(train), model.latent(test))
        # generation by cell type, as many cells per type as held out
        generated = model.generate(test.n_obs, seed=cfg.seed + 1, cell_type=test.obs["cell_type"].astype(str).to_numpy())
        ev = genjax.metrics.evaluate(test, generated, condition_key="cell_type", control=train, seed=cfg.seed)
        evaluations[likelihood] = ev
        summary["models"][likelihood] = {
            "train_seconds": round(train_seconds, 1), "epochs": len(model.history),
            "heldout_elbo": elbo, "heldout_iwae": iwae,
            "reconstruction_pearson": rec,
            "generation": {m: {"generated": ev.value(m), "control": ev.value(m, which="control")}
                           for m in ("energy_distance", "knn_accuracy", "label_accuracy", "pearson_log_mean",
                                     "pearson_log_var", "pearson_zero_frac")},
        }
        print(f"[{likelihood}] {len(model.history)} epochs in {train_seconds:.1f} s; held-out ELBO {elbo:.1f}, "
              f"IWAE({cfg.iwae_samples}) {iwae:.1f} nats/cell; reconstruction r(log mean) {rec['log_mean']:.3f}, "
              f"r(log var) {rec['log_var']:.3f}, r(zero frac) {rec['zero_frac']:.3f}")
        print(f"[{likelihood}] generation by cell type vs held-out (control: training cells): energy distance "
              f"{ev.value('energy_distance'):.3f} ({ev.value('energy_distance', which='control'):.3f}), 5-NN "
              f"accuracy {ev.value('knn_accuracy'):.3f} ({ev.value('knn_accuracy', which='control'):.3f}), label "
              f"accuracy {ev.value('label_accuracy'):.3f} ({ev.value('label_accuracy', which='control'):.3f})")

    # counterfactual decoding with the first model: source cells decoded as the target type ---------------------
    first = next(iter(models))
    model = models[first]
    test_labels = test.obs["cell_type"].astype(str).to_numpy()
    source, target = cfg.source, cfg.target
    if source not in test_labels or target not in test_labels:
        raise ValueError(f"--source {source!r} / --target {target!r} must be cell types of the held-out cells: "
                         f"{sorted(set(test_labels))}")
    src = test[test_labels == source].copy()
    cf = model.counterfactual(src, seed=cfg.seed, cell_type=target)
    profile = {
        f"real {source}": log_cp10k_means(src.X),
        f"{source} decoded as {target}": log_cp10k_means(cf.X),  # sampled counts, like the real cells
        f"real {target}": log_cp10k_means(test[test_labels == target].X),
    }
    names = list(profile)
    r_before = genjax.metrics.pearson(profile[names[0]], profile[names[2]])
    r_after = genjax.metrics.pearson(profile[names[1]], profile[names[2]])
    r_source = genjax.metrics.pearson(profile[names[1]], profile[names[0]])
    summary["counterfactual"] = {"model": first, "source": source, "target": target, "cells": int(src.n_obs),
                                 "r_source_vs_target": r_before, "r_counterfactual_vs_target": r_after,
                                 "r_counterfactual_vs_source": r_source}
    print(f"counterfactual ({first}): {src.n_obs} {source} cells decoded as {target}: r(log mean profile, real "
          f"{target}) {r_after:.3f} (real {source}: {r_before:.3f}; vs real {source}: {r_source:.3f})")

    history = {lk: m.history for lk, m in models.items()}
    figures = [
        plot_latent(out / "latent.png", latents, train, test),
        plot_reconstruction(out / "reconstruction.png", real_stats, recon, summary),
        plot_counterfactual(out / "counterfactual.png", profile, list(adata.var_names)),
    ]
    genjax.plots.evaluation_panel(evaluations[first], path=out / "evaluation_panel.png")
    genjax.plots.training_curves(history, keys=["loss", "elbo"], path=out / "training.png")
    figures += [out / "evaluation_panel.png", out / "training.png"]
    return finish_run(out, summary, figures, "PBMC3k conditional VAE with NB / ZINB decoders", t_start)


# ---------------------------------------------------------------------------------------------------------------
# figures


def _colors(categories):
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {c: cmap(i % 10) for i, c in enumerate(categories)}


def plot_latent(path, latents, train, test):
    """First two principal components of the posterior means, by cell type (PCA fitted on training cells)."""
    cats = list(train.obs["cell_type"].cat.categories)
    colors = _colors(cats)
    fig = new_figure(figsize=(6.5 * len(latents), 5))
    axes = fig.subplots(1, len(latents), squeeze=False)[0]
    for ax, (lk, (z_train, z_test)) in zip(axes, latents.items(), strict=True):
        mean = z_train.mean(axis=0)
        _, _, vt = np.linalg.svd(z_train - mean, full_matrices=False)
        for which, z, labels, marker in (("train", z_train, train.obs["cell_type"], "."),
                                         ("held-out", z_test, test.obs["cell_type"], "x")):
            pcs = (z - mean) @ vt[:2].T
            labels = labels.astype(str).to_numpy()
            for c in cats:
                m = labels == c
                ax.scatter(pcs[m, 0], pcs[m, 1], s=6 if marker == "." else 10, marker=marker, color=colors[c],
                           alpha=0.5, label=c if which == "train" else None, rasterized=True)
        ax.set_xlabel("latent PC1")
        ax.set_ylabel("latent PC2")
        ax.set_title(f"{lk.upper()} cVAE: posterior means (dots: train, x: held-out)")
    axes[-1].legend(markerscale=3, fontsize="x-small", loc="best")
    return save_figure(fig, path)


def plot_reconstruction(path, real_stats, recon, summary):
    stats = (("log_mean", "gene mean (log1p)"), ("log_var", "gene variance (log1p)"), ("zero_frac", "zero fraction"))
    fig = new_figure(figsize=(14, 4.2 * len(recon)))
    axes = fig.subplots(len(recon), 3, squeeze=False)
    for row, (lk, pred) in enumerate(recon.items()):
        for col, (stat, label) in enumerate(stats):
            ax = axes[row, col]
            ax.scatter(real_stats[stat], pred[stat], s=4, alpha=0.5, rasterized=True)
            lo = min(real_stats[stat].min(), pred[stat].min())
            hi = max(real_stats[stat].max(), pred[stat].max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
            r = summary["models"][lk]["reconstruction_pearson"][stat]
            ax.set_title(f"{lk.upper()}: {label}, r = {r:.3f}")
            ax.set_xlabel("held-out cells")
            ax.set_ylabel("posterior predictive")
    return save_figure(fig, path)


def plot_counterfactual(path, profile, genes):
    idx = [genes.index(g) for g in MARKERS if g in genes]
    names = list(profile)
    fig = new_figure(figsize=(13, 4.5))
    axes = fig.subplots(1, 2, width_ratios=[2, 1])
    ax = axes[0]
    width = 0.8 / len(names)
    for j, (name, color) in enumerate(zip(names, ("#4c72b0", "#dd8452", "#55a868"), strict=True)):
        ax.bar(np.arange(len(idx)) + (j - 1) * width, profile[name][idx], width, label=name, color=color)
    ax.set_xticks(np.arange(len(idx)), [genes[i] for i in idx], rotation=45)
    ax.set_ylabel("mean log1p(counts per 10k)")
    ax.set_title("marker genes")
    ax.legend(fontsize="small")
    ax = axes[1]
    ax.scatter(profile[names[2]], profile[names[0]], s=4, alpha=0.4, label=names[0], color="#4c72b0")
    ax.scatter(profile[names[2]], profile[names[1]], s=4, alpha=0.4, label=names[1], color="#dd8452")
    hi = max(v.max() for v in profile.values())
    ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.set_xlabel(f"{names[2]}: mean log1p(CP10k) per gene")
    ax.set_ylabel("mean log1p(CP10k) per gene")
    ax.set_title("all genes")
    ax.legend(fontsize="x-small", markerscale=3)
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
