"""Model-based differential expression (``genjax.models.differential_expression``, change mode) against known truth
and against scanpy's Wilcoxon test (and, optionally, scvi-tools' own ``differential_expression``).

* ``synthetic``: two groups of negative-binomial counts (1000 cells x 500 genes, library sizes log-normal around
  1500, inverse dispersion 5); 50 genes differ with log2 fold changes of random sign and size uniform in
  [0.5, 2.5]. A genjax VAE (no conditions: the groups live in the latent space) is trained on all cells and the
  groups compared with ``delta=0.25``. Reported: the genes called at posterior expected FDR 0.05 (precision,
  recall, realised FDR against the posterior's expected FDR), and the AUROC of ``proba_de`` for the true genes;
  beside scanpy's Wilcoxon test on log-normalised counts (Benjamini-Hochberg q < 0.05; AUROC of ``|score|``).
* ``kang``: Kang 2018 IFN-beta PBMCs (``kang2018_ifnb.h5ad``), the CD14 monocytes (643 cells), STIM against CTRL;
  genes: 2000 seurat_v3 HVGs of the monocytes' counts (``genjax.data.highly_variable_genes``) plus the
  interferon-stimulated genes ISG15, IFIT1, IFIT3, MX1, CXCL10. Two genjax VAEs on the monocytes: without
  conditions (the stimulation is encoded in ``z``) and with ``stim`` as a decoder condition (decoded under each
  cell's own value, so the decoder carries the stimulation effect). The stimulation must NOT be a batch
  corrected away (``batch_correction`` would decode both groups under the same value and erase the effect).
  Reported: the DE rank of each ISG (rows sorted by ``proba_de``, ties by ``|lfc_mean|``), the number of genes
  called at FDR 0.05, and agreement with scanpy's Wilcoxon on the same cells and genes: Spearman correlation of
  the gene rankings (genjax's order against ``|score|``), Spearman of ``lfc_mean`` against Wilcoxon's log fold
  change, and the overlap of the top-50 lists. ``--scvi`` adds scvi-tools' SCVI on the same cells (change mode,
  same delta, the default ``test_mode="three"``) as a third column. Two further genjax rows on the unconditioned
  model: ``test_mode="two"`` (``P(|LFC| >= delta)``), and the pseudocount estimate without scvi-tools' division by
  the number of genes (``pseudocount x genes``).

scanpy and scvi-tools run in their own environment (``--peer-python``; scripts in ``benchmarks/peers/``).

usage: python benchmarks/differential_expression.py [--tasks synthetic kang] [--epochs 400] [--n-samples 5000]
           [--peer-python /work/venv-peer/bin/python] [--no-peer] [--scvi] [--reuse-peers] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats

import genjax

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("GENJAX_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
ISGS = ["ISG15", "IFIT1", "IFIT3", "MX1", "CXCL10"]


def de_table(model, adata, **kw) -> pd.DataFrame:
    """The model's DE table: ``model.differential_expression`` where the class has it, else the function."""
    if hasattr(model, "differential_expression"):
        return model.differential_expression(adata, **kw)
    return genjax.models.differential_expression(model, adata, **kw)


def auroc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``truth`` (Mann-Whitney, ties averaged)."""
    r = stats.rankdata(score)
    n1, n0 = truth.sum(), (~truth).sum()
    return float((r[truth].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def run_peer(args, script: str, h5ad: Path, groupby: str, g1: str, g2: str, out: Path, *extra) -> pd.DataFrame | None:
    """The peer's table (CSV indexed by gene), run in ``--peer-python``; with ``--reuse-peers`` an existing ``out``
    (the peers' tables are kept in the output folder) is read instead."""
    if args.reuse_peers and out.exists():
        print(f"  peer {script}: reusing {out}", flush=True)
        return pd.read_csv(out, index_col=0)
    if args.no_peer:
        return None
    cmd = [args.peer_python, str(HERE / "peers" / script), str(h5ad), groupby, g1, g2, str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  peer {script} failed:\n{proc.stderr[-2000:]}", flush=True)
        return None
    print(f"  peer {script}: {time.perf_counter() - t0:.1f} s", flush=True)
    return pd.read_csv(out, index_col=0)


# ------------------------------------------------------------------------------------------------- synthetic


def synthetic(seed: int = 0, n_cells: int = 1000, n_genes: int = 500, n_de: int = 50):
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, n_genes) * 0.3 + 0.02
    effect = np.zeros(n_genes)
    effect[:n_de] = rng.uniform(0.5, 2.5, n_de) * rng.choice([-1.0, 1.0], n_de)
    rho_a, rho_b = base * 2 ** (effect / 2), base * 2 ** (-effect / 2)
    rho_a, rho_b = rho_a / rho_a.sum(), rho_b / rho_b.sum()
    group = np.repeat(["A", "B"], n_cells // 2)
    lib = rng.lognormal(np.log(1500), 0.3, n_cells)
    mu = lib[:, None] * np.where((group == "A")[:, None], rho_a, rho_b)
    X = rng.poisson(rng.gamma(5.0, mu / 5.0)).astype(np.float32)
    obs = pd.DataFrame({"group": pd.Categorical(group)}, index=[f"c{i}" for i in range(n_cells)])
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    return adata, np.log2(rho_a / rho_b)


def task_synthetic(args, tmp: Path) -> list[dict]:
    adata, true_lfc = synthetic(args.seed)
    rows = []
    t0 = time.perf_counter()
    model = genjax.VAE(adata, seed=args.seed)
    model.fit(max_epochs=args.epochs, progress=False, seed=args.seed)
    t_fit = time.perf_counter() - t0
    for delta in (0.25, 0.5):
        truth_s = pd.Series(np.abs(true_lfc) >= delta, index=adata.var_names)
        t0 = time.perf_counter()
        df = de_table(model, adata, groupby="group", group1="A", group2="B", delta=delta, n_samples=args.n_samples,
                      seed=args.seed)
        t_de = time.perf_counter() - t0
        truth = truth_s.loc[df.index].to_numpy()
        called = df["is_de_fdr_0.05"].to_numpy()
        tp = int((called & truth).sum())
        rows.append({"task": "synthetic", "method": f"genjax VAE change mode, delta={delta}",
                     "true_de": int(truth.sum()),
                     "called": int(called.sum()), "precision": tp / max(called.sum(), 1),
                     "recall": tp / truth.sum(), "expected_fdr": float(df["proba_not_de"][called].mean()),
                     "auroc": auroc(df["proba_de"].to_numpy() + 1e-6 * np.abs(df["lfc_mean"].to_numpy()), truth),
                     "lfc_rmse_true_de": float(np.sqrt(np.mean((df["lfc_mean"].to_numpy()
                                                                 - true_lfc[[int(g[1:]) for g in df.index]])[truth]
                                                                ** 2))),
                     "pseudocount": float(df["pseudocounts"].iloc[0]), "fit_s": t_fit, "de_s": t_de})
    path = tmp / "synthetic.h5ad"
    adata.write_h5ad(path)
    wil = run_peer(args, "scanpy_wilcoxon.py", path, "group", "A", "B", args.out_dir / "synthetic_wilcoxon.csv")
    if wil is not None:
        truth = (np.abs(true_lfc) >= 0.25)[[int(g[1:]) for g in wil.index]]
        called = wil["pval_adj"].to_numpy() < 0.05
        tp = int((called & truth).sum())
        rows.append({"task": "synthetic", "method": "scanpy Wilcoxon, BH q<0.05", "true_de": int(truth.sum()),
                     "called": int(called.sum()), "precision": tp / max(called.sum(), 1), "recall": tp / truth.sum(),
                     "auroc": auroc(np.abs(wil["score"].to_numpy()), truth)})
    return rows


# ------------------------------------------------------------------------------------------------------ kang


def kang_cells(args) -> ad.AnnData:
    adata = ad.read_h5ad(DATA / "kang2018_ifnb.h5ad")
    mono = adata[adata.obs["seurat_annotations"] == "CD14 Mono"].copy()
    genjax.data.highly_variable_genes(mono, n_top_genes=args.n_genes)
    keep = mono.var["highly_variable"].to_numpy() | mono.var_names.isin(ISGS)
    mono = mono[:, keep].copy()
    mono.obs = mono.obs[["stim", "seurat_annotations"]].copy()
    mono.obs["stim"] = mono.obs["stim"].astype(str).astype("category")
    return mono


def rank_of(order: pd.Index, genes) -> dict:
    pos = pd.Series(np.arange(1, len(order) + 1), index=order)
    return {g: int(pos[g]) for g in genes}


def compare(name: str, df: pd.DataFrame, wil: pd.DataFrame | None, lfc_col: str = "lfc_mean") -> dict:
    """Ranks of the ISGs and agreement with Wilcoxon for one DE table (rows in the method's order)."""
    row = {"method": name, **{f"rank_{g}": r for g, r in rank_of(df.index, ISGS).items()}}
    if "is_de_fdr_0.05" in df:
        row["called_fdr_0.05"] = int(df["is_de_fdr_0.05"].sum())
    if wil is not None:
        w_order = wil.reindex(wil["score"].abs().sort_values(ascending=False, kind="stable").index)
        g_rank = pd.Series(np.arange(len(df)), index=df.index)
        w_rank = pd.Series(np.arange(len(w_order)), index=w_order.index)
        genes = df.index
        row["spearman_rank_vs_wilcoxon"] = float(stats.spearmanr(g_rank[genes], w_rank[genes]).statistic)
        row["spearman_lfc_vs_wilcoxon"] = float(stats.spearmanr(df.loc[genes, lfc_col],
                                                                wil.loc[genes, "logfoldchange"]).statistic)
        row["top50_overlap_wilcoxon"] = len(set(df.index[:50]) & set(w_order.index[:50]))
    return row


def task_kang(args, tmp: Path) -> tuple[list[dict], dict]:
    mono = kang_cells(args)
    print(f"  Kang CD14 monocytes: {mono.n_obs} cells x {mono.n_vars} genes "
          f"({dict(mono.obs['stim'].value_counts())})", flush=True)
    path = tmp / "kang_mono.h5ad"
    mono.write_h5ad(path)
    wil = run_peer(args, "scanpy_wilcoxon.py", path, "stim", "STIM", "CTRL", args.out_dir / "kang_wilcoxon.csv")
    rows, tables = [], {}
    if wil is not None:
        w_sorted = wil.reindex(wil["score"].abs().sort_values(ascending=False, kind="stable").index)
        rows.append({"method": "scanpy Wilcoxon (|score|)", **{f"rank_{g}": r for g, r in
                                                            rank_of(w_sorted.index, ISGS).items()},
                     "called_fdr_0.05": int((wil["pval_adj"] < 0.05).sum())})
    for label, conditions in (("genjax VAE, no condition", None), ("genjax VAE, stim as condition", ["stim"])):
        t0 = time.perf_counter()
        model = genjax.VAE(mono, conditions=conditions, seed=args.seed)
        model.fit(max_epochs=args.epochs, progress=False, seed=args.seed)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        df = de_table(model, mono, groupby="stim", group1="STIM", group2="CTRL", n_samples=args.n_samples,
                      seed=args.seed)
        t_de = time.perf_counter() - t0
        tables[label] = df
        pc = float(df["pseudocounts"].iloc[0])
        rows.append({**compare(label, df, wil), "pseudocount": pc, "fit_s": t_fit, "de_s": t_de,
                     "called_abs_lfc_below_delta": int((df["is_de_fdr_0.05"] & (df["lfc_mean"].abs() < 0.25)).sum())})
        print(f"  {label}: fit {t_fit:.0f} s, DE {t_de:.1f} s; top 10 {list(df.index[:10])}", flush=True)
        if conditions is None:
            two = de_table(model, mono, groupby="stim", group1="STIM", group2="CTRL", n_samples=args.n_samples,
                           seed=args.seed, test_mode="two")
            rows.append({**compare(f"{label}, test_mode two", two, wil), "pseudocount": pc,
                         "called_abs_lfc_below_delta": int((two["is_de_fdr_0.05"]
                                                            & (two["lfc_mean"].abs() < 0.25)).sum())})
            # the pseudocount estimate without scvi-tools' division by the number of genes
            big = de_table(model, mono, groupby="stim", group1="STIM", group2="CTRL", n_samples=args.n_samples,
                           seed=args.seed, pseudocounts=pc * mono.n_vars)
            rows.append({**compare(f"{label}, pseudocount x genes", big, wil), "pseudocount": pc * mono.n_vars})
    if args.scvi:
        extra = [] if args.epochs is None else ["--epochs", str(args.epochs)]
        sc_df = run_peer(args, "scvi_de.py", path, "stim", "STIM", "CTRL", args.out_dir / "kang_scvi.csv", *extra)
        if sc_df is not None:
            order = np.lexsort((-sc_df["lfc_mean"].abs().to_numpy(), -sc_df["proba_de"].to_numpy()))
            sc_df = sc_df.iloc[order]
            rows.append({**compare("scvi-tools SCVI (change mode)", sc_df, wil),
                         "called_abs_lfc_below_delta": int((sc_df["is_de_fdr_0.05"]
                                                            & (sc_df["lfc_mean"].abs() < 0.25)).sum())})
            for label, df in tables.items():
                genes = df.index
                rows[-1][f"spearman_lfc_vs_{label}"] = float(stats.spearmanr(df.loc[genes, "lfc_mean"],
                                                                              sc_df.loc[genes, "lfc_mean"]).statistic)
                rows[-1][f"top50_overlap_vs_{label}"] = len(set(df.index[:50]) & set(sc_df.index[:50]))
    return rows, {"cells": int(mono.n_obs), "genes": int(mono.n_vars)}


def print_table(rows: list[dict]) -> None:
    frame = pd.DataFrame(rows).set_index("method")
    with pd.option_context("display.max_columns", None, "display.width", 250, "display.float_format", "{:.3f}".format):
        print(frame.T.to_string() if frame.shape[1] > 8 else frame.to_string())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["synthetic", "kang"], choices=["synthetic", "kang"])
    p.add_argument("--epochs", type=int, default=None, help="VAE epochs (default scvi-tools' rule: 400 here)")
    p.add_argument("--n-samples", type=int, default=5000)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-python", default=os.environ.get("GENJAX_PEER_PYTHON", "/work/venv-peer/bin/python"))
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--scvi", action="store_true", help="also scvi-tools' SCVI differential_expression on Kang")
    p.add_argument("--reuse-peers", action="store_true", help="read the peers' tables kept in --out if present")
    p.add_argument("--out", default=str(HERE / "results" / "differential_expression"))
    args = p.parse_args()
    out = args.out_dir = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "synthetic" in args.tasks:
            print("synthetic: 1000 cells x 500 genes, 50 DE genes (|log2 FC| in [0.5, 2.5])", flush=True)
            rows = task_synthetic(args, tmp)
            print_table(rows)
            results["synthetic"] = rows
        if "kang" in args.tasks:
            print("kang: CD14 monocytes, STIM vs CTRL", flush=True)
            rows, info = task_kang(args, tmp)
            print_table(rows)
            results["kang"] = {"data": info, "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
