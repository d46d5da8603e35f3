"""IWAE as a training objective on PBMC3k: the ELBO against the IWAE bound with K = 5 and 20 draws per cell, with
the plain reparameterised gradient (``objective="iwae"``) and the doubly reparameterised one (``"iwae-dreg"``,
Tucker et al. 2019).

    python benchmarks/iwae.py [--epochs 200] [--ks 1 5 20] [--eval-samples 5000] [--snr-keys 200]
                              [--genes 0] [--out benchmarks/results/iwae.csv]

For each (objective, K), one NB VAE (scvi-tools' sizes: 128 hidden, 10 latent) is trained on 90% of the cells
(the same split and seed for all; no KL warm-up unless ``--warmup-epochs``, so every run optimises its own bound
from the start) and measured:

* ``heldout_ll``: mean per-cell IWAE estimate of ``log p(x)`` on the 10% held-out cells with
  ``--eval-samples`` draws (:meth:`genjax.VAE.marginal_ll`; the issue's IWAE-5000);
* ``heldout_elbo``: the held-out ELBO (:meth:`genjax.VAE.elbo`: one draw per cell, analytic KL);
* ``s_per_epoch``: median wall time of an epoch after the first (which compiles), validation included;
* ``snr_own``: encoder gradient signal-to-noise ratio at the run's own trained parameters, for its own estimator:
  for each encoder parameter entry ``|mean_keys g| / std_keys g`` over ``--snr-keys`` keys on one fixed batch of
  256 training cells, then the median over entries (Rainforth et al. 2018, "Tighter variational bounds are not
  necessarily better");
* ``snr_common``: the same for every estimator at one common parameter point (the ELBO-trained model), which
  separates the estimator from the parameters it reached.

Prints a table and writes it as CSV. ``--genes N`` keeps the N genes of highest total count (0: all 2767).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import genjax
from genjax.vae import make_vae_loss

HERE = Path(__file__).resolve().parent
ENCODER = ("z_encoder", "z_mean", "z_logvar", "l_encoder", "l_mean", "l_logvar")
FULL = jnp.asarray(10**9)  # an optimizer step past any warm-up: KL weight 1


def load(n_genes: int, seed: int):
    """PBMC3k split 90 / 10 into training and held-out cells (optionally the top ``n_genes`` genes by total)."""
    a = genjax.datasets.pbmc3k()
    if n_genes:
        totals = np.asarray(a.X.sum(0)).ravel()
        a = a[:, np.sort(np.argsort(-totals)[:n_genes])].copy()
    a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
    perm = np.random.default_rng(seed).permutation(a.n_obs)
    n_test = a.n_obs // 10
    return a[perm[n_test:]].copy(), a[perm[:n_test]].copy()


def encoder_snr(module, params, batch, objective: str, k: int, n_keys: int, seed: int = 123) -> float:
    """Median over encoder parameter entries of ``|mean g| / std g`` over ``n_keys`` keys (fixed batch)."""
    f = make_vae_loss(module, objective=objective, n_importance=k)
    enc = {n: v for n, v in params.items() if n in ENCODER}
    rest = {n: v for n, v in params.items() if n not in ENCODER}

    def grad_one(key):
        g = jax.grad(lambda e: f({**rest, **e}, batch, key, FULL)[0])(enc)
        return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])

    g = np.asarray(jax.jit(lambda keys: jax.lax.map(grad_one, keys))(
        jax.random.split(jax.random.key(seed), n_keys)), np.float64)
    snr = np.abs(g.mean(0)) / np.maximum(g.std(0), 1e-30)
    return float(np.median(snr))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20])
    p.add_argument("--objectives", nargs="+", default=["iwae", "iwae-dreg"])
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--snr-keys", type=int, default=200)
    p.add_argument("--genes", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "iwae.csv")
    args = p.parse_args()

    train, test = load(args.genes, args.seed)
    print(f"PBMC3k: {train.n_obs} training / {test.n_obs} held-out cells x {train.n_vars} genes; "
          f"device {jax.devices()[0].platform}")
    runs = [("elbo", 1)] + [(o, k) for o in args.objectives for k in args.ks if k > 1]
    models, rows = {}, []
    for objective, k in runs:
        opts = {} if objective == "elbo" else {"objective": objective, "n_importance": k}
        m = genjax.VAE(train, seed=args.seed, **opts)
        t0 = time.perf_counter()
        hist = m.fit(max_epochs=args.epochs, batch_size=args.batch_size, kl_warmup_epochs=args.warmup_epochs,
                     seed=args.seed, progress=False)
        wall = time.perf_counter() - t0
        times = np.diff([0.0] + [r["time"] for r in hist])
        per_epoch = float(np.median(times[1:])) if len(times) > 1 else float(times[0])
        models[(objective, k)] = m
        t1 = time.perf_counter()
        ll = m.marginal_ll(test, n_samples=args.eval_samples)
        t_eval = time.perf_counter() - t1
        elbo = m.elbo(test)
        rows.append({"objective": objective, "K": k, "heldout_ll": ll, "heldout_elbo": elbo,
                     "s_per_epoch": per_epoch, "fit_s": wall, "eval_s": t_eval, "epochs": len(hist)})
        print(f"{objective:>9} K={k:<3} held-out log p(x) {ll:10.2f}  ELBO {elbo:10.2f}  "
              f"{per_epoch:.3f} s/epoch  (fit {wall:.0f} s, IWAE-{args.eval_samples} eval {t_eval:.0f} s)",
              flush=True)

    base = models[("elbo", 1)]
    rows_idx = np.random.default_rng(args.seed).choice(train.n_obs, min(256, train.n_obs), replace=False)
    batch = jax.tree.map(jnp.asarray, base.batch(rows=np.sort(rows_idx)))
    for row in rows:
        key = (row["objective"], row["K"])
        m = models[key]
        row["snr_own"] = encoder_snr(m.module, m.params, batch, *key, args.snr_keys)
        row["snr_common"] = encoder_snr(base.module, base.params, batch, *key, args.snr_keys)

    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
