"""The ``genjax`` command: ``demo``, ``train``, ``generate``, ``evaluate``.

``genjax demo`` is the main job: on the bundled PBMC3k it splits the cells 80/20 stratified by cell type, trains
the cell-type-conditional latent generator on the 80%, generates as many cells per cell type as the held-out 20%
has, evaluates them against the held-out cells beside a real-vs-real control (the training cells), and writes
``report.md`` with tables and figures, ``generated.h5ad`` and the model to the output folder.

Failures: every command checks that its inputs are readable AnnData files and that its outputs can be written
*before* any training; an error is one line naming the file or flag, with exit status 2 for a usage problem (a
flag, an input file, settings that do not match a checkpoint) and 1 for a failure while running (``--debug``
shows the traceback instead). Models are written to a temporary folder and moved into place; if that fails after
training, the model is saved elsewhere and the message says where.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

from ._version import __version__
from .data import stratified_split

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """A flag or input file the command cannot use (exit status 2)."""


def _log(msg: str) -> None:
    print(f"[genjax {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (argparse names the flag in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _parse_conditions(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--condition expects KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _read_h5ad(path: str, flag: str):
    """The AnnData at ``path``, or a :class:`UsageError` naming the flag and why the file cannot be read."""
    import anndata as ad

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {p}: no such file")
    try:
        return ad.read_h5ad(p)
    except Exception as err:  # h5py / anndata raise many types for text, CSV or truncated files
        raise UsageError(f"{flag} {p}: not a readable .h5ad file ({type(err).__name__}: {str(err)[:160]})") from None


def _writable_dir(path: Path, flag: str) -> None:
    """Check that the folder ``path`` can be created and written (nothing is left behind).

    Raises:
        UsageError: naming the flag, the path and the reason.
    """
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".genjax-write-check-"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {existing} ({err.strerror or err})") from None


def _save_model(model, out: Path) -> Path:
    """Save ``model`` to ``out`` (atomically); if that fails, save it to a folder in the temporary directory and
    say where, so that a trained model is never lost to a late I/O error.

    Raises:
        RuntimeError: the save to ``out`` failed (the message names the folder the model was saved to instead).
    """
    try:
        model.save(out)
        return out
    except OSError as err:
        rescue = Path(tempfile.mkdtemp(prefix="genjax-rescued-")) / "model"
        model.save(rescue)
        raise RuntimeError(f"could not write the model to {out} ({err.strerror or err}); the trained model was saved "
                           f"to {rescue} instead") from None


def _checkpoints(out: Path) -> Path:
    """The checkpoint folder of a model folder: ``<out>.ckpt`` beside it."""
    return out.parent / (out.name + ".ckpt")


def _fit_generator(adata, args, checkpoint_dir: Path | None):
    import genjax

    gen = genjax.LatentGenerator(adata, likelihood=args.likelihood, prior=args.prior or "diffusion",
                                 conditions=args.condition_key,
                                 layer=getattr(args, "layer", None), prior_clusters=args.prior_clusters,
                                 seed=args.seed)
    gen.fit(vae_epochs=args.vae_epochs, prior_steps=args.prior_steps, seed=args.seed, progress=not args.quiet,
            checkpoint_dir=checkpoint_dir, resume=getattr(args, "resume", False),
            restart=getattr(args, "restart", False))
    return gen


def _demo_data(args):
    """PBMC3k (or a stratified subsample of ``--n-cells``) split 80/20 by cell type: ``(train, test)``."""
    import genjax

    adata = genjax.datasets.pbmc3k()
    key = "cell_type"
    n_types = adata.obs[key].nunique()
    if args.n_cells is not None and args.n_cells < 10 * n_types:
        raise UsageError(f"--n-cells {args.n_cells}: the demo needs at least {10 * n_types} cells (10 per cell type "
                         f"of the {n_types} in PBMC3k)")
    if args.n_cells and args.n_cells < adata.n_obs:  # a quick run on a stratified subsample
        keep, _ = stratified_split(adata.obs[key], 1.0 - args.n_cells / adata.n_obs, seed=args.seed)
        adata = adata[keep].copy()
    train_idx, test_idx = stratified_split(adata.obs[key], 0.2, seed=args.seed)
    _log(f"PBMC3k: {adata.n_obs} cells x {adata.n_vars} genes; {len(train_idx)} training / {len(test_idx)} "
         f"held-out cells, split stratified by {key}")
    return adata[train_idx].copy(), adata[test_idx].copy()


def cmd_demo(args) -> int:
    import jax
    import numpy as np

    from genjax import report

    out = Path(args.out)
    _writable_dir(out, "--out")
    t0 = time.perf_counter()
    _log(f"JAX backend: {jax.default_backend()} ({jax.device_count()} device(s))")
    key = "cell_type"
    train, test = _demo_data(args)
    args.condition_key = [key]
    gen = _fit_generator(train, args, None)
    _log(f"trained the VAE and the {args.prior or 'diffusion'} prior in {time.perf_counter() - t0:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    _save_model(gen, out / "model")
    t1 = time.perf_counter()
    generated = gen.generate(test.n_obs, seed=args.seed, guidance=args.guidance,
                             **{key: np.asarray(test.obs[key]).astype(str)})
    counts = ", ".join(f"{c}: {n}" for c, n in generated.obs[key].value_counts().items())
    _log(f"generated {generated.n_obs} cells ({counts}) in {time.perf_counter() - t1:.1f} s")
    generated.write_h5ad(out / "generated.h5ad")
    _log("evaluating against the held-out cells (control: the training cells) ...")
    # the control: training cells of the cell types that have held-out cells (a tiny subsample can leave a rare
    # type with training cells only)
    control = train[train.obs[key].astype(str).isin(set(test.obs[key].astype(str)))].copy()
    ev, _ = report.evaluate_and_report(test, generated, out, control=control, condition_key=key,
                                       history=gen.history.get("vae") or None, seed=args.seed,
                                       title="genjax demo: PBMC3k cell-type-conditional latent generation")
    summary = {**_summary(ev), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _log(f"overall: energy distance {summary['energy_distance']:.3f} (control {summary['energy_distance_control']:.3f}), "
         f"5-NN accuracy {summary['knn_accuracy']:.3f} (control {summary['knn_accuracy_control']:.3f}), "
         f"label accuracy {summary['label_accuracy']:.3f} (control {summary['label_accuracy_control']:.3f})")
    _log(f"wrote {out / 'report.md'}, {out / 'generated.h5ad'} and {out / 'model'} in {summary['seconds']:.0f} s")
    return 0


def _summary(ev) -> dict:
    """Overall metric values of an evaluation (generated and control) as a flat dict."""
    rows = ev.table[ev.table["condition"] == "all"]
    out = {}
    for _, r in rows.iterrows():
        out[r["metric"]] = float(r["generated"])
        out[r["metric"] + "_control"] = float(r["control"])
    return out


def cmd_train(args) -> int:
    out = Path(args.out)
    if args.perturbation_key is None and (args.control is not None or args.covariate_key):
        raise UsageError("--control and --covariate-key train a perturbation model: give --perturbation-key too")
    if args.perturbation_key is not None and args.control is None:
        raise UsageError("--perturbation-key needs --control (the label of control cells)")
    if args.hybrid is not None and not args.condition_key:
        raise UsageError("--hybrid needs --condition-key (the obs keys whose values make a condition; repeatable)")
    _writable_dir(out, "--out")
    _writable_dir(_checkpoints(out), "--out (its checkpoint folder)")
    adata = _read_h5ad(args.data, "--data")
    if args.hybrid is not None:
        model = _fit_hybrid(adata, args)
    elif args.perturbation_key is not None:
        model = _fit_perturbation_model(adata, args, _checkpoints(out))
    else:
        model = _fit_generator(adata, args, _checkpoints(out))
    _save_model(model, out)
    _log(f"saved the model to {out} (training checkpoints in {_checkpoints(out)})")
    return 0


def _fit_perturbation_model(adata, args, checkpoint_dir: Path):
    import genjax

    pm = genjax.PerturbationModel(adata, perturbation_key=args.perturbation_key, control=args.control,
                                  covariate_keys=tuple(args.covariate_key or ()), method=args.method,
                                  likelihood=args.likelihood, layer=args.layer, seed=args.seed)
    t0 = time.perf_counter()
    pm.fit(max_epochs=args.vae_epochs, seed=args.seed, progress=not args.quiet, checkpoint_dir=checkpoint_dir,
           resume=args.resume, restart=args.restart)
    conditions = pm.spec.conditions(adata)
    _log(f"trained a {args.method} perturbation model on {adata.n_obs} cells ({len(conditions)} conditions) in "
         f"{time.perf_counter() - t0:.0f} s")
    return pm


def _fit_hybrid(adata, args):
    import pandas as pd

    import genjax

    predictor = args.hybrid
    if predictor.endswith(".csv"):
        path = Path(predictor)
        if not path.is_file():
            raise UsageError(f"--hybrid {path}: no such file (a CSV of predicted mean log1p profiles: one row per "
                             "condition label 'v1 | v2', one column per gene)")
        predictor = pd.read_csv(path, index_col=0)
    else:
        predictor = predictor.replace("-", "_")
        if predictor not in genjax.models.BASELINES:
            raise UsageError(f"--hybrid {args.hybrid!r}: a baseline name ({', '.join(genjax.models.BASELINES)}) or a "
                             "CSV of predicted profiles")
    residual = args.prior or "flow"
    hm = genjax.HybridModel(adata, predictor, args.condition_key, residual=residual, likelihood=args.likelihood,
                            perturbation_key=args.perturbation_key, control=args.control, layer=args.layer,
                            seed=args.seed)
    t0 = time.perf_counter()
    hm.fit(max_epochs=args.vae_epochs, prior_steps=args.prior_steps, seed=args.seed, progress=not args.quiet)
    _log(f"trained a hybrid model ({hm.predictor.name} + residual {residual}) on {adata.n_obs} cells "
         f"({len(hm.train_conditions)} conditions) in {time.perf_counter() - t0:.0f} s")
    return hm


def _write_h5ad(adata, out: Path) -> None:
    """Write ``adata`` to ``out`` atomically (a temporary file beside it, then a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    adata.write_h5ad(tmp)
    tmp.replace(out)


def _model_format(model: Path) -> str:
    try:
        return json.loads((model / "model.json").read_text()).get("format", "")
    except (OSError, ValueError):
        return ""


def _predict_hybrid(model: Path, out: Path, args) -> int:
    import numpy as np

    import genjax

    if not args.condition:
        raise UsageError("a hybrid model predicts a condition: give --condition KEY=VALUE for each condition key")
    hm = genjax.HybridModel.load(model)
    cond = _parse_conditions(args.condition)
    cells = hm.sample(cond, args.n, seed=args.seed)
    if args.interval is not None:
        lo, hi = hm.predict_interval(cond, args.interval, "cell", seed=args.seed)
        cells.layers["lower"] = np.broadcast_to(lo.to_numpy()[0], cells.shape).astype(np.float32)
        cells.layers["upper"] = np.broadcast_to(hi.to_numpy()[0], cells.shape).astype(np.float32)
        mlo, mhi = hm.predict_interval(cond, args.interval, "mean")
        cells.varm["mean_interval"] = np.stack([mlo.to_numpy()[0], mhi.to_numpy()[0]], 1).astype(np.float32)
        cells.uns["interval_level"] = args.interval
    _write_h5ad(cells, out)
    extra = f" with {args.interval:g} intervals (layers lower / upper, varm mean_interval)" if args.interval else ""
    _log(f"wrote {cells.n_obs} cells of {cond} to {out}{extra}")
    return 0


def cmd_predict(args) -> int:
    import genjax

    out = Path(args.out)
    _writable_dir(out.parent, "--out")
    model = Path(args.model)
    if not model.is_dir():
        raise UsageError(f"--model {model}: no such model folder")
    if args.interval is not None and not 0.0 < args.interval < 1.0:
        raise UsageError(f"--interval must lie in (0, 1); got {args.interval}")
    if _model_format(model).startswith("genjax.HybridModel"):
        return _predict_hybrid(model, out, args)
    if args.data is None or args.perturbation is None:
        raise UsageError("a perturbation model predicts from control cells: give --data and --perturbation")
    pm = genjax.PerturbationModel.load(model)
    source = _read_h5ad(args.data, "--data")
    pred = pm.predict(source, args.perturbation, n_per_cell=args.n_per_cell, seed=args.seed)
    _write_h5ad(pred, out)
    rules = ", ".join(f"{k}: {v}" for k, v in pred.uns["perturbation_rule"].items())
    _log(f"wrote {pred.n_obs} predicted cells of {args.perturbation} to {out} (shift {rules})")
    return 0


def cmd_generate(args) -> int:
    import genjax

    out = Path(args.out)
    _writable_dir(out.parent, "--out")
    model = Path(args.model)
    if not model.is_dir():
        raise UsageError(f"--model {model}: no such model folder")
    gen = genjax.LatentGenerator.load(model)
    adata = gen.generate(args.n, seed=args.seed, guidance=args.guidance, **_parse_conditions(args.condition))
    _write_h5ad(adata, out)
    _log(f"wrote {adata.n_obs} generated cells to {out}")
    return 0


def cmd_evaluate(args) -> int:
    if args.perturbation_key is not None:
        return _evaluate_perturbations(args)
    if args.covariate_key or args.train:
        raise UsageError("--covariate-key and --train evaluate perturbation predictions: give --perturbation-key "
                         "and --control too")
    from genjax import report

    out = Path(args.out)
    _writable_dir(out, "--out")
    real = _read_h5ad(args.real, "--real")
    generated = _read_h5ad(args.generated, "--generated")
    control = _read_h5ad(args.control, "--control") if args.control else "split"
    ev, _ = report.evaluate_and_report(real, generated, out, control=control, condition_key=args.condition_key,
                                       title="genjax evaluation", seed=args.seed)
    _log(f"wrote {out / 'report.md'}")
    print(ev.table.to_string(index=False))
    return 0


_HEADLINE = ("pearson_delta_ctrl", "pearson_delta_ref", "l2_top", "cosine_logfc", "rank_cosine_logfc",
             "r2_mean_deg", "pearson2_mean_deg", "r2_logfc_deg", "deg_recall_100", "energy_distance",
             "interaction_corr")


def _evaluate_perturbations(args) -> int:
    import genjax
    from genjax.data import PerturbationSpec

    if args.control is None:
        raise UsageError("--perturbation-key needs --control (the label of control cells)")
    if args.condition_key is not None:
        raise UsageError("--condition-key is for generated cells; with --perturbation-key use --covariate-key")
    out = Path(args.out)
    _writable_dir(out, "--out")
    spec = PerturbationSpec(args.perturbation_key, args.control, tuple(args.covariate_key or ()))
    real = _read_h5ad(args.real, "--real")
    predicted = _read_h5ad(args.generated, "--generated")
    train = _read_h5ad(args.train, "--train") if args.train else None
    table = genjax.metrics.evaluate_predicted_perturbations(real, predicted, spec, train=train, layer=args.layer,
                                                             seed=args.seed)
    summary = genjax.metrics.summarise(table)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame, index in (("perturbation_metrics.csv", table, False), ("perturbation_summary.csv", summary,
                                                                            True)):
        tmp = out / f".{name}.tmp"
        frame.to_csv(tmp, index=index)
        tmp.replace(out / name)
    n_cond = table["condition"].nunique()
    print(f"mean over {n_cond} condition(s); 'model' = --generated, baselines fitted on "
          f"{'--train' if train is not None else 'nothing (no --train)'}; ceiling = split-half real vs real")
    cols = [c for c in _HEADLINE if c in summary.columns]
    print(summary[cols].to_string(float_format=lambda v: f"{v:.3f}"))
    _log(f"wrote {out / 'perturbation_metrics.csv'} (per condition) and {out / 'perturbation_summary.csv'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``genjax`` command (exit status 2 on a bad flag, as every usage error)."""
    p = argparse.ArgumentParser(prog="genjax", description="Generative models of gene-expression counts (JAX).")
    p.add_argument("--version", action="version", version=f"genjax-counts {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q):
        q.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    def model_args(q):
        q.add_argument("--likelihood", default="nb", choices=["nb", "zinb", "poisson"])
        q.add_argument("--prior", default=None, choices=["diffusion", "flow"],
                       help="latent prior family (default: diffusion; flow for a hybrid model's residual)")
        q.add_argument("--vae-epochs", type=_positive_int, default=None,
                       help="VAE epochs (default: scvi-tools' rule)")
        q.add_argument("--prior-steps", type=_positive_int, default=4000)
        q.add_argument("--prior-clusters", type=_non_negative_int, default=0, metavar="K",
                       help="also condition the prior on K k-means clusters of the latents (no labels needed)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        common(q)

    d = sub.add_parser("demo", help="bundled PBMC3k end to end: train, generate, evaluate, report")
    d.add_argument("--out", default="genjax-demo")
    d.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight")
    d.add_argument("--n-cells", type=_positive_int, default=None, help="use a stratified subsample of this many cells")
    model_args(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a latent generator on a .h5ad of raw counts")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True, help="model directory (training checkpoints go to OUT.ckpt)")
    t.add_argument("--condition-key", action="append", default=None, help="obs key of a condition (repeatable)")
    t.add_argument("--layer", default=None)
    t.add_argument("--perturbation-key", default=None,
                   help="obs key of perturbation labels: train a perturbation model (combinations joined by '+')")
    t.add_argument("--control", default=None, help="with --perturbation-key: the label of control cells")
    t.add_argument("--covariate-key", action="append", default=None,
                   help="with --perturbation-key: obs key of a covariate the response depends on (repeatable)")
    t.add_argument("--method", default="compositional", choices=["compositional", "scgen"],
                   help="with --perturbation-key: the latent response estimator")
    t.add_argument("--hybrid", default=None, metavar="PREDICTOR",
                   help="train a hybrid model: a mean predictor (a baseline name such as mean-delta, additive, linear, "
                   "with --perturbation-key / --control; or PATH.csv of predicted mean log1p profiles, one row per "
                   "condition label 'v1 | v2') wrapped in a residual count model (--prior) over the conditions made "
                   "by --condition-key")
    resume = t.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue from OUT.ckpt (only a run with the same settings and data)")
    resume.add_argument("--restart", action="store_true",
                        help="move the checkpoints in OUT.ckpt aside (they are kept) and start afresh")
    model_args(t)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate cells from a trained model")
    g.add_argument("--model", required=True)
    g.add_argument("--n", type=_positive_int, required=True)
    g.add_argument("--out", required=True, help="output .h5ad")
    g.add_argument("--condition", action="append", default=None, metavar="KEY=VALUE")
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    common(g)
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("predict", help="predict cells under a perturbation from control cells, or a hybrid model's "
                       "cells and intervals for a condition")
    r.add_argument("--model", required=True, help="a perturbation model folder (genjax train --perturbation-key) or "
                   "a hybrid model folder (genjax train --hybrid)")
    r.add_argument("--data", default=None, help="perturbation model: .h5ad of control cells (raw counts) to predict "
                   "from")
    r.add_argument("--perturbation", default=None, help="perturbation model: a perturbation label, combinations "
                   "joined by '+'")
    r.add_argument("--condition", action="append", default=None, metavar="KEY=VALUE",
                   help="hybrid model: the condition's value of each condition key (repeatable)")
    r.add_argument("--n", type=_positive_int, default=2000, help="hybrid model: cells to sample")
    r.add_argument("--interval", type=float, default=None, metavar="LEVEL",
                   help="hybrid model: also write per-gene bounds at this level (layers lower / upper: integer "
                   "bounds for a new cell; varm mean_interval: bounds of the condition's mean log1p)")
    r.add_argument("--out", required=True, help="output .h5ad of predicted counts")
    r.add_argument("--n-per-cell", type=_positive_int, default=1, help="perturbation model: predicted cells per "
                   "source cell")
    r.add_argument("--seed", type=int, default=0)
    common(r)
    r.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="evaluate generated cells, or predicted perturbed cells, against real cells",
                       description="Two-sample metrics of generated vs real cells with a real-vs-real control; "
                       "with --perturbation-key, perturbation metrics of predicted cells (genjax predict) per "
                       "condition, beside the baselines fitted on --train. Writes OUT/report.md (generation) or "
                       "OUT/perturbation_metrics.csv and OUT/perturbation_summary.csv (perturbation).")
    e.add_argument("--real", required=True, help=".h5ad of real cells (raw counts); with --perturbation-key the "
                   "observed perturbed cells and the controls of the same covariate values")
    e.add_argument("--generated", required=True, help=".h5ad of generated or predicted cells (counts)")
    e.add_argument("--control", default=None, help="without --perturbation-key: a second real .h5ad as the "
                   "control (default: split --real in halves); with it: the label of control cells")
    e.add_argument("--condition-key", default=None, help="obs key to evaluate generated cells per condition")
    e.add_argument("--perturbation-key", default=None, help="obs key of perturbation labels: score predicted "
                   "perturbations (combinations joined by '+')")
    e.add_argument("--covariate-key", action="append", default=None,
                   help="with --perturbation-key: obs key of a covariate (cell type, line; repeatable)")
    e.add_argument("--train", default=None, help="with --perturbation-key: .h5ad of training cells the "
                   "baselines (no_change, mean_delta, additive, matching_mean, linear) are fitted on")
    e.add_argument("--layer", default=None, help="layer of --real and --train holding raw counts (default X)")
    e.add_argument("--out", default="genjax-eval", help="output folder")
    e.add_argument("--seed", type=int, default=0)
    common(e)
    e.set_defaults(func=cmd_evaluate)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"genjax: warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the ``genjax`` command; returns the exit status (0 success, 1 failure while running, 2 usage)."""
    from .training import FingerprintMismatchError

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning  # a warning is one line, not a source excerpt
            return args.func(args)
    except (UsageError, FingerprintMismatchError, KeyError, ValueError, FileNotFoundError) as err:
        if args.debug:
            raise
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"genjax {args.command}: error: {text}", file=sys.stderr)
        return 2
    except Exception as err:  # CheckpointLockedError, TrainingDivergedError, a late OSError, ...
        if args.debug:
            raise
        print(f"genjax {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
