"""scvi-tools users: the scvi-tools tutorial flow on genjax, in scvi-tools' own words.

The steps of scvi-tools' quick-start and scArches tutorials, each with the call a scvi-tools user writes; only the
import line and the class name change (``scvi.model.SCVI`` -> ``genjax.VAE``), and the keys that scvi-tools takes
in ``setup_anndata`` go to the constructor:

=========================================================  =====================================================
scvi-tools                                                 genjax
=========================================================  =====================================================
``SCVI.setup_anndata(adata, layer="counts",                ``genjax.VAE(adata, layer="counts", batch_key="batch",
batch_key="batch", labels_key="cell_type")``;              labels_key="cell_type", gene_likelihood="nb")``
``SCVI(adata, gene_likelihood="nb")``
``model.train(max_epochs=..., plan_kwargs=...)``           the same (``fit`` is genjax's name)
``model.history["elbo_train"]``                            the same (also ``model.history[-1]["loss"]``)
``model.get_latent_representation()``                      the same (``model.latent()``)
``model.differential_expression(groupby=, group1=,         the same
group2=, mode="change")``
``model.get_normalized_expression(gene_list=,              the same (``model.normalized_expression()``)
library_size=1e4)``
``model.save(dir)``; ``SCVI.load(dir, adata=adata)``       the same
``SCVI.load_query_data(query, dir)``; ``.train(...)``      the same
=========================================================  =====================================================

Data: the bundled PBMC3k counts (``genjax.datasets.pbmc3k``), split at random into three "labs". Lab B's and lab
C's counts are thinned gene by gene (binomial thinning with a per-gene retention drawn once per lab: a technical
batch effect with known truth, the cell types untouched). Labs A and B are the reference (``batch_key="batch"``);
lab C is a query batch that the reference never sees, mapped onto it afterwards (scArches). Measured, beside the
baseline of 30 principal components of log1p counts per 10k (no batch correction): batch mixing and cell-type
separation of reference and query cells together (``genjax.metrics.integration``) and the label transfer accuracy
of a 15-nearest-neighbour vote from reference to query cells; and the differential expression of B cells against
CD14+ monocytes (known markers: MS4A1, CD79A up; LYZ, S100A8 down).

Run (from the repository root)::

    python examples/scvi_users.py            # a few minutes on 2 CPU cores
    python examples/scvi_users.py --smoke    # tiny (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/scvi_users``): latent.png (UMAP with scanpy where it is installed, else
the first two principal components of the latent; reference and query cells by cell type and by lab),
de.png (log fold change against the probability of differential expression), expression.png (mean normalised
expression of marker genes per cell type), training.png (``history["elbo_train"]`` / ``["elbo_validation"]``),
the saved model, summary.json and summary.md.
"""

from __future__ import annotations

import dataclasses

import anndata as ad
import jax
import numpy as np

import genjax
from genjax.plots import save_figure

from common import config_class, config_from_args, finish_run, load_pbmc3k, new_figure, start_run

MARKERS = ["MS4A1", "CD79A", "LYZ", "S100A8", "CD14", "FCGR3A", "NKG7", "GNLY", "IL7R", "CCR7", "CD8A", "PPBP"]
DE_GROUPS = ("B cells", "CD14+ Monocytes")

Config = config_class(
    __file__,
    max_cells=0,  # 0: all 2638 PBMC3k cells; else a subsample stratified by cell type
    n_top_genes=1200,  # seurat_v3 highly variable genes of the reference (markers kept)
    n_latent=10,
    epochs=150,  # reference training
    query_epochs=100,  # query training (only the new batch's rows)
    de_samples=2000,  # posterior samples per group in differential expression
    batch_effect=1.0,  # log-scale sd of the per-gene retention of labs B and C
)

SMOKE = dict(max_cells=400, n_top_genes=150, epochs=2, query_epochs=2, de_samples=100)
FULL = dict(epochs=400, query_epochs=200)


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__)


def make_labs(cfg: Config):
    """PBMC3k with ``layers["counts"]`` and ``obs["batch"]`` in lab A / B / C, B and C thinned per gene.

    Returns:
        ``(reference, query)``: labs A and B on the reference's highly variable genes, lab C on the same genes.
    """
    adata = load_pbmc3k(cfg.seed, cfg.max_cells, min_type_cells=10)
    rng = np.random.default_rng(cfg.seed)
    labs = np.array(["lab A", "lab B", "lab C"])
    lab = rng.integers(0, 3, adata.n_obs)
    keep = np.ones((3, adata.n_vars))  # per-lab, per-gene retention; lab A keeps every count
    keep[1:] = np.clip(0.7 * np.exp(cfg.batch_effect * rng.standard_normal((2, adata.n_vars))), 0.05, 1.0)
    counts = adata.X.tocsr().astype(np.float32)
    row = np.repeat(np.arange(adata.n_obs), np.diff(counts.indptr))  # the cell of each stored count
    counts.data = rng.binomial(counts.data.astype(np.int64), keep[lab[row], counts.indices]).astype(np.float32)
    counts.eliminate_zeros()
    adata.layers["counts"] = counts
    adata.obs["batch"] = labs[lab]
    adata = adata[np.asarray(counts.sum(1)).ravel() > 0].copy()
    ref, query = adata[adata.obs["batch"] != "lab C"].copy(), adata[adata.obs["batch"] == "lab C"].copy()
    genjax.data.highly_variable_genes(ref, n_top_genes=cfg.n_top_genes, layer="counts", batch_key="batch")
    genes = ref.var["highly_variable"].to_numpy() | ref.var_names.isin(MARKERS)
    ref, query = ref[:, genes], query[:, genes]
    return tuple(a[np.asarray(a.layers["counts"].sum(1)).ravel() > 0].copy() for a in (ref, query))


def knn_transfer(ref_latent, ref_labels, query_latent, k: int = 15) -> np.ndarray:
    """Majority label of each query cell's ``k`` nearest reference cells (Euclidean, in the latent space)."""
    d = ((query_latent[:, None, :] - ref_latent[None, :, :]) ** 2).sum(-1)
    nearest = np.argsort(d, axis=1)[:, :k]
    names, codes = np.unique(ref_labels, return_inverse=True)
    votes = np.stack([np.bincount(codes[row], minlength=len(names)) for row in nearest])
    return names[votes.argmax(1)]


def pca_latent(adata, n_comps: int = 30) -> np.ndarray:
    """The baseline representation: the first ``n_comps`` principal components of log1p counts per 10k."""
    x = np.asarray(adata.layers["counts"].toarray(), np.float64)
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    x -= x.mean(0)
    n = min(n_comps, *x.shape) - 1
    return (x @ np.linalg.svd(x, full_matrices=False)[2][:n].T).astype(np.float32)


def mapping_scores(both, key: str, n_ref: int) -> dict:
    """Label transfer accuracy (reference -> query, 15-NN vote) and integration scores of ``both.obsm[key]``."""
    x, labels = both.obsm[key], both.obs["cell_type"].astype(str).to_numpy()
    predicted = knn_transfer(x[:n_ref], labels[:n_ref], x[n_ref:])
    scores = genjax.metrics.integration(both, key, batch_key="batch", label_key="cell_type").iloc[0]
    return {"query_label_transfer_accuracy": round(float((predicted == labels[n_ref:]).mean()), 3),
            **{k: round(float(scores[k]), 3) for k in ("batch_asw", "ilisi", "label_asw", "clisi")}}


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)
    ref, query = make_labs(cfg)
    print(f"reference {ref.n_obs} cells (labs A, B) x {ref.n_vars} genes; query {query.n_obs} cells (lab C)",
          flush=True)

    # -- the scvi-tools tutorial, genjax spelling ---------------------------------------------------------------
    model = genjax.VAE(ref, layer="counts", batch_key="batch", labels_key="cell_type", gene_likelihood="nb",
                       n_latent=cfg.n_latent, seed=cfg.seed)
    model.train(max_epochs=cfg.epochs, plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": max(1, cfg.epochs // 3)},
                enable_progress_bar=False, seed=cfg.seed)
    ref.obsm["X_genjax"] = model.get_latent_representation()
    de = model.differential_expression(groupby="cell_type", group1=DE_GROUPS[0], group2=DE_GROUPS[1],
                                       mode="change", delta=0.25, n_samples=cfg.de_samples, seed=cfg.seed)
    markers = [g for g in MARKERS if g in model.var_names]
    expression = model.get_normalized_expression(gene_list=markers, library_size=1e4, n_samples=5, seed=cfg.seed)
    model.save(out / "model")
    model = genjax.VAE.load(out / "model", adata=ref)
    query_model = genjax.VAE.load_query_data(query, out / "model")
    query_model.train(max_epochs=cfg.query_epochs, progress=False, seed=cfg.seed)  # weight decay 0 by default
    query.obsm["X_genjax"] = query_model.get_latent_representation()

    # -- what the run reached -----------------------------------------------------------------------------------
    both = ad.concat([ref, query])  # obsm["X_genjax"]: reference then query cells
    both.obsm["X_pca"] = pca_latent(both)  # the baseline: PCA of log1p counts per 10k, no batch correction
    mapping = {"genjax": mapping_scores(both, "X_genjax", ref.n_obs), "pca": mapping_scores(both, "X_pca", ref.n_obs)}
    fdr = [c for c in de.columns if c.startswith("is_de_fdr")][0]
    top_up = de[de["lfc_mean"] > 0].index[:5].tolist()
    top_down = de[de["lfc_mean"] < 0].index[:5].tolist()
    by_type = expression.groupby(ref.obs["cell_type"].astype(str).to_numpy()).mean()
    history = model.history
    summary = {
        "config": dataclasses.asdict(cfg), "backend": jax.default_backend(),
        "cells": {"reference": int(ref.n_obs), "query": int(query.n_obs), "genes": int(ref.n_vars)},
        "final_elbo_train": round(float(history["elbo_train"]["elbo_train"].iloc[-1]), 2),
        "final_elbo_validation": round(float(history["elbo_validation"]["elbo_validation"].iloc[-1]), 2),
        "reference_elbo": round(model.get_elbo(), 2),
        "mapping": mapping,
        "de": {"groups": list(DE_GROUPS), "n_de_at_fdr": int(de[fdr].sum()), "top_up": top_up,
               "top_down": top_down,
               "marker_lfc": {g: round(float(de.loc[g, "lfc_mean"]), 2) for g in ("MS4A1", "CD79A", "LYZ", "S100A8")
                              if g in de.index}},
    }
    for name, scores in mapping.items():
        print(f"{name}: {scores}", flush=True)
    print(f"DE {DE_GROUPS[0]} vs {DE_GROUPS[1]}: {summary['de']['n_de_at_fdr']} genes at FDR, up {top_up}, "
          f"down {top_down}", flush=True)
    figures = [plot_latent(out / "latent.png", ref, query), plot_de(out / "de.png", de, fdr),
               plot_expression(out / "expression.png", by_type), plot_training(out / "training.png", history)]
    return finish_run(out, summary, figures, "scvi-tools users: the tutorial flow on genjax", t_start)


# ---------------------------------------------------------------------------------------------------------------
# figures


def _embedding(ref, query) -> tuple[np.ndarray, str]:
    """2-D coordinates of reference then query cells: scanpy's UMAP of the latent where scanpy is installed,
    else the latent's first two principal components."""
    both = ad.concat([ref, query])
    try:
        import scanpy as sc
    except ImportError:
        x = both.obsm["X_genjax"] - both.obsm["X_genjax"].mean(0)
        return x @ np.linalg.svd(x, full_matrices=False)[2][:2].T, "PC"
    sc.pp.neighbors(both, use_rep="X_genjax")
    sc.tl.umap(both)
    return both.obsm["X_umap"], "UMAP"


def plot_latent(path, ref, query):
    """Reference and query cells in the latent, by cell type and by lab."""
    xy, name = _embedding(ref, query)
    types = np.concatenate([ref.obs["cell_type"].astype(str), query.obs["cell_type"].astype(str)])
    labs = np.concatenate([ref.obs["batch"].astype(str), query.obs["batch"].astype(str)])
    fig = new_figure(figsize=(10, 4.4))
    for ax, values, title in zip(fig.subplots(1, 2), (types, labs), ("cell type", "lab (C: query)"), strict=True):
        for v in np.unique(values):
            sel = values == v
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, label=v)
        ax.set(xlabel=f"{name} 1", ylabel=f"{name} 2", title=title, xticks=[], yticks=[])
        ax.legend(fontsize=6, markerscale=3)
    save_figure(fig, path)
    return path


def plot_de(path, de, fdr: str):
    """Posterior mean log2 fold change against P(|LFC| > delta), markers named."""
    fig = new_figure(figsize=(5.4, 4.2))
    ax = fig.subplots()
    sel = de[fdr].to_numpy(bool)
    ax.scatter(de["lfc_mean"][~sel], de["proba_de"][~sel], s=4, color="0.6", label="not selected")
    ax.scatter(de["lfc_mean"][sel], de["proba_de"][sel], s=4, color="C3", label=fdr.replace("is_de_", ""))
    for i, g in enumerate(("MS4A1", "CD79A", "LYZ", "S100A8")):
        if g in de.index:
            ax.annotate(g, (de.loc[g, "lfc_mean"], de.loc[g, "proba_de"]), xytext=(0, -10 - 9 * (i % 2)),
                        textcoords="offset points", ha="center", fontsize=7)
    ax.set(xlabel=f"LFC ({DE_GROUPS[0]} / {DE_GROUPS[1]}, log2)", ylabel="P(|LFC| > delta)",
           title="differential expression (change mode)")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


def plot_expression(path, by_type):
    """Mean normalised expression (per 10k, log1p) of the marker genes per cell type."""
    fig = new_figure(figsize=(7, 3.8))
    ax = fig.subplots()
    im = ax.imshow(np.log1p(by_type.to_numpy()), aspect="auto", cmap="viridis")
    ax.set_xticks(range(by_type.shape[1]), by_type.columns, rotation=60, fontsize=7)
    ax.set_yticks(range(by_type.shape[0]), by_type.index, fontsize=7)
    fig.colorbar(im, ax=ax, label="log1p(mean per 10k)")
    ax.set_title("get_normalized_expression(gene_list=markers, library_size=1e4)")
    save_figure(fig, path)
    return path


def plot_training(path, history):
    """``history["elbo_train"]`` and ``history["elbo_validation"]`` (scvi-tools' negative ELBO per cell)."""
    fig = new_figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for key in ("elbo_train", "elbo_validation"):
        frame = history[key]
        ax.plot(frame.index, frame[key], marker="o" if len(frame) < 5 else None, label=key)
    ax.set(xlabel="epoch", ylabel="-ELBO per cell (nats)", title="model.history")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


if __name__ == "__main__":
    main()
