"""The ``genjax`` command: ``demo``, ``train``, ``generate``, ``evaluate``.

``genjax demo`` is the main job: on the bundled PBMC3k it splits the cells 80/20 stratified by cell type, trains
the cell-type-conditional latent generator on the 80%, generates as many cells per cell type as the held-out 20%
has, evaluates them against the held-out cells beside a real-vs-real control (the training cells), and writes
``report.md`` with tables and figures, ``generated.h5ad`` and the model to the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data import stratified_split

__all__ = ["main"]


def _log(msg: str) -> None:
    print(f"[genjax {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _parse_conditions(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--condition expects KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _read_h5ad(path: str, what: str):
    import anndata as ad

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"{what}: no such file {p}")
    return ad.read_h5ad(p)


def _fit_generator(adata, args, out_model: Path | None):
    import genjax

    gen = genjax.LatentGenerator(adata, likelihood=args.likelihood, prior=args.prior, conditions=args.condition_key,
                                 layer=getattr(args, "layer", None), prior_clusters=args.prior_clusters,
                                 seed=args.seed)
    gen.fit(vae_epochs=args.vae_epochs, prior_steps=args.prior_steps, seed=args.seed, progress=not args.quiet,
            checkpoint_dir=None if out_model is None else out_model.parent / (out_model.name + ".ckpt"),
            resume=getattr(args, "resume", False))
    return gen


def cmd_demo(args) -> int:
    import anndata as ad
    import jax
    import numpy as np

    import genjax
    from genjax import report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _log(f"JAX backend: {jax.default_backend()} ({jax.device_count()} device(s))")
    adata = genjax.datasets.pbmc3k()
    key = "cell_type"
    if args.n_cells and args.n_cells < adata.n_obs:  # a quick run on a stratified subsample
        keep, _ = stratified_split(adata.obs[key], 1.0 - args.n_cells / adata.n_obs, seed=args.seed)
        adata = adata[keep].copy()
    train_idx, test_idx = stratified_split(adata.obs[key], 0.2, seed=args.seed)
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    _log(f"PBMC3k: {adata.n_obs} cells x {adata.n_vars} genes; {train.n_obs} training / {test.n_obs} held-out "
         f"cells, split stratified by {key}")
    args.condition_key = [key]
    gen = _fit_generator(train, args, None)
    _log(f"trained the VAE and the {args.prior} prior in {time.perf_counter() - t0:.0f} s")
    t1 = time.perf_counter()
    generated = gen.generate(test.n_obs, seed=args.seed, guidance=args.guidance,
                             **{key: np.asarray(test.obs[key]).astype(str)})
    _log(f"generated {generated.n_obs} cells ({', '.join(f'{c}: {n}' for c, n in generated.obs[key].value_counts().items())}) "
         f"in {time.perf_counter() - t1:.1f} s")
    gen.save(out / "model")
    generated.write_h5ad(out / "generated.h5ad")
    _log("evaluating against the held-out cells (control: the training cells) ...")
    history = gen.history.get("vae") or None
    # the control: training cells of the cell types that have held-out cells (a tiny subsample can leave a rare
    # type with training cells only)
    control = train[train.obs[key].astype(str).isin(set(test.obs[key].astype(str)))].copy()
    ev, _ = report.evaluate_and_report(test, generated, out, control=control, condition_key=key, history=history,
                                    title="genjax demo: PBMC3k cell-type-conditional latent generation",
                                    seed=args.seed)
    summary = _summary(ev)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _log(f"overall: energy distance {summary['energy_distance']:.3f} (control {summary['energy_distance_control']:.3f}), "
         f"5-NN accuracy {summary['knn_accuracy']:.3f} (control {summary['knn_accuracy_control']:.3f}), "
         f"label accuracy {summary['label_accuracy']:.3f} (control {summary['label_accuracy_control']:.3f})")
    _log(f"wrote {out / 'report.md'}, {out / 'generated.h5ad'} and {out / 'model'} in {summary['seconds']:.0f} s")
    del ad
    return 0


def _summary(ev) -> dict:
    """Overall metric values of an evaluation (generated and control) as a flat dict."""
    table = ev.table
    rows = table[table["condition"] == "all"]
    out = {}
    for _, r in rows.iterrows():
        out[r["metric"]] = float(r["generated"])
        out[r["metric"] + "_control"] = float(r["control"])
    return out


def cmd_train(args) -> int:
    adata = _read_h5ad(args.data, "--data")
    out = Path(args.out)
    gen = _fit_generator(adata, args, out)
    gen.save(out)
    _log(f"saved the model to {out}")
    return 0


def cmd_generate(args) -> int:
    import genjax

    model = Path(args.model)
    gen = genjax.LatentGenerator.load(model)
    conditions = _parse_conditions(args.condition)
    adata = gen.generate(args.n, seed=args.seed, guidance=args.guidance, **conditions)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    adata.write_h5ad(tmp)
    tmp.replace(out)
    _log(f"wrote {adata.n_obs} generated cells to {out}")
    return 0


def cmd_evaluate(args) -> int:
    from genjax import report

    real = _read_h5ad(args.real, "--real")
    generated = _read_h5ad(args.generated, "--generated")
    control = _read_h5ad(args.control, "--control") if args.control else "split"
    out = Path(args.out)
    ev, _ = report.evaluate_and_report(real, generated, out, control=control, condition_key=args.condition_key,
                                    title="genjax evaluation", seed=args.seed)
    _log(f"wrote {out / 'report.md'}")
    print(ev.table.to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genjax", description="Generative models of gene-expression counts (JAX).")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(q, *, demo=False):
        q.add_argument("--likelihood", default="nb", choices=["nb", "zinb", "poisson"])
        q.add_argument("--prior", default="diffusion", choices=["diffusion", "flow"])
        q.add_argument("--vae-epochs", type=int, default=None, help="VAE epochs (default: scvi-tools' rule)")
        q.add_argument("--prior-steps", type=int, default=4000)
        q.add_argument("--prior-clusters", type=int, default=0, metavar="K",
                       help="also condition the prior on K k-means clusters of the latents (no labels needed)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser("demo", help="bundled PBMC3k end to end: train, generate, evaluate, report")
    d.add_argument("--out", default="genjax-demo")
    d.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight")
    d.add_argument("--n-cells", type=int, default=None, help="use a stratified subsample of this many cells")
    model_args(d, demo=True)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a latent generator on a .h5ad of raw counts")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True, help="model directory")
    t.add_argument("--condition-key", action="append", default=None, help="obs key of a condition (repeatable)")
    t.add_argument("--layer", default=None)
    t.add_argument("--resume", action="store_true", help="continue from MODEL_DIR.ckpt checkpoints")
    model_args(t)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate cells from a trained model")
    g.add_argument("--model", required=True)
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--out", required=True, help="output .h5ad")
    g.add_argument("--condition", action="append", default=None, metavar="KEY=VALUE")
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("evaluate", help="evaluate generated cells against real cells")
    e.add_argument("--real", required=True)
    e.add_argument("--generated", required=True)
    e.add_argument("--control", default=None, help="second real .h5ad as control (default: split --real)")
    e.add_argument("--condition-key", default=None)
    e.add_argument("--out", default="genjax-eval")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as err:
        print(f"genjax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
