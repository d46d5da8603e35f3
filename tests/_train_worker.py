"""Worker process for the kill -9 and multi-process tests (not a test module itself).

usage: python _train_worker.py OUT_DIR [--ckpt DIR] [--resume] [--steps N] [--every K]
                               [--process-id I --num-processes P --coordinator HOST:PORT]
Trains a small stochastic model with genjax.fit and writes the final parameters to OUT_DIR/params.npz.
"""

import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--ckpt", default=None)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--every", type=int, default=None)
parser.add_argument("--process-id", type=int, default=None)
parser.add_argument("--num-processes", type=int, default=1)
parser.add_argument("--coordinator", default=None)
parser.add_argument("--host-source", action="store_true")
args = parser.parse_args()

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if args.process_id is not None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"

import jax  # noqa: E402

if args.process_id is not None:
    import genjax  # noqa: E402

    genjax.initialize_distributed(args.coordinator, args.num_processes, args.process_id)

import numpy as np  # noqa: E402
import optax  # noqa: E402

import genjax  # noqa: E402,F811

sys.path.insert(0, os.path.dirname(__file__))
from _worker_model import DATA, init_params, loss_fn  # noqa: E402

data = DATA
if args.host_source:
    data = genjax.HostSource(len(DATA["x"]), lambda rows: {k: v[rows] for k, v in DATA.items()})
res = genjax.fit(
    loss_fn, init_params(), data, optimizer=optax.adam(1e-2), seed=5, max_steps=args.steps, batch_size=16,
    steps_per_dispatch=2, checkpoint_dir=args.ckpt, checkpoint_every=10**6, resume=args.resume, checkpoint_every_steps=args.every,
    progress=False, devices="all" if args.process_id is not None else None,
)
if jax.process_index() == 0:
    flat = {"/".join(map(str, p)): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(res.state.params)}
    np.savez(os.path.join(args.out, "params.npz"), step=int(res.state.step), **flat)
if args.process_id is not None:
    jax.distributed.shutdown()
print("done", flush=True)
