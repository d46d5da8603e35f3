"""Steps vs quality: how many field evaluations flow matching and diffusion need for equal energy distance on the
VAE latents of PBMC3k (issue 5).

Protocol. A genjax NB VAE (scvi-tools defaults: 10 latent dimensions) is fitted on all PBMC3k cells, which are
encoded to their posterior means; the latents are split 70/30 stratified by cell type (seed 0). (Latents of cells
held out from the VAE are distributed differently from those of its training cells, so they would not be a fair
reference for a prior fitted on the latter.) On the standardised 70% two unconditional priors are fitted with the
same network (``FieldNet``, hidden 256, 4 residual blocks), optimizer, batch and number of steps: a VP-SDE diffusion (noise prediction,
sigma^2-weighted denoising score matching) and a rectified flow (linear path, independent coupling; optionally the
minibatch-OT coupling with ``--ot``). Each sampler setting draws ``--n`` latents per seed; quality is the
U-statistic energy distance to the 30% held-out latents (mean +- standard error over ``--seeds`` seeds), beside the
real-vs-real floor (the 70% themselves against the 30%). The reference quality is diffusion's 500-step
Euler-Maruyama sampler (the seed's sampler); a setting "matches" it when its mean is within two combined standard
errors of the reference or below. The figure of merit is the fewest evaluations that match, per family.

usage: python benchmarks/flow_vs_diffusion.py [--prior-steps 4000] [--seeds 4] [--n 2000] [--ot]
                                              [--out benchmarks/out/flow_vs_diffusion]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import diffrax
import jax
import numpy as np

import genjax
from genjax.cli import stratified_split
from genjax.metrics import energy_distance

KEY = "cell_type"


def settings(prior_kind: str) -> list[tuple[str, dict]]:
    """(label, sampler keyword arguments) for one family; each label names its solver and step rule."""
    if prior_kind == "diffusion":
        out = [(f"reverse SDE, Euler-Maruyama {k}", {"method": "sde", "n_steps": k}) for k in (50, 100, 200, 500)]
        out += [(f"PF-ODE, Heun on the EDM grid, {k} steps", {"heun_edm": k}) for k in (4, 6, 8, 12, 16, 24)]
        out += [(f"PF-ODE, adaptive Tsit5 rtol {r:g}", {"rtol": r, "atol": r}) for r in (1e-2, 1e-3)]
        return out
    out = [(f"flow ODE, Euler {k} steps", {"n_steps": k, "solver": diffrax.Euler()}) for k in (2, 4, 8, 16, 32)]
    out += [(f"flow ODE, Heun {k} steps", {"n_steps": k, "solver": diffrax.Heun()}) for k in (2, 3, 4, 6, 8, 12)]
    out += [(f"flow ODE, adaptive Dopri5 rtol {r:g}", {"rtol": r, "atol": r}) for r in (1e-2, 1e-3)]
    return out


def draw(prior, key, n: int, options: dict):
    """Samples (standardised space) and the number of batched field evaluations."""
    field = prior.field()
    if prior.kind == "diffusion":
        sde = prior.make_sde()
        if options.get("method") == "sde":
            return genjax.sample_reverse_sde(key, field, sde, (n, prior.dim), n_steps=options["n_steps"])
        if "heun_edm" in options:
            ts = genjax.time_grid(sde, options["heun_edm"], 1e-3, kind="edm")
            return genjax.sample_probability_flow_ode(key, field, sde, (n, prior.dim), solver=diffrax.Heun(), ts=ts)
        return genjax.sample_probability_flow_ode(key, field, sde, (n, prior.dim), **options)
    return genjax.sample_flow(key, field, (n, prior.dim), **options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae-epochs", type=int, default=None, help="default: scvi-tools' rule")
    p.add_argument("--prior-steps", type=int, default=4000)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--n", type=int, default=2000, help="latents drawn per setting and seed")
    p.add_argument("--ot", action="store_true", help="also fit a flow with minibatch-OT coupling")
    p.add_argument("--out", default="benchmarks/out/flow_vs_diffusion")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"jax {jax.__version__} on {jax.default_backend()}", flush=True)

    adata = genjax.datasets.pbmc3k()
    t0 = time.perf_counter()
    vae = genjax.VAE(adata, likelihood="nb", seed=0)
    vae.fit(max_epochs=a.vae_epochs, progress=False, seed=0)
    z = np.asarray(vae.latent(adata), np.float32)
    # Priors are fitted on 70% of the latents and judged against the other 30%: latents of cells the VAE was not
    # trained on are distributed differently from those it was (posterior means of training cells spread more),
    # so the held-out set must come from the same encoder pass as the prior's training set.
    tr, te = stratified_split(adata.obs[KEY], 0.3, seed=0)
    z_train, z_test = z[tr], z[te]
    print(f"VAE on all {adata.n_obs} cells: {len(vae.history)} epochs in {time.perf_counter() - t0:.0f} s; "
          f"latents {z.shape[1]}-d, priors fitted on {len(tr)}, judged against {len(te)}", flush=True)
    shift, scale = z_train.mean(0), z_train.std(0) + 1e-6

    priors = {}
    kinds = [("diffusion", {}), ("flow", {})] + ([("flow", {"coupling": "ot"})] if a.ot else [])
    for kind, extra in kinds:
        name = kind if not extra else f"{kind} (OT coupling)"
        t0 = time.perf_counter()
        prior, _ = genjax.fit_prior((z_train - shift) / scale, None, kind=kind, steps=a.prior_steps,
                                    progress=False, seed=0, **extra)
        priors[name] = prior
        print(f"{name} prior: {a.prior_steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)

    floor = energy_distance(z_train, z_test)
    rows = [{"family": "real vs real", "setting": f"the {len(z_train)} latents the priors were fitted on", "nfe": 0,
             "ed": float(floor), "se": 0.0, "seconds": 0.0}]
    for name, prior in priors.items():
        for label, options in settings(prior.kind):
            eds, secs, nfe = [], [], 0
            draw(prior, jax.random.key(10**6), a.n, options)[0].block_until_ready()  # compile outside the timing
            for s in range(a.seeds):
                t0 = time.perf_counter()
                x, nfe = draw(prior, jax.random.key(s), a.n, options)
                x = np.asarray(x)
                secs.append(time.perf_counter() - t0)
                eds.append(energy_distance(x * scale + shift, z_test))
            rows.append({"family": name, "setting": label, "nfe": int(nfe), "ed": float(np.mean(eds)),
                         "se": float(np.std(eds, ddof=1) / math.sqrt(a.seeds)), "seconds": float(np.median(secs))})
            r = rows[-1]
            print(f"  {name:22s} {label:46s} nfe {r['nfe']:4d}  energy {r['ed']:.4f} +- {r['se']:.4f}  "
                  f"{r['seconds']:.2f} s", flush=True)

    ref = next(r for r in rows if r["setting"] == "reverse SDE, Euler-Maruyama 500")
    print(f"\nreference: diffusion EM-500, energy distance {ref['ed']:.4f} +- {ref['se']:.4f} "
          f"(real-vs-real floor {rows[0]['ed']:.4f})")
    print(f"{'family':24s} {'fewest evaluations matching EM-500':>36s}  setting")
    best = {}
    for name in priors:
        ok = [r for r in rows if r["family"] == name
              and r["ed"] <= ref["ed"] + 2 * math.hypot(r["se"], ref["se"])]
        if ok:
            b = min(ok, key=lambda r: r["nfe"])
            best[name] = b
            print(f"{name:24s} {b['nfe']:36d}  {b['setting']} ({b['ed']:.4f} +- {b['se']:.4f}, {b['seconds']:.2f} s)")
        else:
            print(f"{name:24s} {'none':>36s}")
    if "diffusion" in best and "flow" in best:
        print(f"\nflow / diffusion evaluations at EM-500 quality: {best['flow']['nfe']} / {best['diffusion']['nfe']} "
              f"= {best['flow']['nfe'] / best['diffusion']['nfe']:.2f}")
    (out / "results.json").write_text(json.dumps({"rows": rows, "args": vars(a)}, indent=1))


if __name__ == "__main__":
    main()
