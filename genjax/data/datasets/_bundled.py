"""The data sets shipped inside the package."""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["data_path", "pbmc3k", "perturbench_devel"]


def data_path(name: str):
    """Path of a bundled file in ``genjax/data/datasets/data/`` (a ``pathlib``-like resource)."""
    return resources.files("genjax.data.datasets").joinpath("data", name)


def _read(name: str):
    import anndata as ad

    with resources.as_file(data_path(f"{name}.h5ad")) as path:
        adata = ad.read_h5ad(path)
    if "provenance" not in adata.uns:
        adata.uns["provenance"] = json.loads(data_path(f"{name}.PROVENANCE.json").read_text())
    return adata


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
    return _read("pbmc3k")


def perturbench_devel(dataset: str | None = None):
    """PerturBench's development set: Norman 2019 CRISPRa singles and doubles and McFaline-Figueroa 2023 CRISPRi
    knockouts in three glioblastoma lines; 5961 cells x 500 genes, raw UMI counts.

    Norman et al. 2019 (K562, ``dataset == "norman19"``): 3375 cells, 100 controls and 33 single or double
    activations (5 doubles have both singles measured). McFaline-Figueroa et al. 2023 (``"mcfaline23"``): 2586
    cells, 300 controls and 10 knockouts in the A172, T98G and U87MG lines. Bundled (no download); provenance in
    ``adata.uns["provenance"]`` and ``perturbench_devel.PROVENANCE.json``, licence (BSD-3-Clause, PerturBench) in
    ``perturbench_devel.LICENSE.md`` beside it.

    Arguments:
        dataset: ``"norman19"`` or ``"mcfaline23"`` for one study's cells; None for both.

    Returns:
        AnnData: ``X`` float32 CSR integer counts; ``obs["condition"]`` the perturbation label (``"control"``,
        combinations joined by ``"+"``), ``obs["cell_type"]`` (``"k562"`` or the glioblastoma line ``"A172"``, ``"T98G"``, ``"U87MG"``),
        ``obs["dataset"]``, ``obs["dose"]``, ``obs["perturbation_type"]``. A fresh copy on every call.

    Raises:
        ValueError: an unknown ``dataset``.
    """
    if dataset not in (None, "norman19", "mcfaline23"):
        raise ValueError(f"dataset must be None, 'norman19' or 'mcfaline23'; got {dataset!r}")
    adata = _read("perturbench_devel")
    if dataset is not None:
        adata = adata[adata.obs["dataset"] == dataset].copy()
    return adata
