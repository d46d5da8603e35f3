"""Perturbation response prediction: cells under a perturbation never measured, beside the baselines.

``genjax.PerturbationModel`` fits a count VAE (NB decoder) on the training cells and predicts a perturbed cell
from a control cell by moving its latent code by the perturbation's predicted shift and decoding counts. Two shift
estimators share the VAE: ``compositional`` (the shift carried from other cell types with a kernel on basal states,
summed over a combination's members plus a cross-validated interaction term) and ``scgen`` (scGen's latent
arithmetic). Every figure shows the model beside the baselines that beat most published deep models, in the same
run, on held-out test cells (nothing is tuned on them):

* part 1, held-out cell type: Kang 2018 IFN-beta PBMCs (``--kang PATH``; 2000 seurat_v3 HVGs), one cell type's
  stimulated cells held out and predicted from its controls, against mean-delta (the type's controls + the
  average stimulated - control shift of the other types) and no-change. Without the Kang file (it is not shipped
  with the package), the same task on the bundled McFaline 2023 knockouts: one glioblastoma line held out.
* part 2, unseen combinations: Norman 2019 CRISPRa doubles from the bundled PerturBench development set, each
  double whose singles were measured held out in turn (leave one double out) and predicted from controls,
  against the additive baseline (the sum of the singles' log fold changes) and matching-mean.

Run (from the repository root)::

    python examples/perturbation.py                     # defaults: a few minutes on 2 CPU cores
    python examples/perturbation.py --kang-types all    # every Kang type with >= 30 cells per arm
    python examples/perturbation.py --smoke             # tiny (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/perturbation``): logfc.png (predicted vs observed log fold change per
gene), energy.png (energy distance per held-out condition with the split-half real-vs-real ceiling),
interaction.png (predicted vs observed genetic interaction of each double), summary.json and summary.md.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import anndata as ad
import jax
import numpy as np

import genjax
from genjax.data import PerturbationSpec
from genjax.plots import save_figure

from common import config_class, config_from_args, finish_run, new_figure, start_run

SHARED_KANG = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kang2018_ifnb.h5ad"

Config = config_class(
    __file__,
    kang=str(SHARED_KANG),  # Kang 2018 h5ad (raw counts); "" or a missing file: McFaline held-out line instead
    kang_types="CD14 Mono",  # comma-separated held-out types, or "all" (>= 30 cells per arm)
    mcfaline_line="U87MG",  # held-out line when Kang is not used
    n_top_genes=2000,  # seurat_v3 HVGs of Kang
    doubles=0,  # Norman doubles held out in turn (0: all with both singles measured)
    vae_epochs=100,
    max_cells=0,  # 0: all cells; else a seeded subsample of each data set (the smoke test)
)

SMOKE = dict(kang="", doubles=1, vae_epochs=2, max_cells=900)
FULL = dict(kang_types="all", vae_epochs=200)
METHODS = ("genjax compositional", "genjax scgen")
HEADLINE = ("r2_mean_deg", "r2_logfc_deg", "pearson_delta_ctrl", "pearson_delta_ref", "l2_top", "cosine_logfc",
            "rank_cosine_logfc", "deg_recall_100", "energy_distance", "interaction_corr")


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__)


def subsample(adata, cfg: Config):
    if not cfg.max_cells or adata.n_obs <= cfg.max_cells:
        return adata
    keep = np.sort(np.random.default_rng(cfg.seed).choice(adata.n_obs, cfg.max_cells, replace=False))
    return adata[keep].copy()


def fit(train, spec: PerturbationSpec, cfg: Config) -> dict:
    """The two genjax shift estimators on one fitted VAE, and the seconds the fit took."""
    t0 = time.perf_counter()
    pm = genjax.PerturbationModel(train, spec.key, spec.control, spec.covariate_keys, method="compositional",
                                  seed=cfg.seed)
    pm.fit(max_epochs=cfg.vae_epochs, progress=False, seed=cfg.seed)
    return {"genjax compositional": pm, "genjax scgen": pm.with_method("scgen")}, time.perf_counter() - t0


def predict(models: dict, baselines: dict, source, perturbation: str, seed: int) -> dict:
    """method -> (cells, genes) log1p predicted cells of ``perturbation`` from ``source``: ~2000 drawn cells from
    genjax (several per source cell, so that the draws' Monte Carlo noise does not swamp the mean metrics), the
    source cells moved by the predicted shift from the baselines."""
    n_per_cell = max(1, -(-2000 // source.n_obs))
    out = {name: m.predict_cells(source, perturbation, seed=seed, n_per_cell=n_per_cell) for name, m in models.items()}
    out.update({f"baseline {name}": b.predict_cells(source, perturbation) for name, b in baselines.items()})
    return out


def heldout_type(cfg: Config) -> dict:
    """Part 1: one cell type (Kang) or cell line (McFaline) held out per fold."""
    if cfg.kang and Path(cfg.kang).is_file():
        adata = ad.read_h5ad(cfg.kang)
        genjax.data.highly_variable_genes(adata, n_top_genes=cfg.n_top_genes, subset=True)
        adata = subsample(adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy(), cfg)
        spec, perturbation = PerturbationSpec("stim", "CTRL", ("seurat_annotations",)), "STIM"
        arms = adata.obs.groupby(["seurat_annotations", "stim"], observed=True).size().unstack(fill_value=0)
        eligible = [t for t in arms.index if arms.loc[t].min() >= 30]
        folds = eligible if cfg.kang_types == "all" else [t.strip() for t in cfg.kang_types.split(",")]
        name = "Kang 2018 IFN-beta, held-out cell type"
    else:
        print(f"no Kang file at {cfg.kang!r}: part 1 holds out a McFaline 2023 line instead")
        adata = subsample(genjax.datasets.perturbench_devel("mcfaline23"), cfg)
        spec, perturbation = PerturbationSpec("condition", "control", ("cell_type",)), None
        folds = [cfg.mcfaline_line]
        name = "McFaline 2023 CRISPRi, held-out cell line"
    key = spec.covariate_keys[0]
    labels = spec.labels(adata)
    observed, controls, predictions, seconds = {}, {}, {}, []
    for value in folds:
        in_value = (adata.obs[key].astype(str) == value).to_numpy()
        if perturbation is None:  # McFaline: every knockout of the held-out line measured in another line
            masks = genjax.data.heldout_covariate_split(adata, spec, key, value, seed=cfg.seed)
            perts = sorted(set(labels[masks["test"]]))
            base_names = ("no_change", "mean_delta")
        else:
            masks = genjax.data.heldout_condition_split(adata, spec, perturbation, {key: value}, seed=cfg.seed)
            perts = [perturbation]
            base_names = ("no_change", "mean_delta")
        train = adata[masks["train"]].copy()
        source = adata[in_value & (labels == spec.control)].copy()
        models, s = fit(train, spec, cfg)
        seconds.append(s)
        baselines = {b: genjax.models.BASELINES[b](spec).fit(train) for b in base_names}
        for p in perts:
            cond = f"{p} | {value}"
            observed[cond] = genjax.data.normalize_log1p(adata[masks["test"] & (labels == p)].X)
            controls[cond] = genjax.data.normalize_log1p(source.X)
            for method, cells in predict(models, baselines, source, p, cfg.seed).items():
                predictions.setdefault(method, {})[cond] = cells
        print(f"[part 1] {value}: {len(perts)} condition(s), VAE fitted in {s:.1f} s")
    table = genjax.metrics.evaluate_perturbations(observed, controls, predictions, seed=cfg.seed)
    return {"name": name, "table": table, "observed": observed, "controls": controls, "predictions": predictions,
            "fit_seconds": seconds}


def doubles(cfg: Config) -> dict:
    """Part 2: each Norman double whose singles were measured, held out in turn."""
    adata = subsample(genjax.datasets.perturbench_devel("norman19"), cfg)
    spec = PerturbationSpec("condition", "control")
    labels = spec.labels(adata)
    table = genjax.data.combinations_with_singles(adata, spec)
    eligible = table[table["has_singles"]]["perturbation"].tolist()
    eligible = eligible[: cfg.doubles] if cfg.doubles else eligible
    control = labels == spec.control
    observed, controls, predictions, additive, seconds = {}, {}, {}, {}, []
    for double in eligible:
        masks = genjax.data.leave_one_double_out(adata, spec, double)
        train, source = adata[masks["train"]].copy(), adata[control].copy()
        models, s = fit(train, spec, cfg)
        seconds.append(s)
        baselines = {b: genjax.models.BASELINES[b](spec).fit(train) for b in ("no_change", "additive",
                                                                                 "matching_mean")}
        observed[double] = genjax.data.normalize_log1p(adata[labels == double].X)
        controls[double] = genjax.data.normalize_log1p(source.X)
        additive[double] = baselines["additive"].predict_mean(source, double)
        for method, cells in predict(models, baselines, source, double, cfg.seed).items():
            predictions.setdefault(method, {})[double] = cells
        print(f"[part 2] {double}: VAE fitted in {s:.1f} s")
    table = genjax.metrics.evaluate_perturbations(observed, controls, predictions, additive=additive, seed=cfg.seed)
    return {"name": "Norman 2019 CRISPRa, unseen doubles (leave one double out)", "table": table,
            "observed": observed, "controls": controls, "predictions": predictions, "additive": additive,
            "fit_seconds": seconds}


def summarise(part: dict) -> dict:
    """method -> {metric: mean over conditions} for the headline metrics (undefined values left out)."""
    means = genjax.metrics.summarise(part["table"])
    out = {}
    for method, row in means.iterrows():
        vals = {m: round(float(row[m]), 4) for m in HEADLINE if m in row.index and np.isfinite(row[m])}
        if vals:
            out[str(method)] = vals
    return out


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)
    parts = {"heldout_type": heldout_type(cfg), "doubles": doubles(cfg)}
    summary: dict = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend()}
    for key, part in parts.items():
        summary[key] = {"task": part["name"], "conditions": len(part["observed"]),
                        "fit_seconds_mean": round(float(np.mean(part["fit_seconds"])), 1),
                        "methods": summarise(part)}
        means = genjax.metrics.summarise(part["table"])
        cols = [c for c in HEADLINE if c in means.columns]
        print(f"\n{part['name']}: mean over {len(part['observed'])} held-out condition(s) (test cells)")
        print(means[cols].to_string(float_format=lambda v: f"{v:.3f}"))
    figures = [plot_logfc(out / "logfc.png", parts["heldout_type"]),
               plot_energy(out / "energy.png", parts),
               plot_interaction(out / "interaction.png", parts["doubles"])]
    return finish_run(out, summary, figures, "Perturbation response prediction beside the baselines", t_start)


# ---------------------------------------------------------------------------------------------------------------
# figures


def plot_logfc(path, part: dict):
    """Observed vs predicted log fold change of every gene, the top-100 DEGs highlighted, for the first
    held-out condition; one panel per method."""
    cond = next(iter(part["observed"]))
    obs, ctrl = part["observed"][cond], part["controls"][cond]
    lfc_true = np.asarray(genjax.metrics.logfc(obs.mean(0), ctrl.mean(0)))
    degs = genjax.metrics.top_degs(obs, ctrl, min(100, obs.shape[1]))
    methods = [m for m in part["predictions"] if cond in part["predictions"][m]]
    r2 = part["table"].query("metric == 'r2_logfc_deg' and condition == @cond").set_index("method")["value"]
    fig = new_figure(figsize=(4.2 * len(methods), 4.2))
    axes = fig.subplots(1, len(methods), sharex=True, sharey=True)
    for ax, m in zip(np.atleast_1d(axes), methods, strict=True):
        lfc_pred = np.asarray(genjax.metrics.logfc(part["predictions"][m][cond].mean(0), ctrl.mean(0)))
        ax.scatter(lfc_true, lfc_pred, s=3, color="0.7", rasterized=True, label="all genes")
        ax.scatter(lfc_true[degs], lfc_pred[degs], s=8, color="tab:red", label="top-100 DEGs")
        lim = float(np.abs(np.concatenate([lfc_true, lfc_pred])).max()) * 1.05
        ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8)
        ax.set_title(f"{m}\nR² logFC (DEGs) {r2.get(m, np.nan):.2f}", fontsize="medium")
        ax.set_xlabel("observed log2 fold change")
    np.atleast_1d(axes)[0].set_ylabel(f"predicted log2 fold change ({cond})")
    np.atleast_1d(axes)[0].legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_energy(path, parts: dict):
    """Energy distance (PCA space) of each method's predicted cells per held-out condition, with the split-half
    real-vs-real ceiling."""
    fig = new_figure(figsize=(7 * len(parts), 4.2))
    axes = fig.subplots(1, len(parts))
    for ax, part in zip(np.atleast_1d(axes), parts.values(), strict=True):
        e = part["table"].query("metric == 'energy_distance'").pivot_table(index="condition", columns="method",
                                                                           values="value")
        methods = [m for m in e.columns if m not in ("ceiling",)]
        x = np.arange(len(e.index))
        width = 0.8 / max(len(methods), 1)
        for i, m in enumerate(methods):
            ax.bar(x + i * width, e[m].to_numpy(), width, label=m)
        if "ceiling" in e.columns:
            ax.scatter(x + 0.4 - width / 2, e["ceiling"].to_numpy(), marker="_", s=400, color="k",
                       label="split-half ceiling", zorder=3)
        ax.set_xticks(x + 0.4 - width / 2, [str(c) for c in e.index], rotation=30, ha="right", fontsize="x-small")
        ax.set_ylabel("energy distance to the observed cells (lower)")
        ax.set_title(part["name"], fontsize="medium")
        ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_interaction(path, part: dict):
    """Per double: observed interaction (observed - additive) against predicted (prediction - additive)."""
    conds = list(part["observed"])
    methods = [m for m in part["predictions"] if m in METHODS or m == "baseline matching_mean"]
    fig = new_figure(figsize=(4.2 * len(conds), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(conds), squeeze=False)[0])
    corr = part["table"].query("metric == 'interaction_corr'")
    for ax, cond in zip(axes, conds, strict=True):
        add = part["additive"][cond]
        true = part["observed"][cond].mean(0) - add
        for m in methods:
            pred = part["predictions"][m][cond].mean(0) - add
            r = corr.query("method == @m and condition == @cond")["value"]
            ax.scatter(true, pred, s=4, alpha=0.6, label=f"{m} (r {float(r.iloc[0]) if len(r) else np.nan:.2f})",
                       rasterized=True)
        lim = float(np.abs(true).max()) * 1.05
        ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8)
        ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set_title(cond, fontsize="medium")
        ax.set_xlabel("observed interaction (observed - additive)")
        ax.legend(fontsize="xx-small")
    axes[0].set_ylabel("predicted interaction (prediction - additive)")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
