"""Training across processes: two processes on localhost (CPU collectives) equal one process with two devices;
a run killed with SIGKILL mid-training resumes from its latest checkpoint to exactly the uninterrupted result."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import genjax

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _worker_model import DATA, init_params, loss_fn  # noqa: E402

pytestmark = pytest.mark.multiprocess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker(out, *args):
    return [sys.executable, str(HERE / "_train_worker.py"), str(out), *map(str, args)]


def _params(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _reference(steps, devices=None, host=False):
    data = DATA if not host else genjax.HostSource(len(DATA["x"]), lambda r: {k: v[r] for k, v in DATA.items()})
    res = genjax.fit(loss_fn, init_params(), data, optimizer=optax.adam(1e-2), seed=5, max_steps=steps,
                     batch_size=16, steps_per_dispatch=2, progress=False, devices=devices)
    return {"/".join(map(str, p)): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(res.state.params)}


def test_two_processes_equal_one_process_two_devices(tmp_path):
    # a host source: each process fetches only the rows of its own device's shard (per-process data sharding)
    host = True
    port = _free_port()
    extra = ["--host-source"]
    procs = [subprocess.Popen(_worker(tmp_path, "--steps", 12, "--process-id", i, "--num-processes", 2,
                                      "--coordinator", f"localhost:{port}", *extra),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    got = _params(tmp_path / "params.npz")
    assert int(got.pop("step")) == 12
    ref = _reference(12, devices=2, host=host)
    for k in ref:  # same shards, same per-device keys; only the cross-process all-reduce differs
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_sigkill_mid_run_then_resume_is_exact(tmp_path):
    ckpt = tmp_path / "ckpt"
    steps = 4000
    proc = subprocess.Popen(_worker(tmp_path, "--ckpt", ckpt, "--steps", steps, "--every", 10),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest = ckpt / "latest"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:  # wait for a few committed checkpoints, then kill mid-run
            done = [p for p in latest.iterdir() if p.name.isdigit()] if latest.exists() else []
            if len(done) >= 2:
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("the training subprocess wrote no checkpoint in time")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "params.npz").exists(), "the run finished before it was killed"
    committed = [int(p.name) for p in latest.iterdir() if p.name.isdigit()]
    assert committed and max(committed) < steps

    resumed = subprocess.run(_worker(tmp_path, "--ckpt", ckpt, "--steps", steps, "--resume"),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    got = _params(tmp_path / "params.npz")
    assert int(got.pop("step")) == steps
    ref = _reference(steps)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
