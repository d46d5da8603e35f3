"""A generator without conditions, with and without k-means pseudo-conditions of its prior (``prior_clusters``).

One VAE per data set (scvi-tools defaults), then the latent prior fitted once per cluster count on the same
latents; each generates as many cells as are held out, scored by ``genjax.metrics.evaluate`` against the held-out
cells with the training cells as the real-vs-real control (energy distance and 5-NN two-sample accuracy).

Data: ``pbmc3k`` (the bundled set, split stratified by ``cell_type``) or ``kang`` (Kang 2018 IFN-beta PBMCs from
``--kang-path``, the 2000 genes of highest variance of log1p counts normalised to 1e4, split stratified by
``seurat_annotations``); 80/20 split, seed 0. Labels are used only for the split, never by the generator.

usage: python benchmarks/prior_clusters.py [--dataset pbmc3k|kang] [--clusters 0,8,16] [--prior diffusion]
                                           [--seeds 1,2] [--kang-path ../shared/data/kang2018_ifnb.h5ad]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def load(name: str, kang_path: str):
    import anndata as ad
    import scipy.sparse as sp

    import genjax

    if name == "pbmc3k":
        return genjax.datasets.pbmc3k(), "cell_type"
    a = ad.read_h5ad(kang_path)
    X = sp.csr_matrix(a.X)
    norm = sp.diags(1e4 / np.asarray(X.sum(1)).ravel()) @ X
    norm.data = np.log1p(norm.data)
    mean = np.asarray(norm.mean(0)).ravel()
    var = np.asarray(norm.multiply(norm).mean(0)).ravel() - mean**2
    a = a[:, np.sort(np.argsort(-var)[:2000])].copy()
    a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
    a.obs["seurat_annotations"] = a.obs["seurat_annotations"].astype(str)
    return a, "seurat_annotations"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="pbmc3k", choices=["pbmc3k", "kang"])
    p.add_argument("--clusters", default="0,8,16")
    p.add_argument("--prior", default="diffusion", choices=["diffusion", "flow"])
    p.add_argument("--seeds", default="1,2", help="generation seeds")
    p.add_argument("--kang-path", default="../shared/data/kang2018_ifnb.h5ad")
    a = p.parse_args()

    import genjax
    from genjax.cli import stratified_split

    adata, key = load(a.dataset, a.kang_path)
    tr, te = stratified_split(adata.obs[key], 0.2, seed=0)
    train, test = adata[tr].copy(), adata[te].copy()
    print(f"{a.dataset}: {train.n_obs} training / {test.n_obs} held-out cells x {adata.n_vars} genes", flush=True)
    gen = genjax.LatentGenerator(train, prior=a.prior, seed=0)
    t0 = time.perf_counter()
    for i, k in enumerate(int(c) for c in a.clusters.split(",")):
        gen.options["prior_clusters"] = k  # same VAE after the first fit; only the prior is refitted
        gen.fit(seed=0, progress=False, fit_vae=i == 0)
        for s in (int(v) for v in a.seeds.split(",")):
            ev = genjax.metrics.evaluate(test, gen.generate(test.n_obs, seed=s), control=train, seed=0)
            print(f"{a.prior} clusters={k:3d} seed {s}: energy distance {ev.value('energy_distance'):.3f} "
                  f"(control {ev.value('energy_distance', which='control'):.3f}), 5-NN accuracy "
                  f"{ev.value('knn_accuracy'):.3f} (control {ev.value('knn_accuracy', which='control'):.3f}) "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
