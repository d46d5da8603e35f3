"""The data set shipped inside the package."""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["pbmc3k", "data_path"]


def data_path(name: str):
    """Path of a bundled file in ``genjax/data/datasets/data/`` (a ``pathlib``-like resource)."""
    return resources.files("genjax.data.datasets").joinpath("data", name)


def pbmc3k():
    """PBMC3k: 2638 peripheral blood mononuclear cells x 2767 genes, raw UMI counts (10x Genomics, v1 chemistry).

    The classic scanpy-tutorial cells after quality control, with their 8 cell-type labels. Bundled with the package
    (no download); provenance in ``adata.uns["provenance"]`` and ``genjax/data/datasets/data/pbmc3k.PROVENANCE.json``,
    licence (CC BY 4.0, attribution 10x Genomics) in ``pbmc3k.LICENSE.md`` beside it.

    Returns:
        AnnData: ``X`` float32 CSR integer counts (cells x genes); ``obs["cell_type"]`` categorical (B cells,
        CD14+ Monocytes, CD4 T cells, CD8 T cells, Dendritic cells, FCGR3A+ Monocytes, Megakaryocytes, NK cells),
        ``obs["leiden"]``, ``obs["total_counts_allgenes"]``; ``var["gene_ids"]`` Ensembl ids. A fresh copy on
        every call.
    """
    import anndata as ad

    with resources.as_file(data_path("pbmc3k.h5ad")) as path:
        adata = ad.read_h5ad(path)
    if "provenance" not in adata.uns:
        adata.uns["provenance"] = json.loads(data_path("pbmc3k.PROVENANCE.json").read_text())
    return adata
