"""Peer for benchmarks/generation_quality.py: scvi-tools SCVI trained on the same split, sampled from its prior.

Runs in its own environment (torch + scvi-tools), e.g. ``/work/venv-peer/bin/python``. Writes two .h5ad files of
generated counts: SCVI unconditional (z ~ N(0, I), library sizes drawn from the training cells) and SCVI with the
condition as a decoder covariate (``batch_key``; z ~ N(0, I), the held-out cells' conditions, library sizes drawn
from training cells of the same condition).

usage: python scvi_generate.py TRAIN.h5ad HELDOUT.h5ad OUT_DIR [--key cell_type] [--epochs N] [--threads 2]
"""

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scvi
import torch


def sample_counts(model, n, library, batch_index, seed):
    torch.manual_seed(seed)
    module = model.module
    module.eval()
    with torch.no_grad():
        z = torch.randn(n, module.n_latent)
        lib = torch.tensor(np.log(library), dtype=torch.float32)[:, None]
        out = module.generative(z=z, library=lib, batch_index=torch.tensor(batch_index, dtype=torch.long)[:, None])
        return out["px"].sample().numpy().astype(np.float32)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("train")
    p.add_argument("heldout")
    p.add_argument("out")
    p.add_argument("--key", default="cell_type")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    scvi.settings.seed = a.seed
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = ad.read_h5ad(a.train), ad.read_h5ad(a.heldout)
    rng = np.random.default_rng(a.seed)
    lib_train = np.asarray(train.X.sum(axis=1)).ravel()
    labels_train = np.asarray(train.obs[a.key]).astype(str)
    labels_test = np.asarray(test.obs[a.key]).astype(str)
    n = test.n_obs

    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(train)
    m = scvi.model.SCVI(train, gene_likelihood="nb")
    m.train(max_epochs=a.epochs, enable_progress_bar=False)
    t_uncond = time.perf_counter() - t0
    x = sample_counts(m, n, rng.choice(lib_train, n), np.zeros(n, int), a.seed)
    gen = ad.AnnData(x, var=train.var[[]].copy())
    gen.obs[a.key] = labels_train[rng.integers(0, len(labels_train), n)]  # labels unknown to an unconditional model
    gen.write_h5ad(out / "scvi_unconditional.h5ad")

    t0 = time.perf_counter()
    train_c = train.copy()
    scvi.model.SCVI.setup_anndata(train_c, batch_key=a.key)
    mc = scvi.model.SCVI(train_c, gene_likelihood="nb")
    mc.train(max_epochs=a.epochs, enable_progress_bar=False)
    t_cond = time.perf_counter() - t0
    cats = list(mc.adata_manager.get_state_registry("batch").categorical_mapping)
    codes = np.array([cats.index(v) for v in labels_test])
    lib = np.array([rng.choice(lib_train[labels_train == v]) for v in labels_test])
    x = sample_counts(mc, n, lib, codes, a.seed + 1)
    gen = ad.AnnData(x, var=train.var[[]].copy())
    gen.obs[a.key] = labels_test
    gen.write_h5ad(out / "scvi_conditional.h5ad")
    print(f"scvi_train_seconds_unconditional={t_uncond:.1f}")
    print(f"scvi_train_seconds_conditional={t_cond:.1f}")


if __name__ == "__main__":
    main()
