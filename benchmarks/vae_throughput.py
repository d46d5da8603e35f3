"""VAE training throughput: genjax.VAE vs scvi-tools SCVI on the same counts and architecture, in one run.

Data: ``genjax.datasets.synthetic_counts(20000, 2000, library_size=400)``, negative-binomial counts with about 90%
zeros (like a 10x matrix), written once as CSR and read by both sides. Architecture on both sides: 1 hidden layer of
128 units, 10 latent dimensions, NB likelihood with gene-wise dispersion, observed library size, dropout 0.1,
Adam(lr 1e-3, eps 0.01, weight decay 1e-6), batch 128, every cell used for training (``train_size=1``).
scvi-tools runs in its own virtual environment (``--peer-python``, default ``/work/venv-peer/bin/python``) as a
subprocess with ``torch.set_num_threads(2)``, twice: with its default BatchNorm, and with LayerNorm (the
normalisation genjax uses).

The sides alternate (``--rounds`` of: SCVI BatchNorm, genjax, SCVI LayerNorm, genjax) so that the drift of a shared
machine's speed over minutes reaches both. Reported: seconds per epoch (the fastest of the timed epochs over all
rounds, compilation excluded), cells/s and the ratio to scvi-tools, and each genjax run against the peer run just
before it; and genjax's achieved GFLOP/s at batch 1024 (matrix-multiply FLOPs of the forward and backward pass)
against the machine's single-precision GEMM peak measured in the same script.

usage: python benchmarks/vae_throughput.py [--epochs 4] [--peer-epochs 4] [--rounds 2] [--peer-python PATH] [--no-peer] [--variants]
                                          [--cpus 0]
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

N_CELLS, N_GENES, N_HIDDEN, N_LATENT, BATCH = 20000, 2000, 128, 10, 128


# ---------------------------------------------------------------------------------------------------------------
# scvi-tools side (runs under the peer interpreter; imports nothing from genjax)
# ---------------------------------------------------------------------------------------------------------------


def peer_worker(data_path: str, epochs: int, norm: str, threads: int) -> None:
    import numpy as np
    import scipy.sparse as sp
    import torch

    torch.set_num_threads(threads)
    import anndata as ad
    import lightning.pytorch as pl
    import scvi

    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    z = np.load(data_path)
    X = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    adata = ad.AnnData(X=X)
    scvi.model.SCVI.setup_anndata(adata)
    norm_kw = {} if norm == "batch" else {"use_layer_norm": "both", "use_batch_norm": "none"}
    model = scvi.model.SCVI(adata, n_hidden=N_HIDDEN, n_latent=N_LATENT, n_layers=1, gene_likelihood="nb",
                            dispersion="gene", dropout_rate=0.1, **norm_kw)

    class Timer(pl.Callback):
        def __init__(self):
            self.starts, self.ends = [], []

        def on_train_epoch_start(self, trainer, module):
            self.starts.append(time.perf_counter())

        def on_train_epoch_end(self, trainer, module):
            self.ends.append(time.perf_counter())

    timer = Timer()
    model.train(max_epochs=epochs, batch_size=BATCH, train_size=1.0, accelerator="cpu", devices=1,
                enable_progress_bar=False, callbacks=[timer], logger=False, enable_checkpointing=False)
    times = [e - s for s, e in zip(timer.starts, timer.ends, strict=True)]
    print("PEER_RESULT " + json.dumps({"epoch_s": times, "cells_per_epoch": adata.n_obs, "norm": norm,
                                       "scvi": scvi.__version__, "torch": torch.__version__}))


# ---------------------------------------------------------------------------------------------------------------
# genjax side
# ---------------------------------------------------------------------------------------------------------------


def gemm_peak() -> float:
    """Best single-precision GEMM rate of this machine in GFLOP/s (XLA and numpy/BLAS, square 2048 matrices)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 2048
    best = 0.0
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    an = np.asarray(a)
    for _ in range(5):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        an @ an
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def matmul_flops_per_cell(n_genes: int = N_GENES, h: int = N_HIDDEN, latent: int = N_LATENT) -> int:
    """Multiply-add FLOPs (2 per MAC) of one cell's forward and backward pass through the VAE's dense layers.

    Forward: every layer. Backward: weight gradients of every layer and input gradients of every layer except the
    first encoder layer (its input is data).
    """
    layers = [(n_genes, h), (h, latent), (h, latent), (latent, h), (h, n_genes)]  # enc, mean, var, dec, head
    fwd = sum(2 * i * o for i, o in layers)
    wgrad = fwd
    igrad = fwd - 2 * n_genes * h
    return fwd + wgrad + igrad


def time_genjax(adata, batch_size: int, epochs: int, seed: int = 0, **options) -> dict:
    import genjax

    options = {"likelihood": "nb", **options}
    model = genjax.VAE(adata, n_hidden=N_HIDDEN, n_latent=N_LATENT, n_layers=1, dropout=0.1, **options)
    hist = model.fit(max_epochs=epochs, batch_size=batch_size, train_size=1.0, progress=False, seed=seed)
    ends = [r["time"] for r in hist]
    per_epoch = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]  # epoch 0 includes compilation
    steps = hist[0]["step"]
    return {"epoch_s": per_epoch, "cells_per_epoch": steps * batch_size, "steps_per_epoch": steps,
            "first_epoch_s": ends[0], "final_loss": hist[-1]["loss"]}


def run_peer(python: str, data_path: str, epochs: int, norm: str, threads: int) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    env.pop("XLA_FLAGS", None)
    cmd = [python, __file__, "--peer-worker", data_path, "--peer-epochs", str(epochs), "--peer-norm", norm,
           "--peer-threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)  # inherits this process's CPU affinity
    for line in proc.stdout.splitlines():
        if line.startswith("PEER_RESULT "):
            return json.loads(line[len("PEER_RESULT "):])
    print(f"scvi-tools peer ({norm}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", file=sys.stderr)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4, help="genjax epochs (the first, compiling, is not timed)")
    p.add_argument("--peer-epochs", type=int, default=4, help="scvi-tools epochs per run (the first is not timed)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of peer and genjax runs")
    p.add_argument("--peer-python", default="/work/venv-peer/bin/python")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--variants", action="store_true",
                   help="also time genjax with the public NB log-pmf (fast_loss=False) and with a Poisson loss")
    p.add_argument("--peer-worker", help=argparse.SUPPRESS)
    p.add_argument("--peer-norm", default="batch", help=argparse.SUPPRESS)
    p.add_argument("--peer-threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--cpus", help="pin both sides to these CPUs (e.g. '0'), torch threads = their number; a "
                   "comparison less sensitive to other load on a shared machine than 2 free-running threads")
    a = p.parse_args()
    if a.peer_worker:
        peer_worker(a.peer_worker, a.peer_epochs, a.peer_norm, a.peer_threads)
        return
    threads = 2
    if a.cpus:
        cpus = {int(c) for c in a.cpus.split(",")}
        os.sched_setaffinity(0, cpus)  # before jax starts its thread pools
        threads = len(cpus)

    import jax
    import numpy as np

    import genjax

    adata = genjax.datasets.synthetic_counts(N_CELLS, N_GENES, 5, library_size=400.0, seed=0)
    X = adata.X
    zero = 1.0 - X.nnz / (X.shape[0] * X.shape[1])
    print(f"data: {N_CELLS} cells x {N_GENES} genes, {100 * zero:.1f}% zeros; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; CPUs used {sorted(os.sched_getaffinity(0))} (torch threads {threads}); "
          f"load average {os.getloadavg()[0]:.1f}")
    dense = adata.copy()
    dense.X = X.toarray()  # genjax keeps dense data on the device (CSR input streams through a HostSource)

    # Rounds alternate the two sides (peer BatchNorm, genjax, peer LayerNorm, genjax, ...): on a shared machine
    # the speed of both drifts by 10-20% over minutes, and measuring one side long after the other would put
    # that drift into the ratio. Each side reports its fastest epoch over all rounds.
    peers: dict = {}
    runs128, pairs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "counts.npz")
        np.savez(path, data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape))
        for r in range(a.rounds):
            for norm in ("batch", "layer"):
                if not a.no_peer:
                    res = run_peer(a.peer_python, path, a.peer_epochs, norm, threads)
                    if res is not None:
                        times = res["epoch_s"][1:] or res["epoch_s"]  # the first epoch includes start-up
                        old = peers.get(norm)
                        res["epoch_s"] = times + (old["epoch_s"] if old else [])
                        peers[norm] = res
                if not a.no_peer or not runs128:
                    runs128.append(time_genjax(dense, BATCH, a.epochs, seed=r))
                    if not a.no_peer and res is not None:
                        pairs.append((norm, min(times), min(runs128[-1]["epoch_s"])))
    g128 = dict(runs128[0], epoch_s=[t for g in runs128 for t in g["epoch_s"]])
    variants = {}
    if a.variants:
        variants["genjax.VAE, public nb_log_prob_log loss"] = time_genjax(dense, BATCH, a.epochs, fast_loss=False)
        variants["genjax.VAE, Poisson likelihood"] = time_genjax(dense, BATCH, a.epochs, likelihood="poisson")
    g1024 = time_genjax(dense, 1024, max(a.epochs, 3))
    peak = gemm_peak()

    rows = []
    g_best = min(g128["epoch_s"])
    g_cps = g128["cells_per_epoch"] / g_best
    rows.append(("genjax.VAE (LayerNorm)", g_best, g_cps, None))
    for name, res in variants.items():
        rows.append((name, min(res["epoch_s"]), res["cells_per_epoch"] / min(res["epoch_s"]), None))
    for norm, res in peers.items():
        best = min(res["epoch_s"])
        rows.append((f"scvi-tools {res['scvi']} SCVI ({norm.capitalize()}Norm)", best,
                     res["cells_per_epoch"] / best, None))
    n_peer = len(next(iter(peers.values()))["epoch_s"]) if peers else 0
    print(f"\nbatch {BATCH}, {N_HIDDEN} hidden, {N_LATENT} latent, 1 layer, NB gene dispersion "
          f"(fastest epoch of {len(g128['epoch_s'])} genjax / {n_peer} scvi-tools timed epochs, {a.rounds} "
          f"alternating rounds)")
    print(f"{'model':42s} {'s/epoch':>9s} {'cells/s':>10s} {'genjax speed-up':>16s}")
    for name, sec, cps, _ in rows:
        ratio = g_cps / cps
        print(f"{name:42s} {sec:9.3f} {cps:10.0f} {ratio:15.2f}x")

    if pairs:
        print("each genjax run against the peer run just before it (fastest epochs): " + "; ".join(
            f"{norm}Norm {peer:.3f} s / genjax {mine:.3f} s = {peer / mine:.2f}x" for norm, peer, mine in pairs))

    flops = matmul_flops_per_cell() * g1024["cells_per_epoch"]
    best1024 = min(g1024["epoch_s"])
    achieved = flops / best1024 / 1e9
    print(f"\nbatch 1024: {best1024:.3f} s/epoch, {g1024['cells_per_epoch'] / best1024:.0f} cells/s, "
          f"{achieved:.1f} GFLOP/s of matmul FLOPs ({matmul_flops_per_cell() / 1e6:.2f} MFLOP per cell); "
          f"sgemm peak {peak:.1f} GFLOP/s -> {100 * achieved / peak:.0f}% of peak")
    print(f"genjax first epoch (with compilation): {g128['first_epoch_s']:.1f} s; final loss "
          f"{g128['final_loss']:.1f}")


if __name__ == "__main__":
    main()
