"""The model zoo: the roadmap's models side by side at small scale, each beside what it is compared against.

Three comparisons, each trained here and printed as one table (and written to summary.json / summary.md):

1. **VAE objectives** on PBMC3k (held-out cells): the ELBO against the importance-weighted bound (IWAE, Burda et
   al. 2016) with ``K`` samples, with and without the doubly reparameterised gradient (DReG, Tucker et al. 2019):
   held-out ``log p(x)`` by the IWAE estimate with many samples (``VAE.marginal_ll``) and seconds per epoch.
2. **beta-VAE** on ``genjax.datasets.factor_counts`` (NB counts driven by known independent factors): MIG and DCI
   of the posterior means for each ``beta``, beside MIG of the same latent under a random rotation (an entangled
   control the metric must score lower); latent traversals of the best ``beta``
   (``genjax.plots.latent_traversal``).
3. **Field networks** of the latent prior on PBMC3k: ``genjax.nn.FieldNet`` (an MLP) against
   ``genjax.nn.DiTField`` (a transformer over tokens of latent dimensions, adaLN-Zero conditioning) on the same
   VAE: energy distance and 5-NN accuracy of generated against held-out cells, beside the real-vs-real control
   (training cells against held-out cells), parameter counts and training time.

Run (from the repository root)::

    python examples/model_zoo.py            # about ten minutes on 2 CPU cores
    python examples/model_zoo.py --smoke    # tiny (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/model_zoo``): objectives.png (held-out log p(x) against seconds per
epoch), disentanglement.png (MIG of each beta beside its rotated control), traversal.png, summary.json and
summary.md. At this scale the figures illustrate; benchmarks/README.md has the measured ones.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

import genjax
from genjax.plots import save_figure

from common import (
    config_class,
    config_from_args,
    finish_run,
    load_pbmc3k,
    new_figure,
    split_by_cell_type,
    start_run,
)

Config = config_class(
    __file__,
    max_cells=0,  # 0: all PBMC3k cells
    n_genes=1000,  # most expressed genes kept
    n_latent=10,
    epochs=60,  # VAE epochs (each objective, each beta)
    n_importance=5,  # K of the IWAE objectives
    eval_samples=500,  # importance samples of the held-out log p(x) estimate
    factor_cells=2000,  # synthetic factor data
    factor_genes=300,
    n_factors=4,
    factor_epochs=400,  # beta-VAE epochs (axis alignment builds slowly; benchmarks/beta_vae.py uses 1000)
    betas="1,4",  # comma-separated beta values
    prior_steps=2000,  # latent prior training steps (each field network)
    prior_width=128,  # FieldNet width (3 residual blocks)
    dit_width=64,  # DiTField token width (4 blocks, 4 heads); parameter counts of both are printed
    dit_tokens=2,  # latent dimensions per DiT token
)

SMOKE = dict(max_cells=300, n_genes=80, n_latent=4, epochs=2, n_importance=3, eval_samples=10, factor_cells=300,
             factor_genes=60, n_factors=2, factor_epochs=2, betas="1,4", prior_steps=20, prior_width=32, dit_width=16)
FULL = dict(epochs=200, eval_samples=2000, prior_steps=4000, factor_epochs=1000)


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__)


def n_params(params) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def objectives(cfg: Config, train, test) -> dict:
    """Held-out log p(x) and seconds per epoch of VAEs trained with each objective."""
    out = {}
    for name, objective, k in (("ELBO", "elbo", 1), (f"IWAE-{cfg.n_importance}", "iwae", cfg.n_importance),
                               (f"IWAE-{cfg.n_importance} + DReG", "iwae-dreg", cfg.n_importance)):
        model = genjax.VAE(train, likelihood="nb", n_latent=cfg.n_latent, objective=objective, n_importance=k,
                           seed=cfg.seed)
        t0 = time.perf_counter()
        model.fit(max_epochs=cfg.epochs, train_size=1.0, kl_warmup_epochs=max(1, cfg.epochs // 3), seed=cfg.seed,
                  progress=False)
        seconds = (time.perf_counter() - t0) / cfg.epochs
        ll = model.marginal_ll(test, n_samples=cfg.eval_samples, seed=cfg.seed)
        out[name] = {"heldout_log_px": float(ll), "seconds_per_epoch": round(seconds, 3)}
        print(f"  {name:22s} held-out log p(x) {ll:9.2f}   {seconds:.2f} s / epoch", flush=True)
    return out


def disentanglement(cfg: Config):
    """MIG / DCI per beta on the synthetic factors, the rotated-latent control, and the best model."""
    data = genjax.datasets.factor_counts(cfg.factor_cells, cfg.factor_genes, cfg.n_factors, seed=cfg.seed)
    factors = data.obs[data.uns["truth"]["factor_keys"]]
    # as many latent dimensions as factors (with more, a VAE spreads each factor over several and MIG's gaps
    # vanish); the KL warm-up ends early, so every model trains at its own beta
    d = cfg.n_factors
    rotation, _ = np.linalg.qr(np.random.default_rng(cfg.seed).standard_normal((d, d)))
    out, best = {}, None
    for beta in (float(b) for b in cfg.betas.split(",")):
        model = genjax.VAE(data, likelihood="nb", n_latent=d, seed=cfg.seed)
        model.fit(max_epochs=cfg.factor_epochs, beta=beta, train_size=1.0,
                  kl_warmup_epochs=max(1, cfg.factor_epochs // 20), seed=cfg.seed, progress=False)
        z = np.asarray(model.latent(), np.float64)
        scores = genjax.metrics.dci(z, factors, seed=cfg.seed)
        row = {"mig": float(genjax.metrics.mig(z, factors)), "mig_rotated": float(genjax.metrics.mig(z @ rotation,
                                                                                                      factors)),
               "dci_disentanglement": float(scores.disentanglement), "dci_completeness": float(scores.completeness),
               "dci_informativeness": float(scores.informativeness)}
        out[f"beta={beta:g}"] = row
        print(f"  beta {beta:<4g} MIG {row['mig']:.3f} (rotated {row['mig_rotated']:.3f})   DCI D / C / I "
              f"{row['dci_disentanglement']:.3f} / {row['dci_completeness']:.3f} / {row['dci_informativeness']:.3f}",
              flush=True)
        if best is None or row["mig"] > best[0]:
            best = (row["mig"], beta, model)
    return out, data, best


def field_networks(cfg: Config, train, test) -> dict:
    """FieldNet against DiTField as the latent prior of one VAE, scored against held-out cells."""
    common = dict(likelihood="nb", prior="flow", conditions=["cell_type"], seed=cfg.seed,
                  vae_kwargs={"n_latent": cfg.n_latent})
    fit = dict(prior_steps=cfg.prior_steps, seed=cfg.seed, progress=False)
    mlp = genjax.LatentGenerator(train, field="mlp", prior_kwargs={"n_hidden": cfg.prior_width, "n_layers": 3},
                                 **common)
    t0 = time.perf_counter()
    mlp.fit(vae_epochs=cfg.epochs, vae_fit_kwargs={"kl_warmup_epochs": max(1, cfg.epochs // 3)}, **fit)
    vae_s = time.perf_counter() - t0
    dit = genjax.LatentGenerator(train, field="dit", field_kwargs={"tokens": cfg.dit_tokens,
                                                                   "n_hidden": cfg.dit_width, "n_heads": 4}, **common)
    dit.vae = mlp.vae  # the same VAE: only the prior differs
    out = {}
    for name, gen in (("FieldNet (MLP)", mlp), ("DiTField (latent tokens)", dit)):
        t0 = time.perf_counter()
        if gen is dit:
            gen.fit(fit_vae=False, **fit)
        prior_s = time.perf_counter() - t0 if gen is dit else None
        generated = gen.generate(test.n_obs, seed=cfg.seed + 1, cell_type=test.obs["cell_type"].astype(str).tolist())
        ev = genjax.metrics.evaluate(test, generated, condition_key="cell_type", control=train, seed=cfg.seed)
        out[name] = {"params": n_params(gen.prior_model.params), "energy_distance": ev.value("energy_distance"),
                     "knn_accuracy": ev.value("knn_accuracy"),
                     "control_energy_distance": ev.value("energy_distance", which="control"),
                     "control_knn_accuracy": ev.value("knn_accuracy", which="control"),
                     "fit_seconds": round(vae_s if prior_s is None else prior_s, 1)}
        print(f"  {name:26s} params {out[name]['params']:7d}   energy distance {out[name]['energy_distance']:.3f} "
              f"(control {out[name]['control_energy_distance']:.3f})   5-NN {out[name]['knn_accuracy']:.3f} "
              f"(control {out[name]['control_knn_accuracy']:.3f})", flush=True)
    return out


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out, t_start = start_run(cfg.out)
    adata = load_pbmc3k(cfg.seed, cfg.max_cells, cfg.n_genes, min_type_cells=10)
    train, test = split_by_cell_type(adata, 0.2, cfg.seed)
    print(f"PBMC3k: {train.n_obs} training / {test.n_obs} held-out cells x {adata.n_vars} genes")

    print("1. VAE objectives (held-out cells)")
    obj = objectives(cfg, train, test)
    print("2. beta-VAE on synthetic factors")
    dis, data, (best_mig, best_beta, best_model) = disentanglement(cfg)
    print("3. field networks of the latent prior (held-out cells)")
    fields = field_networks(cfg, train, test)

    fig = new_figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for name, row in obj.items():
        ax.scatter(row["seconds_per_epoch"], row["heldout_log_px"], label=name)
    ax.set(xlabel="seconds per epoch", ylabel="held-out log p(x)", title="VAE objectives")
    ax.legend(fontsize=7)
    figures = [save_figure(fig, out / "objectives.png")]
    fig = new_figure(figsize=(5, 3.5))
    ax = fig.subplots()
    names = list(dis)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [dis[n]["mig"] for n in names], 0.4, label="latent")
    ax.bar(x + 0.2, [dis[n]["mig_rotated"] for n in names], 0.4, label="randomly rotated")
    ax.set_xticks(x, names)
    ax.set(ylabel="MIG", title="beta-VAE on synthetic factors")
    ax.legend(fontsize=7)
    figures.append(save_figure(fig, out / "disentanglement.png"))
    genjax.plots.latent_traversal(best_model, data, path=out / "traversal.png")
    figures.append(out / "traversal.png")

    summary = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend(),
               "objectives": obj, "disentanglement": dis, "best_beta": best_beta, "best_mig": best_mig,
               "field_networks": fields}
    return finish_run(out, summary, figures, "genjax model zoo", t_start)


if __name__ == "__main__":
    main()
