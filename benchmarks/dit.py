"""DiT field vs FieldNet on PBMC3k (issue 16): latent tokens and gene-programme tokens, equal parameters, equal steps.

Protocol: PBMC3k, 80/20 split stratified by cell type (as benchmarks/generation_quality.py); metrics from
``genjax.metrics.evaluate`` on log1p of counts normalised to 1e4 in a 30-PC space fitted on the held-out cells, the
training cells as the real-vs-real control. Rows: *types drawn* (no type requested: drawn in training proportions)
and *conditional* (one cell per held-out cell with its type, guidance weight 1).

1. Latent generation: one NB VAE (scvi-tools defaults, 10-d latent) fitted once; on its standardised latents
   conditional flow (or diffusion) priors with the same optimiser, batch and steps: a ``FieldNet`` sized to the
   DiTs' parameter count, and ``DiTField`` priors with latent tokens of 1 and 2 dimensions (``--groups``).
2. Gene-programme tokens: a direct log1p-space prior (``LatentGenerator(space="log1p")``) on the top ``--genes``
   Seurat-v3 HVGs of the training cells (standardised per gene), ``FieldNet`` vs a ``DiTField`` whose tokens are
   ``--programs`` k-means programmes of the genes' loadings on the first 16 PCs of the standardised training data
   (:func:`genjax.nn.program_tokens`), again at matched parameter counts and equal steps.

Also the *prior-space energy distance*: 2000 points sampled from the prior (cell types drawn in training proportions)
against the held-out cells' points in the prior's own space (VAE latent means / normalised log1p), which resolves
differences between priors that the count-space metric (dominated by the decoder) does not; its floor is the
training cells' points against the same held-out ones (the VAE spreads its training cells' latent means a little
more than unseen cells', so priors fitted on training latents sit slightly above that floor). The same distance to
the training cells' points beside it: a prior that is much closer to its training points than to held-out ones
reproduces (memorises) its training set.

Times: prior training wall time (compilation included), the steady time per step (median over epochs after the
first) and the generation of 2 x held-out cells (compilation included).

usage: python benchmarks/dit.py [--steps 2000] [--gene-steps 1000] [--prior flow] [--groups 1,2] [--widths 64]
                                [--width 64] [--layers 4] [--genes 300] [--programs 24] [--skip-genes] [--skip-latent]
                                [--mlp-default] [--out benchmarks/out/dit]
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import genjax
from genjax.cli import stratified_split
from genjax.nn import Condition, DiTField, FieldNet, program_tokens

KEY = "cell_type"


def n_params(module, d, n_categories):
    """Parameter count of a field module over ``d`` dimensions with these condition slots."""
    cond = Condition(labels=jnp.zeros((1, len(n_categories)), jnp.int32)) if n_categories else None
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, d)), jnp.ones((1,)), cond)
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(shapes)))


def matched_mlp_width(target, d, n_categories, n_layers):
    """The FieldNet width (a multiple of 8) whose parameter count is closest to ``target``."""
    widths = range(16, 1025, 8)
    counts = [n_params(FieldNet(n_hidden=w, n_layers=n_layers, n_categories=n_categories), d, n_categories)
              for w in widths]
    return widths[int(np.argmin(np.abs(np.asarray(counts) - target)))]


def evaluate(test, train, generated):
    key = KEY if KEY in generated.obs else None
    ev = genjax.metrics.evaluate(test, generated, condition_key=key, control=train, seed=0)

    def value(m, which="generated"):
        try:
            return float(ev.value(m, which=which))
        except KeyError:
            return float("nan")

    row = {m: value(m) for m in ("energy_distance", "knn_accuracy", "mmd_rbf", "label_accuracy")}
    row.update({m + "_control": value(m, "control") for m in ("energy_distance", "knn_accuracy", "label_accuracy")})
    return row


def prior_space_distance(gen, reference, seed, n=2000):
    """Energy distances between ``n`` points sampled from the prior (cell types drawn in training proportions,
    de-standardised) and (held-out, training) cells' points in the same space (``reference``: the pair)."""
    rows = np.random.default_rng(seed).integers(0, len(gen.training_cells.cat), n)
    z = gen.sample_latent(n, seed=seed, cat=gen.training_cells.cat[rows])
    return tuple(float(genjax.metrics.energy_distance(r, z)) for r in reference)


def fit_and_score(gen, name, field, field_kwargs, prior_kwargs, steps, test, train, seed, reference):
    """Refit ``gen``'s prior with this field (same VAE / data), generate, evaluate; one result dict."""
    gen.options.update(field=field, field_kwargs=dict(field_kwargs), prior_kwargs=dict(prior_kwargs))
    t0 = time.perf_counter()
    gen.fit(prior_steps=steps, seed=seed, progress=False, fit_vae=False)
    t_fit = time.perf_counter() - t0
    hist = gen.history["prior"]
    # median over epochs after the first (which compiles)
    per_step = float(np.median([(b["time"] - a["time"]) / max(1, b["step"] - a["step"])
                                for a, b in zip(hist[:-1], hist[1:], strict=True)])) if len(hist) > 1 else float("nan")
    params = int(sum(np.size(a) for a in jax.tree.leaves(gen.prior_model.params)))
    labels = np.asarray(test.obs[KEY]).astype(str)
    t0 = time.perf_counter()
    drawn = gen.generate(test.n_obs, seed=seed + 1)
    cond = gen.generate(test.n_obs, seed=seed + 2, **{KEY: labels})
    t_gen = time.perf_counter() - t0
    res = {"name": name, "field": field, "field_kwargs": {k: v for k, v in field_kwargs.items() if k != "tokens"},
           "tokens": field_kwargs.get("tokens"), "prior_kwargs": prior_kwargs, "params": params,
           "fit_seconds": t_fit, "seconds_per_step": per_step, "generate_seconds": t_gen,
           "final_loss": float(np.mean([r["loss"] for r in hist[-5:]])),
           **dict(zip(("prior_space_energy", "prior_space_energy_train"),
                      prior_space_distance(gen, reference, seed + 3), strict=True)),
           "types_drawn": evaluate(test, train, drawn), "conditional": evaluate(test, train, cond)}
    d, c = res["types_drawn"], res["conditional"]
    print(f"{name:44s} params {params:8d}  fit {t_fit:6.0f} s ({1e3 * per_step:5.1f} ms/step)  generate "
          f"{t_gen:5.1f} s  prior-space energy {res['prior_space_energy']:.4f} (to training points "
          f"{res['prior_space_energy_train']:.4f})  "
          f"energy {d['energy_distance']:.3f} / {c['energy_distance']:.3f}  5-NN "
          f"{d['knn_accuracy']:.3f} / {c['knn_accuracy']:.3f}  label acc {c['label_accuracy']:.3f}", flush=True)
    return res


def latent_part(a, train, test, results):
    n_cat = (len(train.obs[KEY].cat.categories),)
    gen = genjax.LatentGenerator(train, conditions=[KEY], prior=a.prior, seed=a.seed)
    t0 = time.perf_counter()
    gen.vae.fit(max_epochs=a.vae_epochs, seed=a.seed, progress=False)
    gen.history["vae"] = list(gen.vae.history)
    d = gen.vae.config.n_latent
    print(f"VAE ({d}-d latent) fitted in {time.perf_counter() - t0:.0f} s", flush=True)
    reference = np.asarray(gen.vae.latent(test), np.float32)
    train_points = np.asarray(gen.vae.latent(train), np.float32)
    control = prior_space_control(reference, train_points)
    reference = (reference, train_points)
    print(f"prior-space control (training vs held-out latents): {control:.4f}", flush=True)
    results["latent_prior_space_control"] = control
    rows = []
    if a.mlp_default:
        rows.append(("FieldNet default (width 256, 4 blocks)", "mlp", {"n_hidden": 256, "n_layers": 4}))
    for w in (int(v) for v in a.widths.split(",")):
        dits = [(f"DiT w{w}, latent tokens of {g} dim{'s' if g > 1 else ''} ({-(-d // g)} tokens)",
                 {"tokens": g, "n_hidden": w, "n_layers": a.layers, "n_heads": a.heads})
                for g in (int(v) for v in a.groups.split(","))]
        target = np.mean([n_params(DiTField(**kw, n_categories=n_cat), d, n_cat) for _, kw in dits])
        width = matched_mlp_width(target, d, n_cat, a.layers)
        rows.append((f"FieldNet (width {width}, {a.layers} blocks)", "mlp", {"n_hidden": width, "n_layers": a.layers}))
        rows += [(name, "dit", kw) for name, kw in dits]
    for name, field, kw in rows:
        results["latent"].append(fit_and_score(gen, name, field, kw, {}, a.steps, test, train, a.seed, reference))


def prior_space_control(reference, train_points, n=2000, seed=0):
    """The real-vs-real floor of the prior-space distance: ``n`` training cells' points vs the held-out ones."""
    rows = np.random.default_rng(seed).choice(len(train_points), min(n, len(train_points)), replace=False)
    return float(genjax.metrics.energy_distance(reference, train_points[rows]))


def log1p_points(adata, target_sum=1e4):
    """log1p of counts normalised to ``target_sum`` per cell, float32 (cells, genes) (the log1p prior's space)."""
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return np.log1p(x * (target_sum / x.sum(1, keepdims=True))).astype(np.float32)


def gene_part(a, train, test, results):
    n_cat = (len(train.obs[KEY].cat.categories),)
    hv = train.copy()
    genjax.data.highly_variable_genes(hv, n_top_genes=a.genes)
    genes = hv.var_names[hv.var["highly_variable"].to_numpy()]
    tr, te = train[:, genes].copy(), test[:, genes].copy()
    keep_tr, keep_te = np.asarray(tr.X.sum(1)).ravel() > 0, np.asarray(te.X.sum(1)).ravel() > 0
    tr, te = tr[keep_tr].copy(), te[keep_te].copy()
    print(f"gene programmes: {len(genes)} HVGs, {tr.n_obs} training / {te.n_obs} held-out cells with counts on them",
          flush=True)
    gen = genjax.LatentGenerator(tr, conditions=[KEY], prior=a.prior, space="log1p", seed=a.seed)
    x = gen.prior_data()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)  # what the prior sees
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    loadings = vt[:16].T * s[:16] / np.sqrt(len(x))  # (genes, 16): each gene's correlations with the 16 PCs
    ids = program_tokens(loadings, a.programs, seed=a.seed)
    reference, train_points = log1p_points(te), log1p_points(tr)
    control = prior_space_control(reference, train_points)
    reference = (reference, train_points)
    print(f"prior-space control (training vs held-out log1p): {control:.4f}", flush=True)
    results["genes_prior_space_control"] = control
    sizes = np.bincount(ids)
    print(f"{len(sizes)} programmes of {sizes.min()}-{sizes.max()} genes (median {int(np.median(sizes))})", flush=True)
    dit = {"tokens": ids, "n_hidden": a.width, "n_layers": a.layers, "n_heads": a.heads}
    target = n_params(DiTField(**dit, n_categories=n_cat), len(genes), n_cat)
    width = matched_mlp_width(target, len(genes), n_cat, a.layers)
    rows = [(f"log1p FieldNet (width {width}, {a.layers} blocks)", "mlp", {"n_hidden": width, "n_layers": a.layers}),
            (f"log1p DiT, {len(sizes)} gene-programme tokens", "dit", dit)]
    for name, field, kw in rows:
        results["genes"].append(fit_and_score(gen, name, field, kw, {}, a.gene_steps, te, tr, a.seed, reference))
    results["gene_programmes"] = {"genes": list(map(str, genes)), "sizes": sizes.tolist()}


def table(rows, control):
    first = rows[0]["types_drawn"]
    print(f"{'model':48s} {'params':>8s} {'prior ED':>8s} {'to train':>8s} {'energy':>7s} {'5-NN':>6s} {'energy c':>8s} {'5-NN c':>7s} "
          f"{'label':>6s} {'fit s':>6s} {'ms/step':>8s} {'gen s':>6s}")
    print(f"{'real-vs-real control (training cells)':48s} {'':>8s} {control:8.4f} {'':>8s} "
          f"{first['energy_distance_control']:7.3f} "
          f"{first['knn_accuracy_control']:6.3f} {'':>8s} {'':>7s} {rows[0]['conditional']['label_accuracy_control']:6.3f}")
    for r in rows:
        d, c = r["types_drawn"], r["conditional"]
        print(f"{r['name']:48s} {r['params']:8d} {r['prior_space_energy']:8.4f} {r['prior_space_energy_train']:8.4f} "
              f"{d['energy_distance']:7.3f} "
              f"{d['knn_accuracy']:6.3f} "
              f"{c['energy_distance']:8.3f} {c['knn_accuracy']:7.3f} {c['label_accuracy']:6.3f} "
              f"{r['fit_seconds']:6.0f} {1e3 * r['seconds_per_step']:8.1f} {r['generate_seconds']:6.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prior", default="flow", choices=["flow", "diffusion"])
    p.add_argument("--steps", type=int, default=2000, help="prior steps of the latent priors")
    p.add_argument("--gene-steps", type=int, default=1000, help="prior steps of the log1p gene-space priors")
    p.add_argument("--vae-epochs", type=int, default=None)
    p.add_argument("--groups", default="1,2", help="latent token group sizes of the DiTs")
    p.add_argument("--widths", default="64", help="DiT token widths of the latent part (one scale each, every "
                   "scale with its own parameter-matched FieldNet)")
    p.add_argument("--width", type=int, default=64, help="DiT token width of the gene-programme part")
    p.add_argument("--layers", type=int, default=4, help="blocks of every field (DiT and FieldNet)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--genes", type=int, default=300)
    p.add_argument("--programs", type=int, default=24)
    p.add_argument("--mlp-default", action="store_true", help="also the default FieldNet (256 x 4, ~0.9M parameters)")
    p.add_argument("--skip-latent", action="store_true")
    p.add_argument("--skip-genes", action="store_true")
    p.add_argument("--out", default="benchmarks/out/dit")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    adata = genjax.datasets.pbmc3k()
    tr, te = stratified_split(adata.obs[KEY], 0.2, seed=a.seed)
    train, test = adata[tr].copy(), adata[te].copy()
    print(f"PBMC3k: {train.n_obs} training / {test.n_obs} held-out cells; {a.prior} priors", flush=True)
    results = {"latent": [], "genes": [], "args": vars(a)}
    if not a.skip_latent:
        latent_part(a, train, test, results)
    if not a.skip_genes:
        gene_part(a, train, test, results)
    results["total_seconds"] = time.perf_counter() - t_start
    for part in ("latent", "genes"):
        if results[part]:
            print(f"\n{part} (energy / 5-NN: types drawn, then conditional ('c'); label: conditional label accuracy)")
            table(results[part], results[f"{part}_prior_space_control"])
    print(f"\ntotal {results['total_seconds'] / 60:.1f} min")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
