"""Peer for benchmarks/differential_expression.py: scvi-tools' SCVI and its ``differential_expression``.

Runs in its own environment (torch + scvi-tools), e.g. ``/work/venv-peer/bin/python``. Trains SCVI on the raw
counts in ``X`` (optionally with ``--batch-key`` as scvi's ``batch_key``) and writes the change-mode table of
``GROUP1`` against ``GROUP2`` (``rest``: every other cell) as a CSV indexed by gene.

usage: python scvi_de.py DATA.h5ad GROUPBY GROUP1 GROUP2 OUT.csv [--epochs N] [--delta 0.25] [--test-mode three]
           [--batch-key KEY] [--threads 2] [--seed 0]
"""

import argparse
import time

import anndata as ad
import scvi
import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("groupby")
    p.add_argument("group1")
    p.add_argument("group2")
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--delta", type=float, default=0.25)
    p.add_argument("--test-mode", default="three", choices=["two", "three"])
    p.add_argument("--batch-key", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    scvi.settings.seed = a.seed
    adata = ad.read_h5ad(a.data)
    adata.obs[a.groupby] = adata.obs[a.groupby].astype(str).astype("category")
    scvi.model.SCVI.setup_anndata(adata, batch_key=a.batch_key)
    model = scvi.model.SCVI(adata)
    t0 = time.perf_counter()
    model.train(max_epochs=a.epochs, accelerator="cpu", enable_progress_bar=False)
    print(f"scvi train {time.perf_counter() - t0:.1f} s", flush=True)
    group2 = None if a.group2 == "rest" else a.group2
    res = model.differential_expression(groupby=a.groupby, group1=a.group1, group2=group2, mode="change",
                                        delta=a.delta, test_mode=a.test_mode, silent=True)
    res.index.name = "gene"
    res.to_csv(a.out)


if __name__ == "__main__":
    main()
