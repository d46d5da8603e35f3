"""Fault injection: nothing a user trained is lost or silently mixed.

Each test reproduces one of the failures a careful user hit (resumes that paired a new model with an old stage or
deleted an earlier run's checkpoints, divergence returning NaN parameters, two writers on one folder, altered
checkpoint bytes, CLI failures after training, bad input accepted) and checks the behaviour that replaces it: a
named error before anything is read or written, checkpoints kept, the last finite parameters kept. Small models and
few steps: the whole file runs in about a minute on two cores.
"""

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import genjax
from genjax.cli import main as cli
from genjax.training import (
    CheckpointLockedError,
    CheckpointManager,
    FingerprintMismatchError,
    TrainingDivergedError,
)

N, D = 64, 3
CFG = genjax.TrainConfig(max_epochs=2, batch_size=16, steps_per_dispatch=2, progress=False)


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    return {"x": x, "y": (x @ np.array([1.5, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)}


def _loss(params, batch, key, step):
    pred = batch["x"] @ params["w"] + params["b"]
    return jnp.mean((pred - batch["y"]) ** 2), {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}


def _params(d=D):
    return {"w": jnp.zeros(d), "b": jnp.zeros(())}


def _files(folder):
    """Every file under ``folder`` with its bytes (what a run must not touch)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".genjax.lock"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished run of the tiny model with checkpoints, and its fingerprint."""
    d = tmp_path_factory.mktemp("run") / "ckpt"
    genjax.fit(_loss, _params(), _data(), config=CFG, seed=1, checkpoint_dir=d, fingerprint={"lr": 0.001})
    return d


@pytest.mark.parametrize("change, field", [
    (dict(fingerprint={"lr": 0.01}), "lr"),
    (dict(seed=2), "seed"),
    (dict(batch_size=8), "batch_size"),
    (dict(steps_per_dispatch=4), "steps_per_dispatch"),
    (dict(ema_decay=0.9), "ema_decay"),
    (dict(data=_data(n=N + 16)), "n_train"),
    (dict(params=_params(D + 1)), "params_structure"),
    (dict(optimizer=optax.sgd(0.1)), "optimizer_state_structure"),
])
def test_mismatched_resume_names_the_field_and_touches_nothing(trained_run, change, field):
    before = _files(trained_run)
    change = dict(change)
    data, params = change.pop("data", _data()), change.pop("params", _params())
    kw = {**dict(config=CFG, seed=1, fingerprint={"lr": 0.001}, checkpoint_dir=trained_run, resume=True), **change}
    with pytest.raises(FingerprintMismatchError, match=rf"{field}: checkpoint has .*, this run has") as err:
        genjax.fit(_loss, params, data, **kw)
    assert field in err.value.fields and "restart=True" in str(err.value)
    assert _files(trained_run) == before  # nothing read into a new run, nothing deleted


def test_a_new_run_never_overwrites_checkpoints_and_restart_moves_them_aside(trained_run, tmp_path):
    d = tmp_path / "ckpt"
    genjax.fit(_loss, _params(), _data(), config=CFG, seed=1, checkpoint_dir=d)
    before = _files(d)
    with pytest.raises(ValueError, match="already holds the checkpoints of a run"):
        genjax.fit(_loss, _params(), _data(), config=CFG, seed=5, checkpoint_dir=d)
    assert _files(d) == before
    with pytest.warns(UserWarning, match="were moved to"):
        genjax.fit(_loss, _params(), _data(), config=CFG, seed=5, checkpoint_dir=d, restart=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("ckpt.replaced-")]
    assert len(aside) == 1 and _files(aside[0]) == before  # the earlier run, byte for byte


def test_resume_continues_a_matching_run_exactly(tmp_path):
    full = genjax.fit(_loss, _params(), _data(), config=CFG, seed=1, max_epochs=4)
    d = tmp_path / "ckpt"
    genjax.fit(_loss, _params(), _data(), config=CFG, seed=1, checkpoint_dir=d)
    resumed = genjax.fit(_loss, _params(), _data(), config=CFG, seed=1, checkpoint_dir=d, resume=True, max_epochs=4)
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    d = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        d.mkdir()
        (d / ".genjax.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                    "since": "now"}))
        with pytest.raises(CheckpointLockedError, match=rf"process {holder.pid} on host .* delete .*\.genjax\.lock"):
            genjax.fit(_loss, _params(), _data(), config=CFG, checkpoint_dir=d)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and is taken over (a run killed with kill -9 can be resumed)
    with pytest.warns(UserWarning, match="stale lock"):
        genjax.fit(_loss, _params(), _data(), config=CFG, checkpoint_dir=d)
    assert not (d / ".genjax.lock").exists()  # released when the run ends


def test_altered_checkpoint_bytes_fall_back_to_the_previous_checkpoint(tmp_path):
    d = tmp_path / "ckpt"
    genjax.fit(_loss, {"w": jnp.zeros(4096), "b": jnp.zeros(())},
               {"x": np.ones((N, 4096), np.float32), "y": np.zeros(N, np.float32)}, config=CFG, seed=1,
               checkpoint_dir=d, keep=3)
    mngr = CheckpointManager(d)
    steps = sorted(int(p.name) for p in (d / "latest").iterdir() if p.name.isdigit())
    newest = d / "latest" / str(steps[-1]) / "state"
    target = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the newest checkpoint's largest array file
    target.write_bytes(bytes(data))
    like = genjax.init_train_state({"w": jnp.zeros(4096), "b": jnp.zeros(())}, optax.adam(1e-3),
                                   jax.random.key(0)).to_tree()
    with pytest.warns(UserWarning, match=rf"{steps[-1]} is partial or corrupt"):
        _, _, step = mngr.restore_latest(like)
    mngr.close()
    assert step == steps[-2]


def test_divergence_stops_with_the_step_and_term_and_keeps_finite_parameters(tmp_path):
    def exploding(params, batch, key, step):  # finite until step 5, then an infinite reconstruction term
        rec = jnp.where(step >= 5, jnp.inf, jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2))
        return rec + params["b"] ** 2, {"rec": rec}

    d = tmp_path / "ckpt"
    with pytest.raises(TrainingDivergedError, match=r"step 6 .*non-finite loss, rec.*stay at step 5") as err:
        genjax.fit(exploding, _params(), _data(), config=CFG, max_epochs=4, checkpoint_dir=d,
                   checkpoint_every_steps=2)
    state = err.value.result.state
    assert int(state.step) == 5 and all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(state.params))
    mngr = CheckpointManager(d)
    for step in sorted(int(p.name) for p in (d / "latest").iterdir() if p.name.isdigit()):
        assert step <= 5  # no checkpoint past the last finite step
    mngr.close()
    with pytest.raises(TrainingDivergedError, match="non-finite loss"):  # a NaN learning rate, the same
        genjax.fit(_loss, _params(), _data(), optimizer=optax.adam(float("nan")), config=CFG)


@pytest.fixture(scope="module")
def counts():
    return genjax.datasets.synthetic_counts(80, 24, 2, library_size=600.0, seed=3)


SMALL = dict(n_hidden=8, n_latent=2)
FIT = dict(max_epochs=2, batch_size=32, progress=False)


def test_vae_resume_refuses_other_options_data_and_learning_rates(tmp_path, counts):
    d = tmp_path / "vae"
    genjax.VAE(counts, **SMALL).fit(checkpoint_dir=d, **FIT)
    before = _files(d)
    other = counts.copy()
    other.X = other.X.copy()
    other.X.data[0] += 1  # the same cells and genes, one count changed
    for model, fit_kw, field in [
        (genjax.VAE(counts, n_hidden=16, n_latent=2), {}, "option.n_hidden"),
        (genjax.VAE(counts, likelihood="zinb", **SMALL), {}, "option.likelihood"),
        (genjax.VAE(counts, conditions="cell_type", **SMALL), {}, "option.conditions"),
        (genjax.VAE(other, **SMALL), {}, "data"),
        (genjax.VAE(counts, **SMALL), {"lr": 3e-3}, "lr"),
    ]:
        with pytest.raises(FingerprintMismatchError, match=field):
            model.fit(checkpoint_dir=d, resume=True, **FIT, **fit_kw)
    assert _files(d) == before


def test_vae_divergence_keeps_the_last_finite_parameters(counts):
    vae = genjax.VAE(counts, **SMALL)
    with pytest.raises(TrainingDivergedError, match="Lower the learning rate"):
        vae.fit(lr=1e12, **FIT)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(vae.params))
    assert np.isfinite(vae.latent()).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1e-3), "lr must be > 0"), (dict(lr=float("nan")), "lr must be > 0"), (dict(beta=-1.0), "beta"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"), (dict(max_epochs=2.5), "max_epochs"),
    (dict(train_size=0.0), "train_size"),
])
def test_vae_fit_settings_are_checked_before_any_compute(counts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        genjax.VAE(counts, **SMALL).fit(**{**FIT, **kwargs})


def test_prior_checkpoints_of_another_vae_are_not_paired_with_it(tmp_path, counts):
    ckpt = tmp_path / "gen"
    kw = dict(vae_kwargs=SMALL, prior_kwargs={"n_hidden": 16, "n_layers": 1})
    fit = dict(vae_epochs=2, prior_steps=10, prior_batch_size=32, batch_size=32, progress=False,
               checkpoint_dir=ckpt)
    first = genjax.LatentGenerator(counts, **kw).fit(**fit)
    assert sorted(p.name for p in (ckpt / "prior" / "latest").iterdir())  # the prior checkpoints as it trains
    resumed = genjax.LatentGenerator(counts, **kw).fit(**fit, resume=True)  # same run: both stages resume
    for a, b in zip(jax.tree.leaves(first.prior_model.params), jax.tree.leaves(resumed.prior_model.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # the VAE trains longer on resume: its prior's checkpoints belong to another VAE and are moved aside
    with pytest.warns(UserWarning, match="trained on another VAE"):
        longer = genjax.LatentGenerator(counts, **kw).fit(**{**fit, "vae_epochs": 3}, resume=True)
    assert len(longer.history["vae"]) == 3
    assert any(p.name.startswith("prior.replaced-") for p in ckpt.iterdir())
    with pytest.raises(ValueError, match="prior_steps must be an integer >= 1"):  # before the VAE trains
        genjax.LatentGenerator(counts, **kw).fit(**{**fit, "prior_steps": 0})


def test_an_interrupted_prior_resumes_from_its_last_checkpoint(tmp_path, counts, monkeypatch):
    kw = dict(vae_kwargs=SMALL, prior_kwargs={"n_hidden": 16, "n_layers": 1})
    fit = dict(vae_epochs=1, prior_steps=400, prior_batch_size=32, batch_size=32, progress=False)
    whole = genjax.LatentGenerator(counts, **kw).fit(**fit, checkpoint_dir=tmp_path / "whole")

    original = CheckpointManager.save

    def killed_at_the_last_step(self, step, state, meta, **kwargs):
        if "prior" in str(self.directory) and step == 400:
            raise KeyboardInterrupt  # the process dies after the step-200 checkpoint, before the final one
        return original(self, step, state, meta, **kwargs)

    monkeypatch.setattr(CheckpointManager, "save", killed_at_the_last_step)
    with pytest.raises(KeyboardInterrupt):
        genjax.LatentGenerator(counts, **kw).fit(**fit, checkpoint_dir=tmp_path / "cut")
    monkeypatch.setattr(CheckpointManager, "save", original)
    with CheckpointManager(tmp_path / "cut" / "prior") as manager:
        assert manager.latest_step() == 200
    resumed = genjax.LatentGenerator(counts, **kw).fit(**fit, checkpoint_dir=tmp_path / "cut", resume=True)
    for a, b in zip(jax.tree.leaves(whole.prior_model.params), jax.tree.leaves(resumed.prior_model.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_models_load_only_what_matches_their_configuration(tmp_path, counts):
    vae = genjax.VAE(counts, **SMALL)
    vae.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["options"]["n_hidden"] = 9
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"params.msgpack does not match the model: .*shape \(.*8.*\), the config"):
        genjax.VAE.load(tmp_path / "m")
    vae.save(tmp_path / "m")
    (tmp_path / "m" / "params.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"params.msgpack is not a readable genjax array file"):
        genjax.VAE.load(tmp_path / "m")


def test_half_precision_input_and_log_domain_limits(counts):
    half = counts.copy()
    half.X = half.X.toarray().astype(np.float16)
    genjax.VAE(half, **SMALL).fit(max_epochs=1, batch_size=32, progress=False)  # converted, not a scipy crash
    with pytest.raises(ValueError, match=r"log_mu must be not NaN and at most 88.72"):
        genjax.nb_log_prob_log(np.array([1.0]), np.array([90.0]), np.array([0.0]))
    with pytest.raises(ValueError, match=r"log_mu must be"):
        genjax.zinb_log_prob_log(np.array([1.0]), np.array([100.0]), np.array([0.0]), np.array([0.0]))


def test_normalised_integer_data_are_flagged(counts):
    X = counts.X.toarray()
    cp10k = np.round(X / X.sum(1, keepdims=True) * 1e4)
    with pytest.warns(UserWarning, match="look normalised"):
        genjax.data.validate_counts(cp10k)
    with pytest.warns(UserWarning, match="rounded log-normalised"):
        genjax.data.validate_counts(np.round(np.log1p(cp10k)), allow_empty=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        genjax.data.validate_counts(X)  # raw counts: no warning
        # low, dense Poisson counts (every value <= 10, as in many simulations) are counts too
        genjax.data.validate_counts(np.random.default_rng(0).poisson(2.0, (300, 60)))


def test_generate_and_sizes_are_checked(counts):
    vae = genjax.VAE(counts, **SMALL)
    for bad in (2.7, 0, -1):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            vae.generate(bad)


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory, counts):
    d = tmp_path_factory.mktemp("cli")
    counts.write_h5ad(d / "data.h5ad")
    (d / "table.csv").write_text("cell,g1\nc1,3\n")
    (d / "truncated.h5ad").write_bytes((d / "data.h5ad").read_bytes()[:200])
    (d / "afile").write_text("")
    return d


def test_cli_refuses_unreadable_inputs_and_unwritable_outputs_before_training(h5ad, capsys):
    for data, out, match in [
        ("table.csv", "m", "--data .*table.csv: not a readable .h5ad file"),
        ("truncated.h5ad", "m", "--data .*truncated.h5ad: not a readable .h5ad file"),
        ("missing.h5ad", "m", "--data .*missing.h5ad: no such file"),
        ("data.h5ad", "afile/model", "--out .*afile/model: .*afile is a file, not a folder"),
    ]:
        code = cli(["train", "--data", str(h5ad / data), "--out", str(h5ad / out), "--prior-steps", "5"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert __import__("re").search(match, err), err
    assert cli(["demo", "--out", str(h5ad / "afile" / "demo")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert cli(["demo", "--n-cells", "5", "--out", str(h5ad / "demo")]) == 2
    assert "needs at least 80 cells" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:  # argparse: the flag is named, exit 2
        cli(["train", "--data", "x", "--out", "y", "--prior-steps", "0"])
    assert ex.value.code == 2 and "--prior-steps" in capsys.readouterr().err


def test_cli_resume_mismatch_is_a_one_line_usage_error_and_restart_keeps_the_old_run(h5ad, capsys):
    base = ["train", "--data", str(h5ad / "data.h5ad"), "--out", str(h5ad / "model"), "--vae-epochs", "1",
            "--prior-steps", "4", "--quiet", "--keep-checkpoints"]
    assert cli(base) == 0
    capsys.readouterr()
    assert cli([*base, "--resume"]) == 0  # a successful resume is quiet: no tracebacks from background threads
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err, err
    assert cli([*base, "--likelihood", "zinb", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "option.likelihood: checkpoint has 'nb', this run has 'zinb'" in err and "Traceback" not in err
    assert cli([*base, "--likelihood", "zinb"]) == 2  # neither --resume nor --restart: refused
    assert "already holds the checkpoints" in capsys.readouterr().err
    assert cli([*base, "--likelihood", "zinb", "--restart"]) == 0
    assert any(p.name.startswith("vae.replaced-") for p in (h5ad / "model" / "checkpoints").iterdir())
    assert "Traceback" not in capsys.readouterr().err


def test_cli_keeps_a_trained_model_when_the_final_write_fails(h5ad, capsys, monkeypatch):
    def failing_save(self, path, **kw):
        if "rescued" not in str(path):
            raise OSError(28, "No space left on device")
        return original(self, path, **kw)

    original = genjax.LatentGenerator.save
    monkeypatch.setattr(genjax.LatentGenerator, "save", failing_save)
    code = cli(["train", "--data", str(h5ad / "data.h5ad"), "--out", str(h5ad / "full"), "--vae-epochs", "1",
                "--prior-steps", "4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "saved to" in err
    rescued = err.split("saved to ")[1].split(" instead")[0]
    genjax.LatentGenerator.load(rescued).generate(3)  # the trained model is there
