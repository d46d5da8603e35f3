"""Peer for benchmarks/differential_expression.py: scanpy's Wilcoxon rank-sum test of one group against another.

Runs in its own environment (scanpy is no genjax dependency), e.g. ``/work/venv-peer/bin/python``. Reads raw
counts from ``X``, normalises each cell to 1e4 total counts and takes ``log1p`` (scanpy's standard preprocessing),
then ``sc.tl.rank_genes_groups(method="wilcoxon", groups=[GROUP1], reference=GROUP2)`` over every gene
(``GROUP2 = rest`` compares with every other cell). Writes a CSV indexed by gene with the columns ``score``
(the rank-sum z-score), ``logfoldchange``, ``pval`` and ``pval_adj`` (Benjamini-Hochberg).

usage: python scanpy_wilcoxon.py DATA.h5ad GROUPBY GROUP1 GROUP2 OUT.csv
"""

import argparse

import anndata as ad
import scanpy as sc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("groupby")
    p.add_argument("group1")
    p.add_argument("group2")
    p.add_argument("out")
    a = p.parse_args()
    adata = ad.read_h5ad(a.data)
    adata.obs[a.groupby] = adata.obs[a.groupby].astype(str).astype("category")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.tl.rank_genes_groups(adata, a.groupby, groups=[a.group1], reference=a.group2, method="wilcoxon",
                            n_genes=adata.n_vars, tie_correct=True)
    res = sc.get.rank_genes_groups_df(adata, group=a.group1)
    res = res.rename(columns={"names": "gene", "scores": "score", "logfoldchanges": "logfoldchange",
                              "pvals": "pval", "pvals_adj": "pval_adj"})
    res.set_index("gene")[["score", "logfoldchange", "pval", "pval_adj"]].to_csv(a.out)


if __name__ == "__main__":
    main()
