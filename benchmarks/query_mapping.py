"""Query mapping (scArches surgery, ``genjax.models.load_query_data``) on Kang 2018: a held-out batch mapped onto a
reference VAE, scored by kNN cell-type label transfer beside the same VAE trained with that batch included.

Data: Kang et al. 2018 IFN-beta PBMCs (``--path``, 2000 cells x 13215 genes of raw counts). The batch column is
``stim`` (CTRL / STIM: the only batch-like column; ``orig.ident`` is the same split). The reference is the cells of
every other batch (default: CTRL), the query the held-out batch (default: STIM). Genes: the ``--n-top-genes``
seurat_v3 highly variable genes of the reference cells (``genjax.data.highly_variable_genes``), so that the query
meets the reference's genes as it would in practice; cells left with no counts are dropped.

Models (scvi-tools default sizes: 128 hidden, 10 latent, 1 layer; ``conditions=[batch]``; KL warm-up over the first
quarter of the epochs so training ends at the ELBO):

* reference: trained on the reference cells;
* mapped: ``load_query_data(query, reference)`` trained on the query cells for ``--query-epochs`` at
  ``--query-lr``: only the new batch's embedding rows move ("new batch rows"), or with
  ``unfrozen_first_layer=True`` also the whole first layer of the encoder and the decoder ("+ first layers");
* full: the same VAE trained on all cells, the held-out batch included (the upper reference);
* as-reference-batch: the query encoded by the reference model as if it were reference batch ``--wrong-batch``
  (default: the first reference batch) - what one gets without surgery.

Score: kNN label transfer (``--k`` neighbours, majority vote, scipy cKDTree): reference cells' latents and
``seurat_annotations`` -> query cells' labels; accuracy and balanced accuracy (mean per-type recall).

usage: python benchmarks/query_mapping.py [--path ../shared/data/kang2018_ifnb.h5ad] [--epochs 200]
                                          [--query-epochs 200] [--query-lr 1e-2] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def knn_transfer(z_ref, labels_ref, z_query, labels_query, k: int) -> tuple[float, float]:
    """(accuracy, balanced accuracy) of the majority label of each query cell's ``k`` nearest reference cells."""
    import pandas as pd
    from scipy.spatial import cKDTree

    _, idx = cKDTree(z_ref).query(z_query, k)
    codes, names = pd.factorize(np.asarray(labels_ref))
    votes = np.apply_along_axis(np.bincount, 1, codes[idx], minlength=len(names))
    pred = names[votes.argmax(axis=1)]
    truth = np.asarray(labels_query)
    recalls = [np.mean(pred[truth == t] == t) for t in np.unique(truth)]
    return float(np.mean(pred == truth)), float(np.mean(recalls))


def main() -> None:
    import anndata as ad
    import jax
    import pandas as pd

    import genjax
    from genjax.models import load_query_data

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", default="../shared/data/kang2018_ifnb.h5ad")
    p.add_argument("--batch-key", default="stim")
    p.add_argument("--label-key", default="seurat_annotations")
    p.add_argument("--holdout", default="STIM", help="batch held out as the query")
    p.add_argument("--wrong-batch", default=None, help="reference batch the query is encoded as (baseline)")
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=200, help="epochs of the reference and full models")
    p.add_argument("--query-epochs", type=int, default=200)
    p.add_argument("--query-lr", type=float, default=1e-2)
    p.add_argument("--k", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    a = ad.read_h5ad(args.path)
    a.obs[args.batch_key] = a.obs[args.batch_key].astype(str)
    is_ref = (a.obs[args.batch_key] != args.holdout).to_numpy()
    if is_ref.all():
        raise SystemExit(f"no cell has {args.batch_key}={args.holdout!r}")
    ref_cells = a[is_ref].copy()
    genjax.data.highly_variable_genes(ref_cells, args.n_top_genes)
    genes = ref_cells.var_names[ref_cells.var["highly_variable"].to_numpy()]
    a = a[:, genes].copy()
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    is_ref = (a.obs[args.batch_key] != args.holdout).to_numpy()
    ref_a, query = a[is_ref].copy(), a[~is_ref].copy()
    wrong = args.wrong_batch or sorted(set(ref_a.obs[args.batch_key]))[0]
    print(f"{a.n_obs} cells x {a.n_vars} genes; reference {ref_a.n_obs} cells "
          f"({sorted(set(ref_a.obs[args.batch_key]))}), query {query.n_obs} cells ({args.holdout})")

    opts = dict(conditions=[args.batch_key], seed=args.seed)
    fit = dict(max_epochs=args.epochs, kl_warmup_epochs=max(1, args.epochs // 4), seed=args.seed, progress=False)
    rows = []
    t = time.perf_counter()
    reference = genjax.VAE(ref_a, **opts)
    reference.fit(**fit)
    t_ref = time.perf_counter() - t
    z_ref = reference.latent(ref_a)
    labels_ref, labels_q = ref_a.obs[args.label_key], query.obs[args.label_key]

    for unfrozen in (False, True):
        t = time.perf_counter()
        model = load_query_data(query, reference, unfrozen_first_layer=unfrozen)
        model.fit(max_epochs=args.query_epochs, lr=args.query_lr, seed=args.seed, progress=False)
        t_map = time.perf_counter() - t
        name = "mapped: + first layers" if unfrozen else "mapped: new batch rows"
        rows.append((name, *knn_transfer(z_ref, labels_ref, model.latent(query), labels_q, args.k),
                     f"{t_map:.0f}", model.n_trainable))
        if not unfrozen:
            mapped = model

    as_wrong = query.copy()
    as_wrong.obs[args.batch_key] = pd.Categorical([wrong] * as_wrong.n_obs)
    rows.append((f"as batch {wrong} (no surgery)",
                 *knn_transfer(z_ref, labels_ref, reference.latent(as_wrong), labels_q, args.k), "0", 0))

    t = time.perf_counter()
    full = genjax.VAE(a, **opts)
    full.fit(**fit)
    t_full = time.perf_counter() - t
    z_full = full.latent(a)
    rows.append(("full (batch in training)",
                 *knn_transfer(z_full[is_ref], labels_ref, z_full[~is_ref], labels_q, args.k), f"{t_full:.0f}",
                 sum(int(np.size(x)) for x in jax.tree.leaves(full.params))))

    frozen_ok = all(
        np.array_equal(np.asarray(m)[tuple(slice(0, s) for s in np.shape(r))], np.asarray(r))
        for m, r in zip(jax.tree.leaves(mapped.params),
                        jax.tree.leaves(reference.params), strict=True))
    print(f"reference trained in {t_ref:.0f} s; reference weights unchanged after query training: {frozen_ok}; "
          f"query history records: {len(mapped.history) - mapped.reference_epochs} (after "
          f"{mapped.reference_epochs} reference epochs)")
    print(f"\nkNN ({args.k}) label transfer of {args.label_key}, {args.holdout} cells from the reference latent")
    print(f"| {'model':30s} | accuracy | balanced | train s | trained params |")
    print(f"|{'-' * 32}|---------:|---------:|--------:|---------------:|")
    for name, acc, bal, secs, n in rows:
        print(f"| {name:30s} | {acc:8.3f} | {bal:8.3f} | {secs:>7s} | {n:14d} |")


if __name__ == "__main__":
    main()
