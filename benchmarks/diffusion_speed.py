"""Diffusion speed: genjax (JAX / diffrax) against the seed's PyTorch loops, in the same run.

Shapes follow the seed notebook and ``shared/peers/seed_reference_torch.py``: 32-d latent, hidden 256, 4 residual
layers, time embedding 64, batch 128, 1000 samples. The genjax network for the speed comparison is the peer's
architecture (``FieldNet(norm="none", film=False)``: input Dense + time MLP added, 4 x ``h + Dense(silu(h))``, output
Dense); the default ``FieldNet`` (LayerNorm + FiLM in every block) is timed too.

Measured here:
  * the sgemm peak through jax (2048^2 matmul) and the matmul FLOP floor of one training step / one evaluation;
  * training ms/step at batch 128 (the ``genjax.fit`` machinery: ``make_train_step`` + ``make_chunk_runner``, a
    jitted ``lax.scan`` over ``--steps-per-dispatch`` steps), GFLOP/s at batch 1024 against the peak;
  * sampling 1000 points: reverse-SDE Euler-Maruyama with 500 steps vs the probability-flow ODE (adaptive Tsit5,
    fixed-step Heun on the EDM grid), with the energy distance to held-out data (``--seeds`` draws) to compare quality; the
    fastest sampler whose energy distance matches 500-step EM within noise is the headline.

Data: a 32-d mixture of 8 anisotropic Gaussians standing in for VAE latents (5000 train, 1000 held out, 1000 more
real points for the real-vs-real floor of the energy distance).

usage: python benchmarks/diffusion_speed.py [--peer-python PATH] [--peer-script PATH] [--repeats 5]
                                            [--train-steps 4000] [--quick] [--no-peer] [--json OUT]
       (also $GENJAX_PEER_PYTHON, default /work/venv-peer/bin/python, a venv with torch==2.13.0 CPU, and
       $GENJAX_PEER_SCRIPT, default ../shared/peers/seed_reference_torch.py)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import genjax

PEER = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "peers" / "seed_reference_torch.py"
DIM, HIDDEN, BLOCKS, TEMB, BATCH, NSAMP = 32, 256, 4, 64, 128, 1000


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` (blocking on its result) over ``repeats`` calls (after one warm-up call)."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def run_peer(python: str, script: str, score_steps: int, sample_steps: int) -> dict[str, float]:
    cmd = [python, script, "--vae-steps", "30", "--score-steps", str(score_steps), "--sample-steps",
           str(sample_steps), "--n-samples", str(NSAMP), "--threads", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out)}


def mixture_data(seed: int = 0):
    """32-d mixture of 8 anisotropic Gaussians (rank-4 covariance structure + isotropic noise), standardised."""
    rng = np.random.default_rng(seed)
    k = 8
    means = rng.normal(size=(k, DIM)) * 2.0
    factors = rng.normal(size=(k, DIM, 4)) * 0.6
    weights = rng.dirichlet(np.full(k, 3.0))

    def draw(n):
        comp = rng.choice(k, n, p=weights)
        z = rng.normal(size=(n, 4))
        return means[comp] + np.einsum("nij,nj->ni", factors[comp], z) + 0.3 * rng.normal(size=(n, DIM))

    x = draw(7000)
    mu, sd = x[:5000].mean(0), x[:5000].std(0)
    x = ((x - mu) / sd).astype(np.float32)
    return x[:5000], x[5000:6000], x[6000:]


@jax.jit
def energy_distance(x, y):
    """V-statistic energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (Szekely & Rizzo 2013)."""

    def mean_dist(a, b):
        d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None] - 2.0 * a @ b.T
        return jnp.mean(jnp.sqrt(jnp.maximum(d2, 0.0)))

    return 2.0 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def forward_macs() -> int:
    """Multiply-accumulates per point of one evaluation of the peer-shaped network."""
    return DIM * HIDDEN + TEMB * HIDDEN + HIDDEN * HIDDEN + BLOCKS * HIDDEN * HIDDEN + HIDDEN * DIM


# ---------------------------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------------------------


def sgemm_peak(repeats: int) -> float:
    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    f = jax.jit(lambda a, b: jax.lax.fori_loop(0, 8, lambda i, c: c + (a @ (b + c))[0, 0] * 1e-9, 0.0))
    return 8 * 2 * n**3 / best_time(lambda: f(a, b), repeats) / 1e9


def train_step_time(model, x_train, batch: int, k: int, repeats: int) -> tuple[float, float]:
    """(seconds per optimizer step, XLA-counted flops per step) of the genjax training machinery."""
    sde = genjax.VPSDE()
    params = jax.jit(model.init)(jax.random.key(0), x_train[:1], jnp.ones((1,)))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))  # as the peer
    loss_fn = genjax.make_dsm_loss(model, sde)
    step = genjax.make_train_step(loss_fn, optimizer)
    run = genjax.make_chunk_runner(step)
    state = genjax.init_train_state(params, optimizer, jax.random.key(1))
    payload = jnp.asarray(x_train)
    idx = jnp.asarray(np.random.default_rng(0).integers(0, len(x_train), (k, batch)), jnp.int32)
    # XLA's own count for one step (its cost analysis does not look inside the scan's loop body)
    cost = jax.jit(step).lower(state, payload[:batch]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    t = best_time(lambda: run(state, payload, idx), repeats)
    return t / k, flops


def step_breakdown(model, x_train, batch: int, repeats: int, k: int = 50) -> dict[str, float]:
    """ms per call, inside a jitted scan of ``k`` calls, of the pieces of a training step: the network forward,
    the loss value-and-gradient, and the optimizer update alone (clip + Adam on the parameter pytree)."""
    sde = genjax.VPSDE()
    params = jax.jit(model.init)(jax.random.key(0), x_train[:1], jnp.ones((1,)))
    loss_fn = genjax.make_dsm_loss(model, sde)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    xb = jnp.asarray(x_train[:batch])
    t = jnp.linspace(0.01, 1.0, batch)

    def scan(body, carry):
        return jax.jit(lambda c: jax.lax.scan(lambda c, i: (body(c, i), None), c, jnp.arange(k))[0])

    fwd = lambda p, i: jax.tree.map(lambda a: a + 1e-12 * model.apply(p, xb, t)[0, 0], p)
    grad = lambda p, i: jax.tree.map(lambda a, g: a - 1e-9 * g, p,
                                     jax.grad(lambda p: loss_fn(p, xb, jax.random.key(0), i)[0])(p))

    def update(c, i):
        p, o = c
        u, o = optimizer.update(p, o, p)
        return optax.apply_updates(p, jax.tree.map(lambda a: 1e-9 * a, u)), o

    out = {}
    for name, body, carry in [("forward", fwd, params), ("loss_and_grad", grad, params),
                              ("optimizer_update", update, (params, optimizer.init(params)))]:
        f = scan(body, carry)
        out[name] = best_time(lambda f=f, carry=carry: f(carry), repeats) / k * 1e3
    return out


def forward_time(model, params, n: int, repeats: int) -> float:
    x = jax.random.normal(jax.random.key(0), (n, DIM))
    t = jnp.linspace(0.01, 1.0, n)
    f = jax.jit(lambda p, x: jax.lax.fori_loop(0, 20, lambda i, c: c + model.apply(p, x + c * 1e-9, t)[0, 0], 0.0))
    return best_time(lambda: f(params, x), repeats) / 20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-python", default=os.environ.get("GENJAX_PEER_PYTHON", "/work/venv-peer/bin/python"))
    p.add_argument("--peer-script", default=os.environ.get("GENJAX_PEER_SCRIPT", str(PEER.resolve())))
    p.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps-per-dispatch", type=int, default=50)
    p.add_argument("--train-steps", type=int, default=4000, help="steps to train the model used for sampling")
    p.add_argument("--seeds", type=int, default=8, help="sampling seeds for the energy distance")
    p.add_argument("--quick", action="store_true", help="fewer steps everywhere (smoke test)")
    p.add_argument("--json", type=str, default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.quick:
        a.train_steps, a.repeats, a.seeds = 200, 2, 2
    res: dict = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "jax": jax.__version__, "diffrax": diffrax.__version__,
                 "command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
                 "loadavg_start": os.getloadavg()}
    peers = []

    def peer_once():
        if a.no_peer:
            return
        t0 = time.perf_counter()
        peers.append(run_peer(a.peer_python, a.peer_script, 100 if a.quick else 300, 100 if a.quick else 500))
        print(f"[peer] {peers[-1]} ({time.perf_counter() - t0:.0f} s)", flush=True)

    peer_once()

    # ---- floor -------------------------------------------------------------------------------------------------
    peak = sgemm_peak(a.repeats)
    macs = forward_macs()
    res["sgemm_gflops"] = peak
    res["train_step_gflop_b128"] = 6 * macs * BATCH / 1e9
    res["eval_gflop_1000"] = 2 * macs * NSAMP / 1e9
    print(f"[floor] sgemm {peak:.0f} GFLOP/s; train step b128 {res['train_step_gflop_b128']:.3f} GFLOP "
          f"(>= {res['train_step_gflop_b128'] / peak * 1e3:.2f} ms at peak); one evaluation on 1000 points "
          f"{res['eval_gflop_1000']:.3f} GFLOP (>= {res['eval_gflop_1000'] / peak * 1e3:.2f} ms)", flush=True)

    # ---- training step -----------------------------------------------------------------------------------------
    x_train, x_test, x_ref = mixture_data()
    peer_net = genjax.nn.FieldNet(n_hidden=HIDDEN, n_layers=BLOCKS, time_features=TEMB, norm="none", film=False)
    default_net = genjax.nn.FieldNet(n_hidden=HIDDEN, n_layers=BLOCKS, time_features=TEMB)
    k = a.steps_per_dispatch
    for name, net, b in [("peer_arch_b128", peer_net, BATCH), ("default_arch_b128", default_net, BATCH),
                         ("peer_arch_b1024", peer_net, 1024)]:
        sec, xla_flops = train_step_time(net, x_train, b, k, a.repeats)
        res[f"train_ms_{name}"] = sec * 1e3
        res[f"train_gflops_{name}"] = 6 * macs * b / sec / 1e9
        res[f"train_xla_gflop_{name}"] = xla_flops / 1e9
        print(f"[train] {name}: {sec * 1e3:.3f} ms/step, matmul {6 * macs * b / sec / 1e9:.0f} GFLOP/s "
              f"({6 * macs * b / sec / 1e9 / peak:.0%} of peak; XLA counts {xla_flops / 1e9:.3f} GFLOP/step)",
              flush=True)

    res["train_breakdown_ms_b128"] = step_breakdown(peer_net, x_train, BATCH, a.repeats)
    print("[profile] batch 128, peer architecture, ms per call: "
          + ", ".join(f"{k} {v:.3f}" for k, v in res["train_breakdown_ms_b128"].items()), flush=True)

    # ---- a trained model for sampling ---------------------------------------------------------------------------
    sde = genjax.VPSDE()
    t0 = time.perf_counter()
    fitted = genjax.fit_score_model(
        x_train, sde, peer_net, max_steps=a.train_steps, batch_size=BATCH, ema_decay=0.999, progress=False,
        steps_per_dispatch=min(a.train_steps, 500), optimizer=optax.adam(optax.cosine_decay_schedule(2e-3, a.train_steps)),
        val_x=x_test[:256],
    )
    score_fn = fitted.score_fn
    res["fit_seconds"] = time.perf_counter() - t0
    print(f"[fit] {a.train_steps} steps in {res['fit_seconds']:.1f} s (compile included), "
          f"final loss {fitted.fit.history[-1].get('loss', float('nan')):.4f}", flush=True)
    eval_sec = forward_time(peer_net, score_fn.params, NSAMP, a.repeats)
    res["eval_ms_1000"] = eval_sec * 1e3
    res["eval_gflops_1000"] = 2 * macs * NSAMP / eval_sec / 1e9
    print(f"[eval] one evaluation on 1000 points: {eval_sec * 1e3:.3f} ms ({res['eval_gflops_1000']:.0f} GFLOP/s)")

    # ---- sampling ----------------------------------------------------------------------------------------------
    shape = (NSAMP, DIM)
    grid = lambda m: genjax.time_grid(sde, m, 1e-3, kind="edm")
    methods = {
        "em_500": lambda k: genjax.sample_reverse_sde(k, score_fn, sde, shape, 500),
        "em_100": lambda k: genjax.sample_reverse_sde(k, score_fn, sde, shape, 100),
        "pf_tsit5_rtol1e-3": lambda k: genjax.sample_probability_flow_ode(k, score_fn, sde, shape, 1e-3, 1e-3),
        "pf_tsit5_rtol1e-2": lambda k: genjax.sample_probability_flow_ode(k, score_fn, sde, shape, 1e-2, 1e-2),
    }
    for m in (24, 16, 12, 8, 6):
        methods[f"pf_heun_edm_{m}"] = lambda k, m=m: genjax.sample_probability_flow_ode(
            k, score_fn, sde, shape, solver=diffrax.Heun(), ts=grid(m))
    res["ed_real_vs_real"] = float(energy_distance(jnp.asarray(x_ref), jnp.asarray(x_test)))
    print(f"[quality] energy distance real vs real (1000 vs 1000): {res['ed_real_vs_real']:.4f}")
    sampling = {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(0)))
        first = time.perf_counter() - t0
        eds, nfe = [], None
        for seed in range(a.seeds):
            x, nfe = fn(jax.random.key(100 + seed))
            eds.append(float(energy_distance(x, jnp.asarray(x_test))))
        sec = best_time(lambda fn=fn: fn(jax.random.key(7)), max(2, a.repeats // 2))
        sampling[name] = dict(seconds=sec, compile_seconds=first - sec, nfe=int(nfe), ed_mean=float(np.mean(eds)),
                              ed_se=float(np.std(eds, ddof=1) / np.sqrt(len(eds))))
        s = sampling[name]
        print(f"[sample] {name:18s} {sec * 1e3:8.1f} ms  nfe {s['nfe']:4d}  ED {s['ed_mean']:.4f} +- {s['ed_se']:.4f}  "
              f"(first call {first:.1f} s)", flush=True)
    res["sampling"] = sampling
    ref = sampling["em_500"]
    ok = {n: s for n, s in sampling.items()
          if s["ed_mean"] <= ref["ed_mean"] + 2.0 * np.hypot(s["ed_se"], ref["ed_se"])}
    fastest = min(ok, key=lambda n: ok[n]["seconds"])
    res["fastest_equal_quality"] = fastest

    peer_once()

    # ---- summary -----------------------------------------------------------------------------------------------
    lines = ["", "| quantity | genjax | peer (torch) | ratio |", "|---|---|---|---|"]
    if peers:
        peer_train = min(pp["score_ms_per_step"] for pp in peers)
        peer_sample_s = min(pp["sample_ms_per_step"] for pp in peers) * 500 / 1e3
        res["peer_runs"] = peers
        res["peer_train_ms"] = peer_train
        res["peer_sample_seconds_em500"] = peer_sample_s
    else:
        peer_train = peer_sample_s = float("nan")
    g_train = res["train_ms_peer_arch_b128"]
    lines.append(f"| training ms/step, batch 128 (peer architecture) | {g_train:.2f} | {peer_train:.2f} | "
                 f"{peer_train / g_train:.1f}x |")
    lines.append(f"| training ms/step, batch 128 (default FieldNet, LayerNorm + FiLM) | "
                 f"{res['train_ms_default_arch_b128']:.2f} | | |")
    lines.append(f"| training GFLOP/s, batch 1024 / sgemm peak | {res['train_gflops_peer_arch_b1024']:.0f} / {peak:.0f} "
                 f"({res['train_gflops_peer_arch_b1024'] / peak:.0%}) | | |")
    lines.append(f"| one evaluation, 1000 points: ms (GFLOP/s) | {res['eval_ms_1000']:.2f} ({res['eval_gflops_1000']:.0f}) | | |")
    lines.append(f"| 1000 samples, reverse-SDE EM 500 steps: s | {ref['seconds']:.2f} | {peer_sample_s:.2f} | "
                 f"{peer_sample_s / ref['seconds']:.1f}x |")
    fs = sampling[fastest]
    lines.append(f"| 1000 samples at EM-500 quality ({fastest}, nfe {fs['nfe']}): s | {fs['seconds']:.3f} | "
                 f"{peer_sample_s:.2f} (EM-500) | {peer_sample_s / fs['seconds']:.1f}x |")
    lines.append(f"| energy distance to held-out (EM-500 / {fastest} / real-vs-real) | {ref['ed_mean']:.4f} / "
                 f"{fs['ed_mean']:.4f} / {res['ed_real_vs_real']:.4f} | | |")
    table = "\n".join(lines)
    print(table)
    res["table"] = table
    res["loadavg_end"] = os.getloadavg()
    print(f"load average at start {res['loadavg_start']}, at end {res['loadavg_end']} (2 cores)")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
