"""Peer for benchmarks/perturbation.py: pertpy's scGen trained on a held-out-covariate split, predicting the response.

Runs in its own environment (pertpy + scvi-tools), e.g. ``/work/venv-scgen/bin/python``; imports nothing from genjax.

usage: python scgen_peer.py --train TRAIN.h5ad --source SOURCE.h5ad --out PRED.h5ad --perturbation-key stim
       --control CTRL --perturbation STIM --covariate-key seurat_annotations --covariate-value "CD14 Mono"
       [--epochs 100] [--batch-size 32] [--early-stopping-patience 25] [--seed 0] [--threads 2]
       [--predict-from source|train-controls]

TRAIN.h5ad: raw counts of the training cells (the held-out covariate's perturbed cells removed, its controls kept).
SOURCE.h5ad: raw counts of the control cells to predict from; both need the perturbation and covariate obs columns.

What it does, and what pertpy 1.0.3's ``pertpy.tl.Scgen`` does underneath:

* Preprocessing (scGen's documented one): each cell of TRAIN and SOURCE is normalised to 1e4 total counts and
  log1p-transformed, ``log1p(counts / total * 1e4)``; no gene selection or scaling here, the caller picks the genes.
* Model: pertpy's ``Scgen`` is a JAX/Flax VAE (scvi-tools' ``JaxTrainingMixin``; torch is only the Lightning loop),
  with its defaults: n_latent=100, n_hidden=800, n_layers=2, dropout 0.2, batch norm in the encoder, kl_weight=5e-5,
  Gaussian (squared-error) reconstruction of log1p(CP10k), Adam lr=1e-3, weight_decay=1e-6, eps=0.01, 90/10
  train/validation split of TRAIN (scvi's DataSplitter default). Only epochs, batch size and early stopping are set
  here, to pertpy's tutorial settings by default: max_epochs=100, batch_size=32, early_stopping=True with
  patience 25 on the validation ELBO (pass --early-stopping-patience 0 for a fixed epoch count).
* Prediction: ``Scgen.predict(ctrl_key, stim_key, adata_to_predict=... | celltype_to_predict=...)``. delta = mean
  latent (encoder means) of the perturbed training cells minus that of the control training cells, each pooled over
  all covariate values after upsampling every value to the largest one's size and subsampling both sides to the same
  count; the prediction of a source cell is decoder(z_source + delta), in log1p(CP10k) space, unclipped (it can go
  slightly negative). ``--predict-from source`` (default) passes SOURCE as ``adata_to_predict``;
  ``--predict-from train-controls`` passes ``celltype_to_predict=COVARIATE_VALUE``, which predicts from TRAIN's
  control cells of that covariate value (the same cells when SOURCE is exactly those cells). pertpy draws delta's
  subsamples from an unseeded ``np.random.default_rng()``; here those draws are seeded from --seed.

Writes PRED.h5ad: X = predicted log1p(CP10k), float32, cells x genes in TRAIN's gene order, obs of the source cells
(their obs names). Prints one line ``PEER_RESULT {json}``.
"""

import argparse
import contextlib
import json
import os
import time
from importlib.metadata import version


def limit_threads(n):
    """Pin this process to n CPUs (XLA sizes its thread pool from the affinity mask) and cap BLAS/OpenMP pools."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus[:n])


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--perturbation-key", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--perturbation", required=True)
    p.add_argument("--covariate-key", required=True)
    p.add_argument("--covariate-value", required=True)
    p.add_argument("--epochs", type=int, default=100, help="max_epochs (pertpy tutorial: 100)")
    p.add_argument("--batch-size", type=int, default=32, help="pertpy tutorial: 32")
    p.add_argument(
        "--early-stopping-patience", type=int, default=25, help="0 = no early stopping (tutorial: 25)"
    )
    p.add_argument("--predict-from", choices=("source", "train-controls"), default="source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def main():
    a = parse_args()
    limit_threads(a.threads)

    import anndata as ad
    import numpy as np
    import pertpy
    import scipy.sparse as sp
    import scvi
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    scvi.settings.seed = a.seed  # also seeds the JAX module's PRNG key (read when the module is built)

    def log_cp10k(adata):
        x = adata.X
        x = x.tocsr().astype(np.float32) if sp.issparse(x) else sp.csr_matrix(np.asarray(x, dtype=np.float32))
        total = np.asarray(x.sum(axis=1)).ravel()
        scale = np.divide(1e4, total, out=np.zeros_like(total), where=total > 0)
        x = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ x)
        x.data = np.log1p(x.data)
        out = ad.AnnData(x, obs=adata.obs.copy(), var=adata.var[[]].copy())
        for key in (a.perturbation_key, a.covariate_key):
            out.obs[key] = out.obs[key].astype(str).astype("category")
        return out

    train_raw, source_raw = ad.read_h5ad(a.train), ad.read_h5ad(a.source)
    if list(source_raw.var_names) != list(train_raw.var_names):
        source_raw = source_raw[:, train_raw.var_names]
    source_raw = source_raw.copy()
    for key, default in ((a.perturbation_key, a.control), (a.covariate_key, a.covariate_value)):
        if key not in source_raw.obs:  # scvi's setup transfer needs both columns on SOURCE
            source_raw.obs[key] = default
    train, source = log_cp10k(train_raw), log_cp10k(source_raw)
    held = (train.obs[a.covariate_key] == a.covariate_value).to_numpy()
    pert = (train.obs[a.perturbation_key] == a.perturbation).to_numpy()
    if (held & pert).any():
        raise SystemExit(f"TRAIN holds {int((held & pert).sum())} {a.covariate_value} {a.perturbation} cells")
    source_in_train = bool(source.obs_names.isin(train.obs_names).all())
    train_ctrl_of_value = train.obs_names[held & (train.obs[a.perturbation_key] == a.control).to_numpy()]
    source_is_train_controls = source_in_train and set(source.obs_names) == set(train_ctrl_of_value)
    if a.predict_from == "train-controls" and not source_is_train_controls:
        raise SystemExit(
            "--predict-from train-controls needs SOURCE to be exactly TRAIN's controls of that value"
        )

    t0 = time.perf_counter()
    pertpy.tl.Scgen.setup_anndata(train, batch_key=a.perturbation_key, labels_key=a.covariate_key)
    model = pertpy.tl.Scgen(train)
    timer = epoch_timer()
    kwargs = {
        "max_epochs": a.epochs,
        "batch_size": a.batch_size,
        "enable_progress_bar": False,
        "callbacks": [timer],
    }
    if a.early_stopping_patience > 0:
        kwargs.update(early_stopping=True, early_stopping_patience=a.early_stopping_patience)
    model.train(**kwargs)
    train_s = time.perf_counter() - t0
    epochs = len(timer.seconds)
    # the first epoch includes XLA compilation of the train/validation steps; report it apart
    steady = timer.seconds[1:] or timer.seconds
    n_fit = len(model.train_indices) if getattr(model, "train_indices", None) is not None else train.n_obs

    t0 = time.perf_counter()
    with seeded_default_rng(np, a.seed):
        if a.predict_from == "source":
            pred, _delta = model.predict(ctrl_key=a.control, stim_key=a.perturbation, adata_to_predict=source)
        else:
            pred, _delta = model.predict(
                ctrl_key=a.control, stim_key=a.perturbation, celltype_to_predict=a.covariate_value
            )
    predict_s = time.perf_counter() - t0
    if a.predict_from == "train-controls":
        pred = pred[source.obs_names]  # TRAIN's order -> SOURCE's order (same cells)

    x = np.asarray(pred.X, dtype=np.float32)
    out = ad.AnnData(x, obs=pred.obs.copy(), var=train_raw.var.copy())
    out.uns["scgen_peer"] = {
        "space": "log1p_cp10k",
        "predict_from": a.predict_from,
        "covariate_value": a.covariate_value,
        "perturbation": a.perturbation,
    }
    out.write_h5ad(a.out)

    result = {
        "train_s": round(train_s, 3),
        "epochs": int(epochs),
        "epoch_s": round(float(np.median(steady)), 4),
        "first_epoch_s": round(timer.seconds[0], 4) if timer.seconds else None,
        "predict_s": round(predict_s, 3),
        "n_train": int(train.n_obs),
        "n_fit": int(n_fit),
        "n_genes": int(train.n_vars),
        "n_pred": int(out.n_obs),
        "predict_from": a.predict_from,
        "source_in_train": source_in_train,
        "source_is_train_controls": source_is_train_controls,
        "max_epochs": a.epochs,
        "stopped_early": int(epochs) < a.epochs,
        "batch_size": a.batch_size,
        "early_stopping_patience": a.early_stopping_patience,
        "threads": a.threads,
        "seed": a.seed,
        "space": "log1p_cp10k",
        "versions": {
            "pertpy": version("pertpy"),
            "scvi-tools": version("scvi-tools"),
            "torch": version("torch"),
            "jax": version("jax"),
            "anndata": version("anndata"),
            "numpy": version("numpy"),
        },
    }
    print("PEER_RESULT " + json.dumps(result), flush=True)


def epoch_timer():
    """Lightning callback recording each training epoch's wall time (train steps plus its validation pass)."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds, self._t0 = [], None

        def on_train_epoch_start(self, trainer, pl_module):
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self._t0)

    return EpochTimer()


@contextlib.contextmanager
def seeded_default_rng(np, seed):
    """Make unseeded ``np.random.default_rng()`` calls (pertpy's predict uses them) draw from a seeded sequence."""
    original = np.random.default_rng
    seq = np.random.SeedSequence(seed)

    def default_rng(s=None):
        return original(seq.spawn(1)[0] if s is None else s)

    np.random.default_rng = default_rng
    try:
        yield
    finally:
        np.random.default_rng = original


if __name__ == "__main__":
    main()
