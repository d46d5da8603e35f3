"""Perturbation response prediction: genjax's PerturbationModel against the baselines and pertpy's scGen, on the
same splits, in the same run.

Tasks (every figure is on the held-out test cells of its split; nothing is tuned on them):

* ``kang``: Kang 2018 IFN-beta PBMCs (``kang2018_ifnb.h5ad``, 2000 seurat_v3 HVGs selected on all cells' raw
  counts, as the scGen protocol). Leave one cell type's stimulated cells out, for every type with >= 30 cells
  in each arm; the source cells are that type's controls (in training, as in scGen).
* ``norman``: Norman 2019 CRISPRa doubles (``perturbench_devel.h5ad``, the ``norman19`` cells). With >= 10
  doubles whose singles were both measured, PerturBench's combination task (70% of those doubles held out, half
  validation, half test; controls 50/25/25; figures on test); with fewer (the devel file has 5),
  leave-one-double-out over them. The source cells are the controls of the test split (LODO: all controls).
  Run unchanged on PerturBench's full ``norman19`` file with ``--norman PATH``.
* ``mcfaline``: McFaline-Figueroa 2023 CRISPRi knockouts in three glioblastoma lines (same file): each line in
  turn, every knockout measured in it and in another line is held out there and predicted from its controls.

Methods: genjax ``compositional`` and ``scgen`` (one VAE, two shift estimators; predicted cells carry their source
cells' counts, ``noise="source"``), ``compositional, model noise`` (the same shifts, cells drawn afresh from the
decoder), optionally ``flow`` (``--flow``); baselines no_change, mean_delta / additive, matching_mean, linear (``genjax.models.BASELINES``);
pertpy's scGen (a JAX/Flax VAE of log-normalised data) in its own venv (``--peer-python``) on the Kang task.
Metrics: ``genjax.metrics.evaluate_perturbations`` (its control / perturbed-mean / ceiling rows included).

usage: python benchmarks/perturbation.py [--tasks kang norman mcfaline] [--epochs 100] [--flow]
           [--peer-python /work/venv-scgen/bin/python] [--no-peer] [--types "CD14 Mono" ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import genjax
from genjax.data import PerturbationSpec

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("GENJAX_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
HEADLINE = ["r2_mean_deg", "pearson2_mean_deg", "r2_logfc_deg", "pearson_delta_ctrl", "pearson_delta_ref",
            "l2_top", "cosine_logfc", "rank_cosine_logfc", "energy_distance", "deg_recall_100", "interaction_corr"]


def log1p(adata) -> np.ndarray:
    return genjax.data.normalize_log1p(adata.X)


def fit_models(train, spec: PerturbationSpec, args, times: dict) -> dict:
    """genjax models on ``train``: name -> fitted model (one VAE for compositional and scgen)."""
    t0 = time.perf_counter()
    pm = genjax.PerturbationModel(train, spec.key, spec.control, spec.covariate_keys, method="compositional",
                                  seed=args.seed)
    pm.fit(max_epochs=args.epochs, progress=False, seed=args.seed)
    times.setdefault("genjax (VAE + shifts)", []).append(time.perf_counter() - t0)
    print(f"  baseline-offset weights (global) {pm.offset.weights} on {pm.offset.n_cases} training conditions, "
          f"kernel bandwidths {pm.offset.bandwidths}", flush=True)
    models = {"genjax compositional": pm, "genjax compositional, no offset": pm, "genjax scgen": pm.with_method("scgen"),
              "genjax compositional, model noise": pm}
    if args.flow:
        t0 = time.perf_counter()
        fm = genjax.PerturbationModel(train, spec.key, spec.control, spec.covariate_keys, method="flow",
                                      seed=args.seed)
        fm.fit(max_epochs=args.epochs, progress=False, seed=args.seed, flow_kwargs={"steps": args.flow_steps})
        times.setdefault("genjax flow (VAE + flow)", []).append(time.perf_counter() - t0)
        models["genjax flow"] = fm
    return models


def fit_baselines(train, spec: PerturbationSpec, names) -> dict:
    return {f"baseline {n}": genjax.models.BASELINES[n](spec).fit(train) for n in names}


def predict_all(predictors: dict, source, perturbation: str, args) -> dict:
    """method -> (cells, genes) log1p predicted cells (left out where a predictor cannot predict). genjax draws
    ``ceil(--predicted-cells / source cells)`` cells per source cell: with one draw each, the Monte Carlo noise
    of the count draws alone adds ~1.7 to the L2 of a 100-cell source over 500 genes (the baselines shift the
    source cells deterministically and carry no such noise)."""
    out = {}
    n_per_cell = max(1, -(-args.predicted_cells // source.n_obs))
    for name, p in predictors.items():
        try:
            options = {"noise": "model" if name.endswith("model noise") else None,
                       "correction_weight": 1.0 if name.endswith("no offset") else None}
            out[name] = (p.predict_cells(source, perturbation, seed=args.seed, n_per_cell=n_per_cell, **options)
                         if name.startswith("genjax") else p.predict_cells(source, perturbation))
        except genjax.data.UnknownPerturbationError as err:
            print(f"  {name}: cannot predict {perturbation}: {err}", flush=True)
    return out


def run_peer(args, train, source, spec: PerturbationSpec, perturbation: str, covariate_value: str, times: dict):
    """pertpy scGen's predicted log1p cells of ``source``, or None (the peer failed or is off)."""
    if args.no_peer:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        train.write_h5ad(Path(tmp) / "train.h5ad")
        source.write_h5ad(Path(tmp) / "source.h5ad")
        cmd = [args.peer_python, str(HERE / "peers" / "scgen_peer.py"), "--train", str(Path(tmp) / "train.h5ad"),
               "--source", str(Path(tmp) / "source.h5ad"), "--out", str(Path(tmp) / "pred.h5ad"),
               "--perturbation-key", spec.key, "--control", spec.control, "--perturbation", perturbation,
               "--covariate-key", spec.covariate_keys[0], "--covariate-value", covariate_value,
               "--epochs", str(args.epochs), "--early-stopping-patience", "0", "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        result = next((json.loads(line[len("PEER_RESULT "):]) for line in proc.stdout.splitlines()
                       if line.startswith("PEER_RESULT ")), None)
        if proc.returncode != 0 or result is None:
            print(f"  pertpy scGen failed ({proc.returncode}): {proc.stderr[-800:]}", flush=True)
            return None
        times.setdefault("pertpy scGen", []).append(result["train_s"])
        return np.asarray(ad.read_h5ad(Path(tmp) / "pred.h5ad").X, np.float32)


def kang(args) -> tuple[pd.DataFrame, dict]:
    adata = ad.read_h5ad(args.kang)
    genjax.data.highly_variable_genes(adata, n_top_genes=2000, subset=True)
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    spec = PerturbationSpec("stim", "CTRL", ("seurat_annotations",))
    counts = adata.obs.groupby(["seurat_annotations", "stim"], observed=True).size().unstack(fill_value=0)
    types = args.types or [t for t in counts.index if counts.loc[t].min() >= 30]
    print(f"kang: {adata.n_obs} cells x {adata.n_vars} HVGs; held-out types {types}", flush=True)
    observed, controls, predictions, times = {}, {}, {}, {}
    for t in types:
        masks = genjax.data.heldout_condition_split(adata, spec, "STIM", {"seurat_annotations": t}, seed=args.seed)
        train = adata[masks["train"]].copy()
        source = adata[(adata.obs.stim == "CTRL").to_numpy() & (adata.obs.seurat_annotations == t).to_numpy()].copy()
        cond = f"STIM | {t}"
        observed[cond] = log1p(adata[masks["test"]])
        controls[cond] = log1p(source)
        predictors = {**fit_baselines(train, spec, ["no_change", "mean_delta", "linear"]),
                      **fit_models(train, spec, args, times)}
        pm = predictors["genjax compositional"]
        weight = pm.offset.weight("carried", pm.response.covariate_index((t,)), pm.response.basal[:, :-1])
        print(f"  {t}: correction weight {weight:.3f}", flush=True)
        for name, cells in predict_all(predictors, source, "STIM", args).items():
            predictions.setdefault(name, {})[cond] = cells
        peer = run_peer(args, train, source, spec, "STIM", t, times)
        if peer is not None:
            predictions.setdefault("pertpy scGen", {})[cond] = peer
        print(f"  {t}: done", flush=True)
    table = genjax.metrics.evaluate_perturbations(observed, controls, predictions, seed=args.seed)
    return table, times


def _norman_folds(adata, spec: PerturbationSpec, seed: int):
    """(name, train mask, test doubles, source mask) of the combination task or leave-one-double-out."""
    doubles = genjax.data.combinations_with_singles(adata, spec)
    eligible = doubles[doubles["has_singles"]]["perturbation"].tolist()
    control = (spec.labels(adata) == spec.control)
    if len(eligible) >= 10:
        masks = genjax.data.combination_split(adata, spec, seed=seed)
        test = sorted(set(spec.labels(adata)[masks["test"]]) - {spec.control})
        yield "combination task", masks["train"], test, masks["test"] & control
        return
    for double in eligible:
        masks = genjax.data.leave_one_double_out(adata, spec, double)
        yield f"LODO {double}", masks["train"], [double], control


def norman(args) -> tuple[pd.DataFrame, dict]:
    adata = ad.read_h5ad(args.norman)
    if "dataset" in adata.obs:
        adata = adata[adata.obs["dataset"] == "norman19"].copy()
    spec = PerturbationSpec(args.norman_key, args.norman_control)
    labels = spec.labels(adata)
    print(f"norman: {adata.n_obs} cells x {adata.n_vars} genes", flush=True)
    observed, controls, predictions, additive, times = {}, {}, {}, {}, {}
    for name, train_mask, test, source_mask in _norman_folds(adata, spec, args.seed):
        train = adata[train_mask].copy()
        source = adata[source_mask].copy()
        predictors = {**fit_baselines(train, spec, ["no_change", "additive", "matching_mean", "linear"]),
                      **fit_models(train, spec, args, times)}
        for double in test:
            observed[double] = log1p(adata[labels == double])
            controls[double] = log1p(source)
            additive[double] = predictors["baseline additive"].predict_mean(source, double)
            for method, cells in predict_all(predictors, source, double, args).items():
                predictions.setdefault(method, {})[double] = cells
        print(f"  {name}: done", flush=True)
    table = genjax.metrics.evaluate_perturbations(observed, controls, predictions, additive=additive,
                                                  seed=args.seed)
    return table, times


def mcfaline(args) -> tuple[pd.DataFrame, dict]:
    adata = ad.read_h5ad(args.norman)
    adata = adata[adata.obs["dataset"] == "mcfaline23"].copy()
    spec = PerturbationSpec("condition", "control", ("cell_type",))
    labels = spec.labels(adata)
    lines = sorted(adata.obs["cell_type"].astype(str).unique())
    print(f"mcfaline: {adata.n_obs} cells x {adata.n_vars} genes; lines {lines}", flush=True)
    observed, controls, predictions, groups, times = {}, {}, {}, {}, {}
    for line in lines:
        masks = genjax.data.heldout_covariate_split(adata, spec, "cell_type", line, seed=args.seed)
        train = adata[masks["train"]].copy()
        in_line = (adata.obs["cell_type"].astype(str) == line).to_numpy()
        source = adata[in_line & (labels == spec.control)].copy()
        predictors = {**fit_baselines(train, spec, ["no_change", "mean_delta", "linear"]),
                      **fit_models(train, spec, args, times)}
        for ko in sorted(set(labels[masks["test"]])):
            cond = f"{ko} | {line}"
            observed[cond] = log1p(adata[masks["test"] & (labels == ko)])
            controls[cond] = log1p(source)
            groups[cond] = line
            for method, cells in predict_all(predictors, source, ko, args).items():
                predictions.setdefault(method, {})[cond] = cells
        print(f"  {line}: done", flush=True)
    table = genjax.metrics.evaluate_perturbations(observed, controls, predictions, groups=groups, seed=args.seed)
    return table, times


def show(task: str, table: pd.DataFrame, times: dict, out: Path) -> dict:
    summary = genjax.metrics.summarise(table)
    cols = [c for c in HEADLINE if c in summary.columns]
    print(f"\n== {task}: mean over held-out conditions (test split)")
    print(summary[cols].to_string(float_format=lambda v: f"{v:.3f}"))
    per = table[table["metric"].isin(["r2_mean_deg", "r2_logfc_deg", "energy_distance", "l2_top"])]
    wide = per.pivot_table(index=["condition", "method"], columns="metric", values="value")
    print(f"\n== {task}: per condition")
    print(wide.to_string(float_format=lambda v: f"{v:.3f}"))
    timing = {k: {"mean_s": float(np.mean(v)), "runs": len(v)} for k, v in times.items()}
    print(f"\n== {task}: training seconds per fit: " +
          ", ".join(f"{k} {v['mean_s']:.1f} s" for k, v in timing.items()))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{task}_table.csv", index=False)
    summary.to_csv(out / f"{task}_summary.csv")
    return timing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["kang", "norman", "mcfaline"],
                   choices=["kang", "norman", "mcfaline"])
    p.add_argument("--kang", default=str(DATA / "kang2018_ifnb.h5ad"))
    p.add_argument("--norman", default=str(DATA / "perturbench_devel.h5ad"),
                   help="PerturBench h5ad (the devel file, or the full norman19 file) for norman and mcfaline")
    p.add_argument("--norman-key", default="condition")
    p.add_argument("--norman-control", default="control")
    p.add_argument("--types", nargs="*", default=None, help="Kang cell types to hold out (default: all >= 30/arm)")
    p.add_argument("--epochs", type=int, default=100, help="VAE epochs (genjax) and scGen epochs (peer)")
    p.add_argument("--flow", action="store_true", help="also the conditional latent flow")
    p.add_argument("--flow-steps", type=int, default=3000)
    p.add_argument("--peer-python", default="/work/venv-scgen/bin/python")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--predicted-cells", type=int, default=2000,
                   help="genjax predicted cells per condition (at least one per source cell)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "perturbation"))
    args = p.parse_args(argv)
    out = Path(args.out)
    timings = {}
    for task in args.tasks:
        table, times = {"kang": kang, "norman": norman, "mcfaline": mcfaline}[task](args)
        timings[task] = show(task, table, times, out)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
