"""Scale: a genjax NB VAE on 200k cells x 2000 genes of synthetic sparse counts, streamed from memory or disk.

The data set is generated in blocks (NB counts of 8 cell types, log-normal library sizes, ~90% zeros) and written
to an ``.h5ad`` file (CSR). Each mode then runs in a fresh subprocess, so that its peak resident memory
(``ru_maxrss``) is its own:

* ``backed``: ``anndata.read_h5ad(path, backed="r")``: rows are read from disk per dispatch, X is never loaded;
* ``csr``: the CSR matrix in memory; minibatches are densified per dispatch on the host;
* ``dense``: a dense float32 copy moved to the device once (the fastest path, and the memory it costs).

Reported per mode: time to open the data and set up the model, training throughput (training cells per second
over the epochs after the first, which includes compilation) and peak RSS, beside the size of X in each form.

usage: python benchmarks/scale.py [--cells 200000] [--genes 2000] [--epochs 2] [--modes backed,csr,dense]
                                  [--dir DIR (default: a temporary directory)]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_data(path: Path, n_cells: int, n_genes: int, seed: int = 0) -> dict:
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_types = 8
    base = rng.normal(0.0, 3.0, n_genes)  # heavy-tailed gene means: ~90% zeros at 1200 counts per cell
    rho = np.exp(base[None, :] + rng.normal(0.0, 0.7, (n_types, n_genes)))
    rho /= rho.sum(axis=1, keepdims=True)
    theta = np.exp(rng.normal(1.0, 1.0, n_genes))
    types = rng.integers(0, n_types, n_cells)
    blocks = []
    for start in range(0, n_cells, 10000):
        t = types[start:start + 10000]
        lib = np.exp(rng.normal(np.log(1200.0), 0.4, t.size))
        mu = lib[:, None] * rho[t]
        x = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)  # NB(mu, theta) as gamma-Poisson
        x[x.sum(axis=1) == 0, 0] = 1.0  # no empty cells
        blocks.append(sp.csr_matrix(x))
    X = sp.vstack(blocks, format="csr")
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type_{k}" for k in types])},
                       index=[f"cell_{i}" for i in range(n_cells)])
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])).write_h5ad(path)
    return {"cells": n_cells, "genes": n_genes, "nnz": int(X.nnz), "zero_fraction": 1.0 - X.nnz / (n_cells * n_genes),
            "csr_mb": (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20,
            "dense_mb": n_cells * n_genes * 4 / 2**20, "file_mb": path.stat().st_size / 2**20}


def worker(path: str, mode: str, epochs: int) -> None:
    import anndata as ad
    import jax
    import numpy as np

    import genjax

    t0 = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r" if mode == "backed" else None)
    if mode == "dense":
        adata.X = np.asarray(adata.X.toarray(), np.float32)
    vae = genjax.VAE(adata, likelihood="nb")
    t_setup = time.perf_counter() - t0
    history = vae.fit(max_epochs=epochs, batch_size=128, progress=False, seed=0)
    n_train = len(vae.train_indices)
    times = [h["time"] for h in history]
    steady = (len(times) - 1) * n_train / (times[-1] - times[0]) if len(times) > 1 else n_train / times[0]
    out = {"mode": mode, "setup_s": t_setup, "epoch_s": [round(b - a, 2) for a, b in zip([0.0] + times[:-1], times, strict=True)],
           "cells_per_s": steady, "train_cells": n_train, "final_loss": history[-1]["loss"],
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "jax": jax.__version__}
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--modes", default="backed,csr,dense")
    p.add_argument("--dir", default=None)
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], int(a.worker[2]))
        return
    tmp = tempfile.TemporaryDirectory() if a.dir is None else None
    folder = Path(a.dir or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic_{a.cells}x{a.genes}.h5ad"
    t0 = time.perf_counter()
    info = make_data(path, a.cells, a.genes)
    print(f"data: {info['cells']} cells x {info['genes']} genes, {100 * info['zero_fraction']:.1f}% zeros; "
          f"X as CSR {info['csr_mb']:.0f} MB, dense float32 {info['dense_mb']:.0f} MB, file {info['file_mb']:.0f} MB "
          f"(written in {time.perf_counter() - t0:.0f} s); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
          flush=True)
    rows = []
    for mode in a.modes.split(","):
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None)
        proc = subprocess.run([sys.executable, __file__, "--worker", str(path), mode, str(a.epochs)],
                              capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"mode {mode} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(line[len("RESULT "):])
        rows.append(r)
        print(f"  {mode:7s} setup {r['setup_s']:6.1f} s   epochs {r['epoch_s']} s   {r['cells_per_s']:8.0f} cells/s   "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    print(f"\n{'mode':8s} {'cells/s':>9s} {'peak RSS MB':>12s} {'setup s':>8s}   (X: CSR {info['csr_mb']:.0f} MB, "
          f"dense {info['dense_mb']:.0f} MB)")
    for r in rows:
        print(f"{r['mode']:8s} {r['cells_per_s']:9.0f} {r['peak_rss_mb']:12.0f} {r['setup_s']:8.1f}")
    (folder / "scale_results.json").write_text(json.dumps({"data": info, "rows": rows}, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
