"""Data sets: the bundled PBMC3k counts and synthetic generators with known truth.

* :func:`pbmc3k`: 2638 PBMCs x 2767 genes of raw UMI counts with 8 cell-type labels (10x Genomics, CC BY 4.0),
  shipped inside the package (``genjax/data/datasets/data/``, with its provenance and licence).
* :func:`perturbench_devel`: PerturBench's development set, Norman 2019 CRISPRa singles and doubles and
  McFaline-Figueroa 2023 CRISPRi knockouts in three cell lines (5961 cells x 500 genes, BSD-3-Clause), shipped too.
* :func:`synthetic_counts`: single-cell-like NB counts with known mean proportions per cell type and known
  per-gene inverse dispersions.
* :func:`toy_bulk`: bulk-like NB counts with known tissue, disease and batch effects.
* :func:`factor_counts`: NB counts driven by known independent discrete factors, one gene programme each (for
  disentanglement metrics).
"""

from ._bundled import data_path as data_path
from ._bundled import pbmc3k as pbmc3k
from ._bundled import perturbench_devel as perturbench_devel
from ._synthetic import factor_counts as factor_counts
from ._synthetic import synthetic_counts as synthetic_counts
from ._synthetic import toy_bulk as toy_bulk
