"""Speed of genjax.metrics' two-sample statistics against numpy / scipy implementations of the same maths.

Points are Gaussian clouds in 30 dimensions (the size of the evaluation's PCA space), n x n cells.

* energy distance: genjax (JAX, 256 x 256 tiles, U-statistic) vs numpy with ``scipy.spatial.distance.cdist``
  on 1024-row blocks (the full-matrix call needs 3 x 8 n^2 bytes: 2.4 GB at n = 10k);
* 5-NN two-sample accuracy: genjax (tiled brute force with a running top-k) vs ``scipy.spatial.cKDTree``;
* Sinkhorn W2 (debiased, eps = 0.05 x mean squared distance, tol 1e-3): genjax (log-domain, JAX) vs the same
  iterations in numpy with ``scipy.special.logsumexp`` on the dense cost matrix.

Each entry is the best of ``--repeats`` runs after one warm-up run (compilation excluded; it is reported
separately for genjax). Results agree to float32 accuracy; the script asserts it.

    python benchmarks/metrics_speed.py --sizes 2000 10000 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

import genjax.metrics as M


def best_of(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def energy_numpy(x, y, block=1024):
    def mean_dist(a, b, same):
        total = 0.0
        for i in range(0, len(a), block):
            total += cdist(a[i:i + block], b).sum()
        n = len(a)
        return total / (n * (n - 1) if same else n * len(b))  # the diagonal of cdist(a, a) is exactly 0

    return 2 * mean_dist(x, y, False) - mean_dist(x, x, True) - mean_dist(y, y, True)


def knn_scipy(x, y, k=5):
    z = np.vstack([x, y])
    lab = np.r_[np.zeros(len(x)), np.ones(len(y))]
    _, idx = cKDTree(z).query(z, k + 1)
    vote = lab[idx[:, 1:]].mean(1)  # the first neighbour is the point itself
    return float(np.mean((vote > 0.5) == lab))


def sinkhorn_numpy(x, y, eps, tol=1e-3, max_iter=2000):
    def reg_ot(a_pts, b_pts):
        c = cdist(a_pts, b_pts, "sqeuclidean")
        n, m = c.shape
        loga, logb = np.full(n, -np.log(n)), np.full(m, -np.log(m))
        f, g = np.zeros(n), np.zeros(m)
        for _ in range(max_iter):
            g = -eps * logsumexp(loga[:, None] + (f[:, None] - c) / eps, axis=0)
            f_new = -eps * logsumexp(logb[None, :] + (g[None, :] - c) / eps, axis=1)
            err = np.sum(np.exp(loga) * np.abs(np.expm1((f - f_new) / eps)))
            f = f_new
            if err < tol:
                break
        return np.exp(loga) @ f + np.exp(logb) @ g

    return np.sqrt(max(reg_ot(x, y) - 0.5 * (reg_ot(x, x) + reg_ot(y, y)), 0.0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--dim", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sinkhorn-max", type=int, default=2000, help="largest n for the Sinkhorn comparison")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    rows = []
    for n in args.sizes:
        x = rng.normal(size=(n, args.dim)).astype(np.float32)
        y = (rng.normal(size=(n, args.dim)) * 1.1 + 0.1).astype(np.float32)
        x64, y64 = x.astype(np.float64), y.astype(np.float64)

        t = time.perf_counter()
        M.energy_distance(x, y)
        compile_ed = time.perf_counter() - t
        ed_g, t_g = best_of(lambda x=x, y=y: M.energy_distance(x, y), args.repeats)
        ed_p, t_p = best_of(lambda x=x64, y=y64: energy_numpy(x, y), args.repeats)
        assert abs(ed_g - ed_p) < 1e-3 * abs(ed_p) + 1e-3, (ed_g, ed_p)
        rows.append(("energy distance", n, t_g, t_p, compile_ed - t_g, "numpy + scipy cdist"))

        t = time.perf_counter()
        M.knn_two_sample_accuracy(key, x, y)
        compile_knn = time.perf_counter() - t
        kn_g, t_g = best_of(lambda x=x, y=y: M.knn_two_sample_accuracy(key, x, y), args.repeats)
        kn_p, t_p = best_of(lambda x=x64, y=y64: knn_scipy(x, y), args.repeats)
        assert abs(kn_g - kn_p) < 2e-3, (kn_g, kn_p)  # equal sizes: the same leave-one-out test
        rows.append(("5-NN accuracy", n, t_g, t_p, compile_knn - t_g, "scipy cKDTree"))

        if n <= args.sinkhorn_max:
            eps = M.default_epsilon(x)
            t = time.perf_counter()
            M.sinkhorn_w2(x, y, epsilon=eps)
            compile_w2 = time.perf_counter() - t
            w2_g, t_g = best_of(lambda x=x, y=y, e=eps: M.sinkhorn_w2(x, y, epsilon=e), args.repeats)
            w2_p, t_p = best_of(lambda x=x64, y=y64, e=eps: sinkhorn_numpy(x, y, e), args.repeats)
            assert abs(w2_g - w2_p) < 5e-3 * w2_p, (w2_g, w2_p)
            rows.append(("Sinkhorn W2 (debiased)", n, t_g, t_p, compile_w2 - t_g, "numpy + scipy logsumexp"))

    print(f"{'statistic':<24} {'n':>6} {'genjax s':>9} {'peer s':>9} {'peer/genjax':>11} {'compile s':>9}  peer")
    for name, n, tg, tp, tc, peer in rows:
        print(f"{name:<24} {n:>6} {tg:>9.3f} {tp:>9.3f} {tp / tg:>11.2f} {max(tc, 0):>9.2f}  {peer}")


if __name__ == "__main__":
    main()
