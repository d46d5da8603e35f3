"""The real-vs-real control of genjax.metrics on PBMC3k: the reference figures of issue 6.

Protocol (issue 6): 80/20 split of the 2638 PBMC3k cells stratified by cell type (20% of each type, rounded,
held out); metrics on log1p of counts normalised to 1e4 in a 30-PC space fitted on the held-out (real) cells;
the training cells play the "generated" set. Reference: energy distance 0.68, 5-NN accuracy 0.51, a classifier
fitted on real cells assigns the other real cells to their type 92% of the time.

Also prints what the other conventions would give on the same split (V-statistic, PCA fitted on the training or
on all cells), to show which one the reference figures use, and the ``control="split"`` control on all cells.

    python benchmarks/metrics_control_pbmc3k.py --seeds 0 1 2 3 [--data /path/to/pbmc3k.h5ad]
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np

import genjax.metrics as M


def split(cell_type: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(cell_type):
        idx = np.flatnonzero(cell_type == c)
        rng.shuffle(idx)
        n = int(round(0.2 * len(idx)))
        test += list(idx[:n])
        train += list(idx[n:])
    return np.sort(train), np.sort(test)


def conventions(a, train, test) -> dict[str, float]:
    """Squared energy distance, training vs held-out cells, under the alternative conventions."""
    log_tr, log_te = M.normalize_log1p(a.X[train]), M.normalize_log1p(a.X[test])
    out = {}
    for fit_name, fit in (("held-out", log_te), ("train", log_tr), ("all", np.vstack([log_tr, log_te]))):
        pca = M.pca_fit(fit, 30)
        x, y = np.asarray(M.pca_transform(pca, log_te)), np.asarray(M.pca_transform(pca, log_tr))
        for stat in ("u", "v"):
            out[f"PCA on {fit_name}, {stat.upper()}"] = M.energy_distance(x, y, statistic=stat)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/pbmc3k.h5ad")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    a = ad.read_h5ad(args.data)
    cell_type = np.asarray(a.obs["cell_type"]).astype(str)
    names = ["energy_distance", "knn_accuracy", "label_accuracy", "mmd_rbf", "w2_sinkhorn", "pearson_log_mean",
             "pearson_log_var", "pearson_zero_frac"]
    print(f"{'seed':>4} {'s':>6} " + " ".join(f"{n[:14]:>14}" for n in names))
    results = []
    for seed in args.seeds:
        train, test = split(cell_type, seed)
        t = time.perf_counter()
        ev = M.evaluate(a[test], a[train], condition_key="cell_type", control=a[train], seed=seed)
        dt = time.perf_counter() - t
        row = [ev.value(n, which="control") for n in names]
        results.append(row)
        print(f"{seed:>4} {dt:>6.1f} " + " ".join(f"{v:>14.4f}" for v in row))
    mean = np.mean(results, axis=0)
    print(f"{'mean':>4} {'':>6} " + " ".join(f"{v:>14.4f}" for v in mean))
    train, test = split(cell_type, args.seeds[0])
    print(f"\nenergy distance, train vs held-out, seed {args.seeds[0]}, by convention:")
    for name, value in conventions(a, train, test).items():
        print(f"  {name:<24} {value:.4f}")
    ev = M.evaluate(a, a[:10], control="split", seed=args.seeds[0])
    print("\ncontrol='split' on all 2638 cells (1319 vs 1319, PCA on the reference half):",
          {n: round(ev.value(n, which="control"), 4) for n in ("energy_distance", "knn_accuracy")})


if __name__ == "__main__":
    main()
