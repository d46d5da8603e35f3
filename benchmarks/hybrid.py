"""Hybrid model calibration: a held-out condition predicted by a mean predictor, wrapped by genjax.HybridModel, beside
the calibration baselines of the issue, all in one run. Three applications (``--tasks``):

* ``kang``: metadata -> expression on Kang 2018; conditions = cell type x stimulation; each (type, STIM) of
  ``--types`` held out in turn; predictors ``--predictors`` (mean-delta baseline, the learned regressor);
* ``norman``: Norman 2019 CRISPRa doubles (PerturBench devel file), each double with both singles seen held out in
  turn (leave one double out), the additive baseline as predictor;
* ``bulk``: bulk-like profiles from ``genjax.datasets.toy_bulk`` (NB samples at ~2M reads; tissue x disease),
  (brain, disease) held out, mean-delta across tissues as predictor.

    python benchmarks/hybrid.py [--tasks kang norman bulk] [--types "CD14 Mono" B] [--epochs 100]

Per held-out condition (test split = its real cells, never used in training):

* randomised PIT of every held-out cell's count under each method's predictive distribution for the condition
  (the empirical CDF of 2000 predicted cells), on expressed genes (> 10% non-zero among the held-out cells):
  pooled share of PIT in [0.05, 0.95] (target [0.87, 0.93]) and the share of genes whose coverage lies in the
  binomial 95% band around 0.9 (target >= 0.85);
* sample CRPS (ranked probability score) per cell and gene, averaged;
* mean metrics of the predicted cells (R^2 of means on the top-100 DEGs, L2 on all genes) -- the wrapper must not
  damage the predictor's mean;
* the hybrid's cell-level 90% integer bounds (coverage of held-out cells beside the model's own mass inside) and
  mean-level 90% jackknife+ intervals (coverage of the observed mean profile, width).

Methods: the hybrid (predictor mean, residual flow), the residual model alone (``mean_weight=1``: its flow is
still conditioned on the predicted profile's embedding, so it is not a predictor-free model), the pure generative
model without a predictor (Kang only: a ``LatentGenerator`` with a flow prior on the cell type and stimulation,
composing the held-out combination from its seen values; a held-out Norman double or bulk group is a label no
predictor-free model has seen), the predictor with
an NB spread whose dispersion is fitted on the condition's control cells (library sizes of those controls), the
predictor with Gaussian residuals in log1p(CP10k) of the pooled within-condition variance of the training
conditions, the controls shifted by the predicted change in log space, no change (the controls themselves), and
the ceiling (one half of the held-out cells predicting the other half).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import genjax
from genjax import metrics
from genjax.data import PerturbationSpec as Spec

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("GENJAX_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
KEYS = ["seurat_annotations", "stim"]


def counts(adata) -> np.ndarray:
    x = adata.X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float64)


def nb_with_control_dispersion(predicted: np.ndarray, controls: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Cells drawn from NB(mean = expm1(predicted) * L / 1e4, theta_g): L a control cell's library size, theta_g
    the method-of-moments dispersion of the gene's control counts at their own library sizes."""
    rng = np.random.default_rng(seed)
    lib = controls.sum(1)
    mu_c = controls.mean(0)
    var_c = controls.var(0)
    theta = np.where(var_c > mu_c, mu_c**2 / np.maximum(var_c - mu_c, 1e-8), 1e4)
    theta = np.clip(theta, 1e-3, 1e4)
    libs = rng.choice(lib, n)
    mu = np.expm1(np.maximum(predicted, 0.0))[None, :] * libs[:, None] / 1e4  # a log-space mean can be < 0
    return rng.negative_binomial(theta[None, :], theta[None, :] / (theta[None, :] + mu)).astype(np.float64)


def shifted_controls(shifted_log1p: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """Controls moved in log1p(CP10k) space by the predicted change, back to counts at their own library sizes."""
    lib = controls.sum(1, keepdims=True)
    return np.rint(np.expm1(shifted_log1p) * lib / 1e4)


def gaussian_pooled(predicted: np.ndarray, train, keys: list[str], controls: np.ndarray, n: int,
                    seed: int) -> np.ndarray:
    """Cells drawn as predicted + N(0, s_g^2) in log1p(CP10k), s_g^2 the within-condition variance of the training
    conditions pooled over conditions; back to counts at control library sizes (negative values at 0)."""
    x = genjax.data.normalize_log1p(counts(train))
    labels = train.obs[keys].astype(str).agg(" | ".join, axis=1).to_numpy()
    resid = np.concatenate([x[labels == c] - x[labels == c].mean(0) for c in np.unique(labels)])
    sd = np.sqrt((resid**2).sum(0) / max(len(resid) - len(np.unique(labels)), 1))
    rng = np.random.default_rng(seed)
    v = predicted[None, :] + sd[None, :] * rng.standard_normal((n, len(sd)))
    libs = rng.choice(controls.sum(1), n)
    return np.rint(np.expm1(np.maximum(v, 0.0)) * libs[:, None] / 1e4)


def calibration_row(name: str, y: np.ndarray, samples: np.ndarray, expressed: np.ndarray, seed: int) -> dict:
    below, at = metrics.sample_cdf(samples[:, expressed], y[:, expressed])
    pit = metrics.randomized_pit(below, at, seed=seed)
    tab = metrics.coverage_table(pit, levels=(0.9,)).iloc[0]
    crps = metrics.crps_samples(y[:, expressed], samples[:, expressed]).mean()
    _, _, cal_err = metrics.reliability_curve(pit)
    return {"method": name, "pit_in_0.05_0.95": tab["pooled"], "genes_in_band": tab["share_in_band"],
            "median_gene_coverage": tab["median_gene"], "calibration_error": cal_err, "crps": crps}


def run_condition(task: str, name: str, train, y: np.ndarray, ctrl: np.ndarray, cond: dict, predictor: str,
                  hybrid_kwargs: dict, args) -> tuple[list, pd.DataFrame, dict]:
    """Fit the hybrid on ``train`` and score every method on the held-out cells ``y`` of ``cond``."""
    keys = list(cond)
    expressed = (y > 0).mean(0) > 0.1
    label = f"{task}: {name} [{predictor}]"
    print(f"{label}: {len(y)} held-out cells, {len(ctrl)} controls, {expressed.sum()} expressed genes", flush=True)
    t0 = time.perf_counter()
    hm = genjax.HybridModel(train, predictor, keys, seed=args.seed, **hybrid_kwargs)
    hm.fit(max_epochs=args.epochs, prior_steps=args.prior_steps, progress=False, seed=args.seed)
    fit_s = time.perf_counter() - t0
    predicted = hm.predict_mean(cond).to_numpy()[0]
    hybrid = counts(hm.sample(cond, args.cells, seed=args.seed))
    t0 = time.perf_counter()
    hm.sample(cond, 10000, seed=args.seed + 1, interval=0.9)
    big_s = time.perf_counter() - t0
    residual_only = counts(hm.sample(cond, args.cells, seed=args.seed, mean_weight=1.0))
    generative = generative_baseline(task, name, train, cond, args)
    lo, hi = hm.predict_interval(cond, 0.9, "cell", n=args.cells, seed=args.seed)
    lo, hi = lo.to_numpy()[0], hi.to_numpy()[0]
    inside = ((y >= lo) & (y <= hi))[:, expressed]
    sim = counts(hm.sample(cond, args.cells, seed=args.seed + 7))
    mass = ((sim >= lo) & (sim <= hi))[:, expressed]
    mlo, mhi = hm.predict_interval(cond, 0.9, "mean")
    obs_mean = genjax.data.normalize_log1p(y).mean(0)
    ints = {"task": task, "held_out": name, "predictor": predictor, "cell_coverage_pooled": inside.mean(),
            "model_mass_pooled": mass.mean(),
            "mean_coverage": float(np.mean((obs_mean >= mlo.to_numpy()[0]) & (obs_mean <= mhi.to_numpy()[0]))),
            "mean_width": float(np.mean(mhi.to_numpy()[0] - mlo.to_numpy()[0])), "fit_s": fit_s,
            "sample_10k_with_intervals_s": big_s}
    loco = None
    if args.loco_conditions:  # the weight chosen without the held-out condition (after the w = 0 intervals above)
        t0 = time.perf_counter()
        choice = hm.choose_mean_weight(max_conditions=args.loco_conditions, seed=args.seed)
        ints["loco_weight"], ints["loco_s"] = choice["weight"], time.perf_counter() - t0
        ints["loco_conditions"] = "; ".join(choice["conditions"])
        print(f"  leave-one-condition-out mean weight {choice['weight']:.3f} ({choice}) in {ints['loco_s']:.0f} s",
              flush=True)
        loco = counts(hm.sample(cond, args.cells, seed=args.seed))
    ctrl_log = genjax.data.normalize_log1p(ctrl)
    shift = predicted - ctrl_log.mean(0)  # the predictor's change from the controls, in log1p(CP10k)
    methods = {
        f"hybrid ({predictor} + residual flow)": hybrid,
        f"residual model alone (mean_weight=1, {predictor} fit)": residual_only,
        f"{predictor} + NB, control dispersions": nb_with_control_dispersion(predicted, ctrl, args.cells, args.seed),
        f"{predictor} + Gaussian, pooled variance": gaussian_pooled(predicted, train, keys, ctrl, args.cells,
                                                                    args.seed),
        f"controls shifted by {predictor}": shifted_controls(np.maximum(ctrl_log + shift, 0.0), ctrl),
        "no change (controls)": ctrl,
    }
    if loco is not None:
        methods[f"hybrid ({predictor}), leave-one-condition-out mean weight"] = loco
    if generative is not None:
        methods["generative model alone (LatentGenerator, no predictor)"] = generative
    rows = [{"task": task, "held_out": name, **calibration_row(m, y, s, expressed, args.seed)}
            for m, s in methods.items()]
    half = np.random.default_rng(args.seed).permutation(len(y))
    a, b = half[: len(y) // 2], half[len(y) // 2:]
    rows.append({"task": task, "held_out": name,
                 **calibration_row("ceiling: half of the held-out cells", y[b], y[a], expressed, args.seed)})
    observed = {name: genjax.data.normalize_log1p(y)}
    control = {name: ctrl_log}
    preds = {m: {name: genjax.data.normalize_log1p(s)} for m, s in methods.items()}
    # the profile as two identical cells: only its mean metrics are read
    preds[f"{predictor} (the predictor's profile)"] = {name: np.repeat(predicted[None, :], 2, axis=0)}
    tab = metrics.evaluate_perturbations(observed, control, preds, seed=args.seed)
    tab = tab[tab.metric.isin(["r2_mean_deg", "l2_top", "pearson_delta_ref"])].assign(task=task, held_out=name)
    print(f"  fit {fit_s:.1f} s; 10,000 cells with intervals {big_s:.2f} s", flush=True)
    return rows, tab, ints


_GENERATIVE: dict = {}


def generative_baseline(task: str, name: str, train, cond: dict, args) -> np.ndarray | None:
    """The pure generative model without a predictor (the issue's baseline): a LatentGenerator (the same count VAE
    settings and a conditional flow prior on the same condition keys, same epochs and prior steps) fitted on the
    training cells, sampling the held-out combination by composing its seen values (cell type, stimulation), with
    library sizes of the type's control cells.
    ``None`` where a condition is one label never seen in training (a held-out double, a held-out bulk group
    label): without a predictor there is nothing to generate from. Fitted once per held-out condition."""
    if task != "kang":
        return None
    if (task, name) not in _GENERATIVE:
        t0 = time.perf_counter()
        gen = genjax.LatentGenerator(train, prior="flow", conditions=list(cond), seed=args.seed)
        gen.fit(vae_epochs=args.epochs, prior_steps=args.prior_steps, progress=False, seed=args.seed)
        # library sizes of the type's control cells (no training cell has the held-out combination itself)
        _GENERATIVE[task, name] = counts(gen.generate(args.cells, seed=args.seed, **cond,
                                                      library_conditions={**cond, "stim": "CTRL"}))
        print(f"  generative baseline fitted and sampled in {time.perf_counter() - t0:.1f} s", flush=True)
    return _GENERATIVE[task, name]


def kang(args):
    adata = ad.read_h5ad(args.kang)
    genjax.data.highly_variable_genes(adata, n_top_genes=2000, subset=True)
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    for t in args.types:
        held = ((adata.obs.seurat_annotations == t) & (adata.obs.stim == "STIM")).to_numpy()
        src = ((adata.obs.seurat_annotations == t) & (adata.obs.stim == "CTRL")).to_numpy()
        for predictor in args.predictors:
            kw = {"perturbation_key": "stim", "control": "CTRL"} if predictor != "regressor" else {}
            yield run_condition("kang", f"{t} STIM", adata[~held].copy(), counts(adata[held]), counts(adata[src]),
                                {"seurat_annotations": t, "stim": "STIM"}, predictor, kw, args)


def norman(args):
    adata = genjax.datasets.perturbench_devel("norman19")
    spec = Spec("condition", "control")
    labels = spec.labels(adata)
    doubles = genjax.data.combinations_with_singles(adata, spec)
    control = counts(adata[labels == "control"])
    for double in doubles[doubles["has_singles"]]["perturbation"].tolist()[: args.norman_doubles]:
        masks = genjax.data.leave_one_double_out(adata, spec, double)
        yield run_condition("norman", double, adata[masks["train"]].copy(), counts(adata[labels == double]),
                            control, {"condition": double}, "additive",
                            {"perturbation_key": "condition", "control": "control"}, args)


def bulk(args):
    adata = genjax.datasets.toy_bulk(seed=args.seed)
    held = ((adata.obs.tissue == "brain") & (adata.obs.disease == "disease")).to_numpy()
    src = ((adata.obs.tissue == "brain") & (adata.obs.disease == "healthy")).to_numpy()
    yield run_condition("bulk", "brain disease", adata[~held].copy(), counts(adata[held]), counts(adata[src]),
                        {"tissue": "brain", "disease": "disease"}, "mean_delta",
                        {"perturbation_key": "disease", "control": "healthy"}, args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["kang", "norman", "bulk"], choices=["kang", "norman", "bulk"])
    p.add_argument("--kang", default=str(DATA / "kang2018_ifnb.h5ad"))
    p.add_argument("--types", nargs="+", default=["CD14 Mono", "B"])
    p.add_argument("--predictors", nargs="+", default=["mean_delta", "regressor"])
    p.add_argument("--norman-doubles", type=int, default=5, help="leave-one-double-out folds (first N eligible)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--prior-steps", type=int, default=3000)
    p.add_argument("--cells", type=int, default=2000, help="predicted cells per method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loco-conditions", type=int, default=3,
                   help="training conditions left out to choose mean_weight (HybridModel.choose_mean_weight); 0: off")
    p.add_argument("--out", default=str(HERE / "results" / "hybrid"))
    args = p.parse_args(argv)

    rows, means, intervals = [], [], []
    for task in args.tasks:
        for r, tab, ints in {"kang": kang, "norman": norman, "bulk": bulk}[task](args):
            rows += r
            means.append(tab)
            intervals.append(ints)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cal = pd.DataFrame(rows)
    mean_tab = pd.concat(means).pivot_table(index=["task", "held_out", "method"], columns="metric", values="value")
    ints = pd.DataFrame(intervals)
    cal.to_csv(out / "calibration.csv", index=False)
    mean_tab.to_csv(out / "mean_metrics.csv")
    ints.to_csv(out / "intervals.csv", index=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 60)
    print("\n== calibration on the held-out cells (expressed genes; test split)")
    print(cal.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\n== mean metrics of the predicted cells (test split)")
    print(mean_tab.to_string(float_format=lambda v: f"{v:.3f}"))
    print("\n== hybrid intervals at 0.9 (cell: integer bounds; mean: jackknife+ / CV+ over training conditions)")
    print(ints.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
