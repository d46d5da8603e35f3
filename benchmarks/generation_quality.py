"""Generation quality on PBMC3k held-out cells: genjax's LatentGenerator vs scvi-tools SCVI, same split, same metrics.

Protocol (issue 6): PBMC3k, 80/20 split stratified by cell type; metrics on log1p of counts normalised to 1e4 in a
30-PC space fitted on the held-out real cells (genjax.metrics.evaluate); the training cells are the real-vs-real
control. "Unconditional" generation: cell types not requested (drawn in training proportions by genjax; SCVI samples
its N(0, I) prior). Conditional generation: one generated cell per held-out cell with its cell type.

Targets: unconditional energy distance <= 0.8 and 5-NN accuracy <= 0.53; conditional label accuracy >= 0.90 and
5-NN accuracy <= 0.6 for every cell type (types with fewer than 10 held-out cells have no two-sample metrics).

Rows: "types drawn": cell types not requested, drawn in training proportions (the model still conditions on
them); "conditional": the held-out cells' types requested; "no conditions" (``--no-condition-model``): a generator
fitted without the cell type, the like-for-like comparison with SCVI sampled from its N(0, I) prior, and
("no conditions, K clusters", ``--clusters K``, default 16) the same with its prior conditioned on K k-means clusters
of the training latents (still no labels).

usage: python benchmarks/generation_quality.py [--peer-python /work/venv-peer/bin/python] [--skip-peer]
                                               [--priors diffusion,flow] [--no-condition-model] [--clusters 16]
                                               [--out benchmarks/out/quality]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import genjax
from genjax.cli import stratified_split

KEY = "cell_type"


def evaluate(test, train, generated, conditional):
    # a generator without conditions labels no cells: evaluate it without the per-type breakdown
    key = KEY if KEY in generated.obs else None
    ev = genjax.metrics.evaluate(test, generated, condition_key=key, control=train, seed=0)
    def value(m, which="generated"):
        try:
            return ev.value(m, which=which)
        except KeyError:  # label accuracy needs labels
            return float("nan")

    row = {m: value(m) for m in ("energy_distance", "knn_accuracy", "mmd_rbf", "label_accuracy")}
    row.update({m + "_control": value(m, "control") for m in ("energy_distance", "knn_accuracy", "label_accuracy")})
    if conditional:
        per = ev.table[(ev.table.metric == "knn_accuracy") & (ev.table.condition != "all")]
        row["knn_per_type"] = {r.condition: float(r.generated) for r in per.itertuples()}
        row["knn_per_type_control"] = {r.condition: float(r.control) for r in per.itertuples()}
    return row, ev


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peer-python", default=os.environ.get("GENJAX_PEER_PYTHON", "/work/venv-peer/bin/python"))
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--priors", default="diffusion", help="comma-separated: diffusion, flow")
    p.add_argument("--clusters", type=int, default=16,
                   help="with --no-condition-model, also a generator whose prior is conditioned on this many "
                        "k-means clusters of the latents (0: not)")
    p.add_argument("--no-condition-model", action="store_true",
                   help="also fit a generator without any condition (like-for-like with SCVI's N(0, I) prior)")
    p.add_argument("--vae-epochs", type=int, default=None)
    p.add_argument("--prior-steps", type=int, default=4000)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--scvi-epochs", type=int, default=None)
    p.add_argument("--out", default="benchmarks/out/quality")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    adata = genjax.datasets.pbmc3k()
    tr, te = stratified_split(adata.obs[KEY], 0.2, seed=a.seed)
    train, test = adata[tr].copy(), adata[te].copy()
    train.write_h5ad(out / "train.h5ad")
    test.write_h5ad(out / "heldout.h5ad")
    labels = np.asarray(test.obs[KEY]).astype(str)
    results = {}

    if not a.skip_peer:
        t0 = time.perf_counter()
        cmd = [a.peer_python, str(Path(__file__).parent / "peers" / "scvi_generate.py"), str(out / "train.h5ad"),
               str(out / "heldout.h5ad"), str(out), "--key", KEY, "--seed", str(a.seed)]
        if a.scvi_epochs:
            cmd += ["--epochs", str(a.scvi_epochs)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"scvi-tools peer failed:\n{run.stderr[-3000:]}")
        print(f"scvi-tools: trained and sampled 2 models in {time.perf_counter() - t0:.0f} s", flush=True)
        import anndata as ad

        results["scvi SCVI, N(0,I) prior"], _ = evaluate(test, train, ad.read_h5ad(out / "scvi_unconditional.h5ad"),
                                                         False)
        results["scvi SCVI, cell type in decoder"], _ = evaluate(
            test, train, ad.read_h5ad(out / "scvi_conditional.h5ad"), True)

    timing = {}
    for prior in a.priors.split(","):
        t0 = time.perf_counter()
        gen = genjax.LatentGenerator(train, conditions=[KEY], prior=prior, seed=a.seed)
        gen.fit(vae_epochs=a.vae_epochs, prior_steps=a.prior_steps, seed=a.seed, progress=False)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        uncond = gen.generate(test.n_obs, seed=a.seed + 1)
        cond = gen.generate(test.n_obs, seed=a.seed + 2, guidance=a.guidance, **{KEY: labels})
        t_gen = time.perf_counter() - t0
        timing[prior] = {"fit_seconds": t_fit, "generate_seconds": t_gen}
        print(f"genjax {prior}: trained in {t_fit:.0f} s, generated 2 x {test.n_obs} cells in {t_gen:.1f} s",
              flush=True)
        results[f"genjax {prior}, types drawn"], _ = evaluate(test, train, uncond, False)
        results[f"genjax {prior}, conditional"], ev = evaluate(test, train, cond, True)
        if a.no_condition_model:
            # the like-for-like row for SCVI's N(0, I) prior: no cell type anywhere in the model
            t0 = time.perf_counter()
            plain = genjax.LatentGenerator(train, prior=prior, seed=a.seed)
            plain.fit(vae_epochs=a.vae_epochs, prior_steps=a.prior_steps, seed=a.seed, progress=False)
            print(f"genjax {prior} without conditions: trained in {time.perf_counter() - t0:.0f} s", flush=True)
            results[f"genjax {prior}, no conditions"], _ = evaluate(test, train, plain.generate(test.n_obs, seed=a.seed + 1),
                                                                  False)
            if a.clusters:
                # still no labels: the prior conditioned on k-means clusters of the training latents
                t0 = time.perf_counter()
                clustered = genjax.LatentGenerator(train, prior=prior, prior_clusters=a.clusters, seed=a.seed)
                clustered.fit(vae_epochs=a.vae_epochs, prior_steps=a.prior_steps, seed=a.seed, progress=False)
                print(f"genjax {prior} without conditions, {a.clusters} clusters: trained in "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
                results[f"genjax {prior}, no conditions, {a.clusters} clusters"], _ = evaluate(
                    test, train, clustered.generate(test.n_obs, seed=a.seed + 1), False)

    print()
    print(f"{'model':46s} {'energy':>8s} {'5-NN acc':>9s} {'label acc':>10s} {'max 5-NN per type':>18s}")
    first = next(iter(results.values()))
    print(f"{'real-vs-real control (train cells)':46s} {first['energy_distance_control']:8.3f} "
          f"{first['knn_accuracy_control']:9.3f} {first['label_accuracy_control']:10.3f}")
    for name, r in results.items():
        per = r.get("knn_per_type")
        worst = "" if not per else f"{np.nanmax(list(per.values())):.3f}"
        conditional = "decoder" in name or name.endswith(", conditional")
        label = f"{r['label_accuracy']:10.3f}" if conditional else f"{'-':>10s}"
        print(f"{name:46s} {r['energy_distance']:8.3f} {r['knn_accuracy']:9.3f} {label} {worst:>18s}")
    for prior in timing:
        per = results[f"genjax {prior}, conditional"]["knn_per_type"]
        print(f"\ngenjax {prior} conditional 5-NN accuracy per cell type:",
              ", ".join(f"{k}: {v:.3f}" for k, v in per.items()))
    (out / "results.json").write_text(json.dumps({"results": results, "timing": timing, "args": vars(a)},
                                                 indent=1, default=float))


if __name__ == "__main__":
    main()
