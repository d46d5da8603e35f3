"""Data-parallel training of the count VAE across devices and across processes (the scale-out tutorial).

The same ``genjax.VAE`` (NB decoder) on PBMC3k, same seed and global batch, trained three ways:

1. one process, one device: ``vae.fit(...)``;
2. one process, ``D`` devices: ``vae.fit(..., devices=D)`` (on CPU, ``D`` forced host devices); the state is
   replicated, each global batch is split into ``D`` shards, gradients are averaged with ``lax.pmean``;
3. ``P`` processes on localhost joined by ``genjax.initialize_distributed`` (CPU collectives over gloo), each with
   ``D / P`` devices, ``vae.fit(..., devices="all")``: each process reads only the rows of its own shards of every
   batch (the sparse matrix is streamed per dispatch) and process 0 writes the results.

Runs 2 and 3 see the same shards with the same per-device keys, so they end with the same parameters up to the
order of the cross-process float32 reduction (the summary reports the largest difference). Run 1 draws its noise
with one key for the whole batch, so its trajectory differs by Monte-Carlo noise only. On GPU or TPU the same
script uses the real devices (``--devices`` of them per process).

Run (from the repository root)::

    python examples/data_parallel.py               # defaults: 2 devices, 2 processes, a few minutes on 2 CPU cores
    python examples/data_parallel.py --full        # all cells, longer training
    python examples/data_parallel.py --smoke       # a subsample and a few steps (what tests/test_examples.py runs)

Writes to ``--out`` (default ``examples/out/data_parallel``): training.png, summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import config_class, config_from_args, load_pbmc3k, write_summary

Config = config_class(
    __file__,
    devices=2,  # data-parallel devices in runs 2 and 3 (in all, over every process)
    processes=2,  # processes of run 3
    max_cells=0,  # 0: all PBMC3k cells; else a stratified subsample
    n_genes=1000,  # most expressed genes kept (0: all)
    epochs=40, batch_size=128,
)

SMOKE = dict(max_cells=256, n_genes=60, epochs=2, batch_size=32)
FULL = dict(n_genes=0, epochs=200)


def parse_config(argv=None) -> Config:
    return config_from_args(Config, SMOKE, FULL, argv, doc=__doc__, check=check_config,
                            smoke_help="a subsample and a few steps (the smoke test)")


def check_config(cfg: Config) -> str | None:
    if cfg.devices % cfg.processes:
        return f"--devices {cfg.devices} must divide by --processes {cfg.processes}"
    if cfg.batch_size % cfg.devices:
        return f"--batch-size {cfg.batch_size} must divide by --devices {cfg.devices}"
    return None


def load_data(cfg: Config):
    """PBMC3k, subsampled as ``genjax``'s command line does for ``--n-cells`` and gene-filtered per ``cfg``."""
    return load_pbmc3k(cfg.seed, cfg.max_cells, cfg.n_genes, like_cli=True)


def train(cfg: Config, devices):
    """Fit the VAE; returns (flat numpy parameters, history, seconds)."""
    import jax
    import numpy as np

    import genjax

    vae = genjax.VAE(load_data(cfg), likelihood="nb", seed=cfg.seed)
    t0 = time.perf_counter()
    history = vae.fit(max_epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, progress=False,
                      kl_warmup_epochs=max(1, cfg.epochs // 2), devices=devices)
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(vae.params)}
    return flat, history, time.perf_counter() - t0


def worker(argv) -> None:
    """One process of run 3: join the distributed run, train on ``devices="all"``, process 0 writes results."""
    p = argparse.ArgumentParser()
    p.add_argument("--process-id", type=int, required=True)
    p.add_argument("--coordinator", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--backend", required=True)
    a = p.parse_args(argv)
    cfg = Config(**json.loads(a.config))
    per_process = cfg.devices // cfg.processes
    kwargs = {}
    if a.backend == "cpu":  # set before JAX starts: nothing may touch the backend before initialize
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={per_process}"
    else:  # accelerators of one machine shared out between its processes
        kwargs["local_device_ids"] = list(range(a.process_id * per_process, (a.process_id + 1) * per_process))
    import jax
    import numpy as np

    import genjax

    genjax.initialize_distributed(a.coordinator, cfg.processes, a.process_id, **kwargs)
    flat, history, seconds = train(cfg, "all")
    if jax.process_index() == 0:
        out = Path(cfg.out)
        np.savez(out / "multiprocess_params.npz", **flat)
        (out / "multiprocess_history.json").write_text(json.dumps({"history": history, "seconds": seconds}))
    jax.distributed.shutdown()


def run_processes(cfg: Config, backend: str) -> None:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--process-id", str(i), "--coordinator",
                               f"localhost:{port}", "--config", json.dumps(dataclasses.asdict(cfg)), "--backend", backend],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(cfg.processes)]
    outs = [p.communicate(timeout=3600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        if p.returncode != 0:
            raise RuntimeError(f"process {i} of run 3 failed (exit {p.returncode}):\n{out[-3000:]}")


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if "jax" not in sys.modules and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu" and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={cfg.devices}"  # before jax starts
    import jax
    import numpy as np

    from genjax.plots import training_curves

    print(f"JAX backend: {jax.default_backend()} ({jax.local_device_count()} local device(s): "
          f"{jax.devices()[0].device_kind})")
    if jax.local_device_count() < cfg.devices:
        raise SystemExit(f"run 2 needs {cfg.devices} local devices, this process has {jax.local_device_count()}; "
                         f"on CPU start with XLA_FLAGS=--xla_force_host_platform_device_count={cfg.devices}")
    t_start = time.perf_counter()
    single, h1, s1 = train(cfg, None)
    print(f"[1] one device: {len(h1)} epochs in {s1:.1f} s, final loss {h1[-1]['loss']:.2f}")
    multi, h2, s2 = train(cfg, cfg.devices)
    print(f"[2] {cfg.devices} devices, one process: {s2:.1f} s, final loss {h2[-1]['loss']:.2f}")
    t0 = time.perf_counter()
    run_processes(cfg, jax.default_backend())
    with np.load(out / "multiprocess_params.npz") as f:
        procs = {k: f[k] for k in f.files}
    h3 = json.loads((out / "multiprocess_history.json").read_text())["history"]
    print(f"[3] {cfg.processes} processes x {cfg.devices // cfg.processes} device(s): "
          f"{time.perf_counter() - t0:.1f} s with start-up, final loss {h3[-1]['loss']:.2f}")
    diff = max(float(np.max(np.abs(procs[k] - multi[k]))) for k in multi)
    scale = max(float(np.max(np.abs(multi[k]))) for k in multi)
    drift = max(float(np.max(np.abs(single[k] - multi[k]))) for k in multi)
    print(f"largest parameter difference, run 3 vs run 2: {diff:.2e} (of parameters up to {scale:.2f}); "
          f"run 1 vs run 2 (different noise): {drift:.2e}")
    summary = {"config": dataclasses.asdict(cfg), "backend": jax.default_backend(),
               "runs": {"one device": {"seconds": round(s1, 1), "final_loss": h1[-1]["loss"],
                                       "final_val_loss": h1[-1].get("val_loss", float("nan"))},
                        f"{cfg.devices} devices": {"seconds": round(s2, 1), "final_loss": h2[-1]["loss"],
                                                   "final_val_loss": h2[-1].get("val_loss", float("nan"))},
                        f"{cfg.processes} processes": {"final_loss": h3[-1]["loss"],
                                                       "final_val_loss": h3[-1].get("val_loss", float("nan"))}},
               "max_param_diff_processes_vs_devices": diff, "max_param_diff_one_vs_many_devices": drift}
    training_curves({"one device": h1, f"{cfg.devices} devices": h2, f"{cfg.processes} processes": h3},
                    keys=["loss"], path=out / "training.png")
    summary["figures"] = ["training.png"]
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    body = [f"- {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()) for name, r in summary["runs"].items()]
    body += [f"- largest parameter difference, {cfg.processes} processes vs {cfg.devices} devices: {diff:.3g}",
             f"- largest parameter difference, one device vs {cfg.devices} devices: {drift:.3g}"]
    write_summary(out, summary, "Data-parallel VAE training on PBMC3k", body)
    print(f"wrote training.png and summary.json / summary.md to {out} in {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
