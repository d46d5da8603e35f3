"""Hybrid model: a mean predictor wrapped in a generative residual model, with calibrated per-gene intervals.

``genjax.HybridModel`` keeps a predictor for the mean (here the mean-delta baseline: the held-out type's controls
plus the other types' average stimulated - control shift) and wraps it in a count VAE plus a latent flow
conditioned on the condition and on the predicted profile, so a prediction comes with count cells and intervals.
The held-out condition (Kang 2018: one cell type's IFN-beta-stimulated cells; without the Kang file, the bundled
McFaline 2023 knockouts: one knockout in one glioblastoma line) is never seen in training; every figure is on its
real cells (the test split), beside "the predictor + an NB spread with dispersions fitted on the controls" and
"no change" (the controls themselves), in the same run.

Calibration of count forecasts is measured the way discrete forecasts are: the randomised PIT of each held-out
count under each method's predictive distribution (uniform when calibrated), on expressed genes.

Run (from the repository root)::

    python examples/hybrid_uncertainty.py            # Kang CD14 monocytes: a few minutes on 2 CPU cores
    python examples/hybrid_uncertainty.py --smoke    # tiny (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/hybrid_uncertainty``): reliability.png (observed against nominal
coverage of central intervals, per method), coverage.png (histogram of per-gene coverage of the 90% interval with
the binomial band), summary.json and summary.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anndata as ad
import jax
import numpy as np

import genjax
from genjax.plots import save_figure

from common import config_class, config_from_args, finish_run, new_figure, start_run

SHARED_KANG = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kang2018_ifnb.h5ad"

Config = config_class(
    __file__,
    kang=str(SHARED_KANG),  # Kang 2018 h5ad (raw counts); "" or a missing file: McFaline instead
    kang_type="CD14 Mono",  # held-out type (its STIM arm)
    n_top_genes=2000,  # seurat_v3 HVGs of Kang
    vae_epochs=100,
    prior_steps=3000,
    cells=2000,  # predicted cells per method
    calibration_conditions=40,  # training conditions the cell-level intervals are calibrated on
    calibration_cells=500,  # sampled cells per calibration condition
    max_cells=0,  # 0: all cells; else a seeded subsample (the smoke test)
)

SMOKE = dict(kang="", vae_epochs=2, prior_steps=20, cells=200, calibration_conditions=4, calibration_cells=100,
             max_cells=900)
FULL = dict(vae_epochs=200, prior_steps=6000)


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__)


def _counts(adata) -> np.ndarray:
    x = adata.X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float64)


def load_task(cfg: Config):
    """(training AnnData, held-out cells, their controls, condition keys, perturbation key, control, condition)."""
    if cfg.kang and Path(cfg.kang).is_file():
        adata = ad.read_h5ad(cfg.kang)
        genjax.data.highly_variable_genes(adata, n_top_genes=cfg.n_top_genes, subset=True)
        keys, pkey, control, cov = ["seurat_annotations", "stim"], "stim", "CTRL", "seurat_annotations"
        target = {cov: cfg.kang_type, pkey: "STIM"}
    else:
        adata = genjax.datasets.perturbench_devel("mcfaline23")
        keys, pkey, control, cov = ["cell_type", "condition"], "condition", "control", "cell_type"
        labels = adata.obs[pkey].astype(str)
        ko = labels[labels != control].value_counts().index[0]
        target = {cov: sorted(adata.obs[cov].astype(str).unique())[0], pkey: ko}
    if cfg.max_cells and adata.n_obs > cfg.max_cells:
        rng = np.random.default_rng(cfg.seed)
        held = np.flatnonzero((adata.obs[cov].astype(str) == target[cov]).to_numpy()
                              & (adata.obs[pkey].astype(str) == target[pkey]).to_numpy())
        rest = np.setdiff1d(np.arange(adata.n_obs), held)
        keep = np.sort(np.concatenate([held, rng.choice(rest, cfg.max_cells - len(held), replace=False)]))
        adata = adata[keep].copy()
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    is_cov = (adata.obs[cov].astype(str) == target[cov]).to_numpy()
    held = is_cov & (adata.obs[pkey].astype(str) == target[pkey]).to_numpy()
    controls = is_cov & (adata.obs[pkey].astype(str) == control).to_numpy()
    return adata[~held].copy(), adata[held].copy(), adata[controls].copy(), keys, pkey, control, target


def nb_with_control_dispersion(predicted, controls, n, seed):
    """Cells from NB(mean = expm1(predicted) x a control's library / 1e4, the gene's control dispersion)."""
    rng = np.random.default_rng(seed)
    mu_c, var_c = controls.mean(0), controls.var(0)
    theta = np.clip(np.where(var_c > mu_c, mu_c**2 / np.maximum(var_c - mu_c, 1e-8), 1e4), 1e-3, 1e4)
    libs = rng.choice(controls.sum(1), n)
    mu = np.expm1(np.maximum(predicted, 0.0))[None, :] * libs[:, None] / 1e4
    return rng.negative_binomial(theta[None, :], theta[None, :] / (theta[None, :] + mu)).astype(np.float64)


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)
    train, test, src, keys, pkey, control, target = load_task(cfg)
    print(f"held out {target}: {test.n_obs} cells; training {train.n_obs} cells x {train.n_vars} genes", flush=True)
    hm = genjax.HybridModel(train, "mean_delta", keys, perturbation_key=pkey, control=control, seed=cfg.seed)
    hm.fit(max_epochs=cfg.vae_epochs, prior_steps=cfg.prior_steps, seed=cfg.seed, progress=False, calibrate=False)
    hm.calibrate(train, n=cfg.calibration_cells, levels=(0.9,), seed=cfg.seed, max_conditions=cfg.calibration_conditions)
    y, ctrl = _counts(test), _counts(src)
    expressed = (y > 0).mean(0) > 0.1
    predicted = hm.predict_mean(target).to_numpy()[0]
    methods = {"hybrid": _counts(hm.sample(target, cfg.cells, seed=cfg.seed)),
               "predictor + NB (control dispersions)": nb_with_control_dispersion(predicted, ctrl, cfg.cells,
                                                                                   cfg.seed),
               "no change (controls)": ctrl}
    pits, summary_methods = {}, {}
    for name, samples in methods.items():
        below, at = genjax.metrics.sample_cdf(samples[:, expressed], y[:, expressed])
        pits[name] = genjax.metrics.randomized_pit(below, at, seed=cfg.seed)
        row = genjax.metrics.coverage_table(pits[name], levels=(0.9,)).iloc[0]
        summary_methods[name] = {
            "pit_in_0.05_0.95": round(float(row["pooled"]), 3), "genes_in_band": round(float(row["share_in_band"]), 3),
            "calibration_error": round(genjax.metrics.reliability_curve(pits[name])[2], 4),
            "crps": round(float(genjax.metrics.crps_samples(y[:, expressed], samples[:, expressed]).mean()), 4)}
        print(f"  {name}: {summary_methods[name]}", flush=True)
    lo, hi = hm.predict_interval(target, 0.9, "cell", n=cfg.cells, seed=cfg.seed)
    inside = ((y >= lo.to_numpy()[0]) & (y <= hi.to_numpy()[0]))[:, expressed]
    summary = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend(), "held_out": target,
               "held_out_cells": int(test.n_obs), "expressed_genes": int(expressed.sum()), "methods": summary_methods,
               "hybrid_cell_interval_coverage_0.9": round(float(inside.mean()), 3)}
    figures = [plot_reliability(out / "reliability.png", pits), plot_coverage(out / "coverage.png", pits, len(y))]
    return finish_run(out, summary, figures, "Hybrid model: calibrated count intervals beside the baselines", t_start)


def plot_reliability(path, pits: dict):
    """Observed pooled coverage of central intervals against their nominal level, per method."""
    fig = new_figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    for name, pit in pits.items():
        levels, observed, err = genjax.metrics.reliability_curve(pit)
        ax.plot(levels, observed, marker="o", ms=3, label=f"{name} (error {err:.3f})")
    ax.set(xlabel="nominal coverage", ylabel="observed coverage (held-out cells)", title="Reliability (PIT)")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


def plot_coverage(path, pits: dict, n_cells: int):
    """Histogram over genes of the 90% interval's coverage, with the binomial 95% band of a calibrated gene."""
    from scipy import stats

    fig = new_figure(figsize=(5.2, 3.6))
    ax = fig.subplots()
    bins = np.linspace(0.5, 1.0, 26)
    for name, pit in pits.items():
        cov = ((pit >= 0.05) & (pit <= 0.95)).mean(0)
        ax.hist(cov, bins=bins, histtype="step", label=name)
    lo, hi = stats.binom.ppf([0.025, 0.975], n_cells, 0.9) / n_cells
    ax.axvspan(lo, hi, color="0.85", zorder=0, label="binomial 95% band at 0.9")
    ax.set(xlabel="per-gene coverage of the central 90% interval", ylabel="genes")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


if __name__ == "__main__":
    main()
