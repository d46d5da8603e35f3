"""Flow matching: the latent pipeline with a rectified-flow prior and classifier-free guidance by cell type.

``genjax.LatentGenerator(prior="flow")`` fits a count VAE (NB decoder) on PBMC3k, encodes the cells, and trains a
conditional velocity field by (rectified) flow matching on the standardised latents, dropping the cell type at
random (``cond_dropout``) so that the same network is also the unconditional field. Sampling integrates the flow
ODE from noise; classifier-free guidance mixes the two fields, ``v_null + w (v_cell_type - v_null)``.

The VAE decoder here does *not* see the cell type (``decoder_conditions=False``): the requested cell type reaches
the generated counts only through the guided prior, so the guidance weight ``w`` shows directly in how often a
classifier trained on real cells recognises the requested type (``label_accuracy``), against how close the cells are
to the real ones (energy distance, 5-NN two-sample accuracy), each beside the real-vs-real control.

Run (from the repository root)::

    python examples/flow_matching.py                           # defaults: a few minutes on 2 CPU cores
    python examples/flow_matching.py --priors flow,diffusion   # the diffusion prior beside it (one more fit)
    python examples/flow_matching.py --full                    # longer training
    python examples/flow_matching.py --smoke                   # a few steps (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/flow_matching``): guidance.png, evaluation_panel.png, latent_pca.png,
training.png, summary.json and summary.md.
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
    fit_latent_generator,
    load_pbmc3k,
    new_figure,
    split_by_cell_type,
    start_run,
)

Config = config_class(
    __file__,
    priors="flow",  # comma-separated: flow, diffusion
    max_cells=0,  # 0: all PBMC3k cells; else a stratified subsample
    n_genes=0,  # 0: all genes; else the most expressed ones
    test_fraction=0.2, n_latent=10, vae_epochs=60, vae_train_size=0.9, prior_steps=3000, prior_hidden=256,
    prior_blocks=3, cond_dropout=0.2, decoder_conditions=False,
    guidance="0,1,2,4",  # guidance weights swept at generation
    panel_guidance=2.0,  # weight of the evaluation panel
)

SMOKE = dict(max_cells=240, n_genes=60, n_latent=4, vae_epochs=2, vae_train_size=1.0, prior_steps=8,
             prior_hidden=16, prior_blocks=1, guidance="0,2", panel_guidance=2.0)
FULL = dict(vae_epochs=400, prior_steps=20000, guidance="0,0.5,1,1.5,2,3,4,6")


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__, check=check_config)


def check_config(cfg: Config) -> str | None:
    if cfg.panel_guidance not in weights(cfg):
        return f"--panel-guidance {cfg.panel_guidance} must be one of --guidance {cfg.guidance}"
    return None


def weights(cfg: Config) -> list[float]:
    return [float(w) for w in cfg.guidance.split(",")]


def load_data(cfg: Config):
    """PBMC3k, subsampled and gene-filtered per ``cfg``, cell types of >= 5 cells."""
    return load_pbmc3k(cfg.seed, cfg.max_cells, cfg.n_genes, min_type_cells=5)


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)
    adata = load_data(cfg)
    train, test = split_by_cell_type(adata, cfg.test_fraction, cfg.seed)
    test_labels = test.obs["cell_type"].astype(str).to_numpy()
    print(f"PBMC3k: {adata.n_obs} cells x {adata.n_vars} genes; {train.n_obs} training, {test.n_obs} held-out")
    summary: dict = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend(), "priors": {}}
    sweeps, panels, latents, history = {}, {}, {}, {}

    for prior in (s.strip() for s in cfg.priors.split(",")):
        t0 = time.perf_counter()
        gen = fit_latent_generator(train, prior=prior, seed=cfg.seed, n_latent=cfg.n_latent,
                                   vae_epochs=cfg.vae_epochs, vae_train_size=cfg.vae_train_size,
                                   prior_steps=cfg.prior_steps, prior_hidden=cfg.prior_hidden,
                                   prior_blocks=cfg.prior_blocks, decoder_conditions=cfg.decoder_conditions,
                                   cond_dropout=cfg.cond_dropout)
        t_fit = time.perf_counter() - t0
        history.update({f"{prior} {stage}": h for stage, h in gen.history.items() if h})
        sweep = {}
        for w in weights(cfg):
            t0 = time.perf_counter()
            generated = gen.generate(test.n_obs, seed=cfg.seed + 1, guidance=w, cell_type=test_labels)
            t_gen = time.perf_counter() - t0
            ev = genjax.metrics.evaluate(test, generated, condition_key="cell_type", control=train, seed=cfg.seed)
            sweep[w] = {m: {"generated": ev.value(m), "control": ev.value(m, which="control")}
                        for m in ("label_accuracy", "energy_distance", "knn_accuracy", "pearson_log_mean",
                                  "pearson_zero_frac")}
            sweep[w]["generate_seconds"] = round(t_gen, 1)
            if w == cfg.panel_guidance:
                panels[prior] = ev
            print(f"[{prior}, w = {w:g}] {test.n_obs} cells in {t_gen:.1f} s: label accuracy "
                  f"{ev.value('label_accuracy'):.3f} (control {ev.value('label_accuracy', which='control'):.3f}), "
                  f"energy distance {ev.value('energy_distance'):.3f} "
                  f"({ev.value('energy_distance', which='control'):.3f}), 5-NN accuracy "
                  f"{ev.value('knn_accuracy'):.3f} ({ev.value('knn_accuracy', which='control'):.3f})")
        sweeps[prior] = sweep
        # latents: the encoded training cells and prior samples for the same cell types, unguided and guided
        codes = gen.registry.encode_values(train.n_obs, cell_type=train.obs["cell_type"].astype(str).to_numpy())
        latents[prior] = {"encoded cells": gen.prior_data()}
        for w in (min(weights(cfg)), max(weights(cfg))):
            latents[prior][f"prior samples, w = {w:g}"] = gen.sample_latent(train.n_obs, seed=cfg.seed, guidance=w,
                                                                           cat=codes)
        summary["priors"][prior] = {"fit_seconds": round(t_fit, 1),
                                    "guidance": {f"{w:g}": v for w, v in sweep.items()}}
        print(f"[{prior}] VAE + prior fitted in {t_fit:.1f} s")

    first = next(iter(sweeps))
    figures = [plot_guidance(out / "guidance.png", sweeps)]
    genjax.plots.evaluation_panel(panels[first], path=out / "evaluation_panel.png")
    figures.append(out / "evaluation_panel.png")
    figures.append(plot_latents(out / "latent_pca.png", latents, train.obs["cell_type"]))
    genjax.plots.training_curves(history, keys=["loss"], path=out / "training.png")
    figures.append(out / "training.png")
    return finish_run(out, summary, figures, "Flow matching with classifier-free guidance by cell type (PBMC3k)",
                      t_start)


# ---------------------------------------------------------------------------------------------------------------
# figures


def plot_guidance(path, sweeps):
    metrics = (("label_accuracy", "label accuracy (higher: requested type)"),
               ("energy_distance", "energy distance (lower)"), ("knn_accuracy", "5-NN accuracy (0.5: real-like)"))
    fig = new_figure(figsize=(14, 4))
    axes = fig.subplots(1, len(metrics))
    for ax, (m, label) in zip(axes, metrics, strict=True):
        for prior, sweep in sweeps.items():
            ws = sorted(sweep)
            ax.plot(ws, [sweep[w][m]["generated"] for w in ws], "o-", label=f"{prior} prior")
        any_sweep = next(iter(sweeps.values()))
        ax.axhline(next(iter(any_sweep.values()))[m]["control"], color="0.4", ls="--", lw=1,
                   label="real-vs-real control")
        ax.set_xlabel("guidance weight w")
        ax.set_title(label)
        ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_latents(path, latents, cell_type):
    from matplotlib import colormaps

    cats = list(cell_type.cat.categories)
    values = cell_type.astype(str).to_numpy()
    rows = list(latents)
    cols = list(latents[rows[0]])
    fig = new_figure(figsize=(4.6 * len(cols), 4.2 * len(rows)))
    axes = fig.subplots(len(rows), len(cols), squeeze=False, sharex=True, sharey=True)
    for r, prior in enumerate(rows):
        ref = latents[prior]["encoded cells"]
        mean = ref.mean(axis=0)
        _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
        for c, name in enumerate(cols):
            ax = axes[r, c]
            pcs = (latents[prior][name] - mean) @ vt[:2].T
            for i, cat in enumerate(cats):
                m = values == cat
                ax.scatter(pcs[m, 0], pcs[m, 1], s=4, alpha=0.5, color=colormaps["tab10"](i % 10), label=cat,
                           rasterized=True)
            ax.set_title(f"{prior}: {name}", fontsize="medium")
            ax.set_xlabel("latent PC1")
            ax.set_ylabel("latent PC2")
    axes[0, -1].legend(fontsize="x-small", markerscale=3)
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
