"""Flow matching: the latent pipeline with a rectified-flow prior and classifier-free guidance by cell type.

``genjax.LatentGenerator(prior="flow")`` fits a count VAE (NB decoder) on PBMC3k, encodes the cells, and trains a
conditional velocity field by (rectified) flow matching on the standardised latents, dropping the cell type at
random (``cond_dropout``) so that the same network is also the unconditional field. Sampling integrates the flow
ODE from noise; classifier-free guidance mixes the two fields, ``v_null + w (v_cell_type - v_null)``.

The VAE decoder here does *not* see the cell type (``decoder_conditions=False``): the requested cell type reaches
the generated counts only through the guided prior, so the guidance weight ``w`` shows directly in how often a
classifier trained on real cells recognises the requested type (``label_accuracy``), against how close the cells are
to the real ones (energy distance, 5-NN two-sample accuracy), each beside the real-vs-real control.

Run (from the repository root)::

    python examples/flow_matching.py                           # defaults: a few minutes on 2 CPU cores
    python examples/flow_matching.py --priors flow,diffusion   # the diffusion prior beside it (one more fit)
    python examples/flow_matching.py --full                    # longer training
    python examples/flow_matching.py --smoke                   # a few steps (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/flow_matching``): guidance.png, evaluation_panel.png, latent_pca.png,
training.png, summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

import genjax
from genjax.plots import save_figure

NAME = "flow_matching"
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / NAME


@dataclasses.dataclass(frozen=True)
class Config:
    out: str = str(DEFAULT_OUT)
    seed: int = 0
    priors: str = "flow"  # comma-separated: flow, diffusion
    max_cells: int = 0  # 0: all PBMC3k cells; else a stratified subsample
    n_genes: int = 0  # 0: all genes; else the most expressed ones
    test_fraction: float = 0.2
    n_latent: int = 10
    vae_epochs: int = 60
    vae_train_size: float = 0.9
    prior_steps: int = 3000
    prior_hidden: int = 256
    prior_blocks: int = 3
    cond_dropout: float = 0.2
    decoder_conditions: bool = False
    guidance: str = "0,1,2,4"  # guidance weights swept at generation
    panel_guidance: float = 2.0  # weight of the evaluation panel


SMOKE = dict(max_cells=240, n_genes=60, n_latent=4, vae_epochs=2, vae_train_size=1.0, prior_steps=8,
             prior_hidden=16, prior_blocks=1, guidance="0,2", panel_guidance=2.0)
FULL = dict(vae_epochs=400, prior_steps=20000, guidance="0,0.5,1,1.5,2,3,4,6")


def parse_config(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (the smoke test)")
    p.add_argument("--full", action="store_true", help="the full-size run")
    for f in dataclasses.fields(Config):
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(f.default, bool) else dict(type=type(f.default))
        p.add_argument("--" + f.name.replace("_", "-"), default=None, **kind,
                       help=f"default {f.default} (--smoke: {SMOKE.get(f.name, '=')}, --full: {FULL.get(f.name, '=')})")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(Config(), **(SMOKE if args.smoke else FULL if args.full else {}))
    cfg = dataclasses.replace(cfg, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                                      if getattr(args, f.name) is not None})
    if cfg.panel_guidance not in weights(cfg):
        p.error(f"--panel-guidance {cfg.panel_guidance} must be one of --guidance {cfg.guidance}")
    return cfg


def weights(cfg: Config) -> list[float]:
    return [float(w) for w in cfg.guidance.split(",")]


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(rest, picked)``: ``fraction`` of each label group picked at random."""
    rng = np.random.default_rng(seed)
    picked = []
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        picked.append(rows[: min(max(1, int(round(fraction * rows.size))), rows.size - 1)])
    picked = np.sort(np.concatenate(picked))
    return np.setdiff1d(np.arange(labels.size), picked), picked


def load_data(cfg: Config):
    adata = genjax.datasets.pbmc3k()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    if cfg.max_cells and cfg.max_cells < adata.n_obs:
        _, rows = stratified_split(labels, cfg.max_cells / adata.n_obs, cfg.seed)
        adata = adata[rows].copy()
    if cfg.n_genes and cfg.n_genes < adata.n_vars:
        mean = np.asarray(adata.X.mean(axis=0)).ravel()
        adata = adata[:, np.sort(np.argsort(-mean)[: cfg.n_genes])].copy()
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    counts = adata.obs["cell_type"].value_counts()
    adata = adata[adata.obs["cell_type"].isin(counts.index[counts >= 5])].copy()  # types in train and held-out
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.remove_unused_categories()
    return adata


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"JAX backend: {jax.default_backend()} ({jax.device_count()} device(s): {jax.devices()[0].device_kind})")
    adata = load_data(cfg)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    train_rows, test_rows = stratified_split(labels, cfg.test_fraction, cfg.seed)
    train, test = adata[train_rows].copy(), adata[test_rows].copy()
    test_labels = test.obs["cell_type"].astype(str).to_numpy()
    print(f"PBMC3k: {adata.n_obs} cells x {adata.n_vars} genes; {train.n_obs} training, {test.n_obs} held-out")
    summary: dict = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend(), "priors": {}}
    sweeps, panels, latents, history = {}, {}, {}, {}

    for prior in (s.strip() for s in cfg.priors.split(",")):
        t0 = time.perf_counter()
        gen = genjax.LatentGenerator(
            train, likelihood="nb", prior=prior, conditions=["cell_type"], seed=cfg.seed,
            decoder_conditions=cfg.decoder_conditions, cond_dropout=cfg.cond_dropout,
            vae_kwargs={"n_latent": cfg.n_latent},
            prior_kwargs={"n_hidden": cfg.prior_hidden, "n_layers": cfg.prior_blocks,
                          "steps_per_dispatch": min(cfg.prior_steps, 250)})
        gen.fit(vae_epochs=cfg.vae_epochs, prior_steps=cfg.prior_steps, seed=cfg.seed, progress=False,
                vae_fit_kwargs={"kl_warmup_epochs": max(1, cfg.vae_epochs // 3), "train_size": cfg.vae_train_size})
        t_fit = time.perf_counter() - t0
        history.update({f"{prior} {stage}": h for stage, h in gen.history.items() if h})
        sweep = {}
        for w in weights(cfg):
            t0 = time.perf_counter()
            generated = gen.generate(test.n_obs, seed=cfg.seed + 1, guidance=w, cell_type=test_labels)
            t_gen = time.perf_counter() - t0
            ev = genjax.metrics.evaluate(test, generated, condition_key="cell_type", control=train, seed=cfg.seed)
            sweep[w] = {m: {"generated": ev.value(m), "control": ev.value(m, which="control")}
                        for m in ("label_accuracy", "energy_distance", "knn_accuracy", "pearson_log_mean",
                                  "pearson_zero_frac")}
            sweep[w]["generate_seconds"] = round(t_gen, 1)
            if w == cfg.panel_guidance:
                panels[prior] = ev
            print(f"[{prior}, w = {w:g}] {test.n_obs} cells in {t_gen:.1f} s: label accuracy "
                  f"{ev.value('label_accuracy'):.3f} (control {ev.value('label_accuracy', which='control'):.3f}), "
                  f"energy distance {ev.value('energy_distance'):.3f} "
                  f"({ev.value('energy_distance', which='control'):.3f}), 5-NN accuracy "
                  f"{ev.value('knn_accuracy'):.3f} ({ev.value('knn_accuracy', which='control'):.3f})")
        sweeps[prior] = sweep
        # latents: the encoded training cells and prior samples for the same cell types, unguided and guided
        codes = gen.registry.encode_values(train.n_obs, cell_type=train.obs["cell_type"].astype(str).to_numpy())
        latents[prior] = {"encoded cells": gen.prior_data()}
        for w in (min(weights(cfg)), max(weights(cfg))):
            latents[prior][f"prior samples, w = {w:g}"] = gen.sample_latent(train.n_obs, seed=cfg.seed, guidance=w,
                                                                           cat=codes)
        summary["priors"][prior] = {"fit_seconds": round(t_fit, 1),
                                    "guidance": {f"{w:g}": v for w, v in sweep.items()}}
        print(f"[{prior}] VAE + prior fitted in {t_fit:.1f} s")

    first = next(iter(sweeps))
    figures = [plot_guidance(out / "guidance.png", sweeps)]
    genjax.plots.evaluation_panel(panels[first], path=out / "evaluation_panel.png")
    figures.append(out / "evaluation_panel.png")
    figures.append(plot_latents(out / "latent_pca.png", latents, train.obs["cell_type"]))
    genjax.plots.training_curves(history, keys=["loss"], path=out / "training.png")
    figures.append(out / "training.png")
    summary["figures"] = [p.name for p in figures]
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    write_summary(out, summary, "Flow matching with classifier-free guidance by cell type (PBMC3k)")
    print(f"wrote {len(figures)} figures and summary.json / summary.md to {out} in {summary['seconds']:.0f} s")
    return summary


# ---------------------------------------------------------------------------------------------------------------
# figures and summary


def _figure(**kwargs):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(layout="constrained", **kwargs)


def plot_guidance(path, sweeps):
    metrics = (("label_accuracy", "label accuracy (higher: requested type)"),
               ("energy_distance", "energy distance (lower)"), ("knn_accuracy", "5-NN accuracy (0.5: real-like)"))
    fig = _figure(figsize=(14, 4))
    axes = fig.subplots(1, len(metrics))
    for ax, (m, label) in zip(axes, metrics, strict=True):
        for prior, sweep in sweeps.items():
            ws = sorted(sweep)
            ax.plot(ws, [sweep[w][m]["generated"] for w in ws], "o-", label=f"{prior} prior")
        any_sweep = next(iter(sweeps.values()))
        ax.axhline(next(iter(any_sweep.values()))[m]["control"], color="0.4", ls="--", lw=1,
                   label="real-vs-real control")
        ax.set_xlabel("guidance weight w")
        ax.set_title(label)
        ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_latents(path, latents, cell_type):
    from matplotlib import colormaps

    cats = list(cell_type.cat.categories)
    values = cell_type.astype(str).to_numpy()
    rows = list(latents)
    cols = list(latents[rows[0]])
    fig = _figure(figsize=(4.6 * len(cols), 4.2 * len(rows)))
    axes = fig.subplots(len(rows), len(cols), squeeze=False, sharex=True, sharey=True)
    for r, prior in enumerate(rows):
        ref = latents[prior]["encoded cells"]
        mean = ref.mean(axis=0)
        _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
        for c, name in enumerate(cols):
            ax = axes[r, c]
            pcs = (latents[prior][name] - mean) @ vt[:2].T
            for i, cat in enumerate(cats):
                m = values == cat
                ax.scatter(pcs[m, 0], pcs[m, 1], s=4, alpha=0.5, color=colormaps["tab10"](i % 10), label=cat,
                           rasterized=True)
            ax.set_title(f"{prior}: {name}", fontsize="medium")
            ax.set_xlabel("latent PC1")
            ax.set_ylabel("latent PC2")
    axes[0, -1].legend(fontsize="x-small", markerscale=3)
    return save_figure(fig, path)


def write_summary(out: Path, summary: dict, title: str) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# {title}", "", f"backend: {summary['backend']}, {summary['seconds']} s", ""]

    def walk(d, prefix=""):
        for k, v in d.items():
            if k in ("config", "figures"):
                continue
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                lines.append(f"- {prefix}{k}: {v:.4g}" if isinstance(v, float) else f"- {prefix}{k}: {v}")

    walk(summary)
    lines += ["", "figures: " + ", ".join(summary["figures"]), ""]
    (out / "summary.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
